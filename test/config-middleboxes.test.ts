import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { parseConfigFlags } from '../src/config/flags.js'
import { buildConfig } from '../src/config/load.js'
import { resolveConfig } from '../src/config/resolve.js'
import { ConfigError } from '../src/errors.js'

function issuesOf (build: () => unknown): string[] {
  try {
    build()
  } catch (err) {
    assert.ok(err instanceof ConfigError, `a ConfigError, got ${String(err)}`)
    return err.issues.map((i) => `${i.path}: ${i.message}`)
  }
  assert.fail('the config was accepted')
}

const route = (keepalive: unknown): Record<string, unknown> => ({ name: 'r', listen: '127.0.0.1:0', upstream: '127.0.0.1:1', keepalive })
const build = (raw: unknown) => buildConfig(raw, { env: {} })

describe('middleboxes and idle: auto in the config', () => {
  it('resolves presets and custom entries per side; a custom entry may reuse a preset name with a raised timeout', () => {
    const config = build({
      routes: [route({
        client: { idle: '200s', interval: '10s', count: 3, middleboxes: ['azure-lb'] },
        upstream: { idle: 'auto', interval: '10s', count: 3, middleboxes: ['gcp-cloud-nat', { name: 'corp-fw', idleTimeout: '10m' }, { name: 'aws-nlb', idleTimeout: 3600 }] }
      })]
    })
    const r = config.routes[0]
    assert.ok(r !== undefined)
    assert.deepEqual(r.middleboxes.client, [{ name: 'azure-lb', idleTimeoutSec: 240, preset: true }])
    assert.deepEqual(r.middleboxes.upstream, [
      { name: 'gcp-cloud-nat', idleTimeoutSec: 1200, preset: true },
      { name: 'corp-fw', idleTimeoutSec: 600, preset: false },
      { name: 'aws-nlb', idleTimeoutSec: 3600, preset: false }
    ])
    // applyKeepalive's input is unchanged: plain seconds, auto already resolved.
    assert.deepEqual(r.keepalive.client, { enabled: true, idleSec: 200, intervalSec: 10, count: 3 })
    assert.deepEqual(r.keepalive.upstream, { enabled: true, idleSec: 300, intervalSec: 10, count: 3 })
    assert.deepEqual(r.idleAuto, { client: false, upstream: true })
  })

  it('a side inherits defaults.keepalive.middleboxes unless it lists its own; [] and null clear them', () => {
    const config = build({
      defaults: { keepalive: { middleboxes: ['aws-nat-gateway'] } },
      routes: [route({ client: {}, upstream: { middleboxes: [] } }), { ...route({ client: { middleboxes: null } }), name: 's', listen: '127.0.0.1:0' }]
    })
    assert.deepEqual(config.defaults.middleboxes, [{ name: 'aws-nat-gateway', idleTimeoutSec: 350, preset: true }])
    assert.deepEqual(config.routes[0]?.middleboxes, { client: [{ name: 'aws-nat-gateway', idleTimeoutSec: 350, preset: true }], upstream: [] })
    assert.deepEqual(config.routes[1]?.middleboxes.client, [])
    assert.deepEqual(build({ defaults: { keepalive: { middleboxes: null } }, routes: [] }).defaults.middleboxes, [])
    // Without any declaration nothing changes.
    assert.deepEqual(build({ routes: [route({})] }).routes[0]?.middleboxes, { client: [], upstream: [] })
  })

  it('auto: half the smallest timeout, whole seconds, kept within 1..32767', () => {
    const idleOf = (middleboxes: unknown[]) => build({ routes: [route({ client: { idle: 'auto', middleboxes } })] }).routes[0]?.keepalive.client.idleSec
    assert.equal(idleOf(['azure-lb', 'aws-nlb']), 120)
    assert.equal(idleOf([{ name: 'odd', idleTimeout: '7s' }]), 3)
    assert.equal(idleOf([{ name: 'tiny', idleTimeout: '1s' }]), 1)
    assert.equal(idleOf(['linux-conntrack']), 32767)
    assert.equal(idleOf(['kube-proxy-conntrack']), 32767)
    assert.equal(idleOf(['kube-proxy-ipvs']), 450)
  })

  it('auto on an enabled side without a middlebox is an error at that side\'s idle, saying when it was inherited', () => {
    assert.deepEqual(issuesOf(() => build({ routes: [route({ upstream: { idle: 'auto' } })] })), [
      'routes[0].keepalive.upstream.idle: auto needs at least one middlebox on this side: list the side\'s middleboxes, or give idle in seconds (got "auto")'
    ])
    assert.deepEqual(issuesOf(() => build({ defaults: { keepalive: { idle: 'auto', middleboxes: ['aws-nlb'] } }, routes: [route({ client: { middleboxes: [] } })] })), [
      'routes[0].keepalive.client.idle: auto needs at least one middlebox on this side (inherited from defaults.keepalive.idle): list the side\'s middleboxes, or give idle in seconds (got "auto")'
    ])
    // A side with keepalive off never uses its idle.
    const off = build({ defaults: { keepalive: { idle: 'auto' } }, routes: [route({ client: { enabled: false }, upstream: { middleboxes: ['aws-nlb'] } })] })
    assert.equal(off.routes[0]?.keepalive.client.enabled, false)
    assert.equal(off.routes[0]?.keepalive.upstream.idleSec, 175)
  })

  it('reports every bad entry with its path, rule and value', () => {
    assert.deepEqual(issuesOf(() => build({
      defaults: { keepalive: { idle: 'soon', middleboxes: ['aws-elb'] } },
      routes: [route({ upstream: { middleboxes: ['nope', { name: 'x' }, { name: 'y', idleTimeout: '500ms', extra: 1 }, { idleTimeout: '0s' }, 42] }, client: { middleboxes: 'aws-nlb' } })]
    })), [
      'defaults.keepalive.idle: must be whole seconds 1..32767 (e.g. 30s, 2m) or auto (got "soon")',
      'defaults.keepalive.middleboxes[0]: must be a preset (aws-nlb, aws-nat-gateway, aws-gwlb, azure-lb, azure-nat-gateway, gcp-cloud-nat, kube-proxy-ipvs, kube-proxy-conntrack, linux-conntrack) or { name, idleTimeout } (got "aws-elb")',
      'routes[0].keepalive.client.middleboxes: must be a list of middleboxes (preset names or { name, idleTimeout }) (got "aws-nlb")',
      'routes[0].keepalive.upstream.middleboxes[0]: must be a preset (aws-nlb, aws-nat-gateway, aws-gwlb, azure-lb, azure-nat-gateway, gcp-cloud-nat, kube-proxy-ipvs, kube-proxy-conntrack, linux-conntrack) or { name, idleTimeout } (got "nope")',
      'routes[0].keepalive.upstream.middleboxes[1].idleTimeout: is required: whole seconds, at least 1s (e.g. 350s, 10m)',
      'routes[0].keepalive.upstream.middleboxes[2].extra: unknown key (allowed: name, idleTimeout)',
      'routes[0].keepalive.upstream.middleboxes[2].idleTimeout: must be whole seconds, at least 1s (e.g. 350s, 10m) (got "500ms")',
      'routes[0].keepalive.upstream.middleboxes[3].name: is required: 1..63 characters of A-Z, a-z, 0-9, ., _ and -, starting with a letter or digit',
      'routes[0].keepalive.upstream.middleboxes[3].idleTimeout: must be whole seconds, at least 1s (e.g. 350s, 10m) (got "0s")',
      'routes[0].keepalive.upstream.middleboxes[4]: must be a preset (aws-nlb, aws-nat-gateway, aws-gwlb, azure-lb, azure-nat-gateway, gcp-cloud-nat, kube-proxy-ipvs, kube-proxy-conntrack, linux-conntrack) or { name, idleTimeout } (got 42)'
    ])
    assert.deepEqual(issuesOf(() => build({ defaults: { keepalive: { middleboxes: ['aws-nlb', { name: 'fw', idleTimeout: 'long' }] } }, routes: [] })), [
      'defaults.keepalive.middleboxes[1].idleTimeout: must be whole seconds, at least 1s (e.g. 350s, 10m) (got "long")'
    ])
    assert.deepEqual(issuesOf(() => build({ defaults: { keepalive: { middleboxes: 'aws-nlb' } }, routes: [] })), [
      'defaults.keepalive.middleboxes: must be a list of middleboxes (preset names or { name, idleTimeout }) (got "aws-nlb")'
    ])
  })

  it('in transparent mode a destination\'s keepalive inherits the upstream side\'s middleboxes and auto, or lists its own', () => {
    const config = build({
      routes: [{
        name: 'out',
        listen: '127.0.0.1:15001',
        upstream: 'original-dst',
        keepalive: { upstream: { idle: 'auto', interval: '5s', count: 4, middleboxes: ['aws-nat-gateway'] } },
        destinations: [
          { match: '10.0.5.0/24:5432', keepalive: { middleboxes: ['azure-lb'] } },
          { match: '10.0.6.0/24', keepalive: { interval: '3s' } }
        ]
      }]
    })
    const r = config.routes[0]
    assert.equal(r?.keepalive.upstream.idleSec, 175)
    assert.deepEqual(r?.originalDst?.destinations.map((d) => [d.keepalive.idleSec, d.keepalive.intervalSec]), [[120, 5], [175, 3]])
  })

  it('one-route mode takes --client-middleboxes / --upstream-middleboxes and reports them by flag', () => {
    const flags = (...args: string[]) => parseConfigFlags(['--listen', '127.0.0.1:0', '--upstream', '127.0.0.1:1', ...args])
    const config = resolveConfig(flags('--upstream-keepalive', 'auto,5s,3', '--upstream-middleboxes', 'aws-nlb,corp-fw=2m'), {})
    assert.deepEqual(config.routes[0]?.middleboxes.upstream, [{ name: 'aws-nlb', idleTimeoutSec: 350, preset: true }, { name: 'corp-fw', idleTimeoutSec: 120, preset: false }])
    assert.equal(config.routes[0]?.keepalive.upstream.idleSec, 60)
    // --no-keepalive and a middlebox list combine.
    const off = resolveConfig(flags('--no-keepalive', '--client-middleboxes', 'azure-lb'), {})
    assert.equal(off.routes[0]?.keepalive.client.enabled, false)
    assert.deepEqual(off.routes[0]?.middleboxes.client, [{ name: 'azure-lb', idleTimeoutSec: 240, preset: true }])
    assert.deepEqual(issuesOf(() => resolveConfig(flags('--client-middleboxes', 'aws-elb', '--upstream-keepalive', 'auto,5s,3'), {})), [
      '--client-middleboxes [0]: must be a preset (aws-nlb, aws-nat-gateway, aws-gwlb, azure-lb, azure-nat-gateway, gcp-cloud-nat, kube-proxy-ipvs, kube-proxy-conntrack, linux-conntrack) or { name, idleTimeout } (got "aws-elb")',
      '--upstream-keepalive idle: auto needs at least one middlebox on this side: list the side\'s middleboxes, or give idle in seconds (got "auto")'
    ])
  })
})
