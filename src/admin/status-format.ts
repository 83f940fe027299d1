import { formatDuration } from '../config/formats.js'
import type { KeepaliveReading } from '../keepalive.js'
import type { StatsSnapshot } from './metrics.js'
import type { ConnectionsView, RouteView, SideConfigView, SideView } from './views.js'

/** What `kaproxy status` fetches: /routes, /stats and /connections. */
export interface StatusSnapshot {
  admin: string
  routes: { ready: boolean, routes: RouteView[] }
  stats: StatsSnapshot
  connections: ConnectionsView
}

/** `1.2 KiB`; bytes below 1024 as `512 B`. */
export function formatBytes (n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB']
  let value = n
  let unit = 0
  while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit++ }
  return unit === 0 ? `${value} B` : `${value.toFixed(value < 10 ? 2 : 1)} ${units[unit] ?? ''}`
}

/** A compact age: `850ms`, `4.2s`, `42s`, `3m07s`, `5h02m`, `3d04h`. */
export function formatAge (ms: number): string {
  if (ms < 1000) return `${ms}ms`
  const s = Math.floor(ms / 1000)
  if (s < 60) return `${(ms / 1000).toFixed(s < 10 ? 1 : 0)}s`
  const m = Math.floor(s / 60)
  if (m < 60) return `${m}m${String(s % 60).padStart(2, '0')}s`
  const h = Math.floor(m / 60)
  if (h < 48) return `${h}h${String(m % 60).padStart(2, '0')}m`
  return `${Math.floor(h / 24)}d${String(h % 24).padStart(2, '0')}h`
}

function seconds (sec: number | null): string {
  return sec === null ? '?' : formatDuration(sec * 1000)
}

/** `30s/5s/4` (idle/interval/count, as a config file would write them), ` ut 50s` with a user timeout; `off`. */
export function formatKeepalive (k: SideConfigView | KeepaliveReading): string {
  const userTimeout = k.userTimeoutMs === null || k.userTimeoutMs === 0 ? '' : ` ut ${formatDuration(k.userTimeoutMs)}`
  if (!k.enabled) return `off${userTimeout}`
  return `${seconds(k.idleSec)}/${seconds(k.intervalSec)}/${k.count ?? '?'}${userTimeout}`
}

/** Columns padded to the widest cell; numeric columns (`right`) aligned right. */
export function formatTable (headers: readonly string[], rows: ReadonlyArray<readonly string[]>, right: ReadonlySet<number> = new Set()): string {
  const widths = headers.map((header, i) => Math.max(header.length, ...rows.map((row) => (row[i] ?? '').length)))
  const line = (cells: readonly string[]): string => cells.map((cell, i) => {
    const width = widths[i] ?? 0
    if (i === cells.length - 1 && !right.has(i)) return cell
    return right.has(i) ? cell.padStart(width) : cell.padEnd(width)
  }).join('  ')
  return [line(headers), ...rows.map(line)].join('\n')
}

function sideCells (side: SideView): string[] {
  if (side.error !== null || side.keepalive === null) return [side.error === null ? '-' : 'n/a', '', '']
  const info = side.tcpInfo
  return [formatKeepalive(side.keepalive), info === null ? '' : String(info.probes), info === null ? '' : formatAge(info.lastDataRecvMs)]
}

/** The readable form of `kaproxy status`: a header line, the routes, the live connections. */
export function formatStatus (s: StatusSnapshot): string {
  const ready = s.stats.ready ? 'ready' : 'NOT READY'
  const lines = [`kaproxy admin ${s.admin}  ${ready}  up ${formatAge(s.stats.uptimeSec * 1000)}`, '']
  const stats = new Map(s.stats.routes.map((route) => [route.name, route]))
  lines.push(formatTable(
    ['ROUTE', 'LISTEN', 'UPSTREAM', 'CLIENT KEEPALIVE', 'UPSTREAM KEEPALIVE', 'ACTIVE', 'TOTAL', 'FROM CLIENT', 'FROM UPSTREAM'],
    s.routes.routes.map((route) => {
      const r = stats.get(route.name)
      const upstream = route.upstreams.length === 0 ? route.upstream : route.upstreams.map((u) => `${u.target}${u.state === 'down' ? ' (down)' : ''}`).join(',')
      return [route.name, route.address ?? `${route.listen} (not listening)`, upstream,
        formatKeepalive(route.keepalive.client), formatKeepalive(route.keepalive.upstream),
        String(r?.active ?? 0), String(r?.connectionsTotal ?? 0), formatBytes(r?.bytesFromClient ?? 0), formatBytes(r?.bytesFromUpstream ?? 0)]
    }),
    new Set([5, 6, 7, 8])))
  lines.push('')
  const { connections, total } = s.connections
  if (total === 0) {
    lines.push('no live connections')
  } else {
    if (total > connections.length) lines.push(`live connections: showing ${connections.length} of ${total} (oldest first; --limit N for more)`)
    lines.push(formatTable(
      ['ID', 'ROUTE', 'CLIENT', 'UPSTREAM', 'AGE', 'FROM CLIENT', 'FROM UPSTREAM', 'CLIENT KA', 'PROBES', 'LAST RECV', 'UPSTREAM KA', 'PROBES', 'LAST RECV'],
      connections.map((c) => [String(c.id), c.route, c.client, c.upstream, formatAge(c.ageMs), formatBytes(c.bytesFromClient), formatBytes(c.bytesFromUpstream),
        ...sideCells(c.sides.client), ...sideCells(c.sides.upstream)]),
      new Set([0, 4, 5, 6, 8, 9, 11, 12])))
    lines.push('', 'KA: keepalive idle/interval/count read back with getsockopt; PROBES, LAST RECV: TCP_INFO (unanswered keepalive probes, time since data was received)')
  }
  return lines.join('\n')
}
