// `npm run demo:nat` (root): scenarios 1 and 2 side by side. Two connections cross the same NAT,
// one direct and one through kaproxy with client-side keepalive; both stay idle three times the
// NAT's conntrack timeout, then send. The direct one is dead, the kaproxy one is not.
import { labGate } from './gate.js'
import { describePath, idleAcrossNat } from './idle-across-nat.js'
import type { PathResult } from './idle-across-nat.js'
import { ADDR, Lab } from './lab.js'

const CONNTRACK_SEC = 3
const IDLE_MS = 3 * CONNTRACK_SEC * 1000
const REPLY_WAIT_MS = 3_000
const KEEPALIVE = '1s,1s,3'

function ms (value: number): string {
  return value < 10 ? `${value.toFixed(1)} ms` : `${value.toFixed(0)} ms`
}

function s (value: number): string {
  return `${(value / 1000).toFixed(1)} s`
}

function entryWords (p: PathResult): string {
  if (p.entryGoneAtMs !== undefined) return `forgotten by the NAT ${s(p.entryGoneAtMs)} into the idle`
  return `kept by the NAT the whole time (seen in ${p.samplesWithEntry}/${p.samples} checks, its timer never below ${String(p.minTimeoutSec)} s)`
}

async function main (): Promise<number> {
  const gate = await labGate({ needKaproxy: true })
  if (gate.skip !== false) {
    console.log(`demo:nat cannot run: ${gate.skip}`)
    return 1
  }
  console.log(`kaproxy NAT demo: two connections cross the same NAT, which forgets a TCP flow after ${CONNTRACK_SEC} s of silence`)
  console.log(`(conntrack established timeout ${CONNTRACK_SEC} s, nf_conntrack_tcp_loose=0, INVALID packets dropped).`)
  console.log('')
  console.log(`  A  direct:   client ${ADDR.client} --NAT--> echo server ${ADDR.server}:7001`)
  console.log(`  B  kaproxy:  client ${ADDR.client} --NAT--> kaproxy ${ADDR.server}:7102 (client keepalive ${KEEPALIVE}) --> echo server 127.0.0.1:7002`)
  console.log('')
  const started = Date.now()
  const lab = await Lab.create({ conntrackEstablishedSec: CONNTRACK_SEC })
  try {
    console.log(`Both connect and exchange a message, then stay silent for ${s(IDLE_MS)}; then both send again and wait up to ${s(REPLY_WAIT_MS)} for the echo ...`)
    const r = await idleAcrossNat(lab, [{ kind: 'direct' }, { kind: 'fronting', keepalive: KEEPALIVE }], { idleMs: IDLE_MS, replyWaitMs: REPLY_WAIT_MS })
    const [a, b] = r.paths
    if (a === undefined || b === undefined) throw new Error('missing results')
    console.log('')
    console.log(`Before the silence: A answered in ${ms(a.warmRttMs)}, B in ${ms(b.warmRttMs)}.`)
    console.log(`During the silence: A's flow was ${entryWords(a)};`)
    console.log(`                    B's flow was ${entryWords(b)}: kaproxy's keepalive probes refresh it every second.`)
    console.log(`After ${s(IDLE_MS)} of silence:`)
    const aDead = a.rttAfterIdleMs === undefined
    const bAlive = b.rttAfterIdleMs !== undefined
    console.log(aDead
      ? `  A (direct)  DIED:  no answer within ${s(REPLY_WAIT_MS)}; the server received ${a.serverBytesAfterIdle} of ${a.bytesSentAfterIdle} bytes; the NAT dropped ${r.invalidDropsDuringSend} packets as INVALID.`
      : `  A (direct)  survived (unexpected: is the lab's NAT really forgetting flows?), answer in ${ms(a.rttAfterIdleMs ?? NaN)}.`)
    console.log(bAlive
      ? `  B (kaproxy) ALIVE: answered in ${ms(b.rttAfterIdleMs ?? NaN)}, and kaproxy closed nothing.`
      : `  B (kaproxy) DIED (unexpected): ${b.failure ?? ''}`)
    console.log('')
    console.log(`summary A: ${describePath(r, a)}`)
    console.log(`summary B: ${describePath(r, b)}`)
    console.log(`(demo took ${s(Date.now() - started)}; namespaces ${lab.ns.client}, ${lab.ns.nat}, ${lab.ns.server} removed)`)
    return aDead && bAlive ? 0 : 1
  } finally {
    await lab.destroy()
  }
}

process.exitCode = await main()
