import assert from 'node:assert/strict'
import { once } from 'node:events'
import net from 'node:net'
import { setTimeout as delay } from 'node:timers/promises'
import { cpSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { describe, it } from 'node:test'
import { buildConfig } from '../src/config/load.js'
import { ConfigError } from '../src/errors.js'
import type { NetEngine } from '../src/relay/net/engine.js'
import { ENGINES } from './helpers/engines.js'
import { closedPort, connect, echoThrough, startEchoServer, startServer } from './helpers/peers.js'
import { readKeepaliveFd } from '../src/keepalive.js'
import { spawnCli, startProxy } from './helpers/proxy.js'

const FAST = ENGINES[0] === 'fast'

function engines (raw: Record<string, unknown>, env: NodeJS.ProcessEnv = {}): Array<[string, string | null]> {
  return buildConfig({ admin: { listen: '' }, ...raw }, { env }).routes.map((route) => [route.engine, route.engineNote])
}

describe('choosing the engine', () => {
  it('resolves auto, fast and net from defaults, the route and KAPROXY_ENGINE; a bad value names field, value and rule', () => {
    const route = { listen: '127.0.0.1:0', upstream: '127.0.0.1:1' }
    const auto = FAST ? 'fast' : 'net'
    assert.deepEqual(engines({ routes: [{ name: 'a', ...route }, { name: 'b', ...route, engine: 'net' }] }), [[auto, null], ['net', null]])
    assert.deepEqual(engines({ defaults: { engine: 'net' }, routes: [{ name: 'a', ...route }, { name: 'b', ...route, engine: 'auto' }] }), [['net', null], [auto, null]])
    assert.deepEqual(engines({ routes: [{ name: 'a', ...route }] }, { KAPROXY_ENGINE: 'net' }), [['net', null]])
    // PROXY headers in are read by Node: that route runs on net, and says why.
    const [[engine, note]] = engines({ routes: [{ name: 'a', ...route, engine: 'fast', acceptProxyProtocol: true }] }) as [[string, string | null]]
    assert.equal(engine, 'net')
    assert.match(note ?? '', FAST ? /acceptProxyProtocol .* runs on net, not fast/ : /needs Linux/)

    assert.throws(() => buildConfig({ routes: [{ name: 'a', ...route, engine: 'turbo' }] }, { env: {} }), (err: unknown) =>
      err instanceof ConfigError && err.issues.some((i) => i.path === 'routes[0].engine' && i.message === 'must be one of auto, fast, net (got "turbo")'))
    assert.throws(() => buildConfig({ defaults: { engine: 'splice' }, routes: [] }, { env: {} }), (err: unknown) =>
      err instanceof ConfigError && err.issues.some((i) => i.path === 'defaults.engine' && /must be one of auto, fast, net \(got "splice"\)/.test(i.message)))
  })

  it('a fast route hands each connection to the worker, a net route keeps it in Node; the worker stops with kaproxy', { skip: FAST ? false : 'fast needs Linux' }, async (t) => {
    const echo = await startEchoServer()
    t.after(echo.close)
    const proxy = await startProxy({ routes: [{ name: 'f', listen: '127.0.0.1:0', upstream: echo.address, engine: 'fast' }, { name: 'n', listen: '127.0.0.1:0', upstream: echo.address, engine: 'net' }] })
    t.after(proxy.close)
    const dataPlane = (proxy.kaproxy.engine as NetEngine).dataPlane

    const onNet = await connect(proxy.port('n'))
    t.after(() => onNet.destroy())
    await proxy.log.waitFor({ event: 'open', route: 'n' })
    assert.equal(dataPlane.size, 0, 'a net connection is not handed over')

    const onFast = await connect(proxy.port('f'))
    t.after(() => onFast.destroy())
    await proxy.log.waitFor({ event: 'open', route: 'f' })
    assert.equal(dataPlane.size, 1, 'the fast connection is relayed by the worker')
    assert.equal(await echoThrough(proxy.port('f'), 'through the worker'), 'through the worker')
    // A few bytes are copied across; a stream that fills the worker's copy buffer goes through a bulk buffer.
    const large = 'bulk '.repeat(200 * 1024)
    assert.equal(await echoThrough(proxy.port('f'), large), large)
    // The eventfd and the worker's event loop (4) and its epoll set (1).
    assert.ok(dataPlane.descriptors() >= 5, `the worker's own descriptors are counted (${dataPlane.descriptors()})`)

    onFast.end()
    await proxy.log.waitFor({ event: 'close', route: 'f', conn: 2 })
    assert.equal(dataPlane.size, 0)
    await proxy.close()
    assert.equal(dataPlane.descriptors(), 0, 'the worker stopped and its descriptors are closed')
  })

  it('the worker accepts and dials a fast route with one numeric target itself, with each side\'s keepalive read back; other routes are accepted by Node', { skip: FAST ? false : 'fast needs Linux' }, async (t) => {
    const echo = await startEchoServer()
    t.after(echo.close)
    const echo6 = await startEchoServer('::1')
    t.after(echo6.close)
    const refused = await closedPort()
    const keepalive = { client: { idle: '31s', interval: '7s', count: 4, userTimeout: '40s' }, upstream: { idle: '2m', interval: '11s', count: 6 } }
    const proxy = await startProxy({ routes: [
      { name: 'w', listen: '127.0.0.1:0', upstream: echo.address, engine: 'fast', keepalive },
      { name: 'w6', listen: '[::1]:0', upstream: echo6.address, engine: 'fast' },
      { name: 'refused', listen: '127.0.0.1:0', upstream: `127.0.0.1:${refused}`, engine: 'fast' },
      { name: 'limited', listen: '127.0.0.1:0', upstream: echo.address, engine: 'fast', maxConnections: 1 },
      { name: 'pp', listen: '127.0.0.1:0', upstream: echo.address, engine: 'fast', proxyProtocol: 'v1' },
      { name: 'n', listen: '127.0.0.1:0', upstream: echo.address, engine: 'net' }
    ] })
    t.after(proxy.close)
    const engine = proxy.kaproxy.engine
    assert.deepEqual(['w', 'w6', 'refused', 'limited', 'pp', 'n'].map((route) => engine.acceptedBy(route)), ['worker', 'worker', 'worker', 'worker', 'main', 'main'])

    // Relayed byte-exact, over IPv4 and IPv6, with the close logged as on the main thread.
    assert.equal(await echoThrough(proxy.port('w'), 'accepted by the worker'), 'accepted by the worker')
    assert.equal(await echoThrough(proxy.port('w6'), 'over IPv6', '::1'), 'over IPv6')
    const closed = await proxy.log.waitFor({ event: 'close', route: 'w' })
    assert.equal(closed.reason, 'client-closed')
    assert.equal(closed.bytesFromClient, 'accepted by the worker'.length)
    assert.equal(closed.bytesFromUpstream, 'accepted by the worker'.length)
    assert.match(String(closed.client), /^127\.0\.0\.1:\d+$/)

    // A live connection: both sides set by the worker, read back from the kernel here.
    const held = await connect(proxy.port('w'))
    t.after(() => held.destroy())
    const opened = await proxy.log.waitFor({ event: 'open', route: 'w', client: `127.0.0.1:${held.localPort ?? 0}` })
    const record = [...engine.connections('w')].find((c) => c.id === opened.conn)
    assert.ok(record !== undefined)
    const want = {
      client: { enabled: true, idleSec: 31, intervalSec: 7, count: 4, userTimeoutMs: 40_000 },
      upstream: { enabled: true, idleSec: 120, intervalSec: 11, count: 6, userTimeoutMs: 0 }
    }
    for (const side of ['client', 'upstream'] as const) {
      const endpoint = record.endpoint(side)
      assert.ok(endpoint !== null && endpoint.fd >= 0)
      assert.deepEqual(readKeepaliveFd(endpoint.fd), want[side], `${side} keepalive read back`)
    }
    assert.equal(record.endpoint('upstream')?.remote, echo.address)

    // A refused dial and a full route close the client with the reasons the main thread gives.
    const toRefused = await connect(proxy.port('refused'))
    toRefused.on('error', () => {})
    const refusal = await proxy.log.waitFor({ event: 'close', route: 'refused' })
    assert.equal(refusal.reason, 'upstream-refused')
    assert.equal((refusal.err as { code?: string }).code, 'ECONNREFUSED')
    const first = await connect(proxy.port('limited'))
    t.after(() => first.destroy())
    await proxy.log.waitFor({ event: 'open', route: 'limited' })
    const second = await connect(proxy.port('limited'))
    second.on('error', () => {})
    const limited = await proxy.log.waitFor({ event: 'close', route: 'limited' })
    assert.equal(limited.reason, 'limit')
  })

  it('a single target the worker dials is ejected and tried again as on the main thread: refused, then no-upstream, then a trial', { skip: FAST ? false : 'fast needs Linux' }, async (t) => {
    const port = await closedPort()
    const proxy = await startProxy({ routes: [
      { name: 'worker', listen: '127.0.0.1:0', upstream: `127.0.0.1:${port}`, engine: 'fast' },
      { name: 'node', listen: '127.0.0.1:0', upstream: `127.0.0.1:${port}`, engine: 'net' }
    ] })
    t.after(proxy.close)
    assert.equal(proxy.kaproxy.engine.acceptedBy('worker'), 'worker')
    const reasons = async (route: string, count: number): Promise<string[]> => {
      const seen: string[] = []
      for (let i = 0; i < count; i++) {
        const before = proxy.log.find({ event: 'close', route }).length
        const client = await connect(proxy.port(route))
        client.on('error', () => {})
        const lines = await proxy.log.waitForCount({ event: 'close', route }, before + 1)
        seen.push(String(lines[before]?.reason))
        client.destroy()
      }
      return seen
    }
    // fall 3 (no health checks): three refusals take the target down; the next client is refused without a dial.
    assert.deepEqual(await reasons('node', 4), ['upstream-refused', 'upstream-refused', 'upstream-refused', 'no-upstream'])
    assert.deepEqual(await reasons('worker', 3), ['upstream-refused', 'upstream-refused', 'upstream-refused'])
    await proxy.log.waitFor({ event: 'upstream-state', route: 'worker', state: 'down' })
    // The worker learns of the ejection from a message: a client already on its way may still be
    // dialed and refused; then clients are refused without a dial (at most 5 tries).
    const after: string[] = []
    while (after.length < 5 && after.at(-1) !== 'no-upstream') after.push(...await reasons('worker', 1))
    assert.equal(after.at(-1), 'no-upstream', after.join(', '))
    assert.ok(after.slice(0, -1).every((reason) => reason === 'upstream-refused'), after.join(', '))
    assert.equal(proxy.log.find({ event: 'upstream-state', route: 'worker', state: 'down' }).length, 1)

    // The target comes back: after the 1 s back-off a trial connection gets through and brings it up.
    const server = net.createServer((socket) => { socket.pipe(socket) }).listen(port, '127.0.0.1')
    t.after(() => { server.close() })
    await once(server, 'listening')
    // The back-off is a timer with nothing to await: ask every 100 ms, at most 40 times.
    let served = ''
    for (let attempt = 0; attempt < 40 && served === ''; attempt++) {
      served = await echoThrough(proxy.port('worker'), 'back').catch(() => '')
      if (served === '') await delay(100)
    }
    assert.equal(served, 'back')
    await proxy.log.waitFor({ event: 'upstream-state', route: 'worker', state: 'up' })
  })

  it('a route whose target is one of kaproxy\'s own listeners is accepted by Node, where the loop guard checks each flow', { skip: FAST ? false : 'fast needs Linux' }, async (t) => {
    const echo = await startEchoServer()
    t.after(echo.close)
    const back = { name: 'back', listen: '127.0.0.1:0', upstream: echo.address, engine: 'fast' }
    const proxy = await startProxy({ routes: [back] })
    t.after(proxy.close)
    const engine = proxy.kaproxy.engine
    assert.equal(engine.acceptedBy('back'), 'worker')
    await proxy.reload({ routes: [back, { name: 'front', listen: '127.0.0.1:0', upstream: `127.0.0.1:${proxy.port('back')}`, engine: 'fast' }] })
    assert.equal(engine.acceptedBy('front'), 'main')
    assert.equal(engine.acceptedBy('back'), 'worker')
    assert.equal(await echoThrough(proxy.port('front'), 'front to back'), 'front to back')
  })

  it('check and the start-up log say which engine each route runs on, and why a route runs on another', async (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'kaproxy-engine-'))
    t.after(() => { rmSync(dir, { recursive: true, force: true }) })
    const file = join(dir, 'engines.yaml')
    writeFileSync(file, 'routes:\n  - { name: plain, listen: "127.0.0.1:0", upstream: "127.0.0.1:1" }\n  - { name: behind-lb, listen: "127.0.0.1:0", upstream: "127.0.0.1:1", acceptProxyProtocol: true, engine: fast }\n')
    const check = spawnCli(['check', '--config', file])
    t.after(check.kill)
    // Non-JSON lines arrive as { msg } in the sink.
    assert.equal(await check.exit, 0)
    const lines = check.stdout.lines.map((line) => String(line.msg ?? '')).join('\n')
    assert.match(lines, new RegExp(`route plain: .*engine ${FAST ? 'fast' : 'net'}\\)`))
    assert.match(lines, /route behind-lb: .*engine net\)\n {2}note: /)

    const run = spawnCli(['--config', file])
    t.after(run.kill)
    const warning = await run.stdout.waitFor({ event: 'route-engine', route: 'behind-lb' })
    assert.equal(warning.engine, 'net')
    assert.equal(warning.level, 40)
    const plan = await run.stdout.waitFor({ event: 'route', route: 'plain' })
    assert.equal(plan.engine, FAST ? 'fast' : 'net')
  })
})

