import assert from 'node:assert/strict'
import { once } from 'node:events'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import net from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, it } from 'node:test'
import fc from 'fast-check'
import YAML from 'yaml'
import { isLoopbackHost } from '../src/config/admin.js'
import { parseConfigFlags } from '../src/config/flags.js'
import { buildConfig } from '../src/config/load.js'
import { resolveConfig } from '../src/config/resolve.js'
import type { KaproxyConfig } from '../src/config/types.js'
import { ConfigError } from '../src/errors.js'
import { applyKeepalive, KEEPALIVE_LIMITS, keepaliveProblems, readKeepalive, type KeepaliveSettings } from '../src/keepalive.js'

// Values near every limit the validator enforces, and values of the wrong kind.
const edgeInts = [-1, 0, 1, 2, 59, 60, 126, 127, 128, 32766, 32767, 32768, 2147483, 2147484, 2147483647, 2147483648, 9007199254740991, 9007199254740992]
const units = ['', 'ms', 's', 'm', 'h', 'd', ' s', 'S', 'sec']
const wrongKind = fc.oneof(fc.constant(null), fc.boolean(), fc.constant([]), fc.constant({}), fc.double(), fc.string({ maxLength: 8 }), fc.constantFrom(NaN, Infinity, -Infinity, 1.5, -0))
const anything = fc.anything({ maxDepth: 2, maxKeys: 3 })

