import type { MessagePort } from 'node:worker_threads'
import { formatHostPort } from '../../config/formats.js'
import type { KeepaliveSettings } from '../../keepalive.js'
import { AF_INET, SOCKADDR_IN_SIZE, sockaddrText } from '../../sockopt/original-dst.js'

// The messages between the main thread (control plane) and the splice worker (data plane).
// Plain data, across a MessageChannel: structured clones towards the worker; the worker's events
// come back as numbers (see FromWorker).

/** Float64 fields per connection in the shared statistics (see STAT_*). */
export const STAT_FIELDS = 5
export const STAT_BYTES_FROM_CLIENT = 0
export const STAT_BYTES_FROM_UPSTREAM = 1
/** performance.timeOrigin + performance.now() (ms) of the last byte either way; the worker's clock, comparable across threads. */
export const STAT_LAST_BYTE_AT = 2
export const STAT_LAST_SILENCE_MS = 3
export const STAT_LAST_SILENCE_ENDED_AT = 4
/** Connections per shared statistics block; blocks are added as connections need them. */
export const SLOTS_PER_BLOCK = 1024

/** A connected pair to relay. Node keeps owning both descriptors: the worker never closes them. */
export interface AddPair {
  type: 'add'
  id: number
  clientFd: number
  upstreamFd: number
  /** Statistics slot: block `slot / SLOTS_PER_BLOCK`, index `slot % SLOTS_PER_BLOCK`. */
  slot: number
  /** Close the pair after this many ms without a byte either way; 0 for never. */
  idleTimeoutMs: number
  /** The client's FIN arrived before the hand-over (already passed on by Node). */
  clientEnded: boolean
  /** Silence tracking carried over: last byte (absolute ms, see STAT_LAST_BYTE_AT). */
  lastByteAt: number
}

export interface DropPair { type: 'drop', id: number }
export interface AddBlock { type: 'block', buffer: SharedArrayBuffer }
export interface Stop { type: 'stop' }

/**
 * What the worker needs to accept and dial a route's connections by itself: every per-connection
 * decision of such a route is known in advance (one numeric target, no PROXY header, no original
 * destination, no socket mark).
 */
export interface AcceptPlan {
  clientKeepalive: KeepaliveSettings
  upstreamKeepalive: KeepaliveSettings
  /** The target as raw `struct sockaddr` bytes. */
  target: Uint8Array
  connectTimeoutMs: number
  /** 0 for none. */
  idleTimeoutMs: number
  maxConnections: number | null
  /**
   * The target is down (passive ejection) until this time (absolute ms, as STAT_LAST_BYTE_AT):
   * clients are refused until then, and one trial connection goes out after; 0 while it is up.
   */
  downUntil: number
  /**
   * A reload changed the keepalive with `keepalive.applyToExisting`: the worker re-applies it to
   * the connections it has not reported yet (the main thread re-tunes those it knows).
   */
  applyToExisting: boolean
}

/** Accept on `fd` (a duplicate of the route's listening socket; the main thread closes it after `unlistened`). */
export interface Listen {
  type: 'listen'
  route: number
  fd: number
  plan: AcceptPlan
  /** One Int32: the route's connections dialing or relaying, counted by every worker accepting for it (maxConnections). */
  live: SharedArrayBuffer
  /**
   * One Int32 per worker of the pool: the route's connections each holds (dialing or relaying),
   * NOT_ACCEPTING for a worker that does not accept for it (gone, stopping, or never asked).
   * This worker writes `loads[worker]`; see the worker's balance().
   */
  loads: SharedArrayBuffer
  worker: number
  /** One Int32: how many workers poll the route's listening socket now; a worker yields only while another polls. */
  pollers: SharedArrayBuffer
  /**
   * One Int32 per worker: raised (pokeWorker) by another worker, or the main thread, that wants
   * this one to look at the route's loads again now, and accept what waits if it polls. Another
   * worker pokes when it holds more than its share and stopped polling the route (see balance);
   * the main thread when a worker stopped polling for want of descriptors.
   */
  pokes: SharedArrayBuffer
  /** The pool's eventfds, one Int32 per worker (WakeSignals.fds): a poke wakes its worker through them. */
  wakeFds: SharedArrayBuffer
}

