import assert from 'node:assert/strict'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, it } from 'node:test'
import { parseDurationMs } from '../src/config/formats.js'
import { buildConfig, loadConfigFile } from '../src/config/load.js'
import { ConfigError } from '../src/errors.js'

function issuesOf (raw: unknown, env: NodeJS.ProcessEnv = {}): string[] {
  try {
    buildConfig(raw, { env })
  } catch (err) {
    assert.ok(err instanceof ConfigError, `a ConfigError, got ${String(err)}`)
    assert.equal(err.code, 'KAPROXY_ERR_CONFIG')
    return err.issues.map((i) => `${i.path}: ${i.message}`)
  }
  assert.fail('the config was accepted')
}

const ok = { name: 'db', listen: '127.0.0.1:15432', upstream: '10.0.0.5:5432' }

describe('config', () => {
  it('parses durations: ms, s, m, h and bare seconds', () => {
    assert.equal(parseDurationMs('500ms'), 500)
    assert.equal(parseDurationMs('30s'), 30_000)
    assert.equal(parseDurationMs('5m'), 300_000)
    assert.equal(parseDurationMs('2h'), 7_200_000)
    assert.equal(parseDurationMs(45), 45_000)
    assert.equal(parseDurationMs('45'), 45_000)
    assert.equal(parseDurationMs('1.5s'), undefined)
    assert.equal(parseDurationMs('-1s'), undefined)
    assert.equal(parseDurationMs('10 days'), undefined)
  })

  it('merges each side over defaults.keepalive and resolves the contract example', () => {
    const config = buildConfig({
      log: { level: 'info' },
      admin: { listen: '127.0.0.1:9901' },
      defaults: { keepalive: { enabled: true, idle: '60s', interval: '10s', count: 6 } },
      routes: [{
        name: 'legacy-db',
        listen: '0.0.0.0:15432',
        upstream: '10.0.0.5:5432',
        connectTimeout: '5s',
        keepalive: { client: { idle: '30s', interval: '5s', count: 4, userTimeout: '50s' }, upstream: { idle: '2m', interval: '15s', count: 8 } }
      }, { name: 'v6', listen: '[::]:7000', upstream: 'db.internal:5432', keepalive: { upstream: { enabled: false } } }]
    }, { env: {} })
    const [legacy, v6] = config.routes
    assert.deepEqual(legacy?.keepalive.client, { enabled: true, idleSec: 30, intervalSec: 5, count: 4, userTimeoutMs: 50_000 })
    assert.deepEqual(legacy?.keepalive.upstream, { enabled: true, idleSec: 120, intervalSec: 15, count: 8 })
    assert.deepEqual(v6?.keepalive.client, { enabled: true, idleSec: 60, intervalSec: 10, count: 6 })
    assert.equal(v6?.keepalive.upstream.enabled, false)
    assert.deepEqual(v6?.listen, { host: '::', port: 7000 })
    assert.deepEqual(config.admin.listen, { host: '127.0.0.1', port: 9901 })
  })

  it('reports every invalid field at once, each with its path, rule and value', () => {
    const issues = issuesOf({
      routes: [
        ok,
        { name: 'x', listen: '127.0.0.1:1', upstream: 'h:1', keepalive: { upstream: { count: 0, idle: '500ms', interval: 40000 }, client: { userTimeout: '-1' } } }
      ]
    })
    assert.deepEqual(issues, [
      'routes[1].keepalive.client.userTimeout: must be a duration 0..2147483647ms (e.g. 30s, 500ms) (got "-1")',
      'routes[1].keepalive.upstream.idle: must be whole seconds 1..32767 (e.g. 30s, 2m) or auto (got "500ms")',
      'routes[1].keepalive.upstream.interval: must be whole seconds 1..32767 (e.g. 30s, 2m) (got 40000)',
      'routes[1].keepalive.upstream.count: must be an integer 1..127 (got 0)'
    ])
  })

  it('rejects duplicate names and colliding listen addresses', () => {
    assert.deepEqual(issuesOf({ routes: [ok, { ...ok, listen: '0.0.0.0:15432' }] }), [
      'routes[1].name: must be unique (routes[0] has the same name) (got "db")',
      'routes[1].listen: must not collide with routes[0].listen 127.0.0.1:15432 (got "0.0.0.0:15432")'
    ])
  })

  it('rejects unknown keys at every level', () => {
    assert.deepEqual(issuesOf({ listen: 1, defaults: { keepalive: { idel: 3 } }, routes: [{ ...ok, upstreams: [], keepalive: { server: {}, client: { intervall: 1 } } }] }), [
      'listen: unknown key (allowed: log, admin, reload, dataPlane, defaults, routes)',
      'defaults.keepalive.idel: unknown key',
      'routes[0].upstreams: unknown key (allowed: name, listen, upstream, balance, retries, connectTimeout, drainTimeout, keepalive, healthCheck, proxyProtocol, acceptProxyProtocol, proxyHeaderTimeout, maxConnections, idleTimeout, allow, destinations, socketMark, engine)',
      'routes[0].keepalive.server: unknown key (allowed: client, upstream, applyToExisting)',
      'routes[0].keepalive.client.intervall: unknown key (allowed: enabled, idle, interval, count, userTimeout, middleboxes)'
    ])
  })

  it('checks names, addresses and top-level values', () => {
    assert.deepEqual(issuesOf({ log: { level: 'loud' }, admin: { listen: 'nowhere' }, routes: [{ name: 'Bad Name', listen: '::1:80', upstream: 'db:0', connectTimeout: '0s' }] }), [
      'log.level: must be one of fatal, error, warn, info, debug, trace, silent (got "loud")',
      'admin.listen: must be host:port or [ipv6]:port with port 0..65535, or "" to disable (got "nowhere")',
      'routes[0].name: must be 1..63 characters of a-z, 0-9 and - (got "Bad Name")',
      'routes[0].listen: must put an IPv6 address in brackets: [::1]:port (got "::1:80")',
      'routes[0].upstream: must be host:port or [ipv6]:port with port 1..65535, or unix:/path (got "db:0")',
      'routes[0].connectTimeout: must be a duration 1ms..1h (e.g. 5s) (got "0s")'
    ])
    assert.deepEqual(issuesOf({ routes: 'all' }), ['routes: must be a list of routes (got "all")'])
    assert.deepEqual(issuesOf([]), [': the configuration must be an object with routes (got a list)'])
  })

  it('validates pools, limits and transparent-mode fields with the same precision', () => {
    assert.deepEqual(issuesOf({
      routes: [
        { name: 'p', listen: '127.0.0.1:1', upstream: ['10.0.0.1:1', '10.0.0.1:1', 'unix:relative'], balance: 'random', retries: 99, healthCheck: { type: 'udp', rise: 0, path: 'x' }, proxyProtocol: 'v3', maxConnections: -1, idleTimeout: '10ms' },
        { name: 't', listen: '127.0.0.1:2', upstream: 'original-dst', allow: ['10.0.0.0/33', '10.0.0.0/8:0'], destinations: [{ match: '10.0.5.0/24:5432', keepalive: { idle: '20s', count: 0 } }], socketMark: 'mark' },
        { name: 'n', listen: '127.0.0.1:3', upstream: 'db.internal:5432', allow: ['10.0.0.0/8'], socketMark: 1337 }
      ]
    }), [
      'routes[0].upstream[1]: must not repeat an upstream (got "10.0.0.1:1")',
      'routes[0].upstream[2]: must be unix:/absolute/path (at most 107 bytes) (got "unix:relative")',
      'routes[0].balance: must be one of round-robin, least-connections, first-available (got "random")',
      'routes[0].retries: must be an integer 0..16 (got 99)',
      'routes[0].healthCheck.type: must be one of tcp, http (got "udp")',
      'routes[0].healthCheck.rise: must be an integer 1..100 (got 0)',
      'routes[0].healthCheck.path: must be an absolute request path without spaces, e.g. /healthz (got "x")',
      'routes[0].healthCheck.type: must be http when path or expectStatus is set (got "udp")',
      'routes[0].proxyProtocol: must be one of v1, v2 (got "v3")',
      'routes[0].maxConnections: must be an integer 0..1000000 (got -1)',
      'routes[0].idleTimeout: must be a duration 1s..7d, or 0 for off (got "10ms")',
      'routes[1].allow[0]: must be CIDR or CIDR:port, e.g. 10.0.0.0/8, 192.168.1.10/32:5432, [fd00::/8]:443 (prefix 0..32) (got "10.0.0.0/33")',
      'routes[1].allow[1]: must be CIDR or CIDR:port, e.g. 10.0.0.0/8, 192.168.1.10/32:5432, [fd00::/8]:443 (port 1..65535) (got "10.0.0.0/8:0")',
      'routes[1].destinations[0].keepalive.count: must be an integer 1..127 (got 0)',
      'routes[1].socketMark: must be an integer 1..0xffffffff (e.g. 0x539) (got "mark")',
      'routes[2].allow: only applies with upstream: original-dst (got ["10.0.0.0/8"])',
      'routes[2].socketMark: needs upstreams given as IP addresses (or original-dst): the socket is made before the name is resolved (got 1337)'
    ])
    const config = buildConfig({
      routes: [{ name: 'outbound', listen: '127.0.0.1:15001', upstream: 'original-dst', allow: ['10.0.0.0/8', '192.168.1.10/32:5432', '[fd00::/8]:443'], socketMark: '0x539', keepalive: { upstream: { idle: '30s', interval: '5s', count: 4 } }, destinations: [{ match: '10.0.5.0/24:5432', keepalive: { idle: '20s', interval: '3s' } }] }]
    }, { env: {} })
    const route = config.routes[0]
    assert.equal(route?.socketMark, 0x539)
    assert.deepEqual(route?.originalDst?.destinations[0]?.keepalive, { enabled: true, idleSec: 20, intervalSec: 3, count: 4 }, 'merged over keepalive.upstream')
    const allow = route?.originalDst?.allow ?? []
    const allowed = (address: string, port: number): boolean => allow.some((rule) => rule.matches(address, port))
    assert.equal(allowed('10.200.3.4', 80), true)
    assert.equal(allowed('192.168.1.10', 5432), true)
    assert.equal(allowed('192.168.1.10', 5433), false)
    assert.equal(allowed('fd00::1', 443), true)
    assert.equal(allowed('fd00::1', 80), false)
    assert.equal(allowed('172.16.0.1', 80), false)
  })

  it('takes KAPROXY_* environment overrides, validated like the file', () => {
    const config = buildConfig({ routes: [ok] }, { env: { KAPROXY_LOG_LEVEL: 'debug', KAPROXY_ADMIN_LISTEN: '' } })
    assert.equal(config.log.level, 'debug')
    assert.equal(config.admin.listen, null)
    assert.deepEqual(issuesOf({ routes: [ok] }, { KAPROXY_LOG_LEVEL: 'chatty' }), ['log.level: must be one of fatal, error, warn, info, debug, trace, silent (got "chatty")'])
  })

  it('reads YAML and JSON files, and names the file and the parse error otherwise', (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'kaproxy-config-'))
    t.after(() => { rmSync(dir, { recursive: true, force: true }) })
    const yaml = join(dir, 'k.yaml')
    writeFileSync(yaml, 'routes:\n  - name: a\n    listen: 127.0.0.1:1\n    upstream: 127.0.0.1:2\n')
    assert.equal(loadConfigFile(yaml).routes[0]?.name, 'a')
    const json = join(dir, 'k.json')
    writeFileSync(json, JSON.stringify({ routes: [ok] }))
    assert.equal(loadConfigFile(json).routes[0]?.name, 'db')
    const broken = join(dir, 'broken.yaml')
    writeFileSync(broken, 'routes:\n  - name: a\n   listen: [\n')
    assert.throws(() => loadConfigFile(broken), (err: Error) => err instanceof ConfigError && err.message.includes(`cannot parse ${broken}`))
    const duplicate = join(dir, 'dup.yaml')
    writeFileSync(duplicate, 'log: {level: info}\nlog: {level: debug}\nroutes: []\n')
    assert.throws(() => loadConfigFile(duplicate), (err: Error) => err instanceof ConfigError && /Map keys must be unique/.test(err.message))
    assert.throws(() => loadConfigFile(join(dir, 'missing.yaml')), (err: Error) => err instanceof ConfigError && /ENOENT/.test(err.message))
    // YAML is data only: a tag that would construct code is not honoured.
    const tagged = join(dir, 'tag.yaml')
    writeFileSync(tagged, 'routes: !!js/function "function () { return [] }"\n')
    assert.throws(() => loadConfigFile(tagged), ConfigError)
  })
})
