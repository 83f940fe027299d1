import { spawn, type ChildProcess } from 'node:child_process'
import { writeFileSync } from 'node:fs'
import net from 'node:net'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { treePids } from './proc.js'

/** A proxy (or none) between the load generator and the upstream server. */
export interface Target {
  readonly name: string
  /** Why a scenario is not run for this target, or null when it is. */
  skip: (scenario: string) => string | null
  /** Start listening on `port`, relaying to `upstreamPort`; resolves once a connection is accepted. */
  start: (port: number, upstreamPort: number, dir: string) => Promise<Running>
}

export interface Running {
  /** The port the generator connects to. */
  readonly port: number
  /** The process whose tree is measured; null for `direct`. */
  readonly pid: number | null
  stop: () => Promise<void>
}

// Keepalive on both sides, as in the idle scenario: 60 s idle, 10 s interval, 6 probes.
const KA = { idleSec: 60, intervalSec: 10, count: 6 }

async function waitListening (port: number, child: ChildProcess, name: string): Promise<void> {
  const deadline = Date.now() + 15000
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`${name} exited with ${child.exitCode} before listening`)
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.connect({ port, host: '127.0.0.1' })
      s.on('connect', () => { s.destroy(); resolve(true) })
      s.on('error', () => { resolve(false) })
    })
    if (ok) return
    await sleep(50)
  }
  throw new Error(`${name} did not listen on ${port}`)
}

async function stopTree (child: ChildProcess): Promise<void> {
  if (child.pid === undefined || child.exitCode !== null) return
  const pids = treePids(child.pid)
  const exited = new Promise<void>((resolve) => { child.once('exit', () => { resolve() }) })
  child.kill('SIGTERM')
  const done = await Promise.race([exited.then(() => true), sleep(5000).then(() => false)])
  if (!done) child.kill('SIGKILL')
  // Forked children (socat, nginx workers) are ours too: end any that outlived their parent, by pid.
  for (const pid of pids.slice(1)) {
    try { process.kill(pid, 'SIGKILL') } catch {}
  }
}

async function launch (name: string, command: string, args: string[], port: number, dir: string): Promise<Running> {
  const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], cwd: dir })
  let output = ''
  const keep = (chunk: Buffer): void => { if (output.length < 20000) output += chunk.toString() }
  child.stdout?.on('data', keep)
  child.stderr?.on('data', keep)
  try {
    await waitListening(port, child, name)
  } catch (err) {
    await stopTree(child)
    throw new Error(`${(err as Error).message}\n${output}`)
  }
  return {
    port,
    pid: child.pid ?? null,
    stop: async () => {
      await stopTree(child)
      writeFileSync(join(dir, `${name}-${port}.log`), output)
    }
  }
}

export const direct: Target = {
  name: 'direct',
  skip: (scenario) => scenario === 'idle' ? 'no relay process to measure' : null,
  start: async (_port, upstreamPort) => ({ port: upstreamPort, pid: null, stop: async () => {} })
}

/** The fast engine's settings a target sets (dataPlane.workers, dataPlane.bulkBuffers); the defaults otherwise. */
export interface DataPlaneFlags { workers?: number | undefined, bulkBuffers?: number | undefined, busyPollUs?: number | undefined }

/** kaproxy with one engine through its CLI, as users run it (one-route mode, admin API off). */
export function kaproxy (name: string, cli: string, nodeFlags: string[], logLevel: string, engine: 'fast' | 'net' | 'auto', dataPlane: DataPlaneFlags = {}): Target {
  const ka = `${KA.idleSec}s,${KA.intervalSec}s,${KA.count}`
  return {
    name,
    skip: () => null,
    start: async (port, upstreamPort, dir) => await launch(name, process.execPath, [
      ...nodeFlags, cli, '--name', 'r', '--listen', `127.0.0.1:${port}`, '--upstream', `127.0.0.1:${upstreamPort}`,
      '--client-keepalive', ka, '--upstream-keepalive', ka, '--log-level', logLevel, '--admin-listen', '', '--engine', engine,
      ...dataPlane.workers === undefined ? [] : ['--workers', String(dataPlane.workers)],
      ...dataPlane.bulkBuffers === undefined ? [] : ['--bulk-buffers', String(dataPlane.bulkBuffers)],
      ...dataPlane.busyPollUs === undefined ? [] : ['--busy-poll-us', String(dataPlane.busyPollUs)]
    ], port, dir)
  }
}

/** HAProxy in mode tcp with its default thread count (one per CPU), optionally with `option splice-auto`. */
export function haproxy (name: string, splice: boolean): Target {
  return {
    name,
    skip: () => null,
    start: async (port, upstreamPort, dir) => {
      const file = join(dir, `${name}.cfg`)
      // The fd limit here is 20,000: HAProxy wants 2 per connection plus 2 per splice pipe.
      writeFileSync(file, `global
  maxconn 9400
${splice ? '  maxpipes 250\n' : ''}defaults
  mode tcp
  timeout connect 5s
  timeout client 1h
  timeout server 1h
${splice ? '  option splice-auto\n' : ''}listen relay
  bind 127.0.0.1:${port}
  option clitcpka
  clitcpka-idle ${KA.idleSec}s
  clitcpka-intvl ${KA.intervalSec}s
  clitcpka-cnt ${KA.count}
  option srvtcpka
  srvtcpka-idle ${KA.idleSec}s
  srvtcpka-intvl ${KA.intervalSec}s
  srvtcpka-cnt ${KA.count}
  server up 127.0.0.1:${upstreamPort}
`)
      return await launch(name, 'haproxy', ['-db', '-f', file], port, dir)
    }
  }
}

/** nginx's stream module, default worker count (auto: one per CPU). */
export const nginx: Target = {
  name: 'nginx',
  skip: () => null,
  start: async (port, upstreamPort, dir) => {
    const file = join(dir, 'nginx.conf')
    // proxy_socket_keepalive turns keepalive on towards the upstream with the system's timings
    // (nginx has no per-proxy idle/interval/count); the listener gets them through so_keepalive.
    writeFileSync(file, `load_module /usr/lib/nginx/modules/ngx_stream_module.so;
daemon off;
worker_processes auto;
worker_rlimit_nofile 20000;
pid ${join(dir, 'nginx.pid')};
error_log ${join(dir, 'nginx-error.log')} warn;
events { worker_connections 19500; }
stream {
  server {
    listen 127.0.0.1:${port} so_keepalive=${KA.idleSec}s:${KA.intervalSec}s:${KA.count};
    proxy_pass 127.0.0.1:${upstreamPort};
    proxy_socket_keepalive on;
    proxy_timeout 1h;
  }
}
`)
    return await launch('nginx', 'nginx', ['-p', dir, '-c', file], port, dir)
  }
}

/** socat forks a process per connection. */
export const socat: Target = {
  name: 'socat',
  skip: (scenario) => scenario === 'idle' ? 'a process per connection: 9,000 forks would measure fork, not relaying' : null,
  start: async (port, upstreamPort, dir) => {
    const ka = `keepalive,keepidle=${KA.idleSec},keepintvl=${KA.intervalSec},keepcnt=${KA.count}`
    return await launch('socat', 'socat', [
      `TCP-LISTEN:${port},bind=127.0.0.1,fork,reuseaddr,backlog=4096,nodelay,${ka}`,
      `TCP:127.0.0.1:${upstreamPort},nodelay,${ka}`
    ], port, dir)
  }
}