/** A route's per-worker load (Listen.loads) of a worker that does not accept its connections. */
export const NOT_ACCEPTING = 0x7fffffff
/** New connections of the route get `plan` (a reload changed the route). */
export interface Replan { type: 'plan', route: number, plan: AcceptPlan }
/** Stop or go on polling the route's listening socket (descriptors ran short, or are back). */
export interface PauseAccepting { type: 'pause', route: number, paused: boolean }
/**
 * Stop accepting for good; `unlistened` follows once the worker no longer touches the descriptor
 * and every connection it accepted for the route was reported.
 */
export interface Unlisten { type: 'unlisten', route: number }
/**
 * Whether a connection that ends before its report gets a record of its own (Finished: the log
 * writes a line per connection) or, closed in order, only counts in its route's Tallied.
 */
export interface Records { type: 'records', wanted: boolean }
export type ToWorker = AddPair | DropPair | AddBlock | Stop | Listen | Replan | PauseAccepting | Unlisten | Records

/**
 * How the worker let go of a pair (it no longer touches either descriptor):
 * `closed`: both directions ended with a FIN and everything was relayed; `error`: a socket failed
 * (`side`, `errno`); `idle`: idleTimeoutMs passed without a byte; `dropped`: the main thread asked.
 */
export interface PairEnded {
  kind: 'ended'
  id: number
  how: 'closed' | 'error' | 'idle' | 'dropped'
  /** The side whose socket failed (`error`); null otherwise. */
  side: 'client' | 'upstream' | null
  /** The errno value (`error`); 0 otherwise. */
  errno: number
  /** The side whose FIN came first, if any. */
  firstFin: 'client' | 'upstream' | null
  /** The pair's final statistics (its slot may be reused before this report is read). */
  bytesFromClient: number
  bytesFromUpstream: number
  /** Absolute ms (see STAT_LAST_BYTE_AT); 0 for none. */
  lastByteAt: number
  lastSilenceMs: number
  lastSilenceEndedAt: number
}

/** Why a connection the worker accepted did not get to relaying. */
export type AcceptFailure = 'limit' | 'down' | 'sockopt' | 'socket' | 'dial' | 'connect-timeout'

/**
 * A connection the worker accepted: connected to the route's target (`failure` null; the pair is
 * relaying, with statistics in the worker's own block `block` at `base`), or given up on (its
 * upstream descriptor, if any, already closed). From here the main thread owns both descriptors.
 */
export interface Accepted {
  kind: 'accepted'
  route: number
  id: number
  clientFd: number
  /** The client's address as accept4 gave it (see clientText): read later, a closed peer has none. */
  client: ClientAddress
  /** -1 when it failed. */
  upstreamFd: number
  /** Absolute ms (as STAT_LAST_BYTE_AT) of the accept. */
  acceptedAt: number
  connectMs: number
  failure: AcceptFailure | null
  /** The side the failure is about; null for `limit`. */
  side: 'client' | 'upstream' | null
  /** The errno name behind the failure ('' for none). */
  code: string
  block: number
  base: number
}

/**
 * A connection the worker accepted, relayed and let go of before reporting it (see the worker's
 * dataPlane.reportAfterMs): it closed both descriptors itself, and the main thread never held them. The
 * accept's and the end's facts in one record (`endedAt`: absolute ms, as STAT_LAST_BYTE_AT).
 */
export interface Finished extends Omit<PairEnded, 'kind'> {
  kind: 'finished'
  route: number
  client: ClientAddress
  acceptedAt: number
  connectMs: number
  endedAt: number
}

/**
 * A client's address from accept4: an IPv4 address and port packed in one number (address × 65536
 * + port), so the thousands a second that are never looked at are never formatted; otherwise its
 * `host:port` text ('' when unknown).
 */
export type ClientAddress = number | string

/** A client's address (ClientAddress) packed from accept4's `struct sockaddr`: IPv4 as a number, anything else as text. */
export function clientAddress (sockaddr: Buffer, length: number): ClientAddress {
  if (length >= SOCKADDR_IN_SIZE && sockaddr.readUInt16LE(0) === AF_INET) return sockaddr.readUInt32BE(4) * 65536 + sockaddr.readUInt16BE(2)
  return sockaddrText(sockaddr.subarray(0, length)) ?? ''
}

/** A client's address (ClientAddress) as `host:port`; 'unknown' when none. */
export function clientText (address: ClientAddress): string {
  if (typeof address === 'string') return address === '' ? 'unknown' : address
  const ip = Math.floor(address / 65536)
  return formatHostPort({ host: `${ip >>> 24}.${(ip >>> 16) & 255}.${(ip >>> 8) & 255}.${ip & 255}`, port: address % 65536 })
}

