// Scenario 1: a plain connection across the NAT, idle 3x the conntrack timeout, then data: it breaks.
// This proves the lab is real: without it, the kaproxy scenarios would prove nothing.
import assert from 'node:assert/strict'
import { before, describe, it } from 'node:test'
import { labGate } from './netlab/gate.js'
import { assertBroke, describePath, idleAcrossNat } from './netlab/idle-across-nat.js'
import { figure, itLeavesNothingBehind, newLab } from './netlab/suite.js'

const CONNTRACK_SEC = 3
const gate = await labGate({ needKaproxy: false })

describe('NAT lab baseline', { skip: gate.skip }, () => {
  before(() => { gate.check() })

  it('a plain connection idle 3x the conntrack timeout breaks', { timeout: 60_000 }, async (t) => {
    const lab = await newLab(t, { conntrackEstablishedSec: CONNTRACK_SEC })
    const r = await idleAcrossNat(lab, [{ kind: 'direct' }], { idleMs: 3 * CONNTRACK_SEC * 1000, replyWaitMs: 3_000 })
    const p = r.paths[0]
    assert.ok(p !== undefined)
    figure(`baseline: ${describePath(r, p)}`)
    assertBroke(r, p)
  })

  itLeavesNothingBehind()
})
