import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { once } from 'node:events'
import { closeSync, openSync } from 'node:fs'
import net from 'node:net'
import { describe, it } from 'node:test'
import { echoThrough, startEchoServer } from './helpers/peers.js'
import { spawnCli, startProxy } from './helpers/proxy.js'
import { floodCycle, type FloodFigures } from './helpers/flood.js'

const MiB = 1024 * 1024

/** Set this process's soft descriptor limit (the hard one stays). */
function setSoftLimit (limit: number): void {
  execFileSync('prlimit', ['--pid', String(process.pid), `--nofile=${limit}:`])
}

describe('descriptor exhaustion: accepting pauses, is logged once per burst, and recovers by itself', () => {
  it('a flood of 600 clients under prlimit --nofile=256 pauses accepting once per burst; queued clients are served after; established transfers stay byte-exact', { timeout: 120_000 }, async (t) => {
    const echo = await startEchoServer()
    t.after(echo.close)
    const run = spawnCli(['--name', 'fd', '--listen', '127.0.0.1:0', '--upstream', echo.address, '--no-keepalive'], {}, undefined, ['prlimit', '--nofile=256:256'])
    t.after(run.kill)
    const listening = await run.stdout.waitFor({ event: 'listening', route: 'fd' })
    const port = Number(String(listening.address).split(':').pop())

    const figures: FloodFigures[] = []
    // 600 clients: more than Node's default backlog (511), which a resumed listener must not fall back to.
    for (let burst = 1; burst <= 2; burst++) {
      figures.push(await floodCycle({ port, log: run.stdout, burst, floodClients: 600, established: 3, bytesEach: 8 * MiB }))
    }
    for (const f of figures) {
      console.log(`# fd exhaustion burst ${f.burst}: limit 256, ${f.floodClients} flood clients, accept paused at ${f.pausedAt.connections} connections ` +
        `(${f.pausedAt.descriptors} descriptors), ${f.resumed.pauses} pause(s) for ${f.resumed.pausedMs} ms, burst ${f.resumed.burstMs} ms, ` +
        `port held while paused: ${f.portHeld}, ${f.established} established transfers of ${f.bytesEach / MiB} MiB each way byte-exact: ${f.intact}, ` +
        `queued client served after: ${f.servedAfter}, fd-exhausted: ${f.resumed.fdExhausted}`)
      assert.equal(f.intact, f.established)
      assert.equal(f.portHeld, true)
      assert.equal(f.servedAfter, true)
    }
    // One paused and one resumed line per burst, no more.
    assert.equal(run.stdout.find({ event: 'accept-paused' }).length, 2)
    assert.equal(run.stdout.find({ event: 'accept-resumed' }).length, 2)
    assert.equal(run.stdout.find({ event: 'upstream-state', state: 'down' }).length, 0)
    assert.equal(run.stdout.find({ event: 'close', reason: 'upstream-error' }).length, 0)
    assert.equal(run.child.exitCode, null, run.stderr())
    assert.equal(await echoThrough(port, 'still here'), 'still here')
  })

  it('a dial that fails with EMFILE closes that client with fd-exhausted and never ejects the upstream', { timeout: 60_000 }, async (t) => {
    const echo = await startEchoServer()
    t.after(echo.close)
    // fall: 1, so a single failure blamed on the upstream would take it down.
    const proxy = await startProxy({
      routes: [{ name: 'emfile', listen: '127.0.0.1:0', upstream: echo.address, healthCheck: { type: 'tcp', interval: '1h', fall: 1 } }]
    })
    t.after(proxy.close)
    const port = proxy.port('emfile')
    assert.equal(await echoThrough(port, 'before'), 'before')
    // Its sockets are closed (not merely about to be) before the table is filled.
    await proxy.log.waitFor({ event: 'close', route: 'emfile' })

    // Fill this process's descriptor table but for two: the client's socket and kaproxy's accept.
    const fillers: number[] = []
    const release = (): void => { for (const fd of fillers.splice(0)) closeSync(fd) }
    t.after(() => { release(); setSoftLimit(20_000) })
    setSoftLimit(256)
    for (let i = 0; i < 256; i++) {
      try { fillers.push(openSync('/dev/null', 'r')) } catch (err) {
        assert.equal((err as NodeJS.ErrnoException).code, 'EMFILE')
        break
      }
    }
    for (const fd of fillers.splice(-2)) closeSync(fd)

    const client = net.connect({ port, host: '127.0.0.1' })
    client.on('error', () => {})
    const close = await proxy.log.waitFor({ event: 'close', route: 'emfile', reason: 'fd-exhausted' })
    assert.equal(close.side, null)
    assert.equal((close.err as { code?: string }).code, 'EMFILE')
    await once(client, 'close')
    const paused = await proxy.log.waitFor({ event: 'accept-paused' })
    assert.equal(paused.trigger, 'EMFILE')
    assert.deepEqual(proxy.kaproxy.engine.upstreams('emfile').map((u) => u.state), ['up'])
    assert.equal(proxy.log.find({ event: 'upstream-state', state: 'down' }).length, 0)
    assert.equal(proxy.log.find({ event: 'dial-failed' }).length, 0)

    // Descriptors come back: the re-count while paused notices, accepting resumes by itself.
    release()
    setSoftLimit(20_000)
    assert.equal(await echoThrough(port, 'after'), 'after')
    const resumed = await proxy.log.waitFor({ event: 'accept-resumed' })
    assert.equal(resumed.fdExhausted, 1)
    assert.deepEqual(proxy.kaproxy.engine.upstreams('emfile').map((u) => u.state), ['up'])
  })
})
