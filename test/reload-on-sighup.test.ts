import assert from 'node:assert/strict'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, it } from 'node:test'
import { connect, startEchoServer, echoThrough } from './helpers/peers.js'
import { spawnCli } from './helpers/proxy.js'


describe('the kaproxy command on SIGHUP', () => {
  it('reloads the config file (with reload.watch off, SIGHUP is the only trigger) and keeps running', async (t) => {
    const upstream = await startEchoServer()
    t.after(upstream.close)
    const dir = mkdtempSync(join(tmpdir(), 'kaproxy-hup-'))
    t.after(() => { rmSync(dir, { recursive: true, force: true }) })
    const file = join(dir, 'kaproxy.yaml')
    const config = (routes: string[]): string => `admin: { listen: "" }\nreload: { watch: false }\nroutes:\n` +
      routes.map((name) => `  - { name: ${name}, listen: "127.0.0.1:0", upstream: "${upstream.address}" }\n`).join('')
    writeFileSync(file, config(['first']))
    const run = spawnCli(['--config', file])
    t.after(run.kill)
    await run.stdout.waitFor({ event: 'ready' })
    assert.equal(run.stdout.find({ event: 'config-watch' }).length, 0, 'no file watch with reload.watch: false')

    writeFileSync(file, config(['first', 'second']))
    run.child.kill('SIGHUP')
    const reload = await run.stdout.waitFor({ event: 'reload', trigger: 'SIGHUP' })
    assert.equal(reload.ok, true)
    assert.deepEqual(reload.added, ['second'])
    assert.deepEqual(reload.unchanged, ['first'])
    const listening = await run.stdout.waitFor({ event: 'listening', route: 'second' })
    assert.equal(await echoThrough(Number(String(listening.address).split(':').pop()), 'after SIGHUP'), 'after SIGHUP')

    writeFileSync(file, 'routes: [\n')
    run.child.kill('SIGHUP')
    const rejected = await run.stdout.waitUntil((line) => line.event === 'reload' && line.ok === false)
    assert.match(String(rejected.msg), /cannot parse .*kaproxy\.yaml/)
    assert.equal(run.child.exitCode, null, 'still running after a rejected reload')
    run.child.kill('SIGTERM')
    assert.equal(await run.exit, 0)
  })
})
