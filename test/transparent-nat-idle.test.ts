// Transparent sidecar across a NAT: the application (uid nobody) sets no keepalive and idles longer
// than the NAT's conntrack timeout. Captured into kaproxy, whose upstream socket probes every second,
// the NAT mapping stays and the connection survives; in an identical lab with kaproxy running but no
// REDIRECT rule (the control), the mapping expires and the same connection dies. Both labs run side by side.
import assert from 'node:assert/strict'
import { before, describe, it } from 'node:test'
import { labGate } from './netlab/gate.js'
import { Kaproxy } from './netlab/kaproxy.js'
import { ADDR, type Lab } from './netlab/lab.js'
import { Client, EchoServer } from './netlab/peers.js'
import { nowMs, WaitError } from './netlab/proc.js'
import { establishedSockets } from './netlab/remote-socket.js'
import { target } from './netlab/sidecar-peers.js'
import { figure, itLeavesNothingBehind, newLab, sec } from './netlab/suite.js'
import { OUTBOUND_PORT, TRANSPARENT_TOOLS, installRules, logEvents, printedRules, usersCanRun } from './netlab/transparent.js'
import { KAPROXY_UID, KAPROXY_USER, NOBODY } from './netlab/users.js'

const gate = await labGate({ needKaproxy: true, tools: TRANSPARENT_TOOLS, probe: usersCanRun })
const CONNTRACK_SEC = 3
const IDLE_MS = 8_000
const REPLY_WAIT_MS = 3_000
const SERVER_PORT = 5432

interface Outcome {
  captured: boolean
  /** Samples of the nat's conntrack table during the idle that held the flow to the server. */
  samplesWithEntry: number
  samples: number
  entryGoneAtMs: number | undefined
  rttAfterIdleMs: number | undefined
  failure: string | undefined
  invalidDrops: number
  /** The source port of the flow that crossed the nat, and who owns it in the client namespace. */
  natFlowOwner: 'kaproxy' | 'application' | 'unknown'
  appTimer: string | undefined
  kaproxyTimer: string | undefined
}

async function idleThroughNat (lab: Lab, captured: boolean): Promise<Outcome> {
  const server = await EchoServer.start(lab, 'server', ADDR.server, SERVER_PORT)
  const kaproxy = await Kaproxy.startConfig(lab, 'client', {
    routes: [{ name: 'outbound', listen: `127.0.0.1:${OUTBOUND_PORT}`, upstream: 'original-dst', keepalive: { upstream: { idle: '1s', interval: '1s', count: 3 } } }]
  }, { route: 'outbound', user: KAPROXY_USER })
  if (captured) {
    await installRules(lab, await printedRules(['--config', kaproxy.configFile ?? '', '--route', 'outbound', '--uid', String(KAPROXY_UID), '--ports', String(SERVER_PORT), '--format', 'iptables']))
  }
  const client = await Client.connect(lab, 'client', ADDR.server, SERVER_PORT, 5_000, NOBODY)
  await client.echo('warm-up', 3_000)
  if (captured) {
    const [open] = await logEvents(kaproxy, 'open', 1, 3_000)
    assert.equal(open?.upstream, target(ADDR.server, SERVER_PORT), 'kaproxy relays to the original destination')
  }
  const entries = await lab.conntrackEntries(SERVER_PORT)
  assert.equal(entries.length, 1, `one flow crosses the nat: ${entries.map((e) => e.line).join('\n')}`)
  const natSport = entries[0]?.orig.sport
  const sockets = await establishedSockets(lab, 'client')
  const owner = sockets.find((s) => s.localPort === natSport && s.peerPort === SERVER_PORT)?.users[0]?.pid
  const natFlowOwner = owner === kaproxy.pid ? 'kaproxy' : owner === client.proc.pid ? 'application' : 'unknown'
  const appTimer = sockets.find((s) => s.localPort === client.localPort)?.timer
  const kaproxyTimer = sockets.find((s) => s.users.some((u) => u.pid === kaproxy.pid) && s.peerPort === SERVER_PORT)?.timer

  // The idle: nothing is sent; only the conntrack table is read.
  const idleStart = nowMs()
  let samples = 0
  let samplesWithEntry = 0
  let entryGoneAtMs: number | undefined
  while (nowMs() - idleStart < IDLE_MS) {
    const at = nowMs() - idleStart
    const present = (await lab.conntrackEntries(SERVER_PORT)).length > 0
    samples++
    if (present) samplesWithEntry++
    else entryGoneAtMs ??= at
    await new Promise((resolve) => setTimeout(resolve, Math.max(0, Math.min(250, IDLE_MS - (nowMs() - idleStart)))))
  }
  const dropsBefore = await lab.invalidDrops()
  let rttAfterIdleMs: number | undefined
  let failure: string | undefined
  try {
    rttAfterIdleMs = (await client.echo('after-idle', REPLY_WAIT_MS)).rttMs
  } catch (err) {
    if (!(err instanceof WaitError)) throw err
    failure = err.message.split('\n')[0]
  }
  const dropsAfter = await lab.invalidDrops()
  return {
    captured,
    samples,
    samplesWithEntry,
    entryGoneAtMs,
    rttAfterIdleMs,
    failure,
    invalidDrops: dropsAfter.forward - dropsBefore.forward,
    natFlowOwner,
    appTimer: appTimer === undefined ? undefined : `${appTimer.kind},${appTimer.text}`,
    kaproxyTimer: kaproxyTimer === undefined ? undefined : `${kaproxyTimer.kind},${kaproxyTimer.text}`
  }
}

