import assert from 'node:assert/strict'
import { once } from 'node:events'
import type net from 'node:net'
import { describe, it } from 'node:test'
import parsePrometheusTextFormat from 'parse-prometheus-text-format'
import { adminAddress, adminClient } from './helpers/admin.js'
import { closedPort, connect, startEchoServer, startServer } from './helpers/peers.js'
import { startProxy } from './helpers/proxy.js'
import { ENGINES } from './helpers/engines.js'

type Family = ReturnType<typeof parsePrometheusTextFormat>[number]

/** The value of the sample of `name` whose labels are exactly `labels`; undefined when absent. */
function sample (families: Family[], name: string, labels: Record<string, string> = {}): number | undefined {
  const family = families.find((f) => f.name === name)
  const metric = family?.metrics.find((m) => {
    const own = m.labels ?? {}
    return Object.keys(own).length === Object.keys(labels).length && Object.entries(labels).every(([k, v]) => own[k] === v)
  })
  return metric === undefined || metric.value === undefined ? undefined : Number(metric.value)
}

/** Send `size` bytes, read the echo, then close; resolves once the client socket closed. */
async function roundTrip (port: number, size: number): Promise<void> {
  const socket = await connect(port, '127.0.0.1', { allowHalfOpen: true })
  let got = 0
  socket.on('data', (chunk: Buffer) => { got += chunk.length })
  socket.end(Buffer.alloc(size, 1))
  await once(socket, 'end')
  assert.equal(got, size)
  socket.destroy()
}

/** A peer that stops reading: the other end's send buffer fills and its window drops to zero. */
function stalled (socket: net.Socket): void {
  socket.pause()
}

/** Write until the kernel pushes back for good; the bytes pile up in front of a stalled reader. */
function flood (socket: net.Socket): void {
  const chunk = Buffer.alloc(1 << 20)
  const pump = (): void => { while (socket.writable && socket.write(chunk)) { /* until backpressure */ } }
  socket.on('drain', pump)
  socket.on('error', () => {})
  pump()
}

