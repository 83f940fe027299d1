// Scenario 7: TCP_USER_TIMEOUT. With unacknowledged data in flight to a blackholed peer, the side with
// a user timeout is closed within that timeout + 1.5 s; the same connection without it is still
// retransmitting then (the kernel's own limit, tcp_retries2=15, is about 15 minutes).
// Keepalive idle is 30 s on both, so keepalive probes play no part here.
//
// Measured: the close comes about userTimeout + 0.42 s after the write. A capture shows why: a tail
// loss probe goes out at +0.2 s, the first RTO retransmission at +0.41 s, and Linux counts the user
// timeout from that first RTO retransmission (retransmissions at +0.83, +1.66, +3.32, abort at +3.41).
import assert from 'node:assert/strict'
import { before, it } from 'node:test'
import { labGate } from './netlab/gate.js'
import { Kaproxy } from './netlab/kaproxy.js'
import { ADDR } from './netlab/lab.js'
import type { Lab } from './netlab/lab.js'
import { Client, EchoServer } from './netlab/peers.js'
import { figure, itLeavesNothingBehind, newLab, sec } from './netlab/suite.js'
import { describeEachEngine } from './helpers/engines.js'

const USER_TIMEOUT_MS = 3_000
const WITH_UT = `30s,5s,4,${USER_TIMEOUT_MS}ms`
const WITHOUT_UT = '30s,5s,4'
const BOUND_MS = USER_TIMEOUT_MS + 1_500
const gate = await labGate({ needKaproxy: true })

/** The retransmission counter of the socket with port `port` in `role`, from `ss -ti` (`retrans:CUR/TOTAL`), or a reason it has none. */
async function retransmitting (lab: Lab, role: 'client' | 'server', port: number): Promise<string> {
  const out = await lab.sockets(role, port)
  const m = /retrans:(\d+)\/(\d+)/.exec(out)
  return m === null ? `not retransmitting: ${out.trim()}` : `retrans ${m[1] ?? '?'}/${m[2] ?? '?'}`
}

