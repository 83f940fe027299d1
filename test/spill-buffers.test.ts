import assert from 'node:assert/strict'
import type net from 'node:net'
import { it } from 'node:test'
import { socketFd } from '../src/keepalive.js'
import { setsockoptInt, sockoptConstants } from '../src/sockopt/libc.js'
import { spillBufferCounts } from '../src/relay/net/spill-buffers.js'
import { connect, drainToHash, sendRandom, startServer } from './helpers/peers.js'
import { startProxy } from './helpers/proxy.js'

const MiB = 1024 * 1024
const STREAMS = 4
const SO_RCVBUF = 8

// The net engine copies what a slow peer did not take into spill buffers: reused ones, never
// two spills in one buffer at once (each stream's bytes would then arrive mixed with another's).
it('net engine: concurrent uploads into slow upstreams arrive byte-exact through reused spill buffers', async (t) => {
  const received: Array<Promise<{ bytes: number, sha256: string }>> = []
  const upstream = await startServer((socket: net.Socket) => {
    // A small receive buffer: the relay's sends take less than its reads, so most reads spill.
    setsockoptInt(socketFd(socket), sockoptConstants().SOL_SOCKET, SO_RCVBUF, 64 * 1024, 'SO_RCVBUF')
    received.push(drainToHash(socket).then((result) => { socket.end(); return result }))
  })
  t.after(upstream.close)
  const proxy = await startProxy({ routes: [{ name: 'spill', listen: '127.0.0.1:0', upstream: upstream.address, engine: 'net' }] })
  t.after(proxy.close)
  const before = spillBufferCounts()

  const clients = await Promise.all(Array.from({ length: STREAMS }, async () => await connect(proxy.port('spill'), '127.0.0.1', { allowHalfOpen: true })))
  t.after(() => { for (const client of clients) client.destroy() })
  const sent = await Promise.all(clients.map(async (client) => await sendRandom(client, 24 * MiB, MiB)))
  const closes = await proxy.log.waitForCount({ event: 'close', route: 'spill' }, STREAMS, 60_000)
  const got = await Promise.all(received)

  assert.deepEqual(got.map((r) => r.sha256).sort(), [...sent].sort(), 'every stream arrived byte-exact')
  for (const close of closes) assert.equal(close.bytesFromClient, 24 * MiB)
  const after = spillBufferCounts()
  const spills = after.taken - before.taken
  const made = after.made - before.made
  console.log(`spill buffers: ${spills} spills through ${made} buffers made`)
  assert.ok(spills >= 3 * STREAMS, `the slow upstreams made the relay spill (${spills})`)
  // At most one buffer per stream at once, and the spare ones are reused.
  assert.ok(made <= STREAMS, `spill buffers were reused: ${made} made for ${spills} spills`)
})
