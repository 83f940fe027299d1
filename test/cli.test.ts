import assert from 'node:assert/strict'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, it } from 'node:test'
import { connect, startEchoServer, echoThrough } from './helpers/peers.js'
import { spawnCli } from './helpers/proxy.js'

function tempDir (t: { after: (fn: () => void) => void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'kaproxy-cli-'))
  t.after(() => { rmSync(dir, { recursive: true, force: true }) })
  return dir
}


const BAD_CONFIGS: Array<{ kind: string, file: string, text: string, expect: RegExp }> = [
  { kind: 'out-of-range keepalive', file: 'count.yaml', text: 'routes:\n  - { name: a, listen: "127.0.0.1:0", upstream: "127.0.0.1:1" }\n  - { name: b, listen: "127.0.0.1:0", upstream: "127.0.0.1:1", keepalive: { upstream: { count: 0 } } }\n', expect: /routes\[1\]\.keepalive\.upstream\.count: must be an integer 1\.\.127 \(got 0\)/ },
  { kind: 'sub-second idle', file: 'idle.yaml', text: 'routes:\n  - { name: a, listen: "127.0.0.1:0", upstream: "127.0.0.1:1", keepalive: { client: { idle: 500ms } } }\n', expect: /routes\[0\]\.keepalive\.client\.idle: must be whole seconds 1\.\.32767/ },
  { kind: 'duplicate route names', file: 'dup.yaml', text: 'routes:\n  - { name: a, listen: "127.0.0.1:0", upstream: "127.0.0.1:1" }\n  - { name: a, listen: "127.0.0.1:0", upstream: "127.0.0.1:1" }\n', expect: /routes\[1\]\.name: must be unique/ },
  { kind: 'duplicate listen addresses', file: 'listen.json', text: JSON.stringify({ routes: [{ name: 'a', listen: '127.0.0.1:7999', upstream: '127.0.0.1:1' }, { name: 'b', listen: '127.0.0.1:7999', upstream: '127.0.0.1:1' }] }), expect: /routes\[1\]\.listen: must not collide with routes\[0\]\.listen/ },
  { kind: 'unknown key', file: 'unknown.yaml', text: 'routes:\n  - { name: a, listen: "127.0.0.1:0", upstream: "127.0.0.1:1", keeplive: {} }\n', expect: /routes\[0\]\.keeplive: unknown key/ },
  { kind: 'unparsable file', file: 'broken.yaml', text: 'routes: [\n', expect: /cannot parse .*broken\.yaml/ },
  { kind: 'bad upstream', file: 'upstream.yaml', text: 'routes:\n  - { name: a, listen: "127.0.0.1:0", upstream: "nowhere" }\n', expect: /routes\[0\]\.upstream: must be host:port/ }
]

