import { createHash } from 'node:crypto'
import { once } from 'node:events'
import net from 'node:net'

/** A small deterministic PRNG (mulberry32): cheap random sizes, chunkings and payload bytes. */
export function prng (seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

// One random 1 MiB block; payloads are slices of it at random offsets, so bytes differ per chunk
// without paying for crypto randomness on the hot path of the test itself.
const BLOCK = Buffer.alloc(1024 * 1024)
{
  const random = prng(0xc0ffee)
  for (let i = 0; i < BLOCK.length; i += 4) BLOCK.writeUInt32LE(Math.floor(random() * 4294967296), i)
}

/** Write `total` bytes in random chunks with occasional pauses, then FIN; resolves with the sha256 written. */
export async function writeRandomly (socket: net.Socket, total: number, random: () => number): Promise<string> {
  const hash = createHash('sha256')
  let sent = 0
  while (sent < total) {
    const size = Math.min(total - sent, 1 + Math.floor(random() * 256 * 1024))
    const offset = Math.floor(random() * (BLOCK.length - size))
    const chunk = BLOCK.subarray(offset, offset + size)
    hash.update(chunk)
    sent += size
    if (!socket.write(chunk)) await once(socket, 'drain')
    if (random() < 0.02) await new Promise((resolve) => setTimeout(resolve, Math.floor(random() * 20)))
  }
  // Resolve only once every byte is handed to the kernel: a destroy() right after end() would
  // drop what is still queued in Node and look like a relay that lost data.
  await new Promise<void>((resolve) => { socket.end(() => { resolve() }) })
  return hash.digest('hex')
}

/** Read to EOF with occasional reader pauses; resolves with byte count and sha256. */
export async function readRandomly (socket: net.Socket, random: () => number): Promise<{ bytes: number, sha256: string }> {
  const hash = createHash('sha256')
  let bytes = 0
  socket.on('data', (chunk: Buffer) => {
    bytes += chunk.length
    hash.update(chunk)
    if (random() < 0.01) {
      socket.pause()
      setTimeout(() => socket.resume(), Math.floor(random() * 20))
    }
  })
  await once(socket, 'end')
  return { bytes, sha256: hash.digest('hex') }
}
