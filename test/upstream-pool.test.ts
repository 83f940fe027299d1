import assert from 'node:assert/strict'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { it } from 'node:test'
import { fullBacklogListener } from './helpers/full-backlog.js'
import { closed, closedPort, connect, startEchoServer, startServer, echoThrough } from './helpers/peers.js'
import { startProxy } from './helpers/proxy.js'
import { describeEachEngine } from './helpers/engines.js'


describeEachEngine('upstream pools', () => {
  it('fails over from a wedged and a refusing upstream to a slow one, then ejects the bad ones', async (t) => {
    const wedged = await fullBacklogListener()
    t.after(wedged.close)
    const refusing = await closedPort()
    // Slow: answers every request 150 ms late.
    const slow = await startServer((socket) => {
      socket.on('data', (chunk: Buffer) => { setTimeout(() => { if (!socket.destroyed) socket.write(chunk) }, 150) })
      socket.on('end', () => { setTimeout(() => { socket.end() }, 200) })
    })
    t.after(slow.close)
    const proxy = await startProxy({
      routes: [{
        name: 'pool',
        listen: '127.0.0.1:0',
        upstream: [`127.0.0.1:${wedged.port}`, `127.0.0.1:${refusing}`, slow.address],
        connectTimeout: '300ms'
      }]
    })
    t.after(proxy.close)

    const requests = 9
    for (let i = 0; i < requests; i++) assert.equal(await echoThrough(proxy.port('pool'), `req ${i}`), `req ${i}`)
    const served = proxy.log.find({ event: 'open', route: 'pool' }).map((line) => line.upstream)
    assert.equal(served.length, requests, 'every client got a connection')
    assert.ok(served.every((upstream) => upstream === slow.address), 'all were served by the only working upstream')

    const failed = proxy.log.find({ event: 'dial-failed', route: 'pool' })
    const byTarget = (label: string): number => failed.filter((line) => line.upstream === label).length
    const down = proxy.log.find({ event: 'upstream-state', route: 'pool', state: 'down' }).map((line) => line.upstream)
    console.log(`pool: ${requests} requests all served by ${slow.address}; dial failures: wedged ${byTarget(`127.0.0.1:${wedged.port}`)} (connect-timeout), refusing ${byTarget(`127.0.0.1:${refusing}`)} (upstream-refused); ejected: ${down.join(', ')}`)
    // Each bad target is ejected after exactly fall (3) failures; later ones are back-off trials (1 s, then 2 s, ...).
    for (const label of [`127.0.0.1:${wedged.port}`, `127.0.0.1:${refusing}`]) {
      const lines = proxy.log.lines
      const downAt = lines.findIndex((line) => line.event === 'upstream-state' && line.upstream === label && line.state === 'down')
      const failuresBefore = lines.slice(0, downAt).filter((line) => line.event === 'dial-failed' && line.upstream === label).length
      assert.equal(failuresBefore, 3, `${label} ejected after 3 failures`)
      assert.ok(byTarget(label) <= 5, `${label}: at most two back-off trials in a few seconds, got ${byTarget(label) - 3}`)
    }
    assert.deepEqual(down.sort(), [`127.0.0.1:${refusing}`, `127.0.0.1:${wedged.port}`].sort())
    assert.ok(failed.filter((line) => line.upstream === `127.0.0.1:${wedged.port}`).every((line) => line.reason === 'connect-timeout'))
    const states = proxy.kaproxy.engine.upstreams('pool').map((u) => `${u.target.label}=${u.state}`)
    assert.deepEqual(states, [`127.0.0.1:${wedged.port}=down`, `127.0.0.1:${refusing}=down`, `${slow.address}=up`])
  })

  it('closes the client with no-upstream when every target fails, after trying each once', async (t) => {
    const ports = [await closedPort(), await closedPort()]
    const proxy = await startProxy({ routes: [{ name: 'none', listen: '127.0.0.1:0', upstream: ports.map((p) => `127.0.0.1:${p}`) }] })
    t.after(proxy.close)
    const client = await connect(proxy.port('none'))
    client.resume()
    await closed(client)
    const close = await proxy.log.waitFor({ event: 'close', route: 'none' })
    assert.equal(close.reason, 'no-upstream')
    assert.equal(close.side, 'upstream')
    assert.equal(proxy.log.find({ event: 'dial-failed', route: 'none' }).length, 2)
  })

  it('distributes by round-robin, first-available and least-connections', async (t) => {
    const servers = await Promise.all([startEchoServer(), startEchoServer(), startEchoServer()])
    for (const server of servers) t.after(server.close)
    const addresses = servers.map((s) => s.address)
    const proxy = await startProxy({
      routes: [
        { name: 'rr', listen: '127.0.0.1:0', upstream: addresses },
        { name: 'first', listen: '127.0.0.1:0', upstream: addresses, balance: 'first-available' },
        { name: 'least', listen: '127.0.0.1:0', upstream: addresses, balance: 'least-connections' }
      ]
    })
    t.after(proxy.close)
    const count = (route: string): number[] => addresses.map((a) => proxy.log.find({ event: 'open', route, upstream: a }).length)

    for (let i = 0; i < 6; i++) await echoThrough(proxy.port('rr'), 'x')
    for (let i = 0; i < 4; i++) await echoThrough(proxy.port('first'), 'x')
    assert.deepEqual(count('rr'), [2, 2, 2])
    assert.deepEqual(count('first'), [4, 0, 0])

    // Hold two connections open on least: they land on targets 0 and 1; the next short ones go to 2.
    const held = [await connect(proxy.port('least')), await connect(proxy.port('least'))]
    t.after(() => { for (const socket of held) socket.destroy() })
    await proxy.log.waitForCount({ event: 'open', route: 'least' }, 2)
    await echoThrough(proxy.port('least'), 'x')
    await echoThrough(proxy.port('least'), 'x')
    console.log(`balance: round-robin ${count('rr').join('/')}, first-available ${count('first').join('/')}, least-connections ${count('least').join('/')} (two held open)`)
    assert.deepEqual(count('least'), [1, 1, 2])
  })

  it('enforces maxConnections with reason limit and accepts again below it', async (t) => {
    const echo = await startEchoServer()
    t.after(echo.close)
    const proxy = await startProxy({ routes: [{ name: 'limited', listen: '127.0.0.1:0', upstream: echo.address, maxConnections: 2 }] })
    t.after(proxy.close)
    const first = await connect(proxy.port('limited'))
    const second = await connect(proxy.port('limited'))
    t.after(() => { first.destroy(); second.destroy() })
    await proxy.log.waitForCount({ event: 'open', route: 'limited' }, 2)
    const third = await connect(proxy.port('limited'))
    third.resume()
    await closed(third)
    const limit = await proxy.log.waitFor({ event: 'close', route: 'limited', reason: 'limit' })
    assert.equal(limit.bytesFromClient, 0)
    first.destroy()
    await proxy.log.waitFor({ event: 'close', route: 'limited', reason: 'client-closed' })
    assert.equal(await echoThrough(proxy.port('limited'), 'room again'), 'room again')
  })

  it('closes a connection idle for idleTimeout with reason idle-timeout, and not one with traffic', async (t) => {
    const echo = await startEchoServer()
    t.after(echo.close)
    const proxy = await startProxy({ routes: [{ name: 'idle', listen: '127.0.0.1:0', upstream: echo.address, idleTimeout: '1s' }] })
    t.after(proxy.close)
    const quiet = await connect(proxy.port('idle'))
    const busy = await connect(proxy.port('idle'))
    t.after(() => { quiet.destroy(); busy.destroy() })
    busy.resume()
    quiet.resume()
    const quietClosed = closed(quiet)
    // The busy client sends a byte every 300 ms, in both directions through the echo, until quiet is closed.
    const ticker = setInterval(() => { busy.write('.') }, 300)
    t.after(() => { clearInterval(ticker) })
    await quietClosed
    const close = await proxy.log.waitFor({ event: 'close', route: 'idle' })
    assert.equal(close.reason, 'idle-timeout')
    assert.ok(Number(close.durationMs) >= 1000 && Number(close.durationMs) < 3000, `closed after ${String(close.durationMs)} ms`)
    assert.equal(busy.destroyed, false, 'the connection with traffic is still open')
    assert.equal(proxy.log.find({ event: 'close', route: 'idle' }).length, 1)
  })

  it('relays to a unix socket upstream, and says keepalive does not apply there', async (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'kaproxy-unix-'))
    t.after(() => { rmSync(dir, { recursive: true, force: true }) })
    const path = join(dir, 'upstream.sock')
    const echo = await startServer((socket) => { socket.pipe(socket) }, path)
    t.after(echo.close)
    const proxy = await startProxy({ routes: [{ name: 'unix', listen: '127.0.0.1:0', upstream: `unix:${path}` }] })
    t.after(proxy.close)
    assert.equal(await echoThrough(proxy.port('unix'), 'over a unix socket'), 'over a unix socket')
    const open = await proxy.log.waitFor({ event: 'open', route: 'unix' })
    assert.equal(open.upstream, `unix:${path}`)
    const plan = await proxy.log.waitFor({ event: 'route', route: 'unix' })
    assert.equal((plan.keepalive as { upstream: unknown }).upstream, 'not applied: unix socket upstream')
  })

  it('resolves hostname upstreams at connect time', async (t) => {
    const echo = await startEchoServer()
    t.after(echo.close)
    const proxy = await startProxy({ routes: [{ name: 'named', listen: '127.0.0.1:0', upstream: `localhost:${echo.port}` }] })
    t.after(proxy.close)
    assert.equal(await echoThrough(proxy.port('named'), 'by name'), 'by name')
    const open = await proxy.log.waitFor({ event: 'open', route: 'named' })
    assert.equal(open.upstream, echo.address)
  })
})

