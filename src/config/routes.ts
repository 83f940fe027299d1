import { autoIdleSeconds, parseMiddlebox, type Middlebox } from '../budget/middleboxes.js'
import type { ConfigIssue } from '../errors.js'
import type { KeepaliveSettings } from '../keepalive.js'
import { formatHostPort, parseDurationMs, parseHostPort } from './formats.js'
import {
  AUTO, CONNECT_TIMEOUT_RULE, COUNT_RULE, IDLE_RULE, USER_TIMEOUT_RULE, WHOLE_SECONDS_RULE,
  isConnectTimeout, isCount, isKeepaliveSeconds, isUserTimeout
} from './schema.js'
import { SIDES, type RouteConfig, type Side } from './types.js'

type Raw = Record<string, unknown>

const ROUTE_KEYS = new Set(['name', 'listen', 'upstream', 'connectTimeout', 'keepalive'])
const KEEPALIVE_KEYS = new Set<string>(SIDES)
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

  const keepaliveRaw = c.object(`${path}.keepalive`, value.keepalive)
  if (keepaliveRaw !== undefined) c.unknownKeys(`${path}.keepalive`, keepaliveRaw, KEEPALIVE_KEYS)
  const client = checkSide(c, `${path}.keepalive.client`, keepaliveRaw?.client, defaults.keepalive)
  const upstreamKeepalive = checkSide(c, `${path}.keepalive.upstream`, keepaliveRaw?.upstream, defaults.keepalive)

  if (c.issues.length !== before || 'rule' in listen || 'rule' in upstream ||
    connectTimeoutMs === undefined || client === undefined || upstreamKeepalive === undefined) return undefined
  const sides: Record<Side, ResolvedSide> = { client, upstream: upstreamKeepalive }
  return {
    name: name as string,
    listen,
    upstream,
    connectTimeoutMs,
    keepalive: { client: sides.client.settings, upstream: sides.upstream.settings },
    middleboxes: { client: sides.client.middleboxes, upstream: sides.upstream.middleboxes },
    idleAuto: { client: sides.client.idleAuto, upstream: sides.upstream.idleAuto }
  }
}

export interface RouteDefaults {
  keepalive: KeepaliveDefaults
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
