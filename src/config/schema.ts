import convict from 'convict'
import { parseDurationMs, parseHostPort } from './formats.js'
import { ENGINE_CHOICES, LOG_LEVELS } from './types.js'

// convict owns the top level (defaults, env and flag overrides, unknown keys); the route list is
// checked field by field in routes.ts, because convict cannot describe items of an array.

function show (value: unknown): string {
  return JSON.stringify(value) ?? String(value)
}

function check (ok: boolean, rule: string, value: unknown): void {
  if (!ok) throw new Error(`${rule} (got ${show(value)})`)
}

function durationFormat (rule: string, isValid: (ms: number) => boolean) {
  return (value: unknown): void => {
    const ms = parseDurationMs(value)
    check(ms !== undefined && isValid(ms), rule, value)
  }
}

export const WHOLE_SECONDS_RULE = 'must be whole seconds 1..32767 (e.g. 30s, 2m)'
export const IDLE_RULE = `${WHOLE_SECONDS_RULE} or auto`
export const COUNT_RULE = 'must be an integer 1..127'
export const USER_TIMEOUT_RULE = 'must be a duration 0..2147483647ms (e.g. 30s, 500ms)'
export const CONNECT_TIMEOUT_RULE = 'must be a duration 1ms..1h (e.g. 5s)'
export const DRAIN_TIMEOUT_RULE = 'must be a duration 0ms..1h (e.g. 30s; 0 closes at once)'
export const MAX_WORKERS = 64
export const WORKERS_RULE = `must be auto or an integer 1..${MAX_WORKERS}`
/** `dataPlane.workers` as written (a number, or digits from the environment) to a count; undefined for auto or an invalid value. */
export function parseWorkers (value: unknown): number | undefined {
  return parseCount(value, 1, MAX_WORKERS)
}
export const MAX_BULK_BUFFERS = 1024
/** Four 4 MiB buffers per worker: at most 16 MiB of RSS each, kept once made. */
export const DEFAULT_BULK_BUFFERS = 4
export const BULK_BUFFERS_RULE = `must be an integer 0..${MAX_BULK_BUFFERS}`
/** `dataPlane.bulkBuffers` as written (a number, or digits from the environment); undefined when invalid. */
export function parseBulkBuffers (value: unknown): number | undefined {
  return parseCount(value, 0, MAX_BULK_BUFFERS)
}
export const MAX_REPORT_AFTER_MS = 60_000
/**
 * A fast worker tells the main thread of a connection it accepted once it has relayed 20 ms: those
 * that end sooner cost the main thread one summary instead of a connection record.
 */
export const DEFAULT_REPORT_AFTER_MS = 20
export const REPORT_AFTER_RULE = `must be an integer 0..${MAX_REPORT_AFTER_MS} (milliseconds; 0: at once)`
/** `dataPlane.reportAfterMs` as written (a number, or digits from the environment); undefined when invalid. */
export function parseReportAfterMs (value: unknown): number | undefined {
  return parseCount(value, 0, MAX_REPORT_AFTER_MS)
}
export const MAX_BUSY_POLL_US = 1000
/** A fast worker polls for up to 100 µs after moving bytes, before it sleeps (see splice-worker's pollWindowUs). */
export const DEFAULT_BUSY_POLL_US = 100
export const BUSY_POLL_RULE = `must be auto or an integer 0..${MAX_BUSY_POLL_US} (microseconds; 0: never poll)`
/** `dataPlane.busyPollUs` as written (a number, or digits from the environment); undefined for auto or an invalid value. */
export function parseBusyPollUs (value: unknown): number | undefined {
  return parseCount(value, 0, MAX_BUSY_POLL_US)
}
function parseCount (value: unknown, min: number, max: number): number | undefined {
  const count = typeof value === 'string' && /^[0-9]+$/.test(value) ? Number(value) : value
  return Number.isInteger(count) && (count as number) >= min && (count as number) <= max ? count as number : undefined
}

