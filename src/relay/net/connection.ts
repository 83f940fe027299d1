import net, { type Socket } from 'node:net'
import { constants as osConstants } from 'node:os'
import { formatHostPort } from '../../config/formats.js'
import { SIDES, type RouteConfig, type Side } from '../../config/types.js'
import { NoDescriptorError, SockoptError } from '../../errors.js'
import { applyKeepalive, applyKeepaliveFd, pendingSocketError, socketFd, type KeepaliveSettings } from '../../keepalive.js'
import { closeDescriptor, closeWithReset, duplicateDescriptor, errnoName, sendNow, socketAddress } from '../../sockopt/libc.js'
import { sockaddrText } from '../../sockopt/original-dst.js'
import type { SpliceStats } from '../fast/data-plane.js'
import type { SpliceWorkers } from '../fast/worker-pool.js'
import {
  STAT_BYTES_FROM_CLIENT, STAT_BYTES_FROM_UPSTREAM, STAT_LAST_BYTE_AT, STAT_LAST_SILENCE_ENDED_AT, STAT_LAST_SILENCE_MS, clientText, epochMs, onThisClock, type Accepted, type PairEnded
} from '../fast/protocol.js'
import { markedSocket } from '../../sockopt/mark.js'
import { originalDestination } from '../../sockopt/original-dst.js'
import type { UpstreamMember, UpstreamPool } from '../../upstream/pool.js'
import { cachedLookup } from '../../upstream/resolver.js'
import type { UpstreamTarget } from '../../upstream/target.js'
import { isAbortive, isDescriptorExhaustion, reasonForError, relayEndError, relayEndReason, silenceBeforeReset, type CloseReason } from '../close-reason.js'
import type { CloseSummary, ConnectionRecord, SideEndpoint } from '../engine.js'
import { encodeV1, encodeV2, parseProxyHeader, type ProxiedAddresses } from '../proxy-protocol.js'
import { returnSpillBuffer, SPILL_BUFFER_BYTES, takeSpillBuffer } from './spill-buffers.js'

/** What a connection reports to the listener that owns it. */
export interface ConnectionOwner {
  readonly pool: UpstreamPool
  /** The fast engine's worker, for routes on `fast`. */
  readonly dataPlane: SpliceWorkers
  opened: (connection: Connection) => void
  closed: (connection: Connection, summary: CloseSummary) => void
  dialFailed: (connection: Connection, target: UpstreamTarget, reason: CloseReason, error: NodeJS.ErrnoException | null) => void
  /** A dial found no descriptor left (EMFILE, ENFILE). */
  fdExhausted: () => void
  /** A down target's next trial time changed (the fast engine's worker must know). */
  retrialScheduled: () => void
}

// Handlers are shared by every connection (no closures per connection): each socket carries
// its connection under this symbol, and the connection tells which side a socket is.
const CONNECTION = Symbol('kaproxy.connection')
type RelaySocket = Socket & { [CONNECTION]: Connection }

/**
 * The relay on the main thread reads every socket into this one buffer (`onread`): no allocation
 * per read, and reads as large as the kernel has (up to 4 MiB: 1 MiB was slower), the biggest lever on this path.
 * The bytes leave within the read's callback through send(2), which copies them: nothing refers to
 * the buffer once the callback returns (what a send could not place is copied out into a spill
 * buffer, which holds one read whole: spill-buffers.ts).
 */
const READ_BUFFER = Buffer.allocUnsafe(SPILL_BUFFER_BYTES)
const ONREAD = { buffer: READ_BUFFER, callback: onChunk }
const EAGAIN = osConstants.errno.EAGAIN

/**
 * Where `new net.Socket({ onread })` keeps the buffer and the callback: found by their values on a
 * probe socket (Node keeps them under private symbols). Null where Node keeps them otherwise.
 */
const ONREAD_KEYS = ((): { buffer: symbol, callback: symbol } | null => {
  const probe = new net.Socket({ onread: ONREAD } as net.SocketConstructorOpts)
  const fields = probe as unknown as Record<symbol, unknown>
  const keys = Object.getOwnPropertySymbols(fields)
  const buffer = keys.find((key) => fields[key] === READ_BUFFER)
  const callback = keys.find((key) => fields[key] === onChunk)
  probe.destroy()
  return buffer === undefined || callback === undefined ? null : { buffer, callback }
})()

/** Accepted sockets are made to read through ONREAD as they are (see readingSocket), not re-made. */
export const acceptedReadsInPlace = ONREAD_KEYS !== null

interface UserBufferHandle { useUserBuffer?: (buffer: Buffer) => void }

/**
 * The accepted socket, reading through ONREAD (Node offers `onread` only to sockets it makes).
 * Done in place as Node's constructor does it (the two properties, then the handle's
 * useUserBuffer), while the socket is still paused: no second socket per connection, which was
 * garbage right after opening. Where that is not possible, a new socket on a duplicate of its
 * descriptor, not reading until resumed; the accepted one is let go of. Throws SockoptError
 * (EMFILE) or NoDescriptorError (the client already left) from the duplicate.
 */
export function readingSocket (accepted: Socket): Socket {
  const handle = (accepted as unknown as { _handle?: UserBufferHandle | null })._handle
  if (ONREAD_KEYS !== null && typeof handle?.useUserBuffer === 'function') {
    const fields = accepted as unknown as Record<symbol, unknown>
    fields[ONREAD_KEYS.buffer] = READ_BUFFER
    fields[ONREAD_KEYS.callback] = onChunk
    handle.useUserBuffer(READ_BUFFER)
    return accepted
  }
  const fd = duplicateDescriptor(socketFd(accepted))
  accepted.destroy()
  return new net.Socket({ fd, allowHalfOpen: true, readable: true, writable: true, pauseOnCreate: true, onread: ONREAD } as net.SocketConstructorOpts)
}

