import assert from 'node:assert/strict'
import { readFileSync, readdirSync, readlinkSync } from 'node:fs'
import type net from 'node:net'
import { describe, it } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import type { RouteStats } from '../src/admin/metrics.js'
import { readKeepaliveFd } from '../src/keepalive.js'
import type { ConnectionTally } from '../src/relay/engine.js'
import { NetEngine } from '../src/relay/net/engine.js'
import { ENGINES } from './helpers/engines.js'
import { closed, connect, startEchoServer } from './helpers/peers.js'
import { startProxy, testConfig } from './helpers/proxy.js'

const FAST = ENGINES[0] === 'fast'

/** TCP states in /proc/net/tcp (include/net/tcp_states.h). */
const STATES: Readonly<Record<string, string>> = { '01': 'ESTABLISHED', '06': 'TIME_WAIT', '07': 'CLOSE', '08': 'CLOSE_WAIT', '09': 'LAST_ACK', '0A': 'LISTEN' }

/**
 * The kernel's IPv4 TCP sockets between `localPort` and `remotePort` on 127.0.0.1, and which of
 * this process's descriptors (the worker's among them: threads share them) refers to each, if any.
 */
function sockets (localPort: number, remotePort: number): Array<{ state: string, fd: number | null }> {
  const byInode = new Map<string, number>()
  for (const name of readdirSync('/proc/self/fd')) {
    let target = ''
    try { target = readlinkSync(`/proc/self/fd/${name}`) } catch { continue }
    const inode = /^socket:\[(\d+)\]$/.exec(target)?.[1]
    if (inode !== undefined) byInode.set(inode, Number(name))
  }
  const port = (hex: string | undefined): number => parseInt(hex?.split(':')[1] ?? '', 16)
  return readFileSync('/proc/net/tcp', 'utf8').split('\n').slice(1).flatMap((line) => {
    const fields = line.trim().split(/\s+/)
    if (port(fields[1]) !== localPort || port(fields[2]) !== remotePort) return []
    return [{ state: STATES[fields[3] ?? ''] ?? String(fields[3]), fd: byInode.get(fields[9] ?? '') ?? null }]
  })
}

/** The one descriptor this process holds for the established socket from `localPort` to `remotePort`. */
function descriptorOf (localPort: number, remotePort: number): number {
  const found = sockets(localPort, remotePort).filter((socket) => socket.state === 'ESTABLISHED' && socket.fd !== null)
  assert.equal(found.length, 1, `one established socket ${localPort} -> ${remotePort}`)
  return found[0]?.fd as number
}

async function echoed (socket: net.Socket, text: string): Promise<void> {
  let seen = ''
  await new Promise<void>((resolve, reject) => {
    socket.on('data', (chunk: Buffer) => { seen += chunk.toString(); if (seen.length >= text.length) resolve() })
    socket.once('error', reject)
    socket.write(text)
  })
  assert.equal(seen, text)
}

/** The route's /stats figures once `done` holds of them: polled (nothing is logged at warn), every 5 ms for at most 5 s. */
async function statsWhen (proxy: Awaited<ReturnType<typeof startProxy>>, route: string, done: (stats: RouteStats) => boolean): Promise<RouteStats> {
  for (let i = 0; i < 1000; i++) {
    const stats = proxy.kaproxy.metrics.snapshot().routes.find((r) => r.name === route)
    if (stats !== undefined && done(stats)) return stats
    await sleep(5)
  }
  throw new Error(`route ${route}: stats never got there: ${JSON.stringify(proxy.kaproxy.metrics.snapshot().routes)}`)
}

const closes = (stats: RouteStats, reason: string, side: string): number => stats.closes.find((c) => c.reason === reason && c.side === side)?.count ?? 0

const KEEPALIVE = { client: { idle: '30s', interval: '5s', count: 4 }, upstream: { idle: '2m', interval: '15s', count: 8 } }