export const isKeepaliveSeconds = (ms: number): boolean => ms % 1000 === 0 && ms >= 1000 && ms <= 32767_000
/** `idle: auto`: resolved per side from its middleboxes (src/budget/middleboxes.ts). */
export const AUTO = 'auto'
export const isUserTimeout = (ms: number): boolean => ms <= 2147483647
export const isConnectTimeout = (ms: number): boolean => ms >= 1 && ms <= 3_600_000
export const isDrainTimeout = (ms: number): boolean => ms <= 3_600_000
export const isCount = (value: unknown): boolean => Number.isInteger(value) && (value as number) >= 1 && (value as number) <= 127

const formats = {
  'log-level': (value: unknown): void => check(typeof value === 'string' && (LOG_LEVELS as readonly string[]).includes(value), `must be one of ${LOG_LEVELS.join(', ')}`, value),
  'admin-listen': (value: unknown): void => {
    if (value === '') return
    const parsed = parseHostPort(value, 0)
    if ('rule' in parsed) throw new Error(`${parsed.rule}, or "" to disable (got ${show(value)})`)
  },
  workers: (value: unknown): void => check(value === AUTO || parseWorkers(value) !== undefined, WORKERS_RULE, value),
  'bulk-buffers': (value: unknown): void => check(parseBulkBuffers(value) !== undefined, BULK_BUFFERS_RULE, value),
  'report-after': (value: unknown): void => check(parseReportAfterMs(value) !== undefined, REPORT_AFTER_RULE, value),
  'busy-poll': (value: unknown): void => check(value === AUTO || parseBusyPollUs(value) !== undefined, BUSY_POLL_RULE, value),
  engine: (value: unknown): void => check(typeof value === 'string' && (ENGINE_CHOICES as readonly string[]).includes(value), `must be one of ${ENGINE_CHOICES.join(', ')}`, value),
  boolean: (value: unknown): void => check(typeof value === 'boolean', 'must be true or false', value),
  string: (value: unknown): void => check(typeof value === 'string', 'must be a string', value),
  'keepalive-seconds': durationFormat(WHOLE_SECONDS_RULE, isKeepaliveSeconds),
  'keepalive-idle': (value: unknown): void => {
    if (value === AUTO) return
    const ms = parseDurationMs(value)
    check(ms !== undefined && isKeepaliveSeconds(ms), IDLE_RULE, value)
  },
  // Only the shape here; every entry is checked with its path in routes.ts, like the route list.
  'middlebox-list': (value: unknown): void => check(Array.isArray(value), 'must be a list of middleboxes (preset names or { name, idleTimeout })', value),
  'keepalive-count': (value: unknown): void => check(isCount(value), COUNT_RULE, value),
  'user-timeout': durationFormat(USER_TIMEOUT_RULE, isUserTimeout),
  'connect-timeout': durationFormat(CONNECT_TIMEOUT_RULE, isConnectTimeout),
  'drain-timeout': durationFormat(DRAIN_TIMEOUT_RULE, isDrainTimeout),
  'route-list': (value: unknown): void => check(Array.isArray(value), 'must be a list of routes', value)
}

// convict coerces a string by the type of a field's default when the format is a function: `no`
// (a string in YAML 1.2) became `true` for a boolean, `"5"` became 5 for a count. Named formats with
// an identity `coerce` keep the value as written, so the format judges it like a route's field.
convict.addFormat({ name: 'kaproxy-boolean', validate: formats.boolean, coerce: (value: unknown) => value })
convict.addFormat({ name: 'kaproxy-count', validate: formats['keepalive-count'], coerce: (value: unknown) => value })
convict.addFormat({ name: 'kaproxy-bulk-buffers', validate: formats['bulk-buffers'], coerce: (value: unknown) => value })
convict.addFormat({ name: 'kaproxy-report-after', validate: formats['report-after'], coerce: (value: unknown) => value })
convict.addFormat({ name: 'kaproxy-busy-poll', validate: formats['busy-poll'], coerce: (value: unknown) => value })

