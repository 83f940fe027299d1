import type { Socket } from 'node:net'
import type { RouteConfig, Side } from '../config/types.js'
import type { UpstreamState } from '../upstream/pool.js'
import type { UpstreamTarget } from '../upstream/target.js'
import type { CloseReason } from './close-reason.js'

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
  /** The sockets, for read-back of keepalive and TCP_INFO; upstream is null until connected. */
  socket (side: Side): Socket | null
}

/** How a connection ended. */
export interface CloseSummary {
  reason: CloseReason
  /** The side whose socket caused the close; null for `shutdown`. */
  side: Side | null
  durationMs: number
  /** The socket error behind the reason, if any. */
  error: NodeJS.ErrnoException | null
}

/** Receives connection events; implementations must not throw. */
export interface EngineObserver {
  /** The upstream accepted: bytes are about to flow. */
  onOpen?: (connection: ConnectionRecord) => void
  onClose?: (connection: ConnectionRecord, summary: CloseSummary) => void
  /** A route is accepting on `address` (the bound port when 0 was configured). */
  onListening?: (route: RouteConfig, address: string) => void
  /** One dial attempt failed; the connection may go on with another target. */
  onDialFailed?: (connection: ConnectionRecord, target: UpstreamTarget, reason: CloseReason, error: NodeJS.ErrnoException | null) => void
  /** A target of a route went up or down (health checks or passive ejection). */
  onUpstreamState?: (route: RouteConfig, target: UpstreamTarget, state: UpstreamState, reason: string) => void
  /** A run-time problem that closed no connection (e.g. accept failed with EMFILE). */
  onRouteError?: (route: RouteConfig, err: Error) => void
}

/** The relay engine behind config, admin, logs and metrics. */
export interface Engine {
  /** Start every route; resolves once all listen, rejects (with nothing left listening) otherwise. */
  start: (routes: readonly RouteConfig[]) => Promise<void>
  /** The bound `host:port` of a listening route, or null. */
  address: (route: string) => string | null
  /** Each target of a route with its state and live connections; empty for an unknown route. */
  upstreams: (route: string) => Array<{ target: UpstreamTarget, state: UpstreamState, active: number }>
  /** Live connections, optionally of one route. */
  connections: (route?: string) => Iterable<ConnectionRecord>
  /** Stop accepting and close every connection with reason `shutdown`. Idempotent. */
  close: () => Promise<void>
}
