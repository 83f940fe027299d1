// kaproxy benchmark runner: `npm run bench -- [options]`. Loopback only; Linux only.
// Every scenario runs every target, interleaved (target order rotates per repetition), each on a
// freshly started process; medians over repetitions, ratios taken within one repetition.
import { execFileSync, spawn } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { cpus, release, tmpdir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { createInterface } from 'node:readline'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { renderChart } from './chart.js'
import { treeCpuSec, treeRssBytes } from './proc.js'
import { summarize, toMarkdown, type Results, type Sample } from './report.js'
import { direct, haproxy, kaproxy, nginx, socat, type Target } from './targets.js'

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..')
const SCENARIOS = ['bulk1', 'bulk8', 'down1', 'down8', 'pingpong', 'cec', 'idle'] as const
type Scenario = typeof SCENARIOS[number]

const { values: opts } = parseArgs({
  options: {
    install: { type: 'boolean', default: false },
    reps: { type: 'string', default: '3' },
    seconds: { type: 'string', default: '5' },
    'idle-conns': { type: 'string', default: '9000' },
    'idle-sec': { type: 'string', default: '30' },
    clients: { type: 'string', default: '32' },
    targets: { type: 'string', default: 'direct,kaproxy-fast,kaproxy-net,kaproxy-net-opt-size,haproxy,haproxy-splice,nginx,socat' },
    scenarios: { type: 'string', default: SCENARIOS.join(',') },
    // Extra kaproxy builds to compare: NAME=PATH/TO/cli.js[,NODE_FLAG...][,engine=fast|net][,workers=N][,bulkBuffers=N][,busyPollUs=N] (repeatable; engine and workers auto by default).
    kaproxy: { type: 'string', multiple: true, default: [] },
    'log-level': { type: 'string', default: 'warn' },
    out: { type: 'string', default: join(ROOT, 'bench/results') },
    label: { type: 'string', default: '' },
    help: { type: 'boolean', default: false }
  }
})

if (opts.help) {
  console.log(`npm run bench -- [--install] [--reps 3] [--seconds 5] [--idle-conns 9000] [--idle-sec 30]
  [--clients 32] [--targets ${opts.targets}] [--scenarios ${SCENARIOS.join(',')}]
  [--kaproxy NAME=PATH/cli.js[,NODE_FLAG...][,engine=fast|net][,workers=N][,bulkBuffers=N][,busyPollUs=N]]... [--log-level warn] [--out bench/results] [--label NAME]
--install  apt-get install what is missing of haproxy, nginx-light + libnginx-mod-stream, socat (Debian)`)
  process.exit(0)
}

const reps = Number(opts.reps)
const seconds = Number(opts.seconds)
const idleConns = Number(opts['idle-conns'])
const idleSec = Number(opts['idle-sec'])
const clients = Number(opts.clients)
const scenarios = opts.scenarios.split(',').filter((s): s is Scenario => (SCENARIOS as readonly string[]).includes(s))

function sh (cmd: string, args: string[]): string {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim()
  } catch (err) {
    const e = err as { stdout?: string, stderr?: string }
    return `${e.stdout ?? ''}${e.stderr ?? ''}`.trim()
  }
}

function has (command: string): boolean {
  return sh('sh', ['-c', `command -v ${command}`]) !== ''
}

function install (): void {
  const wanted: string[] = []
  if (!has('haproxy')) wanted.push('haproxy')
  if (!has('nginx')) wanted.push('nginx-light')
  if (!existsSync('/usr/lib/nginx/modules/ngx_stream_module.so')) wanted.push('libnginx-mod-stream')
  if (!has('socat')) wanted.push('socat')
  if (wanted.length === 0) { console.log('install: haproxy, nginx stream module and socat are present'); return }
  console.log(`install: apt-get install ${wanted.join(' ')}`)
  execFileSync('apt-get', ['update'], { stdio: 'inherit' })
  execFileSync('apt-get', ['install', '-y', '--no-install-recommends', ...wanted], { stdio: 'inherit', env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } })
}

function firstLine (text: string): string {
  return text.split('\n')[0] ?? ''
}