describeEachEngine('NAT lab: TCP_USER_TIMEOUT bounds unacknowledged data to a blackholed peer', { skip: gate.skip }, () => {
  before(() => { gate.check() })

  it(`upstream side: userTimeout ${USER_TIMEOUT_MS} ms closes within ${BOUND_MS} ms; without it the connection lingers`, { timeout: 30_000 }, async (t) => {
    const lab = await newLab(t)
    // Sidecar, twice: route ut with the user timeout, route nout (the control) without.
    await EchoServer.start(lab, 'server', ADDR.server, 7001)
    const ut = await Kaproxy.start(lab, 'client', { name: 'ut', listen: '127.0.0.1:7101', upstream: `${ADDR.server}:7001`, upstreamKeepalive: WITH_UT })
    const control = await Kaproxy.start(lab, 'client', { name: 'nout', listen: '127.0.0.1:7102', upstream: `${ADDR.server}:7001`, upstreamKeepalive: WITHOUT_UT })
    const a = await Client.connect(lab, 'client', '127.0.0.1', 7101)
    const b = await Client.connect(lab, 'client', '127.0.0.1', 7102)
    await a.echo('warm-up', 3_000)
    await b.echo('warm-up', 3_000)
    await lab.waitAllAcked('client', 7001)
    await lab.blackhole('server')

    // Data the upstream never acknowledges: kaproxy relays it and its upstream socket retransmits.
    const sentAt = a.send('in flight')
    b.send('in flight')
    const closed = await a.closed(BOUND_MS + 3_000)
    const log = await ut.closed(2_000)
    const took = closed.t - sentAt
    // The control, 1.5 s later than the user timeout's bound: still open, still retransmitting.
    await new Promise((resolve) => setTimeout(resolve, Math.max(0, sentAt + BOUND_MS - Date.now())))
    const controlOpen = !b.isClosed() && control.closes().length === 0
    const controlState = await retransmitting(lab, 'client', 7001)
    figure(`user timeout, upstream side: ${WITH_UT} -> closed ${sec(took)} after the unacknowledged write (${closed.code ?? 'no error'}; bound ${sec(BOUND_MS)}), ` +
      `kaproxy logged reason=${log.reason} side=${log.side}; without it (${WITHOUT_UT}) still open at ${sec(BOUND_MS)} (${controlState})`)
    assert.equal(log.route, 'ut')
    assert.equal(log.side, 'upstream')
    assert.equal(log.reason, 'keepalive-timeout')
    assert.ok(took <= BOUND_MS, `closed ${took.toFixed(0)} ms after the write, bound ${BOUND_MS} ms`)
    assert.ok(took >= USER_TIMEOUT_MS - 300, `closed too early (${took.toFixed(0)} ms): not the user timeout`)
    assert.ok(controlOpen, 'without the user timeout the connection is still open')
    assert.match(controlState, /^retrans/)
  })

  it(`client side: userTimeout ${USER_TIMEOUT_MS} ms closes within ${BOUND_MS} ms; without it the connection lingers`, { timeout: 30_000 }, async (t) => {
    const lab = await newLab(t)
    // Fronting, twice: route ut with the user timeout on the client side, route nout without.
    const server = await EchoServer.start(lab, 'server', '127.0.0.1', 7001)
    const ut = await Kaproxy.start(lab, 'server', { name: 'ut', listen: `${ADDR.server}:7101`, upstream: '127.0.0.1:7001', clientKeepalive: WITH_UT })
    const control = await Kaproxy.start(lab, 'server', { name: 'nout', listen: `${ADDR.server}:7102`, upstream: '127.0.0.1:7001', clientKeepalive: WITHOUT_UT })
    const a = await Client.connect(lab, 'client', ADDR.server, 7101)
    const { id: idA } = await server.accepted(5_000)
    const mark = server.proc.mark()
    const b = await Client.connect(lab, 'client', ADDR.server, 7102)
    const { id: idB } = await server.accepted(5_000, mark)
    await a.echo('warm-up', 3_000)
    await b.echo('warm-up', 3_000)
    await lab.waitAllAcked('server', 7101)
    await lab.waitAllAcked('server', 7102)
    await lab.blackhole('client')

    // The server speaks first: kaproxy relays the bytes towards the client, which never acknowledges them.
    const from = server.proc.mark()
    server.push(1000)
    const pushed = await server.proc.waitJson((e) => e.ev === 'pushed' && e.id === idA, 2_000, 'pushed', from)
    const sentAt = Number(pushed.t)
    const closed = await server.closed(idA, BOUND_MS + 3_000)
    const log = await ut.closed(2_000)
    const took = closed.t - sentAt
    await new Promise((resolve) => setTimeout(resolve, Math.max(0, sentAt + BOUND_MS - Date.now())))
    const controlOpen = !server.isClosed(idB) && control.closes().length === 0
    const controlState = await retransmitting(lab, 'server', 7102)
    figure(`user timeout, client side: ${WITH_UT} -> upstream closed ${sec(took)} after the unacknowledged write (${closed.code ?? 'no error'}; bound ${sec(BOUND_MS)}), ` +
      `kaproxy logged reason=${log.reason} side=${log.side}; without it (${WITHOUT_UT}) still open at ${sec(BOUND_MS)} (${controlState})`)
    assert.equal(log.route, 'ut')
    assert.equal(log.side, 'client')
    assert.equal(log.reason, 'keepalive-timeout')
    assert.ok(took <= BOUND_MS, `closed ${took.toFixed(0)} ms after the write, bound ${BOUND_MS} ms`)
    assert.ok(took >= USER_TIMEOUT_MS - 300, `closed too early (${took.toFixed(0)} ms): not the user timeout`)
    assert.ok(controlOpen, 'without the user timeout the connection is still open')
    assert.match(controlState, /^retrans/)
  })

  itLeavesNothingBehind()
})