/**
 * Connections of a route that ended in order (both FINs, everything relayed) before their report,
 * counted together when no record of each is wanted (see Records), as Envoy's workers keep their
 * statistics to themselves between flushes: posted with the batch they ended in, before any
 * `unlistened` of the route.
 */
export interface Tallied {
  kind: 'tallied'
  route: number
  /** Closed with the client's FIN first (client-closed); the rest with the upstream's (upstream-closed). */
  clientFirst: number
  upstreamFirst: number
  bytesFromClient: number
  bytesFromUpstream: number
  /** Each connection's connect time (ms), in the order they ended: read from a batch, a view into it. */
  connectMs: number[] | Float64Array
}

/** A statistics block the worker made for the connections it accepts; `block` in Accepted counts these in order. */
export interface WorkerBlock { kind: 'block', buffer: SharedArrayBuffer }
/** The worker no longer polls the route's listening descriptor. */
export interface Unlistened { kind: 'unlistened', route: number }
/**
 * The worker stopped polling the route (until `pause` false): the descriptor budget was spent
 * (`code` 'budget'), or accept4 failed for want of descriptors or memory (its errno name).
 */
export interface AcceptExhausted { kind: 'exhausted', route: number, code: string }
/** The worker took a `plan` message: what it accepts from now on gets it. */
export interface Planned { kind: 'planned', route: number }
/** The worker polls the route's listening socket from now on (its answer to Listen). */
export interface Listening { kind: 'listening', route: number }
export type WorkerEvent = PairEnded | Accepted | Finished | Tallied | WorkerBlock | Unlistened | AcceptExhausted | Planned | Listening

/**
 * The worker's batch of events, in order, posted at most once per turn of its loop. Those that
 * come with every connection (accepted, ended, finished) travel as numbers, their strings beside them: a
 * structured clone of objects cost about a microsecond per event, on the data plane's thread and
 * again on the main thread. Any other event is a record pointing into `others`.
 */
export interface FromWorker { numbers: Float64Array, texts: string[], others: WorkerEvent[] }

const RECORD_ENDED = 1
const RECORD_ACCEPTED = 2
const RECORD_OTHER = 3
const RECORD_FINISHED = 4
/** Variable length: five fields, then the count and the connect times (see Tallied). */
const RECORD_TALLIED = 5
const HOWS: ReadonlyArray<PairEnded['how']> = ['closed', 'error', 'idle', 'dropped']
const SIDES: ReadonlyArray<'client' | 'upstream' | null> = [null, 'client', 'upstream']
const FAILURES: ReadonlyArray<AcceptFailure | null> = [null, 'limit', 'down', 'sockopt', 'socket', 'dial', 'connect-timeout']
/** The longest record: finished. */
const RECORD_MAX = 17

/**
 * A whole number read from the batch as a small integer where it is one: a double read from a
 * Float64Array and kept in an object (the connection's id, its descriptors) would be a 16-byte
 * heap number per connection.
 */
function integer (value: number | undefined, none: number): number {
  if (value === undefined) return none
  const small = value | 0
  return small === value ? small : value
}

/** The worker's side of FromWorker: events in, one batch out. */
export class EventBatcher {
  private numbers = new Float64Array(4096)
  private length = 0
  private texts: string[] = []
  private others: WorkerEvent[] = []
  /** Events since the last batch. */
  size = 0
  /**
   * One of them waits on the main thread (a pair to close, a failed client, a route's state);
   * the others only tell it (connections reported, finished or tallied): they can wait longer.
   */
  urgent = false

