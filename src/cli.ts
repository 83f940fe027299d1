#!/usr/bin/env -S node --max-semi-space-size=1
// --max-semi-space-size=1 (also in `npm start` and the Dockerfile): a 1 MiB young generation (V8's
// default is 16 MiB per semi-space) keeps an idle connection near 1.4 KB instead of 5-6 KB, at no
// measured cost in connection rate or throughput (docs/performance.md).
import { setTimeout as delay } from 'node:timers/promises'
import { MIDDLEBOX_PRESETS } from './budget/middleboxes.js'
import { parseHostPort } from './config/formats.js'
import { parseConfigFlags } from './config/flags.js'
import { configSource, resolveConfig } from './config/resolve.js'
import { ADVISE_USAGE, adviseCommand } from './admin/advise-command.js'
import { STATUS_USAGE, statusCommand } from './admin/status-command.js'
import { checkReport, formatCheckReport, hasBudgetWarnings } from './check.js'
import { demoBanner, startEchoServer } from './demo.js'
import { ConfigError, KaproxyError } from './errors.js'
import { iptablesCommand } from './iptables.js'
import { Kaproxy } from './kaproxy.js'
import { createLogger } from './log.js'
import { startReloadTriggers } from './reload.js'
import { kaproxyVersion } from './version.js'

/** How long a forced exit waits for the connections and worker threads to close. */
const FORCED_EXIT_WAIT_MS = 2000

// The only file that exits the process: parse arguments, load config, start, wait for signals.

const USAGE = `usage:
  kaproxy [--config FILE] [--log-level LEVEL] [--admin-listen ADDR|""] [--engine auto|fast|net] [--workers auto|N] [--bulk-buffers N] [--busy-poll-us auto|N] [--report-after-ms N]
  kaproxy --listen HOST:PORT --upstream HOST:PORT [--name NAME]
          [--client-keepalive IDLE,INTERVAL,COUNT[,USERTIMEOUT]|off]
          [--upstream-keepalive IDLE,INTERVAL,COUNT[,USERTIMEOUT]|off]
          [--client-middleboxes LIST] [--upstream-middleboxes LIST]
          [--no-keepalive] [--connect-timeout DURATION]
  kaproxy check [--config FILE | route flags] [--json] [--strict]
                                         --strict: exit 1 when a side has a keepalive budget warning
  kaproxy demo [--listen HOST:PORT]      echo server to relay to (default 127.0.0.1:7001)
  kaproxy iptables --route NAME [--config FILE] --uid UID [--ports 5432,6379] [--exclude-cidr CIDR ...]
          [--mark 0x539] [--format all|iptables|nft]
                                         print (never run) the rules that redirect outbound TCP into an
                                         original-dst route, excluding kaproxy's uid (and mark)
  ${STATUS_USAGE.replace(/\n/g, '\n  ')}
  ${ADVISE_USAGE.replace(/\n/g, '\n  ')}

environment: KAPROXY_CONFIG (config file), KAPROXY_LOG_LEVEL, KAPROXY_ADMIN_LISTEN, KAPROXY_ADMIN_TOKEN, KAPROXY_ENGINE,
  KAPROXY_WORKERS
admin API (default 127.0.0.1:9901): /healthz /readyz /metrics /routes /connections /stats, and a status page at /
durations: 500ms, 30s, 5m, 2h or a bare number of seconds
IDLE may be auto: half the smallest timeout of the side's middleboxes
middleboxes: PRESET or NAME=DURATION, comma-separated (e.g. aws-nlb,corp-fw=10m); presets:
${presetList()}
signals: SIGHUP reloads the config file (it is also watched, unless reload.watch is false);
  SIGTERM/SIGINT drain (listeners close, connections get drainTimeout), a second one exits at once`

function presetList (): string {
  const items = Object.entries(MIDDLEBOX_PRESETS).map(([name, preset]) => `${name} ${preset.idleTimeoutSec}s`)
  const lines: string[] = []
  for (let i = 0; i < items.length; i += 4) lines.push(`  ${items.slice(i, i + 4).join(', ')}`)
  return lines.join('\n')
}

function reportError (err: unknown): number {
  if (err instanceof KaproxyError) {
    process.stderr.write(`kaproxy: ${err.message}\n`)
    return 1
  }
  throw err
}

