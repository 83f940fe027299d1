import { autoIdleSeconds, parseMiddlebox, type Middlebox } from '../budget/middleboxes.js'
import type { ConfigIssue } from '../errors.js'
import type { KeepaliveSettings } from '../keepalive.js'
import { formatHostPort, parseDurationMs, parseHostPort, type HostPort } from './formats.js'
import {
  AUTO, CONNECT_TIMEOUT_RULE, COUNT_RULE, DRAIN_TIMEOUT_RULE, IDLE_RULE, USER_TIMEOUT_RULE, WHOLE_SECONDS_RULE,
  isConnectTimeout, isCount, isDrainTimeout, isKeepaliveSeconds, isUserTimeout
} from './schema.js'
import { isIP } from 'node:net'
import { originalDstSupported } from '../sockopt/original-dst.js'
import { parseUpstreamTarget, type UpstreamTarget } from '../upstream/target.js'
import { parseAddressRule, type AddressRule } from './address-rule.js'
import { BALANCES, ENGINE_CHOICES, SIDES, type Balance, type EngineChoice, type EngineName, type HealthCheckConfig, type OriginalDstConfig, type RouteConfig, type Side } from './types.js'

type Raw = Record<string, unknown>

const ROUTE_KEYS = new Set(['name', 'listen', 'upstream', 'balance', 'retries', 'connectTimeout', 'drainTimeout', 'keepalive', 'healthCheck',
  'proxyProtocol', 'acceptProxyProtocol', 'proxyHeaderTimeout', 'maxConnections', 'idleTimeout', 'allow', 'destinations', 'socketMark', 'engine'])
const DESTINATION_KEYS = new Set(['match', 'keepalive'])
const HEALTH_KEYS = new Set(['type', 'interval', 'timeout', 'rise', 'fall', 'path', 'expectStatus'])
const MAX_UPSTREAMS = 64
const KEEPALIVE_KEYS = new Set<string>([...SIDES, 'applyToExisting'])
const SIDE_KEYS = new Set(['enabled', 'idle', 'interval', 'count', 'userTimeout', 'middleboxes'])
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

  /** A list of middleboxes; null means none. Each bad entry is reported at `path[i]` or `path[i].key`. */
  middleboxes (path: string, value: unknown): Middlebox[] | undefined {
    if (value === null) return []
    if (!Array.isArray(value)) { this.fail(path, 'must be a list of middleboxes (preset names or { name, idleTimeout })', value); return undefined }
    const list: Middlebox[] = []
    const before = this.issues.length
    value.forEach((entry: unknown, index) => {
      const parsed = parseMiddlebox(entry)
      if (!Array.isArray(parsed)) { list.push(parsed); return }
      for (const problem of parsed) {
        this.issues.push({ path: `${path}[${index}]${problem.key === undefined ? '' : `.${problem.key}`}`, message: problem.message })
      }
    })
    return this.issues.length === before ? list : undefined
  }
}

/** Keepalive as written in the file, before merging: the raw `defaults.keepalive` is validated by convict. */
export interface RawKeepaliveDefaults {
  enabled: boolean
  idle: string | number
  interval: string | number
  count: number
  userTimeout: string | number | null
  middleboxes: unknown[]
}

/** `defaults.keepalive` resolved: the settings every side merges over, and what `auto` needs. */
export interface KeepaliveDefaults {
  /** When `idleAuto`, `idleSec` is a placeholder (the built-in 60 s) that no socket receives. */
  settings: KeepaliveSettings
  idleAuto: boolean
  middleboxes: Middlebox[]
}

/** The idle placeholder of `idle: auto` in defaults, before a side resolves it (the built-in default). */
const AUTO_PLACEHOLDER_SEC = 60

/**
 * Resolve validated defaults. `middleboxes` entries are checked here with their paths
 * (`defaults.keepalive.middleboxes[1].idleTimeout`), as convict only checks that it is a list.
 */
