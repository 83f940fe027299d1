// Scenario 3 and half of scenario 4. Sidecar: kaproxy beside the client, the upstream across the NAT.
// With upstream-side keepalive idle below the conntrack timeout the connection survives 3x that timeout
// of idle and the NAT's conntrack entry exists throughout; with upstream keepalive off it breaks like the baseline.
import assert from 'node:assert/strict'
import { before, describe, it } from 'node:test'
import { labGate } from './netlab/gate.js'
import { assertBroke, assertSurvived, describePath, idleAcrossNat } from './netlab/idle-across-nat.js'
import { figure, itLeavesNothingBehind, newLab } from './netlab/suite.js'

const CONNTRACK_SEC = 3
const IDLE_MS = 3 * CONNTRACK_SEC * 1000
const gate = await labGate({ needKaproxy: true })

describe('NAT lab: kaproxy sidecar', { skip: gate.skip }, () => {
  before(() => { gate.check() })

  it('upstream keepalive 1s,1s,3 keeps the NAT mapping through 3x the conntrack timeout', { timeout: 60_000 }, async (t) => {
    const lab = await newLab(t, { conntrackEstablishedSec: CONNTRACK_SEC })
    const r = await idleAcrossNat(lab, [{ kind: 'sidecar', keepalive: '1s,1s,3' }], { idleMs: IDLE_MS, replyWaitMs: 3_000 })
    const p = r.paths[0]
    assert.ok(p !== undefined)
    figure(`sidecar: ${describePath(r, p)}`)
    assertSurvived(r, p)
  })

  it('upstream keepalive off: the same idle breaks the connection', { timeout: 60_000 }, async (t) => {
    const lab = await newLab(t, { conntrackEstablishedSec: CONNTRACK_SEC })
    const r = await idleAcrossNat(lab, [{ kind: 'sidecar', keepalive: 'off' }], { idleMs: IDLE_MS, replyWaitMs: 3_000 })
    const p = r.paths[0]
    assert.ok(p !== undefined)
    figure(`sidecar, keepalive off: ${describePath(r, p)}`)
    assertBroke(r, p)
  })

  itLeavesNothingBehind()
})
