import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import fc from 'fast-check'
import { sideBudget } from '../src/budget/budget.js'
import { autoIdleSeconds, limitSeconds, MIDDLEBOX_PRESETS, type Middlebox } from '../src/budget/middleboxes.js'
import { buildConfig } from '../src/config/load.js'
import { detectionSeconds, KEEPALIVE_LIMITS, type KeepaliveSettings } from '../src/keepalive.js'

// The formulas of `kaproxy check`, checked over the kernel's whole ranges with fast-check.

const L = KEEPALIVE_LIMITS
const settingsArb = fc.record({
  enabled: fc.boolean(),
  idleSec: fc.integer(L.idleSec),
  intervalSec: fc.integer(L.intervalSec),
  count: fc.integer(L.count)
})
const withUserTimeoutArb = fc.tuple(settingsArb, fc.option(fc.integer(L.userTimeoutMs), { nil: undefined }))
  .map(([settings, userTimeoutMs]): KeepaliveSettings => userTimeoutMs === undefined ? settings : { ...settings, userTimeoutMs })
const middleboxArb = fc.record({
  name: fc.constantFrom('corp-fw', 'aws-nlb', 'edge'),
  idleTimeoutSec: fc.integer({ min: 1, max: 500_000 }),
  preset: fc.constant(false)
})
const middleboxesArb = fc.array(middleboxArb, { maxLength: 5 })

describe('keepalive budget formulas', () => {
  it('detection time is idle + interval x count without a user timeout (or with 0)', () => {
    fc.assert(fc.property(settingsArb, fc.constantFrom(undefined, 0), (settings, userTimeoutMs) => {
      const s: KeepaliveSettings = userTimeoutMs === undefined ? settings : { ...settings, userTimeoutMs }
      assert.equal(detectionSeconds(s), settings.enabled ? settings.idleSec + settings.intervalSec * settings.count : null)
    }))
  })

  it('with a user timeout, detection is the first probe timer idle + k x interval (k >= 1) at or after it', () => {
    fc.assert(fc.property(settingsArb, fc.integer({ min: 1, max: L.userTimeoutMs.max }), (settings, userTimeoutMs) => {
      const detect = detectionSeconds({ ...settings, enabled: true, userTimeoutMs })
      assert.ok(detect !== null)
      const k = (detect - settings.idleSec) / settings.intervalSec
      assert.ok(Number.isInteger(k) && k >= 1, `k = ${k}`)
      assert.ok(detect >= userTimeoutMs / 1000, 'at or after the user timeout')
      // The timer before it (if it is a probe timer, k >= 2) came before the user timeout.
      if (k >= 2) assert.ok(detect - settings.intervalSec < userTimeoutMs / 1000, 'the first such timer')
      // The count is ignored.
      assert.equal(detectionSeconds({ ...settings, enabled: true, userTimeoutMs, count: settings.count === 1 ? 127 : 1 }), detect)
    }))
    assert.equal(detectionSeconds({ enabled: true, idleSec: 30, intervalSec: 5, count: 4, userTimeoutMs: 50_000 }), 50)
    assert.equal(detectionSeconds({ enabled: true, idleSec: 20, intervalSec: 4, count: 3, userTimeoutMs: 30_000 }), 32)
    assert.equal(detectionSeconds({ enabled: true, idleSec: 400, intervalSec: 10, count: 6, userTimeoutMs: 30_000 }), 410)
  })

  it('limit is the smallest timeout, margin is limit - idle, and ok is false exactly for a warning', () => {
    fc.assert(fc.property(withUserTimeoutArb, middleboxesArb, (settings, middleboxes) => {
      const budget = sideBudget(settings, middleboxes)
      if (middleboxes.length === 0) {
        assert.deepEqual(budget, { limitSec: null, marginSec: null, ok: true, warning: null, note: null })
        return
      }
      const limit = Math.min(...middleboxes.map((m) => m.idleTimeoutSec))
      assert.equal(budget.limitSec, limit)
      assert.equal(budget.marginSec, settings.enabled ? limit - settings.idleSec : null)
      const warn = !settings.enabled || settings.idleSec >= limit
      const note = settings.enabled && settings.idleSec < limit && settings.idleSec + settings.intervalSec >= limit
      assert.equal(budget.ok, !warn)
      assert.equal(budget.warning?.kind, !settings.enabled ? 'keepalive-off' : warn ? 'idle-not-below-limit' : undefined)
      assert.equal(budget.note?.kind, note ? 'one-lost-probe' : undefined)
      if (budget.warning !== null) assert.match(budget.warning.message, new RegExp(`idle timeout ${limit}s`))
    }))
  })

  it('idle: auto is half the smallest timeout in whole seconds, within 1..32767, and always ok when the limit is 2s or more', () => {
    fc.assert(fc.property(middleboxesArb, fc.integer(L.intervalSec), (middleboxes, intervalSec) => {
      const auto = autoIdleSeconds(middleboxes)
      const limit = limitSeconds(middleboxes)
      if (limit === null) { assert.equal(auto, null); return }
      assert.equal(auto, Math.min(32767, Math.max(1, Math.floor(limit / 2))))
      assert.ok(Number.isInteger(auto))
      const budget = sideBudget({ enabled: true, idleSec: auto ?? 0, intervalSec, count: 3 }, middleboxes)
      assert.equal(budget.ok, limit >= 2)
    }))
  })

  it('the config resolves auto per side after merging over defaults, for every preset', () => {
    for (const [name, preset] of Object.entries(MIDDLEBOX_PRESETS)) {
      const config = buildConfig({
        defaults: { keepalive: { idle: 'auto', middleboxes: [name] } },
        routes: [{ name: 'r', listen: '127.0.0.1:0', upstream: '127.0.0.1:1', keepalive: { upstream: { middleboxes: [{ name: 'corp-fw', idleTimeout: '10m' }] } } }]
      }, { env: {} })
      const route = config.routes[0]
      assert.ok(route !== undefined)
      const expected: Middlebox = { name, idleTimeoutSec: preset.idleTimeoutSec, preset: true }
      assert.deepEqual(route.middleboxes.client, [expected])
      assert.equal(route.keepalive.client.idleSec, Math.min(32767, preset.idleTimeoutSec / 2), name)
      assert.deepEqual(route.middleboxes.upstream, [{ name: 'corp-fw', idleTimeoutSec: 600, preset: false }])
      assert.equal(route.keepalive.upstream.idleSec, 300)
      assert.deepEqual(route.idleAuto, { client: true, upstream: true })
      assert.equal(config.defaults.idleAuto, true)
    }
  })
})
