import assert from 'node:assert/strict'
import { once } from 'node:events'
import type net from 'node:net'
import { it } from 'node:test'
import { createLogger } from '../src/log.js'
import { BURST_CONNECTIONS, BurstReclaimer, type Reclaimed } from '../src/memory-reclaim.js'
import { describeEachEngine } from './helpers/engines.js'
import { LogSink } from './helpers/log-sink.js'
import { connect, startEchoServer } from './helpers/peers.js'
import { startProxy } from './helpers/proxy.js'

describeEachEngine('memory after a burst', () => {
  it(`collects the heap once a burst of ${BURST_CONNECTIONS} connections is over, and says what it returned`, async (t) => {
    const upstream = await startEchoServer()
    t.after(upstream.close)
    const proxy = await startProxy({ routes: [{ name: 'burst', listen: '127.0.0.1:0', upstream: upstream.address }] })
    t.after(proxy.close)
    const clients: net.Socket[] = []
    t.after(() => { for (const client of clients) client.destroy() })
    // In waves of 100: each client's byte comes back, so the connection relays (the engine opened it).
    for (let wave = 0; wave < BURST_CONNECTIONS / 100; wave++) {
      await Promise.all(Array.from({ length: 100 }, async () => {
        const client = await connect(proxy.port('burst'))
        clients.push(client)
        client.write('x')
        await once(client, 'data')
      }))
    }
    const reclaimed = await proxy.log.waitFor({ event: 'memory-reclaimed' })
    assert.equal(reclaimed.connections, BURST_CONNECTIONS)
    assert.ok(typeof reclaimed.rssBeforeBytes === 'number' && reclaimed.rssBeforeBytes > 0)
    assert.ok(typeof reclaimed.rssAfterBytes === 'number' && reclaimed.rssAfterBytes > 0)
    assert.ok(typeof reclaimed.pauseMs === 'number' && reclaimed.pauseMs >= 0)
  })
})

it('waits until connections stop opening: a burst still going is collected once, with every connection counted', async (t) => {
  const collected: Reclaimed[] = []
  let heard: () => void = () => {}
  const reclaimer = new BurstReclaimer(createLogger('debug', new LogSink()), {
    burst: 3,
    quietMs: 100,
    onReclaimed: (result) => { collected.push(result); heard() }
  })
  t.after(() => { reclaimer.close() })
  const open = (): void => { reclaimer.observer.onOpen?.(null as never) }
  const done = new Promise<void>((resolve) => { heard = resolve })
  // The reclaimer's timer never keeps a process alive: this test's own timer does, until it heard.
  const alive = setInterval(() => {}, 1000)
  t.after(() => { clearInterval(alive) })
  // Three open the burst; ten more follow, 20 ms apart, each within the quiet period.
  for (let i = 0; i < 3; i++) open()
  for (let i = 0; i < 10; i++) {
    await new Promise((resolve) => setTimeout(resolve, 20))
    open()
  }
  await done
  assert.equal(collected.length, 1)
  assert.equal(collected[0]?.connections, 13)
})
