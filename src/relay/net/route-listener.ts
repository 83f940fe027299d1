import net, { isIP } from 'node:net'
import { isDeepStrictEqual } from 'node:util'
import { formatHostPort } from '../../config/formats.js'
import type { RouteConfig } from '../../config/types.js'
import { KaproxyError, SockoptError } from '../../errors.js'
import { closeDescriptor, dataPlaneCalls, duplicateDescriptor } from '../../sockopt/libc.js'
import { encodeSockaddr } from '../../sockopt/original-dst.js'
import { probeSocketMark } from '../../sockopt/mark.js'
import { HealthChecker } from '../../upstream/health.js'
import { UpstreamPool } from '../../upstream/pool.js'
import type { UpstreamTarget } from '../../upstream/target.js'
import { isDescriptorExhaustion, type CloseReason } from '../close-reason.js'
import type { CloseSummary, ConnectionRecord, DrainSummary, EngineObserver } from '../engine.js'
import { nextConnectionId, type SpliceStats, type SplicedConnection, type WorkerAcceptor } from '../fast/data-plane.js'
import type { SpliceWorkers } from '../fast/worker-pool.js'
import { FinishedConnection } from '../fast/finished.js'
import type { AcceptPlan, Accepted, Finished, Tallied } from '../fast/protocol.js'
import { Connection, readingSocket, type ConnectionOwner } from './connection.js'
import type { AcceptGate, DescriptorBudget } from './descriptor-budget.js'

/** Every listening route and its bound port: a target on one of them may loop back (see acceptPlan). */
const boundPorts = new Map<RouteListener, number>()

/**
 * What the fast engine's worker needs to accept and dial the route's connections by itself, or
 * null when a connection needs the main thread: PROXY headers, transparent mode, a socket mark,
 * health checks, several targets or a hostname to choose from, or a target that may be one of
 * kaproxy's own listeners (the loop guard checks each accepted flow on the main thread).
 */
function acceptPlan (route: RouteConfig, pool: UpstreamPool): AcceptPlan | null {
  if (route.engine !== 'fast' || route.originalDst !== null || route.acceptProxyProtocol || route.proxyProtocol !== null ||
    route.socketMark !== null || route.healthCheck !== null || route.upstreams.length !== 1) return null
  const target = route.upstreams[0]
  // An IPv6 zone (fe80::1%eth0) needs a scope id the worker does not resolve.
  if (target === undefined || target.kind !== 'tcp' || isIP(target.host) === 0 || target.host.includes('%')) return null
  for (const port of boundPorts.values()) if (port === target.port) return null
  const member = pool.members[0]
  // The worker's clock (performance.timeOrigin + now) for the member's retry time (Date.now()).
  const downUntil = member === undefined || member.state === 'up' ? 0 : member.retryAt - Date.now() + performance.timeOrigin + performance.now()
  return {
    clientKeepalive: route.keepalive.client,
    upstreamKeepalive: route.keepalive.upstream,
    target: encodeSockaddr(target.host, target.port),
    connectTimeoutMs: route.connectTimeoutMs,
    idleTimeoutMs: route.idleTimeoutMs ?? 0,
    maxConnections: route.maxConnections,
    downUntil,
    applyToExisting: route.keepaliveApplyToExisting
  }
}

/** A route started or stopped listening: routes whose target is now a kaproxy listener accept on the main thread. */
function boundPortsChanged (): void {
  for (const listener of boundPorts.keys()) listener.checkAcceptor()
}

/**
 * Accept queue length. Node's default (511) overflows under connection bursts, and an overflowing
 * queue drops handshakes and can reset clients; the kernel caps it at net.core.somaxconn.
 */
const LISTEN_BACKLOG = 4096

type StopReason = DrainSummary['reason']

/** A listener that stopped accepting, until its last connection is gone. */
interface Stopping {
  reason: StopReason
  startedAt: number
  finished: number
  cut: number
  /** How long live connections get to end by themselves (see drain). */
  graceMs: number
  deadline: NodeJS.Timeout | null
  /** The grace ran out: connections still arriving from the worker are closed at once. */
  cutting: boolean
  settled: boolean
  done: Promise<void>
  resolve: () => void
}

/** The settings that shape a route's pool and health checks: a change rebuilds them. */
function poolSettings (route: RouteConfig): unknown {
  return { upstreams: route.upstreams, balance: route.balance, healthCheck: route.healthCheck }
}

