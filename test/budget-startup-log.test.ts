import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { checkReport } from '../src/check.js'
import { startEchoServer } from './helpers/peers.js'
import { startProxy } from './helpers/proxy.js'

describe('the start-up log carries the keepalive budget', () => {
  it('logs the same warnings as check (level warn), notes at info, and each side\'s middleboxes in the route plan', async (t) => {
    const upstream = await startEchoServer()
    t.after(upstream.close)
    const proxy = await startProxy({
      routes: [
        {
          name: 'risky',
          listen: '127.0.0.1:0',
          upstream: upstream.address,
          keepalive: { client: { enabled: false, middleboxes: ['azure-lb'] }, upstream: { idle: '6m', middleboxes: ['aws-nlb'] } }
        },
        {
          name: 'tight',
          listen: '127.0.0.1:0',
          upstream: upstream.address,
          keepalive: { client: { idle: 'auto', interval: '30s', middleboxes: [{ name: 'corp-fw', idleTimeout: '50s' }] } }
        }
      ]
    })
    t.after(proxy.close)

    const warnings = proxy.log.find({ event: 'keepalive-budget', severity: 'warning' })
    assert.deepEqual(warnings.map((line) => line.msg), checkReport(proxy.config).warnings)
    assert.deepEqual(warnings.map((line) => [line.level, line.route, line.side, line.kind]), [
      [40, 'risky', 'client', 'keepalive-off'],
      [40, 'risky', 'upstream', 'idle-not-below-limit']
    ])
    const notes = proxy.log.find({ event: 'keepalive-budget', severity: 'note' })
    assert.deepEqual(notes.map((line) => [line.level, line.route, line.side, line.kind, line.msg]), [
      [30, 'tight', 'client', 'one-lost-probe', 'route tight, client: idle 25s + interval 30s = 55s reaches corp-fw (idle timeout 50s): if the first probe is lost, the flow is dropped before the next one']
    ])
    // Logged before the routes listen, next to the plan.
    const index = (line: Record<string, unknown> | undefined) => proxy.log.lines.indexOf(line ?? {})
    assert.ok(index(warnings[0]) < index(proxy.log.find({ event: 'listening' })[0]))

    const plan = await proxy.log.waitFor({ event: 'route', route: 'tight' })
    assert.deepEqual(plan.middleboxes, { client: [{ name: 'corp-fw', idleTimeoutSec: 50 }], upstream: [] })
    assert.deepEqual(plan.keepalive, { client: { enabled: true, idleSec: 25, intervalSec: 30, count: 6 }, upstream: { enabled: true, idleSec: 60, intervalSec: 10, count: 6 } })
  })
})
