// Running the real kaproxy binary (dist/cli.js, one-route mode) inside a lab namespace and reading
// its pino JSON log lines from stdout.
import { existsSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import type { Lab, Role } from './lab.js'
import type { LabProcess } from './proc.js'
import { testEngine, withTestEngine } from '../helpers/engines.js'
import { asUser, type RunAs } from './users.js'

/** The CLI under test: $KAPROXY_CLI, or dist/cli.js of this checkout (build/test/netlab -> ../../../dist). */
export const KAPROXY_CLI = process.env.KAPROXY_CLI ?? fileURLToPath(new URL('../../../dist/cli.js', import.meta.url))

export function kaproxyBuilt (): boolean {
  return existsSync(KAPROXY_CLI)
}

export interface RouteOptions {
  name: string
  /** `ip:port` to listen on, inside the namespace. */
  listen: string
  /** `ip:port` to connect to. */
  upstream: string
  /** Keepalive spec `IDLE,INTERVAL,COUNT[,USERTIMEOUT]` or `off`; default `off`. */
  clientKeepalive?: string
  /** Keepalive spec `IDLE,INTERVAL,COUNT[,USERTIMEOUT]` or `off`; default `off`. */
  upstreamKeepalive?: string
  /** Duration; default `5s`. */
  connectTimeout?: string
}

/** A `close` log line of kaproxy. */
export interface CloseLog {
  route: string
  conn: unknown
  client: string
  upstream: string
  reason: string
  side: string
  bytesFromClient: number
  bytesFromUpstream: number
  durationMs: number
  /** pino's `time` (an ISO string or epoch ms), as ms since the epoch. */
  time: number
  raw: Record<string, unknown>
}

export class Kaproxy {
  private constructor (readonly proc: LabProcess, readonly options: RouteOptions, readonly args: readonly string[]) {}

  /** Start kaproxy with one route in namespace `role`; resolves once it logged `ready` (or its route's `listening`). */
  static async start (lab: Lab, role: Role, options: RouteOptions, timeoutMs = 10_000): Promise<Kaproxy> {
    const args = [
      '--name', options.name,
      '--listen', options.listen,
      '--upstream', options.upstream,
      '--client-keepalive', options.clientKeepalive ?? 'off',
      '--upstream-keepalive', options.upstreamKeepalive ?? 'off',
      '--connect-timeout', options.connectTimeout ?? '5s',
      '--log-level', 'info',
      // Several kaproxy processes may share a namespace: none takes the admin API's fixed port.
      '--admin-listen', '',
      ...(testEngine() === null ? [] : ['--engine', testEngine() ?? ''])
    ]
    const proc = lab.node(role, KAPROXY_CLI, args, `kaproxy ${options.name}@${role}`)
    await proc.waitJson((e) => e.event === 'ready' || (e.event === 'listening' && e.route === options.name), timeoutMs, `kaproxy ${options.name} ready`)
    return new Kaproxy(proc, options, args)
  }

  /**
   * Start kaproxy with a config file (written into the lab's temporary directory from `config`, a
   * plain object as the YAML would hold) in namespace `role`, optionally as another user; resolves once
   * it logged `ready`. `route` names the route whose `open`/`close` lines `opened`/`closed` wait for.
   */
  static async startConfig (lab: Lab, role: Role, config: Record<string, unknown>, options: { route: string, user?: RunAs, timeoutMs?: number }): Promise<Kaproxy> {
    const file = lab.writeFile(`kaproxy-${options.route}-${role}.json`, JSON.stringify({ admin: { listen: '' }, ...withTestEngine(config) }, null, 2))
    const args = ['--config', file, '--log-level', 'info']
    const [cmd, argv] = asUser(options.user, process.execPath, [KAPROXY_CLI, ...args])
    const proc = lab.spawn(role, cmd, argv, `kaproxy ${options.route}@${role}`)
    await proc.waitJson((e) => e.event === 'ready', options.timeoutMs ?? 10_000, `kaproxy ${options.route} ready`)
    const route: RouteOptions = { name: options.route, listen: 'config', upstream: 'config' }
    return new Kaproxy(proc, route, args)
  }

  /** The config file given with --config, if any. */
  get configFile (): string | undefined {
    const at = this.args.indexOf('--config')
    return at < 0 ? undefined : this.args[at + 1]
  }

  /** kaproxy's pid (`ip netns exec` and setpriv exec, so it is the spawned pid). */
  get pid (): number {
    const pid = this.proc.pid
    if (pid === undefined) throw new Error('kaproxy has no pid (it did not start)')
    return pid
  }

  /** The command line, for messages. */
  get commandLine (): string {
    return `kaproxy ${this.args.join(' ')}`
  }

  /** Resolve with the next `open` line of this route (after `from`, a proc.mark()). */
  async opened (timeoutMs: number, from = 0): Promise<Record<string, unknown>> {
    return await this.proc.waitJson((e) => e.event === 'open' && e.route === this.options.name, timeoutMs, `kaproxy ${this.options.name} open`, from)
  }

  /** Resolve with the first `close` line of this route (bounded by `timeoutMs`). */
  async closed (timeoutMs: number, from = 0): Promise<CloseLog> {
    const e = await this.proc.waitJson((o) => o.event === 'close' && o.route === this.options.name, timeoutMs, `kaproxy ${this.options.name} close`, from)
    return toClose(e)
  }

  /** All `close` lines so far. */
  closes (): CloseLog[] {
    return this.proc.json().filter((e) => e.event === 'close').map(toClose)
  }

  /** SIGTERM and wait for the exit; resolves with the exit code (or signal name). */
  async stop (): Promise<number | string> {
    return await this.proc.stop('SIGTERM', 3_000)
  }
}

function toClose (e: Record<string, unknown>): CloseLog {
  const n = (v: unknown): number => (typeof v === 'number' ? v : NaN)
  return {
    route: String(e.route),
    conn: e.conn,
    client: String(e.client),
    upstream: String(e.upstream),
    reason: String(e.reason),
    side: String(e.side),
    bytesFromClient: n(e.bytesFromClient),
    bytesFromUpstream: n(e.bytesFromUpstream),
    durationMs: n(e.durationMs),
    time: typeof e.time === 'string' ? Date.parse(e.time) : n(e.time),
    raw: e
  }
}
