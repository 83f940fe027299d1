import { adviseSide, tightestCluster, type Advice, type SilenceCluster } from '../budget/advice.js'
import { formatHostPort } from '../config/formats.js'
import { SIDES, type Balance, type EngineName, type RouteConfig, type Side } from '../config/types.js'
import { KaproxyError, NoDescriptorError } from '../errors.js'
import { detectionSeconds, readKeepaliveFd, type KeepaliveReading, type KeepaliveSettings } from '../keepalive.js'
import type { ConnectionRecord, Engine } from '../relay/engine.js'
import { readTcpInfo, type TcpInfo } from '../sockopt/tcp-info.js'
import type { UpstreamState } from '../upstream/pool.js'
import { targetsLabel } from '../upstream/target.js'

/** `/connections?limit=` default and maximum. */
export const CONNECTIONS_LIMIT_DEFAULT = 1000
export const CONNECTIONS_LIMIT_MAX = 10_000

/** One side's keepalive as configured: what kaproxy applies with setsockopt. */
export interface SideConfigView {
  enabled: boolean
  idleSec: number | null
  intervalSec: number | null
  count: number | null
  /** null: the kernel's default is left alone. */
  userTimeoutMs: number | null
  /** Worst-case seconds to notice a silent peer; null when keepalive is off. */
  detectionSec: number | null
}

/** One target of a route's upstream pool, as the engine sees it now. */
export interface UpstreamView {
  /** `host:port` or `unix:/path`. */
  target: string
  state: UpstreamState
  /** Live connections to it. */
  active: number
}

/** What one route and side learned from resets: the evidence `kaproxy advise` reads. */
export interface ResetsView {
  /** Resets (ECONNRESET, EPIPE) and keepalive timeouts of relaying connections recorded since start. */
  count: number
  /** Silences (seconds) of the latest of them kept for the cluster (at most 256). */
  kept: number
  /** Where the kept silences of at least 1 s cluster tightest; null without any. */
  cluster: SilenceCluster | null
  /** adviseSide's verdict on the kept silences of at least 1 s; null where there is no evidence. */
  advice: Advice | null
}

/** Silences shorter than this (seconds) say nothing about idle timeouts: a reset right after traffic. */
export const ADVICE_MIN_SILENCE_SEC = 1

/** Where the silences before resets come from (Metrics.resetSilences). */
export type ResetSilencesSource = (route: string, side: Side) => { count: number, recentSec: readonly number[] }

/** `/routes`: one route's effective configuration. */
export interface RouteView {
  name: string
  /** As configured (port 0 = any). */
  listen: string
  /** The bound address; null when not listening. */
  address: string | null
  /** The targets as one label (`10.0.0.5:5432,10.0.0.6:5432`), or `original-dst` in transparent mode. */
  upstream: string
  upstreams: UpstreamView[]
  balance: Balance
  /** The data plane the route's connections relay through (`auto` resolved). */
  engine: EngineName
  /**
   * Who accepts and dials the route's connections: `worker` (the fast engine's worker, for a route
   * with one numeric target and no PROXY header, transparent mode, socket mark or health checks),
   * or `main` (Node's main thread; the worker then only relays on `fast`).
   */
  acceptedBy: 'worker' | 'main' | null
  retries: number
  connectTimeoutMs: number
  /** null: no idle timeout. */
  idleTimeoutMs: number | null
  /** null: no limit. */
  maxConnections: number | null
  healthCheck: { type: 'tcp' | 'http', intervalMs: number } | null
  proxyProtocol: 'v1' | 'v2' | null
  acceptProxyProtocol: boolean
  keepalive: Record<Side, SideConfigView>
  /** Transparent mode: upstream keepalive per destination rule (first match wins over keepalive.upstream). */
  destinations: Array<{ match: string, keepalive: SideConfigView }>
  /** Live connections right now. */
  connections: number
  /**
   * Per side, the silences before resets and keepalive timeouts, their tightest cluster and the
   * advice. In transparent mode the upstream advice is judged against keepalive.upstream, not the
   * per-destination keepalive.
   */
  resets: Record<Side, ResetsView>
}

/** One side of a live connection, read from the kernel at the moment of the request. */
export interface SideView {
  /** This socket's own address (kaproxy's end). */
  local: string | null
  /** The peer's address. */
  remote: string | null
  /** getsockopt: SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT, TCP_USER_TIMEOUT. */
  keepalive: KeepaliveReading | null
  /** Linux TCP_INFO; null elsewhere. */
  tcpInfo: TcpInfo | null
  /** Why the kernel could not be asked (upstream not connected yet, socket closed, ...). */
  error: string | null
}

/** `/connections`: one live connection. */
export interface ConnectionView {
  id: number
  route: string
  client: string
  upstream: string
  /** ISO time of accept. */
  openedAt: string
  ageMs: number
  /** Milliseconds the upstream took to accept; null while dialing. */
  connectMs: number | null
  bytesFromClient: number
  bytesFromUpstream: number
  sides: Record<Side, SideView>
}

