// Transparent sidecar, guards: a connection that was not redirected is closed as
// `no-original-destination` and never relayed (kaproxy does not connect to itself); a destination
// outside `allow` is closed as `destination-denied` and never dialed; thousands of captured, denied and
// direct connections leave kaproxy with exactly the descriptors it had before.
import assert from 'node:assert/strict'
import { before, describe, it } from 'node:test'
import { labGate } from './netlab/gate.js'
import { Kaproxy } from './netlab/kaproxy.js'
import { ADDR, ADDR6 } from './netlab/lab.js'
import type { Lab } from './netlab/lab.js'
import { Client } from './netlab/peers.js'
import { establishedSockets, openDescriptors } from './netlab/remote-socket.js'
import { App, HashServer, connectionLoop, target } from './netlab/sidecar-peers.js'
import { figure, itLeavesNothingBehind, newLab } from './netlab/suite.js'
import { ADMIN_LISTEN, OUTBOUND_PORT, TRANSPARENT_TOOLS, adminGet, closedByReason, installRules, logEvents, printedRules, usersCanRun } from './netlab/transparent.js'
import { KAPROXY_UID, KAPROXY_USER, NOBODY } from './netlab/users.js'

const gate = await labGate({ needKaproxy: true, tools: TRANSPARENT_TOOLS, probe: usersCanRun })

const ALLOWED = [`${ADDR.server}/32:7001`, `[${ADDR6.server}/128]:7001`]

/** kaproxy as uid 1337 on [::]:15001 with `allow` (only port 7001 of the server), and the printed uid rules installed. */
/** kaproxy as uid 1337 with the printed capture rules; `rulesUid` other than 1337 makes the rules miss kaproxy itself. */
async function capturedLab (lab: Lab, rulesUid = KAPROXY_UID): Promise<Kaproxy> {
  const kaproxy = await Kaproxy.startConfig(lab, 'client', {
    admin: { listen: ADMIN_LISTEN },
    routes: [{ name: 'outbound', listen: `[::]:${OUTBOUND_PORT}`, upstream: 'original-dst', allow: ALLOWED, keepalive: { upstream: { idle: '30s', interval: '5s', count: 4 } } }]
  }, { route: 'outbound', user: KAPROXY_USER })
  await installRules(lab, await printedRules(['--config', kaproxy.configFile ?? '', '--route', 'outbound', '--uid', String(rulesUid), '--format', 'iptables']))
  return kaproxy
}

function countBy (values: readonly string[]): Record<string, number> {
  const out: Record<string, number> = {}
  for (const v of values) out[v] = (out[v] ?? 0) + 1
  return out
}

