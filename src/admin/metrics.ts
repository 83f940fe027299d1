import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client'
import type { RouteConfig, Side } from '../config/types.js'
import type { CloseReason } from '../relay/close-reason.js'
import type { CloseSummary, ConnectionRecord, ConnectionTally, Engine, EngineObserver } from '../relay/engine.js'
import { MIDDLEBOX_PRESETS } from '../budget/middleboxes.js'
import { ResetSilences } from './reset-silences.js'

/** What the metrics read at scrape time; nothing here is called per chunk or per connection. */
export interface MetricsSource {
  /** Every live connection (all routes). */
  connections: () => Iterable<ConnectionRecord>
  /** The routes in force (after a reload, the new ones). */
  routes: () => readonly RouteConfig[]
  /** Each configured target of a route with its state (up/down). */
  upstreams: Engine['upstreams']
  ready: () => boolean
  /** The fast engine's workers: connections they relay (in all and each) and descriptors they hold besides their sockets (pipes, epoll). */
  dataPlane: () => { connections: number, descriptors: number, perWorker: number[] }
}

/** The side label of a close: the side that caused it, or `none` (e.g. `shutdown`). */
export type CloseSide = Side | 'none'

/** One route's counters, closed connections plus live ones at the moment of the snapshot. */
export interface RouteStats {
  name: string
  /** Accepted connections: closed plus live. */
  connectionsTotal: number
  /** Live connections, including those still dialing the upstream. */
  active: number
  /** Connections whose upstream accepted. */
  upstreamConnects: number
  /** Dial attempts that failed (a connection may go on with another target). */
  dialFailures: number
  /** Mean upstream connect time in milliseconds; null before the first connect. */
  connectMsMean: number | null
  bytesFromClient: number
  bytesFromUpstream: number
  closes: Array<{ reason: CloseReason, side: CloseSide, count: number }>
}

/** `/stats`: the numbers of `/metrics` as JSON, for the status page. */
export interface StatsSnapshot {
  ready: boolean
  /** Seconds since this kaproxy was created. */
  uptimeSec: number
  reloads: { ok: number, failed: number }
  routes: RouteStats[]
}

interface RouteTotals {
  /** Closed connections. */
  closed: number
  /** Bytes of closed connections. */
  bytesFromClient: number
  bytesFromUpstream: number
  upstreamConnects: number
  connectMsSum: number
  dialFailures: number
  /** By `reason|side`. */
  closes: Map<string, number>
  /** Silences before resets and keepalive timeouts, per side. */
  resetSilences: Record<Side, ResetSilences>
}

interface LiveTotals {
  active: number
  bytesFromClient: number
  bytesFromUpstream: number
}

/** Upstream connect latency buckets, seconds: loopback answers in well under 1 ms, a WAN in tens. */
const CONNECT_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]

/**
 * Silence-before-reset buckets, seconds: 1 s to 1 day, with every middlebox preset's idle timeout
 * up to a day (240, 350, 900, 1200, 86400) as a bound, so a bucket edge sits at each vendor default.
 */
export const IDLE_BEFORE_RESET_BUCKETS = [...new Set([
  1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400,
  ...Object.values(MIDDLEBOX_PRESETS).map((p) => p.idleTimeoutSec as number).filter((sec) => sec <= 86400)
])].sort((a, b) => a - b)

// Process and Node.js metrics (CPU, memory, event loop lag, GC) describe the process, not one
// Kaproxy: one registry per process, created once, merged into every scrape.
let processRegistry: Registry | undefined
function processMetrics (): Registry {
  if (processRegistry === undefined) {
    processRegistry = new Registry()
    // Event-loop delay sampled once a second: prom-client's default (every 10 ms) woke an idle
    // process about 200 times a second, its only CPU use with thousands of idle connections.
    collectDefaultMetrics({ register: processRegistry, eventLoopMonitoringPrecision: 1000 })
  }
  return processRegistry
}

function emptyTotals (): RouteTotals {
  return {
    closed: 0,
    bytesFromClient: 0,
    bytesFromUpstream: 0,
    upstreamConnects: 0,
    connectMsSum: 0,
    dialFailures: 0,
    closes: new Map(),
    resetSilences: { client: new ResetSilences(), upstream: new ResetSilences() }
  }
}

