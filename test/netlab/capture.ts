// Packet capture on a lab interface with tcpdump, and its analysis with tshark, which tells
// keepalive probes (and their ACKs) from plain ACKs exactly.
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { run } from './exec.js'
import type { Lab, Role } from './lab.js'
import type { LabProcess } from './proc.js'

/** One captured TCP segment. `time` is wall-clock ms since the epoch (sub-ms precision). */
export interface Packet {
  frame: number
  time: number
  src: string
  sport: number
  dst: string
  dport: number
  /** TCP payload length in bytes. */
  len: number
  /** TCP flags byte (SYN 0x02, FIN 0x01, RST 0x04, ACK 0x10, PSH 0x08). */
  flags: number
  /** tshark's `tcp.analysis.keep_alive`: a keepalive probe. */
  keepAlive: boolean
  /** tshark's `tcp.analysis.keep_alive_ack`: the answer to a probe. */
  keepAliveAck: boolean
}

export class Capture {
  private stopped: Promise<void> | undefined

  private constructor (readonly file: string, private readonly dir: string, private readonly proc: LabProcess) {}

  /**
   * Start tcpdump on `iface` in namespace `role` with BPF `filter`, and resolve once it is listening.
   * `--immediate-mode -U`: without them the last packets are lost when tcpdump is stopped.
   */
  static async start (lab: Lab, role: Role, iface: string, filter: string): Promise<Capture> {
    const dir = await mkdtemp(join(tmpdir(), 'netlab-pcap-'))
    const file = join(dir, `${iface}.pcap`)
    // -Z root: Debian's tcpdump would otherwise drop to the tcpdump user and may not write the file.
    const proc = lab.spawn(role, 'tcpdump', ['-i', iface, '-n', '-Z', 'root', '--immediate-mode', '-U', '-w', file, filter], `tcpdump:${iface}`)
    await waitStderr(proc, /listening on/, 5_000)
    return new Capture(file, dir, proc)
  }

  /** Stop tcpdump (SIGINT, so it flushes) and wait for it to exit. Idempotent. */
  async stop (): Promise<void> {
    this.stopped ??= this.proc.stop('SIGINT', 3_000).then(() => {})
    await this.stopped
  }

  /** Stop the capture if needed and return its TCP segments, in order. */
  async packets (): Promise<Packet[]> {
    await this.stop()
    const fields = ['frame.number', 'frame.time_epoch', 'ip.src', 'tcp.srcport', 'ip.dst', 'tcp.dstport', 'tcp.len', 'tcp.flags']
    const all = await tshark(this.file, fields, 'tcp')
    const probes = new Set((await tshark(this.file, ['frame.number'], 'tcp.analysis.keep_alive')).map((r) => r[0]))
    const acks = new Set((await tshark(this.file, ['frame.number'], 'tcp.analysis.keep_alive_ack')).map((r) => r[0]))
    return all.map((r) => ({
      frame: Number(r[0]),
      time: Number(r[1]) * 1000,
      src: r[2] ?? '',
      sport: Number(r[3]),
      dst: r[4] ?? '',
      dport: Number(r[5]),
      len: Number(r[6]),
      flags: Number(r[7]),
      keepAlive: probes.has(r[0]),
      keepAliveAck: acks.has(r[0])
    }))
  }

  /** Remove the capture file (keep it when NETLAB_KEEP_PCAP is set, and say where it is). */
  async remove (): Promise<void> {
    await this.stop()
    if (process.env.NETLAB_KEEP_PCAP !== undefined) {
      console.log(`# capture kept: ${this.file}`)
      return
    }
    await rm(this.dir, { recursive: true, force: true })
  }
}

async function tshark (file: string, fields: readonly string[], displayFilter: string): Promise<string[][]> {
  const args = ['-r', file, '-n', '-Y', displayFilter, '-T', 'fields', '-E', 'separator=\t']
  for (const f of fields) args.push('-e', f)
  const { stdout } = await run('tshark', args, 30_000)
  return stdout.split('\n').filter((l) => l !== '').map((l) => l.split('\t'))
}

async function waitStderr (proc: LabProcess, pattern: RegExp, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!proc.stderrLines.some((l) => pattern.test(l))) {
    if (!proc.running) throw new Error(`tcpdump exited (${String(proc.exitStatus)}): ${proc.stderrTail()}`)
    if (Date.now() > deadline) throw new Error(`tcpdump not listening after ${timeoutMs} ms: ${proc.stderrTail()}`)
    await new Promise((resolve) => setTimeout(resolve, 10))
  }
}

/** One keepalive probe sent by the side under test, and how it relates to what came before it. */
export interface ProbeTiming {
  /** Time of the probe, ms since the epoch. */
  at: number
  /**
   * `first`: the first probe after the peer last sent something other than a probe's ACK; `gapMs` is
   * from that packet, and Linux sends it `idle` after it.
   * `next`: the probe after an answered probe; `gapMs` is from that probe. Linux rearms the timer for
   * `interval` after each probe and, finding the peer heard from within `idle`, waits out the idle:
   * expect max(idle, interval).
   * `retry`: the probe after an unanswered probe; `gapMs` is from that probe: expect `interval`.
   */
  kind: 'first' | 'next' | 'retry'
  gapMs: number
  /** Whether the peer sent anything after this probe (its keepalive ACK). */
  answered: boolean
}

/**
 * The keepalive probes sent by one end of a captured flow, classified as first, next or retry.
 * `fromProber` tells a packet of the probing end from one of its peer. The kernel counts idle time
 * from the last packet *received*, so the peer's packets are the reference.
 */
export function probeTimings (packets: readonly Packet[], fromProber: (p: Packet) => boolean): ProbeTiming[] {
  const probes: ProbeTiming[] = []
  let lastPeerAt: number | undefined
  let peerSilentSinceProbe = false
  for (const p of [...packets].sort((a, b) => a.time - b.time)) {
    const last = probes[probes.length - 1]
    if (!fromProber(p)) {
      lastPeerAt = p.time
      if (last !== undefined) last.answered = true
      // Only a probe's ACK keeps the probe chain going; anything else starts a new idle period.
      peerSilentSinceProbe = p.keepAliveAck
      continue
    }
    if (!p.keepAlive) continue
    if (last !== undefined && !last.answered) probes.push({ at: p.time, kind: 'retry', gapMs: p.time - last.at, answered: false })
    else if (last !== undefined && peerSilentSinceProbe) probes.push({ at: p.time, kind: 'next', gapMs: p.time - last.at, answered: false })
    else probes.push({ at: p.time, kind: 'first', gapMs: p.time - (lastPeerAt ?? p.time), answered: false })
  }
  return probes
}
