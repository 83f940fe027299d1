// A small TCP peer run inside a lab namespace (`ip netns exec NS node peer.js ...`), driven over
// stdin/stdout with one JSON object per line. Every event carries `t`, wall-clock ms with sub-ms precision.
//
//   node peer.js server HOST PORT      echo server; stdin {"cmd":"push","bytes":N} writes N bytes to every connection
//   node peer.js client HOST PORT      one connection; stdin {"cmd":"send","text":"..."} | {"cmd":"end"} | {"cmd":"destroy"}
//
// The peer exits when its stdin closes, so it never outlives the test that drives it.
import net from 'node:net'
import { createInterface } from 'node:readline'

function now (): number {
  return performance.timeOrigin + performance.now()
}

function emit (event: Record<string, unknown>): void {
  process.stdout.write(JSON.stringify({ ...event, t: now() }) + '\n')
}

function errCode (err: unknown): string {
  if (typeof err === 'object' && err !== null && 'code' in err && typeof err.code === 'string') return err.code
  return String(err)
}

function onCommands (handler: (cmd: Record<string, unknown>) => void): void {
  createInterface({ input: process.stdin })
    .on('line', (text) => {
      let value: unknown
      try {
        value = JSON.parse(text)
      } catch {
        emit({ ev: 'bad-command', text })
        return
      }
      if (typeof value === 'object' && value !== null) handler(value as Record<string, unknown>)
    })
    .on('close', () => { process.exit(0) })
}

function watch (socket: net.Socket, id: number | undefined, echo: boolean): void {
  const tag = id === undefined ? {} : { id }
  socket.on('data', (chunk) => {
    emit({ ev: 'data', ...tag, bytes: chunk.length, text: chunk.toString('latin1') })
    if (echo) socket.write(chunk)
  })
  socket.on('end', () => {
    emit({ ev: 'end', ...tag })
    // Half-close back, as an echo server would.
    if (echo) socket.end()
  })
  socket.on('error', (err) => { emit({ ev: 'error', ...tag, code: errCode(err), message: err.message }) })
  socket.on('close', (hadError) => { emit({ ev: 'close', ...tag, hadError }) })
}

function server (host: string, port: number): void {
  const sockets = new Map<number, net.Socket>()
  let next = 0
  const srv = net.createServer((socket) => {
    const id = next++
    sockets.set(id, socket)
    socket.on('close', () => { sockets.delete(id) })
    emit({ ev: 'accept', id, remote: `${socket.remoteAddress ?? '?'}:${socket.remotePort ?? 0}`, local: `${socket.localAddress ?? '?'}:${socket.localPort ?? 0}` })
    watch(socket, id, true)
  })
  srv.on('error', (err) => {
    emit({ ev: 'server-error', code: errCode(err), message: err.message })
    process.exit(1)
  })
  srv.listen(port, host, () => { emit({ ev: 'listening', host, port }) })
  onCommands((cmd) => {
    if (cmd.cmd === 'push' && typeof cmd.bytes === 'number') {
      const data = Buffer.alloc(cmd.bytes, 'x')
      for (const [id, socket] of sockets) {
        socket.write(data)
        emit({ ev: 'pushed', id, bytes: data.length })
      }
    } else {
      emit({ ev: 'bad-command', cmd })
    }
  })
}

function client (host: string, port: number): void {
  const socket = net.connect({ host, port })
  socket.setNoDelay(true)
  socket.on('connect', () => {
    emit({ ev: 'connected', local: `${socket.localAddress ?? '?'}:${socket.localPort ?? 0}`, remote: `${host}:${port}` })
  })
  watch(socket, undefined, false)
  onCommands((cmd) => {
    if (cmd.cmd === 'send' && typeof cmd.text === 'string') {
      socket.write(cmd.text, () => { emit({ ev: 'written', bytes: Buffer.byteLength(cmd.text as string) }) })
    } else if (cmd.cmd === 'end') {
      socket.end()
    } else if (cmd.cmd === 'destroy') {
      socket.destroy()
    } else {
      emit({ ev: 'bad-command', cmd })
    }
  })
}

const [mode, host, portText] = process.argv.slice(2)
const port = Number(portText)
if (host === undefined || !Number.isInteger(port)) {
  process.stderr.write('usage: peer.js server|client HOST PORT\n')
  process.exit(2)
}
if (mode === 'server') server(host, port)
else if (mode === 'client') client(host, port)
else {
  process.stderr.write(`unknown mode ${String(mode)}\n`)
  process.exit(2)
}
