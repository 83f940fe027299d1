import net, { type Socket } from 'node:net'
import { formatHostPort } from '../../config/formats.js'
import { SIDES, type RouteConfig, type Side } from '../../config/types.js'
import { NoDescriptorError } from '../../errors.js'
import { applyKeepalive, type KeepaliveSettings } from '../../keepalive.js'
import { isAbortive, reasonForError, type CloseReason } from '../close-reason.js'
import type { CloseSummary, ConnectionRecord } from '../engine.js'

/** What a connection reports to the listener that owns it. */
export interface ConnectionOwner {
  opened: (connection: Connection) => void
  closed: (connection: Connection, summary: CloseSummary) => void
}

// Handlers are shared by every connection (no closures per connection): each socket carries
// its connection under this symbol, and the connection tells which side a socket is.
const CONNECTION = Symbol('kaproxy.connection')
type RelaySocket = Socket & { [CONNECTION]: Connection }

function addressOf (host: string | undefined, port: number | undefined): string {
  return host === undefined || port === undefined ? 'unknown' : formatHostPort({ host, port })
}

/**
 * One client connection and its upstream, from accept to the single close summary.
 * The data path, top to bottom: accept -> client keepalive -> dial -> upstream keepalive ->
 * pump both ways with backpressure and half-close -> close with one reason.
 */
export class Connection implements ConnectionRecord {
  readonly id: number
  readonly route: RouteConfig
  readonly client: string
  upstream: string
  readonly openedAt = Date.now()
  bytesFromClient = 0
  bytesFromUpstream = 0
  connectMs: number | null = null

  private readonly owner: ConnectionOwner
  /** Starts as the route's; a reload with keepalive.applyToExisting replaces it (see retune). */
  private keepalive: Record<Side, KeepaliveSettings>
  private readonly clientSocket: RelaySocket
  private upstreamSocket: RelaySocket | null = null
  private connected = false
  private openSockets = 1
  private firstFin: Side | null = null
  private reason: CloseReason | null = null
  private reasonSide: Side | null = null
  private error: NodeJS.ErrnoException | null = null

  constructor (id: number, route: RouteConfig, client: Socket, owner: ConnectionOwner) {
    this.id = id
    this.route = route
    this.owner = owner
    this.keepalive = route.keepalive
    this.client = addressOf(client.remoteAddress, client.remotePort)
    this.upstream = formatHostPort(route.upstream)
    this.clientSocket = Object.assign(client, { [CONNECTION]: this })
  }

  socket (side: Side): Socket | null {
    return side === 'client' ? this.clientSocket : this.upstreamSocket
  }

  /** Begin: the client socket arrives paused (pauseOnConnect) and stays so until the upstream accepts. */
  start (): void {
    const client = this.clientSocket
    client.on('error', onError)
    client.on('end', onEnd)
    client.on('close', onClose)
    if (!this.applySideKeepalive('client')) return

    const { host, port } = this.route.upstream
    const upstream = net.connect({ host, port, allowHalfOpen: true, noDelay: true })
    this.upstreamSocket = Object.assign(upstream, { [CONNECTION]: this })
    this.openSockets++
    upstream.on('connect', onUpstreamConnect)
    upstream.on('error', onError)
    upstream.on('end', onEnd)
    upstream.on('close', onClose)
    upstream.on('timeout', onConnectTimeout)
    upstream.setTimeout(this.route.connectTimeoutMs)
  }

  /** The keepalive this connection's sockets were last given. */
  keepaliveSettings (): Readonly<Record<Side, KeepaliveSettings>> {
    return this.keepalive
  }

  /**
   * Use `keepalive` from now on: re-apply it with setsockopt to each side's live socket; an upstream
   * still dialing gets it once connected. Returns how many sockets were re-tuned. A socket without a
   * descriptor (closing) is skipped; a refused value throws SockoptError after both sides were tried,
   * and the connection carries on with what the kernel kept: a tuning change never cuts it.
   */
  retune (keepalive: Record<Side, KeepaliveSettings>): number {
    this.keepalive = keepalive
    if (this.reason !== null) return 0
    let sockets = 0
    let failure: unknown = null
    for (const side of SIDES) {
      const socket = side === 'client' ? this.clientSocket : this.connected ? this.upstreamSocket : null
      if (socket === null || socket.destroyed) continue
      try {
        applyKeepalive(socket, keepalive[side])
        sockets++
      } catch (err) {
        if (!(err instanceof NoDescriptorError)) failure ??= err
      }
    }
    if (failure !== null) throw failure
    return sockets
  }

