import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { once } from 'node:events'
import type net from 'node:net'
import { describe, it } from 'node:test'
import { promisify } from 'node:util'
import type { ConnectionsView, RouteView, SideView } from '../src/admin/views.js'
import type { Side } from '../src/config/types.js'
import { readKeepaliveFd } from '../src/keepalive.js'
import { adminAddress, adminClient } from './helpers/admin.js'
import { closedPort, connect, startEchoServer } from './helpers/peers.js'
import { startProxy } from './helpers/proxy.js'
import { ENGINES } from './helpers/engines.js'

function portOf (address: string | null): string {
  return address?.slice(address.lastIndexOf(':') + 1) ?? ''
}

const run = promisify(execFile)

const ROUTES = (upstream: string): Array<Record<string, unknown>> => [
  { name: 'alpha', listen: '127.0.0.1:0', upstream, keepalive: { client: { idle: '30s', interval: '5s', count: 4, userTimeout: '50s' }, upstream: { idle: '2m', interval: '15s', count: 8 } } },
  { name: 'beta', listen: '127.0.0.1:0', upstream, connectTimeout: '2s', keepalive: { client: { idle: 7, interval: 3 }, upstream: { enabled: false } } }
]

/** Send text through the proxy and wait for its echo, so both sides have carried data. */
async function echoed (socket: net.Socket, text: string): Promise<void> {
  let got = ''
  const done = new Promise<void>((resolve) => {
    const onData = (chunk: Buffer): void => {
      got += chunk.toString()
      if (got.length >= text.length) { socket.off('data', onData); socket.pause(); resolve() }
    }
    socket.on('data', onData)
  })
  socket.write(text)
  await done
}

