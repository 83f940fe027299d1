import assert from 'node:assert/strict'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, it } from 'node:test'
import { request } from 'undici'
import { connect, startEchoServer } from './helpers/peers.js'
import { startProxyFromFile } from './helpers/proxy.js'

describe('POST /reload on the admin API', () => {
  it('applies a changed file (200), rejects an invalid one with its issues (422) and keeps serving, and refuses GET (405)', async (t) => {
    const echo = await startEchoServer()
    t.after(echo.close)
    const dir = mkdtempSync(join(tmpdir(), 'kaproxy-admin-reload-'))
    t.after(() => { rmSync(dir, { recursive: true, force: true }) })
    const file = join(dir, 'kaproxy.yaml')
    const config = (routes: string): string => `admin: { listen: "127.0.0.1:0", token: "s3cret" }\nreload: { watch: false }\nroutes:\n${routes}`
    writeFileSync(file, config(`  - { name: one, listen: "127.0.0.1:0", upstream: "${echo.address}" }\n`))
    const proxy = await startProxyFromFile(file)
    t.after(proxy.close)
    const admin = `http://${String(proxy.kaproxy.admin?.address)}`
    const post = async (token = 's3cret') => await request(`${admin}/reload`, { method: 'POST', headers: { authorization: `Bearer ${token}` } })

    const live = await connect(proxy.port('one'))
    t.after(() => live.destroy())
    await proxy.log.waitFor({ event: 'open', route: 'one' })

    assert.equal((await post('wrong')).statusCode, 401)
    const get = await request(`${admin}/reload`, { headers: { authorization: 'Bearer s3cret' } })
    assert.equal(get.statusCode, 405)
    assert.equal(get.headers.allow, 'POST')
    await get.body.dump()

    writeFileSync(file, config(`  - { name: one, listen: "127.0.0.1:0", upstream: "${echo.address}" }\n  - { name: two, listen: "127.0.0.1:0", upstream: "${echo.address}" }\n`))
    const applied = await post()
    assert.equal(applied.statusCode, 200)
    const body = await applied.body.json() as { ok: boolean, changes: { added: string[], unchanged: string[] } }
    assert.equal(body.ok, true)
    assert.deepEqual(body.changes.added, ['two'])
    assert.deepEqual(body.changes.unchanged, ['one'])
    assert.ok(proxy.port('two') > 0)

    writeFileSync(file, config('  - { name: one, listen: "127.0.0.1:0", upstream: "nowhere" }\n'))
    const rejected = await post()
    assert.equal(rejected.statusCode, 422)
    const error = await rejected.body.json() as { ok: boolean, error: { code: string, issues: Array<{ path: string }> } }
    assert.equal(error.error.code, 'KAPROXY_ERR_CONFIG')
    assert.equal(error.error.issues[0]?.path, 'routes[0].upstream')
    assert.ok(proxy.port('two') > 0, 'the old configuration keeps serving')
    assert.equal(live.destroyed, false, 'a live connection on an unchanged route is untouched')
    const metrics = await request(`${admin}/metrics`, { headers: { authorization: 'Bearer s3cret' } })
    const text = await metrics.body.text()
    assert.match(text, /kaproxy_config_reloads_total\{result="ok"\} 1/)
    assert.match(text, /kaproxy_config_reloads_total\{result="failed"\} 1/)
  })
})
