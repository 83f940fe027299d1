import assert from 'node:assert/strict'
import { it } from 'node:test'
import { integrityRun } from './helpers/integrity.js'
import { describeEachEngine } from './helpers/engines.js'

describeEachEngine('integrity under load', () => {
  it('2,000 concurrent connections, random sizes up to 1 MiB each way, random chunking and pauses, every byte verified at both ends', async () => {
    const result = await integrityRun(2000, 1024 * 1024, 7)
    console.log(`integrity: 2000 connections, ${(result.bytes / 1024 / 1024).toFixed(0)} MiB relayed in ${result.seconds.toFixed(1)} s, mismatches ${result.mismatches}`)
    assert.equal(result.mismatches, 0)
  })
})
