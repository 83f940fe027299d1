import pino, { type DestinationStream, type Logger } from 'pino'
import { budgetFindings, formatFinding } from './budget/budget.js'
import { formatHostPort } from './config/formats.js'
import type { KaproxyConfig, LogLevel, RouteConfig, Side } from './config/types.js'
import type { KeepaliveSettings } from './keepalive.js'
import type { CloseReason } from './relay/close-reason.js'
import type { AcceptBurst, AcceptPause, CloseSummary, ConnectionRecord, DrainSummary, EngineObserver, WorkerFailure } from './relay/engine.js'
import type { UpstreamState } from './upstream/pool.js'
import { targetsLabel, type UpstreamTarget } from './upstream/target.js'

/** The process logger: pino JSON lines on stdout (or `destination`, e.g. a test sink). */
export function createLogger (level: LogLevel, destination?: DestinationStream): Logger {
  const options = { level, base: { pid: process.pid }, timestamp: pino.stdTimeFunctions.isoTime, serializers: { err: serializeError } }
  return destination === undefined ? pino(options) : pino(options, destination)
}

/**
 * Socket errors are expected events: code and message are the whole story. Anything else keeps
 * pino's full form with the stack.
 */
function serializeError (err: unknown): unknown {
  if (typeof err !== 'object' || err === null) return err
  const e = err as NodeJS.ErrnoException
  if (!(err instanceof Error) || (e.syscall !== undefined && e.code !== undefined)) return { code: e.code, message: e.message }
  return pino.stdSerializers.err(err)
}

/** A side's keepalive in log form: the values kaproxy applies with setsockopt. */
export function keepaliveFields (settings: KeepaliveSettings): Record<string, unknown> {
  if (!settings.enabled) return { enabled: false, ...(settings.userTimeoutMs === undefined ? {} : { userTimeoutMs: settings.userTimeoutMs }) }
  return { enabled: true, idleSec: settings.idleSec, intervalSec: settings.intervalSec, count: settings.count, ...(settings.userTimeoutMs === undefined ? {} : { userTimeoutMs: settings.userTimeoutMs }) }
}

function connectionFields (connection: ConnectionRecord): Record<string, unknown> {
  const fields: Record<string, unknown> = { route: connection.route.name, conn: connection.id, client: connection.client, upstream: connection.upstream }
  if (connection.clientVia !== null) fields.via = connection.clientVia
  return fields
}

/**
 * Engine events as log lines: `listening`, `open`, and one `close` summary per connection with bytes
 * each way, duration and the reason. Never one line per chunk.
 */
export function loggingObserver (log: Logger): Required<EngineObserver> {
  return {
    onListening (route: RouteConfig, address: string) {
      log.info({ event: 'listening', route: route.name, address, upstream: targetsLabel(route.upstreams) }, `route ${route.name} listening on ${address}`)
    },
    // Per-connection lines build their fields only when the level writes them: at warn, a
    // connection costs the logger nothing.
    onOpen (connection: ConnectionRecord) {
      if (!log.isLevelEnabled('info')) return
      log.info({ event: 'open', ...connectionFields(connection) }, 'connection open')
    },
    onClose (connection: ConnectionRecord, summary: CloseSummary) {
      if (!log.isLevelEnabled('info')) return
      const fields: Record<string, unknown> = {
        event: 'close',
        ...connectionFields(connection),
        bytesFromClient: connection.bytesFromClient,
        bytesFromUpstream: connection.bytesFromUpstream,
        durationMs: summary.durationMs,
        reason: summary.reason,
        side: summary.side
      }
      if (summary.silenceBeforeResetMs !== null) fields.silenceBeforeResetMs = Math.round(summary.silenceBeforeResetMs)
      if (summary.error !== null) fields.err = { code: summary.error.code, message: summary.error.message }
      log.info(fields, 'connection closed')
    },
    // Told only while no per-connection line is written (see SpliceDataPlane.connectionRecords).
    onTally () {},
    onDialFailed (connection: ConnectionRecord, target: UpstreamTarget, reason: CloseReason, error: NodeJS.ErrnoException | null) {
      log.warn({ event: 'dial-failed', ...connectionFields(connection), upstream: target.label, reason, err: error === null ? undefined : { code: error.code, message: error.message } },
        `route ${connection.route.name}: connect to ${target.label} failed (${reason})`)
    },
    onUpstreamState (route: RouteConfig, target: UpstreamTarget, state: UpstreamState, reason: string) {
      log[state === 'up' ? 'info' : 'warn']({ event: 'upstream-state', route: route.name, upstream: target.label, state, reason }, `route ${route.name}: upstream ${target.label} is ${state}: ${reason}`)
    },
    onRouteError (route: RouteConfig, err: Error) {
      log.warn({ event: 'route-error', route: route.name, err }, `route ${route.name}: ${err.message}`)
    },
    onDataPlaneFailed (err: Error, failure: WorkerFailure) {
      const after = failure.workersLeft > 0 ? `${failure.workersLeft} worker(s) go on` : 'new connections relay on the net engine'
      log.error({ event: 'data-plane-failed', err, ...failure }, `the fast engine's worker ${failure.worker} failed (${err.message}): its connections were closed; ${after}`)
    },
    onRouteDrained (route: RouteConfig, summary: DrainSummary) {
      log.info({ event: 'route-drained', route: route.name, ...summary },
        `route ${route.name} stopped (${summary.reason}): ${summary.finished} connection(s) finished, ${summary.cut} closed`)
    },
    onAcceptPaused (pause: AcceptPause) {
      log.warn({ event: 'accept-paused', ...pause },
        `descriptors running out (${pause.descriptors} of ${pause.limit}, ${pause.connections} connections): accepting paused, new clients wait in the accept queue`)
    },
    onAcceptResumed (burst: AcceptBurst) {
      log.info({ event: 'accept-resumed', ...burst },
        `accepting again: paused ${burst.pauses} time(s) for ${burst.pausedMs} ms in all, ${burst.fdExhausted} connection(s) closed with fd-exhausted`)
    }
  }
}