  push (event: WorkerEvent): void {
    const longest = event.kind === 'tallied' ? 7 + event.connectMs.length : RECORD_MAX
    if (this.length + longest > this.numbers.length) {
      const grown = new Float64Array(Math.max(this.numbers.length * 2, this.length + longest))
      grown.set(this.numbers)
      this.numbers = grown
    }
    const n = this.numbers
    let at = this.length
    switch (event.kind) {
      case 'ended':
        n[at++] = RECORD_ENDED
        at = writeEnd(n, at, event)
        break
      case 'accepted':
        n[at++] = RECORD_ACCEPTED
        n[at++] = event.route
        n[at++] = event.id
        n[at++] = event.clientFd
        n[at++] = this.client(event.client)
        n[at++] = event.upstreamFd
        n[at++] = event.acceptedAt
        n[at++] = event.connectMs
        n[at++] = FAILURES.indexOf(event.failure)
        n[at++] = SIDES.indexOf(event.side)
        n[at++] = event.code === '' ? -1 : this.texts.push(event.code) - 1
        n[at++] = event.block
        n[at++] = event.base
        break
      case 'finished':
        n[at++] = RECORD_FINISHED
        n[at++] = event.route
        n[at++] = this.client(event.client)
        n[at++] = event.acceptedAt
        n[at++] = event.connectMs
        n[at++] = event.endedAt
        at = writeEnd(n, at, event)
        break
      case 'tallied':
        n[at++] = RECORD_TALLIED
        n[at++] = event.route
        n[at++] = event.clientFirst
        n[at++] = event.upstreamFirst
        n[at++] = event.bytesFromClient
        n[at++] = event.bytesFromUpstream
        n[at++] = event.connectMs.length
        for (const ms of event.connectMs) n[at++] = ms
        break
      default:
        n[at++] = RECORD_OTHER
        n[at++] = this.others.push(event) - 1
    }
    this.length = at
    this.size++
    if (!(event.kind === 'finished' || event.kind === 'tallied' || (event.kind === 'accepted' && event.failure === null))) this.urgent = true
  }

  /** A client address as a number: packed IPv4 as it is, text as -1 - its index in `texts`. */
  private client (address: ClientAddress): number {
    return typeof address === 'number' ? address : -1 - (this.texts.push(address) - 1)
  }

  /** The events since the last batch, or null for none. */
  take (): FromWorker | null {
    if (this.size === 0) return null
    const batch = { numbers: this.numbers.slice(0, this.length), texts: this.texts, others: this.others }
    this.length = 0
    this.texts = []
    this.others = []
    this.size = 0
    this.urgent = false
    return batch
  }
}

/** What a pair's end (ended, finished) carries, from `at` on: returns where the record goes on. */
function writeEnd (n: Float64Array, at: number, end: Omit<PairEnded, 'kind'>): number {
  n[at++] = end.id
  n[at++] = HOWS.indexOf(end.how)
  n[at++] = SIDES.indexOf(end.side)
  n[at++] = end.errno
  n[at++] = SIDES.indexOf(end.firstFin)
  n[at++] = end.bytesFromClient
  n[at++] = end.bytesFromUpstream
  n[at++] = end.lastByteAt
  n[at++] = end.lastSilenceMs
  n[at++] = end.lastSilenceEndedAt
  return at
}

/** writeEnd's fields into `end`; returns where the record goes on. */
function readEnd (n: Float64Array, at: number, end: Omit<PairEnded, 'kind'>): number {
  end.id = integer(n[at++], 0)
  end.how = HOWS[n[at++] ?? 0] ?? 'error'
  end.side = SIDES[n[at++] ?? 0] ?? null
  end.errno = n[at++] ?? 0
  end.firstFin = SIDES[n[at++] ?? 0] ?? null
  end.bytesFromClient = n[at++] ?? 0
  end.bytesFromUpstream = n[at++] ?? 0
  end.lastByteAt = n[at++] ?? 0
  end.lastSilenceMs = n[at++] ?? 0
  end.lastSilenceEndedAt = n[at++] ?? 0
  return at
}

/** A client address as EventBatcher wrote it. */
function readClient (batch: FromWorker, value: number | undefined): ClientAddress {
  if (value === undefined) return ''
  return value >= 0 ? value : batch.texts[-1 - value] ?? ''
}

/**
 * The main thread's side of FromWorker: each of the batch's events, in order, to `visit`. Those
 * that come with every connection (accepted, ended, finished) arrive in one object per kind, refilled for each record (at
 * thousands of connections a second, an object per event was a fifth of the main thread's
 * allocation, and its young-generation collections): read an event during the call, never keep it.
 */
