import { createHash, randomBytes } from 'node:crypto'
import { once } from 'node:events'
import net from 'node:net'
import { connect, drainToHash } from './peers.js'
import type { LogLine, LogSink } from './log-sink.js'

export interface FloodOptions {
  /** kaproxy's route port; kaproxy must run with a low descriptor limit (prlimit). */
  port: number
  /** kaproxy's log. */
  log: LogSink
  /** Which burst this is (1, 2, ...): the nth accept-paused / accept-resumed lines belong to it. */
  burst: number
  /** Clients opened at once, far more than the limit allows; they send nothing and stay until released. */
  floodClients: number
  /** Echo transfers open before the flood, kept going across it. */
  established: number
  /** Bytes each established transfer sends (and gets back). */
  bytesEach: number
}

export interface FloodFigures {
  burst: number
  floodClients: number
  established: number
  bytesEach: number
  /** The accept-paused line. */
  pausedAt: LogLine
  /** The accept-resumed line. */
  resumed: LogLine
  /** Established transfers whose echo came back byte-exact (sha256). */
  intact: number
  /** While paused the port stayed bound: a second bind got EADDRINUSE. */
  portHeld: boolean
  /** A client that connected while paused was served once accepting resumed. */
  servedAfter: boolean
}

/** Send `bytes` random bytes in 64 KiB chunks, respecting backpressure, into `hash`. */
async function sendInto (socket: net.Socket, hash: ReturnType<typeof createHash>, bytes: number): Promise<void> {
  let sent = 0
  while (sent < bytes) {
    const chunk = randomBytes(Math.min(64 * 1024, bytes - sent))
    hash.update(chunk)
    sent += chunk.length
    if (!socket.write(chunk)) await once(socket, 'drain')
  }
}

async function bindFails (port: number): Promise<boolean> {
  const server = net.createServer()
  const result = await new Promise<boolean>((resolve) => {
    server.once('error', (err: NodeJS.ErrnoException) => { resolve(err.code === 'EADDRINUSE') })
    server.listen({ port, host: '127.0.0.1' }, () => { resolve(false) })
  })
  if (server.listening) server.close()
  return result
}

/**
 * One burst of descriptor exhaustion: established echo transfers send half their bytes, a flood
 * of idle clients makes kaproxy pause accepting, a client connects while paused, the transfers
 * send the rest and are checked by hash, the flood leaves, and the paused client must be served.
 */
export async function floodCycle (options: FloodOptions): Promise<FloodFigures> {
  const { port, log, burst, floodClients, established, bytesEach } = options
  const half = Math.floor(bytesEach / 2)
  const transfers = await Promise.all(Array.from({ length: established }, async () => {
    const socket = await connect(port, '127.0.0.1', { allowHalfOpen: true })
    const hash = createHash('sha256')
    const received = drainToHash(socket)
    await sendInto(socket, hash, half)
    return { socket, hash, received }
  }))

  const flood: net.Socket[] = []
  const opened = Array.from({ length: floodClients }, async () => {
    const socket = net.connect({ port, host: '127.0.0.1' })
    socket.on('error', () => {})
    flood.push(socket)
    await Promise.race([once(socket, 'connect'), once(socket, 'close')])
  })
  const pausedAt = (await log.waitForCount({ event: 'accept-paused' }, burst, 20_000))[burst - 1] as LogLine
  await Promise.all(opened)
  const portHeld = await bindFails(port)

  // Connected at the TCP level (the kernel's queue), accepted only once kaproxy resumes.
  const queued = net.connect({ port, host: '127.0.0.1' })
  queued.on('error', () => {})
  const reply: Buffer[] = []
  queued.on('data', (chunk: Buffer) => reply.push(chunk))
  const queuedDone = Promise.race([once(queued, 'end'), once(queued, 'close')])
  queued.end('served after the pause')

  let intact = 0
  await Promise.all(transfers.map(async ({ socket, hash, received }) => {
    await sendInto(socket, hash, bytesEach - half)
    socket.end()
    const got = await received
    socket.destroy()
    if (got.bytes === bytesEach && got.sha256 === hash.digest('hex')) intact++
  }))

  for (const socket of flood) socket.destroy()
  await queuedDone
  queued.destroy()
  const servedAfter = Buffer.concat(reply).toString() === 'served after the pause'
  const resumed = (await log.waitForCount({ event: 'accept-resumed' }, burst, 20_000))[burst - 1] as LogLine
  return { burst, floodClients, established, bytesEach, pausedAt, resumed, intact, portHeld, servedAfter }
}