function versions (): Record<string, string> {
  const gitRev = sh('git', ['-C', ROOT, 'rev-parse', '--short', 'HEAD'])
  const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string }
  return {
    kaproxy: `${pkg.version} (${gitRev}), engines fast and net`,
    node: process.version,
    haproxy: has('haproxy') ? firstLine(sh('haproxy', ['-v'])) : 'not installed',
    nginx: has('nginx') ? sh('sh', ['-c', 'nginx -v 2>&1']) : 'not installed',
    socat: has('socat') ? (/socat version [^ ]+/.exec(sh('socat', ['-V']))?.[0] ?? 'unknown') : 'not installed',
    gcc: firstLine(sh('gcc', ['--version'])),
    kernel: release(),
    cpu: `${cpus().length} × ${cpus()[0]?.model ?? 'unknown'}`
  }
}

function buildLoadgen (dir: string): string {
  const out = join(dir, 'loadgen')
  execFileSync('gcc', ['-O2', '-Wall', '-pthread', '-o', out, join(ROOT, 'bench/loadgen.c')], { stdio: 'inherit' })
  return out
}

const SHIPPED_NODE_FLAG = '--max-semi-space-size=1'

function makeTargets (): Target[] {
  const cli = join(ROOT, 'dist/cli.js')
  const logLevel = opts['log-level']
  const all = new Map<string, Target>([
    ['direct', direct],
    // As shipped: the bin, `npm start` and the Dockerfile run node with --max-semi-space-size=1.
    ['kaproxy-fast', kaproxy('kaproxy-fast', cli, [SHIPPED_NODE_FLAG], logLevel, 'fast')],
    ['kaproxy-fast-1worker', kaproxy('kaproxy-fast-1worker', cli, [SHIPPED_NODE_FLAG], logLevel, 'fast', { workers: 1 })],
    // Workers that always sleep in epoll_wait: what busy polling (dataPlane.busyPollUs) buys and costs.
    ['kaproxy-fast-no-poll', kaproxy('kaproxy-fast-no-poll', cli, [SHIPPED_NODE_FLAG], logLevel, 'fast', { busyPollUs: 0 })],
    // Every bulk flow through pipes by splice, as before bulk buffers.
    ['kaproxy-fast-splice', kaproxy('kaproxy-fast-splice', cli, [SHIPPED_NODE_FLAG], logLevel, 'fast', { bulkBuffers: 0 })],
    ['kaproxy-fast-opt-size', kaproxy('kaproxy-fast-opt-size', cli, [SHIPPED_NODE_FLAG, '--optimize-for-size'], logLevel, 'fast')],
    ['kaproxy-fast-semi16', kaproxy('kaproxy-fast-semi16', cli, [], logLevel, 'fast')],
    ['kaproxy-net', kaproxy('kaproxy-net', cli, [SHIPPED_NODE_FLAG], logLevel, 'net')],
    ['kaproxy-net-opt-size', kaproxy('kaproxy-net-opt-size', cli, [SHIPPED_NODE_FLAG, '--optimize-for-size'], logLevel, 'net')],
    ['haproxy', haproxy('haproxy', false)],
    ['haproxy-splice', haproxy('haproxy-splice', true)],
    ['nginx', nginx],
    ['socat', socat]
  ])
  for (const spec of opts.kaproxy) {
    // Only the first '=' separates the name: node flags may carry their own (--max-semi-space-size=2).
    const at = spec.indexOf('=')
    const name = at < 0 ? undefined : spec.slice(0, at)
    const rest = at < 0 ? undefined : spec.slice(at + 1)
    if (name === undefined || rest === undefined) throw new Error(`--kaproxy wants NAME=PATH[,FLAG...], got ${spec}`)
    const [path, ...parts] = rest.split(',')
    // `engine=fast|net` among the flags picks the engine (auto otherwise); the rest go to node.
    const engine = parts.find((part) => part.startsWith('engine='))?.slice('engine='.length) ?? 'auto'
    if (engine !== 'auto' && engine !== 'fast' && engine !== 'net') throw new Error(`--kaproxy ${spec}: engine must be auto, fast or net`)
    // `workers=N`, `bulkBuffers=N` and `busyPollUs=N` set those dataPlane settings (defaults otherwise).
    const setting = (key: string, min: number): number | undefined => {
      const value = parts.find((part) => part.startsWith(`${key}=`))?.slice(key.length + 1)
      if (value === undefined) return undefined
      if (!/^[0-9]+$/.test(value) || Number(value) < min) throw new Error(`--kaproxy ${spec}: ${key} must be an integer of at least ${min}`)
      return Number(value)
    }
    const dataPlane = { workers: setting('workers', 1), bulkBuffers: setting('bulkBuffers', 0), busyPollUs: setting('busyPollUs', 0) }
    const nodeFlags = parts.filter((part) => !/^(engine|workers|bulkBuffers|busyPollUs)=/.test(part))
    all.set(name, kaproxy(name, resolve(path ?? ''), nodeFlags, logLevel, engine, dataPlane))
  }
  return opts.targets.split(',').map((name) => {
    const target = all.get(name)
    if (target === undefined) throw new Error(`unknown target ${name}; known: ${[...all.keys()].join(', ')}`)
    return target
  })
}

