import type { Middlebox } from '../budget/middleboxes.js'
import type { KeepaliveSettings } from '../keepalive.js'
import type { UpstreamTarget } from '../upstream/target.js'
import type { AddressRule } from './address-rule.js'
import type { HostPort } from './formats.js'

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const
export type LogLevel = typeof LOG_LEVELS[number]

export type Side = 'client' | 'upstream'
export const SIDES: readonly Side[] = ['client', 'upstream']

/** One route, fully resolved: every side's keepalive merged over `defaults.keepalive`. */
export interface RouteConfig {
  /** Unique, [a-z0-9-]+. */
  name: string
  /** Where clients connect. Port 0 binds any free port (the bound one is logged). */
  listen: HostPort
  /** Where client connections are relayed to: one or more targets (`upstream:` a string or a list). */
  upstreams: readonly UpstreamTarget[]
  /** How a target is chosen for each connection. Default round-robin. */
  balance: Balance
  /** Further targets tried after a connect failure within one client connection; default upstreams - 1. */
  retries: number
  /** Milliseconds to wait for the upstream to accept before trying the next (`connect-timeout`). */
  connectTimeoutMs: number
  /** What each side's sockets get from `applyKeepalive`; `idle: auto` is already resolved to seconds. */
  keepalive: Record<Side, KeepaliveSettings>
  /** The middleboxes each side's connections cross (`keepalive.<side>.middleboxes`); empty when none are declared. */
  middleboxes: Record<Side, Middlebox[]>
  /** Whether each side's `idle` was `auto` (half the smallest middlebox timeout, see autoIdleSeconds). */
  idleAuto: Record<Side, boolean>
  /**
   * Milliseconds live connections may go on once the route stops accepting (the route was removed
   * by a reload, or kaproxy is shutting down); then they are closed with `route-removed` or
   * `shutdown`. 0 closes them at once. Default `defaults.drainTimeout` (30 s).
   */
  drainTimeoutMs: number
  /**
   * `keepalive.applyToExisting`: when a reload changes this route's keepalive, re-apply it with
   * setsockopt to the route's live sockets too, not only to new connections. Default false.
   */
  keepaliveApplyToExisting: boolean
  /** Active checks of every target; null for none (passive ejection still applies). */
  healthCheck: HealthCheckConfig | null
  /** PROXY protocol header sent to the upstream before any client byte; null for none. */
  proxyProtocol: 'v1' | 'v2' | null
  /** Expect a PROXY protocol (v1 or v2) header from a load balancer in front. */
  acceptProxyProtocol: boolean
  /** Milliseconds a client has to send its PROXY header when accepted with acceptProxyProtocol. Default 5 s. */
  proxyHeaderTimeoutMs: number
  /** Live connections above which new clients are closed at once (`limit`); null for no limit. */
  maxConnections: number | null
  /** Close a connection with no bytes either way for this many milliseconds (`idle-timeout`); null for off. */
  idleTimeoutMs: number | null
  /** Transparent mode (`upstream: original-dst`): relay to each connection's pre-NAT destination; null otherwise. */
  originalDst: OriginalDstConfig | null
  /** SO_MARK set on upstream sockets before connect (Linux, needs CAP_NET_ADMIN); null for none. */
  socketMark: number | null
  /** The data plane this route's connections use, `auto` resolved for this platform. */
  engine: EngineName
  /** Why the route runs on another engine than it asked for (e.g. `fast` off Linux); null when it got what it asked. */
  engineNote: string | null
}

/** `engine` as configured: `auto` is `fast` where the platform has it (Linux), else `net`. */
export const ENGINE_CHOICES = ['auto', 'fast', 'net'] as const
export type EngineChoice = typeof ENGINE_CHOICES[number]
/** The data plane a route's connections relay through: `fast` relays in worker threads (dataPlane.workers), `net` uses Node's streams. */
export type EngineName = 'fast' | 'net'

export interface OriginalDstConfig {
  /** Destinations that may be relayed to; null allows all (the loop guard still applies). */
  allow: readonly AddressRule[] | null
  /** Per-destination upstream keepalive, merged over keepalive.upstream; the first match wins. */
  destinations: ReadonlyArray<{ match: AddressRule, keepalive: KeepaliveSettings }>
}

export const BALANCES = ['round-robin', 'least-connections', 'first-available'] as const
export type Balance = typeof BALANCES[number]

export interface HealthCheckConfig {
  type: 'tcp' | 'http'
  /** Milliseconds between checks of one target. Default 5 s. */
  intervalMs: number
  /** Milliseconds a check may take. Default 2 s. */
  timeoutMs: number
  /** Consecutive passes that bring a down target up. Default 2. */
  rise: number
  /** Consecutive failures (checks or connects) that take a target down. Default 3. */
  fall: number
  /** HTTP checks: request path. Default `/`. */
  path: string
  /** HTTP checks: the status that counts as healthy. Default 200. */
  expectStatus: number
}

export interface AdminConfig {
  /** Admin HTTP API address; null when disabled (`""`). */
  listen: HostPort | null
  /** Bearer token the admin API requires; "" for none. */
  token: string
}

export interface KaproxyConfig {
  log: { level: LogLevel }
  admin: AdminConfig
  /** `reload.watch`: reload when the config file changes (default true). SIGHUP reloads either way. */
  reload: { watch: boolean }
  /** `dataPlane.workers` resolved: the fast engine's worker threads (auto: one per CPU, at most 4). */
  dataPlane: {
    workers: number
    /** `dataPlane.bulkBuffers`: 4 MiB buffers per fast worker that bulk flows copy through; beyond them (or at 0) they splice. */
    bulkBuffers: number
    /** `dataPlane.reportAfterMs`: a fast worker reports a connection it accepted once it relayed this long (0: at once). */
    reportAfterMs: number
    /**
     * `dataPlane.busyPollUs` resolved: `us`, the longest a fast worker polls after moving bytes before
     * it sleeps (0: never); `auto` when it was not set; `cpuQuota`, the CPUs of the cgroup quota that
     * turned `auto` off (null otherwise).
     */
    busyPoll: { us: number, auto: boolean, cpuQuota: number | null }
  }
  /**
   * `defaults.keepalive` as validated. When `idleAuto` is true, `keepalive.idleSec` is a placeholder
   * (the built-in 60 s) that no socket receives: each side resolves `auto` against its own middleboxes.
   */
  defaults: { keepalive: KeepaliveSettings, idleAuto: boolean, middleboxes: Middlebox[], connectTimeoutMs: number, drainTimeoutMs: number, engine: EngineChoice }
  routes: RouteConfig[]
}