export interface ConnectionsView {
  /** Live connections matching the query, before the limit. */
  total: number
  limit: number
  /** Oldest first. */
  connections: ConnectionView[]
}

function sideConfig (settings: KeepaliveSettings): SideConfigView {
  return {
    enabled: settings.enabled,
    idleSec: settings.enabled ? settings.idleSec : null,
    intervalSec: settings.enabled ? settings.intervalSec : null,
    count: settings.enabled ? settings.count : null,
    userTimeoutMs: settings.userTimeoutMs ?? null,
    detectionSec: detectionSeconds(settings)
  }
}

/** One route and side's resets view from its recorded silences. */
export function resetsView (route: RouteConfig, side: Side, silences: { count: number, recentSec: readonly number[] }): ResetsView {
  const evidence = silences.recentSec.filter((sec) => sec >= ADVICE_MIN_SILENCE_SEC)
  return {
    count: silences.count,
    kept: silences.recentSec.length,
    cluster: tightestCluster(evidence),
    advice: adviseSide({ route: route.name, side, silencesSec: evidence, keepalive: route.keepalive[side], middleboxes: route.middleboxes[side] })
  }
}

const NO_SILENCES: ResetSilencesSource = () => ({ count: 0, recentSec: [] })

/** The effective config of each route, with both sides' keepalive resolved and what resets taught. */
export function routesView (routes: readonly RouteConfig[], engine: Engine, silences: ResetSilencesSource = NO_SILENCES): RouteView[] {
  const live = new Map<string, number>()
  for (const connection of engine.connections()) live.set(connection.route.name, (live.get(connection.route.name) ?? 0) + 1)
  return routes.map((route) => ({
    name: route.name,
    listen: formatHostPort(route.listen),
    address: engine.address(route.name),
    upstream: route.originalDst !== null ? 'original-dst' : targetsLabel(route.upstreams),
    upstreams: engine.upstreams(route.name).map((u) => ({ target: u.target.label, state: u.state, active: u.active })),
    balance: route.balance,
    engine: route.engine,
    acceptedBy: engine.acceptedBy(route.name),
    retries: route.retries,
    connectTimeoutMs: route.connectTimeoutMs,
    idleTimeoutMs: route.idleTimeoutMs,
    maxConnections: route.maxConnections,
    healthCheck: route.healthCheck === null ? null : { type: route.healthCheck.type, intervalMs: route.healthCheck.intervalMs },
    proxyProtocol: route.proxyProtocol,
    acceptProxyProtocol: route.acceptProxyProtocol,
    keepalive: { client: sideConfig(route.keepalive.client), upstream: sideConfig(route.keepalive.upstream) },
    destinations: route.originalDst?.destinations.map((d) => ({ match: d.match.text, keepalive: sideConfig(d.keepalive) })) ?? [],
    connections: live.get(route.name) ?? 0,
    resets: { client: resetsView(route, 'client', silences(route.name, 'client')), upstream: resetsView(route, 'upstream', silences(route.name, 'upstream')) }
  }))
}

/** Ask the kernel about one socket: keepalive with getsockopt, then TCP_INFO. Never throws. */
function sideView (connection: ConnectionRecord, side: Side): SideView {
  const endpoint = connection.endpoint(side)
  if (endpoint === null) return { local: null, remote: null, keepalive: null, tcpInfo: null, error: 'not connected yet' }
  const view: SideView = { local: endpoint.local, remote: endpoint.remote, keepalive: null, tcpInfo: null, error: null }
  // A unix socket upstream has no TCP keepalive or TCP_INFO to read.
  if (side === 'upstream' && connection.upstream.startsWith('unix:')) {
    view.error = 'unix socket: no TCP keepalive'
    return view
  }
  try {
    if (endpoint.fd < 0) throw new NoDescriptorError('socket')
    view.keepalive = readKeepaliveFd(endpoint.fd)
    view.tcpInfo = readTcpInfo(endpoint.fd)
  } catch (err) {
    view.error = err instanceof KaproxyError ? `${err.code}: ${err.message}` : String(err)
  }
  return view
}

/**
 * Live connections, oldest first, with each side read back from the kernel right now. The
 * system calls (six getsockopt per side) run only for the `limit` connections returned.
 */
export function connectionsView (engine: Engine, options: { route?: string, limit: number }, now = Date.now()): ConnectionsView {
  const all = [...engine.connections(options.route)].sort((a, b) => a.id - b.id)
  const connections = all.slice(0, options.limit).map((connection): ConnectionView => ({
    id: connection.id,
    route: connection.route.name,
    client: connection.client,
    upstream: connection.upstream,
    openedAt: new Date(connection.openedAt).toISOString(),
    ageMs: now - connection.openedAt,
    connectMs: connection.connectMs,
    bytesFromClient: connection.bytesFromClient,
    bytesFromUpstream: connection.bytesFromUpstream,
    sides: Object.fromEntries(SIDES.map((side) => [side, sideView(connection, side)])) as Record<Side, SideView>
  }))
  return { total: all.length, limit: options.limit, connections }
}
