// Scenario 1: a plain connection across the NAT, idle 3x the conntrack timeout, then data: it breaks.
// This proves the lab is real: without it, the kaproxy scenarios would prove nothing.
import assert from 'node:assert/strict'
import { before, describe, it } from 'node:test'
import { labGate } from './netlab/gate.js'
import { describePath, idleAcrossNat } from './netlab/idle-across-nat.js'
import { figure, itLeavesNothingBehind, newLab } from './netlab/suite.js'

const gate = await labGate({ needKaproxy: false })

describe('NAT lab baseline', { skip: gate.skip }, () => {
  before(() => { gate.check() })

  it('a plain connection idle 3x the conntrack timeout breaks', { timeout: 60_000 }, async (t) => {
    const lab = await newLab(t, { conntrackEstablishedSec: 3 })
    const r = await idleAcrossNat(lab, [{ kind: 'direct' }], { idleMs: 3 * 3_000, replyWaitMs: 3_000 })
    const p = r.paths[0]
    assert.ok(p !== undefined)
    figure(`baseline: ${describePath(r, p)}`)
    assert.ok(p.warmRttMs < 1_000, 'the connection worked before the idle')
    assert.equal(p.rttAfterIdleMs, undefined, 'the echo after the idle must not come back')
    assert.equal(p.serverBytesAfterIdle, 0, 'the server must not receive the data sent after the idle')
    assert.ok(p.entryGoneAtMs !== undefined, 'the conntrack entry expired during the idle')
    assert.ok(r.invalidDropsDuringSend > 0, 'the NAT dropped the late packets as INVALID')
  })

  itLeavesNothingBehind()
})
