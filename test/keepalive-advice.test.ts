import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import fc from 'fast-check'
import { adviseSide, clusterWidthSec, tightestCluster } from '../src/budget/advice.js'
import type { KeepaliveSettings } from '../src/keepalive.js'

const off: KeepaliveSettings = { enabled: false, idleSec: 60, intervalSec: 10, count: 6 }
const idle600: KeepaliveSettings = { enabled: true, idleSec: 600, intervalSec: 10, count: 3 }

describe('advice from the silences before resets', () => {
  it('finds the tightest cluster and ignores stray resets', () => {
    assert.deepEqual(tightestCluster([30, 351.6, 1000, 348.2, 350, 7200]), { count: 3, minSec: 348.2, maxSec: 351.6, medianSec: 350 })
    assert.deepEqual(tightestCluster([8.03]), { count: 1, minSec: 8.03, maxSec: 8.03, medianSec: 8.03 })
    // On a tie in count, the narrower window wins, then the shorter silences.
    assert.deepEqual(tightestCluster([100, 104, 240, 241]), { count: 2, minSec: 240, maxSec: 241, medianSec: 240.5 })
    assert.deepEqual(tightestCluster([10, 11, 500, 501]), { count: 2, minSec: 10, maxSec: 11, medianSec: 10.5 })
    assert.equal(tightestCluster([]), null)
    assert.equal(tightestCluster([Number.NaN, -1, Number.POSITIVE_INFINITY]), null)
  })

  it('says which idle beats a middlebox that drops flows near 350 s, and names the presets with that default', () => {
    const advice = adviseSide({ route: 'db', side: 'upstream', silencesSec: [348.2, 350, 351.6, 30], keepalive: idle600 })
    assert.ok(advice !== null)
    assert.equal(advice.kind, 'idle-timeout')
    assert.equal(advice.nearSec, 350)
    assert.deepEqual(advice.matches, ['aws-nlb', 'aws-nat-gateway', 'aws-gwlb'])
    assert.equal(advice.idleBelowSec, 348)
    assert.equal(advice.suggestedIdleSec, 174)
    assert.equal(advice.sentence,
      '3 upstream connections were reset after 348–352 s of silence: a middlebox drops idle flows near 350 s ' +
      '(the default of aws-nlb, aws-nat-gateway, aws-gwlb); keepalive.upstream.idle is 600s: set it below 348s, e.g. idle: 174s')
  })

  it('prefers a middlebox declared on the side when it matches', () => {
    const advice = adviseSide({
      route: 'web',
      side: 'client',
      silencesSec: [239, 241],
      keepalive: { ...idle600, idleSec: 300 },
      middleboxes: [{ name: 'azure-lb', idleTimeoutSec: 240, preset: true }, { name: 'corp-fw', idleTimeoutSec: 3600, preset: false }]
    })
    assert.equal(advice?.sentence,
      '2 client connections were reset after 239–241 s of silence: a middlebox drops idle flows near 240 s (azure-lb, declared on this side); ' +
      'keepalive.client.idle is 300s: set it below 239s, e.g. idle: 119s')
  })

  it('with keepalive off, says to enable it below the silence (one 8 s reset: idle 4s)', () => {
    const advice = adviseSide({ route: 'nat', side: 'upstream', silencesSec: [8.03], keepalive: off })
    assert.equal(advice?.sentence,
      '1 upstream connection was reset after 8 s of silence: a middlebox drops idle flows near 8 s; keepalive.upstream is off: enable it with idle below 8s, e.g. idle: 4s')
    assert.equal(advice?.suggestedIdleSec, 4)
  })

  it('resets when probing began mean the flow was gone before the first probe: go below the current idle', () => {
    const advice = adviseSide({ route: 'db', side: 'upstream', silencesSec: [600, 610, 630], keepalive: idle600 })
    assert.equal(advice?.kind, 'before-first-probe')
    assert.equal(advice?.idleBelowSec, 600)
    assert.equal(advice?.sentence,
      '3 upstream connections were reset after 600–630 s of silence, when keepalive probing began: a middlebox dropped these flows before the first probe; ' +
      'keepalive.upstream.idle is 600s: set it below 600s, e.g. idle: 300s')
  })

  it('resets after keepalive\'s detection time are not an idle timeout keepalive can fix', () => {
    const advice = adviseSide({ route: 'db', side: 'client', silencesSec: [900, 905], keepalive: idle600 })
    assert.equal(advice?.kind, 'not-idle-related')
    assert.equal(advice?.idleBelowSec, null)
    assert.equal(advice?.suggestedIdleSec, null)
    assert.match(advice?.sentence ?? '', /longer than keepalive\.client allows a silent flow to live \(630s\): the probes were answered/)
  })

  it('says nothing without evidence, or with less than minCount in the cluster', () => {
    assert.equal(adviseSide({ route: 'db', side: 'client', silencesSec: [], keepalive: off }), null)
    assert.equal(adviseSide({ route: 'db', side: 'client', silencesSec: [350, 10], keepalive: off, minCount: 2 }), null)
    assert.notEqual(adviseSide({ route: 'db', side: 'client', silencesSec: [350, 351], keepalive: off, minCount: 2 }), null)
  })

  it('cannot suggest an idle below keepalive\'s 1 s floor', () => {
    const advice = adviseSide({ route: 'db', side: 'client', silencesSec: [1.2], keepalive: off })
    assert.equal(advice?.suggestedIdleSec, null)
    assert.match(advice?.sentence ?? '', /keepalive cannot probe more often than every 1s/)
  })

  it('properties: the cluster is the fullest window, and a suggestion is a valid idle below the bound', () => {
    const silences = fc.array(fc.double({ min: 0, max: 100_000, noNaN: true }), { minLength: 1, maxLength: 40 })
    fc.assert(fc.property(silences, fc.boolean(), fc.integer({ min: 1, max: 32767 }), (values, enabled, idleSec) => {
      const cluster = tightestCluster(values)
      assert.ok(cluster !== null)
      assert.ok(cluster.maxSec - cluster.minSec <= clusterWidthSec(cluster.minSec))
      assert.ok(cluster.medianSec >= cluster.minSec && cluster.medianSec <= cluster.maxSec)
      for (const start of values) {
        const inWindow = values.filter((v) => v >= start && v <= start + clusterWidthSec(start)).length
        assert.ok(inWindow <= cluster.count, `window at ${start} holds ${inWindow} > ${cluster.count}`)
      }
      const advice = adviseSide({ route: 'r', side: 'upstream', silencesSec: values, keepalive: { enabled, idleSec, intervalSec: 10, count: 3 } })
      assert.ok(advice !== null)
      if (advice.suggestedIdleSec !== null) {
        assert.ok(advice.idleBelowSec !== null)
        assert.ok(Number.isInteger(advice.suggestedIdleSec) && advice.suggestedIdleSec >= 1 && advice.suggestedIdleSec <= 32767)
        assert.ok(advice.suggestedIdleSec < advice.idleBelowSec)
        assert.ok(advice.idleBelowSec <= Math.floor(cluster.minSec) || (enabled && advice.idleBelowSec === idleSec))
        assert.ok(advice.sentence.includes(`e.g. idle: ${advice.suggestedIdleSec}s`))
      }
      assert.ok(advice.sentence.startsWith(`${cluster.count} upstream connection`))
    }))
  })
})
