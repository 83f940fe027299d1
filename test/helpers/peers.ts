import { createHash, randomBytes } from 'node:crypto'
import { once } from 'node:events'
import net from 'node:net'
import { pendingSocketError } from '../../src/keepalive.js'

/** A TCP server on 127.0.0.1:0 that tracks its sockets; `close()` destroys them all. */
export interface TestServer {
  port: number
  address: string
  sockets: Set<net.Socket>
  /** Resolves with each accepted socket, in order. */
  nextSocket: () => Promise<net.Socket>
  close: () => Promise<void>
}

export async function startServer (onSocket: (socket: net.Socket) => void, host = '127.0.0.1'): Promise<TestServer> {
  const sockets = new Set<net.Socket>()
  const pending: net.Socket[] = []
  const waiting: Array<(socket: net.Socket) => void> = []
  const server = net.createServer({ allowHalfOpen: true }, (socket) => {
    sockets.add(socket)
    socket.on('close', () => sockets.delete(socket))
    socket.on('error', () => {})
    onSocket(socket)
    const waiter = waiting.shift()
    if (waiter !== undefined) waiter(socket)
    else pending.push(socket)
  })
  // A host starting with / is a unix socket path.
  if (host.startsWith('/')) server.listen(host)
  else server.listen({ port: 0, host, backlog: 4096 })
  await once(server, 'listening')
  const port = host.startsWith('/') ? 0 : (server.address() as net.AddressInfo).port
  return {
    port,
    address: host.startsWith('/') ? host : host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`,
    sockets,
    nextSocket: async () => pending.shift() ?? await new Promise<net.Socket>((resolve) => waiting.push(resolve)),
    close: async () => {
      const closed = once(server, 'close')
      server.close()
      for (const socket of sockets) socket.destroy()
      await closed
    }
  }
}

/** Echo: every byte comes back; a FIN is answered with a FIN after the echo. */
export async function startEchoServer (host?: string): Promise<TestServer> {
  return await startServer((socket) => { socket.pipe(socket) }, host)
}

/** A port on 127.0.0.1 where nothing listens (bound then closed): connecting is refused. */
export async function closedPort (): Promise<number> {
  const server = net.createServer()
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const { port } = server.address() as net.AddressInfo
  server.close()
  await once(server, 'close')
  return port
}

/** Connect and resolve once connected; the caller destroys it. */
export async function connect (port: number, host = '127.0.0.1', options: { allowHalfOpen?: boolean } = {}): Promise<net.Socket> {
  const socket = net.connect({ port, host, allowHalfOpen: options.allowHalfOpen ?? false })
  await once(socket, 'connect')
  return socket
}

/** Send `text` and a FIN through `port`; resolves with everything received until the peer's FIN (an echo returns `text`). */
export async function echoThrough (port: number, text: string, host = '127.0.0.1'): Promise<string> {
  const client = await connect(port, host, { allowHalfOpen: true })
  client.end(text)
  const chunks: Buffer[] = []
  client.on('data', (chunk: Buffer) => chunks.push(chunk))
  await once(client, 'end')
  client.destroy()
  return Buffer.concat(chunks).toString()
}

/** Read everything until the peer's FIN; resolves with byte count and sha256. */
export async function drainToHash (socket: net.Socket): Promise<{ bytes: number, sha256: string }> {
  const hash = createHash('sha256')
  let bytes = 0
  socket.on('data', (chunk: Buffer) => { bytes += chunk.length; hash.update(chunk) })
  await once(socket, 'end')
  return { bytes, sha256: hash.digest('hex') }
}

/** Write `total` random bytes in chunks (respecting backpressure), then FIN; resolves with the sha256 sent. */
export async function sendRandom (socket: net.Socket, total: number, chunkSize = 256 * 1024): Promise<string> {
  const hash = createHash('sha256')
  let sent = 0
  while (sent < total) {
    const chunk = randomBytes(Math.min(chunkSize, total - sent))
    hash.update(chunk)
    sent += chunk.length
    if (!socket.write(chunk)) await once(socket, 'drain')
  }
  // Resolve only once every byte is handed to the kernel: a destroy() right after end() would
  // drop what is still queued in Node and look like a relay that lost data.
  await new Promise<void>((resolve) => { socket.end(() => { resolve() }) })
  return hash.digest('hex')
}

/**
 * Resolves when the socket closes, with the error that closed it, if any. A reset that libuv
 * reported as EOF (it does when unread data was queued) is found in the kernel's SO_ERROR.
 */
export async function closed (socket: net.Socket): Promise<NodeJS.ErrnoException | null> {
  let error: NodeJS.ErrnoException | null = null
  socket.on('error', (err) => { error = err })
  socket.on('end', () => { error ??= pendingSocketError(socket) })
  if (!socket.closed) await new Promise((resolve) => socket.once('close', resolve))
  return error
}