/** The convict schema of the top level: documentation, defaults, env names and formats. */
export function createSchema (env: NodeJS.ProcessEnv) {
  return convict({
    log: {
      level: { doc: 'pino log level', format: formats['log-level'], default: 'info', env: 'KAPROXY_LOG_LEVEL' }
    },
    admin: {
      listen: { doc: 'admin HTTP API address; "" disables it', format: formats['admin-listen'], default: '127.0.0.1:9901', env: 'KAPROXY_ADMIN_LISTEN' },
      token: { doc: 'bearer token the admin API requires', format: formats.string, default: '', env: 'KAPROXY_ADMIN_TOKEN', sensitive: true }
    },
    reload: {
      watch: { doc: 'reload when the config file changes; SIGHUP (and the admin API) reload either way', format: 'kaproxy-boolean', default: true }
    },
    dataPlane: {
      workers: { doc: 'threads of the fast engine; auto: one per CPU, at most 4', format: formats.workers, default: 'auto' as string | number, env: 'KAPROXY_WORKERS' },
      bulkBuffers: { doc: 'fast engine: 4 MiB buffers per worker that bulk flows are copied through; flows beyond them splice through pipes; 0: always splice', format: 'kaproxy-bulk-buffers', default: DEFAULT_BULK_BUFFERS as string | number, env: 'KAPROXY_BULK_BUFFERS' },
      reportAfterMs: { doc: 'fast engine: milliseconds a connection a worker accepted relays before the main thread is told of it (lists it, logs it open); one that ends sooner is logged and counted at its end only; 0: at once', format: 'kaproxy-report-after', default: DEFAULT_REPORT_AFTER_MS as string | number, env: 'KAPROXY_REPORT_AFTER_MS' },
      busyPollUs: { doc: `fast engine: microseconds a worker keeps polling after moving bytes before it sleeps (adaptive, up to this); auto: ${DEFAULT_BUSY_POLL_US}, or 0 under a CPU quota`, format: 'kaproxy-busy-poll', default: 'auto' as string | number, env: 'KAPROXY_BUSY_POLL_US' }
    },
    defaults: {
      engine: { doc: 'data plane: fast (worker threads, dataPlane.workers; Linux), net (Node streams, portable), auto (fast where available)', format: formats.engine, default: 'auto', env: 'KAPROXY_ENGINE' },
      connectTimeout: { doc: 'upstream connect timeout', format: formats['connect-timeout'], default: '5s' as string | number },
      drainTimeout: {
        doc: 'how long live connections may go on once their route stops accepting (removed by a reload, or shutdown); then they are closed',
        format: formats['drain-timeout'],
        default: '30s' as string | number
      },
      keepalive: {
        enabled: { doc: 'SO_KEEPALIVE', format: 'kaproxy-boolean', default: true },
        idle: { doc: 'TCP_KEEPIDLE; auto: half the smallest middlebox idle timeout of each side', format: formats['keepalive-idle'], default: '60s' as string | number },
        interval: { doc: 'TCP_KEEPINTVL', format: formats['keepalive-seconds'], default: '10s' as string | number },
        count: { doc: 'TCP_KEEPCNT', format: 'kaproxy-count', default: 6 },
        userTimeout: { doc: 'TCP_USER_TIMEOUT; null leaves the kernel default', format: formats['user-timeout'], default: null as string | number | null, nullable: true },
        middleboxes: { doc: 'middleboxes every side crosses unless it lists its own: preset names or { name, idleTimeout }', format: formats['middlebox-list'], default: [] as unknown[] }
      }
    },
    routes: { doc: 'the routes', format: formats['route-list'], default: [] as unknown[] }
  }, { env, args: [] })
}

export type ConfigSchema = ReturnType<typeof createSchema>
