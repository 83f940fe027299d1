import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { formatStorm, reloadStorm } from '../helpers/reload-storm.js'

describe('soak: reload storm', () => {
  it('1,000 reloads, valid and invalid mixed, during 16 long transfers', { timeout: 30 * 60_000 }, async () => {
    const figures = await reloadStorm({ reloads: 1000, streams: 16, bytesBetweenReloads: 256 * 1024 })
    console.log(`soak ${formatStorm(figures)}`)
    assert.equal(figures.ok, figures.valid)
    assert.equal(figures.failed, figures.invalid)
    assert.equal(figures.mismatches, 0)
    assert.equal(figures.interrupted, 0)
    assert.equal(figures.probeFailures, 0)
  })
})