const duration = fc.oneof(
  { weight: 4, arbitrary: fc.tuple(fc.oneof(fc.constantFrom(...edgeInts), fc.integer({ min: 0, max: 40_000 })), fc.constantFrom(...units)).map(([n, unit]) => `${n}${unit}`) },
  { weight: 3, arbitrary: fc.oneof(fc.constantFrom(...edgeInts), fc.integer({ min: -10, max: 40_000 })) },
  { weight: 1, arbitrary: wrongKind },
  { weight: 1, arbitrary: fc.constant('auto') }
)
const count = fc.oneof(fc.constantFrom(...edgeInts), fc.integer({ min: -5, max: 200 }), fc.constantFrom('5', '6', 1.5), wrongKind)
const middlebox = fc.oneof(
  fc.constantFrom('aws-nlb', 'gcp-lb', 'azure-lb', 'nope', '', 'AWS-NLB'),
  fc.record({ name: fc.constantFrom('fw', 'corp-fw', 'Bad Name', ''), idleTimeout: duration }, { requiredKeys: [] }),
  anything
)
const middleboxes = fc.oneof({ weight: 4, arbitrary: fc.array(middlebox, { maxLength: 3 }) }, { weight: 1, arbitrary: anything })
const side = fc.oneof(
  { weight: 6, arbitrary: fc.record({ enabled: fc.oneof(fc.boolean(), wrongKind), idle: duration, interval: duration, count, userTimeout: fc.oneof(duration, fc.constant(null)), middleboxes, bogus: anything }, { requiredKeys: [] }) },
  { weight: 1, arbitrary: anything }
)
const listen = fc.constantFrom('127.0.0.1:0', '0.0.0.0:8080', '[::1]:0', '[::]:9', 'localhost:99999', ':80', 'a b:1', '127.0.0.1:-1', '::1:80', 8080, null, '')
const upstream = fc.oneof(
  fc.constantFrom('127.0.0.1:1', '10.0.0.1:443', 'db.internal:5432', 'unix:/tmp/kaproxy.sock', 'original-dst', '127.0.0.1:0', 'x:65536', 'unix:', ''),
  fc.array(fc.constantFrom('127.0.0.1:1', '127.0.0.1:2', 'bad'), { maxLength: 3 }),
  anything
)
const route = fc.oneof(
  {
    weight: 8,
    arbitrary: fc.record({
      name: fc.oneof(fc.constantFrom('a', 'web', 'db-1', 'Web', '', 'x'.repeat(64)), wrongKind),
      listen,
      upstream,
      balance: fc.oneof(fc.constantFrom('round-robin', 'least-connections', 'first-available', 'random'), wrongKind),
      retries: count,
      connectTimeout: duration,
      drainTimeout: duration,
      idleTimeout: duration,
      proxyHeaderTimeout: duration,
      keepalive: fc.oneof({ weight: 5, arbitrary: fc.record({ client: side, upstream: side, applyToExisting: fc.oneof(fc.boolean(), wrongKind) }, { requiredKeys: [] }) }, { weight: 1, arbitrary: anything }),
      healthCheck: fc.oneof(fc.record({ type: fc.constantFrom('tcp', 'http', 'udp'), interval: duration, timeout: duration, rise: count, fall: count, path: fc.constantFrom('/', '/healthz', 'x', '/a b'), expectStatus: count }, { requiredKeys: [] }), anything),
      proxyProtocol: fc.oneof(fc.constantFrom('v1', 'v2', 'v3'), wrongKind),
      acceptProxyProtocol: fc.oneof(fc.boolean(), wrongKind),
      maxConnections: count,
      allow: fc.oneof(fc.array(fc.constantFrom('10.0.0.0/8', '10.0.0.0/33', '::/0:443', 'x'), { maxLength: 2 }), anything),
      destinations: fc.oneof(fc.array(fc.record({ match: fc.constantFrom('10.0.0.0/8', '0.0.0.0/0:443', 'nope'), keepalive: side }, { requiredKeys: [] }), { maxLength: 2 }), anything),
      socketMark: fc.oneof(fc.constantFrom(1, 0, 0xffffffff, 0x100000000, '0x539', '0xZZ'), wrongKind),
      unknownKey: anything
    }, { requiredKeys: [] })
  },
  { weight: 1, arbitrary: anything }
)
const rawConfig = fc.oneof(
  {
    weight: 12,
    arbitrary: fc.record({
      routes: fc.oneof({ weight: 6, arbitrary: fc.array(route, { maxLength: 3 }) }, { weight: 1, arbitrary: anything }),
      defaults: fc.oneof(fc.record({ keepalive: side, connectTimeout: duration, drainTimeout: duration, extra: anything }, { requiredKeys: [] }), anything),
      log: fc.oneof(fc.record({ level: fc.oneof(fc.constantFrom('info', 'debug', 'trace', 'silent', 'loud'), wrongKind) }, { requiredKeys: [] }), anything),
      admin: fc.oneof(fc.record({
        listen: fc.oneof(fc.constantFrom('', '127.0.0.1:0', '0.0.0.0:9901', '[::]:1', '[::1]:9901', 'localhost:1', '10.1.2.3:80', 'admin.example:9'), wrongKind),
        token: fc.oneof(fc.constantFrom('', 's3cret', 'has space', 'tok=', 'a"b'), wrongKind)
      }, { requiredKeys: [] }), anything),
      reload: fc.oneof(fc.record({ watch: fc.oneof(fc.boolean(), wrongKind) }, { requiredKeys: [] }), anything),
      extra: anything
    }, { requiredKeys: [] })
  },
  { weight: 1, arbitrary: anything }
)
// Configs that are mostly right, so that acceptance is common and the values the kernel gets are
// tested near its limits: every keepalive value within a step of a bound.
const nearLimit = (min: number, max: number): fc.Arbitrary<number> => fc.oneof(fc.integer({ min: min - 1, max: min + 2 }), fc.integer({ min: max - 2, max: max + 1 }), fc.integer({ min, max }))
const plausibleSide = fc.record({
  enabled: fc.boolean(),
  idle: fc.oneof(nearLimit(1, 32767), nearLimit(1, 32767).map((n) => `${n}s`), fc.constantFrom('1m', '9h', '10h', '546m', '547m', '999ms', '1000ms', '32767000ms')),
  interval: fc.oneof(nearLimit(1, 32767), nearLimit(1, 32767).map((n) => `${n}s`)),
  count: nearLimit(1, 127),
  userTimeout: fc.oneof(fc.constant(null), nearLimit(0, 2147483647).map((n) => `${n}ms`), nearLimit(0, 2147483).map((n) => `${n}s`), fc.constantFrom('0', '596h', '597h'))
}, { requiredKeys: [] })
const plausibleConfig = fc.record({
  routes: fc.uniqueArray(fc.record({
    name: fc.constantFrom('a', 'b', 'c'),
    listen: fc.constant('127.0.0.1:0'),
    upstream: fc.constantFrom('127.0.0.1:1', 'unix:/tmp/k.sock', 'original-dst'),
    keepalive: fc.record({ client: plausibleSide, upstream: plausibleSide }, { requiredKeys: [] }),
    destinations: fc.array(fc.record({ match: fc.constant('10.0.0.0/8'), keepalive: plausibleSide }), { maxLength: 1 })
  }, { requiredKeys: ['name', 'listen', 'upstream'] }), { maxLength: 3, selector: (r) => r.name }),
  defaults: fc.record({ keepalive: plausibleSide }, { requiredKeys: [] })
}, { requiredKeys: [] })

