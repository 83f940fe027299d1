import type { Logger } from 'pino'
import { AdminServer } from './admin/server.js'
import { Metrics } from './admin/metrics.js'
import type { KaproxyConfig } from './config/types.js'
import { logRoutePlan, loggingObserver } from './log.js'
import type { Engine } from './relay/engine.js'
import { NetEngine } from './relay/net/engine.js'
import { composeObservers } from './relay/observers.js'
import { readSystemKeepalive } from './system-keepalive.js'
import { kaproxyVersion } from './version.js'

/** The running proxy: one engine for the configured routes, its metrics and the admin API. */
export class Kaproxy {
  readonly config: KaproxyConfig
  readonly engine: Engine
  readonly metrics: Metrics
  /** The admin API; null when `admin.listen` is "". */
  readonly admin: AdminServer | null
  private readonly log: Logger
  private closing: Promise<void> | null = null
  private readyFlag = false
  private stopping = false

  /** Throws ConfigError when the admin settings are unsafe (non-loopback without a token). */
  constructor (config: KaproxyConfig, log: Logger) {
    this.config = config
    this.log = log
    this.metrics = new Metrics({
      connections: () => this.engine.connections(),
      routes: () => this.config.routes,
      upstreams: (route) => this.engine.upstreams(route),
      ready: () => this.ready
    }, kaproxyVersion())
    this.engine = new NetEngine(composeObservers(loggingObserver(log), this.metrics.observer))
    this.admin = config.admin.listen === null
      ? null
      : new AdminServer({
        listen: config.admin.listen,
        token: config.admin.token,
        log,
        source: { engine: this.engine, routes: () => this.config.routes, ready: () => this.ready, metrics: this.metrics }
      })
  }

  /**
   * Readiness, as /readyz reports it: false until every route listens, and from the moment
   * close() begins. Set it to false while draining or reloading and back to true after;
   * once close() has begun it stays false.
   */
  get ready (): boolean {
    return this.readyFlag && !this.stopping
  }

  set ready (value: boolean) {
    this.readyFlag = value
  }

  /** Resolves once every route and the admin API listen; rejects with nothing listening otherwise. */
  async start (): Promise<void> {
    const system = readSystemKeepalive()
    this.log.info({ event: 'system-keepalive', ...system },
      `kernel defaults for untuned sockets: tcp_keepalive_time=${system.timeSec ?? '?'}s intvl=${system.intervalSec ?? '?'}s probes=${system.probes ?? '?'}`)
    logRoutePlan(this.log, this.config.routes)
    await this.engine.start(this.config.routes)
    if (this.admin !== null) {
      try {
        await this.admin.listen()
      } catch (err) {
        await this.engine.close()
        throw err
      }
    }
    this.readyFlag = true
    this.log.info({ event: 'ready', routes: this.config.routes.length }, 'kaproxy ready')
  }

  /**
   * Stop listening and close every connection (`shutdown`), then the admin API, which keeps
   * answering (/readyz 503) until the routes are closed. Idempotent.
   */
  async close (): Promise<void> {
    if (this.closing === null) {
      this.stopping = true
      this.closing = (async () => {
        await this.engine.close()
        await this.admin?.close()
      })()
    }
    return await this.closing
  }
}
