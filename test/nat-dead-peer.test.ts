// Scenarios 5 and 6: a peer that vanishes (blackholed at the NAT after the connection is up) is
// noticed by keepalive on its side. kaproxy closes the other side within
// idle + interval x count + 1.5 s, logs `keepalive-timeout` with the right route and side, and the
// surviving peer sees the close.
import assert from 'node:assert/strict'
import { before, it } from 'node:test'
import { labGate } from './netlab/gate.js'
import { Kaproxy } from './netlab/kaproxy.js'
import { ADDR } from './netlab/lab.js'
import { Client, EchoServer } from './netlab/peers.js'
import { nowMs } from './netlab/proc.js'
import { figure, itLeavesNothingBehind, newLab, sec } from './netlab/suite.js'
import { describeEachEngine } from './helpers/engines.js'

const IDLE_SEC = 1
const INTERVAL_SEC = 1
const COUNT = 3
const KEEPALIVE = `${IDLE_SEC}s,${INTERVAL_SEC}s,${COUNT}`
const BOUND_MS = (IDLE_SEC + INTERVAL_SEC * COUNT) * 1000 + 1_500
const gate = await labGate({ needKaproxy: true })

describeEachEngine('NAT lab: dead peers are noticed by keepalive', { skip: gate.skip }, () => {
  before(() => { gate.check() })

  it(`dead upstream: upstream keepalive ${KEEPALIVE} closes the client within ${BOUND_MS} ms`, { timeout: 30_000 }, async (t) => {
    const lab = await newLab(t)
    // Sidecar: kaproxy beside the client, the upstream across the NAT.
    await EchoServer.start(lab, 'server', ADDR.server, 7001)
    const kaproxy = await Kaproxy.start(lab, 'client', {
      name: 'deadup', listen: '127.0.0.1:7101', upstream: `${ADDR.server}:7001`, clientKeepalive: 'off', upstreamKeepalive: KEEPALIVE
    })
    const client = await Client.connect(lab, 'client', '127.0.0.1', 7101)
    const { replyAt } = await client.echo('ping', 3_000)
    await lab.waitAllAcked('client', 7001)
    const blackholedAt = nowMs()
    await lab.blackhole('server')

    const closed = await client.closed(BOUND_MS + 3_000)
    const log = await kaproxy.closed(2_000)
    const afterData = closed.t - replyAt
    figure(`dead upstream: blackholed ${(blackholedAt - replyAt).toFixed(0)} ms after the last data; upstream keepalive ${KEEPALIVE} -> ` +
      `client closed ${sec(afterData)} after the last data (${closed.code ?? 'no error'}; bound ${sec(BOUND_MS)}); ` +
      `kaproxy logged reason=${log.reason} side=${log.side} route=${log.route}`)
    assert.equal(log.route, 'deadup')
    assert.equal(log.reason, 'keepalive-timeout')
    assert.equal(log.side, 'upstream')
    assert.ok(afterData <= BOUND_MS, `closed ${afterData.toFixed(0)} ms after the last data, bound ${BOUND_MS} ms`)
    // Probes cannot end it before idle + interval x count: an earlier close would be something else.
    assert.ok(afterData >= (IDLE_SEC + INTERVAL_SEC * COUNT) * 1000 - 300, `closed too early: ${afterData.toFixed(0)} ms`)
  })

  it(`dead client: client keepalive ${KEEPALIVE} closes the upstream within ${BOUND_MS} ms`, { timeout: 30_000 }, async (t) => {
    const lab = await newLab(t)
    // Fronting: kaproxy beside the server, the client across the NAT.
    const server = await EchoServer.start(lab, 'server', '127.0.0.1', 7001)
    const kaproxy = await Kaproxy.start(lab, 'server', {
      name: 'deadcl', listen: `${ADDR.server}:7101`, upstream: '127.0.0.1:7001', clientKeepalive: KEEPALIVE, upstreamKeepalive: 'off'
    })
    const client = await Client.connect(lab, 'client', ADDR.server, 7101)
    const { id } = await server.accepted()
    const { replyAt } = await client.echo('ping', 3_000)
    // The client's ACK of the echo must reach kaproxy first: unacknowledged data would mean
    // retransmissions (minutes) instead of keepalive probes.
    await lab.waitAllAcked('server', 7101)
    const blackholedAt = nowMs()
    await lab.blackhole('client')

    const closed = await server.closed(id, BOUND_MS + 3_000)
    const log = await kaproxy.closed(2_000)
    const afterData = closed.t - replyAt
    figure(`dead client: blackholed ${(blackholedAt - replyAt).toFixed(0)} ms after the last data; client keepalive ${KEEPALIVE} -> ` +
      `upstream connection closed ${sec(afterData)} after the last data (${closed.code ?? 'no error'}; bound ${sec(BOUND_MS)}); ` +
      `kaproxy logged reason=${log.reason} side=${log.side} route=${log.route}`)
    assert.equal(log.route, 'deadcl')
    assert.equal(log.reason, 'keepalive-timeout')
    assert.equal(log.side, 'client')
    assert.ok(afterData <= BOUND_MS, `closed ${afterData.toFixed(0)} ms after the last data, bound ${BOUND_MS} ms`)
    assert.ok(afterData >= (IDLE_SEC + INTERVAL_SEC * COUNT) * 1000 - 300, `closed too early: ${afterData.toFixed(0)} ms`)
  })

  itLeavesNothingBehind()
})