const env = fc.record({
  KAPROXY_LOG_LEVEL: fc.constantFrom('info', 'warn', 'nonsense', ''),
  KAPROXY_ADMIN_LISTEN: fc.constantFrom('', '127.0.0.1:0', '0.0.0.0:9901', 'bad'),
  KAPROXY_ADMIN_TOKEN: fc.constantFrom('', 'tok', 'a b')
}, { requiredKeys: [] })

/** Every keepalive a socket could get from this config: each route's sides and transparent destinations. */
function keepalivesOf (config: KaproxyConfig): KeepaliveSettings[] {
  const all: KeepaliveSettings[] = []
  for (const r of config.routes) {
    all.push(r.keepalive.client, r.keepalive.upstream)
    for (const destination of r.originalDst?.destinations ?? []) all.push(destination.keepalive)
  }
  if (!config.defaults.idleAuto) all.push(config.defaults.keepalive)
  return all
}

/** Only a ConfigError, with at least one issue, each with a message and a field path. */
function assertConfigError (err: unknown, input: unknown): asserts err is ConfigError {
  if (!(err instanceof ConfigError)) throw new Error(`threw ${String(err)} (not a ConfigError) for ${JSON.stringify(input)}`, { cause: err })
  assert.ok(err.issues.length > 0)
  for (const issue of err.issues) {
    assert.equal(typeof issue.message, 'string')
    assert.ok(issue.message.length > 0)
    assert.equal(typeof issue.path, 'string')
  }
}

/** Anything accepted is within the kernel's limits and the validator's own rules. */
function assertSound (config: KaproxyConfig): void {
  for (const settings of keepalivesOf(config)) assert.deepEqual(keepaliveProblems(settings), [], JSON.stringify(settings))
  for (const r of config.routes) {
    assert.ok(r.connectTimeoutMs >= 1 && r.connectTimeoutMs <= 3_600_000)
    assert.ok(r.drainTimeoutMs >= 0 && r.drainTimeoutMs <= 3_600_000)
    assert.ok(r.listen.port >= 0 && r.listen.port <= 65535)
  }
  // A non-loopback admin API never goes without a token.
  if (config.admin.listen !== null && !isLoopbackHost(config.admin.listen.host)) assert.notEqual(config.admin.token, '')
}

const accepted: KeepaliveSettings[] = []
const figures = { configs: 0, configsAccepted: 0, flagRuns: 0, flagsAccepted: 0, fileRuns: 0, issues: 0, issuesWithoutPath: 0 }

function judge (run: () => KaproxyConfig, input: unknown, object: boolean): boolean {
  let config: KaproxyConfig
  try {
    config = run()
  } catch (err) {
    assertConfigError(err, input)
    figures.issues += err.issues.length
    // An object gets every issue at a field; only input that is no config at all (or the command
    // line as a whole) is reported without one.
    for (const issue of err.issues) {
      if (issue.path === '') {
        figures.issuesWithoutPath++
        if (object) assert.fail(`issue without a field path for ${JSON.stringify(input)}: ${issue.message}`)
      }
    }
    return false
  }
  assertSound(config)
  accepted.push(...keepalivesOf(config))
  return true
}