async function runJson (loadgen: string, args: string[]): Promise<Record<string, number>> {
  const out = await new Promise<string>((resolve, reject) => {
    const child = spawn(loadgen, args, { stdio: ['ignore', 'pipe', 'inherit'] })
    let text = ''
    child.stdout.on('data', (chunk: Buffer) => { text += chunk.toString() })
    child.on('error', reject)
    child.on('exit', (code) => { code === 0 ? resolve(text) : reject(new Error(`loadgen ${args.join(' ')} exited ${code}: ${text}`)) })
  })
  return JSON.parse(out.trim().split('\n').pop() ?? '{}') as Record<string, number>
}

/** Open `count` connections and hold them; `release()` checks they still relay, then closes them. */
async function holdIdle (loadgen: string, port: number, count: number): Promise<{ opened: Record<string, number>, release: () => Promise<Record<string, number>> }> {
  const child = spawn(loadgen, ['idle', String(port), String(count)], { stdio: ['pipe', 'pipe', 'inherit'] })
  const lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]()
  const first = await lines.next()
  const opened = JSON.parse(String(first.value)) as Record<string, number>
  return {
    opened,
    release: async () => {
      child.stdin.write('close\n')
      const second = await lines.next()
      return JSON.parse(String(second.value ?? '{}')) as Record<string, number>
    }
  }
}

function cpuOf (pid: number | null): number | null {
  return pid === null ? null : treeCpuSec(pid)
}

/** The load generator's arguments for a timed scenario (all but idle). */
function loadArgs (scenario: Exclude<Scenario, 'idle'>, port: number, runSeconds: number): string[] {
  switch (scenario) {
    case 'bulk1':
    case 'bulk8':
    case 'down1':
    case 'down8':
      // bulk: client to upstream (upload); down: upstream to client (download).
      return ['bulk', String(port), scenario.endsWith('1') ? '1' : '8', String(runSeconds), scenario.startsWith('down') ? 'down' : 'up']
    case 'pingpong':
      return ['pingpong', String(port), '64', String(runSeconds)]
    case 'cec':
      return ['cec', String(port), String(clients), String(runSeconds)]
  }
}

/** Seconds of the same load every target gets, unmeasured, before a timed scenario (see runScenario). */
const WARM_UP_SECONDS = 1

async function runScenario (scenario: Scenario, loadgen: string, port: number, pid: number | null): Promise<Record<string, number | null>> {
  // Steady state is measured, as a long-running relay sees it: every target, HAProxy included,
  // first gets a second of the same load (kaproxy compiles its hot paths, in each worker, then).
  if (scenario !== 'idle') await runJson(loadgen, loadArgs(scenario, port, WARM_UP_SECONDS))
  const cpu0 = cpuOf(pid)
  const targetCpu = (): number | null => { const c = cpuOf(pid); return c === null || cpu0 === null ? null : c - cpu0 }
  switch (scenario) {
    case 'bulk1':
    case 'bulk8':
    case 'down1':
    case 'down8': {
      const r = await runJson(loadgen, loadArgs(scenario, port, seconds))
      const cpu = targetCpu()
      const gb = (r.bytes ?? 0) / 1e9
      return { gbps: r.gbps ?? null, bytes: r.bytes ?? null, seconds: r.seconds ?? null, genCpuSec: r.genCpuSec ?? null, targetCpuSec: cpu, cpuSecPerGB: cpu === null ? null : cpu / gb }
    }
    case 'pingpong': {
      const r = await runJson(loadgen, loadArgs(scenario, port, seconds))
      return { p50us: r.p50us ?? null, seconds: r.seconds ?? null, p99us: r.p99us ?? null, p999us: r.p999us ?? null, rounds: r.rounds ?? null, genCpuSec: r.genCpuSec ?? null, targetCpuSec: targetCpu() }
    }
    case 'cec': {
      const r = await runJson(loadgen, loadArgs(scenario, port, seconds))
      const cpu = targetCpu()
      const conns = r.connections ?? 0
      return { perSec: r.perSec ?? null, seconds: r.seconds ?? null, connections: conns, failed: r.failed ?? null, genCpuSec: r.genCpuSec ?? null, targetCpuSec: cpu, cpuUsPerConn: cpu === null || conns === 0 ? null : cpu / conns * 1e6 }
    }
    case 'idle': {
      if (pid === null) return {}
      // Warm the relay's code paths, then take the baseline.
      const warm = await holdIdle(loadgen, port, 200)
      await warm.release()
      await sleep(1000)
      const rss0 = treeRssBytes(pid)
      const held = await holdIdle(loadgen, port, idleConns)
      const open = held.opened.open ?? 0
      await sleep(1000)
      const rss1 = treeRssBytes(pid)
      const cpu1 = treeCpuSec(pid)
      await sleep(idleSec * 1000)
      const rss2 = treeRssBytes(pid)
      const cpu2 = treeCpuSec(pid)
      const after = await held.release()
      return {
        open,
        openFailed: held.opened.failed ?? null,
        openSeconds: held.opened.openSeconds ?? null,
        aliveAfterIdle: after.aliveAfterIdle ?? null,
        rssKBPerConnOpen: open === 0 ? null : (rss1 - rss0) / open / 1000,
        rssKBPerConnIdle: open === 0 ? null : (rss2 - rss0) / open / 1000,
        idleCpuSec: cpu2 - cpu1,
        idleSec
      }
    }
  }
}