describe('when the fast engine cannot run', () => {
  it('workers that fail to start are logged once each, and connections relay on net instead', { skip: FAST ? false : 'fast needs Linux' }, async (t) => {
    // A copy of the build without the worker's file, inside the checkout so packages resolve.
    const dist = fileURLToPath(new URL('../../dist', import.meta.url))
    const broken = mkdtempSync(join(dirname(dist), 'build', 'no-worker-'))
    t.after(() => { rmSync(broken, { recursive: true, force: true }) })
    cpSync(dist, broken, { recursive: true })
    rmSync(join(broken, 'relay', 'fast', 'splice-worker.js'))
    const echo = await startEchoServer()
    t.after(echo.close)
    const recorder = await startServer(() => {})
    t.after(recorder.close)
    const file = join(broken, 'routes.json')
    writeFileSync(file, JSON.stringify({ dataPlane: { workers: 2 }, defaults: { engine: 'fast' }, routes: [
      { name: 'echo', listen: '127.0.0.1:0', upstream: echo.address },
      { name: 'proxied', listen: '127.0.0.1:0', upstream: recorder.address, proxyProtocol: 'v1' }
    ] }))
    const run = spawnCli(['--config', file], {}, join(broken, 'cli.js'))
    t.after(run.kill)
    const portOf = async (route: string): Promise<number> => Number(String((await run.stdout.waitFor({ event: 'listening', route })).address).split(':').pop())
    const port = await portOf('echo')

    // The first connection starts the worker; whether it is relayed or closed depends on when the
    // failure is seen. Every connection after the failure is relayed by Node.
    const first = await connect(port)
    first.on('error', () => {})
    first.destroy()
    const failed = await run.stdout.waitForCount({ event: 'data-plane-failed' }, 2)
    assert.deepEqual(failed.map((line) => line.level), [50, 50])
    assert.deepEqual(failed.map((line) => line.worker).sort(), [0, 1])
    assert.deepEqual(failed.map((line) => line.workersLeft), [1, 0])
    assert.match(String(failed[1]?.msg), /new connections relay on the net engine/)
    for (const text of ['one', 'two', 'three']) assert.equal(await echoThrough(port, text), text)
    assert.equal(run.stdout.find({ event: 'data-plane-failed' }).length, 2, 'logged once per worker')

    // A PROXY header written before the hand-over was refused is not written again by Node.
    const client = await connect(await portOf('proxied'))
    client.end('payload')
    const upstream = await recorder.nextSocket()
    const text = await new Promise<string>((resolve) => {
      let seen = ''
      upstream.on('data', (chunk: Buffer) => { seen += chunk.toString('latin1') })
      upstream.on('end', () => { upstream.end(); resolve(seen) })
    })
    assert.match(text, /^PROXY TCP4 127\.0\.0\.1 127\.0\.0\.1 \d+ \d+\r\npayload$/)
  })
})
