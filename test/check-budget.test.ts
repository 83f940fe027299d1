import assert from 'node:assert/strict'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, it } from 'node:test'
import { MIDDLEBOX_PRESETS } from '../src/budget/middleboxes.js'
import type { CheckReport } from '../src/check.js'
import { spawnCli } from './helpers/proxy.js'

type Report = CheckReport

function writeConfig (t: { after: (fn: () => void) => void }, config: unknown): string {
  const dir = mkdtempSync(join(tmpdir(), 'kaproxy-budget-'))
  t.after(() => { rmSync(dir, { recursive: true, force: true }) })
  const file = join(dir, 'kaproxy.json')
  writeFileSync(file, JSON.stringify(config))
  return file
}

async function runCheck (t: { after: (fn: () => Promise<void>) => void }, args: string[]): Promise<{ code: number | null, out: string, err: string }> {
  const run = spawnCli(['check', ...args])
  t.after(run.kill)
  let out = ''
  run.child.stdout?.on('data', (chunk: Buffer) => { out += chunk.toString() })
  const code = await run.exit
  return { code, out, err: run.stderr() }
}

const presetNames = Object.keys(MIDDLEBOX_PRESETS) as Array<keyof typeof MIDDLEBOX_PRESETS>
let port = 17100
const route = (name: string, keepalive: unknown) => ({ name, listen: `127.0.0.1:${port++}`, upstream: '127.0.0.1:7001', keepalive })

// One route per preset (client idle auto, upstream the defaults), plus custom entries with a user
// timeout, a disabled side crossing a middlebox, an idle above the limit, and a one-lost-probe note.
const CONFIG = {
  admin: { listen: '' },
  routes: [
    ...presetNames.map((preset) => route(`via-${preset}`, { client: { idle: 'auto', middleboxes: [preset] }, upstream: { middleboxes: [preset] } })),
    route('custom', { upstream: { idle: 'auto', interval: '5s', count: 4, userTimeout: '30s', middleboxes: ['gcp-cloud-nat', { name: 'corp-fw', idleTimeout: '10m' }] } }),
    route('risky', { client: { enabled: false, middleboxes: ['aws-nlb'] }, upstream: { idle: '400s', middleboxes: ['aws-nat-gateway'] } }),
    route('tight', { client: { idle: '230s', interval: '15s', count: 3, middleboxes: ['azure-lb'] }, upstream: { enabled: false } })
  ]
}

const RISKY_WARNINGS = [
  'route risky, client: keepalive is off but this side crosses aws-nlb (idle timeout 350s): an idle connection is dropped after 350s and a dead peer is never noticed',
  'route risky, upstream: keepalive idle 400s is not below aws-nat-gateway (idle timeout 350s): the flow is dropped before the first probe; set idle below 350s (idle: auto gives 175s)'
]

