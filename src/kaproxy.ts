import { isDeepStrictEqual } from 'node:util'
import type { Logger } from 'pino'
import { AdminServer } from './admin/server.js'
import { Metrics } from './admin/metrics.js'
import type { KaproxyConfig, RouteConfig } from './config/types.js'
import { ConfigError, type ConfigIssue, KaproxyError } from './errors.js'
import { logBudget, logDataPlane, logRoutePlan, loggingObserver } from './log.js'
import { BurstReclaimer } from './memory-reclaim.js'
import type { ApplyResult, Engine } from './relay/engine.js'
import { NetEngine } from './relay/net/engine.js'
import { composeObservers } from './relay/observers.js'
import type { SpliceWorkers } from './relay/fast/worker-pool.js'
import { readSystemKeepalive } from './system-keepalive.js'
import { kaproxyVersion } from './version.js'

export interface KaproxyOptions {
  /**
   * Loads the configuration again for `reload()` (the CLI re-reads the file and environment).
   * Default: the configuration in force, so a reload without one changes nothing.
   */
  load?: () => KaproxyConfig
}

export interface ReloadOptions {
  /** The configuration to apply; default: `options.load()`. */
  config?: KaproxyConfig
  /** What asked for the reload, for the log: `SIGHUP`, `file`, `api`. Default `api`. */
  trigger?: string
}

/** The outcome of `reload()`. */
export interface ReloadResult {
  /** The whole new configuration is in force. */
  ok: boolean
  /** What changed; null when nothing did (invalid configuration, a new address taken, stopping). */
  changes: ApplyResult | null
  /** Why not ok: `KAPROXY_ERR_CONFIG` with every issue (path, message), `KAPROXY_ERR_LISTEN`, `KAPROXY_ERR_STOPPING`. */
  error: { code: string, message: string, issues: readonly ConfigIssue[] } | null
}

/** The running proxy: one engine for the configured routes, plus what later sits beside it. */
export class Kaproxy {
  readonly engine: Engine
  /** The fast engine's workers (started with the first route on fast). */
  private readonly workers: SpliceWorkers
  readonly metrics: Metrics
  /** The admin API; null when `admin.listen` is "". */
  readonly admin: AdminServer | null
  /** Reloads since start, for metrics: `ok` put a configuration in force, `failed` did not (or only partly). */
  readonly reloads = { ok: 0, failed: 0 }
  private current: KaproxyConfig
  /** The fast engine's workers and their bulk buffers, fixed at start. */
  private readonly dataPlane: KaproxyConfig['dataPlane']
  private readonly log: Logger
  /** Returns a burst's heap once it is over (see BurstReclaimer). */
  private readonly reclaimer: BurstReclaimer
  private readonly load: () => KaproxyConfig
  private started = false
  private stopping = false
  private reloading: Promise<unknown> = Promise.resolve()
  private dataPlaneLogged = false
  private draining: Promise<void> | null = null
  private closing: Promise<void> | null = null

  constructor (config: KaproxyConfig, log: Logger, options: KaproxyOptions = {}) {
    this.current = config
    this.dataPlane = config.dataPlane
    this.log = log
    this.load = options.load ?? (() => this.current)
    this.metrics = new Metrics({
      connections: () => this.engine.connections(),
      routes: () => this.current.routes,
      upstreams: (route) => this.engine.upstreams(route),
      ready: () => this.ready,
      dataPlane: () => ({ connections: engine.dataPlane.size, descriptors: engine.dataPlane.descriptors(), perWorker: engine.dataPlane.sizes() })
    }, kaproxyVersion())
    this.reclaimer = new BurstReclaimer(log)
    const engine = new NetEngine(composeObservers(loggingObserver(log), this.metrics.observer, this.reclaimer.observer), config.dataPlane)
    this.engine = engine
    this.workers = engine.dataPlane
    this.wantConnectionRecords()
    this.admin = config.admin.listen === null
      ? null
      : new AdminServer({
        listen: config.admin.listen,
        token: config.admin.token,
        log,
        source: {
          engine: this.engine,
          routes: () => this.current.routes,
          ready: () => this.ready,
          metrics: this.metrics,
          reload: async () => await this.reload({ trigger: 'api' })
        }
      })
  }

  /** The configuration in force: the one given at start, then the last one a reload applied. */
  get config (): KaproxyConfig {
    return this.current
  }

  /** True once every route listens, false again from the moment draining or closing starts. */
  get ready (): boolean {
    return this.started && !this.stopping
  }

  /** The workers' settings, once: when the first route on the fast engine is in force (at start, or the reload that adds it). */
  /**
   * The fast engine's workers send a record of each short connection only while the log writes a
   * line per connection (info); otherwise they count those that close in order per route.
   */
  private wantConnectionRecords (): void {
    this.workers.connectionRecords(this.log.isLevelEnabled('info'))
  }

  private logDataPlaneOnce (routes: readonly RouteConfig[]): void {
    if (this.dataPlaneLogged || !routes.some((route) => route.engine === 'fast')) return
    this.dataPlaneLogged = true
    logDataPlane(this.log, this.dataPlane)
  }

  /** Resolves once every route and the admin API listen; rejects with nothing listening otherwise. */
  async start (): Promise<void> {
    const system = readSystemKeepalive()
    this.log.info({ event: 'system-keepalive', ...system },
      `kernel defaults for untuned sockets: tcp_keepalive_time=${system.timeSec ?? '?'}s intvl=${system.intervalSec ?? '?'}s probes=${system.probes ?? '?'}`)
    this.logDataPlaneOnce(this.current.routes)
    logRoutePlan(this.log, this.current.routes)
    logBudget(this.log, this.current.routes)
    await this.engine.start(this.current.routes)
    if (this.admin !== null) {
      try {
        await this.admin.listen()
      } catch (err) {
        await this.engine.close()
        throw err
      }
    }
    this.started = true
    this.log.info({ event: 'ready', routes: this.current.routes.length }, 'kaproxy ready')
  }