/** Largest PROXY header accepted (v1 is at most 107 bytes; v2 TLVs beyond this are refused). */
const MAX_PROXY_HEADER = 4096

type Phase = 'header' | 'dialing' | 'relaying' | 'closing'

/** Shortest quiet (ms) that counts as a silence ended by the next bytes: below the histogram's first bucket. */
export const SILENCE_MIN_MS = 1000

// Loop guard: kaproxy's own upstream connections, dialing and connected. A client that arrives
// from one of them is kaproxy itself: chaining routes (A -> B) is fine, but a chain that comes back
// to a route already in it (a capture rule that missed kaproxy's uid or mark, a route whose
// upstream is its own listener, A -> B -> A) would grow without end.
// Dialing upstreams are indexed by flow once their local port exists (after the connect call):
// each is looked up by getsockname at most until that succeeds, so an accept costs O(1), not a
// system call per connection being dialed.
const dialingUnindexed = new Set<Connection>()
const dialingFlows = new Map<string, Connection>()
const upstreamEndpoints = new Map<string, Connection>()

/** One direction of a TCP 4-tuple, `source>destination`, addresses without the IPv4-mapped prefix. */
function flowKey (sourceAddress: string | undefined, sourcePort: number | undefined, destinationAddress: string | undefined, destinationPort: number | undefined): string {
  const plain = (address: string | undefined): string => (address ?? '').replace(/^::ffff:/, '')
  // Joined into a flat string: a long-lived map key (see formatHostPort).
  return [plain(sourceAddress), '|', sourcePort ?? 0, '>', plain(destinationAddress), '|', destinationPort ?? 0].join('')
}

/** The flow of a dialing upstream socket: its local end from the handle (Node's getter is empty while connecting). */
function flowOfDialingSocket (socket: Socket, target: UpstreamTarget): string | null {
  if (target.kind !== 'tcp') return null
  const handle = (socket as unknown as { _handle?: { getsockname?: (out: { address?: string, port?: number }) => number } | null })._handle
  const out: { address?: string, port?: number } = {}
  if (handle?.getsockname === undefined || handle.getsockname(out) !== 0 || out.port === undefined) return null
  return flowKey(out.address, out.port, target.host, target.port)
}

/**
 * The kaproxy connection whose upstream flow is the accepted flow `source -> destination`, if any.
 * The destination is where the client meant to go: the listener, or the original destination in
 * transparent mode. Whole 4-tuples are compared: a local port alone is reused across destinations.
 */
function ownUpstream (sourceAddress: string | undefined, sourcePort: number | undefined, destinationAddress: string, destinationPort: number): Connection | null {
  for (const connection of dialingUnindexed) {
    const upstream = connection.dialingSocket()
    const target = connection.dialTarget()
    const flow = upstream === null || target === null ? null : flowOfDialingSocket(upstream, target)
    if (flow === null) continue
    dialingUnindexed.delete(connection)
    connection.dialingFlow = flow
    dialingFlows.set(flow, connection)
  }
  const key = flowKey(sourceAddress, sourcePort, destinationAddress, destinationPort)
  return upstreamEndpoints.get(key) ?? dialingFlows.get(key) ?? null
}

/** The connection's upstream is no longer being dialed (connected, failed or closing). */
function stopDialing (connection: Connection): void {
  if (connection.connectTimer !== null) {
    clearTimeout(connection.connectTimer)
    connection.connectTimer = null
  }
  dialingUnindexed.delete(connection)
  if (connection.dialingFlow !== null) {
    dialingFlows.delete(connection.dialingFlow)
    connection.dialingFlow = null
  }
}

const NOTHING_TRIED: ReadonlySet<UpstreamMember> = new Set()

function addressOf (host: string | undefined, port: number | undefined): string {
  return hostPortText(host, port) ?? 'unknown'
}

/** EventEmitter's listener storage: one function per event, an array once there are two. */
function listenersOf (socket: Socket): Record<string | symbol, unknown> | undefined {
  return (socket as unknown as { _events?: Record<string | symbol, unknown> })._events
}

/**
 * onEnd, in place of Node's own 'end' listener where that one has nothing to do: it only stops
 * writes after the peer's FIN on a socket without allowHalfOpen, and every relayed socket allows
 * half-open. One function per socket instead of an array of two: about 250 bytes less per
 * connection at 9,000 idle ones. Replaced in place: removing Node's listener first (`delete`)
 * turns the socket's listener object into a dictionary, which costs more than the array.
 */
function listenForEnd (socket: Socket): void {
  const listeners = listenersOf(socket)
  if (socket.allowHalfOpen && socket.listenerCount('end') === 1 && listeners !== undefined && typeof listeners.end === 'function') listeners.end = onEnd
  else socket.on('end', onEnd)
}

/** Whether this Node keeps a new half-open socket's one 'end' listener where listenForEnd replaces it. */
export const endListenedInPlace = ((): boolean => {
  const probe = new net.Socket({ allowHalfOpen: true })
  const found = probe.listenerCount('end') === 1 && typeof listenersOf(probe)?.end === 'function'
  probe.destroy()
  return found
})()

/**
 * One client connection and its upstream, from accept to the single close summary.
 * The data path, top to bottom: accept -> client keepalive -> [PROXY header in] -> dial a target
 * (next target on failure, up to `retries`) -> upstream keepalive -> [PROXY header out] ->
 * pump both ways with backpressure and half-close -> close with one reason.
 */
