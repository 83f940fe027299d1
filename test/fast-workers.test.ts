import assert from 'node:assert/strict'
import { once } from 'node:events'
import net from 'node:net'
import { availableParallelism } from 'node:os'
import { describe, it } from 'node:test'
import { buildConfig } from '../src/config/load.js'
import { overridesFromFlags, parseConfigFlags } from '../src/config/flags.js'
import type { NetEngine } from '../src/relay/net/engine.js'
import { topLevelIssues } from './helpers/config-issues.js'
import { ENGINES } from './helpers/engines.js'
import { connect, echoThrough, startEchoServer } from './helpers/peers.js'
import { startProxy } from './helpers/proxy.js'

const FAST = ENGINES[0] === 'fast'

function workers (raw: Record<string, unknown>, env: NodeJS.ProcessEnv = {}): number {
  return buildConfig({ admin: { listen: '' }, routes: [], ...raw }, { env }).dataPlane.workers
}

/** Echo `count` connections' worth of text through `port` at once, each kept open until all answered. */
async function holdEchoed (port: number, count: number): Promise<net.Socket[]> {
  return await Promise.all(Array.from({ length: count }, async (_, i) => {
    const socket = await connect(port)
    const text = `connection ${i}`
    const answer = await new Promise<string>((resolve, reject) => {
      let seen = ''
      socket.on('data', (chunk: Buffer) => { seen += chunk.toString(); if (seen.length >= text.length) resolve(seen) })
      socket.on('error', reject)
      socket.write(text)
    })
    assert.equal(answer, text)
    return socket
  }))
}

