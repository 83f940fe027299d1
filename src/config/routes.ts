import type { ConfigIssue } from '../errors.js'
import type { KeepaliveSettings } from '../keepalive.js'
import { formatHostPort, parseDurationMs, parseHostPort } from './formats.js'
import {
  CONNECT_TIMEOUT_RULE, COUNT_RULE, USER_TIMEOUT_RULE, WHOLE_SECONDS_RULE,
  isConnectTimeout, isCount, isKeepaliveSeconds, isUserTimeout
} from './schema.js'
import { isIP } from 'node:net'
import { originalDstSupported } from '../sockopt/original-dst.js'
import { parseUpstreamTarget, type UpstreamTarget } from '../upstream/target.js'
import { parseAddressRule, type AddressRule } from './address-rule.js'
import { BALANCES, SIDES, type Balance, type HealthCheckConfig, type OriginalDstConfig, type RouteConfig } from './types.js'

type Raw = Record<string, unknown>

const ROUTE_KEYS = new Set(['name', 'listen', 'upstream', 'balance', 'retries', 'connectTimeout', 'keepalive', 'healthCheck',
  'proxyProtocol', 'acceptProxyProtocol', 'proxyHeaderTimeout', 'maxConnections', 'idleTimeout', 'allow', 'destinations', 'socketMark'])