describe('transparent sidecar: loop guard, allow, no leaks', { skip: gate.skip }, () => {
  before(() => { gate.check() })

  it('closes direct connections to the listener as no-original-destination and never connects to itself', { timeout: 30_000 }, async (t) => {
    const lab = await newLab(t, { ipv6: true })
    const kaproxy = await capturedLab(lab)
    // 127.0.0.2 is loopback too, but untracked: SO_ORIGINAL_DST finds no conntrack entry (ENOENT).
    await lab.exec('client', 'iptables', ['-t', 'raw', '-A', 'OUTPUT', '-d', '127.0.0.2', '-j', 'CT', '--notrack'])
    await lab.exec('client', 'iptables', ['-t', 'raw', '-A', 'OUTPUT', '-s', '127.0.0.2', '-j', 'CT', '--notrack'])
    const direct = ['127.0.0.1', '::1', ADDR.client, ADDR6.client, '127.0.0.2']
    for (const host of direct) {
      const client = await Client.connect(lab, 'client', host, OUTBOUND_PORT)
      const closed = await client.closed(5_000)
      assert.equal(closed.code, undefined, `${host}: an orderly close, not a reset`)
      assert.equal(client.proc.json().filter((e) => e.ev === 'data').length, 0, `${host}: nothing relayed`)
      await client.destroy()
    }
    const closes = (await logEvents(kaproxy, 'close', direct.length, 5_000)).map((e) => ({ conn: e.conn, upstream: e.upstream, reason: e.reason, err: (e.err as { message?: string } | undefined)?.message }))
    assert.deepEqual(closes, [
      { conn: 1, upstream: `127.0.0.1:${OUTBOUND_PORT}`, reason: 'no-original-destination', err: undefined },
      { conn: 2, upstream: `[::1]:${OUTBOUND_PORT}`, reason: 'no-original-destination', err: undefined },
      { conn: 3, upstream: `${ADDR.client}:${OUTBOUND_PORT}`, reason: 'no-original-destination', err: undefined },
      { conn: 4, upstream: `[${ADDR6.client}]:${OUTBOUND_PORT}`, reason: 'no-original-destination', err: undefined },
      { conn: 5, upstream: 'original-dst', reason: 'no-original-destination', err: 'getsockopt(SO_ORIGINAL_DST) failed: ENOENT' }
    ], 'each direct connection is one close line naming the listener itself (or ENOENT), in order, with no connection in between')
    assert.deepEqual(kaproxy.proc.json().filter((e) => e.event === 'open' || e.event === 'dial-failed'), [], 'nothing was opened or dialed')
    assert.deepEqual(await establishedSockets(lab, 'client', kaproxy.pid), [], 'kaproxy holds no connection (none to itself)')
    assert.deepEqual(await closedByReason(lab, 'outbound'), { 'no-original-destination': 5 }, 'counted per route in /metrics')
    figure(`loop guard: ${direct.length} direct connections (${direct.join(', ')}) -> ${direct.length} closes, all no-original-destination (4 by the listener's own address, 1 by ENOENT), 0 opened, 0 dialed`)
  })

  it('cuts the loop when the capture rules miss kaproxy\'s own uid: one loop-detected, no chain of connections', { timeout: 30_000 }, async (t) => {
    const lab = await newLab(t)
    await HashServer.start(lab, 'server', '::', 7001)
    // The rules exclude uid 4242, not kaproxy's 1337: kaproxy's own upstream connection is captured too.
    const kaproxy = await capturedLab(lab, 4242)
    const app = await App.connect(lab, 'client', NOBODY, 0, [target(ADDR.server, 7001)]).catch((err: Error) => err)
    const loop = await logEvents(kaproxy, 'close', 2, 5_000)
    const reasons = loop.map((e) => e.reason)
    assert.ok(reasons.includes('loop-detected'), `loop-detected among ${reasons.join(', ')}`)
    if (!(app instanceof Error)) await app.closed(target(ADDR.server, 7001), 5_000)
    const opened = kaproxy.proc.json().filter((e) => e.event === 'close').length
    assert.ok(opened <= 3, `the chain stopped at the second hop (${opened} connections closed), not thousands`)
    figure(`loop guard: capture rules missing kaproxy's uid -> ${opened} connections (${reasons.join(', ')}), then nothing more`)
  })

  it('closes a destination outside allow as destination-denied without dialing it', { timeout: 30_000 }, async (t) => {
    const lab = await newLab(t, { ipv6: true })
    const allowed = await HashServer.start(lab, 'server', '::', 7001)
    const denied = await HashServer.start(lab, 'server', '::', 7003)
    const kaproxy = await capturedLab(lab)
    const deniedTargets = [target(ADDR.server, 7003), target(ADDR6.server, 7003)]
    const refused = await App.connect(lab, 'client', NOBODY, 0, deniedTargets)
    for (const to of deniedTargets) {
      assert.deepEqual(await refused.closed(to, 5_000), { code: undefined, bytesReceived: 0 }, `${to}: closed by kaproxy, nothing received`)
    }
    const app = await App.connect(lab, 'client', NOBODY, 4096, [target(ADDR.server, 7001), target(ADDR6.server, 7001)])
    const transfers = await app.transfer(5_000)
    assert.deepEqual(transfers.map((tr) => tr.receivedSha256 === tr.sentSha256 && tr.received === 4096), [true, true], 'the allowed destinations relay')
    const closes = await logEvents(kaproxy, 'close', 4, 5_000)
    assert.deepEqual(closes.filter((c) => c.reason === 'destination-denied').map((c) => c.upstream).sort(), [...deniedTargets].sort(), 'the close lines name the denied original destinations')
    assert.deepEqual(closes.filter((c) => c.reason !== 'destination-denied').map((c) => c.reason), ['client-closed', 'client-closed'])
    assert.equal((await allowed.acceptedAtLeast(2)).length, 2)
    assert.deepEqual(denied.accepts(), [], 'the denied server never saw a connection')
    assert.deepEqual(kaproxy.proc.json().filter((e) => e.event === 'dial-failed'), [])
    assert.deepEqual(await closedByReason(lab, 'outbound'), { 'destination-denied': 2, 'client-closed': 2 }, 'counted per route in /metrics')
    figure(`allow [${ALLOWED.join(', ')}]: ${deniedTargets.join(' and ')} closed as destination-denied, never dialed (server :7003 accepted 0); :7001 relayed over both families`)
  })

  it('leaves no descriptor behind after 2000 captured connections (and 200 denied, 200 direct)', { timeout: 60_000 }, async (t) => {
    const lab = await newLab(t)
    const server = await HashServer.start(lab, 'server', '::', 7001)
    await HashServer.start(lab, 'server', '::', 7003)
    const kaproxy = await capturedLab(lab)
    const allowedTarget = target(ADDR.server, 7001)
    const warm = await connectionLoop(lab, 'client', NOBODY, 20, 4, allowedTarget, 10_000)
    assert.deepEqual([warm.ok, warm.failed], [20, 0])
    await logEvents(kaproxy, 'close', 20, 5_000)
    const before = openDescriptors(kaproxy.pid)

    const captured = await connectionLoop(lab, 'client', NOBODY, 2000, 32, allowedTarget, 40_000)
    assert.deepEqual({ ok: captured.ok, failed: captured.failed }, { ok: 2000, failed: 0 }, JSON.stringify(captured.errors))
    const deniedRun = await connectionLoop(lab, 'client', NOBODY, 200, 16, target(ADDR.server, 7003), 20_000)
    assert.equal(deniedRun.ok, 0, 'no denied connection got an echo')
    const directRun = await connectionLoop(lab, 'client', NOBODY, 200, 16, `127.0.0.1:${OUTBOUND_PORT}`, 20_000)
    assert.equal(directRun.ok, 0, 'no direct connection got an echo')

    const total = 20 + 2000 + 200 + 200
    const closes = await logEvents(kaproxy, 'close', total, 20_000)
    assert.deepEqual(countBy(closes.slice(20).map((c) => String(c.reason))), { 'client-closed': 2000, 'destination-denied': 200, 'no-original-destination': 200 })
    assert.ok(closes.slice(20, 2020).every((c) => c.bytesFromClient === 64 && c.bytesFromUpstream === 64 && c.upstream === allowedTarget), 'every captured connection relayed its 64 bytes each way to the original destination')
    assert.equal(kaproxy.proc.json().filter((e) => e.event === 'open').length, 2020, 'only captured, allowed connections were opened')
    await server.closedAtLeast(2020, 10_000)
    const after = openDescriptors(kaproxy.pid)
    assert.equal(after, before, `kaproxy has the descriptors it had before (${before})`)
    assert.deepEqual(await establishedSockets(lab, 'client', kaproxy.pid), [], 'kaproxy holds no connection')
    assert.deepEqual(await closedByReason(lab, 'outbound'), { 'client-closed': 2020, 'destination-denied': 200, 'no-original-destination': 200 })
    assert.equal((JSON.parse(await adminGet(lab, '/connections?route=outbound')) as { total: number }).total, 0, '/connections lists none')
    figure(`no leaks: 2000 captured connections in ${(captured.ms / 1000).toFixed(2)} s (${Math.round(2000 / (captured.ms / 1000))}/s, 32 at a time), 200 denied, 200 direct; ` +
      `kaproxy descriptors ${before} before, ${after} after; denied errors ${JSON.stringify(deniedRun.errors)}, direct errors ${JSON.stringify(directRun.errors)}`)
  })

  itLeavesNothingBehind()
})
