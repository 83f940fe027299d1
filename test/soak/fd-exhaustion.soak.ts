import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { floodCycle } from '../helpers/flood.js'
import { startEchoServer } from '../helpers/peers.js'
import { spawnCli } from '../helpers/proxy.js'

const MiB = 1024 * 1024
const CYCLES = 20

describe('soak: descriptor exhaustion cycles', () => {
  it(`${CYCLES} bursts of 1,000 clients under prlimit --nofile=512, established transfers of 32 MiB each way across each`, { timeout: 30 * 60_000 }, async (t) => {
    const echo = await startEchoServer()
    t.after(echo.close)
    const run = spawnCli(['--name', 'fd', '--listen', '127.0.0.1:0', '--upstream', echo.address, '--no-keepalive'], {}, undefined, ['prlimit', '--nofile=512:512'])
    t.after(run.kill)
    const listening = await run.stdout.waitFor({ event: 'listening', route: 'fd' })
    const port = Number(String(listening.address).split(':').pop())
    let intact = 0
    let pauses = 0
    let pausedMs = 0
    let fdExhausted = 0
    for (let burst = 1; burst <= CYCLES; burst++) {
      const f = await floodCycle({ port, log: run.stdout, burst, floodClients: 1000, established: 4, bytesEach: 32 * MiB })
      assert.equal(f.portHeld, true)
      assert.equal(f.servedAfter, true)
      intact += f.intact
      pauses += Number(f.resumed.pauses)
      pausedMs += Number(f.resumed.pausedMs)
      fdExhausted += Number(f.resumed.fdExhausted)
    }
    console.log(`soak fd exhaustion: ${CYCLES} bursts of 1000 clients at limit 512: ${run.stdout.find({ event: 'accept-paused' }).length} accept-paused lines, ` +
      `${pauses} pauses, ${pausedMs} ms paused in all, ${fdExhausted} fd-exhausted closes, ${intact}/${CYCLES * 4} established transfers byte-exact, ` +
      `process alive: ${run.child.exitCode === null}`)
    assert.equal(intact, CYCLES * 4)
    assert.equal(run.stdout.find({ event: 'accept-paused' }).length, CYCLES)
    assert.equal(run.stdout.find({ event: 'upstream-state', state: 'down' }).length, 0)
    assert.equal(run.child.exitCode, null)
  })
})
