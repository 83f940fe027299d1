// The idle-across-NAT experiment shared by the scenario tests and the demo: one or more connections
// cross the lab's NAT, go idle for a while (the conntrack entry is sampled throughout), then send data
// and wait a bounded time for the echo.
//
// Paths:
//   direct    client --NAT--> echo server                                  (no kaproxy)
//   fronting  client --NAT--> kaproxy in server ns --> echo on 127.0.0.1   (client-side keepalive matters)
//   sidecar   client --> kaproxy in client ns --NAT--> echo server         (upstream-side keepalive matters)
import assert from 'node:assert/strict'
import { ADDR } from './lab.js'
import type { ConntrackEntry, Lab } from './lab.js'
import { Kaproxy } from './kaproxy.js'
import type { CloseLog } from './kaproxy.js'
import { Client, EchoServer } from './peers.js'
import { nowMs, WaitError } from './proc.js'

export type PathKind = 'direct' | 'fronting' | 'sidecar'

export interface PathSpec {
  kind: PathKind
  /** Keepalive spec of kaproxy's side facing the NAT (`client` side when fronting, `upstream` when sidecar); ignored for direct. */
  keepalive?: string
}

export interface PathResult {
  spec: PathSpec
  /** Port of the flow that crosses the NAT (its original destination port). */
  natPort: number
  /** Round trip of the first echo, before the idle. */
  warmRttMs: number
  /** Echo round trip after the idle, or undefined when it did not come back in time. */
  rttAfterIdleMs: number | undefined
  /** Why it broke (the wait error) when it did. */
  failure: string | undefined
  /** Conntrack samples taken during the idle: how many saw the flow's entry, out of how many. */
  samplesWithEntry: number
  samples: number
  /** Lowest remaining timeout seen on the entry, in seconds. */
  minTimeoutSec: number | undefined
  /** Time into the idle at which the entry was first seen missing, in ms. */
  entryGoneAtMs: number | undefined
  /** Bytes the echo server received after the idle started. */
  serverBytesAfterIdle: number
  /** Bytes sent after the idle. */
  bytesSentAfterIdle: number
  /** kaproxy's close lines for this path during the experiment. */
  kaproxyCloses: CloseLog[]
  kaproxyCommand: string | undefined
}

export interface IdleResult {
  idleMs: number
  replyWaitMs: number
  conntrackSec: number
  /** Rise of the nat's FORWARD `ctstate INVALID` DROP counter across the post-idle sends. */
  invalidDropsDuringSend: number
  paths: PathResult[]
}

const SAMPLE_EVERY_MS = 250

interface Setup {
  spec: PathSpec
  natPort: number
  server: EchoServer
  client: Client
  kaproxy: Kaproxy | undefined
}

async function setUp (lab: Lab, spec: PathSpec, index: number): Promise<Setup> {
  const echoPort = 7001 + index
  const proxyPort = 7101 + index
  const keepalive = spec.keepalive ?? 'off'
  if (spec.kind === 'direct') {
    const server = await EchoServer.start(lab, 'server', ADDR.server, echoPort)
    const client = await Client.connect(lab, 'client', ADDR.server, echoPort)
    return { spec, natPort: echoPort, server, client, kaproxy: undefined }
  }
  if (spec.kind === 'fronting') {
    const server = await EchoServer.start(lab, 'server', '127.0.0.1', echoPort)
    const kaproxy = await Kaproxy.start(lab, 'server', {
      name: `front${index}`, listen: `${ADDR.server}:${proxyPort}`, upstream: `127.0.0.1:${echoPort}`, clientKeepalive: keepalive, upstreamKeepalive: 'off'
    })
    const client = await Client.connect(lab, 'client', ADDR.server, proxyPort)
    return { spec, natPort: proxyPort, server, client, kaproxy }
  }
  const server = await EchoServer.start(lab, 'server', ADDR.server, echoPort)
  const kaproxy = await Kaproxy.start(lab, 'client', {
    name: `side${index}`, listen: `127.0.0.1:${proxyPort}`, upstream: `${ADDR.server}:${echoPort}`, clientKeepalive: 'off', upstreamKeepalive: keepalive
  })
  const client = await Client.connect(lab, 'client', '127.0.0.1', proxyPort)
  return { spec, natPort: echoPort, server, client, kaproxy }
}

/**
 * Run the experiment on `specs` side by side in one lab: warm up each connection with an echo, stay
 * idle `idleMs` while sampling the nat's conntrack table, then send on every connection at once and
 * wait up to `replyWaitMs` for each echo.
 */
