import assert from 'node:assert/strict'
import { it } from 'node:test'
import { formatStorm, reloadStorm } from './helpers/reload-storm.js'
import { describeEachEngine } from './helpers/engines.js'

describeEachEngine('reload storms', () => {
  it('100 reloads, valid and invalid mixed, during traffic: no connection on the unchanged route is interrupted', async () => {
    const figures = await reloadStorm({ reloads: 100, streams: 8, bytesBetweenReloads: 128 * 1024 })
    console.log(`# ${formatStorm(figures)}`)
    assert.equal(figures.ok, figures.valid)
    assert.equal(figures.failed, figures.invalid)
    assert.equal(figures.mismatches, 0)
    assert.equal(figures.interrupted, 0)
    assert.equal(figures.probeFailures, 0)
  })
})
