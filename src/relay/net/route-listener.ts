import net from 'node:net'
import { isDeepStrictEqual } from 'node:util'
import { formatHostPort } from '../../config/formats.js'
import type { RouteConfig } from '../../config/types.js'
import { KaproxyError } from '../../errors.js'
import type { CloseSummary, DrainSummary, EngineObserver } from '../engine.js'
import { Connection, type ConnectionOwner } from './connection.js'

let nextConnectionId = 1

type StopReason = DrainSummary['reason']

/** A listener that stopped accepting, until its last connection is gone. */
interface Stopping {
  reason: StopReason
  startedAt: number
  finished: number
  cut: number
  deadline: NodeJS.Timeout | null
  settled: boolean
  done: Promise<void>
  resolve: () => void
}

/** One route's listening socket and the connections it accepted; it owns and closes both. */
export class RouteListener implements ConnectionOwner {
  /** The settings new connections get; `update()` replaces them while listener and connections stay. */
  route: RouteConfig
  readonly connections = new Set<Connection>()
  /** The bound `host:port` once listening (the real port when 0 was configured). */
  address: string | null = null
  private readonly server: net.Server
  private readonly observer: EngineObserver
  private stopping: Stopping | null = null

  constructor (route: RouteConfig, observer: EngineObserver) {
    this.route = route
    this.observer = observer
    // allowHalfOpen: a client's FIN must not end our write side; pauseOnConnect: read nothing
    // from the client until its upstream is connected.
    this.server = net.createServer({ allowHalfOpen: true, pauseOnConnect: true, noDelay: true })
    this.server.on('connection', (socket) => {
      if (this.stopping !== null) { socket.destroy(); return }
      const connection = new Connection(nextConnectionId++, this.route, socket, this)
      this.connections.add(connection)
      connection.start()
    })
    // Accept errors (EMFILE, ENFILE) surface here; they must not crash the process.
    this.server.on('error', (err) => { this.observer.onRouteError?.(this.route, err) })
  }

  /** Resolves with the bound address once listening. */
  async listen (): Promise<string> {
    const { host, port } = this.route.listen
    await new Promise<void>((resolve, reject) => {
      const onError = (err: NodeJS.ErrnoException): void => {
        reject(new KaproxyError('KAPROXY_ERR_LISTEN', `route ${this.route.name}: cannot listen on ${formatHostPort(this.route.listen)}: ${err.code ?? err.message}`, { cause: err }))
      }
      this.server.once('error', onError)
      this.server.listen({ host, port }, () => {
        this.server.off('error', onError)
        resolve()
      })
    })
    const bound = this.server.address()
    const address = bound !== null && typeof bound === 'object' ? formatHostPort({ host: bound.address, port: bound.port }) : String(bound)
    this.address = address
    this.observer.onListening?.(this.route, address)
    return address
  }

  /**
   * New connections use `route` from now on (same name and listen address). With
   * `keepaliveApplyToExisting`, live connections whose keepalive differs are re-tuned with
   * setsockopt. Returns how many sockets were re-tuned; a refusal is reported, never fatal.
   */
  update (route: RouteConfig): number {
    this.route = route
    if (!route.keepaliveApplyToExisting) return 0
    let sockets = 0
    for (const connection of this.connections) {
      if (isDeepStrictEqual(connection.keepaliveSettings(), route.keepalive)) continue
      try {
        sockets += connection.retune(route.keepalive)
      } catch (err) {
        this.observer.onRouteError?.(route, new KaproxyError('KAPROXY_ERR_RETUNE',
          `route ${route.name}: keepalive not re-applied to connection ${connection.id}: ${(err as Error).message}`, { cause: err }))
      }
    }
    return sockets
  }

  opened (connection: Connection): void {
    this.observer.onOpen?.(connection)
  }

  closed (connection: Connection, summary: CloseSummary): void {
    this.connections.delete(connection)
    const stopping = this.stopping
    if (stopping !== null) {
      if (summary.reason === 'route-removed' || summary.reason === 'shutdown') stopping.cut++
      else stopping.finished++
    }
    this.observer.onClose?.(connection, summary)
    if (this.connections.size === 0) this.settle()
  }

  /**
   * Stop accepting: the listening socket is closed before this returns (the port is free, new
   * connections are refused). Live connections get `graceMs` to end by themselves, then are closed
   * with `reason`. Resolves when none is left. Idempotent: later calls join the first drain.
   */
  async drain (graceMs: number, reason: StopReason): Promise<void> {
    if (this.stopping === null) {
      let resolve = (): void => {}
      const done = new Promise<void>((resolveDone) => { resolve = resolveDone })
      const stopping: Stopping = { reason, startedAt: Date.now(), finished: 0, cut: 0, deadline: null, settled: false, done, resolve }
      this.stopping = stopping
      // Without a callback close() cannot fail: a server that never listened just stays closed.
      this.server.close()
      if (this.connections.size === 0) this.settle()
      else stopping.deadline = setTimeout(() => { this.cut(stopping.reason) }, graceMs)
    }
    await this.stopping.done
  }

  /** Stop accepting and close live connections now with `shutdown`, cutting a drain short. Idempotent. */
  async close (): Promise<void> {
    const done = this.drain(0, 'shutdown')
    this.cut('shutdown')
    await done
  }

  private cut (reason: StopReason): void {
    if (this.stopping?.deadline != null) clearTimeout(this.stopping.deadline)
    for (const connection of this.connections) connection.destroy(reason)
  }

  private settle (): void {
    const stopping = this.stopping
    if (stopping === null || stopping.settled) return
    stopping.settled = true
    if (stopping.deadline !== null) clearTimeout(stopping.deadline)
    this.observer.onRouteDrained?.(this.route, { reason: stopping.reason, finished: stopping.finished, cut: stopping.cut, durationMs: Date.now() - stopping.startedAt })
    stopping.resolve()
  }
}
