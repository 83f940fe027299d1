import assert from 'node:assert/strict'
import type net from 'node:net'
import { prng, readRandomly, writeRandomly } from './load.js'
import { connect, startServer } from './peers.js'
import { spawnCli } from './proxy.js'

/**
 * Integrity under load: many concurrent connections through one kaproxy process, random sizes
 * each way, random chunking and pauses on both ends; every byte verified by sha256 at both ends.
 * CI runs 2,000 connections up to 256 KiB each way; `npm run soak` runs them up to 8 MiB.
 */
export async function integrityRun (connections: number, maxBytes: number, seed: number): Promise<{ bytes: number, mismatches: number, seconds: number }> {
  const random = prng(seed)
  const plan = Array.from({ length: connections }, () => ({ up: Math.floor(random() * maxBytes), down: Math.floor(random() * maxBytes) }))
  // The upstream reads the 4-byte connection index first, then streams its planned bytes back while reading.
  const upstreamResults = new Map<number, Promise<[{ bytes: number, sha256: string }, string]>>()
  const upstream = await startServer((socket: net.Socket) => {
    socket.once('readable', function onIndex () {
      const head = socket.read(4) as Buffer | null
      if (head === null) { socket.once('readable', onIndex); return }
      const index = head.readUInt32BE(0)
      const r = prng(seed ^ (index + 1))
      upstreamResults.set(index, Promise.all([readRandomly(socket, r), writeRandomly(socket, plan[index]?.down ?? 0, r)]))
    })
  })
  const proxy = spawnCli(['--name', 'load', '--listen', '127.0.0.1:0', '--upstream', upstream.address], {})
  try {
    const listening = await proxy.stdout.waitFor({ event: 'listening', route: 'load' })
    const port = Number(String(listening.address).split(':').pop())
    const started = process.hrtime.bigint()
    let mismatches = 0
    let bytes = 0
    await Promise.all(plan.map(async ({ up, down }, index) => {
      const client = await connect(port, '127.0.0.1', { allowHalfOpen: true })
      const r = prng(seed * 31 + index)
      const head = Buffer.alloc(4)
      head.writeUInt32BE(index)
      client.write(head)
      const [received, sentHash] = await Promise.all([readRandomly(client, r), writeRandomly(client, up, r)])
      client.destroy()
      const result = upstreamResults.get(index)
      assert.ok(result !== undefined)
      const [upstreamReceived, upstreamSent] = await result
      if (upstreamReceived.sha256 !== sentHash || upstreamReceived.bytes !== up) mismatches++
      if (received.sha256 !== upstreamSent || received.bytes !== down) mismatches++
      bytes += up + down
    }))
    const closes = await proxy.stdout.waitForCount({ event: 'close', route: 'load' }, connections, 30_000)
    const unexpected = closes.filter((line) => line.reason !== 'client-closed' && line.reason !== 'upstream-closed')
    assert.deepEqual(unexpected, [], 'every connection closed in order')
    const seconds = Number(process.hrtime.bigint() - started) / 1e9
    return { bytes, mismatches, seconds }
  } finally {
    await proxy.kill()
    await upstream.close()
  }
}