/** Log the fast engine's data plane as started: its workers, bulk buffers and busy polling (and why, when auto). */
export function logDataPlane (log: Logger, dataPlane: KaproxyConfig['dataPlane']): void {
  const { us, auto, cpuQuota } = dataPlane.busyPoll
  const busyPoll = us === 0
    ? (cpuQuota === null ? 'off' : `off: auto, under a CPU quota of ${cpuQuota} CPU`)
    : `up to ${us} µs after each busy turn${auto ? ' (auto: no CPU quota)' : ''}`
  log.info({ event: 'data-plane', workers: dataPlane.workers, bulkBuffers: dataPlane.bulkBuffers, reportAfterMs: dataPlane.reportAfterMs, busyPollUs: us, busyPollAuto: auto, cpuQuota },
    `fast engine: ${dataPlane.workers} worker(s), ${dataPlane.bulkBuffers} bulk buffer(s) each, connections reported after ${dataPlane.reportAfterMs} ms, busy polling ${busyPoll}`)
}

/** Log each route's keepalive per side as it will be applied, and the middleboxes each side crosses. */
export function logRoutePlan (log: Logger, routes: readonly RouteConfig[]): void {
  for (const route of routes) {
    const unix = route.upstreams.filter((target) => target.kind === 'unix').length
    const upstreamPlan = unix > 0 && unix === route.upstreams.length
      ? 'not applied: unix socket upstream'
      : { ...keepaliveFields(route.keepalive.upstream), ...(unix > 0 ? { note: `not applied to the ${unix} unix socket upstream(s)` } : {}) }
    const sides: Record<Side, unknown> = { client: keepaliveFields(route.keepalive.client), upstream: upstreamPlan }
    const middleboxes: Record<Side, unknown> = {
      client: route.middleboxes.client.map((m) => ({ name: m.name, idleTimeoutSec: m.idleTimeoutSec })),
      upstream: route.middleboxes.upstream.map((m) => ({ name: m.name, idleTimeoutSec: m.idleTimeoutSec }))
    }
    log.info({
      event: 'route',
      route: route.name,
      listen: formatHostPort(route.listen),
      upstream: targetsLabel(route.upstreams),
      balance: route.balance,
      engine: route.engine,
      ...(route.engineNote === null ? {} : { engineNote: route.engineNote }),
      connectTimeoutMs: route.connectTimeoutMs,
      drainTimeoutMs: route.drainTimeoutMs,
      keepalive: sides,
      keepaliveApplyToExisting: route.keepaliveApplyToExisting,
      middleboxes
    }, `route ${route.name} keepalive`)
    if (route.engineNote !== null) log.warn({ event: 'route-engine', route: route.name, engine: route.engine, note: route.engineNote }, `route ${route.name}: ${route.engineNote}`)
  }
}

/**
 * The keepalive budget at start-up, the same findings `kaproxy check` prints: one `keepalive-budget`
 * line per warning (level warn) and per note (level info), with `route`, `side` and `kind`.
 */
export function logBudget (log: Logger, routes: readonly RouteConfig[]): void {
  for (const finding of budgetFindings(routes)) {
    const fields = { event: 'keepalive-budget', route: finding.route, side: finding.side, kind: finding.kind, severity: finding.severity }
    if (finding.severity === 'warning') log.warn(fields, formatFinding(finding))
    else log.info(fields, formatFinding(finding))
  }
}
