// Learning a middlebox's idle timeout from its resets. The nat forgets flows after 5 s of silence and
// answers their later packets with a TCP reset (-p tcp REJECT --reject-with tcp-reset, as cloud load
// balancers do). kaproxy runs beside the client (sidecar) with two routes to the same server across
// the nat: `bare` without upstream keepalive is reset after an 8 s silence and the histogram records
// ~8 s; `kept` with upstream keepalive idle 2 s survives the same silence and records nothing; and
// `kaproxy advise`, run inside the namespace against kaproxy's admin API, names `bare` and an idle
// below 5 s.
import assert from 'node:assert/strict'
import { setTimeout as delay } from 'node:timers/promises'
import { before, it } from 'node:test'
import type { AdviseReport } from '../src/admin/advise-command.js'
import type { RouteView } from '../src/admin/views.js'
import { idleBeforeReset } from './helpers/idle-histogram.js'
import { labGate } from './netlab/gate.js'
import { Kaproxy, KAPROXY_CLI } from './netlab/kaproxy.js'
import { ADDR, type Lab } from './netlab/lab.js'
import { Client, EchoServer } from './netlab/peers.js'
import { figure, itLeavesNothingBehind, newLab, sec } from './netlab/suite.js'
import { describeEachEngine } from './helpers/engines.js'

const CONNTRACK_SEC = 5
const SILENCE_MS = 8_000
// Inside the client namespace nothing else listens: a fixed port is safe there and easy to find.
const ADMIN = '127.0.0.1:9901'
const gate = await labGate({ needKaproxy: true })

/** GET a path of kaproxy's admin API from inside the client namespace, with a small node script. */
async function adminGet (lab: Lab, path: string): Promise<string> {
  const script = `const r = await fetch(${JSON.stringify(`http://${ADMIN}${path}`)}); if (r.status !== 200) process.exit(2); process.stdout.write(await r.text())`
  const { stdout } = await lab.exec('client', process.execPath, ['--input-type=module', '-e', script])
  return stdout
}

describeEachEngine('NAT lab: learning the idle timeout from resets', { skip: gate.skip }, () => {
  before(() => { gate.check() })

  it(`a NAT that resets flows idle over ${CONNTRACK_SEC} s: the route without keepalive is reset after ${SILENCE_MS / 1000} s and advise says below ${CONNTRACK_SEC} s; keepalive idle 2 s survives`, { timeout: 60_000 }, async (t) => {
    const lab = await newLab(t, { conntrackEstablishedSec: CONNTRACK_SEC, invalid: 'reject' })
    await EchoServer.start(lab, 'server', ADDR.server, 7001)
    const upstream = `${ADDR.server}:7001`
    const kaproxy = await Kaproxy.startConfig(lab, 'client', {
      admin: { listen: ADMIN },
      routes: [
        { name: 'bare', listen: '127.0.0.1:7101', upstream, keepalive: { client: { enabled: false }, upstream: { enabled: false } } },
        { name: 'kept', listen: '127.0.0.1:7102', upstream, keepalive: { client: { enabled: false }, upstream: { idle: '2s', interval: '2s', count: 3 } } }
      ]
    }, { route: 'bare' })
    const bare = await Client.connect(lab, 'client', '127.0.0.1', 7101)
    const kept = await Client.connect(lab, 'client', '127.0.0.1', 7102)
    await bare.echo('warm-up', 3_000)
    await kept.echo('warm-up', 3_000)

    // The silence is what is under test: nothing to await but time.
    await delay(SILENCE_MS)
    const dropsBefore = await lab.invalidDrops()
    bare.send('after the silence')
    const keptEcho = await kept.echo('after the silence', 3_000)
    const bareClosed = await bare.closed(3_000)
    const log = await kaproxy.closed(3_000)
    const rejected = (await lab.invalidDrops()).forward - dropsBefore.forward

    const metrics = await adminGet(lab, '/metrics')
    const bareSeries = idleBeforeReset(metrics, 'bare', 'upstream')
    const keptSeries = idleBeforeReset(metrics, 'kept', 'upstream')
    const routes = (JSON.parse(await adminGet(lab, '/routes')) as { routes: RouteView[] }).routes
    const advise = await lab.exec('client', process.execPath, [KAPROXY_CLI, 'advise', '--admin', ADMIN])
    const report = JSON.parse((await lab.exec('client', process.execPath, [KAPROXY_CLI, 'advise', '--admin', ADMIN, '--json'])).stdout) as AdviseReport

    figure(`NAT resets flows idle over ${CONNTRACK_SEC} s (REJECT tcp-reset, ${rejected} packet(s) rejected): after ${sec(SILENCE_MS)} of silence ` +
      `bare (no upstream keepalive) closed with reason=${log.reason} side=${log.side} silenceBeforeResetMs=${String(log.raw.silenceBeforeResetMs)}, client saw ${bareClosed.code ?? 'no error'}; ` +
      `histogram bare/upstream count=${String(bareSeries?.count)} sum=${String(bareSeries?.sum.toFixed(3))} s; ` +
      `kept (upstream keepalive 2s,2s,3) echoed in ${keptEcho.rttMs.toFixed(1)} ms, histogram count=${String(keptSeries?.count)}`)
    figure(`kaproxy advise: ${advise.stdout.trim()}`)

    assert.equal(log.route, 'bare')
    assert.equal(log.reason, 'upstream-reset')
    assert.equal(log.side, 'upstream')
    assert.equal(bareClosed.code, 'ECONNRESET', 'kaproxy passed the reset on to its client')
    assert.ok(rejected > 0, 'the nat rejected the late packet')
    assert.ok(bareSeries !== undefined && bareSeries.count === 1, 'one silence recorded on bare/upstream')
    assert.ok(bareSeries.sum >= SILENCE_MS / 1000 - 0.1 && bareSeries.sum < SILENCE_MS / 1000 + 1.5, `~8 s recorded: ${bareSeries.sum} s`)
    assert.equal(bareSeries.buckets['5'], 0)
    assert.equal(bareSeries.buckets['10'], 1)
    assert.equal(keptSeries?.count, 0, 'the route with keepalive recorded nothing')
    assert.equal(idleBeforeReset(metrics, 'bare', 'client')?.count, 0)
    assert.deepEqual(kaproxy.closes().filter((c) => c.route === 'kept'), [], 'kept closed nothing')

    const bareView = routes.find((r) => r.name === 'bare')
    assert.equal(bareView?.resets.upstream.count, 1)
    assert.equal(bareView?.resets.upstream.cluster?.count, 1)
    assert.equal(routes.find((r) => r.name === 'kept')?.resets.upstream.count, 0)

    assert.equal(report.advice.length, 1, 'advice for bare/upstream only')
    const advice = report.advice[0]
    assert.equal(advice?.route, 'bare')
    assert.equal(advice?.side, 'upstream')
    assert.ok(advice?.suggestedIdleSec !== null && advice?.suggestedIdleSec !== undefined && advice.suggestedIdleSec < CONNTRACK_SEC,
      `a suggested idle below ${CONNTRACK_SEC} s: ${String(advice?.suggestedIdleSec)}`)
    assert.match(advice.sentence, /^1 upstream connection was reset after 8 s of silence: /)
    assert.match(advise.stdout, new RegExp(`^route bare: .*keepalive\\.upstream is off: enable it with idle below 8s, e\\.g\\. idle: ${advice.suggestedIdleSec}s\\n$`))
    assert.doesNotMatch(advise.stdout, /route kept/)
  })

  itLeavesNothingBehind()
})