export async function idleAcrossNat (lab: Lab, specs: readonly PathSpec[], options: { idleMs: number, replyWaitMs: number }): Promise<IdleResult> {
  const setups: Setup[] = []
  for (const [i, spec] of specs.entries()) setups.push(await setUp(lab, spec, i))
  const warm = await Promise.all(setups.map(async (s) => await s.client.echo('warm-up', 3_000)))
  await Promise.all(setups.map(async (s) => { await s.server.receivedAtLeast(Buffer.byteLength('warm-up')) }))
  const bytesBefore = setups.map((s) => s.server.bytesReceived())

  // The idle: nothing is sent; only the conntrack table is read (which sends nothing on the flows).
  const idleStart = nowMs()
  const seen: Array<Array<{ at: number, entry: ConntrackEntry | undefined }>> = setups.map(() => [])
  while (nowMs() - idleStart < options.idleMs) {
    const at = nowMs() - idleStart
    const entries = await lab.conntrackEntries()
    for (const [i, s] of setups.entries()) {
      seen[i]?.push({ at, entry: entries.find((e) => e.orig.dport === s.natPort) })
    }
    const left = options.idleMs - (nowMs() - idleStart)
    await new Promise((resolve) => setTimeout(resolve, Math.max(0, Math.min(SAMPLE_EVERY_MS, left))))
  }

  const dropsBefore = await lab.invalidDrops()
  const texts = setups.map((_, i) => `after-idle-${i}`)
  const replies = await Promise.all(setups.map(async (s, i) => {
    try {
      const r = await s.client.echo(texts[i] ?? '', options.replyWaitMs)
      return { rtt: r.rttMs, failure: undefined }
    } catch (err) {
      if (!(err instanceof WaitError)) throw err
      return { rtt: undefined, failure: err.message.split('\n')[0] ?? err.message }
    }
  }))
  const dropsAfter = await lab.invalidDrops()

  const paths = setups.map((s, i): PathResult => {
    const samples = seen[i] ?? []
    const withEntry = samples.filter((x) => x.entry !== undefined)
    const timeouts = withEntry.map((x) => x.entry?.timeoutSec ?? Infinity)
    const gone = samples.find((x) => x.entry === undefined)
    return {
      spec: s.spec,
      natPort: s.natPort,
      warmRttMs: warm[i]?.rttMs ?? NaN,
      rttAfterIdleMs: replies[i]?.rtt,
      failure: replies[i]?.failure,
      samplesWithEntry: withEntry.length,
      samples: samples.length,
      minTimeoutSec: timeouts.length === 0 ? undefined : Math.min(...timeouts),
      entryGoneAtMs: gone?.at,
      serverBytesAfterIdle: s.server.bytesReceived() - (bytesBefore[i] ?? 0),
      bytesSentAfterIdle: Buffer.byteLength(texts[i] ?? ''),
      kaproxyCloses: s.kaproxy?.closes() ?? [],
      kaproxyCommand: s.kaproxy?.commandLine
    }
  })
  return {
    idleMs: options.idleMs,
    replyWaitMs: options.replyWaitMs,
    conntrackSec: lab.conntrackEstablishedSec,
    invalidDropsDuringSend: dropsAfter.forward - dropsBefore.forward,
    paths
  }
}

/** One line describing a path's outcome, e.g. for console.log. */
export function describePath (r: IdleResult, p: PathResult): string {
  const what = p.spec.kind === 'direct'
    ? 'plain connection, no keepalive'
    : `kaproxy ${p.spec.kind}, ${p.spec.kind === 'fronting' ? 'client' : 'upstream'} keepalive ${p.spec.keepalive ?? 'off'}`
  const head = `idle ${(r.idleMs / 1000).toFixed(1)} s across NAT (conntrack ${r.conntrackSec} s), ${what}`
  const entry = p.entryGoneAtMs === undefined
    ? `conntrack entry present in ${p.samplesWithEntry}/${p.samples} samples (lowest timer ${String(p.minTimeoutSec)} s)`
    : `conntrack entry gone ${(p.entryGoneAtMs / 1000).toFixed(1)} s into the idle`
  if (p.rttAfterIdleMs !== undefined) return `${head} -> survived: echo after idle in ${p.rttAfterIdleMs.toFixed(1)} ms; ${entry}`
  return `${head} -> broke: no echo within ${(r.replyWaitMs / 1000).toFixed(1)} s, server got ${p.serverBytesAfterIdle}/${p.bytesSentAfterIdle} bytes, ` +
    `${r.invalidDropsDuringSend} packets dropped as INVALID at the NAT; ${entry}`
}

/** The path survived the idle: echo came back, the conntrack entry never disappeared, kaproxy closed nothing. */
export function assertSurvived (r: IdleResult, p: PathResult): void {
  assert.ok(p.rttAfterIdleMs !== undefined, `the echo after ${r.idleMs} ms idle must come back: ${p.failure ?? ''}`)
  assert.equal(p.serverBytesAfterIdle, p.bytesSentAfterIdle, 'the server received the data sent after the idle')
  assert.ok(p.samples > 0 && p.samplesWithEntry === p.samples, `the conntrack entry existed throughout (${p.samplesWithEntry}/${p.samples} samples)`)
  assert.deepEqual(p.kaproxyCloses.map((c) => c.raw), [], 'kaproxy closed no connection')
}

/** The path broke: no echo, the server got nothing, the conntrack entry expired and the NAT dropped the late packets. */
export function assertBroke (r: IdleResult, p: PathResult): void {
  assert.ok(p.warmRttMs < 1_000, 'the connection worked before the idle')
  assert.equal(p.rttAfterIdleMs, undefined, 'the echo after the idle must not come back')
  assert.equal(p.serverBytesAfterIdle, 0, 'the server must not receive the data sent after the idle')
  assert.ok(p.entryGoneAtMs !== undefined, 'the conntrack entry expired during the idle')
  assert.ok(r.invalidDropsDuringSend > 0, 'the NAT dropped the late packets as INVALID')
}