describe('/metrics', () => {
  it('parses as Prometheus text and its counters equal the traffic and the closes', async (t) => {
    const echo = await startEchoServer()
    t.after(echo.close)
    // Upstream of `zero-up`: never reads, so kaproxy's upstream socket zero-window-probes until
    // TCP_USER_TIMEOUT gives up (ETIMEDOUT: keepalive-timeout on the upstream side).
    const sink = await startServer(stalled)
    t.after(sink.close)
    // Upstream of `zero-client`: floods towards a client that never reads.
    const source = await startServer(flood)
    t.after(source.close)
    const refusedPort = await closedPort()
    const quick = { idle: 1, interval: 1, count: 1, userTimeout: '1s' }
    const proxy = await startProxy({
      admin: { listen: '127.0.0.1:0' },
      routes: [
        { name: 'echo', listen: '127.0.0.1:0', upstream: echo.address },
        { name: 'refused', listen: '127.0.0.1:0', upstream: `127.0.0.1:${refusedPort}` },
        { name: 'zero-up', listen: '127.0.0.1:0', upstream: sink.address, keepalive: { upstream: quick } },
        { name: 'zero-client', listen: '127.0.0.1:0', upstream: source.address, keepalive: { client: quick } }
      ]
    })
    t.after(proxy.close)
    const get = adminClient(t, adminAddress(proxy))

    // Three complete exchanges, closed by the client.
    for (const size of [1000, 20_000, 300_000]) await roundTrip(proxy.port('echo'), size)
    // One still open at scrape time, after 500 bytes each way.
    const live = await connect(proxy.port('echo'))
    t.after(() => live.destroy())
    live.write(Buffer.alloc(500, 2))
    let echoed = 0
    await new Promise<void>((resolve) => { live.on('data', (chunk: Buffer) => { echoed += chunk.length; if (echoed >= 500) resolve() }) })
    // Two refused dials.
    for (let i = 0; i < 2; i++) {
      const refused = await connect(proxy.port('refused'))
      refused.resume()
      await once(refused, 'close')
    }
    // Both dead-peer closes at once (each about 1.5 s).
    const up = await connect(proxy.port('zero-up'))
    t.after(() => up.destroy())
    flood(up)
    const down = await connect(proxy.port('zero-client'))
    t.after(() => down.destroy())
    stalled(down)
    await proxy.log.waitFor({ event: 'close', route: 'zero-up' })
    await proxy.log.waitFor({ event: 'close', route: 'zero-client' })
    await proxy.log.waitForCount({ event: 'close', route: 'echo' }, 3)
    await proxy.log.waitForCount({ event: 'close', route: 'refused' }, 2)

    const response = await get('/metrics')
    assert.equal(response.status, 200)
    assert.match(String(response.headers['content-type']), /^text\/plain; version=0\.0\.4/)
    const families = parsePrometheusTextFormat(response.text)

    const echoBytes = 1000 + 20_000 + 300_000 + 500
    assert.equal(sample(families, 'kaproxy_connections_total', { route: 'echo' }), 4)
    assert.equal(sample(families, 'kaproxy_connections_active', { route: 'echo' }), 1)
    assert.equal(sample(families, 'kaproxy_relayed_bytes_total', { route: 'echo', from: 'client' }), echoBytes, 'live bytes are counted before the connection closes')
    assert.equal(sample(families, 'kaproxy_relayed_bytes_total', { route: 'echo', from: 'upstream' }), echoBytes)
    assert.equal(sample(families, 'kaproxy_connections_closed_total', { route: 'echo', reason: 'client-closed', side: 'client' }), 3)

    assert.equal(sample(families, 'kaproxy_connections_total', { route: 'refused' }), 2)
    assert.equal(sample(families, 'kaproxy_connections_active', { route: 'refused' }), 0)
    assert.equal(sample(families, 'kaproxy_connections_closed_total', { route: 'refused', reason: 'upstream-refused', side: 'upstream' }), 2)

    // Dead peers, told apart by side.
    assert.equal(sample(families, 'kaproxy_connections_closed_total', { route: 'zero-up', reason: 'keepalive-timeout', side: 'upstream' }), 1)
    assert.equal(sample(families, 'kaproxy_connections_closed_total', { route: 'zero-up', reason: 'keepalive-timeout', side: 'client' }), 0)
    assert.equal(sample(families, 'kaproxy_connections_closed_total', { route: 'zero-client', reason: 'keepalive-timeout', side: 'client' }), 1)
    assert.equal(sample(families, 'kaproxy_connections_closed_total', { route: 'zero-client', reason: 'keepalive-timeout', side: 'upstream' }), 0)
    // Every route has both keepalive-timeout series from the start (0 on `echo`).
    assert.equal(sample(families, 'kaproxy_connections_closed_total', { route: 'echo', reason: 'keepalive-timeout', side: 'upstream' }), 0)

    // Connect latency: one observation per connection whose upstream accepted. The parser folds
    // every labelled histogram into one unlabelled sample, so its family is checked for type only
    // and the per-route series are read from the text.
    assert.equal(families.find((f) => f.name === 'kaproxy_upstream_connect_seconds')?.type, 'HISTOGRAM')
    assert.match(response.text, /^kaproxy_upstream_connect_seconds_count\{route="echo"\} 4$/m)
    assert.match(response.text, /^kaproxy_upstream_connect_seconds_bucket\{le="\+Inf",route="echo"\} 4$/m)
    assert.doesNotMatch(response.text, /^kaproxy_upstream_connect_seconds_count\{route="refused"\}/m, 'no observation for a refused dial')

    // Each failed dial, and each configured target's state.
    assert.equal(sample(families, 'kaproxy_upstream_dial_failures_total', { route: 'refused', reason: 'upstream-refused' }), 2)
    assert.equal(sample(families, 'kaproxy_upstream_up', { route: 'echo', upstream: echo.address }), 1)

    assert.equal(sample(families, 'kaproxy_config_reloads_total', { result: 'ok' }), 0)
    assert.equal(sample(families, 'kaproxy_config_reloads_total', { result: 'failed' }), 0)
    assert.equal(sample(families, 'kaproxy_ready'), 1)
    // The one live connection is relayed by the fast engine's worker (the default on Linux).
    const fast = ENGINES[0] === 'fast'
    assert.equal(sample(families, 'kaproxy_fast_engine_connections'), fast ? 1 : 0)
    assert.ok((sample(families, 'kaproxy_fast_engine_descriptors') ?? -1) >= (fast ? 5 : 0))
    // Process metrics from prom-client's default collectors.
    assert.ok((sample(families, 'process_cpu_user_seconds_total') ?? -1) > 0)
    assert.ok(families.some((f) => f.name === 'nodejs_eventloop_lag_seconds'))

    // The status page's JSON agrees.
    const stats = (await get('/stats')).json<{ routes: Array<{ name: string, connectionsTotal: number, bytesFromClient: number, closes: unknown[] }> }>()
    const echoStats = stats.routes.find((r) => r.name === 'echo')
    assert.equal(echoStats?.connectionsTotal, 4)
    assert.equal(echoStats?.bytesFromClient, echoBytes)
    assert.deepEqual(echoStats?.closes, [{ reason: 'client-closed', side: 'client', count: 3 }])
    assert.deepEqual(stats.routes.find((r) => r.name === 'zero-up')?.closes, [{ reason: 'keepalive-timeout', side: 'upstream', count: 1 }])

    // Counters only go up: the live connection's bytes move into the closed totals when it ends.
    live.end()
    await proxy.log.waitFor({ event: 'close', route: 'echo', reason: 'client-closed', bytesFromClient: 500 })
    const after = parsePrometheusTextFormat((await get('/metrics')).text)
    assert.equal(sample(after, 'kaproxy_relayed_bytes_total', { route: 'echo', from: 'client' }), echoBytes)
    assert.equal(sample(after, 'kaproxy_connections_total', { route: 'echo' }), 4)
    assert.equal(sample(after, 'kaproxy_connections_active', { route: 'echo' }), 0)
    assert.equal(sample(after, 'kaproxy_connections_closed_total', { route: 'echo', reason: 'client-closed', side: 'client' }), 4)
  })
})
