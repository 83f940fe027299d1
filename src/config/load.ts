import { readFileSync } from 'node:fs'
import { availableParallelism } from 'node:os'
import { extname } from 'node:path'
import YAML from 'yaml'
import { ConfigError, type ConfigIssue } from '../errors.js'
import { adminConfigIssues } from './admin.js'
import { parseDurationMs, parseHostPort } from './formats.js'
import { checkRoutes, resolveKeepaliveDefaults, type RawKeepaliveDefaults } from './routes.js'
import { cpuQuota } from '../cpu-quota.js'
import { DEFAULT_BULK_BUFFERS, DEFAULT_BUSY_POLL_US, DEFAULT_REPORT_AFTER_MS, createSchema, parseBulkBuffers, parseBusyPollUs, parseReportAfterMs, parseWorkers } from './schema.js'
import type { EngineChoice, KaproxyConfig, LogLevel } from './types.js'

export interface LoadOptions {
  /** Environment for KAPROXY_* overrides; default process.env. */
  env?: NodeJS.ProcessEnv
  /** Command-line overrides by dotted path (`log.level`), applied last. */
  overrides?: Readonly<Record<string, unknown>>
}

/** Parse a config file's text by its extension (.yaml, .yml, .json). YAML is parsed as data only. */
export function parseConfigText (text: string, source: string): unknown {
  const ext = extname(source).toLowerCase()
  try {
    if (ext === '.json') return JSON.parse(text) as unknown
    if (ext === '.yaml' || ext === '.yml') return YAML.parse(text, { prettyErrors: true, uniqueKeys: true, logLevel: 'error' }) as unknown
  } catch (err) {
    throw new ConfigError([{ path: '', message: `cannot parse ${source}: ${(err as Error).message.split('\n')[0] ?? ''}` }])
  }
  throw new ConfigError([{ path: '', message: `cannot read ${source}: unknown extension ${JSON.stringify(ext)} (use .yaml, .yml or .json)` }])
}

/** Read, parse and validate a config file. Throws ConfigError listing every problem. */
export function loadConfigFile (file: string, options: LoadOptions = {}): KaproxyConfig {
  let text: string
  try {
    text = readFileSync(file, 'utf8')
  } catch (err) {
    throw new ConfigError([{ path: '', message: `cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}` }])
  }
  try {
    return buildConfig(parseConfigText(text, file), options)
  } catch (err) {
    if (err instanceof ConfigError) throw new ConfigError(err.issues, file)
    throw err
  }
}

const BUILTIN_KEEPALIVE: RawKeepaliveDefaults = { enabled: true, idle: '60s', interval: '10s', count: 6, userTimeout: null, middleboxes: [] }

// convict reports `path: message: value was X`, or `configuration param 'x' not declared in the schema`.
function convictIssues (message: string): ConfigIssue[] {
  return message.split('\n').filter((line) => line !== '').map((line) => {
    const undeclared = /^configuration param '(.+)' not declared in the schema$/.exec(line)
    if (undeclared !== null) return { path: undeclared[1] ?? '', message: 'unknown key' }
    // A key with a dot in it (`{ "a.b": 1 }`) is looked up as a path that does not exist.
    const unfound = /^cannot find configuration param '(.+)'$/.exec(line)
    if (unfound !== null) return { path: unfound[1] ?? '', message: 'unknown key' }
    const missing = /^configuration param '(.+)' missing from config/.exec(line)
    if (missing !== null) return { path: missing[1] ?? '', message: 'is missing: its section must be an object' }
    const colon = line.indexOf(': ')
    if (colon < 0) return { path: '', message: line }
    return { path: line.slice(0, colon), message: line.slice(colon + 2).replace(/: value was .*$/, '') }
  })
}

function rawDefaultMiddleboxes (raw: object): unknown {
  const defaults = (raw as { defaults?: unknown }).defaults
  const keepalive = typeof defaults === 'object' && defaults !== null ? (defaults as { keepalive?: unknown }).keepalive : undefined
  return typeof keepalive === 'object' && keepalive !== null ? (keepalive as { middleboxes?: unknown }).middleboxes : undefined
}