export class Connection implements ConnectionRecord {
  readonly id: number
  readonly route: RouteConfig
  client: string
  /** The load balancer's address when the client address came from a PROXY header. */
  clientVia: string | null = null
  upstream: string
  openedAt = Date.now()
  connectMs: number | null = null
  // Counted here by the net relay; the fast engine's worker counts in shared memory (`spliced`)
  // while it relays, and the totals come back here when it lets go.
  clientBytes = 0
  upstreamBytes = 0
  // Silence tracking, on performance.now()'s clock in ms: one timestamp per chunk, no allocation.
  lastByte = 0
  silenceMs = 0
  silenceEndedAt = 0
  /**
   * Live statistics while the fast engine's worker relays this connection, from the hand-over
   * until it lets go (relayEnded); null otherwise. While set, the descriptors must stay open.
   */
  private spliced: SpliceStats | null = null

  private readonly owner: ConnectionOwner
  // Null once the fast engine holds the connection as bare descriptors (`clientFd`, `upstreamFd`).
  private clientSocket: RelaySocket | null
  private upstreamSocket: RelaySocket | null = null
  /**
   * The client and upstream descriptors held without net.Sockets from the hand-over to the fast
   * engine until the close: duplicates made before Node let go of its sockets, closed only here,
   * and only after the worker let go of them; -1 otherwise (held while clientFd >= 0; upstreamFd
   * is -1 when the worker's dial failed). Two numbers, not an array: 56 bytes less per connection.
   */
  private clientFd = -1
  private upstreamFd = -1
  private phase: Phase = 'dialing'
  private openSockets = 1
  private firstFin: Side | null = null
  private reason: CloseReason | null = null
  private reasonSide: Side | null = null
  private error: NodeJS.ErrnoException | null = null
  /** performance.now() when the first cause was recorded. */
  private closingAt = 0
  // Dialing state: the pool member in use (none in transparent mode), those tried, and the last failure.
  private attempts = 0
  private originalTarget: UpstreamTarget | null = null
  // The keepalive each side was given; a reload with keepalive.applyToExisting replaces them (retune).
  private clientKeepalive: KeepaliveSettings
  private upstreamKeepalive: KeepaliveSettings
  private member: UpstreamMember | null = null
  private ownEndpoint: string | null = null
  /** The flow key of the upstream being dialed, once known (loop guard index). */
  dialingFlow: string | null = null
  /** The current dial attempt's connect timeout (its own timer: a socket's would stay referenced after it is cleared). */
  connectTimer: NodeJS.Timeout | null = null
  /** Routes this connection came through when it is one of kaproxy's own upstream connections; else null. */
  private chain: readonly string[] | null = null
  private tried: Set<UpstreamMember> | null = null
  private lastFailure: { reason: CloseReason, error: NodeJS.ErrnoException | null } | null = null
  // acceptProxyProtocol: bytes read so far, the parsed addresses, and stream bytes that followed the header.
  private header: Buffer | null = null
  private proxied: ProxiedAddresses | null = null
  private pendingToUpstream: Buffer | null = null

  /** `client` null: the fast engine's worker accepted it (see fromWorker). */
  constructor (id: number, route: RouteConfig, client: Socket | null, owner: ConnectionOwner) {
    this.id = id
    this.route = route
    this.owner = owner
    this.client = client === null ? 'unknown' : addressOf(client.remoteAddress, client.remotePort)
    this.upstream = route.upstreams[0]?.label ?? 'original-dst'
    this.clientKeepalive = route.keepalive.client
    this.upstreamKeepalive = route.keepalive.upstream
    this.clientSocket = client === null ? null : Object.assign(client, { [CONNECTION]: this })
  }

  /**
   * A connection the fast engine's worker accepted and dialed by itself (the route's one target).
   * It owns both descriptors from here; `adopt` then takes it to relaying (`stats`), or closes it
   * with the reason of the worker's failure.
   */
  static fromWorker (route: RouteConfig, owner: ConnectionOwner, event: Accepted): Connection {
    const connection = new Connection(event.id, route, null, owner)
    connection.client = clientText(event.client)
    connection.clientFd = event.clientFd
    connection.upstreamFd = event.upstreamFd
    connection.openedAt = epochMs(event.acceptedAt)
    return connection
  }

  /** Carry on from where the worker got (see fromWorker), once the route counts this connection. */
  adopt (event: Accepted, stats: SpliceStats | null): void {
    const owner = this.owner
    const member = owner.pool.members[0] ?? null
    const failure = event.failure
    if (failure !== null || stats === null) {
      // A connect timeout carries no socket error, as on the main thread.
      const error: NodeJS.ErrnoException | null = event.code === '' || failure === 'connect-timeout' ? null : Object.assign(new Error(`${failure ?? 'accept'} ${event.code}`), { code: event.code })
      switch (failure) {
        case 'limit':
          this.finish('limit', null, null)
          break
        case 'down':
          // The only target is down (passive ejection) and its next trial is not due: as dial() gives up.
          this.finish('no-upstream', 'upstream', null)
          break
        case 'dial':
        case 'connect-timeout': {
          const reason: CloseReason = failure === 'connect-timeout' ? 'connect-timeout' : reasonForError('upstream', error?.code, false)
          const target = member?.target
          if (member !== null && target !== undefined) {
            owner.dialFailed(this, target, reason, error)
            // A failed trial of a down target: the next waits a full back-off (the worker learns it from a new plan).
            const trial = member.state === 'down'
            owner.pool.connectFailed(member, error?.code ?? reason)
            if (trial) { owner.pool.trialMade(member); owner.retrialScheduled() }
          }
          this.finish(reason, 'upstream', error)
          break
        }
        default:
          if (isDescriptorExhaustion(event.code)) {
            owner.fdExhausted()
            this.finish('fd-exhausted', null, error)
          } else {
            this.finish('sockopt-failed', event.side, error)
          }
      }
      return
    }
    this.phase = 'relaying'
    this.connectMs = Math.round(event.connectMs)
    this.spliced = stats
    if (member !== null) {
      member.active++
      this.member = member
      owner.pool.connectSucceeded(member)
      this.upstream = member.target.label
    }
    this.lastByte = stats.time(STAT_LAST_BYTE_AT)
    owner.opened(this)
  }

