// The transparent-sidecar peers, run inside lab namespaces (`ip netns exec NS [setpriv ...] node
// sidecar-peer.js ...`), one JSON object per stdout line. The application side knows nothing of
// kaproxy: it connects to its servers' real addresses and never sets keepalive.
//
//   node sidecar-peer.js server HOST PORT
//       echo server; per connection: {"ev":"accept",id,remote,local}, then {"ev":"hashed",id,bytes,sha256}
//       of everything it received once the client half-closes (it echoes everything and half-closes back)
//   node sidecar-peer.js app BYTES TARGET...
//       the application: connects to every TARGET (host:port or [v6]:port), reports {"ev":"connected",...}
//       for each with its uid; on stdin {"cmd":"transfer"} sends BYTES random bytes on each, half-closes,
//       reads the echo to the end and reports {"ev":"transferred",target,sent,sentSha256,received,receivedSha256}
//   node sidecar-peer.js loop COUNT CONCURRENCY TARGET
//       COUNT short connections (write 64 bytes, half-close, read the echo to the end), CONCURRENCY at a
//       time; reports {"ev":"loop",ok,failed,errors,ms} and exits
//
// Every process exits when its stdin closes, so it never outlives the test that drives it.
import { createHash, randomBytes } from 'node:crypto'
import net from 'node:net'
import { createInterface } from 'node:readline'

function emit (event: Record<string, unknown>): void {
  process.stdout.write(JSON.stringify({ ...event, t: performance.timeOrigin + performance.now() }) + '\n')
}

function errCode (err: unknown): string {
  if (typeof err === 'object' && err !== null && 'code' in err && typeof err.code === 'string') return err.code
  return String(err)
}

function onStdin (handler: (cmd: Record<string, unknown>) => void): void {
  createInterface({ input: process.stdin })
    .on('line', (text) => {
      try {
        const value: unknown = JSON.parse(text)
        if (typeof value === 'object' && value !== null) handler(value as Record<string, unknown>)
      } catch {
        emit({ ev: 'bad-command', text })
      }
    })
    .on('close', () => { process.exit(0) })
}

/** `host:port` or `[v6]:port`. */
function parseTarget (text: string): { host: string, port: number } {
  const match = /^\[([^\]]+)\]:(\d+)$/.exec(text) ?? /^([^:]+):(\d+)$/.exec(text)
  if (match === null) throw new Error(`bad target ${text}`)
  return { host: match[1] ?? '', port: Number(match[2]) }
}

function address (host: string | undefined, port: number | undefined): string {
  return host?.includes(':') === true ? `[${host}]:${port ?? 0}` : `${host ?? '?'}:${port ?? 0}`
}

function server (host: string, port: number): void {
  let next = 0
  const srv = net.createServer({ allowHalfOpen: true }, (socket) => {
    const id = next++
    const hash = createHash('sha256')
    let bytes = 0
    emit({ ev: 'accept', id, remote: address(socket.remoteAddress, socket.remotePort), local: address(socket.localAddress, socket.localPort) })
    socket.on('data', (chunk: Buffer) => {
      bytes += chunk.length
      hash.update(chunk)
      if (!socket.write(chunk)) socket.pause()
    })
    socket.on('drain', () => { socket.resume() })
    socket.on('end', () => {
      emit({ ev: 'hashed', id, bytes, sha256: hash.digest('hex') })
      socket.end()
    })
    socket.on('error', (err) => { emit({ ev: 'error', id, code: errCode(err) }) })
    socket.on('close', () => { emit({ ev: 'close', id }) })
  })
  srv.on('error', (err) => {
    emit({ ev: 'server-error', code: errCode(err), message: err.message })
    process.exit(1)
  })
  srv.listen({ host, port, ipv6Only: host === '::' ? false : undefined }, () => { emit({ ev: 'listening', host, port }) })
  onStdin((cmd) => { emit({ ev: 'bad-command', cmd }) })
}

function app (bytes: number, targets: string[]): void {
  const sockets = targets.map((text) => {
    const { host, port } = parseTarget(text)
    const socket = net.connect({ host, port, allowHalfOpen: true })
    socket.on('connect', () => {
      emit({ ev: 'connected', target: text, uid: process.getuid?.(), local: address(socket.localAddress, socket.localPort), remote: address(socket.remoteAddress, socket.remotePort) })
    })
    socket.on('error', (err) => { emit({ ev: 'error', target: text, code: errCode(err) }) })
    socket.on('close', () => { emit({ ev: 'close', target: text }) })
    // Bytes that arrive before a transfer (there should be none: servers only echo) are reported.
    const early = (chunk: Buffer): void => { emit({ ev: 'data', target: text, bytes: chunk.length }) }
    socket.on('data', early)
    socket.once('end', () => {
      emit({ ev: 'end', target: text })
      // A server (or kaproxy) that hangs up first gets our FIN back, as a plain client would send.
      if (!socket.writableEnded) socket.end()
    })
    return { text, socket, early }
  })
  onStdin((cmd) => {
    if (cmd.cmd !== 'transfer') { emit({ ev: 'bad-command', cmd }); return }
    for (const { text, socket, early } of sockets) {
      socket.off('data', early)
      const data = randomBytes(bytes)
      const received = createHash('sha256')
      let receivedBytes = 0
      socket.on('data', (chunk: Buffer) => { receivedBytes += chunk.length; received.update(chunk) })
      socket.on('end', () => {
        emit({ ev: 'transferred', target: text, sent: data.length, sentSha256: createHash('sha256').update(data).digest('hex'), received: receivedBytes, receivedSha256: received.digest('hex') })
      })
      socket.end(data)
    }
  })
}

async function oneShort (host: string, port: number, payload: Buffer): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    const socket = net.connect({ host, port, allowHalfOpen: true })
    let got = 0
    socket.on('connect', () => { socket.end(payload) })
    socket.on('data', (chunk: Buffer) => { got += chunk.length })
    socket.on('error', reject)
    socket.on('close', () => {
      if (got === payload.length) resolve()
      else reject(Object.assign(new Error(`echo ${got}/${payload.length} bytes`), { code: 'SHORT' }))
    })
  })
}

async function loop (count: number, concurrency: number, target: string): Promise<void> {
  const { host, port } = parseTarget(target)
  const payload = randomBytes(64)
  const started = performance.now()
  let issued = 0
  let ok = 0
  let failed = 0
  const errors: Record<string, number> = {}
  const worker = async (): Promise<void> => {
    while (issued < count) {
      issued++
      try {
        await oneShort(host, port, payload)
        ok++
      } catch (err) {
        failed++
        errors[errCode(err)] = (errors[errCode(err)] ?? 0) + 1
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(concurrency, count) }, worker))
  emit({ ev: 'loop', ok, failed, errors, ms: performance.now() - started })
  process.exit(0)
}

const [mode, ...rest] = process.argv.slice(2)
if (mode === 'server') server(rest[0] ?? '', Number(rest[1]))
else if (mode === 'app') app(Number(rest[0]), rest.slice(1))
else if (mode === 'loop') await loop(Number(rest[0]), Number(rest[1]), rest[2] ?? '')
else {
  process.stderr.write(`usage: sidecar-peer.js server HOST PORT | app BYTES TARGET... | loop COUNT CONCURRENCY TARGET (got ${String(mode)})\n`)
  process.exit(2)
}