/** Check that the process may set the route's socket mark (CAP_NET_ADMIN). Throws KAPROXY_ERR_CAPABILITY. */
export function probeRouteSocketMark (route: RouteConfig): void {
  if (route.socketMark === null) return
  try {
    probeSocketMark(route.socketMark)
  } catch (err) {
    throw new KaproxyError('KAPROXY_ERR_CAPABILITY', `route ${route.name}: ${(err as Error).message}`, { cause: err })
  }
}

/** One route's listening socket and the connections it accepted; it owns and closes both. */
export class RouteListener implements ConnectionOwner, AcceptGate, WorkerAcceptor {
  /** The settings new connections get; `update()` replaces them while listener and connections stay. */
  route: RouteConfig
  readonly connections = new Set<Connection>()
  /** The targets new connections dial; rebuilt by `update()` when upstreams, balance or health checks change. */
  pool: UpstreamPool
  private health: HealthChecker | null
  /** The bound `host:port` once listening (the real port when 0 was configured). */
  address: string | null = null
  /** The server accepting now; replaced each time accepting resumes after a pause. */
  private server: net.Server
  private readonly observer: EngineObserver
  readonly budget: DescriptorBudget
  readonly dataPlane: SpliceWorkers
  private stopping: Stopping | null = null
  /**
   * A second descriptor of the listening socket (see pauseAccepting): while it is open the socket
   * stays bound and listening when the server's own descriptor is closed. Null before listening,
   * after stopping, or where it could not be made (then accepting never pauses).
   */
  private spareFd: number | null = null
  private paused = false
  /**
   * While the fast engine's worker accepts for the route: its key there, and the duplicate of the
   * listening socket it polls (closed here once it let go). Node's server is closed meanwhile.
   */
  private worker: { key: number, fd: number } | null = null
  /** Waiting in `reported()` for the worker to let go of the route. */
  private readonly reportedWaiters: Array<() => void> = []
  /** Node takes accepting back from the worker once it let go (the route no longer fits acceptPlan). */
  private backToNode = false
  /** Settles once the worker took the route's latest settings (see settingsTaken). */
  private planned: Promise<void> = Promise.resolve()

  constructor (route: RouteConfig, observer: EngineObserver, budget: DescriptorBudget, dataPlane: SpliceWorkers) {
    this.route = route
    this.observer = observer
    this.budget = budget
    this.dataPlane = dataPlane
    this.server = this.createServer()
    this.pool = this.createPool(route)
    this.health = route.healthCheck === null ? null : new HealthChecker(this.pool, route.healthCheck)
  }

  private createServer (): net.Server {
    // allowHalfOpen: a client's FIN must not end our write side; pauseOnConnect: read nothing
    // from the client until its upstream is connected.
    const server = net.createServer({ allowHalfOpen: true, pauseOnConnect: true, noDelay: true })
    server.on('connection', (socket) => {
      if (this.stopping !== null) { socket.destroy(); return }
      let client = socket
      let unreadable: Error | null = null
      try {
        client = readingSocket(socket)
      } catch (err) {
        unreadable = err as Error
      }
      const connection = new Connection(nextConnectionId(), this.route, client, this)
      const full = this.route.maxConnections !== null && this.connections.size >= this.route.maxConnections
      this.connections.add(connection)
      // May pause accepting (closing this server) before the connection starts: it still does.
      this.budget.accepted()
      if (unreadable !== null) this.refuseUnreadable(connection, unreadable)
      else if (full) connection.reject('limit')
      else connection.start()
    })
    // Accept errors surface here; they must not crash the process. EMFILE/ENFILE here means libuv's
    // spare descriptor is gone too: stop accepting until descriptors are free.
    server.on('error', (err: NodeJS.ErrnoException) => {
      if (isDescriptorExhaustion(err.code)) this.budget.exhausted(false)
      this.observer.onRouteError?.(this.route, err)
    })
    return server
  }

  /** The client's descriptor could not be duplicated (readingSocket): none left (EMFILE), or the client already left. */
  private refuseUnreadable (connection: Connection, err: Error): void {
    if (err instanceof SockoptError && isDescriptorExhaustion(err.errno)) {
      this.fdExhausted()
      connection.reject('fd-exhausted', err)
    } else {
      connection.reject('client-error', err instanceof SockoptError ? err : null)
    }
  }

  private createPool (route: RouteConfig, previous?: UpstreamPool): UpstreamPool {
    return new UpstreamPool(route, (target, state, reason) => {
      this.observer.onUpstreamState?.(this.route, target, state, reason)
      // The worker refuses or tries a down target by its plan.
      this.checkAcceptor()
    }, previous?.members)
  }