describe('the fast engine\'s worker reports a connection once it relayed dataPlane.reportAfterMs', { skip: FAST ? false : 'fast needs Linux' }, () => {
  it('one that ends sooner never reaches the main thread: its keepalive is applied (and re-applied by a reload), the worker closes both sockets, and it is logged open and closed once, as any other', async (t) => {
    const upstream = await startEchoServer()
    t.after(upstream.close)
    const route = (keepalive: Record<string, unknown>) => ({ name: 'short', listen: '127.0.0.1:0', upstream: upstream.address, keepalive })
    // Never due within the test: every connection ends unreported.
    const proxy = await startProxy({ dataPlane: { reportAfterMs: 60_000 }, defaults: { engine: 'fast' }, routes: [route(KEEPALIVE)] })
    t.after(proxy.close)
    const dataPlane = (proxy.kaproxy.engine as NetEngine).dataPlane
    await dataPlane.listening()
    const held = dataPlane.descriptors()

    const client = await connect(proxy.port('short'))
    t.after(() => client.destroy())
    await echoed(client, 'hello')
    const upstreamSide = await upstream.nextSocket()
    // Read now: a closed socket forgets its ports.
    const clientPort = client.localPort as number
    const upstreamPort = upstreamSide.remotePort as number
    const clientFd = descriptorOf(proxy.port('short'), clientPort)
    const upstreamFd = descriptorOf(upstreamPort, upstream.port)
    assert.deepEqual([...proxy.kaproxy.engine.connections('short')], [], 'the main thread has no record of it')
    assert.equal(proxy.log.find({ event: 'open' }).length, 0, 'not logged open yet')
    assert.deepEqual(readKeepaliveFd(clientFd), { enabled: true, idleSec: 30, intervalSec: 5, count: 4, userTimeoutMs: 0 })
    assert.deepEqual(readKeepaliveFd(upstreamFd), { enabled: true, idleSec: 120, intervalSec: 15, count: 8, userTimeoutMs: 0 })

    // The main thread re-tunes the connections it knows; the worker those it has not reported.
    const changed = { client: { idle: '20s', interval: '3s', count: 3 }, upstream: { idle: '90s', interval: '10s', count: 5 } }
    assert.equal((await proxy.reload({ dataPlane: { reportAfterMs: 60_000 }, defaults: { engine: 'fast' }, routes: [route({ ...changed, applyToExisting: true })] })).ok, true)
    assert.deepEqual(readKeepaliveFd(clientFd), { enabled: true, idleSec: 20, intervalSec: 3, count: 3, userTimeoutMs: 0 })
    assert.deepEqual(readKeepaliveFd(upstreamFd), { enabled: true, idleSec: 90, intervalSec: 10, count: 5, userTimeoutMs: 0 })

    // The client's FIN goes through, the echo server answers with its own: an orderly close.
    const upstreamClosed = closed(upstreamSide)
    client.end()
    assert.equal(await closed(client), null)
    assert.equal(await upstreamClosed, null)
    const close = await proxy.log.waitFor({ event: 'close', route: 'short' })
    assert.deepEqual(
      { reason: close.reason, side: close.side, bytesFromClient: close.bytesFromClient, bytesFromUpstream: close.bytesFromUpstream, client: close.client, upstream: close.upstream },
      { reason: 'client-closed', side: 'client', bytesFromClient: 5, bytesFromUpstream: 5, client: `127.0.0.1:${clientPort}`, upstream: upstream.address })
    assert.equal(typeof close.durationMs, 'number')
    assert.deepEqual(proxy.log.find({ event: 'open' }).map((line) => line.conn), [close.conn], 'logged open once, with its close')
    // The worker closed its descriptors before it reported the close: none of this process's is left on either socket.
    assert.deepEqual(sockets(proxy.port('short'), clientPort).filter((socket) => socket.fd !== null), [])
    assert.deepEqual(sockets(upstreamPort, upstream.port).filter((socket) => socket.fd !== null), [])
    assert.equal(dataPlane.descriptors(), held, 'the descriptor budget no longer counts them')
  })

  it('a client reset before the report resets the upstream too, as a reported connection does, and is logged client-reset', async (t) => {
    const upstream = await startEchoServer()
    t.after(upstream.close)
    const proxy = await startProxy({ dataPlane: { reportAfterMs: 60_000 }, defaults: { engine: 'fast' }, routes: [{ name: 'reset', listen: '127.0.0.1:0', upstream: upstream.address }] })
    t.after(proxy.close)
    await (proxy.kaproxy.engine as NetEngine).dataPlane.listening()

    const client = await connect(proxy.port('reset'))
    await echoed(client, 'hello')
    const upstreamSide = await upstream.nextSocket()
    const upstreamPort = upstreamSide.remotePort as number
    const upstreamClosed = closed(upstreamSide)
    client.resetAndDestroy()
    assert.equal((await upstreamClosed)?.code, 'ECONNRESET', 'the upstream got a reset, not a FIN')
    const close = await proxy.log.waitFor({ event: 'close', route: 'reset' })
    assert.deepEqual({ reason: close.reason, side: close.side }, { reason: 'client-reset', side: 'client' })
    assert.deepEqual(sockets(upstreamPort, upstream.port).filter((socket) => socket.fd !== null), [])
  })

  it('one still open at reportAfterMs is reported: listed with its keepalive read back, then closed by the main thread', async (t) => {
    const upstream = await startEchoServer()
    t.after(upstream.close)
    const proxy = await startProxy({ dataPlane: { reportAfterMs: 50 }, defaults: { engine: 'fast' }, routes: [{ name: 'long', listen: '127.0.0.1:0', upstream: upstream.address, keepalive: KEEPALIVE }] })
    t.after(proxy.close)
    await (proxy.kaproxy.engine as NetEngine).dataPlane.listening()

    const client = await connect(proxy.port('long'))
    t.after(() => client.destroy())
    await echoed(client, 'hello')
    const open = await proxy.log.waitFor({ event: 'open', route: 'long' })
    const [connection] = [...proxy.kaproxy.engine.connections('long')]
    assert.ok(connection !== undefined)
    assert.equal(connection.id, open.conn)
    const clientFd = connection.endpoint('client')?.fd ?? -1
    assert.equal(clientFd, descriptorOf(proxy.port('long'), client.localPort as number), 'the main thread holds the worker\'s descriptor')
    assert.deepEqual(readKeepaliveFd(clientFd), { enabled: true, idleSec: 30, intervalSec: 5, count: 4, userTimeoutMs: 0 })
    client.end()
    const close = await proxy.log.waitFor({ event: 'close', route: 'long' })
    assert.deepEqual({ conn: close.conn, reason: close.reason, bytesFromClient: close.bytesFromClient }, { conn: open.conn, reason: 'client-closed', bytesFromClient: 5 })
    assert.deepEqual([...proxy.kaproxy.engine.connections('long')], [])
  })

  it('while no line per connection is logged, those that close in order are counted per route: the same totals in /stats and the metrics; a reset still comes one by one, and info brings the lines back', async (t) => {
    const upstream = await startEchoServer()
    t.after(upstream.close)
    const config = (level: string) => ({ log: { level }, dataPlane: { reportAfterMs: 60_000 }, defaults: { engine: 'fast' }, routes: [{ name: 'tally', listen: '127.0.0.1:0', upstream: upstream.address }] })
    const proxy = await startProxy(config('info'))
    t.after(proxy.close)
    await (proxy.kaproxy.engine as NetEngine).dataPlane.listening()
    assert.equal((await proxy.reload(config('warn'))).ok, true)

    for (let i = 0; i < 5; i++) {
      const client = await connect(proxy.port('tally'))
      await echoed(client, 'hello')
      client.end()
      assert.equal(await closed(client), null)
    }
    const tallied = await statsWhen(proxy, 'tally', (stats) => stats.connectionsTotal === 5)
    assert.deepEqual(
      { active: tallied.active, upstreamConnects: tallied.upstreamConnects, bytesFromClient: tallied.bytesFromClient, bytesFromUpstream: tallied.bytesFromUpstream, clientClosed: closes(tallied, 'client-closed', 'client') },
      { active: 0, upstreamConnects: 5, bytesFromClient: 25, bytesFromUpstream: 25, clientClosed: 5 })
    assert.equal(typeof tallied.connectMsMean, 'number')
    const { text } = await proxy.kaproxy.metrics.prometheus()
    assert.match(text, /^kaproxy_upstream_connect_seconds_count\{route="tally"\} 5$/m)
    assert.match(text, /^kaproxy_connections_closed_total\{route="tally",reason="client-closed",side="client"\} 5$/m)
    assert.equal(proxy.log.find({ event: 'close' }).length, 0, 'no line per connection at warn')

    const reset = await connect(proxy.port('tally'))
    await echoed(reset, 'hello')
    reset.resetAndDestroy()
    const afterReset = await statsWhen(proxy, 'tally', (stats) => stats.connectionsTotal === 6)
    assert.equal(closes(afterReset, 'client-reset', 'client'), 1)

    assert.equal((await proxy.reload(config('info'))).ok, true)
    const logged = await connect(proxy.port('tally'))
    await echoed(logged, 'hello')
    logged.end()
    const close = await proxy.log.waitFor({ event: 'close', route: 'tally' })
    assert.deepEqual({ reason: close.reason, bytesFromClient: close.bytesFromClient }, { reason: 'client-closed', bytesFromClient: 5 })
    assert.equal((await statsWhen(proxy, 'tally', (stats) => stats.connectionsTotal === 7)).upstreamConnects, 7)
  })

  it('the engine tells its observer of them together (onTally), never one by one (onOpen, onClose)', async (t) => {
    const upstream = await startEchoServer()
    t.after(upstream.close)
    let opened = 0
    let closedOnes = 0
    const tallies: ConnectionTally[] = []
    let allTallied = (): void => {}
    let toldOneByOne = (_err: Error): void => {}
    const tallied = new Promise<void>((resolve, reject) => { allTallied = resolve; toldOneByOne = reject })
    const engine = new NetEngine({
      onOpen: () => { opened++ },
      // Fails at once rather than waiting for tallies that would never come.
      onClose: () => { closedOnes++; toldOneByOne(new Error('a connection was told one by one')) },
      onTally: (_route, tally) => {
        tallies.push({ ...tally, connectMs: [...tally.connectMs] })
        if (tallies.reduce((sum, one) => sum + one.connectMs.length, 0) >= 3) allTallied()
      }
    }, { workers: 1, reportAfterMs: 60_000 })
    t.after(async () => { await engine.close() })
    engine.dataPlane.connectionRecords(false)
    await engine.start(testConfig({ defaults: { engine: 'fast' }, routes: [{ name: 'tally', listen: '127.0.0.1:0', upstream: upstream.address }] }).routes)
    await engine.dataPlane.listening()
    const address = engine.address('tally') ?? ''
    for (let i = 0; i < 3; i++) {
      const client = await connect(Number(address.slice(address.lastIndexOf(':') + 1)))
      await echoed(client, 'hello')
      client.end()
      assert.equal(await closed(client), null)
    }
    await tallied
    const sum = (pick: (tally: ConnectionTally) => number): number => tallies.reduce((total, tally) => total + pick(tally), 0)
    assert.deepEqual(
      { clientClosed: sum((x) => x.clientClosed), upstreamClosed: sum((x) => x.upstreamClosed), bytesFromClient: sum((x) => x.bytesFromClient), bytesFromUpstream: sum((x) => x.bytesFromUpstream), connects: sum((x) => x.connectMs.length) },
      { clientClosed: 3, upstreamClosed: 0, bytesFromClient: 15, bytesFromUpstream: 15, connects: 3 })
    assert.ok(tallies.every((tally) => tally.connectMs.every((ms) => ms >= 0 && ms < 5000)), 'connect times in ms')
    assert.deepEqual({ opened, closedOnes }, { opened: 0, closedOnes: 0 })
  })
})
