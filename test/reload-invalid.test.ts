import assert from 'node:assert/strict'
import { once } from 'node:events'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, it } from 'node:test'
import { connect, startEchoServer } from './helpers/peers.js'
import { startProxy, startProxyFromFile } from './helpers/proxy.js'

function tempDir (t: { after: (fn: () => void) => void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'kaproxy-reload-'))
  t.after(() => { rmSync(dir, { recursive: true, force: true }) })
  return dir
}

async function roundTrip (socket: import('node:net').Socket, text: string): Promise<string> {
  socket.write(text)
  const [chunk] = await once(socket, 'data') as [Buffer]
  return chunk.toString()
}

describe('an invalid reload', () => {
  it('changes nothing: the issues are reported by path, logged and counted, and the old config keeps serving', async (t) => {
    const upstream = await startEchoServer()
    t.after(upstream.close)
    const file = join(tempDir(t), 'kaproxy.yaml')
    const good = `admin: { listen: "" }\nroutes:\n  - { name: a, listen: "127.0.0.1:0", upstream: "${upstream.address}" }\n  - { name: b, listen: "127.0.0.1:0", upstream: "${upstream.address}" }\n`
    writeFileSync(file, good)
    const proxy = await startProxyFromFile(file)
    t.after(proxy.close)
    const before = proxy.kaproxy.config
    const portB = proxy.port('b')
    const live = await connect(proxy.port('a'))
    t.after(() => live.destroy())
    assert.equal(await roundTrip(live, 'before'), 'before')

    writeFileSync(file, `admin: { listen: "" }\nroutes:\n  - { name: a, listen: "127.0.0.1:0", upstream: "${upstream.address}", keepalive: { upstream: { count: 0 } } }\n` +
      `  - { name: c, listen: "127.0.0.1:0", upstream: "${upstream.address}", drainTimeout: forever, keepalive: { applyToExisting: yes } }\n`)
    const result = await proxy.kaproxy.reload({ trigger: 'test' })
    assert.equal(result.ok, false)
    assert.equal(result.changes, null)
    assert.equal(result.error?.code, 'KAPROXY_ERR_CONFIG')
    assert.deepEqual(result.error?.issues.map((issue) => `${issue.path}: ${issue.message}`), [
      'routes[0].keepalive.upstream.count: must be an integer 1..127 (got 0)',
      'routes[1].drainTimeout: must be a duration 0ms..1h (e.g. 30s; 0 closes at once) (got "forever")',
      'routes[1].keepalive.applyToExisting: must be true or false (got "yes")'
    ])
    const line = await proxy.log.waitFor({ event: 'reload', ok: false })
    assert.equal(line.level, 50, 'logged as an error')
    assert.match(String(line.msg), /configuration unchanged: invalid configuration in .*kaproxy\.yaml:\n {2}routes\[0\]\.keepalive\.upstream\.count: must be an integer 1\.\.127 \(got 0\)/)
    assert.deepEqual(proxy.kaproxy.reloads, { ok: 0, failed: 1 })

    assert.equal(proxy.kaproxy.config, before, 'the config in force is the old one')
    assert.equal(proxy.port('b'), portB, 'the route the bad file dropped still listens')
    assert.equal(proxy.kaproxy.engine.address('c'), null, 'the route the bad file added does not')
    assert.equal(await roundTrip(live, 'after'), 'after', 'the live connection was not touched')

    writeFileSync(file, 'routes: [\n')
    const unparsable = await proxy.kaproxy.reload({ trigger: 'test' })
    assert.match(unparsable.error?.message ?? '', /cannot parse .*kaproxy\.yaml/)
    assert.deepEqual(proxy.kaproxy.reloads, { ok: 0, failed: 2 })
    assert.equal(proxy.port('b'), portB)
  })

  it('changes nothing when a new listen address cannot be bound', async (t) => {
    const upstream = await startEchoServer()
    t.after(upstream.close)
    const taken = await startEchoServer()
    t.after(taken.close)
    const proxy = await startProxy({ routes: [{ name: 'a', listen: '127.0.0.1:0', upstream: upstream.address }] })
    t.after(proxy.close)
    const portA = proxy.port('a')
    const result = await proxy.reload({
      routes: [
        { name: 'fresh', listen: '127.0.0.1:0', upstream: upstream.address },
        { name: 'busy', listen: taken.address, upstream: upstream.address }
      ]
    })
    assert.equal(result.ok, false)
    assert.equal(result.error?.code, 'KAPROXY_ERR_LISTEN')
    assert.match(result.error?.message ?? '', /route busy: cannot listen on 127\.0\.0\.1:\d+: EADDRINUSE/)
    assert.equal(proxy.port('a'), portA, 'the route the new config drops still listens')
    assert.equal(proxy.kaproxy.engine.address('fresh'), null, 'a route bound before the failure was closed again')
    assert.deepEqual(proxy.kaproxy.reloads, { ok: 0, failed: 1 })
  })
})