describe('the fast engine\'s workers', () => {
  it('dataPlane.workers: auto is one per CPU (at most 4); a count from the file, KAPROXY_WORKERS or --workers; a bad value names field, value and rule', () => {
    assert.equal(workers({}), Math.min(4, availableParallelism()))
    assert.equal(workers({ dataPlane: { workers: 'auto' } }), Math.min(4, availableParallelism()))
    assert.equal(workers({ dataPlane: { workers: 3 } }), 3)
    assert.equal(workers({}, { KAPROXY_WORKERS: '5' }), 5)
    const flags = overridesFromFlags(parseConfigFlags(['--workers', '6']))
    assert.deepEqual(flags, { 'dataPlane.workers': '6' })
    assert.equal(buildConfig({ admin: { listen: '' }, routes: [] }, { env: {}, overrides: flags }).dataPlane.workers, 6)
    for (const bad of [0, 65, 1.5, 'many', '-1', true]) {
      assert.deepEqual(topLevelIssues({ dataPlane: { workers: bad } }), [`dataPlane.workers: must be auto or an integer 1..64 (got ${JSON.stringify(bad)})`])
    }
    assert.deepEqual(topLevelIssues({}, { KAPROXY_WORKERS: 'lots' }), ['dataPlane.workers: must be auto or an integer 1..64 (got "lots")'])
    assert.deepEqual(topLevelIssues({ dataPlane: { threads: 2 } }), ['dataPlane.threads: unknown key'])
  })

  it('dataPlane.reportAfterMs: 20 by default, 0 allowed; from the file, KAPROXY_REPORT_AFTER_MS or --report-after-ms; a bad value names field, value and rule', () => {
    const reportAfterMs = (raw: Record<string, unknown>, env: NodeJS.ProcessEnv = {}): number => buildConfig({ admin: { listen: '' }, routes: [], ...raw }, { env }).dataPlane.reportAfterMs
    assert.equal(reportAfterMs({}), 20)
    assert.equal(reportAfterMs({ dataPlane: { reportAfterMs: 0 } }), 0)
    assert.equal(reportAfterMs({}, { KAPROXY_REPORT_AFTER_MS: '250' }), 250)
    const flags = overridesFromFlags(parseConfigFlags(['--report-after-ms', '5']))
    assert.deepEqual(flags, { 'dataPlane.reportAfterMs': '5' })
    assert.equal(buildConfig({ admin: { listen: '' }, routes: [] }, { env: {}, overrides: flags }).dataPlane.reportAfterMs, 5)
    for (const bad of [-1, 60001, 2.5, 'soon', true]) {
      assert.deepEqual(topLevelIssues({ dataPlane: { reportAfterMs: bad } }), [`dataPlane.reportAfterMs: must be an integer 0..60000 (milliseconds; 0: at once) (got ${JSON.stringify(bad)})`])
    }
  })

  it('dataPlane.bulkBuffers: 4 by default, 0 allowed; from the file, KAPROXY_BULK_BUFFERS or --bulk-buffers; a bad value names field, value and rule', () => {
    const bulkBuffers = (raw: Record<string, unknown>, env: NodeJS.ProcessEnv = {}): number => buildConfig({ admin: { listen: '' }, routes: [], ...raw }, { env }).dataPlane.bulkBuffers
    assert.equal(bulkBuffers({}), 4)
    assert.equal(bulkBuffers({ dataPlane: { bulkBuffers: 0 } }), 0)
    assert.equal(bulkBuffers({}, { KAPROXY_BULK_BUFFERS: '16' }), 16)
    const flags = overridesFromFlags(parseConfigFlags(['--bulk-buffers', '2']))
    assert.deepEqual(flags, { 'dataPlane.bulkBuffers': '2' })
    assert.equal(buildConfig({ admin: { listen: '' }, routes: [] }, { env: {}, overrides: flags }).dataPlane.bulkBuffers, 2)
    for (const bad of [-1, 1025, 2.5, 'some', true]) {
      assert.deepEqual(topLevelIssues({ dataPlane: { bulkBuffers: bad } }), [`dataPlane.bulkBuffers: must be an integer 0..1024 (got ${JSON.stringify(bad)})`])
    }
  })

  it('three workers share a route\'s listening socket, hand-overs go to the least busy, a drain lets every worker go, and close stops them all', { skip: FAST ? false : 'fast needs Linux' }, async (t) => {
    const echo = await startEchoServer()
    t.after(echo.close)
    const routes = [
      // Accepted by the workers themselves.
      { name: 'accepted', listen: '127.0.0.1:0', upstream: echo.address },
      // Accepted by Node (a PROXY header is written first), then handed over.
      { name: 'handed', listen: '127.0.0.1:0', upstream: echo.address, proxyProtocol: 'v1' }
    ]
    const proxy = await startProxy({ dataPlane: { workers: 3 }, defaults: { engine: 'fast' }, routes })
    t.after(proxy.close)
    const dataPlane = (proxy.kaproxy.engine as NetEngine).dataPlane
    assert.equal(dataPlane.workers, 3)
    assert.equal(proxy.kaproxy.engine.acceptedBy('accepted'), 'worker')
    assert.equal(proxy.kaproxy.engine.acceptedBy('handed'), 'main')

    // Nine hand-overs, one at a time: each goes to the worker relaying the fewest.
    const handed: net.Socket[] = []
    t.after(() => { for (const socket of handed) socket.destroy() })
    for (let i = 0; i < 9; i++) {
      const socket = await connect(proxy.port('handed'))
      handed.push(socket)
      await proxy.log.waitForCount({ event: 'open', route: 'handed' }, i + 1)
    }
    assert.deepEqual(dataPlane.sizes(), [3, 3, 3])

    // Thirty clients at once on the workers' route: every one relayed byte-exact, whichever worker took it.
    const accepted = await holdEchoed(proxy.port('accepted'), 30)
    t.after(() => { for (const socket of accepted) socket.destroy() })
    // The workers report accepted connections in batches: relayed before the main thread counts them.
    await proxy.log.waitForCount({ event: 'open', route: 'accepted' }, 30)
    assert.equal(dataPlane.size, 39)
    assert.equal(dataPlane.sizes().reduce((a, b) => a + b, 0), 39)
    const metrics = await proxy.kaproxy.metrics.prometheus()
    for (const worker of ['0', '1', '2']) assert.match(metrics.text, new RegExp(`kaproxy_fast_engine_worker_connections\\{worker="${worker}"\\} \\d+`))

    // The route is removed: every worker stops accepting, its connections finish, its port is free.
    const port = proxy.port('accepted')
    const removed = proxy.reload({ defaults: { engine: 'fast' }, dataPlane: { workers: 3 }, routes: [routes[1]] })
    for (const socket of accepted) socket.end()
    await removed
    const drained = await proxy.log.waitFor({ event: 'route-drained', route: 'accepted' })
    assert.equal(drained.finished, 30)
    const rebound = net.createServer().listen(port, '127.0.0.1')
    t.after(() => { rebound.close() })
    await new Promise<void>((resolve, reject) => { rebound.once('listening', resolve).once('error', reject) })
    assert.match(await echoThrough(proxy.port('handed'), 'still relayed'), /^PROXY TCP4 .*\r\nstill relayed$/)

    await proxy.close()
    assert.equal(dataPlane.size, 0)
    assert.equal(dataPlane.descriptors(), 0, 'every worker stopped, its descriptors and the listening duplicates closed')
  })

  // Reported after 20 ms (the default) or at once: either way each counts for the spread once reported.
  for (const reportAfterMs of [20, 0]) it(`long-lived connections opened one at a time spread over the workers, as a burst does (reportAfterMs ${reportAfterMs})`, { skip: FAST ? false : 'fast needs Linux' }, async (t) => {
    const echo = await startEchoServer()
    t.after(echo.close)
    const proxy = await startProxy({ dataPlane: { workers: 3, reportAfterMs }, defaults: { engine: 'fast' }, routes: [{ name: 'long', listen: '127.0.0.1:0', upstream: echo.address }] })
    t.after(proxy.close)
    const dataPlane = (proxy.kaproxy.engine as NetEngine).dataPlane
    // The workers start in parallel with the route: until one polls, the others take every client.
    await dataPlane.listening()
    // One at a time, each relaying before the next: EPOLLEXCLUSIVE alone wakes the same idle worker
    // for every one of them, and all nine would share one core.
    const held: net.Socket[] = []
    t.after(() => { for (const socket of held) socket.destroy() })
    for (let i = 0; i < 9; i++) {
      held.push(...await holdEchoed(proxy.port('long'), 1))
      await proxy.log.waitForCount({ event: 'open', route: 'long' }, i + 1)
    }
    const sizes = dataPlane.sizes()
    assert.equal(sizes.reduce((a, b) => a + b, 0), 9)
    // A worker stops taking clients once it holds two more than the least busy one.
    assert.ok(Math.max(...sizes) - Math.min(...sizes) <= 2, `spread over the workers: ${sizes.join('/')}`)
  })

  it('a worker that yielded the route is poked by the other one as soon as that one holds more: it polls again without waiting for its own next wake-up', { skip: FAST ? false : 'fast needs Linux' }, async (t) => {
    const echo = await startEchoServer()
    t.after(echo.close)
    const proxy = await startProxy({ dataPlane: { workers: 2, reportAfterMs: 0 }, defaults: { engine: 'fast' }, routes: [{ name: 'poked', listen: '127.0.0.1:0', upstream: echo.address }] })
    t.after(proxy.close)
    const dataPlane = (proxy.kaproxy.engine as NetEngine).dataPlane
    await dataPlane.listening()
    const held = new Map<net.Socket, number>()
    t.after(() => { for (const socket of held.keys()) socket.destroy() })
    let opened = 0
    /** One more client, relaying and counted before the next: returns the worker that took it. */
    const openOne = async (): Promise<number> => {
      const before = dataPlane.sizes()
      const [socket] = await holdEchoed(proxy.port('poked'), 1)
      await proxy.log.waitForCount({ event: 'open', route: 'poked' }, ++opened)
      const worker = dataPlane.sizes().findIndex((size, i) => size > (before[i] ?? 0))
      assert.ok(socket !== undefined && worker >= 0)
      held.set(socket, worker)
      return worker
    }
    for (let i = 0; i < 6; i++) await openOne()
    // Empty one worker: the other (`busy`, three or more) yields the route at its next turn, made
    // here by a byte through one of its connections; then it sleeps, with nothing to wake it for up to a second.
    const sizes = dataPlane.sizes()
    const busy = (sizes[0] ?? 0) >= (sizes[1] ?? 0) ? 0 : 1
    const emptied = [...held].filter(([, worker]) => worker !== busy).map(([socket]) => socket)
    for (const socket of emptied) { socket.destroy(); held.delete(socket) }
    await proxy.log.waitForCount({ event: 'close', route: 'poked' }, emptied.length)
    const kept = [...held].find(([, worker]) => worker === busy)?.[0]
    assert.ok(kept !== undefined && (dataPlane.sizes()[busy] ?? 0) >= 3, `one worker keeps three or more: ${dataPlane.sizes().join('/')}`)
    kept.write('x')
    await once(kept, 'data')
    // Ten more, one at a time (about 50 ms each): the other worker takes them until it holds more
    // than the busy one and pokes it, and the busy one takes clients again. Unpoked, it would sleep
    // on, and the other (never the last one polling) would take all ten.
    for (let i = 0; i < 10; i++) await openOne()
    const after = dataPlane.sizes()
    assert.ok(Math.max(...after) - Math.min(...after) <= 2, `spread over the workers: ${after.join('/')}`)
  })

  it('maxConnections counts the route\'s connections in every worker: a burst of 150 clients gets three relayed, the rest refused with limit', { skip: FAST ? false : 'fast needs Linux' }, async (t) => {
    const echo = await startEchoServer()
    t.after(echo.close)
    const proxy = await startProxy({ dataPlane: { workers: 3 }, defaults: { engine: 'fast' }, routes: [{ name: 'limited', listen: '127.0.0.1:0', upstream: echo.address, maxConnections: 3 }] })
    t.after(proxy.close)
    assert.equal(proxy.kaproxy.engine.acceptedBy('limited'), 'worker')
    // All at once: a worker takes at most 64 per turn, and a worker busy accepting leaves the next to another.
    const clients = await Promise.all(Array.from({ length: 150 }, async () => {
      const socket = await connect(proxy.port('limited'))
      socket.on('error', () => {})
      return socket
    }))
    t.after(() => { for (const socket of clients) socket.destroy() })
    const refused = await proxy.log.waitForCount({ event: 'close', route: 'limited', reason: 'limit' }, 147)
    assert.equal(refused.length, 147)
    // A refused client is logged by its close alone.
    await proxy.log.waitForCount({ event: 'open', route: 'limited' }, 3)
    assert.equal(proxy.log.find({ event: 'open', route: 'limited' }).length, 3, 'three relayed')
    assert.equal(proxy.log.find({ event: 'close', route: 'limited' }).length, 147, 'nothing but the refusals closed')
    assert.equal((proxy.kaproxy.engine as NetEngine).dataPlane.size, 3)
  })

  it('a reload cannot change the worker count or bulk buffers: it says a restart is needed, on every reload until then', async (t) => {
    const echo = await startEchoServer()
    t.after(echo.close)
    const route = { name: 'r', listen: '127.0.0.1:0', upstream: echo.address }
    const proxy = await startProxy({ dataPlane: { workers: 2 }, routes: [route] })
    t.after(proxy.close)
    for (let i = 1; i <= 2; i++) {
      const result = await proxy.reload({ dataPlane: { workers: 3 }, routes: [route] })
      assert.equal(result.ok, true)
      const warnings = await proxy.log.waitForCount({ event: 'restart-needed' }, i)
      assert.deepEqual(warnings[i - 1]?.settings, ['dataPlane.workers'])
    }
    const result = await proxy.reload({ dataPlane: { workers: 2, bulkBuffers: 0 }, routes: [route] })
    assert.equal(result.ok, true)
    assert.deepEqual((await proxy.log.waitForCount({ event: 'restart-needed' }, 3))[2]?.settings, ['dataPlane.bulkBuffers'])
    await proxy.reload({ dataPlane: { workers: 2 }, routes: [route] })
    assert.equal(proxy.log.find({ event: 'restart-needed' }).length, 3)
    assert.equal(await echoThrough(proxy.port('r'), 'unchanged'), 'unchanged')
  })
})