  /** Resolves with the bound address once listening. */
  async listen (): Promise<string> {
    const { host, port } = this.route.listen
    probeRouteSocketMark(this.route)
    await new Promise<void>((resolve, reject) => {
      const onError = (err: NodeJS.ErrnoException): void => {
        reject(new KaproxyError('KAPROXY_ERR_LISTEN', `route ${this.route.name}: cannot listen on ${formatHostPort(this.route.listen)}: ${err.code ?? err.message}`, { cause: err }))
      }
      this.server.once('error', onError)
      this.server.listen({ host, port, backlog: LISTEN_BACKLOG }, () => {
        this.server.off('error', onError)
        resolve()
      })
    })
    const bound = this.server.address()
    const address = bound !== null && typeof bound === 'object' ? formatHostPort({ host: bound.address, port: bound.port }) : String(bound)
    this.address = address
    this.spareFd = this.duplicateListeningFd()
    this.budget.register(this)
    this.health?.start()
    boundPorts.set(this, bound !== null && typeof bound === 'object' ? bound.port : 0)
    boundPortsChanged()
    this.checkAcceptor()
    this.observer.onListening?.(this.route, address)
    return address
  }

  /** Resolves once connections the worker accepts from now on get the route's current settings. */
  async settingsTaken (): Promise<void> {
    await this.planned
  }

  get acceptedBy (): 'worker' | 'main' {
    return this.worker !== null ? 'worker' : 'main'
  }

  /** Where new connections are accepted: by the fast engine's worker when the route fits acceptPlan, else here. */
  checkAcceptor (): void {
    if (this.stopping !== null || this.spareFd === null) return
    const plan = acceptPlan(this.route, this.pool)
    if (this.worker !== null) {
      if (plan !== null) { this.planned = this.dataPlane.replan(this.worker.key, plan); return }
      if (this.backToNode) return
      this.backToNode = true
      this.dataPlane.unlisten(this.worker.key)
      return
    }
    if (plan === null) return
    let fd: number
    try {
      fd = duplicateDescriptor(this.spareFd)
    } catch {
      return
    }
    const key = this.dataPlane.listen(this, fd, plan)
    if (key === null) { closeDescriptor(fd); return }
    this.worker = { key, fd }
    if (this.paused) this.dataPlane.pauseAccepting(key, true)
    // The kernel socket stays listening through the spare and the worker's descriptors.
    else this.server.close()
  }

  accepted (event: Accepted, stats: SpliceStats | null): SplicedConnection | null {
    const connection = Connection.fromWorker(this.route, this, event)
    this.connections.add(connection)
    this.budget.accepted()
    connection.adopt(event, stats)
    // Accepted before the route stopped, reported after its grace ran out.
    if (this.stopping?.cutting === true) connection.destroy(this.stopping.reason)
    return stats === null ? null : connection
  }

  finished (event: Readonly<Finished>): void {
    const member = this.pool.members[0] ?? null
    // A trial connection to a down target that went through brings it back up, as adopt() does.
    if (member !== null) this.pool.connectSucceeded(member)
    const connection = new FinishedConnection(this.route, member?.target.label ?? this.route.upstreams[0]?.label ?? 'unknown', event)
    this.observer.onOpen?.(connection)
    this.ended(connection, connection.summary)
  }

  tallied (event: Readonly<Tallied>): void {
    const member = this.pool.members[0] ?? null
    if (member !== null) this.pool.connectSucceeded(member)
    this.observer.onTally?.(this.route, { clientClosed: event.clientFirst, upstreamClosed: event.upstreamFirst, bytesFromClient: event.bytesFromClient, bytesFromUpstream: event.bytesFromUpstream, connectMs: event.connectMs })
    if (this.stopping !== null) this.stopping.finished += event.connectMs.length
    this.settle()
  }

  /**
   * Once the route stopped accepting: resolves when its worker let go of it, which it says after
   * reporting every connection it accepted (see `unlistened`). At once without a worker, or while
   * the route still accepts (there is nothing to wait for then).
   */
  async reported (): Promise<void> {
    if (this.worker === null || this.stopping === null) return
    await new Promise<void>((resolve) => { this.reportedWaiters.push(resolve) })
  }

