import net from 'node:net'
import { formatHostPort } from '../../config/formats.js'
import type { RouteConfig } from '../../config/types.js'
import { KaproxyError } from '../../errors.js'
import { probeSocketMark } from '../../sockopt/mark.js'
import { HealthChecker } from '../../upstream/health.js'
import { UpstreamPool } from '../../upstream/pool.js'
import type { UpstreamTarget } from '../../upstream/target.js'
import type { CloseReason } from '../close-reason.js'
import type { CloseSummary, EngineObserver } from '../engine.js'
import { Connection, type ConnectionOwner } from './connection.js'

let nextConnectionId = 1

/** One route's listening socket and the connections it accepted; it owns and closes both. */
export class RouteListener implements ConnectionOwner {
  readonly route: RouteConfig
  readonly connections = new Set<Connection>()
  readonly pool: UpstreamPool
  private readonly health: HealthChecker | null
  /** The bound `host:port` once listening (the real port when 0 was configured). */
  address: string | null = null
  private readonly server: net.Server
  private readonly observer: EngineObserver
  private closing: Promise<void> | null = null
  private idle: (() => void) | null = null

  constructor (route: RouteConfig, observer: EngineObserver) {
    this.route = route
    this.observer = observer
    // allowHalfOpen: a client's FIN must not end our write side; pauseOnConnect: read nothing
    // from the client until its upstream is connected.
    this.server = net.createServer({ allowHalfOpen: true, pauseOnConnect: true, noDelay: true })
    this.pool = new UpstreamPool(route, (target, state, reason) => { this.observer.onUpstreamState?.(this.route, target, state, reason) })
    this.health = route.healthCheck === null ? null : new HealthChecker(this.pool, route.healthCheck)
    this.server.on('connection', (socket) => {
      const connection = new Connection(nextConnectionId++, this.route, socket, this)
      const full = this.route.maxConnections !== null && this.connections.size >= this.route.maxConnections
      this.connections.add(connection)
      if (full) connection.reject('limit')
      else connection.start()
    })
    // Accept errors (EMFILE, ENFILE) surface here; they must not crash the process.
    this.server.on('error', (err) => { this.observer.onRouteError?.(this.route, err) })
  }

  /** Resolves with the bound address once listening. */
  async listen (): Promise<string> {
    const { host, port } = this.route.listen
    if (this.route.socketMark !== null) {
      try {
        probeSocketMark(this.route.socketMark)
      } catch (err) {
        throw new KaproxyError('KAPROXY_ERR_CAPABILITY', `route ${this.route.name}: ${(err as Error).message}`, { cause: err })
      }
    }
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
    this.health?.start()
    this.observer.onListening?.(this.route, address)
    return address
  }

  opened (connection: Connection): void {
    this.observer.onOpen?.(connection)
  }

  dialFailed (connection: Connection, target: UpstreamTarget, reason: CloseReason, error: NodeJS.ErrnoException | null): void {
    this.observer.onDialFailed?.(connection, target, reason, error)
  }

  closed (connection: Connection, summary: CloseSummary): void {
    this.connections.delete(connection)
    this.observer.onClose?.(connection, summary)
    if (this.connections.size === 0) this.idle?.()
  }

  /** Stop accepting and checking, close live connections with reason `shutdown`; resolves when all are closed. Idempotent. */
  async close (): Promise<void> {
    this.closing ??= Promise.all([
      this.health?.close(),
      new Promise<void>((resolve) => {
        this.server.close()
        if (this.connections.size === 0) { resolve(); return }
        this.idle = resolve
        for (const connection of this.connections) connection.destroy('shutdown')
      })
    ]).then(() => {})
    return await this.closing
  }
}
