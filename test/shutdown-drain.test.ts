import assert from 'node:assert/strict'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { it } from 'node:test'
import { closed, connect, startServer } from './helpers/peers.js'
import { spawnCli, type CliRun } from './helpers/proxy.js'
import { HashedEnd } from './helpers/traffic.js'
import { describeEachEngine } from './helpers/engines.js'

const MiB = 1024 * 1024
type After = { after: (fn: () => unknown) => void }

/** Spawn the CLI on a config file with one route `r` to `upstream`; resolves with its port once listening. */
async function spawnOn (t: After, upstream: string, extra: string): Promise<{ run: CliRun, port: number }> {
  const dir = mkdtempSync(join(tmpdir(), 'kaproxy-drain-'))
  t.after(() => { rmSync(dir, { recursive: true, force: true }) })
  const file = join(dir, 'kaproxy.yaml')
  writeFileSync(file, `admin: { listen: "" }\n${extra}routes:\n  - { name: r, listen: "127.0.0.1:0", upstream: "${upstream}" }\n`)
  const run = spawnCli(['--config', file])
  t.after(run.kill)
  const listening = await run.stdout.waitFor({ event: 'listening', route: 'r' })
  return { run, port: Number(String(listening.address).split(':').pop()) }
}

describeEachEngine('graceful drain on SIGTERM and SIGINT', () => {
  it('refuses new connections at once, lets in-flight transfers finish byte-exact, closes the rest with shutdown at drainTimeout, exits 0', async (t) => {
    const upstreamEnds: HashedEnd[] = []
    const upstream = await startServer((socket) => { upstreamEnds.push(new HashedEnd(socket)) })
    t.after(upstream.close)
    const { run, port } = await spawnOn(t, upstream.address, 'defaults: { drainTimeout: 1500ms }\n')

    const transfers: Array<{ client: HashedEnd, server: HashedEnd }> = []
    for (let i = 0; i < 2; i++) {
      const client = new HashedEnd(await connect(port, '127.0.0.1', { allowHalfOpen: true }))
      t.after(() => client.socket.destroy())
      await upstream.nextSocket()
      const server = upstreamEnds[upstreamEnds.length - 1]
      assert.ok(server !== undefined)
      transfers.push({ client, server })
    }
    const idle = await connect(port)
    t.after(() => idle.destroy())
    idle.resume()
    const idleClosed = closed(idle)
    await upstream.nextSocket()
    // Half of each transfer is through before the signal.
    await Promise.all(transfers.flatMap(({ client, server }) => [client.send(4 * MiB), server.send(4 * MiB), client.receivedAtLeast(4 * MiB), server.receivedAtLeast(4 * MiB)]))

    const signalledAt = Date.now()
    run.child.kill('SIGTERM')
    const draining = await run.stdout.waitFor({ event: 'draining' })
    assert.equal(draining.connections, 3)
    assert.equal(draining.drainTimeoutMs, 1500)
    await assert.rejects(connect(port), { code: 'ECONNREFUSED' }, 'new connections are refused from the first moment')

    // The other half flows during the drain, then both sides finish.
    await Promise.all(transfers.flatMap(({ client, server }) => [client.send(4 * MiB), server.send(4 * MiB)]))
    for (const { client, server } of transfers) { client.socket.end(); server.socket.end() }
    await Promise.all(transfers.flatMap(({ client, server }) => [client.ended, server.ended]))
    for (const { client, server } of transfers) {
      assert.deepEqual(server.received(), client.sent(), 'client -> upstream byte-exact')
      assert.deepEqual(client.received(), server.sent(), 'upstream -> client byte-exact')
      assert.equal(client.receivedBytes, 8 * MiB)
    }

    assert.equal(await run.exit, 0)
    const exitedAfter = Date.now() - signalledAt
    assert.equal(await idleClosed, null, 'the idle connection gets a FIN, not a reset')
    assert.ok(exitedAfter >= 1400 && exitedAfter < 6000, `the idle connection held the drain until drainTimeout: exit after ${exitedAfter} ms`)
    const closes = run.stdout.find({ event: 'close', route: 'r' })
    const orderly = (reason: unknown): boolean => reason === 'client-closed' || reason === 'upstream-closed'
    assert.deepEqual(closes.map((line) => orderly(line.reason) ? 'orderly' : line.reason).sort(), ['orderly', 'orderly', 'shutdown'])
    assert.equal(closes.filter((line) => line.bytesFromUpstream === 8 * MiB).length, 2)
    const drained = await run.stdout.waitFor({ event: 'route-drained', route: 'r' })
    assert.deepEqual({ reason: drained.reason, finished: drained.finished, cut: drained.cut }, { reason: 'shutdown', finished: 2, cut: 1 })
    // pino was flushed before the exit: the last line is there.
    assert.equal(run.stdout.lines[run.stdout.lines.length - 1]?.event, 'stopped')
  })

  it('counts in its draining line the connections a worker had not reported yet', async (t) => {
    const upstream = await startServer(() => {})
    t.after(upstream.close)
    // The fast engine's workers keep these unreported for a minute (the net engine has no workers).
    const { run, port } = await spawnOn(t, upstream.address, 'dataPlane: { reportAfterMs: 60000 }\ndefaults: { drainTimeout: 0ms }\n')
    for (let i = 0; i < 2; i++) {
      const client = await connect(port)
      t.after(() => client.destroy())
      client.resume()
      await upstream.nextSocket()
    }
    run.child.kill('SIGTERM')
    assert.equal((await run.stdout.waitFor({ event: 'draining' })).connections, 2)
    assert.equal(await run.exit, 0)
    assert.deepEqual(run.stdout.find({ event: 'close', route: 'r' }).map((line) => line.reason), ['shutdown', 'shutdown'])
  })

  it('exits as soon as the last connection ends, long before the default 30 s drainTimeout', async (t) => {
    const upstream = await startServer(() => {})
    t.after(upstream.close)
    const { run, port } = await spawnOn(t, upstream.address, '')
    const client = await connect(port, '127.0.0.1', { allowHalfOpen: true })
    t.after(() => client.destroy())
    const server = await upstream.nextSocket()
    run.child.kill('SIGINT')
    assert.equal((await run.stdout.waitFor({ event: 'draining' })).drainTimeoutMs, 30_000)
    const started = Date.now()
    // The upstream finishes first; the client answers its FIN.
    client.once('end', () => { client.end() })
    client.resume()
    server.end('goodbye')
    assert.equal(await run.exit, 0)
    assert.ok(Date.now() - started < 5000)
    assert.equal((await run.stdout.waitFor({ event: 'close', route: 'r' })).reason, 'upstream-closed')
  })

  it('exits at once on a second signal while draining', async (t) => {
    const upstream = await startServer(() => {})
    t.after(upstream.close)
    const { run, port } = await spawnOn(t, upstream.address, '')
    const idle = await connect(port)
    t.after(() => idle.destroy())
    idle.resume()
    const idleClosed = closed(idle)
    await upstream.nextSocket()
    run.child.kill('SIGTERM')
    await run.stdout.waitFor({ event: 'draining' })
    const secondAt = Date.now()
    run.child.kill('SIGTERM')
    assert.equal(await run.exit, 1)
    assert.ok(Date.now() - secondAt < 3000, 'no waiting for the 30 s drainTimeout')
    assert.equal((await run.stdout.waitFor({ event: 'forced-exit' })).signal, 'SIGTERM')
    // The connections (and the fast engine's worker threads) were closed before the exit.
    assert.deepEqual(run.stdout.find({ event: 'close', route: 'r' }).map((line) => line.reason), ['shutdown'])
    assert.equal(await idleClosed, null, 'the idle connection gets a FIN, not a reset')
  })
})