  /** Close both sides now with `reason` (e.g. `shutdown`). */
  destroy (reason: CloseReason): void {
    this.finish(reason, null, null)
  }

  sideOf (socket: Socket): Side {
    return socket === this.clientSocket ? 'client' : 'upstream'
  }

  peerOf (socket: Socket): Socket | null {
    return socket === this.clientSocket ? this.upstreamSocket : this.clientSocket
  }

  connectedUpstream (): void {
    const upstream = this.upstreamSocket
    if (upstream === null) return
    upstream.setTimeout(0)
    this.connected = true
    this.connectMs = Date.now() - this.openedAt
    this.upstream = addressOf(upstream.remoteAddress, upstream.remotePort)
    // Node's setKeepAlive() is never called: libuv would force interval 1 s and count 10.
    if (!this.applySideKeepalive('upstream')) return
    const client = this.clientSocket
    client.on('data', onData)
    client.on('drain', onDrain)
    upstream.on('data', onData)
    upstream.on('drain', onDrain)
    this.owner.opened(this)
    client.resume()
  }

  countFin (side: Side): void {
    this.firstFin ??= side
  }

  /** Record the first cause (an error may replace an orderly close) and tear both sides down. */
  finish (reason: CloseReason, side: Side | null, error: NodeJS.ErrnoException | null): void {
    const orderly = this.reason === null || this.reason === 'client-closed' || this.reason === 'upstream-closed'
    if (orderly) {
      this.reason = reason
      this.reasonSide = side
      this.error = error
    }
    const abortive = isAbortive(reason)
    for (const socket of [this.clientSocket, this.upstreamSocket]) {
      if (socket === null || socket.destroyed) continue
      // A reset tells the surviving peer the stream was cut, not complete; resetAndDestroy
      // waits for a pending connect, so an unconnected upstream is simply destroyed.
      if (abortive && !socket.connecting) socket.resetAndDestroy()
      else socket.destroy()
    }
  }

  socketClosed (): void {
    if (--this.openSockets > 0) return
    const side = this.reasonSide ?? this.firstFin
    const reason = this.reason ?? (this.firstFin === 'upstream' ? 'upstream-closed' : 'client-closed')
    this.owner.closed(this, { reason, side, durationMs: Date.now() - this.openedAt, error: this.error })
  }

  private applySideKeepalive (side: Side): boolean {
    const socket = side === 'client' ? this.clientSocket : this.upstreamSocket
    if (socket === null) return false
    try {
      applyKeepalive(socket, this.keepalive[side])
      return true
    } catch (err) {
      // No descriptor means the peer is already gone; anything else is the kernel refusing a value.
      const reason: CloseReason = err instanceof NoDescriptorError ? (side === 'client' ? 'client-error' : 'upstream-error') : 'sockopt-failed'
      this.finish(reason, side, err as NodeJS.ErrnoException)
      return false
    }
  }

  isConnected (): boolean {
    return this.connected
  }
}

function onData (this: RelaySocket, chunk: Buffer): void {
  const connection = this[CONNECTION]
  const peer = connection.peerOf(this)
  if (connection.sideOf(this) === 'client') connection.bytesFromClient += chunk.length
  else connection.bytesFromUpstream += chunk.length
  if (peer !== null && !peer.write(chunk)) this.pause()
}

function onDrain (this: RelaySocket): void {
  this[CONNECTION].peerOf(this)?.resume()
}

// Half-close: a FIN from one side becomes a FIN to the other, and the reverse direction keeps flowing.
function onEnd (this: RelaySocket): void {
  const connection = this[CONNECTION]
  connection.countFin(connection.sideOf(this))
  connection.peerOf(this)?.end()
}

function onError (this: RelaySocket, err: NodeJS.ErrnoException): void {
  const connection = this[CONNECTION]
  const side = connection.sideOf(this)
  connection.finish(reasonForError(side, err, connection.isConnected()), side, err)
}

function onClose (this: RelaySocket): void {
  this[CONNECTION].socketClosed()
}

function onUpstreamConnect (this: RelaySocket): void {
  this[CONNECTION].connectedUpstream()
}

function onConnectTimeout (this: RelaySocket): void {
  const connection = this[CONNECTION]
  if (!connection.isConnected()) connection.finish('connect-timeout', 'upstream', null)
}
