import type { ConfigIssue } from '../errors.js'
import type { KeepaliveSettings } from '../keepalive.js'
import { formatHostPort, parseDurationMs, parseHostPort, type HostPort } from './formats.js'
import {
  CONNECT_TIMEOUT_RULE, COUNT_RULE, DRAIN_TIMEOUT_RULE, USER_TIMEOUT_RULE, WHOLE_SECONDS_RULE,
  isConnectTimeout, isCount, isDrainTimeout, isKeepaliveSeconds, isUserTimeout
} from './schema.js'
import { SIDES, type RouteConfig } from './types.js'

type Raw = Record<string, unknown>

const ROUTE_KEYS = new Set(['name', 'listen', 'upstream', 'connectTimeout', 'drainTimeout', 'keepalive'])
const KEEPALIVE_KEYS = new Set<string>([...SIDES, 'applyToExisting'])
const SIDE_KEYS = new Set(['enabled', 'idle', 'interval', 'count', 'userTimeout'])
const NAME = /^[a-z0-9-]{1,63}$/

function show (value: unknown): string {
  return JSON.stringify(value) ?? String(value)
}

function isObject (value: unknown): value is Raw {
  return typeof value === 'object' && value !== null && !Array.isArray(value)
}

/** Collects issues under a path prefix, so every invalid field is reported in one pass. */
class Checker {
  readonly issues: ConfigIssue[] = []
  fail (path: string, rule: string, value: unknown): void {
    this.issues.push({ path, message: `${rule} (got ${show(value)})` })
  }

  unknownKeys (path: string, raw: Raw, allowed: ReadonlySet<string>): void {
    for (const key of Object.keys(raw)) {
      if (!allowed.has(key)) this.issues.push({ path: `${path}.${key}`, message: `unknown key (allowed: ${[...allowed].join(', ')})` })
    }
  }

  object (path: string, value: unknown): Raw | undefined {
    if (value === undefined || value === null) return {}
    if (isObject(value)) return value
    this.fail(path, 'must be an object', value)
    return undefined
  }

  duration (path: string, value: unknown, rule: string, isValid: (ms: number) => boolean): number | undefined {
    const ms = parseDurationMs(value)
    if (ms !== undefined && isValid(ms)) return ms
    this.fail(path, rule, value)
    return undefined
  }
}

/** Keepalive as written in the file, before merging: the raw `defaults.keepalive` is validated by convict. */
export interface RawKeepaliveDefaults {
  enabled: boolean
  idle: string | number
  interval: string | number
  count: number
  userTimeout: string | number | null
}

/** Resolve validated defaults into settings. */
export function resolveKeepaliveDefaults (raw: RawKeepaliveDefaults): KeepaliveSettings {
  const settings: KeepaliveSettings = {
    enabled: raw.enabled,
    idleSec: (parseDurationMs(raw.idle) ?? 0) / 1000,
    intervalSec: (parseDurationMs(raw.interval) ?? 0) / 1000,
    count: raw.count
  }
  if (raw.userTimeout !== null) settings.userTimeoutMs = parseDurationMs(raw.userTimeout) ?? 0
  return settings
}

function checkSide (c: Checker, path: string, value: unknown, defaults: KeepaliveSettings): KeepaliveSettings | undefined {
  const raw = c.object(path, value)
  if (raw === undefined) return undefined
  c.unknownKeys(path, raw, SIDE_KEYS)
  const settings: KeepaliveSettings = { ...defaults }
  const before = c.issues.length
  if (raw.enabled !== undefined) {
    if (typeof raw.enabled === 'boolean') settings.enabled = raw.enabled
    else c.fail(`${path}.enabled`, 'must be true or false', raw.enabled)
  }
  if (raw.idle !== undefined) settings.idleSec = (c.duration(`${path}.idle`, raw.idle, WHOLE_SECONDS_RULE, isKeepaliveSeconds) ?? 0) / 1000
  if (raw.interval !== undefined) settings.intervalSec = (c.duration(`${path}.interval`, raw.interval, WHOLE_SECONDS_RULE, isKeepaliveSeconds) ?? 0) / 1000
  if (raw.count !== undefined) {
    if (isCount(raw.count)) settings.count = raw.count as number
    else c.fail(`${path}.count`, COUNT_RULE, raw.count)
  }
  if (raw.userTimeout === null) delete settings.userTimeoutMs
  else if (raw.userTimeout !== undefined) settings.userTimeoutMs = c.duration(`${path}.userTimeout`, raw.userTimeout, USER_TIMEOUT_RULE, isUserTimeout) ?? 0
  return c.issues.length === before ? settings : undefined
}

