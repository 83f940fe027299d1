// Learning from resets: the silence before a reset is recorded per route and side, exported as the
// kaproxy_idle_before_reset_seconds histogram, summarised in /routes, and turned into advice by
// `kaproxy advise` (run as the real CLI against this in-process instance).
import assert from 'node:assert/strict'
import { once } from 'node:events'
import type net from 'node:net'
import { setTimeout as delay } from 'node:timers/promises'
import { it, type TestContext } from 'node:test'
import type { AdviseReport } from '../src/admin/advise-command.js'
import type { RouteView } from '../src/admin/views.js'
import { adminAddress, adminClient } from './helpers/admin.js'
import { idleBeforeReset as histogram } from './helpers/idle-histogram.js'
import { closed, connect, startEchoServer, startServer } from './helpers/peers.js'
import { spawnCli, startProxy } from './helpers/proxy.js'
import { describeEachEngine } from './helpers/engines.js'

/** The silence the tests leave on a connection: real time, since time without bytes is what is measured. */
const SILENCE_MS = 2_200

async function advise (args: string[]): Promise<{ code: number | null, stdout: string, stderr: string }> {
  const run = spawnCli(['advise', ...args])
  let stdout = ''
  run.child.stdout?.on('data', (chunk: Buffer) => { stdout += chunk.toString() })
  const code = await run.exit
  return { code, stdout, stderr: run.stderr() }
}

/** An upstream that echoes the first message and resets the connection on the next one. */
async function resetOnSecondMessage (t: TestContext) {
  const server = await startServer((socket: net.Socket) => {
    let messages = 0
    socket.on('data', (chunk: Buffer) => {
      if (++messages === 1) socket.write(chunk)
      else socket.resetAndDestroy()
    })
  })
  t.after(server.close)
  return server
}

