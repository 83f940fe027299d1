// Medians, per-repetition ratios and the markdown table of a bench run.

export interface Sample {
  rep: number
  target: string
  scenario: string
  metrics: Record<string, number | null>
  skipped?: string
}

/** Medians over repetitions for one target; null where not measured. Ratios are against `haproxy` in the same repetition. */
export interface TargetSummary {
  bulk1Gbps: number | null
  bulk1xHaproxy: number | null
  bulk8Gbps: number | null
  bulk8xHaproxy: number | null
  down1Gbps: number | null
  down1xHaproxy: number | null
  down8Gbps: number | null
  down8xHaproxy: number | null
  p50us: number | null
  p99us: number | null
  p999us: number | null
  p50AddedUs: number | null
  p99AddedUs: number | null
  p999AddedUs: number | null
  /** The relay's CPU per ping-pong round trip: what busy polling costs where it pays. */
  pingpongCpuUs: number | null
  connPerSec: number | null
  connxHaproxy: number | null
  connFailed: number | null
  cpuUsPerConn: number | null
  rssKBPerConnOpen: number | null
  rssKBPerConnIdle: number | null
  idleCpuSec: number | null
  aliveAfterIdle: number | null
  cpuSecPerGB: number | null
  cpuPerGBxHaproxy: number | null
  /** Load generator CPU as a share of one core, per scenario (median). */
  generatorCore: Record<string, number | null>
}

export interface Results {
  date: string
  command: string
  versions: Record<string, string>
  settings: Record<string, number | string>
  targets: string[]
  samples: Sample[]
  summary: Record<string, TargetSummary>
}

export function median (values: Array<number | null | undefined>): number | null {
  const xs = values.filter((x): x is number => typeof x === 'number' && Number.isFinite(x)).sort((a, b) => a - b)
  if (xs.length === 0) return null
  const mid = Math.floor(xs.length / 2)
  return xs.length % 2 === 1 ? xs[mid] as number : ((xs[mid - 1] as number) + (xs[mid] as number)) / 2
}

export function summarize (samples: Sample[], targets: string[]): Record<string, TargetSummary> {
  const reps = [...new Set(samples.map((s) => s.rep))]
  const get = (target: string, scenario: string, rep: number, metric: string): number | null =>
    samples.find((s) => s.target === target && s.scenario === scenario && s.rep === rep)?.metrics[metric] ?? null
  const perRep = (f: (rep: number) => number | null): number | null => median(reps.map(f))
  const ratio = (a: number | null, b: number | null): number | null => a === null || b === null || b === 0 ? null : a / b
  const diff = (a: number | null, b: number | null): number | null => a === null || b === null ? null : a - b
  const cpuPerGB = (target: string, rep: number): number | null => {
    // Over every bulk run measured in this repetition, both directions.
    let cpu = 0
    let bytes = 0
    for (const scenario of ['bulk1', 'bulk8', 'down1', 'down8']) {
      const c = get(target, scenario, rep, 'targetCpuSec')
      const b = get(target, scenario, rep, 'bytes')
      if (c === null || b === null) continue
      cpu += c
      bytes += b
    }
    return bytes === 0 ? null : cpu / (bytes / 1e9)
  }
  const out: Record<string, TargetSummary> = {}
  for (const t of targets) {
    const m = (scenario: string, metric: string): number | null => perRep((rep) => get(t, scenario, rep, metric))
    const vsHa = (scenario: string, metric: string): number | null => perRep((rep) => ratio(get(t, scenario, rep, metric), get('haproxy', scenario, rep, metric)))
    const added = (metric: string): number | null => perRep((rep) => diff(get(t, 'pingpong', rep, metric), get('direct', 'pingpong', rep, metric)))
    const generatorCore: Record<string, number | null> = {}
    for (const scenario of ['bulk1', 'bulk8', 'down1', 'down8', 'pingpong', 'cec']) {
      generatorCore[scenario] = perRep((rep) => ratio(get(t, scenario, rep, 'genCpuSec'), get(t, scenario, rep, 'seconds') ?? null))
    }
    out[t] = {
      bulk1Gbps: m('bulk1', 'gbps'),
      bulk1xHaproxy: vsHa('bulk1', 'gbps'),
      bulk8Gbps: m('bulk8', 'gbps'),
      bulk8xHaproxy: vsHa('bulk8', 'gbps'),
      down1Gbps: m('down1', 'gbps'),
      down1xHaproxy: vsHa('down1', 'gbps'),
      down8Gbps: m('down8', 'gbps'),
      down8xHaproxy: vsHa('down8', 'gbps'),
      p50us: m('pingpong', 'p50us'),
      p99us: m('pingpong', 'p99us'),
      p999us: m('pingpong', 'p999us'),
      p50AddedUs: added('p50us'),
      p99AddedUs: added('p99us'),
      p999AddedUs: added('p999us'),
      pingpongCpuUs: perRep((rep) => {
        const cpu = get(t, 'pingpong', rep, 'targetCpuSec')
        const rounds = get(t, 'pingpong', rep, 'rounds')
        return cpu === null || rounds === null || rounds === 0 ? null : cpu / rounds * 1e6
      }),
      connPerSec: m('cec', 'perSec'),
      connxHaproxy: vsHa('cec', 'perSec'),
      connFailed: m('cec', 'failed'),
      cpuUsPerConn: m('cec', 'cpuUsPerConn'),
      rssKBPerConnOpen: m('idle', 'rssKBPerConnOpen'),
      rssKBPerConnIdle: m('idle', 'rssKBPerConnIdle'),
      idleCpuSec: m('idle', 'idleCpuSec'),
      aliveAfterIdle: m('idle', 'aliveAfterIdle'),
      cpuSecPerGB: perRep((rep) => cpuPerGB(t, rep)),
      cpuPerGBxHaproxy: perRep((rep) => ratio(cpuPerGB(t, rep), cpuPerGB('haproxy', rep))),
      generatorCore
    }
  }
  return out
}