  unlistened (): void {
    const fd = this.worker?.fd
    this.worker = null
    for (const resolve of this.reportedWaiters.splice(0)) resolve()
    this.startGrace()
    if (fd === undefined) return
    const back = this.backToNode
    this.backToNode = false
    // A paused route resumes on Node from its spare descriptor.
    if (back && this.stopping === null && !this.paused) this.acceptOnNode(fd)
    else closeDescriptor(fd)
    this.settle()
  }

  exhausted (code: string): void {
    // The worker waits for a resume either way; none comes unless accepting paused.
    if (code === 'budget') this.budget.spent()
    else this.budget.exhausted(false)
    if (!this.budget.isPaused && this.worker !== null) this.dataPlane.pauseAccepting(this.worker.key, false)
  }

  lost (): void {
    this.unlistened()
    // The worker is gone for good: Node accepts again, unless the route is stopping.
    if (this.stopping !== null || this.paused || this.server.listening || this.spareFd === null) return
    try {
      this.acceptOnNode(duplicateDescriptor(this.spareFd))
    } catch (err) {
      // No descriptor for Node's server now: the budget pauses accepting and resumes it (on Node) later.
      this.observer.onRouteError?.(this.route, err as Error)
      this.budget.exhausted(false)
    }
  }

  /** A new Node server takes over accepting on `fd` (a descriptor of the listening socket, now Node's). */
  private acceptOnNode (fd: number): void {
    this.server = this.createServer()
    this.server.listen({ fd }, LISTEN_BACKLOG)
  }

  /**
   * New connections use `route` from now on (same name and listen address). Changed upstreams,
   * balance or health checks get a new pool (targets kept keep their state and counts) and new
   * checks. With `keepaliveApplyToExisting`, live connections whose keepalive differs are re-tuned
   * with setsockopt. Returns how many sockets were re-tuned; a refusal is reported, never fatal.
   */
  update (route: RouteConfig): number {
    const previous = this.route
    this.route = route
    if (!isDeepStrictEqual(poolSettings(previous), poolSettings(route))) {
      this.pool = this.createPool(route, this.pool)
      const old = this.health
      this.health = route.healthCheck === null ? null : new HealthChecker(this.pool, route.healthCheck)
      old?.close().catch((err: unknown) => { this.observer.onRouteError?.(route, err as Error) })
      this.health?.start()
    }
    this.checkAcceptor()
    if (!route.keepaliveApplyToExisting) return 0
    let sockets = 0
    for (const connection of this.connections) {
      const keepalive = connection.keepaliveFor(route)
      if (isDeepStrictEqual(connection.keepaliveSettings(), keepalive)) continue
      try {
        sockets += connection.retune(keepalive)
      } catch (err) {
        this.observer.onRouteError?.(route, new KaproxyError('KAPROXY_ERR_RETUNE',
          `route ${route.name}: keepalive not re-applied to connection ${connection.id}: ${(err as Error).message}`, { cause: err }))
      }
    }
    return sockets
  }

  /** A second descriptor of the bound listening socket, or null (reported) when none can be made. */
  private duplicateListeningFd (): number | null {
    const fd = (this.server as unknown as { _handle?: { fd?: unknown } | null })._handle?.fd
    if (typeof fd !== 'number' || fd < 0) return null
    try {
      return duplicateDescriptor(fd)
    } catch (err) {
      this.observer.onRouteError?.(this.route, new KaproxyError('KAPROXY_ERR_ACCEPT_PAUSE',
        `route ${this.route.name}: accepting cannot pause when descriptors run out: ${(err as Error).message}`, { cause: err }))
      return null
    }
  }

  /**
   * Stop accepting without giving up the port or the clients waiting for it. libuv has no way to
   * stop polling a listening handle, so the server's descriptor is closed: the spare descriptor
   * keeps the kernel socket bound and listening, and clients keep completing their handshakes into
   * its accept queue (up to the backlog; beyond it the kernel drops SYNs and clients retry).
   * server.close() alone would free the port and reset every queued client. Costs one descriptor
   * per route, held all the time.
   */
  pauseAccepting (): void {
    if (this.paused || this.stopping !== null || this.spareFd === null) return
    this.paused = true
    if (this.worker !== null) { this.dataPlane.pauseAccepting(this.worker.key, true); return }
    // Connections already accepted keep their reference to the old server; that is harmless.
    this.server.close()
  }

