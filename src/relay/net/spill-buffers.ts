/**
 * Where the `net` engine keeps the bytes a peer's socket did not take: the read buffer they sit in
 * is shared by every socket and refilled by the next read, so they are copied out, into Node's
 * write queue, and the reading side pauses until they are written. The copies go into these
 * buffers, reused: a fresh Buffer for each was external memory for V8 to collect (with eight
 * streams uploading, a major collection ran every few hundred ms: ~6% of the relay thread) and
 * fresh pages the kernel had to zero. A spill buffer holds at most one read (SPILL_BUFFER_BYTES).
 */
export const SPILL_BUFFER_BYTES = 4 << 20

/**
 * Buffers kept for reuse once their bytes are written: enough for as many stalled bulk flows at
 * once (16 MiB, as the fast engine's bulk buffers of one worker). Beyond them a spill buffer is
 * made for one write and left to the collector.
 */
const SPARE_BUFFERS = 4

const spare: Buffer[] = []
let made = 0
let taken = 0

/** A buffer of SPILL_BUFFER_BYTES for one spill: a spare one, else a new one. */
export function takeSpillBuffer (): Buffer {
  taken++
  const buffer = spare.pop()
  if (buffer !== undefined) return buffer
  made++
  // Not from Node's pool: each is kept whole, or dropped whole.
  return Buffer.allocUnsafeSlow(SPILL_BUFFER_BYTES)
}

/** A spill buffer whose write completed (no write refers to it any more), back for reuse. */
export function returnSpillBuffer (buffer: Buffer): void {
  if (spare.length < SPARE_BUFFERS) spare.push(buffer)
}

/** Since start: spills (buffers taken) and buffers made; and how many wait spare. For tests. */
export function spillBufferCounts (): { taken: number, made: number, spare: number } {
  return { taken, made, spare: spare.length }
}
