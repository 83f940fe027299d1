import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { buildConfig } from '../src/config/load.js'
import { ConfigError } from '../src/errors.js'

const route = { name: 'db', listen: '127.0.0.1:15432', upstream: '10.0.0.5:5432' }

function issuesOf (raw: unknown): string[] {
  try {
    buildConfig(raw, { env: {} })
  } catch (err) {
    assert.ok(err instanceof ConfigError)
    return err.issues.map((i) => `${i.path}: ${i.message}`)
  }
  assert.fail('the config was accepted')
}

describe('config of reload and drain', () => {
  it('resolves drainTimeout from defaults (30 s built in) or the route, applyToExisting off unless set, the file watched unless turned off', () => {
    const builtIn = buildConfig({ routes: [route] }, { env: {} })
    assert.equal(builtIn.defaults.drainTimeoutMs, 30_000)
    assert.equal(builtIn.routes[0]?.drainTimeoutMs, 30_000)
    assert.equal(builtIn.routes[0]?.keepaliveApplyToExisting, false)
    assert.deepEqual(builtIn.reload, { watch: true })

    const set = buildConfig({
      reload: { watch: false },
      defaults: { drainTimeout: '2m' },
      routes: [route, { ...route, name: 'quick', listen: '127.0.0.1:15433', drainTimeout: '500ms', keepalive: { applyToExisting: true } }]
    }, { env: {} })
    assert.deepEqual(set.reload, { watch: false })
    assert.equal(set.routes[0]?.drainTimeoutMs, 120_000)
    assert.equal(set.routes[1]?.drainTimeoutMs, 500)
    assert.equal(set.routes[1]?.keepaliveApplyToExisting, true)
    assert.equal(buildConfig({ routes: [{ ...route, drainTimeout: 0 }] }, { env: {} }).routes[0]?.drainTimeoutMs, 0)
  })

  it('names the field, the rule and the value of a bad drainTimeout, applyToExisting or reload.watch', () => {
    assert.deepEqual(issuesOf({ reload: { watch: 'maybe' }, defaults: { drainTimeout: '2h' }, routes: [route] }), [
      'reload.watch: must be true or false (got "maybe")',
      'defaults.drainTimeout: must be a duration 0ms..1h (e.g. 30s; 0 closes at once) (got "2h")'
    ])
    assert.deepEqual(issuesOf({ routes: [{ ...route, drainTimeout: '-5s', keepalive: { applyToExisting: 1 } }] }), [
      'routes[0].drainTimeout: must be a duration 0ms..1h (e.g. 30s; 0 closes at once) (got "-5s")',
      'routes[0].keepalive.applyToExisting: must be true or false (got 1)'
    ])
  })

  it('takes top-level booleans and counts as written: a YAML "no" is not true, "5" is not 5', () => {
    assert.deepEqual(issuesOf({ defaults: { keepalive: { enabled: 'no', count: '5' } }, routes: [route] }), [
      'defaults.keepalive.enabled: must be true or false (got "no")',
      'defaults.keepalive.count: must be an integer 1..127 (got "5")'
    ])
  })
})