/**
 * Prometheus metrics (prom-client) and their JSON twin, fed by engine events and read at scrape.
 * Byte counters are the closed connections' totals plus every live connection's counts at scrape
 * time, so a long-lived flow shows up before it closes and the relay never counts anything extra.
 */
export class Metrics {
  /** Pass to the engine (composed with the logging observer). */
  readonly observer: EngineObserver
  private readonly source: MetricsSource
  private readonly registry = new Registry()
  private readonly totals = new Map<string, RouteTotals>()
  private readonly reloads = { ok: 0, failed: 0 }
  private readonly createdAt = Date.now()

  private readonly connectionsTotal: Counter<'route'>
  private readonly connectionsActive: Gauge<'route'>
  private readonly connectionsClosed: Counter<'route' | 'reason' | 'side'>
  private readonly bytes: Counter<'route' | 'from'>
  private readonly connectSeconds: Histogram<'route'>
  private readonly idleBeforeReset: Histogram<'route' | 'side'>
  private readonly dialFailuresTotal: Counter<'route' | 'reason'>
  private readonly upstreamUp: Gauge<'route' | 'upstream'>
  private readonly reloadsTotal: Counter<'result'>
  private readonly readyGauge: Gauge
  private readonly dataPlaneConnections: Gauge
  private readonly dataPlaneDescriptors: Gauge
  private readonly workerConnections: Gauge<'worker'>

  constructor (source: MetricsSource, version: string) {
    this.source = source
    // Started with the first Kaproxy, so GC and event-loop figures cover the whole run.
    processMetrics()
    const registers = [this.registry]
    this.connectionsTotal = new Counter({ name: 'kaproxy_connections_total', help: 'Client connections accepted, per route', labelNames: ['route'], registers })
    this.connectionsActive = new Gauge({ name: 'kaproxy_connections_active', help: 'Live client connections, including those still dialing the upstream', labelNames: ['route'], registers })
    this.connectionsClosed = new Counter({
      name: 'kaproxy_connections_closed_total',
      help: 'Closed connections by close reason and the side that caused it (none: kaproxy itself, e.g. shutdown)',
      labelNames: ['route', 'reason', 'side'],
      registers
    })
    this.bytes = new Counter({ name: 'kaproxy_relayed_bytes_total', help: 'Bytes relayed, by the side they came from (client or upstream); live connections included', labelNames: ['route', 'from'], registers })
    this.connectSeconds = new Histogram({ name: 'kaproxy_upstream_connect_seconds', help: 'Time for the upstream to accept a connection', labelNames: ['route'], buckets: CONNECT_BUCKETS, registers })
    this.idleBeforeReset = new Histogram({
      name: 'kaproxy_idle_before_reset_seconds',
      help: 'Silence (no bytes either way) before a connection was reset (ECONNRESET, EPIPE) or timed out by keepalive, by the side that failed; a reset answering bytes that ended a silence counts that silence',
      labelNames: ['route', 'side'],
      buckets: IDLE_BEFORE_RESET_BUCKETS,
      registers
    })
    this.dialFailuresTotal = new Counter({ name: 'kaproxy_upstream_dial_failures_total', help: 'Upstream connect attempts that failed, by reason (the connection may have gone on with another target)', labelNames: ['route', 'reason'], registers })
    this.upstreamUp = new Gauge({ name: 'kaproxy_upstream_up', help: '1 when a configured upstream target is up (health checks and passive ejection), 0 when down', labelNames: ['route', 'upstream'], registers })
    this.reloadsTotal = new Counter({ name: 'kaproxy_config_reloads_total', help: 'Configuration reloads by result (ok, failed)', labelNames: ['result'], registers })
    this.readyGauge = new Gauge({ name: 'kaproxy_ready', help: '1 when every route listens and kaproxy is not shutting down', registers })
    this.dataPlaneConnections = new Gauge({ name: 'kaproxy_fast_engine_connections', help: 'Connections the fast engine\'s splice workers relay now', registers })
    this.workerConnections = new Gauge({ name: 'kaproxy_fast_engine_worker_connections', help: 'Connections each of the fast engine\'s workers (dataPlane.workers) relays now', labelNames: ['worker'], registers })
    this.dataPlaneDescriptors = new Gauge({ name: 'kaproxy_fast_engine_descriptors', help: 'Descriptors the fast engine holds besides the connections\' sockets: its pipes (two each, pooled), epoll set, eventfd and thread', registers })
    new Gauge({ name: 'kaproxy_build_info', help: 'Always 1; labels carry the kaproxy and Node.js versions', labelNames: ['version', 'node'], registers })
      .set({ version, node: process.version }, 1)
    this.reloadsTotal.inc({ result: 'ok' }, 0)
    this.reloadsTotal.inc({ result: 'failed' }, 0)

    this.observer = {
      onOpen: (connection) => {
        const totals = this.route(connection.route.name)
        if (connection.connectMs === null) return
        totals.upstreamConnects++
        totals.connectMsSum += connection.connectMs
        this.connectSeconds.observe({ route: connection.route.name }, connection.connectMs / 1000)
      },
      onClose: (connection, summary) => { this.closed(connection, summary) },
      onTally: (route, tally) => { this.tallied(route.name, tally) },
      onDialFailed: (connection, _target, reason) => {
        this.route(connection.route.name).dialFailures++
        // By reason only: in transparent mode every destination would be a new series.
        this.dialFailuresTotal.inc({ route: connection.route.name, reason })
      }
    }
  }

