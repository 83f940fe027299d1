import assert from 'node:assert/strict'
import { socketFd } from '../../src/keepalive.js'
import { setsockoptInt, sockoptConstants } from '../../src/sockopt/libc.js'
import type net from 'node:net'
import { prng, readRandomly, writeRandomly } from './load.js'
import { connect, startServer } from './peers.js'
import { spawnCli } from './proxy.js'

/**
 * Integrity under load: many concurrent connections through one kaproxy process, random sizes
 * each way, random chunking and pauses on both ends; every byte verified by sha256 at both ends.
 * CI runs 2,000 connections up to 256 KiB each way; `npm run soak` runs them up to 8 MiB.
 */
/**
 * Cap the test peers' own socket buffers (not kaproxy's): thousands of multi-MiB transfers at once
 * otherwise exhaust the kernel's global TCP memory (net.ipv4.tcp_mem), and the kernel then aborts
 * connections itself ("TCP: out of memory", TCPAbortOnMemory), which says nothing about kaproxy.
 */
function capBuffers (socket: net.Socket, bytes: number): void {
  const c = sockoptConstants()
  setsockoptInt(socketFd(socket), c.SOL_SOCKET, SO_SNDBUF, bytes, 'SO_SNDBUF')
  setsockoptInt(socketFd(socket), c.SOL_SOCKET, SO_RCVBUF, bytes, 'SO_RCVBUF')
}
const SO_SNDBUF = 7
const SO_RCVBUF = 8

export async function integrityRun (connections: number, maxBytes: number, seed: number, peerBufferBytes?: number): Promise<{ bytes: number, mismatches: number, seconds: number }> {
  const random = prng(seed)
  const plan = Array.from({ length: connections }, () => ({ up: Math.floor(random() * maxBytes), down: Math.floor(random() * maxBytes) }))
  // The upstream reads the 4-byte connection index first, then streams its planned bytes back while reading.
  const upstreamResults = new Map<number, Promise<[{ bytes: number, sha256: string }, string]>>()
  const upstream = await startServer((socket: net.Socket) => {
    if (peerBufferBytes !== undefined) capBuffers(socket, peerBufferBytes)
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
    const lost: Array<{ index: number, up: number, down: number, direction: string, got: number }> = []
    await Promise.all(plan.map(async ({ up, down }, index) => {
      const client = await connect(port, '127.0.0.1', { allowHalfOpen: true })
      if (peerBufferBytes !== undefined) capBuffers(client, peerBufferBytes)
      const r = prng(seed * 31 + index)
      const head = Buffer.alloc(4)
      head.writeUInt32BE(index)
      client.write(head)
      const [received, sentHash] = await Promise.all([readRandomly(client, r), writeRandomly(client, up, r)])
      client.destroy()
      const result = upstreamResults.get(index)
      assert.ok(result !== undefined)
      const [upstreamReceived, upstreamSent] = await result
      const report = (direction: string, expected: number, got: number): void => {
        mismatches++
        lost.push({ index, up, down, direction, got })
        console.log(`mismatch ${direction} on connection ${index} (client port ${client.localPort ?? '?'}): expected ${expected} bytes, got ${got}`)
      }
      if (upstreamReceived.sha256 !== sentHash || upstreamReceived.bytes !== up) report('client->upstream', up, upstreamReceived.bytes)
      if (received.sha256 !== upstreamSent || received.bytes !== down) report('upstream->client', down, received.bytes)
      bytes += up + down
    }))
    const closes = await proxy.stdout.waitForCount({ event: 'close', route: 'load' }, connections, 30_000)
    const unexpected = closes.filter((line) => line.reason !== 'client-closed' && line.reason !== 'upstream-closed')
    assert.deepEqual(unexpected, [], 'every connection closed in order')
    const seconds = Number(process.hrtime.bigint() - started) / 1e9
    for (const l of lost) {
      const line = closes.find((c) => c.bytesFromUpstream === l.down || c.bytesFromClient === l.up + 4)
      console.log(`kaproxy's view of connection ${l.index} (up ${l.up} + 4 index bytes, down ${l.down}): ${JSON.stringify(line === undefined ? null : { bytesFromClient: line.bytesFromClient, bytesFromUpstream: line.bytesFromUpstream, reason: line.reason, side: line.side })}`)
    }
    return { bytes, mismatches, seconds }
  } catch (err) {
    const odd = proxy.stdout.lines.filter((line) => (line.event === 'close' && line.reason !== 'client-closed' && line.reason !== 'upstream-closed') || (typeof line.level === 'number' && line.level >= 40))
    console.log(`integrity run failed: ${String(err)}; ${proxy.stdout.find({ event: 'close' }).length} closes logged; unusual lines:\n${odd.slice(0, 10).map((line) => JSON.stringify(line)).join('\n')}`)
    throw err
  } finally {
    await proxy.kill()
    await upstream.close()
  }
}

