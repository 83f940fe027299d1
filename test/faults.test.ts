import assert from 'node:assert/strict'
import { once } from 'node:events'
import net from 'node:net'
import { it } from 'node:test'
import { closed, connect, drainToHash, sendRandom, startEchoServer, startServer } from './helpers/peers.js'
import { startProxy } from './helpers/proxy.js'
import { describeEachEngine } from './helpers/engines.js'

const MiB = 1024 * 1024

/** A healthy 8 MiB echo round trip through `port`, to prove a fault elsewhere did not touch it. */
async function healthyTransfer (port: number): Promise<boolean> {
  const client = await connect(port, '127.0.0.1', { allowHalfOpen: true })
  const [received, sent] = await Promise.all([drainToHash(client), sendRandom(client, 8 * MiB, 64 * 1024)])
  client.destroy()
  return received.sha256 === sent && received.bytes === 8 * MiB
}

describeEachEngine('faults end with the right reason on the right connection, and no effect on others', () => {
  it('a client reset mid-stream: client-reset on that connection, the others complete', async (t) => {
    const echo = await startEchoServer()
    t.after(echo.close)
    const proxy = await startProxy({ routes: [{ name: 'mid', listen: '127.0.0.1:0', upstream: echo.address }] })
    t.after(proxy.close)
    const victim = await connect(proxy.port('mid'))
    victim.on('error', () => {})
    const healthy = healthyTransfer(proxy.port('mid'))
    // Reset the victim after it has pushed a few MiB through.
    await new Promise<void>((resolve) => {
      let got = 0
      victim.on('data', (chunk: Buffer) => { got += chunk.length; if (got > 2 * MiB) { victim.resetAndDestroy(); resolve() } })
      const chunk = Buffer.alloc(256 * 1024, 1)
      const pump = (): void => { while (!victim.destroyed && victim.write(chunk)); }
      victim.on('drain', pump)
      pump()
    })
    assert.equal(await healthy, true)
    const close = await proxy.log.waitFor({ event: 'close', route: 'mid', reason: 'client-reset' })
    assert.equal(close.side, 'client')
    assert.ok(Number(close.bytesFromClient) > 2 * MiB)
    assert.equal(proxy.log.find({ event: 'close', route: 'mid' }).filter((l) => l.reason !== 'client-reset' && l.reason !== 'client-closed').length, 0)
  })

  it('an upstream reset mid-stream: upstream-reset, the client sees a reset, the others complete', async (t) => {
    let served = 0
    const upstream = await startServer((socket) => {
      const index = served++
      if (index === 0) {
        // The first connection streams 4 MiB, then resets.
        const chunk = Buffer.alloc(MiB, 2)
        let sent = 0
        const pump = (): void => {
          while (sent < 4) {
            sent++
            if (!socket.write(chunk)) return
          }
          socket.resetAndDestroy()
        }
        socket.on('drain', pump)
        pump()
      } else {
        socket.pipe(socket)
      }
    })
    t.after(upstream.close)
    const proxy = await startProxy({ routes: [{ name: 'ureset', listen: '127.0.0.1:0', upstream: upstream.address }] })
    t.after(proxy.close)
    const victim = await connect(proxy.port('ureset'))
    const victimClosed = closed(victim)
    victim.resume()
    assert.equal(await healthyTransfer(proxy.port('ureset')), true)
    const victimError = await victimClosed
    assert.equal(victimError?.code, 'ECONNRESET')
    const close = await proxy.log.waitFor({ event: 'close', route: 'ureset', reason: 'upstream-reset' })
    assert.equal(close.side, 'upstream')
  })

  it('an upstream that accepts and never answers is bounded by idleTimeout', async (t) => {
    const mute = await startServer((socket) => { socket.pause() })
    t.after(mute.close)
    const proxy = await startProxy({ routes: [{ name: 'mute', listen: '127.0.0.1:0', upstream: mute.address, idleTimeout: '1s' }] })
    t.after(proxy.close)
    const client = await connect(proxy.port('mute'))
    client.resume()
    client.write('hello?')
    await closed(client)
    const close = await proxy.log.waitFor({ event: 'close', route: 'mute' })
    assert.equal(close.reason, 'idle-timeout')
    assert.equal(close.bytesFromClient, 6)
  })

  it('idleTimeout counts bytes either way: a download alone keeps the connection, the silence after it ends it', async (t) => {
    // The upstream sends one byte every 200 ms, ten times, then stays silent; the client only reads.
    const ticks: NodeJS.Timeout[] = []
    t.after(() => { for (const tick of ticks) clearInterval(tick) })
    const trickle = await startServer((socket) => {
      let sent = 0
      const tick = setInterval(() => {
        if (sent === 10 || socket.destroyed) { clearInterval(tick); return }
        socket.write('x')
        sent++
      }, 200)
      ticks.push(tick)
    })
    t.after(trickle.close)
    const proxy = await startProxy({ routes: [{ name: 'trickle', listen: '127.0.0.1:0', upstream: trickle.address, idleTimeout: '1s' }] })
    t.after(proxy.close)
    const client = await connect(proxy.port('trickle'))
    let received = 0
    client.on('data', (chunk: Buffer) => { received += chunk.length })
    await closed(client)
    assert.equal(received, 10, 'every byte of the download arrived before the idle timeout')
    const close = await proxy.log.waitFor({ event: 'close', route: 'trickle' })
    assert.equal(close.reason, 'idle-timeout')
    assert.equal(close.bytesFromUpstream, 10)
  })

  it('an upstream that closes at once: upstream-closed, and the client gets a clean FIN', async (t) => {
    const rude = await startServer((socket) => { socket.end() })
    t.after(rude.close)
    const proxy = await startProxy({ routes: [{ name: 'rude', listen: '127.0.0.1:0', upstream: rude.address }] })
    t.after(proxy.close)
    const client = await connect(proxy.port('rude'), '127.0.0.1', { allowHalfOpen: true })
    client.resume()
    await once(client, 'end')
    client.end()
    const close = await proxy.log.waitFor({ event: 'close', route: 'rude' })
    assert.equal(close.reason, 'upstream-closed')
    assert.equal(close.side, 'upstream')
  })

  it('a flapping upstream: every client is served by failing over to the stable one', async (t) => {
    const stable = await startEchoServer()
    t.after(stable.close)
    // The flapping upstream listens and stops listening in turns, on the same port.
    const flapper = net.createServer((socket) => { socket.pipe(socket); socket.on('error', () => {}) })
    flapper.listen(0, '127.0.0.1')
    await once(flapper, 'listening')
    const flapPort = (flapper.address() as net.AddressInfo).port
    t.after(() => { flapper.close() })
    const proxy = await startProxy({ routes: [{ name: 'flap', listen: '127.0.0.1:0', upstream: [`127.0.0.1:${flapPort}`, stable.address], healthCheck: { type: 'tcp', interval: '100ms', timeout: '80ms', rise: 1, fall: 1 } }] })
    t.after(proxy.close)
    let served = 0
    for (let round = 0; round < 6; round++) {
      if (round % 2 === 0) { flapper.close(); await once(flapper, 'close') } else { flapper.listen(flapPort, '127.0.0.1'); await once(flapper, 'listening') }
      for (let i = 0; i < 5; i++) {
        const client = await connect(proxy.port('flap'), '127.0.0.1', { allowHalfOpen: true })
        client.end('ping')
        const chunks: Buffer[] = []
        client.on('data', (chunk: Buffer) => chunks.push(chunk))
        await once(client, 'end')
        client.destroy()
        if (Buffer.concat(chunks).toString() === 'ping') served++
      }
    }
    const transitions = proxy.log.find({ event: 'upstream-state', route: 'flap' }).length
    console.log(`flapping: 30 clients across 6 flaps, ${served} served, ${proxy.log.find({ event: 'dial-failed', route: 'flap' }).length} dial failures retried, ${transitions} state changes`)
    assert.equal(served, 30)
    assert.ok(transitions >= 1)
  })

  it('clients that send nothing, half-open clients that never read, and trickling clients are bounded by idleTimeout and maxConnections', async (t) => {
    const echo = await startEchoServer()
    t.after(echo.close)
    const proxy = await startProxy({ routes: [{ name: 'hostile', listen: '127.0.0.1:0', upstream: echo.address, idleTimeout: '1s', maxConnections: 3 }] })
    t.after(proxy.close)
    const silent = await connect(proxy.port('hostile'))
    const silentPort = silent.localPort
    silent.resume()
    // Half-open: sends 8 MiB and a FIN, and never reads the echo, which stalls in the kernel buffers.
    const halfOpen = await connect(proxy.port('hostile'), '127.0.0.1', { allowHalfOpen: true })
    const halfOpenPort = halfOpen.localPort
    halfOpen.pause()
    halfOpen.end(Buffer.alloc(8 * MiB, 3))
    // A trickle of one byte every 200 ms keeps its own connection alive, as it should.
    const trickle = await connect(proxy.port('hostile'))
    trickle.resume()
    const ticker = setInterval(() => { trickle.write('.') }, 200)
    t.after(() => { clearInterval(ticker); trickle.destroy(); halfOpen.destroy(); silent.destroy() })
    await proxy.log.waitForCount({ event: 'open', route: 'hostile' }, 3)
    // The route is full: a fourth client is turned away at once.
    const fourth = await connect(proxy.port('hostile'))
    fourth.resume()
    await closed(fourth)
    await proxy.log.waitFor({ event: 'close', route: 'hostile', reason: 'limit' })
    const idle = await proxy.log.waitForCount({ event: 'close', route: 'hostile', reason: 'idle-timeout' }, 2)
    // Found by client address, not by the order of the open lines: with several workers each
    // reports its own connections, and one's batch may come after another's.
    const connOf = (port: number | undefined): unknown => proxy.log.find({ event: 'open', route: 'hostile', client: `127.0.0.1:${port ?? 0}` })[0]?.conn
    assert.deepEqual(idle.map((line) => line.conn).sort(), [connOf(silentPort), connOf(halfOpenPort)].sort())
    assert.equal(trickle.destroyed, false, 'the trickling client is still connected')
    assert.equal(proxy.log.find({ event: 'close', route: 'hostile' }).length, 3, 'nothing else was closed')
  })
})
