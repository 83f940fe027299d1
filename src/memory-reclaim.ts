import type { Logger } from 'pino'
import type { EngineObserver } from './relay/engine.js'

// After a burst of new connections V8 keeps the heap it grew to, with the burst's garbage and
// free space in it, until its memory reducer runs: 8 s after allocation slows down, and then
// without much compacting. A sidecar under a memory limit wants that back as soon as the burst
// is over. At 9,000 connections on the `net` engine it is about a third of the process's growth
// (6 KB per connection right after opening, 3.4 after one full collection).

/** New connections since the last collection that make a burst worth one. */
export const BURST_CONNECTIONS = 1000
/** A burst is over once no connection opened for this long (ms). */
export const QUIET_MS = 250

/** What one collection returned, for the log. */
export interface Reclaimed {
  connections: number
  rssBeforeBytes: number
  rssAfterBytes: number
  pauseMs: number
}

/** One full, compacting collection of the main thread's heap. */
type Collect = () => Promise<void>

/**
 * Watches connections open (an engine observer) and, once a burst of at least BURST_CONNECTIONS
 * is followed by QUIET_MS without one, asks V8 for one full compacting collection: the
 * inspector's `HeapProfiler.collectGarbage` (V8's low-memory notification, which also returns
 * free pages), through an in-process session opened for it. One counter per connection and one
 * timer per burst; the timer never keeps the process alive. A collection stops the main thread
 * for tens of milliseconds (the `net` engine's relaying with it; the `fast` engine's workers go on).
 */
export class BurstReclaimer {
  readonly observer: EngineObserver
  private readonly burst: number
  private readonly quietMs: number
  private readonly onReclaimed: (result: Reclaimed) => void
  private opened = 0
  private openedAtCheck = 0
  private timer: NodeJS.Timeout | null = null
  private collect: Collect | null | undefined = undefined
  private collecting = false
  private closed = false

  /** `burst` and `quietMs`: BURST_CONNECTIONS and QUIET_MS unless given; `onReclaimed` hears each collection. */
  constructor (private readonly log: Logger, options: { burst?: number, quietMs?: number, onReclaimed?: (result: Reclaimed) => void } = {}) {
    this.burst = options.burst ?? BURST_CONNECTIONS
    this.quietMs = options.quietMs ?? QUIET_MS
    this.onReclaimed = options.onReclaimed ?? (() => {})
    this.observer = { onOpen: () => { this.noteOpen(1) }, onTally: (_route, tally) => { this.noteOpen(tally.connectMs.length) } }
  }

  private noteOpen (count: number): void {
    this.opened += count
    if (this.opened < this.burst || this.timer !== null || this.closed) return
    this.openedAtCheck = this.opened
    this.timer = setTimeout(() => { this.check() }, this.quietMs).unref()
  }

  private check (): void {
    this.timer = null
    if (this.closed) return
    // Connections still opening: the burst goes on; look again after another quiet period.
    if (this.opened !== this.openedAtCheck || this.collecting) {
      this.openedAtCheck = this.opened
      this.timer = setTimeout(() => { this.check() }, this.quietMs).unref()
      return
    }
    const connections = this.opened
    this.opened = 0
    void this.reclaim(connections)
  }

  private async reclaim (connections: number): Promise<void> {
    this.collecting = true
    try {
      this.collect ??= await inspectorCollect()
      if (this.collect === null) return
      const rssBeforeBytes = process.memoryUsage.rss()
      const started = performance.now()
      await this.collect()
      const result = { connections, rssBeforeBytes, rssAfterBytes: process.memoryUsage.rss(), pauseMs: Math.round(performance.now() - started) }
      this.log.debug({ event: 'memory-reclaimed', ...result }, `burst of ${connections} connections over: ${Math.round((rssBeforeBytes - result.rssAfterBytes) / 1e6)} MB returned in ${result.pauseMs} ms`)
      this.onReclaimed(result)
    } catch (err) {
      this.log.warn({ event: 'memory-reclaim-failed', err }, 'collecting the heap after a burst failed')
    } finally {
      this.collecting = false
    }
  }

  close (): void {
    this.closed = true
    if (this.timer !== null) clearTimeout(this.timer)
    this.timer = null
  }
}

/** The collection through a session opened for it and closed after; null without an inspector (a Node built without it). */
async function inspectorCollect (): Promise<Collect | null> {
  let inspector: typeof import('node:inspector')
  try {
    inspector = await import('node:inspector')
  } catch {
    return null
  }
  return async () => {
    const session = new inspector.Session()
    session.connect()
    try {
      await new Promise<void>((resolve, reject) => {
        session.post('HeapProfiler.collectGarbage', (err) => { if (err == null) resolve(); else reject(err) })
      })
    } finally {
      session.disconnect()
    }
  }
}
