import assert from 'node:assert/strict'
import { it } from 'node:test'
import fc from 'fast-check'
import { EventBatcher, forEachEvent, type WorkerEvent } from '../src/relay/fast/protocol.js'

const side = fc.constantFrom<'client' | 'upstream' | null>(null, 'client', 'upstream')
const time = fc.double({ min: 0, max: 2e12, noNaN: true })
const count = fc.integer({ min: 0, max: 2 ** 52 })

/** A packed IPv4 address and port, or text. */
const client = fc.oneof(fc.string(), fc.integer({ min: 0, max: 2 ** 48 - 1 }))

/** What a pair's end carries (ended, finished). */
const endFields = {
  id: count,
  how: fc.constantFrom('closed' as const, 'error' as const, 'idle' as const, 'dropped' as const),
  side,
  errno: fc.integer({ min: 0, max: 200 }),
  firstFin: side,
  bytesFromClient: count,
  bytesFromUpstream: count,
  lastByteAt: time,
  lastSilenceMs: time,
  lastSilenceEndedAt: time
}

const ended: fc.Arbitrary<WorkerEvent> = fc.record({ kind: fc.constant('ended' as const), ...endFields }, { noNullPrototype: true })

const accepted: fc.Arbitrary<WorkerEvent> = fc.record({
  kind: fc.constant('accepted' as const),
  route: fc.nat(1000),
  id: count,
  clientFd: fc.nat(20000),
  client,
  upstreamFd: fc.integer({ min: -1, max: 20000 }),
  acceptedAt: time,
  connectMs: time,
  failure: fc.constantFrom(null, 'limit' as const, 'down' as const, 'sockopt' as const, 'socket' as const, 'dial' as const, 'connect-timeout' as const),
  side,
  code: fc.constantFrom('', 'ECONNREFUSED', 'EMFILE'),
  block: fc.integer({ min: -1, max: 100 }),
  base: fc.nat(5000)
}, { noNullPrototype: true })

const finished: fc.Arbitrary<WorkerEvent> = fc.record({
  kind: fc.constant('finished' as const),
  route: fc.nat(1000),
  client,
  acceptedAt: time,
  connectMs: time,
  endedAt: time,
  ...endFields
}, { noNullPrototype: true })

const tallied: fc.Arbitrary<WorkerEvent> = fc.record({
  kind: fc.constant('tallied' as const),
  route: fc.nat(1000),
  clientFirst: fc.nat(10000),
  upstreamFirst: fc.nat(10000),
  bytesFromClient: count,
  bytesFromUpstream: count,
  // Longer than the batch's first buffer can hold at once, now and then.
  connectMs: fc.array(time, { maxLength: 5000 })
}, { noNullPrototype: true })

const other: fc.Arbitrary<WorkerEvent> = fc.oneof(
  fc.record({ kind: fc.constant('planned' as const), route: fc.nat(1000) }, { noNullPrototype: true }),
  fc.record({ kind: fc.constant('exhausted' as const), route: fc.nat(1000), code: fc.constantFrom('budget', 'EMFILE') }, { noNullPrototype: true })
)

it("the worker's event batches carry every event, in order, field for field", () => {
  fc.assert(fc.property(fc.array(fc.oneof(ended, accepted, finished, tallied, other), { maxLength: 600 }), (events) => {
    const batcher = new EventBatcher()
    for (const event of events) batcher.push(event)
    assert.equal(batcher.size, events.length)
    const batch = batcher.take()
    if (events.length === 0) { assert.equal(batch, null); return }
    assert.ok(batch !== null)
    // Copied as they come: the per-connection kinds arrive in one refilled object each, a
    // tally's connect times as a view into the batch.
    const decoded: WorkerEvent[] = []
    forEachEvent(structuredClone(batch), (event) => { decoded.push(event.kind === 'tallied' ? { ...event, connectMs: [...event.connectMs] } : { ...event }) })
    assert.deepEqual(decoded, events)
    assert.equal(batcher.take(), null, 'a batch is taken once')
  }), { numRuns: 200 })
})