// convict would try to parse a non-list as JSON; report it by path instead, and load the rest.
// null means none, as on a side.
function withoutNonListMiddleboxes (raw: object, issues: ConfigIssue[]): object {
  const middleboxes = rawDefaultMiddleboxes(raw)
  if (middleboxes === undefined || Array.isArray(middleboxes)) return raw
  if (middleboxes !== null) issues.push({ path: 'defaults.keepalive.middleboxes', message: `must be a list of middleboxes (preset names or { name, idleTimeout }) (got ${JSON.stringify(middleboxes) ?? String(middleboxes)})` })
  const defaults = (raw as { defaults: Record<string, unknown> }).defaults
  const { middleboxes: _dropped, ...keepalive } = defaults.keepalive as Record<string, unknown>
  return { ...raw, defaults: { ...defaults, keepalive } }
}

// The sections convict describes. convict reads a section given as a scalar or a list as a leaf
// ("param 'log.level' missing from config", "'log': unknown key"): report it by path instead.
const SECTIONS = ['log', 'admin', 'reload', 'dataPlane', 'defaults'] as const

/**
 * `dataPlane.workers: auto`: one worker per CPU, at most 4 (a sidecar limited by a CPU quota
 * still sees every CPU of its node: beyond 4, set the count).
 */
const AUTO_WORKERS = Math.min(4, availableParallelism())

/**
 * `dataPlane.busyPollUs: auto`: DEFAULT_BUSY_POLL_US, or none under a CPU quota, where polling
 * would spend the container's CPU time on waiting and get it throttled.
 */
function autoBusyPoll (): KaproxyConfig['dataPlane']['busyPoll'] {
  const quota = cpuQuota()
  return quota === null ? { us: DEFAULT_BUSY_POLL_US, auto: true, cpuQuota: null } : { us: 0, auto: true, cpuQuota: quota }
}

function busyPollOf (value: unknown): KaproxyConfig['dataPlane']['busyPoll'] {
  const us = parseBusyPollUs(value)
  return us === undefined ? autoBusyPoll() : { us, auto: false, cpuQuota: null }
}

const TOP_LEVEL_KEYS = new Set<string>([...SECTIONS, 'routes'])

/** A key as a path segment: quoted when it is empty or not a plain identifier (`[""]`, `["a.b"]`). */
function keyPath (key: string): string {
  return /^[A-Za-z_$][\w$-]*$/.test(key) ? key : `[${JSON.stringify(key)}]`
}

function isPlainObject (value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value)
}

/** A copy of a section without keys convict cannot look up ('' and dotted ones), each reported as unknown. */
function withoutOddKeys (section: Record<string, unknown>, path: string, issues: ConfigIssue[]): Record<string, unknown> {
  const kept: Record<string, unknown> = {}
  for (const [key, value] of Object.entries(section)) {
    if (key === '' || key.includes('.')) {
      issues.push({ path: `${path}${keyPath(key)}`, message: 'unknown key' })
      continue
    }
    kept[key] = isPlainObject(value) ? withoutOddKeys(value, `${path}.${key}`, issues) : value
  }
  return kept
}

function withoutNonObjectSections (raw: object, issues: ConfigIssue[]): object {
  const record = raw as Record<string, unknown>
  const kept: Record<string, unknown> = { ...record }
  // convict fails inside on some unknown keys (an empty one, one with a dot); they are reported here, by name.
  for (const key of Object.keys(record)) {
    if (TOP_LEVEL_KEYS.has(key)) continue
    issues.push({ path: keyPath(key), message: `unknown key (allowed: ${[...TOP_LEVEL_KEYS].join(', ')})` })
    delete kept[key]
  }
  for (const section of SECTIONS) {
    const value = kept[section]
    if (isPlainObject(value)) kept[section] = withoutOddKeys(value, section, issues)
  }
  const bad = (value: unknown): boolean => value !== undefined && (typeof value !== 'object' || value === null || Array.isArray(value))
  for (const section of SECTIONS) {
    if (!bad(record[section])) continue
    issues.push({ path: section, message: `must be an object (got ${JSON.stringify(record[section]) ?? String(record[section])})` })
    delete kept[section]
  }
  const defaults = kept.defaults as Record<string, unknown> | undefined
  if (defaults !== undefined && bad(defaults.keepalive)) {
    issues.push({ path: 'defaults.keepalive', message: `must be an object (got ${JSON.stringify(defaults.keepalive) ?? String(defaults.keepalive)})` })
    const { keepalive: _dropped, ...rest } = defaults
    kept.defaults = rest
  }
  return kept
}