export function resolveKeepaliveDefaults (raw: RawKeepaliveDefaults): { defaults: KeepaliveDefaults, issues: ConfigIssue[] } {
  const idleAuto = raw.idle === AUTO
  const settings: KeepaliveSettings = {
    enabled: raw.enabled,
    idleSec: idleAuto ? AUTO_PLACEHOLDER_SEC : (parseDurationMs(raw.idle) ?? 0) / 1000,
    intervalSec: (parseDurationMs(raw.interval) ?? 0) / 1000,
    count: raw.count
  }
  if (raw.userTimeout !== null) settings.userTimeoutMs = parseDurationMs(raw.userTimeout) ?? 0
  const c = new Checker()
  const middleboxes = c.middleboxes('defaults.keepalive.middleboxes', raw.middleboxes) ?? []
  return { defaults: { settings, idleAuto, middleboxes }, issues: c.issues }
}

/** One side resolved: what the socket gets, and what `check` needs to judge it. */
interface ResolvedSide {
  settings: KeepaliveSettings
  middleboxes: Middlebox[]
  idleAuto: boolean
}

function checkSide (c: Checker, path: string, value: unknown, defaults: KeepaliveDefaults): ResolvedSide | undefined {
  const raw = c.object(path, value)
  if (raw === undefined) return undefined
  c.unknownKeys(path, raw, SIDE_KEYS)
  const settings: KeepaliveSettings = { ...defaults.settings }
  let idleAuto = defaults.idleAuto
  let middleboxes = [...defaults.middleboxes]
  const before = c.issues.length
  if (raw.enabled !== undefined) {
    if (typeof raw.enabled === 'boolean') settings.enabled = raw.enabled
    else c.fail(`${path}.enabled`, 'must be true or false', raw.enabled)
  }
  if (raw.idle === AUTO) idleAuto = true
  else if (raw.idle !== undefined) {
    idleAuto = false
    settings.idleSec = (c.duration(`${path}.idle`, raw.idle, IDLE_RULE, isKeepaliveSeconds) ?? 0) / 1000
  }
  if (raw.interval !== undefined) settings.intervalSec = (c.duration(`${path}.interval`, raw.interval, WHOLE_SECONDS_RULE, isKeepaliveSeconds) ?? 0) / 1000
  if (raw.count !== undefined) {
    if (isCount(raw.count)) settings.count = raw.count as number
    else c.fail(`${path}.count`, COUNT_RULE, raw.count)
  }
  if (raw.userTimeout === null) delete settings.userTimeoutMs
  else if (raw.userTimeout !== undefined) settings.userTimeoutMs = c.duration(`${path}.userTimeout`, raw.userTimeout, USER_TIMEOUT_RULE, isUserTimeout) ?? 0
  let middleboxesOk = true
  if (raw.middleboxes !== undefined) {
    const parsed = c.middleboxes(`${path}.middleboxes`, raw.middleboxes)
    middleboxesOk = parsed !== undefined
    middleboxes = parsed ?? []
  }
  // With a broken list, auto has nothing sound to resolve against; the list's own issues say why.
  if (idleAuto && middleboxesOk) {
    const autoSec = autoIdleSeconds(middleboxes)
    if (autoSec !== null) settings.idleSec = autoSec
    // A side with keepalive off never uses its idle, so an auto that has nothing to resolve against
    // is only an error where it matters.
    else if (settings.enabled) {
      const inherited = raw.idle === undefined ? ' (inherited from defaults.keepalive.idle)' : ''
      c.fail(`${path}.idle`, `auto needs at least one middlebox on this side${inherited}: list the side's middleboxes, or give idle in seconds`, AUTO)
    }
  }
  return c.issues.length === before ? { settings, middleboxes, idleAuto } : undefined
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
  const drainTimeoutMs = value.drainTimeout === undefined
    ? defaults.drainTimeoutMs
    : c.duration(`${path}.drainTimeout`, value.drainTimeout, DRAIN_TIMEOUT_RULE, isDrainTimeout)

  const keepaliveRaw = c.object(`${path}.keepalive`, value.keepalive)
  if (keepaliveRaw !== undefined) c.unknownKeys(`${path}.keepalive`, keepaliveRaw, KEEPALIVE_KEYS)
  const client = checkSide(c, `${path}.keepalive.client`, keepaliveRaw?.client, defaults.keepalive)
  const upstreamKeepalive = checkSide(c, `${path}.keepalive.upstream`, keepaliveRaw?.upstream, defaults.keepalive)
  const applyToExisting = keepaliveRaw?.applyToExisting ?? false
  if (typeof applyToExisting !== 'boolean') c.fail(`${path}.keepalive.applyToExisting`, 'must be true or false', applyToExisting)

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

  const engineChoice = value.engine === undefined ? defaults.engine : c.oneOf(`${path}.engine`, value.engine, ENGINE_CHOICES)

  if (c.issues.length !== before || engineChoice === undefined || 'rule' in listen || upstreams === undefined || originalDst === undefined || socketMark === undefined || balance === undefined || retries === undefined ||
    connectTimeoutMs === undefined || drainTimeoutMs === undefined || client === undefined || upstreamKeepalive === undefined || healthCheck === undefined ||
    proxyProtocol === undefined || proxyHeaderTimeoutMs === undefined || maxConnections === undefined || idleTimeoutMs === undefined) return undefined
  const sides: Record<Side, ResolvedSide> = { client, upstream: upstreamKeepalive }
  return {
    name: name as string,
    listen,
    upstreams,
    balance,
    retries,
    connectTimeoutMs,
    drainTimeoutMs,
    keepalive: { client: sides.client.settings, upstream: sides.upstream.settings },
    keepaliveApplyToExisting: applyToExisting === true,
    middleboxes: { client: sides.client.middleboxes, upstream: sides.upstream.middleboxes },
    idleAuto: { client: sides.client.idleAuto, upstream: sides.upstream.idleAuto },
    healthCheck,
    proxyProtocol,
    acceptProxyProtocol,
    proxyHeaderTimeoutMs,
    maxConnections,
    idleTimeoutMs,
    originalDst,
    socketMark,
    ...resolveEngine(engineChoice, acceptProxyProtocol)
  }
}