describeEachEngine('silence before resets', () => {
  it('a reset answering bytes sent after a silence records that silence: histogram, /routes and advise name the route', { timeout: 30_000 }, async (t) => {
    const upstream = await resetOnSecondMessage(t)
    const proxy = await startProxy({
      admin: { listen: '127.0.0.1:0' },
      routes: [{ name: 'db', listen: '127.0.0.1:0', upstream: upstream.address, keepalive: { client: { enabled: false }, upstream: { idle: '60s', interval: '10s', count: 3 } } }]
    })
    t.after(proxy.close)
    const client = await connect(proxy.port('db'))
    t.after(() => client.destroy())
    const ended = closed(client)
    client.write('warm-up')
    await once(client, 'data')
    await delay(SILENCE_MS)
    client.write('after the silence')
    assert.equal((await ended)?.code, 'ECONNRESET', 'kaproxy passed the reset on to the client')
    const line = await proxy.log.waitFor({ event: 'close', route: 'db' })
    assert.equal(line.reason, 'upstream-reset')
    const silenceMs = line.silenceBeforeResetMs as number
    console.log(`reset answering a send after ${SILENCE_MS} ms of silence: close line silenceBeforeResetMs=${silenceMs}`)
    assert.ok(silenceMs >= SILENCE_MS - 50 && silenceMs < SILENCE_MS + 1_000, `the silence the send ended, not the quiet before the reset: ${silenceMs} ms`)

    const get = adminClient(t, adminAddress(proxy))
    const metrics = (await get('/metrics')).text
    const up = histogram(metrics, 'db', 'upstream')
    assert.ok(up !== undefined)
    assert.equal(up.count, 1)
    assert.ok(Math.abs(up.sum - silenceMs / 1000) < 0.001, `sum ${up.sum}`)
    assert.equal(up.buckets['2'], 0)
    assert.equal(up.buckets['5'], 1)
    for (const le of ['1', '240', '350', '900', '1200', '86400']) assert.ok(le in up.buckets, `bucket le=${le}`)
    assert.equal(histogram(metrics, 'db', 'client')?.count, 0, 'the client side is present at zero')

    const routes = (await get('/routes')).json<{ routes: RouteView[] }>().routes
    const resets = routes[0]?.resets
    assert.equal(resets?.upstream.count, 1)
    assert.equal(resets?.upstream.cluster?.count, 1)
    assert.ok(Math.abs((resets?.upstream.cluster?.minSec ?? NaN) - silenceMs / 1000) < 0.001)
    assert.equal(resets?.upstream.advice?.kind, 'idle-timeout')
    assert.equal(resets?.upstream.advice?.suggestedIdleSec, 1)
    assert.deepEqual(resets?.client, { count: 0, kept: 0, cluster: null, advice: null })

    const text = await advise(['--admin', adminAddress(proxy)])
    assert.equal(text.stderr, '')
    assert.equal(text.code, 0)
    console.log(`kaproxy advise: ${text.stdout.trim()}`)
    assert.equal(text.stdout,
      'route db: 1 upstream connection was reset after 2 s of silence: a middlebox drops idle flows near 2 s; ' +
      'keepalive.upstream.idle is 60s: set it below 2s, e.g. idle: 1s\n')
    const json = await advise(['--admin', `http://${adminAddress(proxy)}`, '--json'])
    const report = JSON.parse(json.stdout) as AdviseReport
    assert.equal(report.advice.length, 1)
    assert.equal(report.advice[0]?.route, 'db')
    assert.equal(report.advice[0]?.side, 'upstream')
    assert.equal(report.advice[0]?.resets, 1)
  })

  it('a client reset after a silence records the quiet before it; orderly closes record nothing', { timeout: 30_000 }, async (t) => {
    const echo = await startEchoServer()
    t.after(echo.close)
    const proxy = await startProxy({ admin: { listen: '127.0.0.1:0' }, routes: [{ name: 'web', listen: '127.0.0.1:0', upstream: echo.address, keepalive: { client: { enabled: false }, upstream: { enabled: false } } }] })
    t.after(proxy.close)
    const orderly = await connect(proxy.port('web'))
    orderly.resume()
    orderly.end('bye')
    await closed(orderly)
    const client = await connect(proxy.port('web'))
    client.write('warm-up')
    await once(client, 'data')
    await delay(1_200)
    client.resetAndDestroy()
    const line = await proxy.log.waitUntil((l) => l.event === 'close' && l.reason === 'client-reset')
    const silenceMs = line.silenceBeforeResetMs as number
    assert.ok(silenceMs >= 1_150 && silenceMs < 2_200, `quiet before the reset: ${silenceMs} ms`)
    await proxy.log.waitForCount({ event: 'close', route: 'web' }, 2)
    const metrics = (await adminClient(t, adminAddress(proxy))('/metrics')).text
    assert.equal(histogram(metrics, 'web', 'client')?.count, 1, 'only the reset counts')
    assert.equal(histogram(metrics, 'web', 'upstream')?.count, 0)
    const text = await advise(['--admin', adminAddress(proxy)])
    // A timeout near 1 s is below what keepalive can beat, and advise says so.
    assert.equal(text.stdout, 'route web: 1 client connection was reset after 1 s of silence: a middlebox drops idle flows near 1 s; ' +
      'keepalive cannot probe more often than every 1s, so it cannot beat this timeout\n')
  })

  it('advise says nothing where there is no evidence, and fails clearly without an admin API', { timeout: 30_000 }, async (t) => {
    const echo = await startEchoServer()
    t.after(echo.close)
    const proxy = await startProxy({ admin: { listen: '127.0.0.1:0' }, routes: [{ name: 'quiet', listen: '127.0.0.1:0', upstream: echo.address }] })
    t.after(proxy.close)
    const text = await advise(['--admin', adminAddress(proxy)])
    assert.equal(text.code, 0)
    assert.doesNotMatch(text.stdout, /route quiet/)
    assert.match(text.stdout, /^no route has had a reset or keepalive timeout after a silence yet \(1 route at http:\/\/127\.0\.0\.1:\d+\): nothing to advise\n$/)
    const json = JSON.parse((await advise(['--admin', adminAddress(proxy), '--json'])).stdout) as AdviseReport
    assert.deepEqual(json.advice, [])
    await proxy.close()
    const down = await advise(['--admin', adminAddress(proxy)])
    assert.equal(down.code, 1)
    assert.match(down.stderr, /^kaproxy: cannot reach the admin API at http:\/\/127\.0\.0\.1:\d+: connection refused \(ECONNREFUSED\)/)
  })
})
