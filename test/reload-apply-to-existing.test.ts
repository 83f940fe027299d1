import assert from 'node:assert/strict'
import { it } from 'node:test'
import type { Side } from '../src/config/types.js'
import { readKeepaliveFd } from '../src/keepalive.js'
import { connect, startEchoServer } from './helpers/peers.js'
import { startProxy, type RunningProxy } from './helpers/proxy.js'
import { describeEachEngine } from './helpers/engines.js'

async function liveSockets (proxy: RunningProxy, route: string) {
  const known = new Set([...proxy.kaproxy.engine.connections(route)].map((c) => c.id))
  const client = await connect(proxy.port(route))
  // Both sides are tuned once the upstream accepted.
  const open = await proxy.log.waitUntil((line) => line.event === 'open' && line.route === route && !known.has(line.conn as number))
  const connection = [...proxy.kaproxy.engine.connections(route)].find((c) => c.id === open.conn)
  assert.ok(connection !== undefined)
  const socket = (side: Side) => {
    const endpoint = connection.endpoint(side)
    assert.ok(endpoint !== null && endpoint.fd >= 0, `${side} has a descriptor`)
    return endpoint
  }
  return { client, socket }
}

describeEachEngine('keepalive.applyToExisting', () => {
  it('re-applies changed keepalive to the live sockets of the route, read back from the kernel; other routes only change new connections', async (t) => {
    const upstream = await startEchoServer()
    t.after(upstream.close)
    const keepalive = { client: { idle: '30s', interval: '5s', count: 4 }, upstream: { idle: '2m', interval: '15s', count: 8 } }
    const proxy = await startProxy({
      routes: [
        { name: 'retuned', listen: '127.0.0.1:0', upstream: upstream.address, keepalive },
        { name: 'plain', listen: '127.0.0.1:0', upstream: upstream.address, keepalive }
      ]
    })
    t.after(proxy.close)
    const retuned = await liveSockets(proxy, 'retuned')
    t.after(() => retuned.client.destroy())
    const plain = await liveSockets(proxy, 'plain')
    t.after(() => plain.client.destroy())
    assert.deepEqual(readKeepaliveFd(retuned.socket('client').fd), { enabled: true, idleSec: 30, intervalSec: 5, count: 4, userTimeoutMs: 0 })

    const changed = { client: { idle: '20s', interval: '3s', count: 3, userTimeout: '29s' }, upstream: { idle: '90s', interval: '10s', count: 5 } }
    const result = await proxy.reload({
      routes: [
        { name: 'retuned', listen: '127.0.0.1:0', upstream: upstream.address, keepalive: { ...changed, applyToExisting: true } },
        { name: 'plain', listen: '127.0.0.1:0', upstream: upstream.address, keepalive: changed }
      ]
    })
    assert.equal(result.ok, true)
    assert.deepEqual(result.changes?.updated, ['retuned', 'plain'])
    assert.equal(result.changes?.retunedSockets, 2, 'both sockets of the one live connection on retuned')

    // The kernel now reports the new values on the connection that was open before the reload.
    assert.deepEqual(readKeepaliveFd(retuned.socket('client').fd), { enabled: true, idleSec: 20, intervalSec: 3, count: 3, userTimeoutMs: 29_000 })
    assert.deepEqual(readKeepaliveFd(retuned.socket('upstream').fd), { enabled: true, idleSec: 90, intervalSec: 10, count: 5, userTimeoutMs: 0 })
    // Without applyToExisting the live connection keeps what it had; a new one gets the new values.
    assert.deepEqual(readKeepaliveFd(plain.socket('client').fd), { enabled: true, idleSec: 30, intervalSec: 5, count: 4, userTimeoutMs: 0 })
    assert.deepEqual(readKeepaliveFd(plain.socket('upstream').fd), { enabled: true, idleSec: 120, intervalSec: 15, count: 8, userTimeoutMs: 0 })
    const fresh = await liveSockets(proxy, 'plain')
    t.after(() => fresh.client.destroy())
    assert.deepEqual(readKeepaliveFd(fresh.socket('client').fd), { enabled: true, idleSec: 20, intervalSec: 3, count: 3, userTimeoutMs: 29_000 })
    assert.deepEqual(readKeepaliveFd(fresh.socket('upstream').fd), { enabled: true, idleSec: 90, intervalSec: 10, count: 5, userTimeoutMs: 0 })

    // Turning keepalive off on a live connection writes SO_KEEPALIVE 0.
    const off = await proxy.reload({
      routes: [
        { name: 'retuned', listen: '127.0.0.1:0', upstream: upstream.address, keepalive: { applyToExisting: true, client: { enabled: false }, upstream: changed.upstream } },
        { name: 'plain', listen: '127.0.0.1:0', upstream: upstream.address, keepalive: changed }
      ]
    })
    assert.equal(off.changes?.retunedSockets, 2)
    assert.equal(readKeepaliveFd(retuned.socket('client').fd).enabled, false)
    assert.equal(readKeepaliveFd(retuned.socket('upstream').fd).idleSec, 90)
    const line = await proxy.log.waitFor({ event: 'reload', ok: true, retunedSockets: 2 })
    assert.deepEqual(line.updated, ['retuned', 'plain'])
  })
})