const DESTINATION_KEYS = new Set(['match', 'keepalive'])
const HEALTH_KEYS = new Set(['type', 'interval', 'timeout', 'rise', 'fall', 'path', 'expectStatus'])
const MAX_UPSTREAMS = 64
const KEEPALIVE_KEYS = new Set<string>(SIDES)
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

  integer (path: string, value: unknown, min: number, max: number): number | undefined {
    if (Number.isInteger(value) && (value as number) >= min && (value as number) <= max) return value as number
    this.fail(path, `must be an integer ${min}..${max}`, value)
    return undefined
  }

  oneOf<T extends string> (path: string, value: unknown, allowed: readonly T[]): T | undefined {
    if (typeof value === 'string' && (allowed as readonly string[]).includes(value)) return value as T
    this.fail(path, `must be one of ${allowed.join(', ')}`, value)
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

function checkUpstreams (c: Checker, path: string, value: unknown): UpstreamTarget[] | undefined {
  const list = Array.isArray(value) ? value : [value]
  if (list.length === 0 || list.length > MAX_UPSTREAMS) {
    c.fail(path, `must be host:port, unix:/path, or a list of 1..${MAX_UPSTREAMS} of them`, value)
    return undefined
  }
  const targets: UpstreamTarget[] = []
  list.forEach((item, index) => {
    const target = parseUpstreamTarget(item)
    const itemPath = Array.isArray(value) ? `${path}[${index}]` : path
    if ('rule' in target) { c.fail(itemPath, target.rule, item); return }
    if (targets.some((t) => t.label === target.label)) { c.fail(itemPath, 'must not repeat an upstream', item); return }
    targets.push(target)
  })
  return targets.length === list.length ? targets : undefined
}

const isCheckInterval = (ms: number): boolean => ms >= 100 && ms <= 3_600_000
const isCheckTimeout = (ms: number): boolean => ms >= 1 && ms <= 600_000

function checkHealth (c: Checker, path: string, value: unknown): HealthCheckConfig | null | undefined {
  if (value === undefined || value === null) return null
  const raw = c.object(path, value)
  if (raw === undefined) return undefined
  c.unknownKeys(path, raw, HEALTH_KEYS)
  const before = c.issues.length
  const health: HealthCheckConfig = {
    type: raw.type === undefined ? 'tcp' : c.oneOf(`${path}.type`, raw.type, ['tcp', 'http'] as const) ?? 'tcp',
    intervalMs: raw.interval === undefined ? 5000 : c.duration(`${path}.interval`, raw.interval, 'must be a duration 100ms..1h', isCheckInterval) ?? 0,
    timeoutMs: raw.timeout === undefined ? 2000 : c.duration(`${path}.timeout`, raw.timeout, 'must be a duration 1ms..10m', isCheckTimeout) ?? 0,
    rise: raw.rise === undefined ? 2 : c.integer(`${path}.rise`, raw.rise, 1, 100) ?? 0,
    fall: raw.fall === undefined ? 3 : c.integer(`${path}.fall`, raw.fall, 1, 100) ?? 0,
    path: '/',
    expectStatus: raw.expectStatus === undefined ? 200 : c.integer(`${path}.expectStatus`, raw.expectStatus, 100, 599) ?? 0
  }
  if (raw.path !== undefined) {
    if (typeof raw.path === 'string' && raw.path.startsWith('/') && !/[\s\0]/.test(raw.path)) health.path = raw.path
    else c.fail(`${path}.path`, 'must be an absolute request path without spaces, e.g. /healthz', raw.path)
  }
  if (health.type === 'tcp' && (raw.path !== undefined || raw.expectStatus !== undefined)) {
    c.fail(`${path}.type`, 'must be http when path or expectStatus is set', raw.type ?? 'tcp')
  }
  if (c.issues.length === before && health.timeoutMs > health.intervalMs) c.fail(`${path}.timeout`, 'must not exceed healthCheck.interval', raw.timeout)
  return c.issues.length === before ? health : undefined
}

function checkRoute (c: Checker, path: string, value: unknown, defaults: RouteDefaults): RouteConfig | undefined {
  if (!isObject(value)) { c.fail(path, 'must be an object with name, listen and upstream', value); return undefined }
  const before = c.issues.length
  c.unknownKeys(path, value, ROUTE_KEYS)

  const name = value.name
  if (typeof name !== 'string' || !NAME.test(name)) c.fail(`${path}.name`, 'must be 1..63 characters of a-z, 0-9 and -', name)

  const listen = parseHostPort(value.listen, 0)
  if ('rule' in listen) c.fail(`${path}.listen`, listen.rule, value.listen)
  const transparent = value.upstream === 'original-dst'
  if (transparent && !originalDstSupported) c.fail(`${path}.upstream`, `original-dst needs Linux (SO_ORIGINAL_DST); this is ${process.platform}`, value.upstream)
  const upstreams = transparent ? [] : checkUpstreams(c, `${path}.upstream`, value.upstream)
  const balance: Balance | undefined = value.balance === undefined ? 'round-robin' : c.oneOf(`${path}.balance`, value.balance, BALANCES)
  const retries = value.retries === undefined ? Math.max(0, (upstreams?.length ?? 1) - 1) : c.integer(`${path}.retries`, value.retries, 0, 16)

  const connectTimeoutMs = value.connectTimeout === undefined
    ? defaults.connectTimeoutMs
    : c.duration(`${path}.connectTimeout`, value.connectTimeout, CONNECT_TIMEOUT_RULE, isConnectTimeout)

  const keepaliveRaw = c.object(`${path}.keepalive`, value.keepalive)
  if (keepaliveRaw !== undefined) c.unknownKeys(`${path}.keepalive`, keepaliveRaw, KEEPALIVE_KEYS)
  const client = checkSide(c, `${path}.keepalive.client`, keepaliveRaw?.client, defaults.keepalive)
  const upstreamKeepalive = checkSide(c, `${path}.keepalive.upstream`, keepaliveRaw?.upstream, defaults.keepalive)

  const healthCheck = checkHealth(c, `${path}.healthCheck`, value.healthCheck)
  const proxyProtocol = value.proxyProtocol === undefined || value.proxyProtocol === null ? null : c.oneOf(`${path}.proxyProtocol`, value.proxyProtocol, ['v1', 'v2'] as const)
  let acceptProxyProtocol = false
  if (value.acceptProxyProtocol !== undefined) {
    if (typeof value.acceptProxyProtocol === 'boolean') acceptProxyProtocol = value.acceptProxyProtocol
    else c.fail(`${path}.acceptProxyProtocol`, 'must be true or false', value.acceptProxyProtocol)
  }
  const proxyHeaderTimeoutMs = value.proxyHeaderTimeout === undefined ? 5000 : c.duration(`${path}.proxyHeaderTimeout`, value.proxyHeaderTimeout, 'must be a duration 1ms..1m', (ms) => ms >= 1 && ms <= 60_000)
  const maxConnections = value.maxConnections === undefined || value.maxConnections === 0 ? null : c.integer(`${path}.maxConnections`, value.maxConnections, 0, 1_000_000)
  const idleTimeoutMs = value.idleTimeout === undefined || value.idleTimeout === 0 || value.idleTimeout === '0s'
    ? null
    : c.duration(`${path}.idleTimeout`, value.idleTimeout, 'must be a duration 1s..7d, or 0 for off', (ms) => ms >= 1000 && ms <= 604_800_000)

  const originalDst = checkOriginalDst(c, path, value, transparent, upstreamKeepalive)
  const socketMark = checkSocketMark(c, `${path}.socketMark`, value.socketMark, transparent || (upstreams ?? []).every((t) => t.kind === 'tcp' && isIP(t.host) !== 0))

  if (c.issues.length !== before || 'rule' in listen || upstreams === undefined || originalDst === undefined || socketMark === undefined || balance === undefined || retries === undefined ||
    connectTimeoutMs === undefined || client === undefined || upstreamKeepalive === undefined || healthCheck === undefined ||
    proxyProtocol === undefined || proxyHeaderTimeoutMs === undefined || maxConnections === undefined || idleTimeoutMs === undefined) return undefined
  return {
    name: name as string,
    listen,
    upstreams,
    balance,
    retries,
    connectTimeoutMs,
    keepalive: { client, upstream: upstreamKeepalive },
    healthCheck,
    proxyProtocol,
    acceptProxyProtocol,
    proxyHeaderTimeoutMs,
    maxConnections,
    idleTimeoutMs,
    originalDst,
    socketMark
  }
}

function checkRules (c: Checker, path: string, value: unknown): AddressRule[] | undefined {
  if (!Array.isArray(value)) { c.fail(path, 'must be a list of CIDR or CIDR:port', value); return undefined }
  const rules: AddressRule[] = []
  value.forEach((item, index) => {
    const rule = parseAddressRule(item)
    if ('rule' in rule) c.fail(`${path}[${index}]`, rule.rule, item)
    else rules.push(rule)
  })
  return rules.length === value.length ? rules : undefined
}

function checkOriginalDst (c: Checker, path: string, route: Raw, transparent: boolean, upstreamKeepalive: KeepaliveSettings | undefined): OriginalDstConfig | null | undefined {
  if (!transparent) {
    if (route.allow !== undefined) c.fail(`${path}.allow`, 'only applies with upstream: original-dst', route.allow)
    if (route.destinations !== undefined) c.fail(`${path}.destinations`, 'only applies with upstream: original-dst', route.destinations)
    return null
  }
  const before = c.issues.length
  const allow = route.allow === undefined ? null : checkRules(c, `${path}.allow`, route.allow) ?? null
  const destinations: Array<{ match: AddressRule, keepalive: KeepaliveSettings }> = []
  if (route.destinations !== undefined) {
    if (!Array.isArray(route.destinations)) c.fail(`${path}.destinations`, 'must be a list of { match, keepalive }', route.destinations)
    else {
      route.destinations.forEach((item, index) => {
        const itemPath = `${path}.destinations[${index}]`
        const raw = c.object(itemPath, item)
        if (raw === undefined) return
        c.unknownKeys(itemPath, raw, DESTINATION_KEYS)
        const match = parseAddressRule(raw.match)
        if ('rule' in match) c.fail(`${itemPath}.match`, match.rule, raw.match)
        const keepalive = upstreamKeepalive === undefined ? undefined : checkSide(c, `${itemPath}.keepalive`, raw.keepalive, upstreamKeepalive)
        if (!('rule' in match) && keepalive !== undefined) destinations.push({ match, keepalive })
      })
    }
  }
  return c.issues.length === before ? { allow, destinations } : undefined
}

function checkSocketMark (c: Checker, path: string, value: unknown, ipOnly: boolean): number | null | undefined {
  if (value === undefined || value === null) return null
  const mark = typeof value === 'string' && /^0x[0-9a-f]{1,8}$/i.test(value) ? parseInt(value, 16) : value
  if (!Number.isInteger(mark) || (mark as number) < 1 || (mark as number) > 0xffffffff) {
    c.fail(path, 'must be an integer 1..0xffffffff (e.g. 0x539)', value)
    return undefined
  }
  if (process.platform !== 'linux') { c.fail(path, `needs Linux (SO_MARK); this is ${process.platform}`, value); return undefined }
  if (!ipOnly) { c.fail(path, 'needs upstreams given as IP addresses (or original-dst): the socket is made before the name is resolved', value); return undefined }
  return mark as number
}

export interface RouteDefaults {
  keepalive: KeepaliveSettings
  connectTimeoutMs: number
}

/** Two listen addresses collide when ports match and hosts match or either is a wildcard. */
function listenCollides (a: RouteConfig, b: RouteConfig): boolean {
  if (a.listen.port === 0 || a.listen.port !== b.listen.port) return false
  const wildcard = (host: string): boolean => host === '0.0.0.0' || host === '::'
  return a.listen.host === b.listen.host || wildcard(a.listen.host) || wildcard(b.listen.host)
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
      if (listenCollides(other.route, route)) c.fail(`routes[${index}].listen`, `must not collide with routes[${other.index}].listen ${formatHostPort(other.route.listen)}`, formatHostPort(route.listen))
    }
    seen.push({ route, index })
    routes.push(route)
  })
  return { routes, issues: c.issues }
}
