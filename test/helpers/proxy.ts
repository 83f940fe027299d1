import { spawn, type ChildProcess } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { buildConfig } from '../../src/config/load.js'
import type { KaproxyConfig } from '../../src/config/types.js'
import { Kaproxy } from '../../src/kaproxy.js'
import { createLogger } from '../../src/log.js'
import { LogSink } from './log-sink.js'

/** The compiled CLI as users run it. */
export const CLI = fileURLToPath(new URL('../../../dist/cli.js', import.meta.url))

export interface RunningProxy {
  kaproxy: Kaproxy
  config: KaproxyConfig
  log: LogSink
  /** Bound port of a route. */
  port: (route: string) => number
  close: () => Promise<void>
}

/** Start kaproxy in this process from a raw config object (as a YAML file would hold), logging into a sink. */
export async function startProxy (raw: Record<string, unknown>): Promise<RunningProxy> {
  const config = buildConfig({ admin: { listen: '' }, ...raw }, { env: {} })
  const log = new LogSink()
  const kaproxy = new Kaproxy(config, createLogger('debug', log))
  await kaproxy.start()
  return {
    kaproxy,
    config,
    log,
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
 * Spawn `node dist/cli.js ...args`; stdout is parsed as log lines. The admin API is off unless
 * the test turns it on (`--admin-listen 127.0.0.1:0` or its own KAPROXY_ADMIN_LISTEN): its
 * fixed default port would collide with anything else on this machine.
 */
export function spawnCli (args: string[], env: NodeJS.ProcessEnv = {}): CliRun {
  const child = spawn(process.execPath, [CLI, ...args], { env: { PATH: process.env.PATH, KAPROXY_ADMIN_LISTEN: '', ...env }, stdio: ['ignore', 'pipe', 'pipe'] })
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
