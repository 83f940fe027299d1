import { formatDuration, formatHostPort } from './config/formats.js'
import { SIDES, type KaproxyConfig, type Side } from './config/types.js'
import { detectionSeconds, type KeepaliveSettings } from './keepalive.js'
import { targetsLabel } from './upstream/target.js'

/** One side in `check --json`; durations in seconds. */
export interface SideReport {
  enabled: boolean
  idle: number | null
  interval: number | null
  count: number | null
  userTimeout: number | null
  detectionSeconds: number | null
}

export interface CheckReport {
  routes: Array<{ name: string } & Record<Side, SideReport>>
  warnings: string[]
}

function sideReport (settings: KeepaliveSettings): SideReport {
  return {
    enabled: settings.enabled,
    idle: settings.enabled ? settings.idleSec : null,
    interval: settings.enabled ? settings.intervalSec : null,
    count: settings.enabled ? settings.count : null,
    userTimeout: settings.userTimeoutMs === undefined ? null : settings.userTimeoutMs / 1000,
    detectionSeconds: detectionSeconds(settings)
  }
}

/** The effective settings of every route, as `kaproxy check --json` prints them. */
export function checkReport (config: KaproxyConfig): CheckReport {
  return {
    routes: config.routes.map((route) => ({
      name: route.name,
      client: sideReport(route.keepalive.client),
      upstream: sideReport(route.keepalive.upstream)
    })),
    warnings: []
  }
}

function sideLine (side: Side, settings: KeepaliveSettings): string {
  const userTimeout = settings.userTimeoutMs === undefined ? 'kernel default' : formatDuration(settings.userTimeoutMs)
  if (!settings.enabled) return `  ${side.padEnd(9)} keepalive off                                  userTimeout ${userTimeout}`
  const detect = detectionSeconds(settings) ?? 0
  return `  ${side.padEnd(9)} keepalive on  idle ${formatDuration(settings.idleSec * 1000).padEnd(6)} interval ${formatDuration(settings.intervalSec * 1000).padEnd(5)} count ${String(settings.count).padEnd(4)}` +
    ` userTimeout ${userTimeout.padEnd(15)} dead peer noticed within ${formatDuration(detect * 1000)}`
}

/** The readable form of `check`: each route with both sides' resolved keepalive. */
export function formatCheckReport (config: KaproxyConfig): string {
  const lines = [`${config.routes.length} route(s); log level ${config.log.level}; admin ${config.admin.listen === null ? 'disabled' : formatHostPort(config.admin.listen)}`]
  for (const route of config.routes) {
    lines.push('', `route ${route.name}: ${formatHostPort(route.listen)} -> ${targetsLabel(route.upstreams)} (connect timeout ${formatDuration(route.connectTimeoutMs)})`)
    for (const side of SIDES) lines.push(sideLine(side, route.keepalive[side]))
    if (route.upstreams.length > 1 || route.healthCheck !== null) {
      const health = route.healthCheck === null ? 'passive ejection only' : `${route.healthCheck.type} health checks every ${formatDuration(route.healthCheck.intervalMs)}`
      lines.push(`  pool      ${route.upstreams.length} upstream(s), ${route.balance}, ${route.retries} retries, ${health}`)
    }
    for (const target of route.upstreams) {
      if (target.kind === 'unix') lines.push(`  note      upstream keepalive does not apply to the unix socket ${target.label}`)
    }
  }
  return lines.join('\n')
}
