import { createHash, randomBytes } from 'node:crypto'
import { once } from 'node:events'
import type net from 'node:net'

/**
 * One end of a relayed stream, sending and receiving in phases: it hashes every byte it sends and
 * receives, so both ends can be compared byte-exact at the end however the traffic was split.
 */
export class HashedEnd {
  readonly socket: net.Socket
  sentBytes = 0
  receivedBytes = 0
  /** The socket error, if one closed it. */
  error: NodeJS.ErrnoException | null = null
  /** Resolves at the peer's FIN. */
  readonly ended: Promise<void>
  /** Resolves when the socket closed. */
  readonly closed: Promise<void>
  private readonly sentHash = createHash('sha256')
  private readonly receivedHash = createHash('sha256')
  private readonly waiters = new Set<{ bytes: number, resolve: () => void }>()

  constructor (socket: net.Socket) {
    this.socket = socket
    socket.on('error', (err) => { this.error = err })
    socket.on('data', (chunk: Buffer) => {
      this.receivedBytes += chunk.length
      this.receivedHash.update(chunk)
      for (const waiter of this.waiters) {
        if (this.receivedBytes >= waiter.bytes) { this.waiters.delete(waiter); waiter.resolve() }
      }
    })
    this.ended = new Promise((resolve) => { socket.once('end', resolve) })
    this.closed = new Promise((resolve) => { socket.once('close', () => { resolve() }) })
  }

  /** Write `total` random bytes in chunks, respecting backpressure. */
  async send (total: number, chunkSize = 256 * 1024): Promise<void> {
    let sent = 0
    while (sent < total) {
      const chunk = randomBytes(Math.min(chunkSize, total - sent))
      this.sentHash.update(chunk)
      sent += chunk.length
      this.sentBytes += chunk.length
      if (!this.socket.write(chunk)) await once(this.socket, 'drain')
    }
  }

  /** Resolves once `bytes` have arrived in total. */
  async receivedAtLeast (bytes: number): Promise<void> {
    if (this.receivedBytes >= bytes) return
    await new Promise<void>((resolve) => { this.waiters.add({ bytes, resolve }) })
  }

  sent (): { bytes: number, sha256: string } {
    return { bytes: this.sentBytes, sha256: this.sentHash.copy().digest('hex') }
  }

  received (): { bytes: number, sha256: string } {
    return { bytes: this.receivedBytes, sha256: this.receivedHash.copy().digest('hex') }
  }
}