async function main (): Promise<void> {
  if (opts.install) install()
  const work = mkdtempSync(join(tmpdir(), 'kaproxy-bench-'))
  const loadgen = buildLoadgen(work)
  const targets = makeTargets()
  const v = versions()
  console.log(Object.entries(v).map(([k, x]) => `${k}: ${x}`).join('\n'))
  if (targets.some((t) => t.name.startsWith('kaproxy')) && !existsSync(join(ROOT, 'dist/cli.js'))) throw new Error('run npm run build first')

  const upstreamPort = 20999
  const upstream = spawn(loadgen, ['server', String(upstreamPort)], { stdio: ['ignore', 'pipe', 'inherit'] })
  await new Promise<void>((resolve) => { upstream.stdout.once('data', () => { resolve() }) })
  process.on('exit', () => { upstream.kill() })

  const samples: Sample[] = []
  let port = 21000
  const started = Date.now()
  try {
    for (let rep = 1; rep <= reps; rep++) {
      for (const scenario of scenarios) {
        // Interleave: rotate the target order each repetition.
        const order = targets.map((_, i) => targets[(i + rep - 1) % targets.length] as Target)
        for (const target of order) {
          const skipped = target.skip(scenario)
          if (skipped !== null) { samples.push({ rep, target: target.name, scenario, metrics: {}, skipped }); continue }
          const running = await target.start(port++, upstreamPort, work)
          try {
            await sleep(300)
            const metrics = await runScenario(scenario, loadgen, running.port, running.pid)
            samples.push({ rep, target: target.name, scenario, metrics })
            console.log(`rep ${rep} ${scenario} ${target.name}: ${JSON.stringify(metrics)}`)
          } finally {
            await running.stop()
          }
        }
      }
    }
  } finally {
    upstream.kill()
  }

  const results: Results = {
    date: new Date().toISOString(),
    command: `npm run bench -- ${process.argv.slice(2).join(' ')}`.trim(),
    versions: v,
    settings: { reps, seconds, warmUpSec: WARM_UP_SECONDS, idleConns, idleSec, clients, logLevel: opts['log-level'], durationSec: Math.round((Date.now() - started) / 1000) },
    targets: targets.map((t) => t.name),
    samples,
    summary: summarize(samples, targets.map((t) => t.name))
  }
  mkdirSync(opts.out, { recursive: true })
  const stamp = opts.label !== '' ? opts.label : results.date.replace(/[:.]/g, '-')
  const base = join(opts.out, stamp)
  writeFileSync(`${base}.json`, JSON.stringify(results, null, 2) + '\n')
  writeFileSync(`${base}.svg`, renderChart(results))
  const md = toMarkdown(results)
  writeFileSync(`${base}.md`, md)
  console.log('\n' + md)
  console.log(`results: ${base}.json, ${base}.md, ${base}.svg`)
}

await main()