  /** The fast engine's live statistics while its worker relays this connection (SplicedConnection). */
  get spliceStats (): SpliceStats | null {
    return this.spliced
  }

  get bytesFromClient (): number {
    return this.spliced === null ? this.clientBytes : this.clientBytes + this.spliced.value(STAT_BYTES_FROM_CLIENT)
  }

  get bytesFromUpstream (): number {
    return this.spliced === null ? this.upstreamBytes : this.upstreamBytes + this.spliced.value(STAT_BYTES_FROM_UPSTREAM)
  }

  get lastByteAt (): number {
    return this.spliced === null ? this.lastByte : this.spliced.time(STAT_LAST_BYTE_AT)
  }

  get lastSilenceMs (): number {
    return this.spliced === null ? this.silenceMs : this.spliced.value(STAT_LAST_SILENCE_MS)
  }

  get lastSilenceEndedAt (): number {
    return this.spliced === null ? this.silenceEndedAt : this.spliced.time(STAT_LAST_SILENCE_ENDED_AT)
  }

  endpoint (side: Side): SideEndpoint | null {
    if (this.clientFd >= 0) {
      const fd = side === 'client' ? this.clientFd : this.upstreamFd
      return { fd, local: sockaddrText(socketAddress(fd, 'local')), remote: sockaddrText(socketAddress(fd, 'peer')) }
    }
    const socket = side === 'client' ? this.clientSocket : this.upstreamSocket
    if (socket === null) return null
    let fd = -1
    try { fd = socketFd(socket) } catch {}
    return { fd, local: hostPortText(socket.localAddress, socket.localPort), remote: hostPortText(socket.remoteAddress, socket.remotePort) }
  }

  /** The upstream socket being dialed (loop guard). */
  dialingSocket (): Socket | null {
    return this.upstreamSocket
  }

  /** Begin: the client socket arrives paused (pauseOnConnect) and stays so until the upstream accepts. */
  start (): void {
    const client = this.clientSocket
    if (client === null) return
    client.on('error', onError)
    listenForEnd(client)
    client.on('close', onClose)
    client.on('timeout', onClientTimeout)
    if (this.route.originalDst === null && this.loopsBack(client.localAddress ?? '', client.localPort ?? 0)) return
    if (!this.applySideKeepalive('client')) return
    if (this.route.acceptProxyProtocol) {
      this.phase = 'header'
      this.header = Buffer.alloc(0)
      client.setTimeout(this.route.proxyHeaderTimeoutMs)
      client.resume()
      return
    }
    if (this.route.originalDst !== null && !this.findOriginalDestination()) return
    this.dial()
  }

  /**
   * Transparent mode: the destination the client meant before an iptables REDIRECT. A connection
   * that was not redirected (ENOENT, or the destination is this listener itself) is never relayed,
   * so kaproxy cannot connect to itself in a loop.
   */
  private findOriginalDestination (): boolean {
    const originalDst = this.route.originalDst
    if (originalDst === null) return true
    const client = this.clientSocket
    if (client === null) return false
    let destination
    try {
      destination = originalDestination(client)
    } catch (err) {
      this.finish('no-original-destination', 'client', err as NodeJS.ErrnoException)
      return false
    }
    const local = (client.localAddress ?? '').replace(/^::ffff:/, '')
    const label = formatHostPort({ host: destination.address, port: destination.port })
    this.upstream = label
    if (destination.address === local && destination.port === client.localPort) {
      this.finish('no-original-destination', 'client', null)
      return false
    }
    if (this.loopsBack(destination.address, destination.port)) return false
    if (originalDst.allow !== null && !originalDst.allow.some((rule) => rule.matches(destination.address, destination.port))) {
      this.finish('destination-denied', 'client', null)
      return false
    }
    this.originalTarget = { kind: 'tcp', host: destination.address, port: destination.port, label }
    this.upstreamKeepalive = this.keepaliveFor(this.route).upstream
    return true
  }

  /** The keepalive each side of this connection gets under `route` (transparent mode: per destination). */
  keepaliveFor (route: RouteConfig): Record<Side, KeepaliveSettings> {
    const target = this.originalTarget
    const upstream = target?.kind === 'tcp'
      ? route.originalDst?.destinations.find((d) => d.match.matches(target.host, target.port))?.keepalive ?? route.keepalive.upstream
      : route.keepalive.upstream
    return { client: route.keepalive.client, upstream }
  }

  /** The keepalive each side was last given. */
  keepaliveSettings (): Record<Side, KeepaliveSettings> {
    return { client: this.clientKeepalive, upstream: this.upstreamKeepalive }
  }

