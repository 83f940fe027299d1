import { readdirSync } from 'node:fs'
import { descriptorLimit } from '../../sockopt/libc.js'
import type { AcceptBurst, AcceptPause, EngineObserver } from '../engine.js'

/** A listener the budget can stop and restart accepting; see RouteListener. */
export interface AcceptGate {
  /** Stop taking connections from the kernel's accept queue (they wait there). */
  pauseAccepting: () => void
  /** Take connections again, the queued ones first. */
  resumeAccepting: () => void
}

/** Quiet time after a resume before the burst is declared over and logged (ms). */
const BURST_QUIET_MS = 1000
/** While paused, re-count the process's descriptors this often (ms), in case others freed some. */
const RECOUNT_MS = 500

/** Descriptors the process holds now, or null where /proc (Linux) or /dev/fd (macOS, FreeBSD) cannot tell. */
export function openDescriptors (): number | null {
  for (const dir of ['/proc/self/fd', '/dev/fd']) {
    try {
      // The directory listing itself holds one descriptor while it is read.
      return readdirSync(dir).length - 1
    } catch {}
  }
  return null
}

export interface DescriptorBudgetOptions {
  /** The descriptor limit to keep under; default: the soft RLIMIT_NOFILE read with getrlimit. Infinity disables pausing. */
  limit?: number
  /** Descriptors held besides the connections' sockets that come and go (the fast engine's pipes); default none. */
  extra?: () => number
  /**
   * Told the estimate without `extra` and `high` whenever either changes: the fast engine's worker
   * accepts by itself and checks the budget before each accept (see SpliceWorkers.publishBudget).
   */
  publish?: (estimateWithoutExtra: number, high: number) => void
}

/**
 * The process's descriptor budget, shared by every route of an engine. Without it, libuv meets a
 * full descriptor table (EMFILE) with its "EMFILE trick": it accepts each queued client and closes
 * it at once, silently, and a dial that fails with EMFILE would count against a healthy upstream.
 *
 * Each relayed connection is counted as two descriptors (client and upstream) from accept to its
 * close summary, on top of a baseline (what the process held when the engine started, re-counted
 * from /proc/self/fd whenever a pause starts or an EMFILE is seen, and every 0.5 s while paused, so
 * descriptors freed elsewhere also end a pause). The estimate is deliberately pessimistic (a
 * connection still dialing holds one). When the estimate reaches
 * `high` (the limit minus a reserve of 5%, 16..1024, for the admin API, health checks and logs),
 * every listener stops accepting; new clients wait in the kernel's accept queue (the listening
 * socket stays bound and open). When it falls to `low` (10% below `high`), accepting resumes. One
 * `accept-paused` and one `accept-resumed` event per burst: a burst ends once accepting has run
 * for 1 s without pausing again.
 *
 * The hot path is `accepted()` and `released()`: a counter and a comparison each.
 */
export class DescriptorBudget {
  /** The soft RLIMIT_NOFILE (Infinity: none). */
  readonly limit: number
  /** Pause at this many descriptors (estimated). */
  readonly high: number
  /** Resume at this many. */
  readonly low: number
  /** Live relayed connections across every route. */
  connections = 0
  /** Connections closed with `fd-exhausted` since start. */
  fdExhausted = 0
  private baseline: number
  private readonly floor: number
  private readonly extra: () => number
  private readonly publish: (estimateWithoutExtra: number, high: number) => void
  private paused = false
  private readonly gates = new Set<AcceptGate>()
  private readonly observer: EngineObserver
  private recount: NodeJS.Timeout | null = null
  private quiet: NodeJS.Timeout | null = null
  // The burst in progress: when it began, how often accepting paused, for how long in all.
  private burst: { startedAt: number, pauses: number, pausedMs: number, pausedAt: number, fdExhaustedAtStart: number } | null = null

  constructor (observer: EngineObserver, options: DescriptorBudgetOptions = {}) {
    this.observer = observer
    let limit = options.limit
    if (limit === undefined) {
      try { limit = descriptorLimit().soft } catch { limit = Infinity }
    }
    this.limit = limit
    this.extra = options.extra ?? (() => 0)
    this.publish = options.publish ?? (() => {})
    const reserve = Math.min(1024, Math.max(16, Math.round(limit * 0.05)))
    this.high = limit - reserve
    this.low = this.high - Math.max(8, Math.round(this.high * 0.1))
    this.floor = openDescriptors() ?? 32
    this.baseline = this.floor
    this.published()
  }

