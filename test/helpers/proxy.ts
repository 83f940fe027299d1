import { spawn, type ChildProcess } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import type { Logger } from 'pino'
import { buildConfig, loadConfigFile } from '../../src/config/load.js'
import type { KaproxyConfig } from '../../src/config/types.js'
import { Kaproxy, type KaproxyOptions, type ReloadResult } from '../../src/kaproxy.js'
import { createLogger } from '../../src/log.js'
import { testEngine, withTestEngine } from './engines.js'
import { LogSink } from './log-sink.js'

/** The compiled CLI as users run it. */
export const CLI = fileURLToPath(new URL('../../../dist/cli.js', import.meta.url))

export interface RunningProxy {
  kaproxy: Kaproxy
  config: KaproxyConfig
  log: LogSink
  /** The pino logger writing into `log`. */
  logger: Logger
  /** Bound port of a route. */
  port: (route: string) => number
  /** Apply another raw config, as a reload from a file holding it would. */
  reload: (raw: Record<string, unknown>) => Promise<ReloadResult>
  close: () => Promise<void>
}

/** A raw config object (as a YAML file would hold) validated the way startProxy does; admin off. */
export function testConfig (raw: Record<string, unknown>): KaproxyConfig {
  return buildConfig({ admin: { listen: '' }, ...withTestEngine(raw) }, { env: {} })
}

/** Start kaproxy in this process from a raw config object (as a YAML file would hold), logging into a sink. */
export async function startProxy (raw: Record<string, unknown>, options: KaproxyOptions = {}): Promise<RunningProxy> {
  return await startWith(testConfig(raw), options)
}

/** Start kaproxy from a config file, reloading from that file as the CLI does (without KAPROXY_* variables). */
export async function startProxyFromFile (file: string): Promise<RunningProxy> {
  const load = (): KaproxyConfig => loadConfigFile(file, { env: {} })
  return await startWith(load(), { load })
}

async function startWith (config: KaproxyConfig, options: KaproxyOptions): Promise<RunningProxy> {
  const log = new LogSink()
  const logger = createLogger('debug', log)
  const kaproxy = new Kaproxy(config, logger, options)
  await kaproxy.start()
  return {
    kaproxy,
    config,
    log,
    logger,
    reload: async (next) => await kaproxy.reload({ config: testConfig(next), trigger: 'test' }),
    port: (route) => {
      const address = kaproxy.engine.address(route)
      if (address === null) throw new Error(`route ${route} is not listening`)
      return Number(address.slice(address.lastIndexOf(':') + 1))
    },
    close: async () => { await kaproxy.close() }
  }
}

export interface CliRun {
  child: ChildProcess
  stdout: LogSink
  stderr: () => string
  exit: Promise<number | null>
  kill: () => Promise<void>
}

/**
 * Spawn `node dist/cli.js ...args` (or another copy of the CLI); stdout is parsed as log lines.
 * The admin API is off unless the test turns it on (`--admin-listen 127.0.0.1:0` or its own
 * KAPROXY_ADMIN_LISTEN): its fixed default port would collide with anything else on this machine.
 * `wrapper` runs the CLI under another command, e.g. `['prlimit', '--nofile=256:256']`.
 */
export function spawnCli (args: string[], env: NodeJS.ProcessEnv = {}, cli = CLI, wrapper: readonly string[] = []): CliRun {
  const [command, ...prefix] = [...wrapper, process.execPath]
  const engine = testEngine()
  const child = spawn(command ?? process.execPath, [...prefix, cli, ...args], {
    env: { PATH: process.env.PATH, KAPROXY_ADMIN_LISTEN: '', ...(engine === null ? {} : { KAPROXY_ENGINE: engine }), ...env },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  const stdout = new LogSink()
  let stderr = ''
  child.stdout.setEncoding('utf8').on('data', (text: string) => { stdout.push(text) })
  child.stderr.setEncoding('utf8').on('data', (text: string) => { stderr += text })
  const exit = new Promise<number | null>((resolve) => child.once('exit', (code) => { resolve(code) }))
  return {
    child,
    stdout,
    stderr: () => stderr,
    exit,
    kill: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
      await exit
    }
  }
}
