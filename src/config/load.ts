import { readFileSync } from 'node:fs'
import { extname } from 'node:path'
import YAML from 'yaml'
import { ConfigError, type ConfigIssue } from '../errors.js'
import { adminConfigIssues } from './admin.js'
import { parseDurationMs, parseHostPort } from './formats.js'
import { checkRoutes, resolveKeepaliveDefaults, type RawKeepaliveDefaults } from './routes.js'
import { createSchema } from './schema.js'
import type { KaproxyConfig, LogLevel } from './types.js'

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

const BUILTIN_KEEPALIVE: RawKeepaliveDefaults = { enabled: true, idle: '60s', interval: '10s', count: 6, userTimeout: null }

// convict reports `path: message: value was X`, or `configuration param 'x' not declared in the schema`.
function convictIssues (message: string): ConfigIssue[] {
  return message.split('\n').filter((line) => line !== '').map((line) => {
    const undeclared = /^configuration param '(.+)' not declared in the schema$/.exec(line)
    if (undeclared !== null) return { path: undeclared[1] ?? '', message: 'unknown key' }
    const colon = line.indexOf(': ')
    if (colon < 0) return { path: '', message: line }
    return { path: line.slice(0, colon), message: line.slice(colon + 2).replace(/: value was .*$/, '') }
  })
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
    schema.load({ ...raw, routes: Array.isArray(rawRoutes) ? rawRoutes : [] })
    for (const [path, value] of Object.entries(options.overrides ?? {})) schema.set(path, value)
    schema.validate({ allowed: 'strict' })
  } catch (err) {
    issues.push(...convictIssues((err as Error).message))
  }
  // Keep going after top-level problems so every invalid field is reported in one pass;
  // routes are then checked against the built-in defaults.
  const topLevelOk = issues.length === 0
  const keepalive = resolveKeepaliveDefaults(topLevelOk ? schema.get('defaults.keepalive') as RawKeepaliveDefaults : BUILTIN_KEEPALIVE)
  const connectTimeoutMs = topLevelOk ? parseDurationMs(schema.get('defaults.connectTimeout')) ?? 5000 : 5000
  const { routes, issues: routeIssues } = checkRoutes(Array.isArray(rawRoutes) ? rawRoutes : [], { keepalive, connectTimeoutMs })
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
    defaults: { keepalive, connectTimeoutMs },
    routes
  }
}
