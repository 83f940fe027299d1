import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { integrityRun } from '../helpers/integrity.js'

describe('soak: integrity under load', () => {
  it('2,000 concurrent connections, random sizes up to 8 MiB each way, every byte verified', { timeout: 30 * 60_000 }, async () => {
    // 64 KiB buffers on the test's own sockets keep ~16 GiB in flight within the kernel's TCP memory.
    const result = await integrityRun(2000, 8 * 1024 * 1024, Number(process.env.SOAK_SEED ?? 11), 64 * 1024)
    console.log(`soak integrity: 2000 connections, ${(result.bytes / 1024 / 1024 / 1024).toFixed(2)} GiB relayed in ${result.seconds.toFixed(1)} s, mismatches ${result.mismatches}`)
    assert.equal(result.mismatches, 0)
  })
})
