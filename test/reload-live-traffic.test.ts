import assert from 'node:assert/strict'
import { it } from 'node:test'
import { connect, startEchoServer, startServer, echoThrough } from './helpers/peers.js'
import { startProxy } from './helpers/proxy.js'
import { HashedEnd } from './helpers/traffic.js'
import { describeEachEngine } from './helpers/engines.js'

const MiB = 1024 * 1024


describeEachEngine('reload under live traffic', () => {
  it('keeps every connection of a kept or updated route through reloads, byte-exact both ways', async (t) => {
    const oldUpstream = await startServer(() => {})
    t.after(oldUpstream.close)
    const newUpstream = await startEchoServer()
    t.after(newUpstream.close)
    const before = {
      routes: [
        { name: 'kept', listen: '127.0.0.1:0', upstream: oldUpstream.address },
        { name: 'changed', listen: '127.0.0.1:0', upstream: oldUpstream.address, keepalive: { client: { idle: '30s' } } },
        { name: 'gone', listen: '127.0.0.1:0', upstream: oldUpstream.address }
      ]
    }
    const proxy = await startProxy(before)
    t.after(proxy.close)
    const keptPort = proxy.port('kept')
    const changedPort = proxy.port('changed')

    const streams: Array<{ route: string, client: HashedEnd, server: HashedEnd }> = []
    for (const route of ['kept', 'kept', 'changed']) {
      const client = new HashedEnd(await connect(proxy.port(route), '127.0.0.1', { allowHalfOpen: true }))
      t.after(() => client.socket.destroy())
      streams.push({ route, client, server: new HashedEnd(await oldUpstream.nextSocket()) })
    }
    // Listed once opened: the upstream may see a connection the fast engine's worker dialed a moment
    // before the main thread lists it.
    await proxy.log.waitForCount({ event: 'open' }, 3)
    const ids = [...proxy.kaproxy.engine.connections()].map((connection) => connection.id)
    assert.equal(ids.length, 3)

    // Phase 1 is still in flight while the routes change around these connections.
    let phase1Done = false
    const phase1 = Promise.all(streams.flatMap(({ client, server }) => [client.send(8 * MiB), server.send(8 * MiB), client.receivedAtLeast(8 * MiB), server.receivedAtLeast(8 * MiB)]))
      .then(() => { phase1Done = true })
    const after = {
      routes: [
        { name: 'kept', listen: '127.0.0.1:0', upstream: oldUpstream.address },
        { name: 'changed', listen: '127.0.0.1:0', upstream: newUpstream.address, connectTimeout: '2s', keepalive: { client: { idle: '45s' } } },
        { name: 'extra', listen: '127.0.0.1:0', upstream: newUpstream.address }
      ]
    }
    const result = await proxy.reload(after)
    assert.equal(phase1Done, false, 'the reload happened while bytes were in flight')
    assert.equal(result.ok, true)
    assert.deepEqual(result.changes, { added: ['extra'], removed: ['gone'], updated: ['changed'], unchanged: ['kept'], failed: [], retunedSockets: 0 })
    await phase1

    assert.equal(proxy.port('kept'), keptPort, 'the kept route keeps its listener')
    assert.equal(proxy.port('changed'), changedPort, 'an updated route keeps its listener')
    assert.equal(await echoThrough(proxy.port('extra'), 'added route'), 'added route')
    assert.equal(await echoThrough(changedPort, 'new upstream'), 'new upstream', 'new connections use the updated route')
    assert.equal(oldUpstream.sockets.size, 3, 'the old connections stay on their upstream')
    assert.equal(proxy.kaproxy.engine.address('gone'), null)
    assert.equal(proxy.kaproxy.reloads.ok, 1)

    // Phase 2, after a reload that changes nothing.
    const again = await proxy.reload(after)
    assert.deepEqual(again.changes?.unchanged, ['kept', 'changed', 'extra'])
    await Promise.all(streams.flatMap(({ client, server }) => [client.send(8 * MiB), server.send(8 * MiB)]))
    for (const { client, server } of streams) {
      client.socket.end()
      server.socket.end()
    }
    await Promise.all(streams.flatMap(({ client, server }) => [client.ended, server.ended]))

    for (const { route, client, server } of streams) {
      assert.equal(client.error, null, `${route}: the client saw no error`)
      assert.deepEqual(server.received(), client.sent(), `${route}: client -> upstream byte-exact (16 MiB)`)
      assert.deepEqual(client.received(), server.sent(), `${route}: upstream -> client byte-exact (16 MiB)`)
      assert.equal(client.receivedBytes, 16 * MiB)
    }
    for (const id of ids) {
      const close = await proxy.log.waitFor({ event: 'close', conn: id })
      assert.ok(close.reason === 'client-closed' || close.reason === 'upstream-closed', `connection ${id} closed orderly, got ${String(close.reason)}`)
      assert.equal(close.bytesFromClient, 16 * MiB)
    }
    const reload = await proxy.log.waitFor({ event: 'reload', ok: true, trigger: 'test' })
    assert.deepEqual(reload.added, ['extra'])
  })
})
