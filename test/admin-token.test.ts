import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { buildConfig } from '../src/config/load.js'
import { ConfigError } from '../src/errors.js'
import { adminAddress, adminClient } from './helpers/admin.js'
import { startEchoServer } from './helpers/peers.js'
import { spawnCli, startProxy } from './helpers/proxy.js'

const TOKEN = 's3cret-Token_for.tests~1'
const PROTECTED = ['/metrics', '/routes', '/connections', '/stats']

function issues (raw: Record<string, unknown>, env: NodeJS.ProcessEnv = {}): string[] {
  try {
    buildConfig({ routes: [{ name: 'a', listen: '127.0.0.1:0', upstream: '127.0.0.1:1' }], ...raw }, { env })
    return []
  } catch (err) {
    assert.ok(err instanceof ConfigError)
    return err.issues.map((i) => `${i.path}: ${i.message}`)
  }
}

describe('admin token', () => {
  it('is required to listen anywhere but loopback, and must be a bearer token', () => {
    const required = 'admin.token: required when admin.listen is not a loopback address (admin.listen is 0.0.0.0:9901): set admin.token or KAPROXY_ADMIN_TOKEN, or listen on 127.0.0.1'
    assert.deepEqual(issues({ admin: { listen: '0.0.0.0:9901' } }), [required])
    assert.deepEqual(issues({ admin: { listen: '[::]:9901' } }), [required.replace('0.0.0.0:9901', '[::]:9901')])
    assert.deepEqual(issues({ admin: { listen: 'admin.example:9901' } }), [required.replace('0.0.0.0:9901', 'admin.example:9901')])
    assert.deepEqual(issues({ admin: { listen: '0.0.0.0:9901', token: TOKEN } }), [])
    assert.deepEqual(issues({ admin: { listen: '0.0.0.0:9901' } }, { KAPROXY_ADMIN_TOKEN: TOKEN }), [], 'the token may come from the environment')
    for (const loopback of ['127.0.0.1:9901', '127.1.2.3:9901', '[::1]:9901', 'localhost:9901']) {
      assert.deepEqual(issues({ admin: { listen: loopback } }), [], `${loopback} needs no token`)
    }
    // The token is a secret: the message never shows it.
    assert.deepEqual(issues({ admin: { listen: '127.0.0.1:9901', token: 'has space' } }), ['admin.token: must be a bearer token: letters, digits and -._~+/ (optionally ending in =)'])
  })

  it('kaproxy refuses to start on a non-loopback admin address without a token, and says why', async (t) => {
    const echo = await startEchoServer()
    t.after(echo.close)
    const run = spawnCli(['--listen', '127.0.0.1:0', '--upstream', echo.address, '--admin-listen', '0.0.0.0:0'])
    t.after(run.kill)
    assert.equal(await run.exit, 1)
    assert.match(run.stderr(), /admin\.token: required when admin\.listen is not a loopback address \(admin\.listen is 0\.0\.0\.0:0\)/)
    assert.equal(run.stdout.find({ event: 'listening' }).length, 0, 'nothing listens')
  })

  it('with a token, everything but /, /healthz and /readyz needs it, compared exactly', async (t) => {
    const echo = await startEchoServer()
    t.after(echo.close)
    // 0.0.0.0 is allowed with a token; the test still talks to it over loopback only.
    const proxy = await startProxy({ admin: { listen: '0.0.0.0:0', token: TOKEN }, routes: [{ name: 'hidden-route', listen: '127.0.0.1:0', upstream: echo.address }] })
    t.after(proxy.close)
    const port = adminAddress(proxy).split(':').pop() ?? ''
    const get = adminClient(t, `127.0.0.1:${port}`)

    for (const path of PROTECTED) {
      const missing = await get(path)
      assert.equal(missing.status, 401, `${path} without a token`)
      assert.equal(missing.headers['www-authenticate'], 'Bearer realm="kaproxy"')
      assert.equal(missing.json<{ error: { code: string } }>().error.code, 'KAPROXY_ERR_ADMIN_UNAUTHORIZED')
      for (const wrong of [`Bearer ${TOKEN}x`, `Bearer ${TOKEN.slice(0, -1)}`, 'Bearer ', `Basic ${TOKEN}`, TOKEN, `Bearer ${TOKEN.toUpperCase()}`]) {
        const refused = await get(path, { authorization: wrong })
        assert.equal(refused.status, 401, `${path} with ${JSON.stringify(wrong)}`)
      }
      assert.equal((await get(path, { authorization: `Bearer ${TOKEN}` })).status, 200, `${path} with the token`)
      assert.equal((await get(path, { authorization: `bearer  ${TOKEN}` })).status, 200, 'the scheme is case-insensitive')
    }
    const invalid = await get('/routes', { authorization: 'Bearer nope' })
    assert.equal(invalid.headers['www-authenticate'], 'Bearer realm="kaproxy", error="invalid_token"')

    assert.equal((await get('/healthz')).status, 200)
    assert.equal((await get('/readyz')).status, 200)
    // The page is a static shell with no data; it asks for the token and sends it on each fetch.
    const page = await get('/')
    assert.equal(page.status, 200)
    assert.match(page.text, /<title>kaproxy status<\/title>/)
    assert.doesNotMatch(page.text, /hidden-route|127\.0\.0\.1/, 'the page itself carries no route or peer')
  })

  it('on loopback a token is optional, but once set it is enforced the same way', async (t) => {
    const echo = await startEchoServer()
    t.after(echo.close)
    const open = await startProxy({ admin: { listen: '127.0.0.1:0' }, routes: [{ name: 'open', listen: '127.0.0.1:0', upstream: echo.address }] })
    t.after(open.close)
    const getOpen = adminClient(t, adminAddress(open))
    for (const path of PROTECTED) assert.equal((await getOpen(path)).status, 200, `${path} open on loopback without a token`)

    const locked = await startProxy({ admin: { listen: '127.0.0.1:0', token: TOKEN }, routes: [{ name: 'locked', listen: '127.0.0.1:0', upstream: echo.address }] })
    t.after(locked.close)
    const getLocked = adminClient(t, adminAddress(locked))
    for (const path of PROTECTED) {
      assert.equal((await getLocked(path)).status, 401, `${path} locked on loopback`)
      assert.equal((await getLocked(path, { authorization: `Bearer ${TOKEN}` })).status, 200)
    }
    assert.equal((await getLocked('/readyz')).status, 200)
  })
})