  /** Accept again on the same kernel socket: a new server takes over the spare descriptor, queued clients first. */
  resumeAccepting (): void {
    if (!this.paused || this.stopping !== null || this.spareFd === null) return
    this.paused = false
    if (this.worker !== null) { this.dataPlane.pauseAccepting(this.worker.key, false); return }
    const fd = this.spareFd
    this.spareFd = null
    this.server = this.createServer()
    // With { fd }, Node ignores options.backlog (511 would then be the queue): it must be the second argument.
    // The handle is set up synchronously (only 'listening' waits a tick), so the next spare can be made now.
    this.server.listen({ fd }, LISTEN_BACKLOG)
    this.spareFd = this.duplicateListeningFd()
  }

  opened (connection: Connection): void {
    this.observer.onOpen?.(connection)
  }

  dialFailed (connection: Connection, target: UpstreamTarget, reason: CloseReason, error: NodeJS.ErrnoException | null): void {
    this.observer.onDialFailed?.(connection, target, reason, error)
  }

  fdExhausted (): void {
    this.budget.exhausted()
  }

  retrialScheduled (): void {
    this.checkAcceptor()
  }

  closed (connection: Connection, summary: CloseSummary): void {
    this.connections.delete(connection)
    this.budget.released()
    this.ended(connection, summary)
  }

  /** A connection's close, counted for a drain and told to the observers. */
  private ended (connection: ConnectionRecord, summary: CloseSummary): void {
    const stopping = this.stopping
    if (stopping !== null) {
      if (summary.reason === 'route-removed' || summary.reason === 'shutdown') stopping.cut++
      else stopping.finished++
    }
    this.observer.onClose?.(connection, summary)
    this.settle()
  }

  /**
   * Stop accepting and checking: the listening socket is closed before this returns (the port is
   * free, new connections are refused). Live connections get `graceMs` to end by themselves, then
   * are closed with `reason`. Resolves when none is left. Idempotent: later calls join the first.
   */
  async drain (graceMs: number, reason: StopReason): Promise<void> {
    if (this.stopping === null) {
      let resolve = (): void => {}
      const connectionsDone = new Promise<void>((resolveDone) => { resolve = resolveDone })
      const healthDone = this.health?.close()
      const done = Promise.all([connectionsDone, healthDone]).then(() => {})
      const stopping: Stopping = { reason, startedAt: Date.now(), finished: 0, cut: 0, graceMs, deadline: null, cutting: false, settled: false, done, resolve }
      this.stopping = stopping
      // Without a callback close() cannot fail: a server that never listened (or paused) just stays closed.
      this.server.close()
      this.budget.unregister(this)
      if (this.worker !== null && this.spareFd !== null) {
        // The worker's descriptor stays open until it let go: the socket stops listening now
        // (the port is free, queued clients are reset), as closing Node's server does.
        dataPlaneCalls().stopListening(this.spareFd)
        this.backToNode = false
        this.dataPlane.unlisten(this.worker.key)
      }
      if (this.spareFd !== null) closeDescriptor(this.spareFd)
      this.spareFd = null
      boundPorts.delete(this)
      boundPortsChanged()
      // Connections the worker accepted before it stopped are still to come (see unlistened).
      this.settle()
      this.startGrace()
    }
    await this.stopping.done
  }

  /**
   * The drain's grace starts once every connection of the route is known here: at once, or once
   * the worker let go of the route after reporting those it held (see unlistened). So they all get
   * the same grace, and a count of them taken then (Kaproxy's `draining` line) is whole.
   */
  private startGrace (): void {
    const stopping = this.stopping
    if (stopping === null || stopping.settled || stopping.deadline !== null || stopping.cutting || this.worker !== null) return
    stopping.deadline = setTimeout(() => { this.cut(stopping.reason) }, stopping.graceMs)
  }

  /** Stop accepting and close live connections now with `shutdown`, cutting a drain short. Idempotent. */
  async close (): Promise<void> {
    const done = this.drain(0, 'shutdown')
    this.cut('shutdown')
    await done
  }

  private cut (reason: StopReason): void {
    if (this.stopping !== null) this.stopping.cutting = true
    if (this.stopping?.deadline != null) clearTimeout(this.stopping.deadline)
    for (const connection of this.connections) connection.destroy(reason)
  }

  /** The route stopped: no connection left, none still to come from the worker. */
  private settle (): void {
    const stopping = this.stopping
    if (stopping === null || stopping.settled || this.connections.size > 0 || this.worker !== null) return
    stopping.settled = true
    if (stopping.deadline !== null) clearTimeout(stopping.deadline)
    this.observer.onRouteDrained?.(this.route, { reason: stopping.reason, finished: stopping.finished, cut: stopping.cut, durationMs: Date.now() - stopping.startedAt })
    stopping.resolve()
  }
}
