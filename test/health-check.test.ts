import assert from 'node:assert/strict'
import { once } from 'node:events'
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import { describe, it } from 'node:test'
import { connect, startEchoServer } from './helpers/peers.js'
import { startProxy } from './helpers/proxy.js'

/** A real node:http upstream whose /healthz answers with `status()`. */
async function httpUpstream (t: { after: (fn: () => void) => void }, status: () => number): Promise<string> {
  const server = http.createServer((req, res) => {
    res.statusCode = req.url === '/healthz' ? status() : 404
    res.end()
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.after(() => { server.close(); server.closeAllConnections() })
  return `127.0.0.1:${(server.address() as AddressInfo).port}`
}

describe('active health checks', () => {
  it('take an upstream down when its HTTP check fails and bring it back after rise passes', async (t) => {
    let flakyStatus = 200
    const healthy = await httpUpstream(t, () => 200)
    const flaky = await httpUpstream(t, () => flakyStatus)
    const proxy = await startProxy({
      routes: [{ name: 'checked', listen: '127.0.0.1:0', upstream: [healthy, flaky], healthCheck: { type: 'http', path: '/healthz', interval: '100ms', timeout: '80ms', rise: 2, fall: 2 } }]
    })
    t.after(proxy.close)
    const state = (): string | undefined => proxy.kaproxy.engine.upstreams('checked').find((u) => u.target.label === flaky)?.state

    assert.equal(state(), 'up')
    flakyStatus = 503
    const down = await proxy.log.waitFor({ event: 'upstream-state', route: 'checked', upstream: flaky, state: 'down' })
    assert.match(String(down.reason), /2 consecutive health checks failed \(last: HTTP 503, expected 200\)/)
    // While it is down, every connection goes to the healthy target.
    for (let i = 0; i < 4; i++) {
      const client = await connect(proxy.port('checked'))
      await proxy.log.waitForCount({ event: 'open', route: 'checked' }, i + 1)
      client.destroy()
    }
    assert.ok(proxy.log.find({ event: 'open', route: 'checked' }).every((line) => line.upstream === healthy))

    flakyStatus = 200
    const up = await proxy.log.waitFor({ event: 'upstream-state', route: 'checked', upstream: flaky, state: 'up' })
    assert.match(String(up.reason), /2 consecutive health checks passed/)
    assert.equal(state(), 'up')
    assert.equal(proxy.log.find({ event: 'upstream-state', route: 'checked', upstream: healthy }).length, 0, 'the healthy target never flapped')
  })

  it('take an upstream down when its TCP check is refused', async (t) => {
    const echo = await startEchoServer()
    const proxy = await startProxy({
      routes: [{ name: 'tcpcheck', listen: '127.0.0.1:0', upstream: [echo.address], healthCheck: { type: 'tcp', interval: '100ms', timeout: '80ms', rise: 1, fall: 1 } }]
    })
    t.after(proxy.close)
    await echo.close()
    const down = await proxy.log.waitFor({ event: 'upstream-state', route: 'tcpcheck', state: 'down' })
    assert.match(String(down.reason), /ECONNREFUSED/)
    // With every target down the client is closed with no-upstream, without a dial.
    const client = await connect(proxy.port('tcpcheck'))
    client.resume()
    const close = await proxy.log.waitFor({ event: 'close', route: 'tcpcheck' })
    assert.equal(close.reason, 'no-upstream')
    assert.equal(proxy.log.find({ event: 'dial-failed', route: 'tcpcheck' }).length, 0)
    client.destroy()
  })
})