function f (x: number | null, digits = 2): string {
  return x === null ? '–' : x.toFixed(digits)
}

function withRatio (value: number | null, r: number | null, digits = 2): string {
  if (value === null) return '–'
  return r === null ? f(value, digits) : `${f(value, digits)} (${f(r)}×)`
}

function signed (x: number | null): string {
  return x === null ? '–' : `${x >= 0 ? '+' : ''}${x.toFixed(0)}`
}

export function toMarkdown (r: Results): string {
  const s = r.settings
  const lines: string[] = []
  lines.push(`### Results (${r.date.slice(0, 10)}; medians of ${s.reps} repetitions; (n×) = ratio to HAProxy default in the same repetition, median)`)
  lines.push('')
  lines.push('| target | upload 1 stream Gbit/s | upload 8 streams Gbit/s | download 1 stream Gbit/s | download 8 streams Gbit/s | ping-pong 64 B p50 / p99 / p99.9 µs | p99 added over direct µs | ping-pong relay CPU µs per round trip | connect-echo-close /s (32 clients) | relay CPU µs per connection | idle RSS KB/conn, after opening / after idle | idle CPU s | relay CPU s per GB |')
  lines.push('|---|---|---|---|---|---|---|---|---|---|---|---|---|')
  for (const t of r.targets) {
    const x = r.summary[t]
    if (x === undefined) continue
    lines.push(`| ${t} | ${withRatio(x.bulk1Gbps, x.bulk1xHaproxy)} | ${withRatio(x.bulk8Gbps, x.bulk8xHaproxy)} | ${withRatio(x.down1Gbps, x.down1xHaproxy)} | ${withRatio(x.down8Gbps, x.down8xHaproxy)} | ${f(x.p50us, 0)} / ${f(x.p99us, 0)} / ${f(x.p999us, 0)} | ${t === 'direct' ? '0' : signed(x.p99AddedUs)} | ${f(x.pingpongCpuUs, 1)} | ${withRatio(x.connPerSec, x.connxHaproxy, 0)} | ${f(x.cpuUsPerConn, 0)} | ${f(x.rssKBPerConnOpen)} / ${f(x.rssKBPerConnIdle)} | ${f(x.idleCpuSec)} | ${withRatio(x.cpuSecPerGB, x.cpuPerGBxHaproxy)} |`)
  }
  lines.push('')
  lines.push('Load generator CPU, share of one core (median; bulk 8 runs 8 threads, connect-echo-close 32):')
  lines.push('')
  lines.push('| target | upload 1 | upload 8 | download 1 | download 8 | ping-pong | connect-echo-close |')
  lines.push('|---|---|---|---|---|---|---|')
  for (const t of r.targets) {
    const g = r.summary[t]?.generatorCore ?? {}
    lines.push(`| ${t} | ${f(g.bulk1 ?? null)} | ${f(g.bulk8 ?? null)} | ${f(g.down1 ?? null)} | ${f(g.down8 ?? null)} | ${f(g.pingpong ?? null)} | ${f(g.cec ?? null)} |`)
  }
  const skipped = [...new Map(r.samples.filter((x) => x.skipped !== undefined).map((x) => [`${x.target} ${x.scenario}`, x.skipped])).entries()]
  if (skipped.length > 0) {
    lines.push('')
    lines.push('Not measured: ' + skipped.map(([k, why]) => `${k} (${why ?? ''})`).join('; ') + '.')
  }
  const idleChecks = r.targets.map((t) => [t, r.summary[t]?.aliveAfterIdle ?? null] as const).filter(([, a]) => a !== null)
  if (idleChecks.length > 0) lines.push('', `Idle connections still relaying after the idle period (median): ${idleChecks.map(([t, a]) => `${t} ${a ?? ''}`).join(', ')} of ${s.idleConns}.`)
  lines.push('')
  const warmUp = s.warmUpSec === undefined ? '' : `, each after ${s.warmUpSec} s of the same load unmeasured`
  lines.push(`Settings: ${s.seconds} s per upload, download, ping-pong and connect-echo-close run${warmUp}; ${s.idleConns} idle connections held ${s.idleSec} s; kaproxy --log-level ${s.logLevel}; whole run ${s.durationSec} s.`)
  lines.push('')
  lines.push('Versions: ' + Object.entries(r.versions).map(([k, v]) => `${k} ${v}`).join('; ') + '.')
  lines.push('')
  lines.push(`Command: \`${r.command}\``)
  return lines.join('\n') + '\n'
}