  /**
   * The silences (seconds) before resets and keepalive timeouts on one route and side: how many
   * were recorded, and the latest (at most RESET_SILENCES_KEPT), oldest first.
   */
  resetSilences (route: string, side: Side): { count: number, recentSec: number[] } {
    const silences = this.totals.get(route)?.resetSilences[side]
    return { count: silences?.count ?? 0, recentSec: silences?.recent() ?? [] }
  }

  /** Count a configuration reload (for hot reload); shown as kaproxy_config_reloads_total{result}. */
  recordReload (ok: boolean): void {
    if (ok) this.reloads.ok++
    else this.reloads.failed++
    this.reloadsTotal.inc({ result: ok ? 'ok' : 'failed' })
  }

  /** The Prometheus text exposition: kaproxy's metrics, then the process's. */
  async prometheus (): Promise<{ contentType: string, text: string }> {
    const live = this.live()
    this.connectionsTotal.reset()
    this.connectionsActive.reset()
    this.connectionsClosed.reset()
    this.bytes.reset()
    for (const name of this.routeNames(live)) {
      const totals = this.route(name)
      const now = live.get(name) ?? { active: 0, bytesFromClient: 0, bytesFromUpstream: 0 }
      this.connectionsTotal.inc({ route: name }, totals.closed + now.active)
      this.connectionsActive.set({ route: name }, now.active)
      this.bytes.inc({ route: name, from: 'client' }, totals.bytesFromClient + now.bytesFromClient)
      this.bytes.inc({ route: name, from: 'upstream' }, totals.bytesFromUpstream + now.bytesFromUpstream)
      for (const [key, count] of totals.closes) {
        const [reason, side] = key.split('|') as [string, string]
        this.connectionsClosed.inc({ route: name, reason, side }, count)
      }
    }
    this.upstreamUp.reset()
    for (const route of this.source.routes()) {
      for (const upstream of this.source.upstreams(route.name)) this.upstreamUp.set({ route: route.name, upstream: upstream.target.label }, upstream.state === 'up' ? 1 : 0)
    }
    this.readyGauge.set(this.source.ready() ? 1 : 0)
    const dataPlane = this.source.dataPlane()
    this.dataPlaneConnections.set(dataPlane.connections)
    this.dataPlaneDescriptors.set(dataPlane.descriptors)
    for (const [worker, connections] of dataPlane.perWorker.entries()) this.workerConnections.set({ worker: String(worker) }, connections)
    const registry = Registry.merge([this.registry, processMetrics()])
    return { contentType: registry.contentType, text: await registry.metrics() }
  }

