import { parseArgs } from 'node:util'
import { formatHostPort, parseDurationMs, parseHostPort } from '../config/formats.js'
import { loadConfigFile } from '../config/load.js'
import { AdminResponseError, AdminUnreachableError, ConfigError } from '../errors.js'
import { AdminClient } from './client.js'
import type { StatsSnapshot } from './metrics.js'
import { formatStatus, type StatusSnapshot } from './status-format.js'
import { CONNECTIONS_LIMIT_MAX, type ConnectionsView, type RouteView } from './views.js'

export const STATUS_USAGE = `kaproxy status [--admin HOST:PORT|URL] [--config FILE] [--route NAME] [--limit N] [--json] [--watch [--interval DURATION]]
  Routes and live connections from the admin API: peers, age, bytes, and each side's keepalive
  and probe state read back from the kernel. The address comes from --admin, else the config
  file's admin.listen (--config or KAPROXY_CONFIG), else KAPROXY_ADMIN_LISTEN, else 127.0.0.1:9901;
  the token from KAPROXY_ADMIN_TOKEN or the config file.`

const OPTIONS = {
  admin: { type: 'string' },
  config: { type: 'string', short: 'c' },
  route: { type: 'string' },
  limit: { type: 'string' },
  json: { type: 'boolean' },
  watch: { type: 'boolean', short: 'w' },
  interval: { type: 'string' }
} as const

/** Where `status` writes, and what stops `--watch`. */
export interface StatusIo {
  stdout: { write: (text: string) => unknown, isTTY?: boolean }
  env: NodeJS.ProcessEnv
  /** Aborting ends `--watch` (exit 0); cli.ts aborts on SIGINT/SIGTERM. */
  signal?: AbortSignal
}

interface StatusOptions {
  origin: string
  token: string
  route: string | undefined
  limit: number
  json: boolean
  watch: boolean
  intervalMs: number
}

// A wildcard listen address is reached through loopback.
function reachable (host: string): string {
  if (host === '0.0.0.0') return '127.0.0.1'
  if (host === '::') return '::1'
  return host
}

/** `--admin` as `host:port`, `[v6]:port` or `http(s)://host:port`; returns the origin. */
export function adminOrigin (value: string): string {
  if (/^https?:\/\//i.test(value)) {
    let url: URL
    try { url = new URL(value) } catch { throw new ConfigError([{ path: '--admin', message: `must be host:port or an http:// URL (got ${JSON.stringify(value)})` }]) }
    return url.origin
  }
  const parsed = parseHostPort(value, 1)
  if ('rule' in parsed) throw new ConfigError([{ path: '--admin', message: `${parsed.rule}, or an http:// URL (got ${JSON.stringify(value)})` }])
  return `http://${formatHostPort({ host: reachable(parsed.host), port: parsed.port })}`
}

function resolveOptions (args: string[], env: NodeJS.ProcessEnv): StatusOptions {
  let values
  try {
    values = parseArgs({ args, options: OPTIONS, allowPositionals: false, strict: true }).values
  } catch (err) {
    throw new ConfigError([{ path: '', message: `${(err as Error).message}\nusage: ${STATUS_USAGE}` }])
  }
  let origin: string
  let token = env.KAPROXY_ADMIN_TOKEN ?? ''
  const file = values.config ?? env.KAPROXY_CONFIG
  if (values.admin !== undefined) {
    origin = adminOrigin(values.admin)
  } else if (file !== undefined) {
    const config = loadConfigFile(file, { env })
    if (config.admin.listen === null) throw new ConfigError([{ path: 'admin.listen', message: `the admin API is disabled in ${file} ("")` }])
    origin = `http://${formatHostPort({ host: reachable(config.admin.listen.host), port: config.admin.listen.port })}`
    token = config.admin.token
  } else {
    origin = adminOrigin(env.KAPROXY_ADMIN_LISTEN ?? '127.0.0.1:9901')
  }
  let limit = 100
  if (values.limit !== undefined) {
    limit = /^\d+$/.test(values.limit) ? Number(values.limit) : NaN
    if (!(limit >= 1 && limit <= CONNECTIONS_LIMIT_MAX)) throw new ConfigError([{ path: '--limit', message: `must be an integer 1..${CONNECTIONS_LIMIT_MAX} (got ${JSON.stringify(values.limit)})` }])
  }
  const intervalMs = values.interval === undefined ? 2000 : parseDurationMs(values.interval)
  if (intervalMs === undefined || intervalMs < 100) throw new ConfigError([{ path: '--interval', message: `must be a duration of at least 100ms (got ${JSON.stringify(values.interval)})` }])
  return { origin, token, route: values.route, limit, json: values.json === true, watch: values.watch === true, intervalMs }
}

async function snapshot (client: AdminClient, options: StatusOptions, signal?: AbortSignal): Promise<StatusSnapshot> {
  const query = new URLSearchParams({ limit: String(options.limit) })
  if (options.route !== undefined) query.set('route', options.route)
  const [routes, stats, connections] = await Promise.all([
    client.getJson<{ ready: boolean, routes: RouteView[] }>('/routes', signal),
    client.getJson<StatsSnapshot>('/stats', signal),
    client.getJson<ConnectionsView>(`/connections?${query.toString()}`, signal)
  ])
  return { admin: options.origin, routes, stats, connections }
}

/** Add what to do next to the two failures an operator meets first. */
export function explainAdminError (err: unknown): unknown {
  if (err instanceof AdminUnreachableError) {
    return new AdminUnreachableError(err.url, err.reason, 'is kaproxy running with admin.listen on this address? (choose another with --admin HOST:PORT)', { cause: err.cause })
  }
  if (err instanceof AdminResponseError && err.statusCode === 401) return new AdminResponseError(err.url, 401, err.detail, 'set KAPROXY_ADMIN_TOKEN')
  return err
}

/**
 * `kaproxy status`: print routes and live connections once (or every `--interval` with
 * `--watch`, until `io.signal` aborts). Resolves with the exit code; throws KaproxyError
 * (unreachable, refused, bad flags), which cli.ts reports.
 */
export async function statusCommand (args: string[], io: StatusIo): Promise<number> {
  const options = resolveOptions(args, io.env)
  const client = new AdminClient(options.origin, { token: options.token })
  const print = (s: StatusSnapshot): void => {
    if (options.json) io.stdout.write(`${options.watch ? JSON.stringify(s) : JSON.stringify(s, null, 2)}\n`)
    else if (options.watch && io.stdout.isTTY === true) io.stdout.write(`\x1b[H\x1b[2J${formatStatus(s)}\n`)
    else io.stdout.write(`${formatStatus(s)}\n${options.watch ? '\n' : ''}`)
  }
  try {
    if (!options.watch) {
      try {
        print(await snapshot(client, options))
      } catch (err) {
        throw explainAdminError(err)
      }
      return 0
    }
    const signal = io.signal
    const aborted = (): boolean => signal?.aborted === true
    while (!aborted()) {
      try {
        print(await snapshot(client, options, signal))
      } catch (err) {
        if (aborted()) break
        // A restart or a blip must not end a watch: say so and try again next time.
        if (err instanceof AdminUnreachableError || err instanceof AdminResponseError) io.stdout.write(`${new Date().toISOString()} ${(explainAdminError(err) as Error).message}\n`)
        else throw err
      }
      await new Promise<void>((resolve) => {
        const timer = setTimeout(done, options.intervalMs)
        signal?.addEventListener('abort', done, { once: true })
        function done (): void { clearTimeout(timer); signal?.removeEventListener('abort', done); resolve() }
      })
    }
    return 0
  } finally {
    await client.destroy()
  }
}
