import { parseArgs } from 'node:util'
import { ConfigError } from '../errors.js'

/** Command-line options shared by `run` and `check`. */
export const CONFIG_OPTIONS = {
  config: { type: 'string', short: 'c' },
  listen: { type: 'string' },
  upstream: { type: 'string' },
  name: { type: 'string' },
  'client-keepalive': { type: 'string' },
  'upstream-keepalive': { type: 'string' },
  'client-middleboxes': { type: 'string' },
  'upstream-middleboxes': { type: 'string' },
  'no-keepalive': { type: 'boolean' },
  'connect-timeout': { type: 'string' },
  'log-level': { type: 'string' },
  'admin-listen': { type: 'string' },
  engine: { type: 'string' },
  workers: { type: 'string' },
  'bulk-buffers': { type: 'string' },
  'busy-poll-us': { type: 'string' },
  'report-after-ms': { type: 'string' }
} as const

export type ConfigFlags = ReturnType<typeof parseConfigFlags>

export function parseConfigFlags (args: string[]) {
  try {
    return parseArgs({ args, options: CONFIG_OPTIONS, allowPositionals: false, strict: true }).values
  } catch (err) {
    // parseArgs names the offending option (or argument) in quotes: report the issue there.
    const message = (err as Error).message
    const token = /'(-{1,2}[^' <]+)/.exec(message)?.[1] ?? /argument '([^']+)'/.exec(message)?.[1] ?? 'arguments'
    throw new ConfigError([{ path: token, message }])
  }
}

/**
 * `IDLE,INTERVAL,COUNT[,USERTIMEOUT]` (e.g. `30s,5s,4` or `30s,5s,4,50s`), or `off`.
 * Values stay raw so the config validator reports them with its usual rules.
 */
export function parseKeepaliveFlag (flag: string, value: string): Record<string, unknown> {
  if (value === 'off') return { enabled: false }
  const parts = value.split(',')
  if (parts.length < 3 || parts.length > 4) {
    throw new ConfigError([{ path: `--${flag}`, message: `must be IDLE,INTERVAL,COUNT[,USERTIMEOUT] or off (got ${JSON.stringify(value)})` }])
  }
  const [idle, interval, count, userTimeout] = parts
  const side: Record<string, unknown> = { enabled: true, idle, interval, count: /^\d+$/.test(count ?? '') ? Number(count) : count }
  if (userTimeout !== undefined) side.userTimeout = userTimeout
  return side
}

/**
 * `PRESET|NAME=DURATION,...` (e.g. `aws-nlb,corp-fw=10m`) as the raw list a file would hold;
 * entries stay raw so the config validator reports them with its usual rules.
 */
export function parseMiddleboxesFlag (value: string): unknown[] {
  return value.split(',').filter((item) => item !== '').map((item) => {
    const equals = item.indexOf('=')
    return equals < 0 ? item : { name: item.slice(0, equals), idleTimeout: item.slice(equals + 1) }
  })
}

/** Does the command line describe a route by itself (one-route mode)? */
export function hasRouteFlags (flags: ConfigFlags): boolean {
  return flags.listen !== undefined || flags.upstream !== undefined
}

/** The raw config of one-route mode, validated like a file's. */
export function routeFromFlags (flags: ConfigFlags): Record<string, unknown> {
  const keepalive: Record<string, unknown> = {}
  if (flags['no-keepalive'] === true) {
    keepalive.client = { enabled: false }
    keepalive.upstream = { enabled: false }
  }
  if (flags['client-keepalive'] !== undefined) keepalive.client = parseKeepaliveFlag('client-keepalive', flags['client-keepalive'])
  if (flags['upstream-keepalive'] !== undefined) keepalive.upstream = parseKeepaliveFlag('upstream-keepalive', flags['upstream-keepalive'])
  for (const side of ['client', 'upstream'] as const) {
    const list = flags[`${side}-middleboxes`]
    if (list !== undefined) keepalive[side] = { ...(keepalive[side] as Record<string, unknown> | undefined), middleboxes: parseMiddleboxesFlag(list) }
  }
  const route: Record<string, unknown> = { name: flags.name ?? 'default', listen: flags.listen, upstream: flags.upstream, keepalive }
  if (flags['connect-timeout'] !== undefined) route.connectTimeout = flags['connect-timeout']
  return { routes: [route] }
}

/** Flags that override top-level settings of a file or of one-route mode. */
export function overridesFromFlags (flags: ConfigFlags): Record<string, unknown> {
  const overrides: Record<string, unknown> = {}
  if (flags['log-level'] !== undefined) overrides['log.level'] = flags['log-level']
  if (flags['admin-listen'] !== undefined) overrides['admin.listen'] = flags['admin-listen']
  if (flags.engine !== undefined) overrides['defaults.engine'] = flags.engine
  if (flags.workers !== undefined) overrides['dataPlane.workers'] = flags.workers
  if (flags['bulk-buffers'] !== undefined) overrides['dataPlane.bulkBuffers'] = flags['bulk-buffers']
  if (flags['busy-poll-us'] !== undefined) overrides['dataPlane.busyPollUs'] = flags['busy-poll-us']
  if (flags['report-after-ms'] !== undefined) overrides['dataPlane.reportAfterMs'] = flags['report-after-ms']
  return overrides
}