  /**
   * Use `keepalive` from now on: re-apply it with setsockopt to each side's live TCP socket; an
   * upstream still dialing gets it once connected. Returns how many sockets were re-tuned. A socket
   * without a descriptor (closing) is skipped; a refused value throws SockoptError after both sides
   * were tried, and the connection carries on with what the kernel kept: tuning never cuts it.
   */
  retune (keepalive: Record<Side, KeepaliveSettings>): number {
    this.clientKeepalive = keepalive.client
    this.upstreamKeepalive = keepalive.upstream
    if (this.phase === 'closing') return 0
    const upstreamIsTcp = (this.member?.target ?? this.originalTarget)?.kind === 'tcp'
    let sockets = 0
    let failure: unknown = null
    for (const side of SIDES) {
      if (this.clientFd >= 0) {
        if (side === 'upstream' && !upstreamIsTcp) continue
        try {
          applyKeepaliveFd(side === 'client' ? this.clientFd : this.upstreamFd, keepalive[side])
          sockets++
        } catch (err) {
          failure ??= err
        }
        continue
      }
      const socket = side === 'client' ? this.clientSocket : this.phase === 'relaying' && upstreamIsTcp ? this.upstreamSocket : null
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

  /** Refuse the client at once (e.g. `limit`), without dialing; `error` says why when there is one. */
  reject (reason: CloseReason, error: NodeJS.ErrnoException | SockoptError | null = null): void {
    this.clientSocket?.on('error', onError)
    this.clientSocket?.on('close', onClose)
    this.finish(reason, null, asErrno(error))
  }

  /** Close both sides now with `reason` (e.g. `shutdown`). */
  destroy (reason: CloseReason): void {
    this.finish(reason, null, null)
  }

  sideOf (socket: Socket): Side {
    return socket === this.clientSocket ? 'client' : 'upstream'
  }

  /** False for an abandoned dial attempt's socket, whose late events are ignored. */
  owns (socket: Socket): boolean {
    return socket === this.clientSocket || socket === this.upstreamSocket
  }

  peerOf (socket: Socket): Socket | null {
    return socket === this.clientSocket ? this.upstreamSocket : this.clientSocket
  }

  /** Close with `loop-detected` when this client is kaproxy's own upstream flow coming back to a route already in its chain. */
  private loopsBack (destinationAddress: string, destinationPort: number): boolean {
    const client = this.clientSocket
    if (client === null) return false
    const via = ownUpstream(client.remoteAddress, client.remotePort, destinationAddress, destinationPort)
    if (via === null) return false
    this.chain = [...(via.chain ?? []), via.route.name]
    if (!this.chain.includes(this.route.name)) return false
    this.finish('loop-detected', 'client', null)
    return true
  }

  /** The target being dialed (a pool member's or the original destination). */
  dialTarget (): UpstreamTarget | null {
    return this.member?.target ?? this.originalTarget
  }

  isConnected (): boolean {
    return this.phase === 'relaying'
  }

  currentPhase (): Phase {
    return this.phase
  }

  /** acceptProxyProtocol: accumulate and parse the header; then dial with the bytes that followed. */
  headerData (chunk: Buffer): void {
    const buffer = Buffer.concat([this.header ?? Buffer.alloc(0), chunk])
    this.header = buffer
    let parsed
    try {
      parsed = parseProxyHeader(buffer)
      if (parsed === null && buffer.length > MAX_PROXY_HEADER) throw new Error(`header longer than ${MAX_PROXY_HEADER} bytes`)
    } catch (err) {
      this.finish('proxy-protocol-error', 'client', err as NodeJS.ErrnoException)
      return
    }
    if (parsed === null) return
    const client = this.clientSocket
    if (client === null) return
    client.pause()
    client.setTimeout(0)
    this.header = null
    this.proxied = parsed.addresses
    const source = parsed.addresses.source
    if (source !== null) {
      this.clientVia = this.client
      this.client = formatHostPort({ host: source.address, port: source.port })
    }
    if (parsed.rest.length > 0) this.pendingToUpstream = Buffer.from(parsed.rest)
    this.phase = 'dialing'
    if (this.route.originalDst !== null && !this.findOriginalDestination()) return
    this.dial()
  }

  private dial (): void {
    let target: UpstreamTarget
    if (this.originalTarget !== null) {
      if (this.attempts > 0) { this.giveUp(); return }
      target = this.originalTarget
    } else {
      const member = this.owner.pool.pick(this.tried ?? NOTHING_TRIED)
      if (member === null) { this.giveUp(); return }
      member.active++
      this.member = member
      target = member.target
    }
    this.attempts++
    this.upstream = target.label
    let socket: Socket
    try {
      socket = openUpstream(target, this.route.socketMark)
    } catch (err) {
      if (this.member !== null) { this.member.active--; this.member = null }
      // A marked socket is made with socket(2) through koffi: EMFILE arrives here as a SockoptError.
      if (err instanceof SockoptError && isDescriptorExhaustion(err.errno)) this.noDescriptor(err)
      else this.finish('sockopt-failed', 'upstream', err as NodeJS.ErrnoException)
      return
    }
    const upstream = this.upstreamSocket = Object.assign(socket, { [CONNECTION]: this })
    // For the fast engine Node must never read this socket: paused before 'connect', libuv does
    // not start reading it (bytes read here would be stranded in Node's buffer).
    if (this.route.engine === 'fast') upstream.pause()
    this.openSockets++
    upstream.on('connect', onUpstreamConnect)
    upstream.on('error', onError)
    listenForEnd(upstream)
    upstream.on('close', onClose)
    this.connectTimer = setTimeout(connectTimedOut, this.route.connectTimeoutMs, this).unref()
    if (target.kind === 'tcp') dialingUnindexed.add(this)
  }

  /** A dial attempt failed: try the next target, or give up when `retries` are spent. */
  dialFailed (reason: CloseReason, error: NodeJS.ErrnoException | null): void {
    const socket = this.upstreamSocket
    const member = this.member
    const target = member?.target ?? this.originalTarget
    if (socket === null || target === null) return
    this.upstreamSocket = null
    this.member = null
    this.openSockets--
    stopDialing(this)
    socket.destroy()
    // No descriptor for the socket: the target was never tried, so it is neither blamed (passive
    // ejection) nor retried elsewhere, where the same would happen.
    if (isDescriptorExhaustion(error?.code)) {
      if (member !== null) member.active--
      this.noDescriptor(error)
      return
    }
    this.owner.dialFailed(this, target, reason, error)
    if (member !== null) {
      member.active--
      this.owner.pool.connectFailed(member, error?.code ?? reason)
      // Only a failed target needs remembering (most connections never make one).
      this.tried ??= new Set()
      this.tried.add(member)
    }
    this.lastFailure = { reason, error }
    if (this.attempts <= this.route.retries) this.dial()
    else this.giveUp()
  }

  private noDescriptor (error: NodeJS.ErrnoException | SockoptError | null): void {
    this.owner.fdExhausted()
    this.finish('fd-exhausted', null, asErrno(error))
  }

  private giveUp (): void {
    const attempts = this.attempts
    // One attempt keeps its precise reason; after several (or none possible) the pool is out of targets.
    const reason = attempts === 1 && this.lastFailure !== null ? this.lastFailure.reason : 'no-upstream'
    this.finish(reason, 'upstream', this.lastFailure?.error ?? null)
  }

  connectedUpstream (): void {
    const upstream = this.upstreamSocket
    const member = this.member
    const target = member?.target ?? this.originalTarget
    if (upstream === null || target === null) return
    stopDialing(this)
    this.tried = null
    this.connectMs = Date.now() - this.openedAt
    if (member !== null) this.owner.pool.connectSucceeded(member)
    if (target.kind === 'tcp') {
      this.ownEndpoint = flowKey(upstream.localAddress, upstream.localPort, upstream.remoteAddress, upstream.remotePort)
      upstreamEndpoints.set(this.ownEndpoint, this)
      // The target's own label when it says the same (a numeric target): one string for every connection.
      const address = addressOf(upstream.remoteAddress, upstream.remotePort)
      this.upstream = address === target.label ? target.label : address
      // Node's setKeepAlive() is never called: libuv would force interval 1 s and count 10.
      if (!this.applySideKeepalive('upstream')) return
    }
    this.phase = 'relaying'
    // The silence clock starts at connect: a flow that never carried a byte is silent from here.
    this.lastByte = performance.now()
    this.owner.opened(this)
    // A PROXY header goes first, written by Node on either engine.
    const header = this.route.proxyProtocol === null ? null : this.proxyHeader(this.route.proxyProtocol)
    const client = this.clientSocket
    if (client !== null) forgetAddresses(client)
    forgetAddresses(upstream)
    if (this.route.engine === 'fast' && this.pendingToUpstream === null) {
      // The worker takes over once the header left.
      if (header === null) this.handOver()
      else upstream.write(header, () => { this.handOver() })
      return
    }
    if (header !== null) upstream.write(header)
    this.relayInNode()
  }

  /** The net relay: each side's reads go to the other within the read (relayChunk), with backpressure. */
  private relayInNode (): void {
    const client = this.clientSocket
    const upstream = this.upstreamSocket
    if (client === null || upstream === null) return
    if (this.pendingToUpstream !== null) {
      this.clientBytes += this.pendingToUpstream.length
      upstream.write(this.pendingToUpstream)
      this.pendingToUpstream = null
    }
    if (this.firstFin === 'client') upstream.end()
    // One timer on the client socket; it restarts on the client's reads only (bytes to the client
    // leave through send(2)), so when it fires the last byte either way decides (idleTimedOut).
    if (this.route.idleTimeoutMs !== null) client.setTimeout(this.route.idleTimeoutMs)
    client.resume()
    upstream.resume()
  }

  /**
   * The fast engine: the worker relays both descriptors from here on (splice, half-close, idle
   * timeout); the main thread keeps the descriptors for keepalive, TCP_INFO and closing. Falls
   * back to the net relay when the worker is unavailable.
   */
  private handOver (): void {
    const client = this.clientSocket
    const upstream = this.upstreamSocket
    if (this.phase !== 'relaying' || client === null || upstream === null) return
    // Duplicates outlive Node's sockets, which are then let go of: an idle connection costs no
    // net.Socket (about 3 KB each). Descriptors short (EMFILE): Node relays it after all.
    let clientFd: number
    let upstreamFd: number
    try {
      clientFd = duplicateDescriptor(socketFd(client))
      try {
        upstreamFd = duplicateDescriptor(socketFd(upstream))
      } catch (err) {
        closeDescriptor(clientFd)
        throw err
      }
    } catch {
      this.relayInNode()
      return
    }
    const stats = this.owner.dataPlane.relay(this, clientFd, upstreamFd, {
      idleTimeoutMs: this.route.idleTimeoutMs,
      clientEnded: this.firstFin === 'client',
      lastByteAt: this.lastByte
    })
    if (stats === null) {
      closeDescriptor(clientFd)
      closeDescriptor(upstreamFd)
      this.relayInNode()
      return
    }
    this.spliced = stats
    this.clientFd = clientFd
    this.upstreamFd = upstreamFd
    this.clientSocket = null
    this.upstreamSocket = null
    letGo(client)
    letGo(upstream)
  }

  /** The worker let go of this connection: keep its final counts, then close as it ended. */
  relayEnded (end: PairEnded): void {
    // The final figures come with the report: the worker may already reuse the slot.
    if (this.spliced !== null) {
      this.clientBytes += end.bytesFromClient
      this.upstreamBytes += end.bytesFromUpstream
      this.lastByte = onThisClock(end.lastByteAt)
      this.silenceMs = end.lastSilenceMs
      this.silenceEndedAt = onThisClock(end.lastSilenceEndedAt)
    }
    this.spliced = null
    if (end.firstFin !== null) this.countFin(end.firstFin)
    // Asked for by finish(), whose reason is recorded: now the sockets can close.
    if (end.how === 'dropped') { this.finish(this.reason ?? 'shutdown', this.reasonSide, this.error); return }
    const side = end.how === 'closed' ? end.firstFin ?? 'client' : end.side
    this.finish(relayEndReason(end.how, end.side, end.errno, end.firstFin), side, end.how === 'error' ? relayEndError(end.side, end.errno) : null)
  }

  /**
   * `length` bytes `socket` read into `buffer` (ONREAD's, reused by the next read): a PROXY header
   * being read, or bytes to relay. Relayed bytes go to the peer's descriptor with send(2) now;
   * what it does not take (a full peer) goes into the peer's Node queue in a spill buffer, and this side
   * stops reading until that is written. Returns false to stop reading.
   */
  relayChunk (socket: RelaySocket, buffer: Buffer, length: number): boolean {
    const phase = this.phase
    if (phase === 'header') {
      this.headerData(Buffer.from(buffer.subarray(0, length)))
      return this.phase === 'header'
    }
    // Nothing else reads: the client is paused from its creation until the header or the relay,
    // and the upstream starts reading after its 'connect', where the relay begins.
    if (phase !== 'relaying') return false
    const now = performance.now()
    const quietMs = now - this.lastByte
    if (quietMs >= SILENCE_MIN_MS) {
      this.silenceMs = quietMs
      this.silenceEndedAt = now
    }
    this.lastByte = now
    const fromClient = socket === this.clientSocket
    if (fromClient) this.clientBytes += length
    else this.upstreamBytes += length
    const peer = fromClient ? this.upstreamSocket : this.clientSocket
    if (peer === null || peer.destroyed) return false
    let sent = 0
    if (peer.writableLength === 0 && !peer.connecting) {
      let fd = -1
      try { fd = socketFd(peer) } catch { return false }
      sent = sendNow(fd, buffer, length)
      if (sent === length) return true
      if (sent === -EAGAIN) sent = 0
      if (sent < 0) {
        const side: Side = fromClient ? 'upstream' : 'client'
        const code = errnoName(-sent)
        const error: NodeJS.ErrnoException = Object.assign(new Error(`send ${code}`), { code, errno: sent, syscall: 'send' })
        this.finish(reasonForError(side, code, true), side, error)
        return false
      }
    }
    // The rest waits in a spill buffer; it goes back for reuse only once its write completed
    // (after a failed one, libuv may have been cancelled mid-write: that buffer is dropped).
    const spill = takeSpillBuffer()
    const held = buffer.copy(spill, 0, sent, length)
    peer.write(spill.subarray(0, held), (err) => {
      if (err == null) returnSpillBuffer(spill)
      if (this.phase === 'relaying') socket.resume()
    })
    return false
  }

  /** The client socket's timer fired: idle when no byte moved either way for idleTimeout; else it is set for the rest. */
  idleTimedOut (): boolean {
    const idleMs = this.route.idleTimeoutMs
    if (idleMs === null) return false
    const quietMs = performance.now() - this.lastByte
    if (quietMs >= idleMs) return true
    this.clientSocket?.setTimeout(Math.max(1, Math.ceil(idleMs - quietMs)))
    return false
  }

  private proxyHeader (version: 'v1' | 'v2'): Buffer {
    const client = this.clientSocket
    const addresses: ProxiedAddresses = this.proxied ?? {
      source: client?.remoteAddress === undefined || client.remotePort === undefined ? null : { address: client.remoteAddress, port: client.remotePort },
      destination: client?.localAddress === undefined || client.localPort === undefined ? null : { address: client.localAddress, port: client.localPort }
    }
    return version === 'v1' ? encodeV1(addresses) : encodeV2(addresses)
  }

  countFin (side: Side): void {
    this.firstFin ??= side
  }

  /** Record the first cause (an error may replace an orderly close) and tear both sides down. */
  finish (reason: CloseReason, side: Side | null, error: NodeJS.ErrnoException | null): void {
    this.phase = 'closing'
    stopDialing(this)
    const orderly = this.reason === null || this.reason === 'client-closed' || this.reason === 'upstream-closed'
    if (orderly) {
      this.reason = reason
      this.reasonSide = side
      this.error = error
      this.closingAt = performance.now()
    }
    // The worker still polls both descriptors: they may close only once it let go (relayEnded).
    if (this.spliced !== null) {
      this.owner.dataPlane.drop(this.id)
      return
    }
    const abortive = isAbortive(reason)
    if (this.clientFd >= 0) {
      const { clientFd, upstreamFd } = this
      this.clientFd = -1
      this.upstreamFd = -1
      const close = abortive ? closeWithReset : closeDescriptor
      close(clientFd)
      if (upstreamFd >= 0) close(upstreamFd)
      this.openSockets = 1
      this.socketClosed()
      return
    }
    for (const socket of [this.clientSocket, this.upstreamSocket]) {
      if (socket === null || socket.destroyed) continue
      // A reset tells the surviving peer the stream was cut, not complete. resetAndDestroy waits
      // for a pending connect, and after end() libuv refuses it (EINVAL) and Node then never
      // closes the handle: such sockets are simply destroyed.
      if (abortive && !socket.connecting && !socket.writableEnded) socket.resetAndDestroy()
      else socket.destroy()
    }
  }

  socketClosed (): void {
    if (--this.openSockets > 0) return
    if (this.member !== null) { this.member.active--; this.member = null }
    if (this.ownEndpoint !== null) { upstreamEndpoints.delete(this.ownEndpoint); this.ownEndpoint = null }
    const side = this.reasonSide ?? this.firstFin
    const reason = this.reason ?? (this.firstFin === 'upstream' ? 'upstream-closed' : 'client-closed')
    const idleMs = this.lastByteAt === 0 ? null : Math.max(0, (this.closingAt === 0 ? performance.now() : this.closingAt) - this.lastByteAt)
    this.owner.closed(this, { reason, side, durationMs: Date.now() - this.openedAt, error: this.error, idleMs, silenceBeforeResetMs: silenceBeforeReset(reason, idleMs, this.lastSilenceMs, this.lastSilenceEndedAt, this.closingAt) })
  }

  private applySideKeepalive (side: Side): boolean {
    const socket = side === 'client' ? this.clientSocket : this.upstreamSocket
    if (socket === null) return false
    try {
      applyKeepalive(socket, side === 'client' ? this.clientKeepalive : this.upstreamKeepalive)
      return true
    } catch (err) {
      // No descriptor means the peer is already gone; anything else is the kernel refusing a value.
      const reason: CloseReason = err instanceof NoDescriptorError ? (side === 'client' ? 'client-error' : 'upstream-error') : 'sockopt-failed'
      this.finish(reason, side, err as NodeJS.ErrnoException)
      return false
    }
  }
}

/** Node lets go of a socket whose descriptor was duplicated: its handlers go, its descriptor closes, the connection lives on. */
function letGo (socket: RelaySocket): void {
  socket.removeListener('error', onError)
  socket.removeListener('end', onEnd)
  socket.removeListener('close', onClose)
  socket.removeListener('timeout', onClientTimeout)
  socket.removeListener('connect', onUpstreamConnect)
  socket.on('error', ignoreError)
  socket.destroy()
}

function ignoreError (): void {}

/** A SockoptError as the errno-carrying error a close summary logs (`code`: its errno name). */
function asErrno (error: NodeJS.ErrnoException | SockoptError | null): NodeJS.ErrnoException | null {
  return error instanceof SockoptError ? Object.assign(new Error(error.message), { code: error.errno }) : error
}

/**
 * Node keeps a socket's addresses, once read, as two objects with their strings (four per
 * connection): let go of once the connection has what it keeps of them (Node reads them again
 * from the kernel if asked, as the admin API does).
 */
function forgetAddresses (socket: Socket): void {
  const cached = socket as unknown as { _peername?: unknown, _sockname?: unknown }
  cached._peername = null
  cached._sockname = null
}

function hostPortText (host: string | undefined, port: number | undefined): string | null {
  return host === undefined || port === undefined ? null : formatHostPort({ host, port })
}


function onChunk (this: RelaySocket, length: number, buffer: Buffer): boolean {
  const connection = this[CONNECTION] as Connection | undefined
  // A socket whose connection is gone (an abandoned dial attempt) reads no further.
  if (connection === undefined || !connection.owns(this)) return false
  return connection.relayChunk(this, buffer, length)
}

// Half-close: a FIN from one side becomes a FIN to the other, and the reverse direction keeps flowing.
function onEnd (this: RelaySocket): void {
  const connection = this[CONNECTION]
  if (!connection.owns(this)) return
  const side = connection.sideOf(this)
  const phase = connection.currentPhase()
  if (phase === 'closing') return
  // An EOF may really be a reset that libuv reported as EOF: the kernel still knows.
  const reset = pendingSocketError(this)
  if (reset !== null) {
    connection.finish(reasonForError(side, reset.code, connection.isConnected()), side, reset)
    return
  }
  connection.countFin(side)
  // The client's FIN after a PROXY header, while dialing: passed on once connected.
  if (phase === 'dialing' && side === 'client') return
  if (phase === 'header') {
    connection.finish('client-closed', side, null)
    return
  }
  connection.peerOf(this)?.end()
}

function onError (this: RelaySocket, err: NodeJS.ErrnoException): void {
  const connection = this[CONNECTION]
  if (!connection.owns(this)) return
  const side = connection.sideOf(this)
  if (side === 'upstream' && connection.currentPhase() === 'dialing') {
    connection.dialFailed(reasonForError(side, err.code, false), err)
    return
  }
  connection.finish(reasonForError(side, err.code, connection.isConnected()), side, err)
}

function onClose (this: RelaySocket): void {
  const connection = this[CONNECTION]
  if (connection.owns(this)) connection.socketClosed()
}

function onUpstreamConnect (this: RelaySocket): void {
  const connection = this[CONNECTION]
  if (connection.owns(this)) connection.connectedUpstream()
}

function connectTimedOut (connection: Connection): void {
  if (connection.currentPhase() === 'dialing') connection.dialFailed('connect-timeout', null)
}

function onClientTimeout (this: RelaySocket): void {
  const connection = this[CONNECTION]
  const phase = connection.currentPhase()
  if (phase === 'header') connection.finish('proxy-header-timeout', 'client', null)
  else if (phase === 'relaying' && connection.idleTimedOut()) connection.finish('idle-timeout', null, null)
}

/** A connecting socket to `target`; with a socket mark the descriptor is made and marked first. */
function openUpstream (target: UpstreamTarget, socketMark: number | null): Socket {
  if (target.kind === 'unix') return net.connect({ path: target.path, allowHalfOpen: true, onread: ONREAD })
  if (socketMark === null) return net.connect({ host: target.host, port: target.port, allowHalfOpen: true, noDelay: true, lookup: cachedLookup, onread: ONREAD })
  const socket = markedSocket(target.host, socketMark, { allowHalfOpen: true, onread: ONREAD })
  socket.connect({ host: target.host, port: target.port })
  socket.setNoDelay(true)
  return socket
}