  /** The same counters as JSON (`/stats`). */
  snapshot (): StatsSnapshot {
    const live = this.live()
    const routes: RouteStats[] = []
    for (const name of this.routeNames(live)) {
      const totals = this.route(name)
      const now = live.get(name) ?? { active: 0, bytesFromClient: 0, bytesFromUpstream: 0 }
      routes.push({
        name,
        connectionsTotal: totals.closed + now.active,
        active: now.active,
        upstreamConnects: totals.upstreamConnects,
        connectMsMean: totals.upstreamConnects === 0 ? null : totals.connectMsSum / totals.upstreamConnects,
        dialFailures: totals.dialFailures,
        bytesFromClient: totals.bytesFromClient + now.bytesFromClient,
        bytesFromUpstream: totals.bytesFromUpstream + now.bytesFromUpstream,
        closes: [...totals.closes].filter(([, count]) => count > 0).map(([key, count]) => {
          const [reason, side] = key.split('|') as [CloseReason, CloseSide]
          return { reason, side, count }
        })
      })
    }
    return {
      ready: this.source.ready(),
      uptimeSec: Math.round((Date.now() - this.createdAt) / 1000),
      reloads: { ...this.reloads },
      routes
    }
  }

  private tallied (name: string, tally: ConnectionTally): void {
    const totals = this.route(name)
    const count = tally.connectMs.length
    totals.closed += count
    totals.bytesFromClient += tally.bytesFromClient
    totals.bytesFromUpstream += tally.bytesFromUpstream
    for (const [key, closes] of [[closeKey('client-closed', 'client'), tally.clientClosed], [closeKey('upstream-closed', 'upstream'), tally.upstreamClosed]] as const) {
      if (closes > 0) totals.closes.set(key, (totals.closes.get(key) ?? 0) + closes)
    }
    totals.upstreamConnects += count
    for (const exact of tally.connectMs) {
      // Whole ms, as a connection's connectMs.
      const ms = Math.round(exact)
      totals.connectMsSum += ms
      this.connectSeconds.observe({ route: name }, ms / 1000)
    }
  }

  private closed (connection: ConnectionRecord, summary: CloseSummary): void {
    const totals = this.route(connection.route.name)
    totals.closed++
    totals.bytesFromClient += connection.bytesFromClient
    totals.bytesFromUpstream += connection.bytesFromUpstream
    const key = closeKey(summary.reason, summary.side)
    totals.closes.set(key, (totals.closes.get(key) ?? 0) + 1)
    if (summary.silenceBeforeResetMs !== null && summary.side !== null) {
      const sec = summary.silenceBeforeResetMs / 1000
      totals.resetSilences[summary.side].record(sec)
      this.idleBeforeReset.observe({ route: connection.route.name, side: summary.side }, sec)
    }
  }

  private route (name: string): RouteTotals {
    let totals = this.totals.get(name)
    if (totals === undefined) {
      totals = emptyTotals()
      // Present from the start, so an alert on increase() sees the first dead peer.
      totals.closes.set('keepalive-timeout|client', 0)
      totals.closes.set('keepalive-timeout|upstream', 0)
      this.totals.set(name, totals)
      // Zero series from the start too (zero() on a live series would clear it: only here, once per route).
      for (const side of ['client', 'upstream'] as const) this.idleBeforeReset.zero({ route: name, side })
    }
    return totals
  }

  /** Configured routes first (in config order), then any route seen before a reload removed it. */
  private routeNames (live: Map<string, LiveTotals>): string[] {
    const names = new Set(this.source.routes().map((route) => route.name))
    for (const name of this.totals.keys()) names.add(name)
    for (const name of live.keys()) names.add(name)
    return [...names]
  }

  // One pass over the live connections per scrape: O(connections), only when asked.
  private live (): Map<string, LiveTotals> {
    const live = new Map<string, LiveTotals>()
    for (const connection of this.source.connections()) {
      const name = connection.route.name
      let totals = live.get(name)
      if (totals === undefined) { totals = { active: 0, bytesFromClient: 0, bytesFromUpstream: 0 }; live.set(name, totals) }
      totals.active++
      totals.bytesFromClient += connection.bytesFromClient
      totals.bytesFromUpstream += connection.bytesFromUpstream
    }
    return live
  }
}

/**
 * `reason|side`, the key of a route's close counts: one string per pair, made once (a new string
 * per close was hashed again for every lookup, thousands of times a second).
 */
const closeKeys = new Map<CloseReason, Record<CloseSide, string>>()
function closeKey (reason: CloseReason, side: Side | null): string {
  let keys = closeKeys.get(reason)
  if (keys === undefined) {
    keys = { client: `${reason}|client`, upstream: `${reason}|upstream`, none: `${reason}|none` }
    closeKeys.set(reason, keys)
  }
  return keys[side ?? 'none']
}