export function forEachEvent (batch: FromWorker, visit: (event: Readonly<WorkerEvent>) => void): void {
  const n = batch.numbers
  let ended: PairEnded | null = null
  let accepted: Accepted | null = null
  let finished: Finished | null = null
  let at = 0
  while (at < n.length) {
    const record = n[at++]
    if (record === RECORD_ENDED) {
      ended ??= { kind: 'ended', id: 0, how: 'closed', side: null, errno: 0, firstFin: null, bytesFromClient: 0, bytesFromUpstream: 0, lastByteAt: 0, lastSilenceMs: 0, lastSilenceEndedAt: 0 }
      at = readEnd(n, at, ended)
      visit(ended)
    } else if (record === RECORD_ACCEPTED) {
      accepted ??= { kind: 'accepted', route: 0, id: 0, clientFd: -1, client: '', upstreamFd: -1, acceptedAt: 0, connectMs: 0, failure: null, side: null, code: '', block: -1, base: 0 }
      accepted.route = integer(n[at++], 0)
      accepted.id = integer(n[at++], 0)
      accepted.clientFd = integer(n[at++], -1)
      accepted.client = readClient(batch, n[at++])
      accepted.upstreamFd = integer(n[at++], -1)
      accepted.acceptedAt = n[at++] ?? 0
      accepted.connectMs = n[at++] ?? 0
      accepted.failure = FAILURES[n[at++] ?? 0] ?? null
      accepted.side = SIDES[n[at++] ?? 0] ?? null
      accepted.code = batch.texts[n[at++] ?? -1] ?? ''
      accepted.block = integer(n[at++], -1)
      accepted.base = integer(n[at++], 0)
      visit(accepted)
    } else if (record === RECORD_FINISHED) {
      finished ??= { kind: 'finished', route: 0, id: 0, client: '', acceptedAt: 0, connectMs: 0, endedAt: 0, how: 'closed', side: null, errno: 0, firstFin: null, bytesFromClient: 0, bytesFromUpstream: 0, lastByteAt: 0, lastSilenceMs: 0, lastSilenceEndedAt: 0 }
      finished.route = integer(n[at++], 0)
      finished.client = readClient(batch, n[at++])
      finished.acceptedAt = n[at++] ?? 0
      finished.connectMs = n[at++] ?? 0
      finished.endedAt = n[at++] ?? 0
      at = readEnd(n, at, finished)
      visit(finished)
    } else if (record === RECORD_TALLIED) {
      const route = integer(n[at++], 0)
      const clientFirst = n[at++] ?? 0
      const upstreamFirst = n[at++] ?? 0
      const bytesFromClient = n[at++] ?? 0
      const bytesFromUpstream = n[at++] ?? 0
      const count = n[at++] ?? 0
      visit({ kind: 'tallied', route, clientFirst, upstreamFirst, bytesFromClient, bytesFromUpstream, connectMs: n.subarray(at, at + count) })
      at += count
    } else {
      const event = batch.others[n[at++] ?? -1]
      if (event === undefined) throw new Error(`worker batch: unknown record ${String(record)} at ${at - 1}`)
      visit(event)
    }
  }
}

/** An absolute time on the workers' clock (see STAT_LAST_BYTE_AT) on this thread's performance.now() clock; 0 (none) stays 0. */
export function onThisClock (absolute: number): number {
  return absolute === 0 ? 0 : absolute - performance.timeOrigin
}

/** An absolute time on the workers' clock (see STAT_LAST_BYTE_AT) as Date.now() would have read it then. */
export function epochMs (absolute: number): number {
  return Math.round(absolute - performance.timeOrigin + (Date.now() - performance.now()))
}

/** Connection ids shared by the main thread and the worker (both number connections): one counter in shared memory. */
export class ConnectionIds {
  private readonly counter: BigInt64Array
  constructor (buffer: SharedArrayBuffer) {
    this.counter = new BigInt64Array(buffer)
  }

  next (): number {
    return Number(Atomics.add(this.counter, 0, 1n)) + 1
  }
}

/** What each worker is given besides its channels: see WorkerStart. */
export type DataPlaneTuning = Pick<WorkerStart, 'bulkBuffers' | 'reportAfterMs' | 'busyPollUs'>

export interface WorkerStart {
  port: MessagePort
  /** Int32 [0]: descriptors the worker holds (its epoll set and pipes), for the descriptor budget. */
  descriptors: SharedArrayBuffer
  /** eventfd the main thread signals after posting to `port`. */
  wakeFd: number
  /** The connection id counter (ConnectionIds). */
  ids: SharedArrayBuffer
  /**
   * Int32 [0]: the descriptor budget's estimate without the worker's own descriptors, [1]: where
   * accepting pauses (0: never). The worker accepts only while [0] + its own + 2 stays below [1].
   */
  budget: SharedArrayBuffer
  /** Bulk buffers the worker may make (dataPlane.bulkBuffers): a bulk flow copies through one while one is free, else splices. */
  bulkBuffers: number
  /** Whether each connection that ends before its report gets a record (see Records); a Records message changes it. */
  records: boolean
  /** How long a connection it accepted relays before it reports it, in ms (dataPlane.reportAfterMs; see Finished). */
  reportAfterMs: number
  /** The longest it polls after moving bytes before it sleeps, in µs (dataPlane.busyPollUs; 0: never). */
  busyPollUs: number
}
