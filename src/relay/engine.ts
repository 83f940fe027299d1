import type { RouteConfig, Side } from '../config/types.js'
import type { UpstreamState } from '../upstream/pool.js'
import type { UpstreamTarget } from '../upstream/target.js'
import type { CloseReason } from './close-reason.js'

/** Which of the fast engine's workers failed (numbered from 0), and how many still relay. */
export interface WorkerFailure {
  worker: number
  workersLeft: number
}

/** A live connection as the engine exposes it to logs, metrics and the admin API. */
export interface ConnectionRecord {
  /** Process-wide, increasing. */
  readonly id: number
  readonly route: RouteConfig
  /** `ip:port` of the client as accepted. */
  readonly client: string
  /** The load balancer's `ip:port` when `client` came from an accepted PROXY header; else null. */
  readonly clientVia: string | null
  /** `ip:port` the upstream socket is connected to, or the configured target before that. */
  readonly upstream: string
  /** Date.now() at accept. */
  readonly openedAt: number
  readonly bytesFromClient: number
  readonly bytesFromUpstream: number
  /** Milliseconds the upstream took to accept; null until connected. */
  readonly connectMs: number | null
  /**
   * performance.now() (ms) of the last byte relayed either way, or of the upstream connect before
   * any; 0 until relaying. Updated once per chunk read.
   */
  readonly lastByteAt: number
  /** Milliseconds of the last silence (at least 1 s with no byte either way) that bytes ended; 0 for none. */
  readonly lastSilenceMs: number
  /** performance.now() (ms) when that silence ended; 0 for none. */
  readonly lastSilenceEndedAt: number
  /** A side's socket, for read-back of keepalive and TCP_INFO; null before that side has one. */
  endpoint (side: Side): SideEndpoint | null
}

/** One side's socket as the kernel knows it. */
export interface SideEndpoint {
  /** The descriptor; -1 while it has none (connecting, closing). */
  fd: number
  /** `host:port` at each end; null when unknown. */
  local: string | null
  remote: string | null
}

/** How a connection ended. */
export interface CloseSummary {
  reason: CloseReason
  /** The side whose socket caused the close; null for `shutdown`. */
  side: Side | null
  durationMs: number
  /** The socket error behind the reason, if any. */
  error: NodeJS.ErrnoException | null
  /** Milliseconds with no byte either way before the close; null when the connection never relayed. */
  idleMs: number | null
  /**
   * For `client-reset`, `upstream-reset` and `keepalive-timeout` of a relaying connection: the
   * silence (ms) that preceded it. When the reset answered bytes that ended a silence (the reset
   * came within 2 s of them), that silence; else `idleMs`. Null for every other close.
   */
  silenceBeforeResetMs: number | null
}

/**
 * Connections of a route counted together rather than one by one (the fast engine's workers, for
 * those that closed in order within dataPlane.reportAfterMs while no per-connection log line is
 * written): each opened and closed, `client-closed` (side client) or `upstream-closed` (side upstream).
 */
export interface ConnectionTally {
  clientClosed: number
  upstreamClosed: number
  bytesFromClient: number
  bytesFromUpstream: number
  /** Each one's upstream connect time (ms): valid during the call only (a view into a worker's batch). */
  connectMs: readonly number[] | Float64Array
}

/** Receives connection events; implementations must not throw. */
export interface EngineObserver {
  /** The upstream accepted: bytes are about to flow. */
  onOpen?: (connection: ConnectionRecord) => void
  onClose?: (connection: ConnectionRecord, summary: CloseSummary) => void
  /** Connections that opened and closed in order, told together instead of onOpen and onClose each. */
  onTally?: (route: RouteConfig, tally: ConnectionTally) => void
  /** A route is accepting on `address` (the bound port when 0 was configured). */
  onListening?: (route: RouteConfig, address: string) => void
  /** One dial attempt failed; the connection may go on with another target. */
  onDialFailed?: (connection: ConnectionRecord, target: UpstreamTarget, reason: CloseReason, error: NodeJS.ErrnoException | null) => void
  /** A target of a route went up or down (health checks or passive ejection). */
  onUpstreamState?: (route: RouteConfig, target: UpstreamTarget, state: UpstreamState, reason: string) => void
  /** A fast engine worker failed: its connections closed; new ones go to the other workers, or relay on `net` once none is left. */
  onDataPlaneFailed?: (err: Error, failure: WorkerFailure) => void
  /** A run-time problem that closed no connection (e.g. accept failed with EMFILE). */
  onRouteError?: (route: RouteConfig, err: Error) => void
  /**
   * A route that stopped accepting (removed by `apply()`, or `drain()`/`close()`) has no connection
   * left: `finished` ended by themselves within the drain window, `cut` were closed with `reason`.
   */
  onRouteDrained?: (route: RouteConfig, summary: DrainSummary) => void
  /** Descriptors ran short: every route stopped accepting (clients wait in the kernel's queue). Once per burst. */
  onAcceptPaused?: (pause: AcceptPause) => void
  /** The burst that paused accepting is over: accepting has run for 1 s without pausing again. */
  onAcceptResumed?: (burst: AcceptBurst) => void
}