describe('kaproxy check: the keepalive budget', () => {
  it('--json prints exactly { routes, warnings } with middleboxes and budget per side, for every preset', async (t) => {
    const { code, out } = await runCheck(t, ['--json', '--config', writeConfig(t, CONFIG)])
    assert.equal(code, 0, 'warnings alone do not fail check')
    const report = JSON.parse(out) as Report
    assert.deepEqual(Object.keys(report), ['routes', 'warnings'])
    assert.deepEqual(report.warnings, RISKY_WARNINGS)

    for (const preset of presetNames) {
      const timeout = MIDDLEBOX_PRESETS[preset].idleTimeoutSec
      const r = report.routes.find((x) => x.name === `via-${preset}`)
      assert.ok(r !== undefined, preset)
      const auto = Math.min(32767, timeout / 2)
      assert.deepEqual(r.client, {
        enabled: true, idle: auto, interval: 10, count: 6, userTimeout: null, detectionSeconds: auto + 60,
        middleboxes: [{ name: preset, idleTimeout: timeout }],
        budget: { limit: timeout, margin: timeout - auto, ok: true }
      }, preset)
      assert.deepEqual(r.upstream.budget, { limit: timeout, margin: timeout - 60, ok: true }, preset)
      assert.equal(r.upstream.idle, 60)
    }

    const byName = (name: string) => report.routes.find((x) => x.name === name)
    assert.deepEqual(byName('custom')?.upstream, {
      enabled: true, idle: 300, interval: 5, count: 4, userTimeout: 30, detectionSeconds: 305,
      middleboxes: [{ name: 'gcp-cloud-nat', idleTimeout: 1200 }, { name: 'corp-fw', idleTimeout: 600 }],
      budget: { limit: 600, margin: 300, ok: true }
    })
    assert.deepEqual(byName('custom')?.client.budget, { limit: null, margin: null, ok: true })
    assert.deepEqual(byName('risky')?.client, {
      enabled: false, idle: null, interval: null, count: null, userTimeout: null, detectionSeconds: null,
      middleboxes: [{ name: 'aws-nlb', idleTimeout: 350 }],
      budget: { limit: 350, margin: null, ok: false }
    })
    assert.deepEqual(byName('risky')?.upstream.budget, { limit: 350, margin: -50, ok: false })
    // A note is not a warning: ok stays true and nothing is listed.
    assert.deepEqual(byName('tight')?.client.budget, { limit: 240, margin: 10, ok: true })
    assert.deepEqual(byName('tight')?.upstream, {
      enabled: false, idle: null, interval: null, count: null, userTimeout: null, detectionSeconds: null, middleboxes: [], budget: { limit: null, margin: null, ok: true }
    })
  })

  it('the text form shows each side\'s middleboxes, limit and margin, then the warnings and notes', async (t) => {
    const { code, out } = await runCheck(t, ['--config', writeConfig(t, CONFIG)])
    assert.equal(code, 0)
    assert.match(out, /route via-azure-lb: .*\n {2}client +keepalive on +idle 2m .*\n {12}middleboxes azure-lb 240s {2}limit 240s {2}margin 120s \(idle auto: half of 240s\) {2}ok\n/)
    assert.match(out, /route custom: .*\n {2}client .*\n {12}no middleboxes declared\n {2}upstream .* userTimeout 30s .* dead peer noticed within 305s\n {12}middleboxes gcp-cloud-nat 1200s, corp-fw 600s {2}limit 600s {2}margin 300s \(idle auto: half of 600s\) {2}ok\n/)
    assert.match(out, /route risky: .*\n {2}client +keepalive off .*\n {12}middleboxes aws-nlb 350s {2}limit 350s {2}WARNING\n/)
    assert.match(out, /\nwarnings:\n {2}route risky, client: keepalive is off .*\n {2}route risky, upstream: keepalive idle 400s is not below aws-nat-gateway .*\n/)
    assert.match(out, /\nnotes:\n {2}route tight, client: idle 230s \+ interval 15s = 245s reaches azure-lb \(idle timeout 240s\): if the first probe is lost, the flow is dropped before the next one\n/)
    assert.match(out, /\n\nconfiguration OK, with 2 keepalive budget warning\(s\)\n$/)
  })

  it('--strict exits 1 when a side has a warning, 0 with notes only', async (t) => {
    const strict = await runCheck(t, ['--strict', '--config', writeConfig(t, CONFIG)])
    assert.equal(strict.code, 1)
    assert.match(strict.out, /configuration OK, with 2 keepalive budget warning\(s\)/)
    const strictJson = await runCheck(t, ['--json', '--strict', '--config', writeConfig(t, CONFIG)])
    assert.equal(strictJson.code, 1)
    assert.deepEqual((JSON.parse(strictJson.out) as Report).warnings, RISKY_WARNINGS)

    const notesOnly = { ...CONFIG, routes: CONFIG.routes.filter((r) => r.name !== 'risky') }
    const clean = await runCheck(t, ['--strict', '--config', writeConfig(t, notesOnly)])
    assert.equal(clean.code, 0)
    assert.match(clean.out, /\nnotes:\n/)
    assert.match(clean.out, /\n\nconfiguration OK\n$/)
    // An invalid config is still exit 1 with the field path, strict or not.
    const bad = await runCheck(t, ['--strict', '--config', writeConfig(t, { routes: [route('a', { upstream: { idle: 'auto' } })] })])
    assert.equal(bad.code, 1)
    assert.match(bad.err, /routes\[0\]\.keepalive\.upstream\.idle: auto needs at least one middlebox on this side/)
  })

  it('one-route flags: --upstream-keepalive auto with --upstream-middleboxes, and --strict on a disabled side', async (t) => {
    const { code, out } = await runCheck(t, ['--json', '--listen', '127.0.0.1:0', '--upstream', '127.0.0.1:7001',
      '--upstream-keepalive', 'auto,5s,3,20s', '--upstream-middleboxes', 'azure-nat-gateway,corp-fw=2m'])
    assert.equal(code, 0)
    assert.deepEqual((JSON.parse(out) as Report).routes[0]?.upstream, {
      enabled: true, idle: 60, interval: 5, count: 3, userTimeout: 20, detectionSeconds: 65,
      middleboxes: [{ name: 'azure-nat-gateway', idleTimeout: 240 }, { name: 'corp-fw', idleTimeout: 120 }],
      budget: { limit: 120, margin: 60, ok: true }
    })
    const off = await runCheck(t, ['--strict', '--listen', '127.0.0.1:0', '--upstream', '127.0.0.1:7001', '--no-keepalive', '--client-middleboxes', 'aws-nlb'])
    assert.equal(off.code, 1)
    assert.match(off.out, /route default, client: keepalive is off but this side crosses aws-nlb/)
  })
})
