import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { it } from 'node:test'
import { promisify } from 'node:util'
import type { Side } from '../src/config/types.js'
import { readKeepaliveFd } from '../src/keepalive.js'
import { connect, startEchoServer } from './helpers/peers.js'
import { startProxy, type RunningProxy } from './helpers/proxy.js'
import { describeEachEngine } from './helpers/engines.js'

const run = promisify(execFile)

function portOf (address: string | null): number {
  return Number(address?.slice(address.lastIndexOf(':') + 1))
}

async function liveConnection (proxy: RunningProxy, route: string) {
  const client = await connect(proxy.port(route))
  await proxy.log.waitFor({ event: 'open', route })
  const connection = [...proxy.kaproxy.engine.connections(route)][0]
  assert.ok(connection !== undefined, `a live connection on ${route}`)
  const socket = (side: Side) => {
    const endpoint = connection.endpoint(side)
    assert.ok(endpoint !== null && endpoint.fd >= 0, `${side} has a descriptor`)
    return endpoint
  }
  return { client, connection, socket }
}

describeEachEngine('keepalive is applied per route and side and read back from the kernel', () => {
  it('two routes with different settings read back exactly what was configured, on both sides', async (t) => {
    const upstream = await startEchoServer()
    t.after(upstream.close)
    const proxy = await startProxy({
      defaults: { keepalive: { idle: '45s', interval: '9s', count: 5 } },
      routes: [
        {
          name: 'alpha',
          listen: '127.0.0.1:0',
          upstream: upstream.address,
          keepalive: { client: { idle: '30s', interval: '5s', count: 4, userTimeout: '50s' }, upstream: { idle: '2m', interval: '15s', count: 8 } }
        },
        {
          name: 'beta',
          listen: '127.0.0.1:0',
          upstream: upstream.address,
          keepalive: { client: { idle: 7, interval: 3 }, upstream: { enabled: false, userTimeout: '1500ms' } }
        }
      ]
    })
    t.after(proxy.close)

    const alpha = await liveConnection(proxy, 'alpha')
    t.after(() => alpha.client.destroy())
    assert.deepEqual(readKeepaliveFd(alpha.socket('client').fd), { enabled: true, idleSec: 30, intervalSec: 5, count: 4, userTimeoutMs: 50_000 })
    // userTimeout not configured: the kernel default (0) is left alone.
    assert.deepEqual(readKeepaliveFd(alpha.socket('upstream').fd), { enabled: true, idleSec: 120, intervalSec: 15, count: 8, userTimeoutMs: 0 })

    const beta = await liveConnection(proxy, 'beta')
    t.after(() => beta.client.destroy())
    // count comes from defaults.keepalive, merged under the side's own values.
    assert.deepEqual(readKeepaliveFd(beta.socket('client').fd), { enabled: true, idleSec: 7, intervalSec: 3, count: 5, userTimeoutMs: 0 })
    const betaUpstream = readKeepaliveFd(beta.socket('upstream').fd)
    assert.equal(betaUpstream.enabled, false, 'enabled: false reads back SO_KEEPALIVE 0')
    assert.equal(betaUpstream.userTimeoutMs, 1500)
  })

  it('ss -tnoi shows a keepalive timer on both proxied sockets, counting down from each side\'s idle', async (t) => {
    const upstream = await startEchoServer()
    t.after(upstream.close)
    const proxy = await startProxy({
      routes: [{ name: 'timers', listen: '127.0.0.1:0', upstream: upstream.address, keepalive: { client: { idle: '40s' }, upstream: { idle: '3m' } } }]
    })
    t.after(proxy.close)
    const { client, socket } = await liveConnection(proxy, 'timers')
    t.after(() => client.destroy())

    const clientSide = socket('client')
    const upstreamSide = socket('upstream')
    // Filter on both ports of each socket: a port-only filter can match unrelated sockets.
    const ss = async (local: number | undefined, remote: number | undefined): Promise<string> => {
      const { stdout } = await run('ss', ['-tnoi', 'state', 'established', `( sport = :${String(local)} and dport = :${String(remote)} )`])
      return stdout
    }
    const clientLine = await ss(portOf(clientSide.local), portOf(clientSide.remote))
    const upstreamLine = await ss(portOf(upstreamSide.local), portOf(upstreamSide.remote))
    const timer = /timer:\(keepalive,(?:(\d+)min)?(\d+)sec,0\)/
    const clientTimer = timer.exec(clientLine)
    const upstreamTimer = timer.exec(upstreamLine)
    assert.ok(clientTimer !== null, `client side shows a keepalive timer:\n${clientLine}`)
    assert.ok(upstreamTimer !== null, `upstream side shows a keepalive timer:\n${upstreamLine}`)
    const seconds = (m: RegExpExecArray): number => Number(m[1] ?? 0) * 60 + Number(m[2])
    assert.ok(seconds(clientTimer) <= 40 && seconds(clientTimer) >= 35, `client timer ${seconds(clientTimer)}s counts down from idle 40s`)
    assert.ok(seconds(upstreamTimer) <= 180 && seconds(upstreamTimer) >= 175, `upstream timer ${seconds(upstreamTimer)}s counts down from idle 3m`)
  })

  it('--no-keepalive style routes leave SO_KEEPALIVE off on both sides', async (t) => {
    const upstream = await startEchoServer()
    t.after(upstream.close)
    const proxy = await startProxy({
      defaults: { keepalive: { enabled: false } },
      routes: [{ name: 'off', listen: '127.0.0.1:0', upstream: upstream.address }]
    })
    t.after(proxy.close)
    const { client, socket } = await liveConnection(proxy, 'off')
    t.after(() => client.destroy())
    assert.equal(readKeepaliveFd(socket('client').fd).enabled, false)
    assert.equal(readKeepaliveFd(socket('upstream').fd).enabled, false)
  })
})
