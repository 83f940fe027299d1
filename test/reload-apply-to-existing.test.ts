import assert from 'node:assert/strict'
import { it } from 'node:test'
import type { Side } from '../src/config/types.js'
import { readKeepalive } from '../src/keepalive.js'
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
    const s = connection.socket(side)
    assert.ok(s !== null)
    return s
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
    assert.deepEqual(readKeepalive(retuned.socket('client')), { enabled: true, idleSec: 30, intervalSec: 5, count: 4, userTimeoutMs: 0 })

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
    assert.deepEqual(readKeepalive(retuned.socket('client')), { enabled: true, idleSec: 20, intervalSec: 3, count: 3, userTimeoutMs: 29_000 })
    assert.deepEqual(readKeepalive(retuned.socket('upstream')), { enabled: true, idleSec: 90, intervalSec: 10, count: 5, userTimeoutMs: 0 })
    // Without applyToExisting the live connection keeps what it had; a new one gets the new values.
    assert.deepEqual(readKeepalive(plain.socket('client')), { enabled: true, idleSec: 30, intervalSec: 5, count: 4, userTimeoutMs: 0 })
    assert.deepEqual(readKeepalive(plain.socket('upstream')), { enabled: true, idleSec: 120, intervalSec: 15, count: 8, userTimeoutMs: 0 })
    const fresh = await liveSockets(proxy, 'plain')
    t.after(() => fresh.client.destroy())
    assert.deepEqual(readKeepalive(fresh.socket('client')), { enabled: true, idleSec: 20, intervalSec: 3, count: 3, userTimeoutMs: 29_000 })
    assert.deepEqual(readKeepalive(fresh.socket('upstream')), { enabled: true, idleSec: 90, intervalSec: 10, count: 5, userTimeoutMs: 0 })

    // Turning keepalive off on a live connection writes SO_KEEPALIVE 0.
    const off = await proxy.reload({
      routes: [
        { name: 'retuned', listen: '127.0.0.1:0', upstream: upstream.address, keepalive: { applyToExisting: true, client: { enabled: false }, upstream: changed.upstream } },
        { name: 'plain', listen: '127.0.0.1:0', upstream: upstream.address, keepalive: changed }
      ]
    })
    assert.equal(off.changes?.retunedSockets, 2)
    assert.equal(readKeepalive(retuned.socket('client')).enabled, false)
    assert.equal(readKeepalive(retuned.socket('upstream')).idleSec, 90)
    const line = await proxy.log.waitFor({ event: 'reload', ok: true, retunedSockets: 2 })
    assert.deepEqual(line.updated, ['retuned', 'plain'])
  })
})