  /**
   * Load the configuration again (or take `options.config`) and apply it route by route: unchanged
   * routes keep their listener and connections, added ones start, removed ones drain (see
   * Engine.apply). An invalid configuration changes nothing. Never rejects: the result says what
   * happened, the log has one `reload` line, and `reloads` counts it. Reloads run one at a time.
   */
  async reload (options: ReloadOptions = {}): Promise<ReloadResult> {
    const run = this.reloading.then(async () => await this.reloadNow(options))
    this.reloading = run
    return await run
  }

  private async reloadNow (options: ReloadOptions): Promise<ReloadResult> {
    const trigger = options.trigger ?? 'api'
    if (this.stopping) return this.reloadFailed(trigger, new KaproxyError('KAPROXY_ERR_STOPPING', 'kaproxy is stopping: reload ignored'))
    let next: KaproxyConfig
    let result: ApplyResult
    try {
      next = options.config ?? this.load()
      result = await this.engine.apply(next.routes)
    } catch (err) {
      return this.reloadFailed(trigger, err)
    }
    const previous = this.current
    this.current = next
    if (next.log.level !== previous.log.level) {
      this.log.level = next.log.level
      this.wantConnectionRecords()
    }
    const changed = new Set([...result.added, ...result.updated])
    this.logDataPlaneOnce(next.routes)
    logRoutePlan(this.log, next.routes.filter((route) => changed.has(route.name)))
    logBudget(this.log, next.routes.filter((route) => changed.has(route.name)))
    const fields = { event: 'reload', trigger, added: result.added, removed: result.removed, updated: result.updated, unchanged: result.unchanged, retunedSockets: result.retunedSockets }
    const restartNeeded = [
      ...isDeepStrictEqual(next.admin.listen, previous.admin.listen) ? [] : ['admin.listen'],
      // Compared with the workers running, not the last file: every reload says it until a restart.
      ...next.dataPlane.workers === this.dataPlane.workers ? [] : ['dataPlane.workers'],
      ...next.dataPlane.bulkBuffers === this.dataPlane.bulkBuffers ? [] : ['dataPlane.bulkBuffers'],
      ...next.dataPlane.reportAfterMs === this.dataPlane.reportAfterMs ? [] : ['dataPlane.reportAfterMs'],
      ...next.dataPlane.busyPoll.us === this.dataPlane.busyPoll.us ? [] : ['dataPlane.busyPollUs']
    ]
    if (restartNeeded.length > 0) {
      this.log.warn({ event: 'restart-needed', settings: restartNeeded }, `reload does not move the admin API or start and stop workers: restart to apply ${restartNeeded.join(', ')}`)
    }
    if (result.failed.length > 0) {
      this.reloads.failed++
      this.metrics.recordReload(false)
      const message = `some routes could not listen, the rest was applied: ${result.failed.map((failure) => failure.message).join('; ')}`
      this.log.error({ ...fields, ok: false, failed: result.failed }, `reload (${trigger}): ${message}`)
      return { ok: false, changes: result, error: { code: 'KAPROXY_ERR_LISTEN', message, issues: [] } }
    }
    this.reloads.ok++
    this.metrics.recordReload(true)
    this.log.info({ ...fields, ok: true },
      `reload (${trigger}): ${result.added.length} added, ${result.removed.length} removed, ${result.updated.length} updated, ${result.unchanged.length} unchanged`)
    return { ok: true, changes: result, error: null }
  }

  private reloadFailed (trigger: string, failure: unknown): ReloadResult {
    const err = failure instanceof Error ? failure : new Error(String(failure))
    this.reloads.failed++
    this.metrics.recordReload(false)
    const issues = err instanceof ConfigError ? err.issues : []
    const code = err instanceof KaproxyError ? err.code : 'KAPROXY_ERR_RELOAD'
    // A ConfigError's message already lists every issue; a stack would only hide them.
    this.log.error({ event: 'reload', trigger, ok: false, code, issues, ...(err instanceof ConfigError ? {} : { err }) },
      `reload (${trigger}) rejected, configuration unchanged: ${err.message}`)
    return { ok: false, changes: null, error: { code, message: err.message, issues } }
  }

  /**
   * Graceful stop: readiness turns false and every listener closes at once (new connections are
   * refused); live connections get their route's drainTimeout (or `graceMs`) to end by themselves,
   * then are closed with `shutdown`. Resolves when none is left. Idempotent.
   */
  async drain (graceMs?: number): Promise<void> {
    this.stopping = true
    if (this.draining === null) {
      this.draining = this.engine.drain(graceMs)
      // Counted once the fast engine's workers reported the connections they held unreported.
      await this.engine.reported()
      const live = [...this.engine.connections()].length
      const windowMs = graceMs ?? Math.max(0, ...this.current.routes.map((route) => route.drainTimeoutMs))
      this.log.info({ event: 'draining', connections: live, drainTimeoutMs: windowMs },
        `draining: listeners closed, ${live} connection(s) get up to ${windowMs} ms`)
    }
    await this.draining
  }

  /**
   * Forced stop: stop listening and close every connection now (`shutdown`), also during a drain,
   * then the admin API, which keeps answering (/readyz 503) until the routes are closed. Idempotent.
   */
  async close (): Promise<void> {
    this.stopping = true
    this.closing ??= (async () => {
      this.reclaimer.close()
      await this.engine.close()
      await this.admin?.close()
    })()
    return await this.closing
  }
}