/** Validate a parsed config object (from a file, or built from flags). Throws ConfigError. */
export function buildConfig (raw: unknown, options: LoadOptions = {}): KaproxyConfig {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
    throw new ConfigError([{ path: '', message: `the configuration must be an object with routes (got ${raw === null ? 'null' : Array.isArray(raw) ? 'a list' : typeof raw})` }])
  }
  const schema = createSchema(options.env ?? process.env)
  const issues: ConfigIssue[] = []
  const rawRoutes: unknown = (raw as Record<string, unknown>).routes ?? []
  // convict would try to coerce a non-list; report it by path instead.
  if (!Array.isArray(rawRoutes)) issues.push({ path: 'routes', message: `must be a list of routes (got ${JSON.stringify(rawRoutes)})` })
  try {
    schema.load({ ...withoutNonListMiddleboxes(withoutNonObjectSections(raw, issues), issues), routes: Array.isArray(rawRoutes) ? rawRoutes : [] })
    for (const [path, value] of Object.entries(options.overrides ?? {})) schema.set(path, value)
    schema.validate({ allowed: 'strict' })
  } catch (err) {
    issues.push(...convictIssues((err as Error).message))
  }
  // Keep going after top-level problems so every invalid field is reported in one pass;
  // routes are then checked against the built-in defaults.
  let topLevelOk = issues.length === 0
  // After a top-level problem, the middlebox list is still checked entry by entry when it is a list.
  const rawMiddleboxes = rawDefaultMiddleboxes(raw)
  let resolved = resolveKeepaliveDefaults(topLevelOk
    ? schema.get('defaults.keepalive') as RawKeepaliveDefaults
    : { ...BUILTIN_KEEPALIVE, middleboxes: Array.isArray(rawMiddleboxes) ? rawMiddleboxes : [] })
  if (resolved.issues.length > 0 || !topLevelOk) {
    issues.push(...resolved.issues)
    topLevelOk = false
    resolved = resolveKeepaliveDefaults(BUILTIN_KEEPALIVE)
  }
  const keepalive = resolved.defaults
  const connectTimeoutMs = topLevelOk ? parseDurationMs(schema.get('defaults.connectTimeout')) ?? 5000 : 5000
  const drainTimeoutMs = topLevelOk ? parseDurationMs(schema.get('defaults.drainTimeout')) ?? 30_000 : 30_000
  const engine = topLevelOk ? schema.get('defaults.engine') as EngineChoice : 'auto'
  const { routes, issues: routeIssues } = checkRoutes(Array.isArray(rawRoutes) ? rawRoutes : [], { keepalive, connectTimeoutMs, drainTimeoutMs, engine })
  issues.push(...routeIssues)
  if (issues.length > 0) throw new ConfigError(issues)

  const adminListen = schema.get('admin.listen')
  const parsedAdmin = adminListen === '' ? null : parseHostPort(adminListen, 0)
  const admin = { listen: parsedAdmin === null || 'rule' in parsedAdmin ? null : parsedAdmin, token: schema.get('admin.token') }
  const adminIssues = adminConfigIssues(admin)
  if (adminIssues.length > 0) throw new ConfigError(adminIssues)
  return {
    log: { level: schema.get('log.level') as LogLevel },
    admin,
    reload: { watch: schema.get('reload.watch') },
    dataPlane: { workers: parseWorkers(schema.get('dataPlane.workers')) ?? AUTO_WORKERS, bulkBuffers: parseBulkBuffers(schema.get('dataPlane.bulkBuffers')) ?? DEFAULT_BULK_BUFFERS, reportAfterMs: parseReportAfterMs(schema.get('dataPlane.reportAfterMs')) ?? DEFAULT_REPORT_AFTER_MS, busyPoll: busyPollOf(schema.get('dataPlane.busyPollUs')) },
    defaults: { keepalive: keepalive.settings, idleAuto: keepalive.idleAuto, middleboxes: keepalive.middleboxes, connectTimeoutMs, drainTimeoutMs, engine },
    routes
  }
}
