// The network-namespace lab: client — nat — server, joined by veth pairs, with the nat namespace
// masquerading with a short conntrack timeout, nf_conntrack_tcp_loose=0 and INVALID drops, so an idle
// flow is forgotten and its later packets are dropped (see /work/shared/NETLAB.md).
//
//   client 10.200.1.2 [vc] ==== [vnc] 10.200.1.1  nat  10.200.2.1 [vns] ==== [vs] 10.200.2.2 server
//
// The server has no route back to the client: replies only flow through the NAT mapping.
import { chmodSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { run, runSync } from './exec.js'
import type { ExecResult } from './exec.js'
import { LabProcess } from './proc.js'

export type Role = 'client' | 'nat' | 'server'
export const ROLES: readonly Role[] = ['client', 'nat', 'server']

/** Addresses of the lab (the same in every lab: each lab has its own namespaces). */
export const ADDR = {
  client: '10.200.1.2',
  natClientSide: '10.200.1.1',
  natServerSide: '10.200.2.1',
  server: '10.200.2.2'
} as const

/** IPv6 addresses of a lab made with `ipv6: true` (same layout, masqueraded the same way). */
export const ADDR6 = {
  client: 'fd00:200:1::2',
  natClientSide: 'fd00:200:1::1',
  natServerSide: 'fd00:200:2::1',
  server: 'fd00:200:2::2'
} as const

/**
 * Prefix of every namespace and interface this test process creates: `ka` + pid mod 10000 (4 digits) + `-`.
 * Lab n of the run uses `${RUN_PREFIX}${n}` + a role letter; the longest name, `ka1234-12vnc`, fits the
 * 15-character interface name limit.
 */
export const RUN_PREFIX = `ka${String(process.pid % 10_000).padStart(4, '0')}-`

export interface LabOptions {
  /** nf_conntrack_tcp_timeout_established in the nat namespace, in seconds; default 3. */
  conntrackEstablishedSec?: number
  /**
   * Also give every end an IPv6 address (ADDR6), route and masquerade IPv6 the same way, with the same
   * INVALID drops; default false.
   */
  ipv6?: boolean
  /**
   * What the nat does with a packet of a flow it no longer knows (`ctstate INVALID`) in FORWARD:
   * `drop` it (the default; home routers and NAT gateways), or `reject` it with a TCP reset to its
   * sender, as cloud load balancers do. INPUT always drops.
   */
  invalid?: 'drop' | 'reject'
}

/** One parsed line of `conntrack -L` (TCP only). */
export interface ConntrackEntry {
  /** Seconds left before the entry expires. */
  timeoutSec: number
  state: string
  orig: { src: string, dst: string, sport: number, dport: number }
  reply: { src: string, dst: string, sport: number, dport: number }
  assured: boolean
  line: string
}

/** Packet counters of the `ctstate INVALID` DROP rules in the nat namespace. */
export interface InvalidDrops {
  forward: number
  input: number
}

const liveLabs = new Set<Lab>()
const everySpawned = new Set<LabProcess>()
let labCounter = 0
let handlersInstalled = false

function installProcessHandlers (): void {
  if (handlersInstalled) return
  handlersInstalled = true
  // Last resort: whatever a failing or interrupted test left, remove it before the process goes.
  process.on('exit', destroyAllSync)
  for (const [signal, number] of [['SIGINT', 2], ['SIGTERM', 15], ['SIGHUP', 1]] as const) {
    process.once(signal, () => {
      destroyAllSync()
      process.exit(128 + number)
    })
  }
}

/** Synchronously tear down every lab this process still has (for exit and signal handlers). */
export function destroyAllSync (): void {
  for (const lab of [...liveLabs]) lab.destroySync()
}

export class Lab {
  readonly id: string
  readonly ns: Readonly<Record<Role, string>>
  /** Interface names: `client` and `server` are the outer ends, `natClient`/`natServer` the nat's ends. */
  readonly ifaces: { client: string, natClient: string, natServer: string, server: string }
  readonly conntrackEstablishedSec: number
  readonly ipv6: boolean
  readonly invalid: 'drop' | 'reject'
  private readonly procs = new Set<LabProcess>()
  private tempDir: string | undefined
  private destroying: Promise<void> | undefined
  private createdNs: string[] = []

  private constructor (options: LabOptions) {
    this.id = `${RUN_PREFIX}${labCounter++}`
    this.ns = { client: `${this.id}c`, nat: `${this.id}n`, server: `${this.id}s` }
    this.ifaces = { client: `${this.id}vc`, natClient: `${this.id}vnc`, natServer: `${this.id}vns`, server: `${this.id}vs` }
    this.conntrackEstablishedSec = options.conntrackEstablishedSec ?? 3
    this.ipv6 = options.ipv6 ?? false
    this.invalid = options.invalid ?? 'drop'
  }

  /** Build a fresh lab; on any failure what was built is removed and the error is thrown. */
  static async create (options: LabOptions = {}): Promise<Lab> {
    installProcessHandlers()
    const lab = new Lab(options)
    liveLabs.add(lab)
    try {
      await lab.build()
    } catch (err) {
      await lab.destroy()
      throw err
    }
    return lab
  }

  private async build (): Promise<void> {
    const { ns, ifaces: i } = this
    for (const role of ROLES) {
      await run('ip', ['netns', 'add', ns[role]])
      this.createdNs.push(ns[role])
    }
    // Create each veth pair directly in its namespaces: nothing of the lab ever sits in the root namespace.
    await run('ip', ['link', 'add', i.client, 'netns', ns.client, 'type', 'veth', 'peer', 'name', i.natClient, 'netns', ns.nat])
    await run('ip', ['link', 'add', i.server, 'netns', ns.server, 'type', 'veth', 'peer', 'name', i.natServer, 'netns', ns.nat])
    await run('ip', ['-n', ns.client, 'addr', 'add', `${ADDR.client}/24`, 'dev', i.client])
    await run('ip', ['-n', ns.nat, 'addr', 'add', `${ADDR.natClientSide}/24`, 'dev', i.natClient])
    await run('ip', ['-n', ns.nat, 'addr', 'add', `${ADDR.natServerSide}/24`, 'dev', i.natServer])
    await run('ip', ['-n', ns.server, 'addr', 'add', `${ADDR.server}/24`, 'dev', i.server])
    for (const [role, dev] of [['client', i.client], ['nat', i.natClient], ['nat', i.natServer], ['server', i.server]] as const) {
      await run('ip', ['-n', ns[role], 'link', 'set', dev, 'up'])
    }
    for (const role of ROLES) await run('ip', ['-n', ns[role], 'link', 'set', 'lo', 'up'])
    await run('ip', ['-n', ns.client, 'route', 'add', 'default', 'via', ADDR.natClientSide])
    await this.exec('nat', 'sysctl', ['-qw', 'net.ipv4.ip_forward=1'])
    await this.exec('nat', 'iptables', ['-t', 'nat', '-A', 'POSTROUTING', '-o', i.natServer, '-j', 'MASQUERADE'])
    await this.exec('nat', 'iptables', ['-A', 'FORWARD', '-m', 'conntrack', '--ctstate', 'INVALID', ...this.invalidTarget()])
    await this.exec('nat', 'iptables', ['-A', 'INPUT', '-m', 'conntrack', '--ctstate', 'INVALID', '-j', 'DROP'])
    // Per-namespace sysctls: a new namespace starts with established=432000 and loose=1, and loose=1
    // re-adopts a forgotten flow mid-stream, which hides the NAT-idle failure.
    await this.exec('nat', 'sysctl', ['-qw', `net.netfilter.nf_conntrack_tcp_timeout_established=${this.conntrackEstablishedSec}`])
    await this.exec('nat', 'sysctl', ['-qw', 'net.netfilter.nf_conntrack_tcp_loose=0'])
    if (this.ipv6) await this.buildIpv6()
  }

  /**
   * The FORWARD target for packets of forgotten flows (the same words for iptables and ip6tables).
   * A tcp-reset answer needs `-p tcp` (iptables refuses it otherwise); the lab carries only TCP anyway.
   */
  private invalidTarget (): string[] {
    return this.invalid === 'reject' ? ['-p', 'tcp', '-j', 'REJECT', '--reject-with', 'tcp-reset'] : ['-j', 'DROP']
  }

  private async buildIpv6 (): Promise<void> {
    const { ns, ifaces: i } = this
    // nodad: the addresses are usable at once instead of after duplicate address detection.
    for (const [role, dev, address] of [['client', i.client, ADDR6.client], ['nat', i.natClient, ADDR6.natClientSide],
      ['nat', i.natServer, ADDR6.natServerSide], ['server', i.server, ADDR6.server]] as const) {
      await run('ip', ['-n', ns[role], '-6', 'addr', 'add', `${address}/64`, 'dev', dev, 'nodad'])
    }
    await run('ip', ['-n', ns.client, '-6', 'route', 'add', 'default', 'via', ADDR6.natClientSide])
    await this.exec('nat', 'sysctl', ['-qw', 'net.ipv6.conf.all.forwarding=1'])
    await this.exec('nat', 'ip6tables', ['-t', 'nat', '-A', 'POSTROUTING', '-o', i.natServer, '-j', 'MASQUERADE'])
    await this.exec('nat', 'ip6tables', ['-A', 'FORWARD', '-m', 'conntrack', '--ctstate', 'INVALID', ...this.invalidTarget()])
    await this.exec('nat', 'ip6tables', ['-A', 'INPUT', '-m', 'conntrack', '--ctstate', 'INVALID', '-j', 'DROP'])
  }

  /**
   * Write a file into this lab's own temporary directory (world-readable, so processes run as another
   * uid can read it) and return its path. The directory is removed on destroy().
   */
  writeFile (name: string, text: string): string {
    if (this.tempDir === undefined) {
      this.tempDir = mkdtempSync(join(tmpdir(), `${this.id}-`))
      chmodSync(this.tempDir, 0o755)
    }
    const file = join(this.tempDir, name)
    writeFileSync(file, text, { mode: 0o644 })
    return file
  }

  /** Run a command inside a namespace of the lab and resolve with its output (rejects on non-zero exit). */
  async exec (role: Role, cmd: string, args: readonly string[] = [], timeoutMs = 10_000): Promise<ExecResult> {
    return await run('ip', ['netns', 'exec', this.ns[role], cmd, ...args], timeoutMs)
  }

  /** Start a long-running command inside a namespace; it is killed on destroy(). */
  spawn (role: Role, cmd: string, args: readonly string[] = [], label = `${role}:${cmd}`): LabProcess {
    if (this.destroying !== undefined) throw new Error(`lab ${this.id} is being destroyed`)
    const proc = new LabProcess(label, 'ip', ['netns', 'exec', this.ns[role], cmd, ...args])
    this.procs.add(proc)
    everySpawned.add(proc)
    return proc
  }

  /** Start `node script args` inside a namespace with this test's node binary. */
  node (role: Role, script: string, args: readonly string[] = [], label = `${role}:node`): LabProcess {
    return this.spawn(role, process.execPath, [script, ...args], label)
  }

  /**
   * Blackhole a host: from now on the nat drops every forwarded packet from or to it (`'client'` or
   * `'server'`), or every forwarded packet at all (`'all'`). Resolves with a function that lifts it.
   */
  async blackhole (target: 'client' | 'server' | 'all'): Promise<() => Promise<void>> {
    const rules: string[][] = target === 'all'
      ? [['-j', 'DROP']]
      : [['-s', ADDR[target], '-j', 'DROP'], ['-d', ADDR[target], '-j', 'DROP']]
    for (const rule of rules) await this.exec('nat', 'iptables', ['-I', 'FORWARD', '1', ...rule])
    return async () => {
      for (const rule of rules) await this.exec('nat', 'iptables', ['-D', 'FORWARD', ...rule])
    }
  }

  /**
   * The nat's conntrack entries of TCP flows, all of them or those whose original destination or source
   * port is `port`; IPv4 unless `family` is 6.
   */
  async conntrackEntries (port?: number, family: 4 | 6 = 4): Promise<ConntrackEntry[]> {
    const { stdout } = await this.exec('nat', 'conntrack', ['-L', '-p', 'tcp', ...(family === 6 ? ['-f', 'ipv6'] : [])])
    const entries = parseConntrack(stdout)
    return port === undefined ? entries : entries.filter((e) => e.orig.dport === port || e.orig.sport === port)
  }

  /** Packet counters of the nat's `ctstate INVALID` rules (DROP, or REJECT in FORWARD with `invalid: 'reject'`). */
  async invalidDrops (): Promise<InvalidDrops> {
    const count = async (chain: string): Promise<number> => {
      const { stdout } = await this.exec('nat', 'iptables', ['-L', chain, '-v', '-n', '-x'])
      for (const line of stdout.split('\n')) {
        if (/ctstate INVALID/.test(line) && /\b(DROP|REJECT)\b/.test(line)) return Number(line.trim().split(/\s+/)[0])
      }
      throw new Error(`no INVALID drop or reject rule in ${chain}: ${stdout}`)
    }
    return { forward: await count('FORWARD'), input: await count('INPUT') }
  }

  /** `ss -tnoi` output inside a namespace for sockets with local or remote port `port` (for diagnostics). */
  async sockets (role: Role, port: number): Promise<string> {
    const { stdout } = await this.exec(role, 'ss', ['-tnoiH', `( sport = :${port} or dport = :${port} )`])
    return stdout
  }

  /**
   * Resolve once no TCP socket in `role` with local or remote port `port` has unacknowledged data
   * (polls `ss` every 20 ms, bounded by `timeoutMs`). Used before a blackhole so that an ACK still on
   * its way does not turn an idle connection into a retransmitting one.
   */
  async waitAllAcked (role: Role, port: number, timeoutMs = 2_000): Promise<void> {
    const deadline = Date.now() + timeoutMs
    for (;;) {
      const out = await this.sockets(role, port)
      if (!/\bunacked:\d/.test(out)) return
      if (Date.now() > deadline) throw new Error(`data still unacknowledged after ${timeoutMs} ms in ${role}:\n${out}`)
      await new Promise((resolve) => setTimeout(resolve, 20))
    }
  }

  /**
   * Tear everything down: stop tracked processes, kill whatever else still runs in the namespaces,
   * delete the namespaces (their veths go with them). Idempotent; a second call joins the first.
   */
  async destroy (): Promise<void> {
    this.destroying ??= this.teardown()
    await this.destroying
  }

  private async teardown (): Promise<void> {
    await Promise.all([...this.procs].map(async (p) => await p.stop('SIGTERM', 1_000)))
    for (const ns of this.createdNs) {
      // Deleting a namespace does not kill its processes, and it lingers until they exit.
      for (let attempt = 0; attempt < 50; attempt++) {
        const pids = await nsPids(ns)
        if (pids.length === 0) break
        for (const pid of pids) killQuietly(pid)
        await new Promise((resolve) => setTimeout(resolve, 20))
      }
      await run('ip', ['netns', 'del', ns]).catch(() => {})
    }
    this.createdNs = []
    this.removeTempDir()
    liveLabs.delete(this)
  }

  private removeTempDir (): void {
    if (this.tempDir !== undefined) rmSync(this.tempDir, { recursive: true, force: true })
    this.tempDir = undefined
  }

  /** Synchronous teardown for exit and signal handlers. */
  destroySync (): void {
    for (const p of this.procs) if (p.running) p.child.kill('SIGKILL')
    for (const ns of this.createdNs) {
      for (const pid of runSync('ip', ['netns', 'pids', ns]).split(/\s+/).filter((s) => s !== '')) killQuietly(Number(pid))
      runSync('ip', ['netns', 'del', ns])
    }
    this.createdNs = []
    this.removeTempDir()
    liveLabs.delete(this)
  }
}

async function nsPids (ns: string): Promise<number[]> {
  try {
    const { stdout } = await run('ip', ['netns', 'pids', ns])
    return stdout.split(/\s+/).filter((s) => s !== '').map(Number)
  } catch {
    return []
  }
}

function killQuietly (pid: number): void {
  try {
    process.kill(pid, 'SIGKILL')
  } catch {}
}

/** Parse `conntrack -L` output, keeping TCP entries. */
export function parseConntrack (text: string): ConntrackEntry[] {
  const entries: ConntrackEntry[] = []
  for (const line of text.split('\n')) {
    const tokens = line.trim().split(/\s+/)
    if (tokens[0] !== 'tcp') continue
    const pairs = tokens.filter((t) => t.includes('=')).map((t) => t.split('=') as [string, string])
    const tuple = (n: number): ConntrackEntry['orig'] => {
      const get = (key: string): string => pairs.filter(([k]) => k === key)[n]?.[1] ?? ''
      return { src: get('src'), dst: get('dst'), sport: Number(get('sport')), dport: Number(get('dport')) }
    }
    entries.push({
      timeoutSec: Number(tokens[2]),
      state: tokens[3] ?? '',
      orig: tuple(0),
      reply: tuple(1),
      assured: tokens.includes('[ASSURED]'),
      line: line.trim()
    })
  }
  return entries
}

/**
 * What a run left behind: namespaces, root-namespace interfaces and temporary directories whose name
 * starts with `prefix` (default: this run's prefix), and processes spawned by any lab of this process
 * that still run.
 */
export async function leftovers (prefix = RUN_PREFIX): Promise<{ namespaces: string[], links: string[], processes: string[], tempDirs: string[] }> {
  const { stdout: nsOut } = await run('ip', ['netns', 'list'])
  const namespaces = nsOut.split('\n').map((l) => l.split(/\s+/)[0] ?? '').filter((n) => n.startsWith(prefix))
  const { stdout: linkOut } = await run('ip', ['-o', 'link', 'show'])
  const links = linkOut.split('\n')
    .map((l) => /^\d+:\s+([^:@\s]+)/.exec(l)?.[1] ?? '')
    .filter((n) => n.startsWith(prefix))
  const processes = [...everySpawned].filter((p) => p.running).map((p) => `${p.label} (pid ${String(p.pid)})`)
  const tempDirs = readdirSync(tmpdir()).filter((n) => n.startsWith(prefix)).map((n) => join(tmpdir(), n))
  return { namespaces, links, processes, tempDirs }
}
