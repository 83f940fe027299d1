import type { Middlebox } from '../budget/middleboxes.js'
import type { KeepaliveSettings } from '../keepalive.js'
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
  /** Where each client connection is relayed to. */
  upstream: HostPort
  /** Milliseconds to wait for the upstream to accept before closing the client (`connect-timeout`). */
  connectTimeoutMs: number
  /** What each side's sockets get from `applyKeepalive`; `idle: auto` is already resolved to seconds. */
  keepalive: Record<Side, KeepaliveSettings>
  /** The middleboxes each side's connections cross (`keepalive.<side>.middleboxes`); empty when none are declared. */
  middleboxes: Record<Side, Middlebox[]>
  /** Whether each side's `idle` was `auto` (half the smallest middlebox timeout, see autoIdleSeconds). */
  idleAuto: Record<Side, boolean>
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
  /**
   * `defaults.keepalive` as validated. When `idleAuto` is true, `keepalive.idleSec` is a placeholder
   * (the built-in 60 s) that no socket receives: each side resolves `auto` against its own middleboxes.
   */
  defaults: { keepalive: KeepaliveSettings, idleAuto: boolean, middleboxes: Middlebox[], connectTimeoutMs: number }
  routes: RouteConfig[]
}