async function run (args: string[]): Promise<number> {
  const flags = parseConfigFlags(args)
  const config = resolveConfig(flags)
  const log = createLogger(config.log.level)
  const kaproxy = new Kaproxy(config, log, { load: () => resolveConfig(flags) })
  // SIGHUP's default action ends the process: ignore it until reloads can be handled.
  const early = (): void => { log.warn({ event: 'reload', trigger: 'SIGHUP', ok: false }, 'SIGHUP while starting: ignored') }
  process.on('SIGHUP', early)
  try {
    await kaproxy.start()
  } catch (err) {
    log.fatal({ event: 'start-failed', err }, (err as Error).message)
    throw err
  }
  // Reloads asked for while draining are refused (and logged) by kaproxy.reload().
  const triggers = startReloadTriggers(kaproxy, { file: configSource(flags, process.env), watch: config.reload.watch, log })
  process.off('SIGHUP', early)
  const signal = await new Promise<NodeJS.Signals>((resolve) => {
    process.once('SIGINT', resolve)
    process.once('SIGTERM', resolve)
  })
  // A second signal while draining exits at once, closing every connection first: a worker thread
  // that process.exit() ended while it was still loading koffi aborted the whole process (SIGABRT,
  // seen in CI), so the data plane is stopped before, for FORCED_EXIT_WAIT_MS at most.
  // pino's exit hook writes what is buffered.
  const force = (second: NodeJS.Signals): void => {
    log.warn({ event: 'forced-exit', signal: second }, `${second} while draining: exiting now`)
    void Promise.race([kaproxy.close(), delay(FORCED_EXIT_WAIT_MS)]).finally(() => { process.exit(1) })
  }
  process.once('SIGINT', force)
  process.once('SIGTERM', force)
  log.info({ event: 'shutdown', signal }, `${signal}: draining`)
  await kaproxy.drain()
  // Drain emptied the engine; close() also stops whatever sits beside it.
  await kaproxy.close()
  triggers.close()
  log.info({ event: 'stopped' }, 'kaproxy stopped')
  await new Promise<void>((resolve) => { log.flush(() => { resolve() }) })
  return 0
}

// Exit 1 on an invalid config; exit 0 with budget warnings, unless --strict.
function check (args: string[]): number {
  const json = args.includes('--json')
  const strict = args.includes('--strict')
  const config = resolveConfig(parseConfigFlags(args.filter((arg) => arg !== '--json' && arg !== '--strict')))
  const report = checkReport(config)
  const verdict = report.warnings.length === 0 ? 'configuration OK' : `configuration OK, with ${report.warnings.length} keepalive budget warning(s)`
  process.stdout.write(json ? `${JSON.stringify(report, null, 2)}\n` : `${formatCheckReport(config)}\n\n${verdict}\n`)
  return strict && hasBudgetWarnings(config) ? 1 : 0
}

async function demo (args: string[]): Promise<number> {
  const flags = parseConfigFlags(args)
  const echo = parseHostPort(flags.listen ?? '127.0.0.1:7001', 0)
  if ('rule' in echo) throw new ConfigError([{ path: '--listen', message: echo.rule }])
  const server = await startEchoServer(echo)
  process.stdout.write(`${demoBanner(server.address)}\n`)
  await new Promise((resolve) => { process.once('SIGINT', resolve); process.once('SIGTERM', resolve) })
  await server.close()
  return 0
}

async function status (args: string[]): Promise<number> {
  // SIGINT/SIGTERM end a --watch cleanly (exit 0).
  const controller = new AbortController()
  const stop = (): void => { controller.abort() }
  process.once('SIGINT', stop)
  process.once('SIGTERM', stop)
  try {
    return await statusCommand(args, { stdout: process.stdout, env: process.env, signal: controller.signal })
  } finally {
    process.off('SIGINT', stop)
    process.off('SIGTERM', stop)
  }
}

async function main (argv: string[]): Promise<number> {
  const [command, ...rest] = argv
  try {
    switch (command) {
      case 'check': return check(rest)
      case 'demo': return await demo(rest)
      case 'iptables': process.stdout.write(iptablesCommand(rest)); return 0
      case 'status': return await status(rest)
      case 'advise': return await adviseCommand(rest, { stdout: process.stdout, env: process.env })
      case 'help': case '--help': case '-h': process.stdout.write(`${USAGE}\n`); return 0
      case 'version': case '--version': process.stdout.write(`kaproxy ${kaproxyVersion()}\n`); return 0
      case 'run': return await run(rest)
      default: return await run(argv)
    }
  } catch (err) {
    return reportError(err)
  }
}

process.exitCode = await main(process.argv.slice(2))