describe('the kaproxy command', () => {
  for (const bad of BAD_CONFIGS) {
    it(`exits 1 without listening on a config with ${bad.kind}, naming the field`, async (t) => {
      const dir = tempDir(t)
      const file = join(dir, bad.file)
      writeFileSync(file, bad.text)
      const run = spawnCli(['--config', file])
      t.after(run.kill)
      assert.equal(await run.exit, 1)
      assert.match(run.stderr(), bad.expect)
      assert.equal(run.stdout.find({ event: 'listening' }).length, 0)
      // check rejects it the same way.
      const check = spawnCli(['check', '--config', file])
      t.after(check.kill)
      assert.equal(await check.exit, 1)
      assert.match(check.stderr(), bad.expect)
    })
  }

  it('names the flag when one-route flags are invalid', async (t) => {
    const run = spawnCli(['--listen', '127.0.0.1:0', '--upstream', '127.0.0.1:1', '--client-keepalive', '0s,5s,4', '--upstream-keepalive', '1m,1s'])
    t.after(run.kill)
    assert.equal(await run.exit, 1)
    assert.match(run.stderr(), /--upstream-keepalive: must be IDLE,INTERVAL,COUNT\[,USERTIMEOUT\] or off/)
    const idle = spawnCli(['--listen', '127.0.0.1:0', '--upstream', '127.0.0.1:1', '--client-keepalive', '0s,5s,4'])
    t.after(idle.kill)
    assert.equal(await idle.exit, 1)
    assert.match(idle.stderr(), /--client-keepalive idle: must be whole seconds 1\.\.32767 .*\(got "0s"\)/)
    const unknown = spawnCli(['--lisen', '127.0.0.1:0'])
    t.after(unknown.kill)
    assert.equal(await unknown.exit, 1)
    assert.match(unknown.stderr(), /Unknown option '--lisen'/)
  })

  it('check prints the effective routes with both sides resolved, as text and JSON', async (t) => {
    const text = spawnCli(['check', '--config', 'conf/kaproxy.yaml'])
    t.after(text.kill)
    let out = ''
    text.child.stdout?.on('data', (chunk: Buffer) => { out += chunk.toString() })
    assert.equal(await text.exit, 0)
    assert.match(out, /route demo: 127\.0\.0\.1:7000 -> 127\.0\.0\.1:7001/)
    assert.match(out, /client +keepalive on +idle 30s +interval 5s +count 4 /)
    assert.match(out, /upstream +keepalive on +idle 2m +interval 15s +count 8 +userTimeout 2m/)

    const json = spawnCli(['check', '--json', '--listen', '127.0.0.1:7100', '--upstream', '127.0.0.1:7101', '--client-keepalive', '20s,4s,3,30s', '--upstream-keepalive', 'off'])
    t.after(json.kill)
    let jsonOut = ''
    json.child.stdout?.on('data', (chunk: Buffer) => { jsonOut += chunk.toString() })
    assert.equal(await json.exit, 0)
    const report = JSON.parse(jsonOut) as { routes: Array<Record<string, unknown>> }
    assert.deepEqual(report.routes[0], {
      name: 'default',
      client: { enabled: true, idle: 20, interval: 4, count: 3, userTimeout: 30, detectionSeconds: 32, middleboxes: [], budget: { limit: null, margin: null, ok: true } },
      upstream: { enabled: false, idle: null, interval: null, count: null, userTimeout: null, detectionSeconds: null, middleboxes: [], budget: { limit: null, margin: null, ok: true } }
    })
  })

  it('runs one route from flags, relays, and exits 0 on SIGTERM', async (t) => {
    const echo = await startEchoServer()
    t.after(echo.close)
    const run = spawnCli(['--name', 'flags', '--listen', '127.0.0.1:0', '--upstream', echo.address, '--client-keepalive', '30s,5s,4', '--upstream-keepalive', '2m,15s,8'])
    t.after(run.kill)
    const listening = await run.stdout.waitFor({ event: 'listening', route: 'flags' })
    const port = Number(String(listening.address).split(':').pop())
    assert.equal(await echoThrough(port, 'hello through kaproxy'), 'hello through kaproxy')
    const close = await run.stdout.waitFor({ event: 'close', route: 'flags' })
    assert.equal(close.bytesFromClient, 21)
    assert.equal(close.bytesFromUpstream, 21)
    assert.equal(close.reason, 'client-closed')
    const plan = await run.stdout.waitFor({ event: 'route', route: 'flags' })
    assert.deepEqual(plan.keepalive, { client: { enabled: true, idleSec: 30, intervalSec: 5, count: 4 }, upstream: { enabled: true, idleSec: 120, intervalSec: 15, count: 8 } })
    const system = await run.stdout.waitFor({ event: 'system-keepalive' })
    assert.equal(typeof system.timeSec, 'number')
    run.child.kill('SIGTERM')
    assert.equal(await run.exit, 0)
    await run.stdout.waitFor({ event: 'stopped' })
  })

  it('reads the config file from KAPROXY_CONFIG and the level from KAPROXY_LOG_LEVEL', async (t) => {
    const echo = await startEchoServer()
    t.after(echo.close)
    const dir = tempDir(t)
    const file = join(dir, 'env.yaml')
    writeFileSync(file, `admin: { listen: "" }\nroutes:\n  - { name: from-env, listen: "127.0.0.1:0", upstream: "${echo.address}" }\n`)
    const run = spawnCli([], { KAPROXY_CONFIG: file })
    t.after(run.kill)
    const listening = await run.stdout.waitFor({ event: 'listening', route: 'from-env' })
    assert.equal(await echoThrough(Number(String(listening.address).split(':').pop()), 'env'), 'env')
    run.child.kill('SIGINT')
    assert.equal(await run.exit, 0)

    const check = spawnCli(['check'], { KAPROXY_CONFIG: file, KAPROXY_LOG_LEVEL: 'warn' })
    t.after(check.kill)
    let out = ''
    check.child.stdout?.on('data', (chunk: Buffer) => { out += chunk.toString() })
    assert.equal(await check.exit, 0)
    assert.match(out, /log level warn; admin disabled/)
  })

  it('exits 1 naming the route when its address is taken', async (t) => {
    const taken = await startEchoServer()
    t.after(taken.close)
    const run = spawnCli(['--name', 'busy', '--listen', taken.address, '--upstream', taken.address])
    t.after(run.kill)
    assert.equal(await run.exit, 1)
    assert.match(run.stderr(), /route busy: cannot listen on 127\.0\.0\.1:\d+: EADDRINUSE/)
  })
})
