import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { setTimeout as sleep } from 'node:timers/promises'
import { it } from 'node:test'
import { connect, startEchoServer } from './helpers/peers.js'
import { spawnCli } from './helpers/proxy.js'
import { describeEachEngine } from './helpers/engines.js'

const IDLE_CONNECTIONS = 200
/** How long the idle process is watched (the measurement window itself: nothing to await). */
const WINDOW_MS = 2000

/** Times the thread gave up the CPU (it slept and was woken) plus times it was preempted, from the kernel. */
function contextSwitches (pid: number, tid: number): number {
  const status = readFileSync(`/proc/${pid}/task/${tid}/status`, 'utf8')
  const count = (field: string): number => Number(new RegExp(`^${field}:\\s+(\\d+)`, 'm').exec(status)?.[1] ?? NaN)
  return count('voluntary_ctxt_switches') + count('nonvoluntary_ctxt_switches')
}

describeEachEngine('idle', () => {
  it('an idle process with idle connections and the admin API on sleeps: its main thread is woken a few times a second at most', { skip: process.platform !== 'linux' && 'reads /proc' }, async (t) => {
    const upstream = await startEchoServer()
    t.after(upstream.close)
    const run = spawnCli(['--name', 'r', '--listen', '127.0.0.1:0', '--upstream', upstream.address, '--client-keepalive', '60s,10s,6', '--upstream-keepalive', '60s,10s,6'], { KAPROXY_ADMIN_LISTEN: '127.0.0.1:0' })
    t.after(run.kill)
    const listening = await run.stdout.waitFor({ event: 'listening', route: 'r' })
    const port = Number(String(listening.address).split(':').pop())
    for (let i = 0; i < IDLE_CONNECTIONS; i++) {
      const socket = await connect(port)
      t.after(() => socket.destroy())
      socket.write('x')
      await new Promise((resolve) => socket.once('data', resolve))
    }
    // Idle once the last one is reported (the fast engine's worker reports each after reportAfterMs).
    await run.stdout.waitForCount({ event: 'open', route: 'r' }, IDLE_CONNECTIONS)
    const pid = run.child.pid ?? -1
    const before = contextSwitches(pid, pid)
    await sleep(WINDOW_MS)
    const wakeups = contextSwitches(pid, pid) - before
    // prom-client's default event-loop monitor (every 10 ms) alone woke it about 400 times here.
    assert.ok(wakeups <= 20, `main thread woken ${wakeups} times in ${WINDOW_MS} ms idle`)
  })
})