/** Why and where accepting paused. */
export interface AcceptPause {
  /** `budget`: the estimate reached `high`; `EMFILE`: the kernel refused a descriptor first. */
  trigger: 'budget' | 'EMFILE'
  /** The soft RLIMIT_NOFILE. */
  limit: number
  /** Descriptors (estimated) at which accepting pauses, and resumes. */
  high: number
  low: number
  /** Descriptors in use (estimated) and live connections when it paused. */
  descriptors: number
  connections: number
}

/** One burst of descriptor exhaustion, from the first pause to the end of the quiet second. */
export interface AcceptBurst {
  /** Times accepting paused in the burst (1 unless it resumed and filled up again within 1 s). */
  pauses: number
  /** Milliseconds accepting was paused in all, and the whole burst lasted. */
  pausedMs: number
  burstMs: number
  /** Connections closed with `fd-exhausted` in the burst. */
  fdExhausted: number
  descriptors: number
  connections: number
}

/** How a stopped route's connections ended. */
export interface DrainSummary {
  reason: 'route-removed' | 'shutdown'
  /** Connections live when the route stopped accepting that ended by themselves. */
  finished: number
  /** Connections closed by kaproxy with `reason` (drain window over, or a forced close). */
  cut: number
  /** Milliseconds from stopping to the last connection gone. */
  durationMs: number
}

/**
 * What `apply()` changed, by route name. Routes compare by their resolved config: a route whose
 * listen address changed is removed and added (it appears in both lists); any other change keeps
 * the listener and its connections (`updated`), and new connections use the new settings.
 */
export interface ApplyResult {
  /** Routes now listening that were not before. */
  added: string[]
  /** Routes that stopped accepting; their connections drain for the route's drainTimeoutMs, then close with `route-removed`. */
  removed: string[]
  /** Routes that kept their listener and connections while a setting changed. */
  updated: string[]
  /** Routes identical to before. */
  unchanged: string[]
  /**
   * Added routes that could not listen after all: an address freed by a removed route was taken by
   * someone else in between (every other address is bound before anything changes). Normally empty.
   */
  failed: Array<{ route: string, message: string }>
  /** Live sockets whose keepalive was re-applied with setsockopt (routes with keepaliveApplyToExisting). */
  retunedSockets: number
}

/** The relay engine behind config, admin, logs and metrics. */
export interface Engine {
  /** Start every route; resolves once all listen, rejects (with nothing left listening) otherwise. */
  start: (routes: readonly RouteConfig[]) => Promise<void>
  /** The bound `host:port` of a listening route, or null. */
  address: (route: string) => string | null
  /** Each target of a route with its state and live connections; empty for an unknown route. */
  upstreams: (route: string) => Array<{ target: UpstreamTarget, state: UpstreamState, active: number }>
  /** Who accepts the route's connections now: the fast engine's worker, or the main thread; null for an unknown route. */
  acceptedBy: (route: string) => 'worker' | 'main' | null
  /** Live connections, optionally of one route; those of removed routes still draining included. */
  connections: (route?: string) => Iterable<ConnectionRecord>
  /**
   * Replace the running routes with `routes` (see ApplyResult). Resolves once added routes listen
   * and removed ones stopped accepting; their drain goes on. Rejects with nothing changed when a new
   * listen address cannot be bound. Calls are applied one after another. Rejects after drain/close.
   */
  apply: (routes: readonly RouteConfig[]) => Promise<ApplyResult>
  /**
   * Graceful stop: every route stops accepting at once (before this returns); live connections get
   * `graceMs` (default: each route's drainTimeoutMs; 0 = none) to end, then close with `shutdown`.
   * Resolves when no connection is left. Idempotent: a second call joins the first.
   */
  drain: (graceMs?: number) => Promise<void>
  /**
   * Resolves once every route that stopped accepting has every connection it accepted among
   * `connections()`: the fast engine's workers report those they had not reported yet (see
   * dataPlane.reportAfterMs) when told to stop. At once where none is pending.
   */
  reported: () => Promise<void>
  /** Forced stop: stop accepting and close every connection now with reason `shutdown`, also during a drain. Idempotent. */
  close: () => Promise<void>
}
