import assert from 'node:assert/strict'
import { once } from 'node:events'
import net from 'node:net'
import { it, type TestContext } from 'node:test'
import { closed, closedPort, connect, drainToHash, sendRandom, startEchoServer, startServer } from './helpers/peers.js'
import { fullBacklogListener } from './helpers/full-backlog.js'
import { startProxy } from './helpers/proxy.js'
import { describeEachEngine } from './helpers/engines.js'
import { acceptedReadsInPlace, endListenedInPlace } from '../src/relay/net/connection.js'
import type { NetEngine } from '../src/relay/net/engine.js'

const MiB = 1024 * 1024

function route (name: string, upstream: string, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { name, listen: '127.0.0.1:0', upstream, ...extra }
}

describeEachEngine('relay', (engine) => {
  // The fast engine copies bulk flows through its bulk buffers, or splices them through pipes once
  // none is free (dataPlane.bulkBuffers: 0, always): both ways are carried here.
  for (const bulkBuffers of engine === 'fast' ? [undefined, 0] : [undefined]) {
    const how = bulkBuffers === undefined ? '' : ' through pipes (bulkBuffers 0)'
    it(`carries 64 MiB each way at once${how}, byte-exact, and logs the byte counts`, async (t) => {
      await carriesBothWays(t, bulkBuffers)
    })
  }

  async function carriesBothWays (t: TestContext, bulkBuffers: number | undefined): Promise<void> {
    const size = 64 * MiB
    const upstreamResult: Array<Promise<unknown>> = []
    const upstream = await startServer((socket) => {
      upstreamResult.push(Promise.all([drainToHash(socket), sendRandom(socket, size)]))
    })
    t.after(upstream.close)
    const proxy = await startProxy({ ...bulkBuffers === undefined ? {} : { dataPlane: { bulkBuffers } }, routes: [route('bulk', upstream.address)] })
    t.after(proxy.close)
    const dataPlane = (proxy.kaproxy.engine as NetEngine).dataPlane
    // Counted once every worker polls the route (each made its epoll set and listener duplicate).
    await dataPlane.listening()
    const descriptorsBefore = dataPlane.descriptors()

    const client = await connect(proxy.port('bulk'), '127.0.0.1', { allowHalfOpen: true })
    t.after(() => client.destroy())
    const [received, sentHash] = await Promise.all([drainToHash(client), sendRandom(client, size)])
    const [upstreamReceived, upstreamSentHash] = await (upstreamResult[0] as Promise<[{ bytes: number, sha256: string }, string]>)

    assert.equal(upstreamReceived.bytes, size)
    assert.equal(upstreamReceived.sha256, sentHash, 'client -> upstream arrives byte-exact')
    assert.equal(received.bytes, size)
    assert.equal(received.sha256, upstreamSentHash, 'upstream -> client arrives byte-exact')

    const close = await proxy.log.waitFor({ event: 'close', route: 'bulk' })
    assert.equal(close.bytesFromClient, size)
    assert.equal(close.bytesFromUpstream, size)
    assert.ok(close.reason === 'client-closed' || close.reason === 'upstream-closed', `orderly close, got ${String(close.reason)}`)
    if (engine === 'fast') {
      // A pipe holds two descriptors, kept for reuse once made; a bulk buffer none.
      const pipes = (dataPlane.descriptors() - descriptorsBefore) / 2
      if (bulkBuffers === 0) assert.ok(pipes >= 1, `the flows went through pipes (${pipes})`)
      else assert.equal(pipes, 0, 'the flows went through bulk buffers, not pipes')
    }
  }

  it("propagates half-close: the client's FIN reaches the upstream and the reply still flows back", async (t) => {
    const upstream = await startServer((socket) => {
      const chunks: Buffer[] = []
      socket.on('data', (chunk: Buffer) => chunks.push(chunk))
      socket.on('end', () => { socket.end(`reply after FIN to ${Buffer.concat(chunks).toString()}`) })
    })
    t.after(upstream.close)
    const proxy = await startProxy({ routes: [route('half', upstream.address)] })
    t.after(proxy.close)

    const client = await connect(proxy.port('half'), '127.0.0.1', { allowHalfOpen: true })
    t.after(() => client.destroy())
    client.end('request')
    const chunks: Buffer[] = []
    client.on('data', (chunk: Buffer) => chunks.push(chunk))
    await once(client, 'end')
    assert.equal(Buffer.concat(chunks).toString(), 'reply after FIN to request')
    const close = await proxy.log.waitFor({ event: 'close', route: 'half' })
    assert.equal(close.reason, 'client-closed')
    assert.equal(close.side, 'client')
    assert.equal(close.bytesFromClient, 7)
  })

  it('delivers bytes written and closed at once, before the upstream connected', async (t) => {
    const upstream = await startServer(() => {})
    t.after(upstream.close)
    const proxy = await startProxy({ routes: [route('buffered', upstream.address)] })
    t.after(proxy.close)
    const payload = Buffer.alloc(3 * MiB, 7)
    const client = net.connect({ port: proxy.port('buffered'), host: '127.0.0.1' })
    t.after(() => client.destroy())
    client.end(payload)
    const server = await upstream.nextSocket()
    const got = await drainToHash(server)
    assert.equal(got.bytes, payload.length)
  })

  it('closes the client when the upstream refuses, with a logged upstream-refused', async (t) => {
    const port = await closedPort()
    const proxy = await startProxy({ routes: [route('refused', `127.0.0.1:${port}`)] })
    t.after(proxy.close)
    const client = await connect(proxy.port('refused'))
    client.resume()
    await closed(client)
    const close = await proxy.log.waitFor({ event: 'close', route: 'refused' })
    assert.equal(close.reason, 'upstream-refused')
    assert.equal(close.side, 'upstream')
    assert.deepEqual((close.err as { code: string }).code, 'ECONNREFUSED')
    assert.equal(proxy.log.find({ event: 'open', route: 'refused' }).length, 0, 'no open event for a failed dial')
  })

  it('gives up on an upstream that never answers the SYN after connectTimeout, with reason connect-timeout', async (t) => {
    const wedged = await fullBacklogListener()
    t.after(wedged.close)
    const proxy = await startProxy({ routes: [route('wedged', `127.0.0.1:${wedged.port}`, { connectTimeout: '400ms' })] })
    t.after(proxy.close)
    const client = await connect(proxy.port('wedged'))
    client.resume()
    await closed(client)
    const close = await proxy.log.waitFor({ event: 'close', route: 'wedged' })
    assert.equal(close.reason, 'connect-timeout')
    assert.equal(close.side, 'upstream')
    assert.ok(Number(close.durationMs) >= 400 && Number(close.durationMs) < 5000, `closed after ${String(close.durationMs)} ms`)
  })

  it('classifies a client reset and passes the reset on to the upstream', async (t) => {
    const upstream = await startServer(() => {})
    t.after(upstream.close)
    const proxy = await startProxy({ routes: [route('creset', upstream.address)] })
    t.after(proxy.close)
    const client = await connect(proxy.port('creset'))
    await proxy.log.waitFor({ event: 'open', route: 'creset' })
    const server = await upstream.nextSocket()
    const serverClosed = closed(server)
    server.resume()
    client.resetAndDestroy()
    const close = await proxy.log.waitFor({ event: 'close', route: 'creset' })
    assert.equal(close.reason, 'client-reset')
    assert.equal(close.side, 'client')
    assert.equal((await serverClosed)?.code, 'ECONNRESET', 'the upstream sees a reset, not a clean FIN')
  })

  it('classifies an upstream reset and passes it on to the client', async (t) => {
    const upstream = await startServer((socket) => { socket.once('data', () => socket.resetAndDestroy()) })
    t.after(upstream.close)
    const proxy = await startProxy({ routes: [route('ureset', upstream.address)] })
    t.after(proxy.close)
    const client = await connect(proxy.port('ureset'))
    const clientClosed = closed(client)
    client.resume()
    client.write('trigger')
    assert.equal((await clientClosed)?.code, 'ECONNRESET')
    const close = await proxy.log.waitFor({ event: 'close', route: 'ureset' })
    assert.equal(close.reason, 'upstream-reset')
    assert.equal(close.side, 'upstream')
    assert.equal(close.bytesFromClient, 7)
  })

  it('closes live connections with reason shutdown when kaproxy closes, and close() is idempotent', async (t) => {
    const upstream = await startEchoServer()
    t.after(upstream.close)
    const proxy = await startProxy({ routes: [route('stop', upstream.address)] })
    const client = await connect(proxy.port('stop'))
    t.after(() => client.destroy())
    await proxy.log.waitFor({ event: 'open', route: 'stop' })
    const clientClosed = closed(client)
    client.resume()
    await Promise.all([proxy.close(), proxy.close()])
    await clientClosed
    const close = await proxy.log.waitFor({ event: 'close', route: 'stop' })
    assert.equal(close.reason, 'shutdown')
    await assert.rejects(connect(proxy.port('stop')), { code: 'ECONNREFUSED' })
  })

  it('relays IPv6 on both sides', async (t) => {
    const upstream = await startEchoServer('::1')
    t.after(upstream.close)
    const proxy = await startProxy({ routes: [{ name: 'six', listen: '[::1]:0', upstream: upstream.address }] })
    t.after(proxy.close)
    const client = await connect(proxy.port('six'), '::1')
    t.after(() => client.destroy())
    client.end('over ipv6')
    const chunks: Buffer[] = []
    client.on('data', (chunk: Buffer) => chunks.push(chunk))
    await once(client, 'end')
    assert.equal(Buffer.concat(chunks).toString(), 'over ipv6')
    const open = await proxy.log.waitFor({ event: 'open', route: 'six' })
    assert.match(String(open.client), /^\[::1\]:\d+$/)
    assert.equal(open.upstream, upstream.address)
  })

  it('fails to start with a named error when a listen address is taken, leaving nothing listening', async (t) => {
    const taken = await startEchoServer()
    t.after(taken.close)
    await assert.rejects(startProxy({ routes: [route('free', taken.address), { name: 'busy', listen: taken.address, upstream: taken.address }] }),
      (err: Error & { code?: string }) => err.code === 'KAPROXY_ERR_LISTEN' && /route busy: cannot listen on 127\.0\.0\.1:\d+: EADDRINUSE/.test(err.message))
  })
})

