import { budgetFindings, formatFinding, routeBudget, type SideBudget } from './budget/budget.js'
import type { Middlebox } from './budget/middleboxes.js'
import { formatDuration, formatHostPort } from './config/formats.js'
import { SIDES, type KaproxyConfig, type RouteConfig, type Side } from './config/types.js'
import { detectionSeconds, type KeepaliveSettings } from './keepalive.js'
import { targetsLabel } from './upstream/target.js'

/** One side in `check --json`; every duration in seconds. */
export interface SideReport {
  enabled: boolean
  idle: number | null
  interval: number | null
  count: number | null
  userTimeout: number | null
  /** Worst case from the last byte received to a silent peer being dropped; null with keepalive off. */
  detectionSeconds: number | null
  middleboxes: Array<{ name: string, idleTimeout: number }>
  /** limit: smallest middlebox timeout; margin: limit - idle; both null without middleboxes (margin also with keepalive off). */
  budget: { limit: number | null, margin: number | null, ok: boolean }
}

/** `kaproxy check --json`: exactly `{ routes: [{ name, client, upstream }], warnings }`. */
export interface CheckReport {
  routes: Array<{ name: string } & Record<Side, SideReport>>
  /** Each warning as `route NAME, SIDE: sentence`; notes are not warnings and are not listed. */
  warnings: string[]
}

function sideReport (settings: KeepaliveSettings, middleboxes: readonly Middlebox[], budget: SideBudget): SideReport {
  return {
    enabled: settings.enabled,
    idle: settings.enabled ? settings.idleSec : null,
    interval: settings.enabled ? settings.intervalSec : null,
    count: settings.enabled ? settings.count : null,
    userTimeout: settings.userTimeoutMs === undefined ? null : settings.userTimeoutMs / 1000,
    detectionSeconds: detectionSeconds(settings),
    middleboxes: middleboxes.map((m) => ({ name: m.name, idleTimeout: m.idleTimeoutSec })),
    budget: { limit: budget.limitSec, margin: budget.marginSec, ok: budget.ok }
  }
}

/** The effective settings and keepalive budget of every route, as `kaproxy check --json` prints them. */
export function checkReport (config: KaproxyConfig): CheckReport {
  return {
    routes: config.routes.map((route) => {
      const budget = routeBudget(route)
      return {
        name: route.name,
        client: sideReport(route.keepalive.client, route.middleboxes.client, budget.client),
        upstream: sideReport(route.keepalive.upstream, route.middleboxes.upstream, budget.upstream)
      }
    }),
    warnings: budgetFindings(config.routes).filter((f) => f.severity === 'warning').map(formatFinding)
  }
}

/** Does any side of any route have a warning (what `check --strict` exits 1 on)? */
export function hasBudgetWarnings (config: KaproxyConfig): boolean {
  return budgetFindings(config.routes).some((f) => f.severity === 'warning')
}

function sideLine (side: Side, settings: KeepaliveSettings): string {
  const userTimeout = settings.userTimeoutMs === undefined ? 'kernel default' : formatDuration(settings.userTimeoutMs)
  if (!settings.enabled) return `  ${side.padEnd(9)} keepalive off                                  userTimeout ${userTimeout}`
  const detect = detectionSeconds(settings) ?? 0
  return `  ${side.padEnd(9)} keepalive on  idle ${formatDuration(settings.idleSec * 1000).padEnd(6)} interval ${formatDuration(settings.intervalSec * 1000).padEnd(5)} count ${String(settings.count).padEnd(4)}` +
    ` userTimeout ${userTimeout.padEnd(15)} dead peer noticed within ${formatDuration(detect * 1000)}`
}

function budgetLine (route: RouteConfig, side: Side, budget: SideBudget): string {
  const middleboxes = route.middleboxes[side]
  const indent = ' '.repeat(12)
  if (middleboxes.length === 0) return `${indent}no middleboxes declared`
  const list = middleboxes.map((m) => `${m.name} ${m.idleTimeoutSec}s`).join(', ')
  const auto = route.idleAuto[side] && route.keepalive[side].enabled ? ` (idle auto: half of ${budget.limitSec ?? 0}s)` : ''
  const margin = budget.marginSec === null ? '' : `  margin ${budget.marginSec}s`
  const verdict = budget.warning !== null ? 'WARNING' : budget.note !== null ? 'ok, see note' : 'ok'
  return `${indent}middleboxes ${list}  limit ${budget.limitSec ?? 0}s${margin}${auto}  ${verdict}`
}

/** The readable form of `check`: each route with both sides' keepalive and budget, then warnings and notes. */
export function formatCheckReport (config: KaproxyConfig): string {
  const lines = [`${config.routes.length} route(s); log level ${config.log.level}; admin ${config.admin.listen === null ? 'disabled' : formatHostPort(config.admin.listen)}`]
  for (const route of config.routes) {
    lines.push('', `route ${route.name}: ${formatHostPort(route.listen)} -> ${targetsLabel(route.upstreams)} (connect timeout ${formatDuration(route.connectTimeoutMs)}, engine ${route.engine})`)
    if (route.engineNote !== null) lines.push(`  note: ${route.engineNote}`)
    const budget = routeBudget(route)
    for (const side of SIDES) lines.push(sideLine(side, route.keepalive[side]), budgetLine(route, side, budget[side]))
    if (route.upstreams.length > 1 || route.healthCheck !== null) {
      const health = route.healthCheck === null ? 'passive ejection only' : `${route.healthCheck.type} health checks every ${formatDuration(route.healthCheck.intervalMs)}`
      lines.push(`  pool      ${route.upstreams.length} upstream(s), ${route.balance}, ${route.retries} retries, ${health}`)
    }
    if (route.originalDst !== null) {
      const allow = route.originalDst.allow === null ? 'any destination (the loop guard still applies)' : route.originalDst.allow.map((rule) => rule.text).join(', ')
      lines.push(`  transparent: each connection goes to its original destination (SO_ORIGINAL_DST); allowed: ${allow}`)
      for (const destination of route.originalDst.destinations) {
        const k = destination.keepalive
        lines.push(`            ${destination.match.text}: upstream keepalive ${k.enabled ? `idle ${formatDuration(k.idleSec * 1000)} interval ${formatDuration(k.intervalSec * 1000)} count ${k.count}` : 'off'}${k.userTimeoutMs === undefined ? '' : ` userTimeout ${formatDuration(k.userTimeoutMs)}`}`)
      }
    }
    if (route.socketMark !== null) lines.push(`  socket mark 0x${route.socketMark.toString(16)} on upstream sockets (SO_MARK)`)
    for (const target of route.upstreams) {
      if (target.kind === 'unix') lines.push(`  note      upstream keepalive does not apply to the unix socket ${target.label}`)
    }
  }
  const findings = budgetFindings(config.routes)
  const warnings = findings.filter((f) => f.severity === 'warning')
  const notes = findings.filter((f) => f.severity === 'note')
  if (warnings.length > 0) lines.push('', 'warnings:', ...warnings.map((f) => `  ${formatFinding(f)}`))
  if (notes.length > 0) lines.push('', 'notes:', ...notes.map((f) => `  ${formatFinding(f)}`))
  return lines.join('\n')
}