function describeOutcome (o: Outcome): string {
  const head = o.captured ? 'captured into transparent kaproxy (upstream keepalive 1s,1s,3)' : 'control, same lab without the REDIRECT rule'
  const entry = o.entryGoneAtMs === undefined
    ? `conntrack entry present in ${o.samplesWithEntry}/${o.samples} samples`
    : `conntrack entry gone ${sec(o.entryGoneAtMs)} into the idle`
  const result = o.rttAfterIdleMs !== undefined
    ? `survived: echo after idle in ${o.rttAfterIdleMs.toFixed(1)} ms`
    : `died: no echo within ${sec(REPLY_WAIT_MS)}, ${o.invalidDrops} packets dropped as INVALID at the NAT`
  return `${head}: nat flow owned by ${o.natFlowOwner}, app socket timer ${o.appTimer ?? 'none'} -> ${result}; ${entry}`
}

describe('transparent sidecar across a NAT: an application without keepalive', { skip: gate.skip }, () => {
  before(() => { gate.check() })

  it(`survives ${IDLE_MS / 1000} s idle (conntrack ${CONNTRACK_SEC} s) only when captured into kaproxy`, { timeout: 60_000 }, async (t) => {
    const [capturedLab, controlLab] = await Promise.all([newLab(t, { conntrackEstablishedSec: CONNTRACK_SEC }), newLab(t, { conntrackEstablishedSec: CONNTRACK_SEC })])
    const [captured, control] = await Promise.all([idleThroughNat(capturedLab, true), idleThroughNat(controlLab, false)])
    figure(`NAT idle ${sec(IDLE_MS)}, ${describeOutcome(captured)}`)
    figure(`NAT idle ${sec(IDLE_MS)}, ${describeOutcome(control)}`)

    assert.equal(captured.appTimer, undefined, 'the application sets no keepalive (no timer on its socket)')
    assert.equal(control.appTimer, undefined)
    assert.equal(captured.natFlowOwner, 'kaproxy', 'captured: the flow across the NAT is kaproxy\'s upstream socket')
    assert.match(captured.kaproxyTimer ?? '', /^keepalive,/, 'kaproxy\'s upstream socket has the keepalive timer')
    assert.equal(control.natFlowOwner, 'application', 'control: the application\'s own socket crosses the NAT')
    assert.equal(control.kaproxyTimer, undefined, 'control: kaproxy is running but relays nothing')

    assert.ok(captured.rttAfterIdleMs !== undefined, `captured: the echo after the idle comes back: ${captured.failure ?? ''}`)
    assert.equal(captured.entryGoneAtMs, undefined, 'captured: the conntrack entry existed throughout the idle')
    assert.ok(captured.samples > 10)
    assert.equal(control.rttAfterIdleMs, undefined, 'control: the echo after the idle never comes back')
    assert.ok(control.entryGoneAtMs !== undefined && control.entryGoneAtMs < IDLE_MS, 'control: the conntrack entry expired during the idle')
    assert.ok(control.invalidDrops > 0, 'control: the NAT dropped the late packets as INVALID')
  })

  itLeavesNothingBehind()
})