describe('admin API', () => {
  it('answers /healthz and /readyz, and /routes with both sides resolved', async (t) => {
    const upstream = await startEchoServer()
    t.after(upstream.close)
    const spare = await closedPort()
    const config = ROUTES(upstream.address)
    config[1] = { ...config[1], upstream: [upstream.address, `127.0.0.1:${spare}`], balance: 'first-available', maxConnections: 50, idleTimeout: '10m', engine: 'net' }
    const proxy = await startProxy({ admin: { listen: '127.0.0.1:0' }, defaults: { keepalive: { count: 5 } }, routes: config })
    t.after(proxy.close)
    const get = adminClient(t, adminAddress(proxy))

    const health = await get('/healthz')
    assert.equal(health.status, 200)
    assert.equal(health.text, 'ok\n')
    const ready = await get('/readyz')
    assert.equal(ready.status, 200)
    assert.equal(ready.text, 'ready\n')

    const routes = await get('/routes')
    assert.equal(routes.status, 200)
    assert.match(String(routes.headers['content-type']), /^application\/json/)
    const body = routes.json<{ ready: boolean, routes: RouteView[] }>()
    assert.equal(body.ready, true)
    const NO_RESETS = { client: { count: 0, kept: 0, cluster: null, advice: null }, upstream: { count: 0, kept: 0, cluster: null, advice: null } }
    assert.deepEqual(body.routes, [
      {
        name: 'alpha',
        listen: '127.0.0.1:0',
        address: `127.0.0.1:${proxy.port('alpha')}`,
        upstream: upstream.address,
        upstreams: [{ target: upstream.address, state: 'up', active: 0 }],
        balance: 'round-robin',
        engine: ENGINES[0],
        // One numeric target and nothing that needs the main thread: the fast engine's worker accepts.
        acceptedBy: ENGINES[0] === 'fast' ? 'worker' : 'main',
        retries: 0,
        connectTimeoutMs: 5000,
        idleTimeoutMs: null,
        maxConnections: null,
        healthCheck: null,
        proxyProtocol: null,
        acceptProxyProtocol: false,
        keepalive: {
          client: { enabled: true, idleSec: 30, intervalSec: 5, count: 4, userTimeoutMs: 50_000, detectionSec: 50 },
          upstream: { enabled: true, idleSec: 120, intervalSec: 15, count: 8, userTimeoutMs: null, detectionSec: 240 }
        },
        destinations: [],
        connections: 0,
        resets: NO_RESETS
      },
      {
        name: 'beta',
        listen: '127.0.0.1:0',
        address: `127.0.0.1:${proxy.port('beta')}`,
        upstream: `${upstream.address},127.0.0.1:${spare}`,
        upstreams: [{ target: upstream.address, state: 'up', active: 0 }, { target: `127.0.0.1:${spare}`, state: 'up', active: 0 }],
        balance: 'first-available',
        engine: 'net',
        acceptedBy: 'main',
        retries: 1,
        connectTimeoutMs: 2000,
        idleTimeoutMs: 600_000,
        maxConnections: 50,
        healthCheck: null,
        proxyProtocol: null,
        acceptProxyProtocol: false,
        keepalive: {
          client: { enabled: true, idleSec: 7, intervalSec: 3, count: 5, userTimeoutMs: null, detectionSec: 22 },
          upstream: { enabled: false, idleSec: null, intervalSec: null, count: null, userTimeoutMs: null, detectionSec: null }
        },
        destinations: [],
        connections: 0,
        resets: NO_RESETS
      }
    ])
  })

  it('/connections shows what getsockopt reads on the same sockets, and plausible TCP_INFO', async (t) => {
    const upstream = await startEchoServer()
    t.after(upstream.close)
    const proxy = await startProxy({ admin: { listen: '127.0.0.1:0' }, routes: ROUTES(upstream.address) })
    t.after(proxy.close)
    const get = adminClient(t, adminAddress(proxy))

    const a = await connect(proxy.port('alpha'))
    t.after(() => a.destroy())
    await echoed(a, 'hello alpha')
    const b = await connect(proxy.port('beta'))
    t.after(() => b.destroy())
    await echoed(b, 'hello beta, longer')
    // Listed once opened: bytes can pass through a connection the fast engine's worker accepted
    // a moment before the main thread has read its report.
    await proxy.log.waitForCount({ event: 'open' }, 2)

    const response = await get('/connections')
    assert.equal(response.status, 200)
    const view = response.json<ConnectionsView>()
    assert.equal(view.total, 2)
    assert.equal(view.limit, 1000)
    const records = [...proxy.kaproxy.engine.connections()].sort((x, y) => x.id - y.id)
    assert.deepEqual(view.connections.map((c) => c.id), records.map((r) => r.id), 'oldest first')

    for (const record of records) {
      const shown = view.connections.find((c) => c.id === record.id)
      assert.ok(shown !== undefined)
      assert.equal(shown.route, record.route.name)
      assert.equal(shown.client, record.client)
      assert.equal(shown.upstream, record.upstream)
      assert.equal(shown.bytesFromClient, record.bytesFromClient)
      assert.equal(shown.bytesFromUpstream, record.bytesFromUpstream)
      assert.equal(shown.openedAt, new Date(record.openedAt).toISOString())
      assert.ok(shown.ageMs >= 0 && shown.ageMs < 10_000, `age ${shown.ageMs} ms`)
      for (const side of ['client', 'upstream'] as Side[]) {
        const endpoint = record.endpoint(side)
        assert.ok(endpoint !== null && endpoint.fd >= 0)
        const s: SideView = shown.sides[side]
        assert.equal(s.error, null)
        // The kernel's own values, read again now on the very sockets the API read.
        assert.deepEqual(s.keepalive, readKeepaliveFd(endpoint.fd), `${record.route.name} ${side} keepalive equals getsockopt`)
        assert.equal(s.local, endpoint.local)
        assert.equal(s.remote, endpoint.remote)
        const info = s.tcpInfo
        assert.ok(info !== null, 'TCP_INFO is decoded on Linux')
        assert.equal(info.state, 'ESTABLISHED')
        assert.equal(info.caState, 'open')
        assert.ok(info.rttUs > 0 && info.rttUs < 1_000_000, `rtt ${info.rttUs} us`)
        assert.ok(info.rtoUs >= 200_000, `rto ${info.rtoUs} us is at least TCP_RTO_MIN`)
        assert.equal(info.probes, 0)
        assert.equal(info.retransmits, 0)
        assert.ok(info.lastDataRecvMs < 10_000)
        // Byte counters of the kernel match the relay's on each side.
        const received = side === 'client' ? record.bytesFromClient : record.bytesFromUpstream
        const sent = side === 'client' ? record.bytesFromUpstream : record.bytesFromClient
        assert.equal(info.bytesReceived, received, `${side} tcpi_bytes_received`)
        assert.equal(info.bytesSent, sent, `${side} tcpi_bytes_sent`)
        if (side === 'upstream') {
          // The echo that came back carried the upstream's ACK of everything sent to it; on this
          // socket (kaproxy dialed) the acknowledged SYN counts as one byte. The client's ACK of
          // the echo may still be delayed, so the client side is not checked this way.
          assert.equal(info.unacked, 0)
          assert.equal(info.bytesAcked, sent + 1, 'upstream tcpi_bytes_acked')
        }

        // ss reads the same struct through netlink: the offsets must agree.
        const { stdout } = await run('ss', ['-tni', 'state', 'established', `( sport = :${portOf(endpoint.local)} and dport = :${portOf(endpoint.remote)} )`])
        const field = (name: string): number => {
          const match = new RegExp(`\\b${name}:(\\d+)`).exec(stdout)
          assert.ok(match !== null, `ss shows ${name}:\n${stdout}`)
          return Number(match[1])
        }
        assert.equal(info.sndMss, field('mss'), 'snd_mss')
        assert.equal(info.pmtu, field('pmtu'), 'pmtu')
        assert.equal(info.advmss, field('advmss'), 'advmss')
        assert.equal(info.rcvSpace, field('rcv_space'), 'rcv_space')
      }
    }
    const alpha = view.connections.find((c) => c.route === 'alpha')
    assert.deepEqual(alpha?.sides.client.keepalive, { enabled: true, idleSec: 30, intervalSec: 5, count: 4, userTimeoutMs: 50_000 })
    assert.equal(view.connections.find((c) => c.route === 'beta')?.sides.upstream.keepalive?.enabled, false)

    const beta = (await get('/connections?route=beta')).json<ConnectionsView>()
    assert.deepEqual(beta.connections.map((c) => c.route), ['beta'])
    const limited = (await get('/connections?limit=1')).json<ConnectionsView>()
    assert.equal(limited.total, 2)
    assert.equal(limited.connections.length, 1)
    assert.equal(limited.connections[0]?.route, 'alpha')
  })

  it('rejects bad queries, unknown endpoints, other methods, bodies and oversized requests', async (t) => {
    const upstream = await startEchoServer()
    t.after(upstream.close)
    const proxy = await startProxy({ admin: { listen: '127.0.0.1:0' }, routes: ROUTES(upstream.address) })
    t.after(proxy.close)
    const address = adminAddress(proxy)
    const get = adminClient(t, address)
    const error = async (path: string): Promise<[number, string]> => {
      const r = await get(path)
      return [r.status, r.json<{ error: { message: string } }>().error.message]
    }
    assert.deepEqual(await error('/connections?limit=0'), [400, 'limit must be an integer 1..10000 (got "0")'])
    assert.deepEqual(await error('/connections?limit=abc'), [400, 'limit must be an integer 1..10000 (got "abc")'])
    assert.deepEqual(await error('/connections?limit=10001'), [400, 'limit must be an integer 1..10000 (got "10001")'])
    assert.deepEqual(await error('/connections?route=nope'), [404, 'no route named "nope"'])
    assert.deepEqual(await error('/connections?sort=age'), [400, 'unknown query parameter "sort" (allowed: route, limit)'])
    assert.equal((await get('/nope')).status, 404)
    assert.equal((await get(`/connections?route=${'x'.repeat(3000)}`)).status, 414)

    // Raw requests for what undici would not send.
    const raw = async (request: string): Promise<string> => {
      const socket = await connect(Number(address.split(':')[1]))
      t.after(() => socket.destroy())
      socket.end(request)
      let text = ''
      for await (const chunk of socket) text += (chunk as Buffer).toString()
      return text
    }
    const post = await raw('POST /routes HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close\r\n\r\n')
    assert.match(post, /^HTTP\/1\.1 405 /)
    assert.match(post, /\r\nAllow: GET, HEAD\r\n/i)
    assert.match(await raw('GET /routes HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello'), /^HTTP\/1\.1 413 /)
    assert.match(await raw(`GET /healthz HTTP/1.1\r\nHost: a\r\nX-Big: ${'a'.repeat(9000)}\r\nConnection: close\r\n\r\n`), /^HTTP\/1\.1 431 /)
    const head = await raw('HEAD /readyz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n')
    assert.match(head, /^HTTP\/1\.1 200 /)
    assert.ok(head.endsWith('\r\n\r\n'), 'HEAD has no body')
  })

  it('/readyz turns 503 the moment close() begins, while the admin API still answers', async (t) => {
    const upstream = await startEchoServer()
    t.after(upstream.close)
    const proxy = await startProxy({ admin: { listen: '127.0.0.1:0' }, routes: ROUTES(upstream.address) })
    t.after(proxy.close)
    const client = await connect(proxy.port('alpha'))
    t.after(() => client.destroy())
    await proxy.log.waitFor({ event: 'open', route: 'alpha' })
    assert.equal(proxy.kaproxy.ready, true)

    // One write: /healthz complete, then the start of a /readyz request. Once /healthz is
    // answered the server has parsed the rest too, so the connection holds a request in
    // progress: close() lets it finish instead of dropping the socket.
    const admin = await connect(Number(adminAddress(proxy).split(':')[1]))
    t.after(() => admin.destroy())
    let text = ''
    admin.setEncoding('utf8')
    const answered = new Promise<void>((resolve) => {
      admin.on('data', (chunk: string) => { text += chunk; if (text.includes('ok\n')) resolve() })
    })
    admin.write('GET /healthz HTTP/1.1\r\nHost: a\r\n\r\nGET /readyz HTTP/1.1\r\nHost: a\r\n')
    await answered
    assert.match(text, /^HTTP\/1\.1 200 /)
    text = ''

    const closing = proxy.close()
    assert.equal(proxy.kaproxy.ready, false, 'not ready from the first moment of close()')
    admin.write('\r\n')
    await once(admin, 'end')
    assert.match(text, /^HTTP\/1\.1 503 /)
    assert.match(text, /not ready\n$/)
    await closing
    const close = await proxy.log.waitFor({ event: 'close', route: 'alpha' })
    assert.equal(close.reason, 'shutdown')
    await assert.rejects(connect(Number(adminAddress(proxy).split(':')[1])), { code: 'ECONNREFUSED' }, 'the admin API is closed with the rest')
  })

  it('fails to start, with nothing left listening, when the admin address is taken', async (t) => {
    const upstream = await startEchoServer()
    t.after(upstream.close)
    await assert.rejects(startProxy({ admin: { listen: upstream.address }, routes: [{ name: 'gone', listen: '127.0.0.1:0', upstream: upstream.address }] }),
      (err: Error & { code?: string }) => err.code === 'KAPROXY_ERR_LISTEN' && /admin API: cannot listen on 127\.0\.0\.1:\d+: EADDRINUSE/.test(err.message))
  })
})