describe('config fuzzing: only ConfigErrors with field paths, never a value the kernel would reject', () => {
  it('buildConfig: 4,000 generated configs with env overrides', () => {
    fc.assert(fc.property(fc.oneof(rawConfig, plausibleConfig), env, (raw, environment) => {
      figures.configs++
      const object = typeof raw === 'object' && raw !== null && !Array.isArray(raw)
      if (judge(() => buildConfig(raw, { env: environment }), raw, object)) figures.configsAccepted++
    }), { numRuns: 4000, seed: Number(process.env.FUZZ_SEED ?? 7) })
    // The generators must reach acceptance too, or the kernel check below proves nothing.
    assert.ok(figures.configsAccepted > 100, `only ${figures.configsAccepted} accepted`)
  })

  it('parseConfigFlags + resolveConfig: 3,000 generated command lines with env', () => {
    const flagValue = fc.constantFrom('30s,5s,4', '30s,5s,4,50s', 'off', '0s,5s,4', '32768s,1s,1', '1s,1s,127', '1s,1s,128', '1,2', 'a,b,c', '', '2147483647ms', 'auto,10s,3',
      '127.0.0.1:0', '0.0.0.0:1', '127.0.0.1:1', 'aws-nlb', 'fw=10s', 'fw=0s,aws-nlb', 'debug', 'x', '5s', '0ms', '-1s')
    const flag = fc.constantFrom('--listen', '--upstream', '--name', '--client-keepalive', '--upstream-keepalive', '--client-middleboxes', '--upstream-middleboxes',
      '--connect-timeout', '--log-level', '--admin-listen', '--no-keepalive', '--unknown', '-x', 'positional')
    const base = fc.constantFrom([], ['--listen', '127.0.0.1:0', '--upstream', '127.0.0.1:1'], ['--listen', '0.0.0.0:0', '--upstream', 'unix:/tmp/k.sock'])
    const argv = fc.tuple(base, fc.array(fc.tuple(flag, fc.option(flagValue, { nil: undefined })), { maxLength: 6 }))
      .map(([start, pairs]) => [...start, ...pairs.flatMap(([name, value]) => value === undefined ? [name] : [name, value])])
    fc.assert(fc.property(argv, env, (args, environment) => {
      figures.flagRuns++
      const ok = judge(() => resolveConfig(parseConfigFlags(args), environment), args, true)
      if (ok) figures.flagsAccepted++
    }), { numRuns: 3000, seed: Number(process.env.FUZZ_SEED ?? 7) })
    assert.ok(figures.flagsAccepted > 50, `only ${figures.flagsAccepted} accepted`)
  })

  it('files: 300 generated configs written as YAML and JSON, loaded through --config with flag overrides', (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'kaproxy-fuzz-'))
    t.after(() => { rmSync(dir, { recursive: true, force: true }) })
    const override = fc.array(fc.constantFrom('--log-level', 'warn', '--log-level', 'nope', '--admin-listen', '0.0.0.0:1', '--admin-listen', ''), { maxLength: 2 })
    let n = 0
    fc.assert(fc.property(fc.oneof(rawConfig, plausibleConfig), fc.boolean(), override, env, (raw, asYaml, extra, environment) => {
      figures.fileRuns++
      const file = join(dir, `c${n++}.${asYaml ? 'yaml' : 'json'}`)
      let text: string
      try { text = (asYaml ? YAML.stringify(raw) as string | undefined : JSON.stringify(raw)) ?? '' } catch { return }
      writeFileSync(file, text)
      const object = typeof raw === 'object' && raw !== null && !Array.isArray(raw)
      judge(() => resolveConfig(parseConfigFlags(['--config', file, ...extra]), environment), raw, object)
    }), { numRuns: 300, seed: Number(process.env.FUZZ_SEED ?? 7) })
  })

  it('the kernel takes every accepted keepalive: a sample applied with setsockopt and read back with getsockopt', async (t) => {
    const server = net.createServer()
    server.listen(0, '127.0.0.1')
    await once(server, 'listening')
    t.after(() => server.close())
    const socket = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1')
    await once(socket, 'connect')
    t.after(() => socket.destroy())
    // Every distinct accepted value, plus the limits themselves.
    const distinct = new Map(accepted.map((s) => [JSON.stringify(s), s]))
    const L = KEEPALIVE_LIMITS
    for (const s of [
      { enabled: true, idleSec: L.idleSec.min, intervalSec: L.intervalSec.min, count: L.count.min, userTimeoutMs: L.userTimeoutMs.min },
      { enabled: true, idleSec: L.idleSec.max, intervalSec: L.intervalSec.max, count: L.count.max, userTimeoutMs: L.userTimeoutMs.max }
    ]) distinct.set(JSON.stringify(s), s)
    const sample = [...distinct.values()].slice(0, 2000)
    for (const settings of sample) {
      applyKeepalive(socket, settings)
      const read = readKeepalive(socket)
      assert.equal(read.enabled, settings.enabled)
      if (settings.enabled) assert.deepEqual([read.idleSec, read.intervalSec, read.count], [settings.idleSec, settings.intervalSec, settings.count])
      if (settings.userTimeoutMs !== undefined) assert.equal(read.userTimeoutMs, settings.userTimeoutMs)
    }
    console.log(`# config fuzz: ${figures.configs} configs (${figures.configsAccepted} accepted), ${figures.flagRuns} command lines (${figures.flagsAccepted} accepted), ` +
      `${figures.fileRuns} files; ${figures.issues} issues reported, ${figures.issuesWithoutPath} without a field path (none for an object); ` +
      `${sample.length} distinct accepted keepalive settings applied to a socket and read back`)
    assert.ok(sample.length > 20)
  })
})