function checkRoute (c: Checker, path: string, value: unknown, defaults: RouteDefaults): RouteConfig | undefined {
  if (!isObject(value)) { c.fail(path, 'must be an object with name, listen and upstream', value); return undefined }
  const before = c.issues.length
  c.unknownKeys(path, value, ROUTE_KEYS)

  const name = value.name
  if (typeof name !== 'string' || !NAME.test(name)) c.fail(`${path}.name`, 'must be 1..63 characters of a-z, 0-9 and -', name)

  const listen = parseHostPort(value.listen, 0)
  if ('rule' in listen) c.fail(`${path}.listen`, listen.rule, value.listen)
  const upstream = parseHostPort(value.upstream, 1)
  if ('rule' in upstream) c.fail(`${path}.upstream`, upstream.rule, value.upstream)

  const connectTimeoutMs = value.connectTimeout === undefined
    ? defaults.connectTimeoutMs
    : c.duration(`${path}.connectTimeout`, value.connectTimeout, CONNECT_TIMEOUT_RULE, isConnectTimeout)
  const drainTimeoutMs = value.drainTimeout === undefined
    ? defaults.drainTimeoutMs
    : c.duration(`${path}.drainTimeout`, value.drainTimeout, DRAIN_TIMEOUT_RULE, isDrainTimeout)

  const keepaliveRaw = c.object(`${path}.keepalive`, value.keepalive)
  if (keepaliveRaw !== undefined) c.unknownKeys(`${path}.keepalive`, keepaliveRaw, KEEPALIVE_KEYS)
  const client = checkSide(c, `${path}.keepalive.client`, keepaliveRaw?.client, defaults.keepalive)
  const upstreamKeepalive = checkSide(c, `${path}.keepalive.upstream`, keepaliveRaw?.upstream, defaults.keepalive)
  const applyToExisting = keepaliveRaw?.applyToExisting ?? false
  if (typeof applyToExisting !== 'boolean') c.fail(`${path}.keepalive.applyToExisting`, 'must be true or false', applyToExisting)

  if (c.issues.length !== before || 'rule' in listen || 'rule' in upstream || connectTimeoutMs === undefined ||
    drainTimeoutMs === undefined || client === undefined || upstreamKeepalive === undefined) return undefined
  return {
    name: name as string,
    listen,
    upstream,
    connectTimeoutMs,
    drainTimeoutMs,
    keepalive: { client, upstream: upstreamKeepalive },
    keepaliveApplyToExisting: applyToExisting === true
  }
}

export interface RouteDefaults {
  keepalive: KeepaliveSettings
  connectTimeoutMs: number
  drainTimeoutMs: number
}

/**
 * Two listen addresses collide when ports match and hosts match or either is a wildcard.
 * Port 0 (any free port) never collides.
 */
export function listenCollides (a: HostPort, b: HostPort): boolean {
  if (a.port === 0 || a.port !== b.port) return false
  const wildcard = (host: string): boolean => host === '0.0.0.0' || host === '::'
  return a.host === b.host || wildcard(a.host) || wildcard(b.host)
}

/** Validate the raw route list; returns resolved routes and every issue found. */
export function checkRoutes (rawRoutes: readonly unknown[], defaults: RouteDefaults): { routes: RouteConfig[], issues: ConfigIssue[] } {
  const c = new Checker()
  const routes: RouteConfig[] = []
  const seen: Array<{ route: RouteConfig, index: number }> = []
  rawRoutes.forEach((raw, index) => {
    const route = checkRoute(c, `routes[${index}]`, raw, defaults)
    if (route === undefined) return
    for (const other of seen) {
      if (other.route.name === route.name) c.fail(`routes[${index}].name`, `must be unique (routes[${other.index}] has the same name)`, route.name)
      if (listenCollides(other.route.listen, route.listen)) c.fail(`routes[${index}].listen`, `must not collide with routes[${other.index}].listen ${formatHostPort(other.route.listen)}`, formatHostPort(route.listen))
    }
    seen.push({ route, index })
    routes.push(route)
  })
  return { routes, issues: c.issues }
}
