// One SVG with a small bar chart per metric, so a reader can compare the targets at a glance.
// Standalone: node build/bench/chart.js RESULTS.json OUT.svg
import { readFileSync, writeFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import type { Results, TargetSummary } from './report.js'

interface Panel { title: string, unit: string, better: 'higher' | 'lower', value: (s: TargetSummary) => number | null, digits: number }

const PANELS: Panel[] = [
  { title: 'Upload (client to upstream), 1 stream', unit: 'Gbit/s', better: 'higher', value: (s) => s.bulk1Gbps, digits: 1 },
  { title: 'Upload (client to upstream), 8 streams', unit: 'Gbit/s', better: 'higher', value: (s) => s.bulk8Gbps, digits: 1 },
  { title: 'Download (upstream to client), 1 stream', unit: 'Gbit/s', better: 'higher', value: (s) => s.down1Gbps, digits: 1 },
  { title: 'Download (upstream to client), 8 streams', unit: 'Gbit/s', better: 'higher', value: (s) => s.down8Gbps, digits: 1 },
  { title: 'Ping-pong 64 B, p99 round trip', unit: 'µs', better: 'lower', value: (s) => s.p99us, digits: 0 },
  { title: 'Connect-echo-close, 32 clients', unit: 'connections/s', better: 'higher', value: (s) => s.connPerSec, digits: 0 },
  { title: 'Relay CPU per connection', unit: 'µs', better: 'lower', value: (s) => s.cpuUsPerConn, digits: 0 },
  { title: 'Relay CPU per GB relayed', unit: 's', better: 'lower', value: (s) => s.cpuSecPerGB, digits: 2 },
  { title: 'Idle RSS per connection, after opening', unit: 'KB', better: 'lower', value: (s) => s.rssKBPerConnOpen, digits: 2 },
  { title: 'Idle RSS per connection, after the idle period', unit: 'KB', better: 'lower', value: (s) => s.rssKBPerConnIdle, digits: 2 }
]

const COLORS: Record<string, string> = {
  direct: '#9e9e9e',
  haproxy: '#1f77b4',
  'haproxy-splice': '#6baed6',
  nginx: '#2ca02c',
  socat: '#8c564b'
}

function colorOf (target: string): string {
  return COLORS[target] ?? (target.startsWith('kaproxy') ? (target === 'kaproxy-fast' ? '#d62728' : target.startsWith('kaproxy-fast') ? '#e377c2' : '#ff7f0e') : '#9467bd')
}

function esc (s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;')
}

export function renderChart (r: Results): string {
  const targets = r.targets
  const barH = 18
  const gap = 4
  const labelW = 130
  const plotW = 260
  const panelW = labelW + plotW + 70
  const panelH = 44 + targets.length * (barH + gap)
  const cols = 2
  const rows = Math.ceil(PANELS.length / cols)
  const header = 56
  const width = cols * panelW + 20
  const height = header + rows * (panelH + 16) + 10
  const out: string[] = []
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="12">`)
  out.push(`<rect width="100%" height="100%" fill="#fff"/>`)
  out.push(`<text x="10" y="22" font-size="16" font-weight="bold">kaproxy bench: medians of ${esc(String(r.settings.reps))} interleaved repetitions on loopback</text>`)
  out.push(`<text x="10" y="42" fill="#555">${esc(r.date.slice(0, 10))} · ${esc(r.versions.cpu ?? '')} · node ${esc(r.versions.node ?? '')} · ${esc(r.versions.haproxy?.split(' - ')[0] ?? '')}</text>`)
  PANELS.forEach((panel, i) => {
    const x0 = 10 + (i % cols) * panelW
    const y0 = header + Math.floor(i / cols) * (panelH + 16)
    const values = targets.map((t) => { const s = r.summary[t]; return s === undefined ? null : panel.value(s) })
    const max = Math.max(...values.filter((v): v is number => v !== null), 0)
    out.push(`<text x="${x0}" y="${y0 + 14}" font-weight="bold">${esc(panel.title)}</text>`)
    out.push(`<text x="${x0}" y="${y0 + 30}" fill="#555">${esc(panel.unit)}, ${panel.better} is better</text>`)
    targets.forEach((t, j) => {
      const y = y0 + 40 + j * (barH + gap)
      const v = values[j] ?? null
      out.push(`<text x="${x0 + labelW - 6}" y="${y + barH - 5}" text-anchor="end">${esc(t)}</text>`)
      if (v === null) {
        out.push(`<text x="${x0 + labelW + 4}" y="${y + barH - 5}" fill="#999">not measured</text>`)
        return
      }
      const w = max > 0 ? Math.max(1, (v / max) * plotW) : 1
      out.push(`<rect x="${x0 + labelW}" y="${y}" width="${w.toFixed(1)}" height="${barH}" fill="${colorOf(t)}"/>`)
      out.push(`<text x="${(x0 + labelW + w + 4).toFixed(1)}" y="${y + barH - 5}">${v.toFixed(panel.digits)}</text>`)
    })
  })
  out.push('</svg>')
  return out.join('\n') + '\n'
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const [input, output] = process.argv.slice(2)
  if (input === undefined || output === undefined) {
    console.error('usage: node build/bench/chart.js RESULTS.json OUT.svg')
    process.exit(2)
  }
  writeFileSync(output, renderChart(JSON.parse(readFileSync(input, 'utf8')) as Results))
}