describeEachEngine('loop guard', () => {
  it('a route whose upstream is its own listener relays nothing to itself: one loop-detected, no chain', async (t) => {
    const port = await closedPort()
    const proxy = await startProxy({ routes: [{ name: 'self', listen: `127.0.0.1:${port}`, upstream: `127.0.0.1:${port}` }] })
    t.after(proxy.close)
    const client = await connect(port)
    const clientClosed = closed(client)
    client.resume()
    client.write('hello?')
    await clientClosed
    const loop = await proxy.log.waitFor({ event: 'close', route: 'self', reason: 'loop-detected' })
    const outer = await proxy.log.waitFor({ event: 'close', route: 'self', reason: 'upstream-reset' })
    assert.equal(loop.side, 'client')
    assert.notEqual(outer.conn, loop.conn)
    assert.equal(proxy.log.find({ event: 'close', route: 'self' }).length, 2, 'exactly the client connection and its looped-back dial')
  })

  it('routes may chain (a -> b), but a chain that comes back (a -> b -> a) is cut at the second visit', async (t) => {
    const [portA, portB] = [await closedPort(), await closedPort()]
    const proxy = await startProxy({
      routes: [
        { name: 'a', listen: `127.0.0.1:${portA}`, upstream: `127.0.0.1:${portB}` },
        { name: 'b', listen: `127.0.0.1:${portB}`, upstream: `127.0.0.1:${portA}` }
      ]
    })
    t.after(proxy.close)
    const client = await connect(portA)
    const clientClosed = closed(client)
    client.resume()
    await clientClosed
    const loop = await proxy.log.waitFor({ event: 'close', reason: 'loop-detected' })
    assert.equal(loop.route, 'a')
    await proxy.log.waitForCount({ event: 'close' }, 3)
    assert.equal(proxy.log.find({ event: 'close', route: 'b' }).length, 1, 'the a -> b hop was accepted by b')
    assert.equal(proxy.log.find({ event: 'close' }).length, 3, 'client -> a, a -> b, b -> a: nothing more')
  })
})

it("reads accepted clients through the shared buffer in place on this Node, without a second socket per connection", () => {
  // The fallback (a socket re-made on a duplicate descriptor) works anywhere but costs memory;
  // this fails when Node's internals move, so that it is noticed.
  assert.equal(acceptedReadsInPlace, true)
})

it("replaces Node's own 'end' listener of a relayed socket on this Node, instead of adding a second one", () => {
  // The fallback (a second listener) works anywhere but costs an array per socket; this fails
  // when Node's internals move, so that it is noticed.
  assert.equal(endListenedInPlace, true)
})
