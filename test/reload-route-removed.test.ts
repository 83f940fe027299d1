import assert from 'node:assert/strict'
import { once } from 'node:events'
import { it } from 'node:test'
import { closed, closedPort, connect, startEchoServer, echoThrough } from './helpers/peers.js'
import { startProxy } from './helpers/proxy.js'
import { describeEachEngine } from './helpers/engines.js'


describeEachEngine('a route removed by a reload', () => {
  it('stops accepting at once; its connections may finish within drainTimeout, the rest close with route-removed', async (t) => {
    const upstream = await startEchoServer()
    t.after(upstream.close)
    const proxy = await startProxy({
      routes: [
        { name: 'old', listen: '127.0.0.1:0', upstream: upstream.address, drainTimeout: '600ms' },
        { name: 'stay', listen: '127.0.0.1:0', upstream: upstream.address }
      ]
    })
    t.after(proxy.close)
    const oldPort = proxy.port('old')
    const finishing = await connect(oldPort, '127.0.0.1', { allowHalfOpen: true })
    t.after(() => finishing.destroy())
    const idle = await connect(oldPort)
    t.after(() => idle.destroy())
    idle.resume()
    const idleClosed = closed(idle)
    const idleEnded = once(idle, 'end')
    await proxy.log.waitUntil((line) => line.event === 'open' && proxy.log.find({ event: 'open', route: 'old' }).length === 2)
    // Found by client address: the listing's order follows the workers, not the accepts.
    const records = [...proxy.kaproxy.engine.connections('old')]
    assert.equal(records.length, 2)
    const idOf = (port: number | undefined): number | undefined => records.find((record) => record.client === `127.0.0.1:${port ?? 0}`)?.id
    const finishingId = idOf(finishing.localPort)
    const idleId = idOf(idle.localPort)
    assert.ok(finishingId !== undefined && idleId !== undefined, 'both connections are listed by their client address')

    const removedAt = Date.now()
    const result = await proxy.reload({ routes: [{ name: 'stay', listen: '127.0.0.1:0', upstream: upstream.address }] })
    assert.deepEqual(result.changes?.removed, ['old'])
    await assert.rejects(connect(oldPort), { code: 'ECONNREFUSED' }, 'the removed route refuses new connections at once')
    assert.equal(await echoThrough(proxy.port('stay'), 'still here'), 'still here')

    // A connection that finishes inside the window ends by itself.
    finishing.end('last words')
    const echoed: Buffer[] = []
    finishing.on('data', (chunk: Buffer) => echoed.push(chunk))
    await once(finishing, 'end')
    assert.equal(Buffer.concat(echoed).toString(), 'last words')
    const finished = await proxy.log.waitFor({ event: 'close', conn: finishingId })
    assert.equal(finished.reason, 'client-closed')

    // The idle one is closed when drainTimeout runs out, with a FIN (not a reset).
    assert.equal(await idleClosed, null)
    await idleEnded
    const elapsed = Date.now() - removedAt
    assert.ok(elapsed >= 550 && elapsed < 5000, `closed after the 600 ms drainTimeout, took ${elapsed} ms`)
    const cut = await proxy.log.waitFor({ event: 'close', conn: idleId })
    assert.equal(cut.reason, 'route-removed')
    assert.equal(cut.route, 'old')
    const drained = await proxy.log.waitFor({ event: 'route-drained', route: 'old' })
    assert.equal(drained.reason, 'route-removed')
    assert.equal(drained.finished, 1)
    assert.equal(drained.cut, 1)
    assert.equal([...proxy.kaproxy.engine.connections('old')].length, 0)
  })

  it('treats a changed listen address as remove plus add, also when another route takes over the old address', async (t) => {
    const upstream = await startEchoServer()
    t.after(upstream.close)
    const fixed = await closedPort()
    const proxy = await startProxy({
      defaults: { drainTimeout: '300ms' },
      routes: [
        { name: 'moving', listen: '127.0.0.1:0', upstream: upstream.address },
        { name: 'first', listen: `127.0.0.1:${fixed}`, upstream: upstream.address }
      ]
    })
    t.after(proxy.close)
    const oldPort = proxy.port('moving')
    const onMoving = await connect(oldPort)
    t.after(() => onMoving.destroy())
    onMoving.resume()
    const onFirst = await connect(fixed)
    t.after(() => onFirst.destroy())
    onFirst.resume()
    await Promise.all([proxy.log.waitFor({ event: 'open', route: 'moving' }), proxy.log.waitFor({ event: 'open', route: 'first' })])
    const movingId = [...proxy.kaproxy.engine.connections('moving')][0]?.id
    const firstId = [...proxy.kaproxy.engine.connections('first')][0]?.id

    const newPort = await closedPort()
    // `first` is renamed `second` on the same address: bound once `first` stopped accepting.
    const result = await proxy.reload({
      defaults: { drainTimeout: '300ms' },
      routes: [
        { name: 'moving', listen: `127.0.0.1:${newPort}`, upstream: upstream.address },
        { name: 'second', listen: `127.0.0.1:${fixed}`, upstream: upstream.address }
      ]
    })
    assert.equal(result.ok, true)
    assert.deepEqual(result.changes?.removed.sort(), ['first', 'moving'])
    assert.deepEqual(result.changes?.added, ['moving', 'second'])
    assert.equal(proxy.port('moving'), newPort)
    await assert.rejects(connect(oldPort), { code: 'ECONNREFUSED' })
    assert.equal(await echoThrough(newPort, 'moved'), 'moved')
    assert.equal(await echoThrough(fixed, 'same address, new route'), 'same address, new route')
    assert.equal((await proxy.log.waitFor({ event: 'open', route: 'second' })).route, 'second')

    await Promise.all([closed(onMoving), closed(onFirst)])
    assert.equal((await proxy.log.waitFor({ event: 'close', conn: movingId })).reason, 'route-removed')
    assert.equal((await proxy.log.waitFor({ event: 'close', conn: firstId })).reason, 'route-removed')
  })
})
