import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { closedPort, startEchoServer } from './helpers/peers.js'
import { startProxy } from './helpers/proxy.js'

describe('reload of routes with pools, checks and address rules', () => {
  it('finds an identical config unchanged (address rules included), and a changed target list keeps the state of the targets it keeps', async (t) => {
    const a = await startEchoServer()
    t.after(a.close)
    const b = await startEchoServer()
    t.after(b.close)
    const dead = await closedPort()
    const transparent = { name: 'transparent', listen: '127.0.0.1:0', upstream: 'original-dst', allow: ['127.0.0.0/8'], destinations: [{ match: '127.0.0.1/32:5432', keepalive: { idle: '20s' } }] }
    const pool = (upstream: string[]) => ({ name: 'pool', listen: '127.0.0.1:0', upstream, balance: 'least-connections', healthCheck: { type: 'tcp', interval: '200ms', timeout: '150ms', rise: 1, fall: 1 } })
    const proxy = await startProxy({ routes: [transparent, pool([a.address, `127.0.0.1:${dead}`])] })
    t.after(proxy.close)
    // The dead target is found down by its health check.
    await proxy.log.waitFor({ event: 'upstream-state', route: 'pool', upstream: `127.0.0.1:${dead}`, state: 'down' })

    const same = await proxy.reload({ routes: [transparent, pool([a.address, `127.0.0.1:${dead}`])] })
    assert.deepEqual(same.changes?.unchanged, ['transparent', 'pool'])

    const changed = await proxy.reload({ routes: [transparent, pool([`127.0.0.1:${dead}`, b.address])] })
    assert.deepEqual(changed.changes?.updated, ['pool'])
    const states = proxy.kaproxy.engine.upstreams('pool').map((member) => `${member.target.label} ${member.state}`)
    assert.deepEqual(states, [`127.0.0.1:${dead} down`, `${b.address} up`], 'the kept target is still down; the new one starts up')
  })
})