/** The fast engine needs splice(2), epoll and eventfd: Linux. */
export const fastEngineAvailable = process.platform === 'linux'

/**
 * `auto` becomes `fast` where it can run the route, else `net`; a route that asked for `fast` (or
 * `auto`) and runs on `net` gets a note saying why, shown by `check` and logged at start-up.
 */
export function resolveEngine (choice: EngineChoice, acceptProxyProtocol: boolean): { engine: EngineName, engineNote: string | null } {
  if (choice === 'net') return { engine: 'net', engineNote: null }
  if (!fastEngineAvailable) {
    return { engine: 'net', engineNote: choice === 'fast' ? `engine fast needs Linux (splice, epoll); this is ${process.platform}: the route runs on net` : null }
  }
  // Reading the header makes Node read the client, and bytes after it would be stranded in Node.
  if (acceptProxyProtocol) return { engine: 'net', engineNote: `acceptProxyProtocol reads the client's PROXY header in Node: the route runs on net, not ${choice}` }
  return { engine: 'fast', engineNote: null }
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

function checkOriginalDst (c: Checker, path: string, route: Raw, transparent: boolean, upstreamKeepalive: ResolvedSide | undefined): OriginalDstConfig | null | undefined {
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
        // Merged over the route's resolved upstream side: its middleboxes (and auto) carry over unless
        // the destination lists its own.
        const keepalive = upstreamKeepalive === undefined ? undefined : checkSide(c, `${itemPath}.keepalive`, raw.keepalive, upstreamKeepalive)?.settings
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
  engine: EngineChoice
  keepalive: KeepaliveDefaults
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
