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
  /**
   * Milliseconds live connections may go on once the route stops accepting (the route was removed
   * by a reload, or kaproxy is shutting down); then they are closed with `route-removed` or
   * `shutdown`. 0 closes them at once. Default `defaults.drainTimeout` (30 s).
   */
  drainTimeoutMs: number
  keepalive: Record<Side, KeepaliveSettings>
  /**
   * `keepalive.applyToExisting`: when a reload changes this route's keepalive, re-apply it with
   * setsockopt to the route's live sockets too, not only to new connections. Default false.
   */
  keepaliveApplyToExisting: boolean
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
  defaults: { keepalive: KeepaliveSettings, connectTimeoutMs: number, drainTimeoutMs: number }
  routes: RouteConfig[]
}
