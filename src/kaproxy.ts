import type { Logger } from 'pino'
import type { KaproxyConfig } from './config/types.js'
import { logBudget, logRoutePlan, loggingObserver } from './log.js'
import type { Engine } from './relay/engine.js'
import { NetEngine } from './relay/net/engine.js'
import { readSystemKeepalive } from './system-keepalive.js'

/** The running proxy: one engine for the configured routes, plus what later sits beside it. */
export class Kaproxy {
  readonly config: KaproxyConfig
  readonly engine: Engine
  private readonly log: Logger
  private closing: Promise<void> | null = null

  constructor (config: KaproxyConfig, log: Logger) {
    this.config = config
    this.log = log
    this.engine = new NetEngine(loggingObserver(log))
  }

  /** Resolves once every route listens; rejects with nothing listening otherwise. */
  async start (): Promise<void> {
    const system = readSystemKeepalive()
    this.log.info({ event: 'system-keepalive', ...system },
      `kernel defaults for untuned sockets: tcp_keepalive_time=${system.timeSec ?? '?'}s intvl=${system.intervalSec ?? '?'}s probes=${system.probes ?? '?'}`)
    logRoutePlan(this.log, this.config.routes)
    logBudget(this.log, this.config.routes)
    await this.engine.start(this.config.routes)
    this.log.info({ event: 'ready', routes: this.config.routes.length }, 'kaproxy ready')
  }

  /** Stop listening and close every connection (`shutdown`). Idempotent. */
  async close (): Promise<void> {
    this.closing ??= this.engine.close()
    return await this.closing
  }
}
