import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import type net from 'node:net'
import { it } from 'node:test'
import { connect, startServer } from './helpers/peers.js'
import { spawnCli } from './helpers/proxy.js'
import { describeEachEngine } from './helpers/engines.js'

const GiB = 1024 * 1024 * 1024
const CHUNK = Buffer.alloc(1024 * 1024, 0x5a)
/** While one side does not read, kaproxy may hold this much more memory than at rest: it buffers no more than a read's worth. */
const STALLED_BOUND = 32 * 1024 * 1024
/**
 * While 1 GiB flows, RSS also holds garbage read buffers until V8 collects them: measured +40 MiB
 * on Node 20 and up to +91 MiB on Node 24, whose heap sizing differs. This bounds that slack.
 */
const FLOWING_BOUND = 160 * 1024 * 1024

function rssBytes (pid: number): number {
  const match = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
  return Number(match?.[1] ?? 0) * 1024
}

/** Stream `total` bytes with backpressure; `progress()` tells how much went out so far. */
function stream (socket: net.Socket, total: number): { done: Promise<void>, written: () => number } {
  let written = 0
  const done = (async () => {
    while (written < total) {
      written += CHUNK.length
      if (!socket.write(CHUNK)) await new Promise((resolve) => socket.once('drain', resolve))
    }
    socket.end()
  })()
  return { done, written: () => written }
}

/** Wait until `value()` stops growing for three samples in a row (the stream has stalled), bounded. */
async function stalled (value: () => number): Promise<number> {
  let last = -1
  let still = 0
  for (let sample = 0; sample < 100 && still < 3; sample++) {
    await new Promise((resolve) => setTimeout(resolve, 100))
    const now = value()
    still = now === last ? still + 1 : 0
    last = now
  }
  assert.equal(still, 3, 'the stream stalled against the reader that does not read')
  return last
}

async function run (direction: 'upstream-to-client' | 'client-to-upstream'): Promise<void> {
  let upstreamSocket: net.Socket | null = null
  const upstream = await startServer((socket) => { upstreamSocket = socket; socket.pause() })
  const proxy = spawnCli(['--name', 'bp', '--listen', '127.0.0.1:0', '--upstream', upstream.address])
  try {
    const listening = await proxy.stdout.waitFor({ event: 'listening', route: 'bp' })
    const pid = proxy.child.pid ?? 0
    const client = await connect(Number(String(listening.address).split(':').pop()), '127.0.0.1', { allowHalfOpen: true })
    client.pause()
    await proxy.stdout.waitFor({ event: 'open', route: 'bp' })
    const server = upstreamSocket as net.Socket | null
    assert.ok(server !== null)
    const baseline = rssBytes(pid)
    const [writer, reader] = direction === 'upstream-to-client' ? [server, client] : [client, server]
    const sending = stream(writer, GiB)
    const stuckAt = await stalled(sending.written)
    const stalledRss = rssBytes(pid)
    // Now the reader reads everything; sample kaproxy's RSS while 1 GiB flows.
    let received = 0
    let peak = stalledRss
    reader.on('data', (chunk: Buffer) => { received += chunk.length })
    const sampler = setInterval(() => { peak = Math.max(peak, rssBytes(pid)) }, 50)
    reader.resume()
    await Promise.all([sending.done, new Promise((resolve) => reader.once('end', resolve))])
    clearInterval(sampler)
    client.destroy()
    const mib = (n: number): string => (n / 1024 / 1024).toFixed(1)
    console.log(`backpressure ${direction}: stalled after ${mib(stuckAt)} MiB written with the reader paused; kaproxy RSS ${mib(baseline)} MiB at rest, ${mib(stalledRss)} MiB stalled, peak ${mib(peak)} MiB while 1 GiB flowed (bounds: +${mib(STALLED_BOUND)} MiB stalled, +${mib(FLOWING_BOUND)} MiB flowing)`)
    assert.equal(received, GiB)
    assert.ok(stuckAt < 256 * 1024 * 1024, 'kaproxy stopped reading instead of buffering the stream')
    assert.ok(stalledRss - baseline < STALLED_BOUND, `stalled RSS grew by ${mib(stalledRss - baseline)} MiB`)
    assert.ok(peak - baseline < FLOWING_BOUND, `peak RSS grew by ${mib(peak - baseline)} MiB`)
  } finally {
    await proxy.kill()
    await upstream.close()
  }
}

describeEachEngine('backpressure', () => {
  it('a client that reads nothing while the upstream streams 1 GiB keeps kaproxy\'s RSS bounded', async () => {
    await run('upstream-to-client')
  })
  it('an upstream that reads nothing while the client streams 1 GiB keeps kaproxy\'s RSS bounded', async () => {
    await run('client-to-upstream')
  })
})
