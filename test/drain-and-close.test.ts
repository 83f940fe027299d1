import assert from 'node:assert/strict'
import { it } from 'node:test'
import { closed, connect, startEchoServer } from './helpers/peers.js'
import { startProxy } from './helpers/proxy.js'
import { describeEachEngine } from './helpers/engines.js'

describeEachEngine('drain and close', () => {
  it('turns readiness false and stops accepting the moment drain starts; drain joins, close cuts it short with shutdown', async (t) => {
    const upstream = await startEchoServer()
    t.after(upstream.close)
    const proxy = await startProxy({ routes: [{ name: 'd', listen: '127.0.0.1:0', upstream: upstream.address }] })
    t.after(proxy.close)
    assert.equal(proxy.kaproxy.ready, true)
    const port = proxy.port('d')
    const client = await connect(port)
    t.after(() => client.destroy())
    client.resume()
    await proxy.log.waitFor({ event: 'open', route: 'd' })
    const clientClosed = closed(client)

    const draining = proxy.kaproxy.drain()
    assert.equal(proxy.kaproxy.ready, false, 'not ready from the moment draining starts')
    await assert.rejects(connect(port), { code: 'ECONNREFUSED' })
    const again = proxy.kaproxy.drain()
    const reload = await proxy.reload({ routes: [] })
    assert.equal(reload.error?.code, 'KAPROXY_ERR_STOPPING', 'no reload while draining')
    assert.equal([...proxy.kaproxy.engine.connections()].length, 1, 'the live connection is given the 30 s default window')

    const startedClose = Date.now()
    await Promise.all([proxy.kaproxy.close(), proxy.kaproxy.close(), draining, again])
    assert.ok(Date.now() - startedClose < 5000)
    assert.equal(await clientClosed, null)
    assert.equal((await proxy.log.waitFor({ event: 'close', route: 'd' })).reason, 'shutdown')
    const drained = await proxy.log.waitFor({ event: 'route-drained', route: 'd' })
    assert.equal(drained.cut, 1)
  })

  it('closes at once with drainTimeout 0', async (t) => {
    const upstream = await startEchoServer()
    t.after(upstream.close)
    const proxy = await startProxy({ routes: [{ name: 'z', listen: '127.0.0.1:0', upstream: upstream.address, drainTimeout: 0 }] })
    t.after(proxy.close)
    const client = await connect(proxy.port('z'))
    t.after(() => client.destroy())
    client.resume()
    await proxy.log.waitFor({ event: 'open', route: 'z' })
    await proxy.kaproxy.drain()
    assert.equal((await proxy.log.waitFor({ event: 'close', route: 'z' })).reason, 'shutdown')
  })
})