  private published (): void {
    this.publish(this.baseline + 2 * this.connections, Number.isFinite(this.high) ? this.high : 0)
  }

  /**
   * The worker found the budget spent before accepting (it stopped polling): pause every route
   * unless the estimate has room again by now. Returns whether accepting is paused.
   */
  spent (): boolean {
    if (!this.paused && this.estimate + 2 >= this.high) this.pause('budget')
    return this.paused
  }

  /** Descriptors in use, as estimated: the baseline plus two per live connection. */
  get estimate (): number {
    return this.baseline + 2 * this.connections + this.extra()
  }

  get isPaused (): boolean {
    return this.paused
  }

  register (gate: AcceptGate): void {
    this.gates.add(gate)
    if (this.paused) gate.pauseAccepting()
  }

  unregister (gate: AcceptGate): void {
    this.gates.delete(gate)
  }

  /** A client was accepted. */
  accepted (): void {
    this.connections++
    this.published()
    if (!this.paused && this.estimate >= this.high) this.pause('budget')
  }

  /** A connection's last socket closed. */
  released (): void {
    this.connections--
    this.published()
    if (this.paused && this.estimate <= this.low) this.resume()
  }

  /**
   * The kernel refused a descriptor (EMFILE, ENFILE) although the estimate had room: something
   * else holds more than the reserve. Re-count and stop accepting until descriptors are free.
   * `closedConnection`: a connection was closed with `fd-exhausted` (false for an accept error).
   */
  exhausted (closedConnection = true): void {
    this.resync()
    if (!this.paused) this.pause('EMFILE')
    if (closedConnection) this.fdExhausted++
  }

  /** Stop pausing and timers (the engine is stopping). */
  close (): void {
    if (this.recount !== null) clearInterval(this.recount)
    if (this.quiet !== null) clearTimeout(this.quiet)
    this.recount = this.quiet = null
    this.paused = false
    this.gates.clear()
  }

  // Never below what the process held at start: connections still dialing hold one descriptor,
  // not two, and would otherwise make the baseline look smaller than it is.
  private resync (): void {
    const open = openDescriptors()
    if (open !== null) this.baseline = Math.max(this.floor, open - 2 * this.connections - this.extra())
    this.published()
  }

  private pause (trigger: AcceptPause['trigger']): void {
    // Once per pause: the descriptors others (admin API, health checks) hold may have grown.
    if (trigger === 'budget') this.resync()
    this.paused = true
    for (const gate of this.gates) gate.pauseAccepting()
    const now = Date.now()
    if (this.quiet !== null) { clearTimeout(this.quiet); this.quiet = null }
    this.recount = setInterval(() => { this.resync(); if (this.estimate <= this.low) this.resume() }, RECOUNT_MS)
    this.recount.unref()
    if (this.burst !== null) {
      this.burst.pauses++
      this.burst.pausedAt = now
      return
    }
    this.burst = { startedAt: now, pauses: 1, pausedMs: 0, pausedAt: now, fdExhaustedAtStart: this.fdExhausted }
    this.observer.onAcceptPaused?.({ trigger, limit: this.limit, high: this.high, low: this.low, descriptors: this.estimate, connections: this.connections })
  }

  private resume (): void {
    this.paused = false
    if (this.recount !== null) { clearInterval(this.recount); this.recount = null }
    const burst = this.burst
    if (burst !== null) burst.pausedMs += Date.now() - burst.pausedAt
    for (const gate of this.gates) gate.resumeAccepting()
    this.quiet = setTimeout(() => { this.endBurst() }, BURST_QUIET_MS)
    this.quiet.unref()
  }

  private endBurst (): void {
    this.quiet = null
    const burst = this.burst
    if (burst === null || this.paused) return
    this.burst = null
    const summary: AcceptBurst = {
      pauses: burst.pauses,
      pausedMs: burst.pausedMs,
      burstMs: Date.now() - burst.startedAt,
      fdExhausted: this.fdExhausted - burst.fdExhaustedAtStart,
      descriptors: this.estimate,
      connections: this.connections
    }
    this.observer.onAcceptResumed?.(summary)
  }
}
