// Scenario 2 and half of scenario 4. Fronting a legacy server: kaproxy beside the server, clients across the NAT.
// With client-side keepalive idle below the conntrack timeout the connection survives 3x that timeout
// of idle and the NAT's conntrack entry exists throughout; with client keepalive off it breaks like the baseline.
import assert from 'node:assert/strict'
import { before, it } from 'node:test'
import { labGate } from './netlab/gate.js'
import { assertBroke, assertSurvived, describePath, idleAcrossNat } from './netlab/idle-across-nat.js'
import { figure, itLeavesNothingBehind, newLab } from './netlab/suite.js'
import { describeEachEngine } from './helpers/engines.js'

const CONNTRACK_SEC = 3
const IDLE_MS = 3 * CONNTRACK_SEC * 1000
const gate = await labGate({ needKaproxy: true })

describeEachEngine('NAT lab: kaproxy fronting', { skip: gate.skip }, () => {
  before(() => { gate.check() })

  it('client keepalive 1s,1s,3 keeps the NAT mapping through 3x the conntrack timeout', { timeout: 60_000 }, async (t) => {
    const lab = await newLab(t, { conntrackEstablishedSec: CONNTRACK_SEC })
    const r = await idleAcrossNat(lab, [{ kind: 'fronting', keepalive: '1s,1s,3' }], { idleMs: IDLE_MS, replyWaitMs: 3_000 })
    const p = r.paths[0]
    assert.ok(p !== undefined)
    figure(`fronting: ${describePath(r, p)}`)
    assertSurvived(r, p)
  })

  it('client keepalive off: the same idle breaks the connection', { timeout: 60_000 }, async (t) => {
    const lab = await newLab(t, { conntrackEstablishedSec: CONNTRACK_SEC })
    const r = await idleAcrossNat(lab, [{ kind: 'fronting', keepalive: 'off' }], { idleMs: IDLE_MS, replyWaitMs: 3_000 })
    const p = r.paths[0]
    assert.ok(p !== undefined)
    figure(`fronting, keepalive off: ${describePath(r, p)}`)
    assertBroke(r, p)
  })

  itLeavesNothingBehind()
})
