import { isDeepStrictEqual } from 'node:util'
import { receiveMessageOnPort, workerData } from 'node:worker_threads'
import { applyKeepaliveFd, keepaliveOptions, type KeepaliveOption, type KeepaliveSettings } from '../../keepalive.js'
import { isAbortive, relayEndReason } from '../close-reason.js'
import {
  EAGAIN, EINPROGRESS, EPOLLERR, EPOLLET, EPOLLEXCLUSIVE, EPOLLHUP, EPOLLIN, EPOLLOUT, EPOLLRDHUP, EPOLL_CTL_ADD, EPOLL_CTL_DEL,
  EPOLL_EVENT_DATA, EPOLL_EVENT_SIZE, dataPlaneCalls, errnoName, resetOnClose, sendNow
} from '../../sockopt/libc.js'
import {
  ConnectionIds, EventBatcher, NOT_ACCEPTING, SLOTS_PER_BLOCK, STAT_BYTES_FROM_CLIENT, STAT_BYTES_FROM_UPSTREAM, STAT_FIELDS, STAT_LAST_BYTE_AT, STAT_LAST_SILENCE_ENDED_AT,
  STAT_LAST_SILENCE_MS, clientAddress, type AcceptFailure, type AcceptPlan, type AddPair, type ClientAddress, type PairEnded, type Tallied, type ToWorker, type WorkerStart
} from './protocol.js'
import { pokeWorker } from './wake-signals.js'

// The fast engine's data plane: one thread, one epoll set, libc through koffi. A few bytes are
// copied across through one shared buffer; a bulk flow through a pooled 4 MiB buffer while one is
// free (dataPlane.bulkBuffers), else by splice(2) through a pooled pipe, inside the kernel. Bytes
// never become JavaScript objects. The thread blocks in
// epoll_wait (inside koffi), so its own event loop never runs: the main thread wakes it through an
// eventfd in the same epoll set, and it reads the port with receiveMessageOnPort.

const sys = dataPlaneCalls()
const { port, wakeFd, descriptors, ids: idBuffer, budget: budgetBuffer, bulkBuffers, reportAfterMs, busyPollUs } = workerData as WorkerStart
/** Whether a connection ending before its report gets a record of its own (see Records). */
let records = (workerData as WorkerStart).records
const budget = new Int32Array(budgetBuffer)
const ids = new ConnectionIds(idBuffer)
/** What this thread holds, for the main thread's descriptor budget: the epoll set and two per pipe. */
const heldDescriptors = new Int32Array(descriptors)

/** Pipe size asked for (fs.pipe-max-size is 1 MiB by default): one splice moves up to this much. */
const PIPE_SIZE = 1 << 20
/** Free pipes kept for reuse; beyond this they are closed. */
const SPARE_PIPES = 16
/**
 * A bulk buffer (dataPlane.bulkBuffers of them at most, made on demand and kept): one recv takes
 * what the socket holds, up to this much. 4 MiB moved a stream a third faster than 1 MiB here.
 */
const BULK_BUFFER_BYTES = 4 << 20
/** Bytes one direction may move per turn before others get theirs (edge-triggered: it goes on a ready list). */
const TURN_BYTES = 4 << 20
/** Shortest quiet (ms) that counts as a silence, as in the net engine. */
const SILENCE_MIN_MS = 1000
const MAX_EVENTS = 512
/** A relayed socket's epoll registration: edge-triggered, both ways, and the peer's FIN. */
const RELAY_INTEREST = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET
/** Largest read copied across rather than spliced (see pumpDirection). */
const COPY_BYTES = 64 << 10
/** After a pipe could not be made (descriptors ran out), no new one is tried for this many ms. */
const PIPE_RETRY_MS = 20

/** `buffers`: how many pipe buffers it has; a splice into it fills at least one per packet. */
interface Pipe { readEnd: number, writeEnd: number, capacity: number, buffers: number }

/** One direction of a pair: bytes read from `src` into the pipe, then written from it to `dst`. */
interface Direction {
  readonly src: number
  readonly dst: number
  readonly fromClient: boolean
  pipe: Pipe | null
  /** A bulk buffer in place of the pipe; its bytes not yet written start at `start`. */
  held: Buffer | null
  start: number
  /** Bytes in the pipe (or the held buffer) not yet written to dst. */
  pending: number
  /** Bytes copied across that dst did not take yet (they go before the pipe's); null for none. */
  unsent: Buffer | null
  /** Reads fill the copy buffer: move them through a pipe or a held buffer instead (see pumpDirection). */
  bulk: boolean
  /** Edge-triggered readiness: set by an event, cleared by EAGAIN. */
  readable: boolean
  writable: boolean
  /** src sent its FIN. */
  eof: boolean
  /** An event reported src's FIN, reset or hang-up: read it to the end, whatever the size of the last read. */
  closingSeen: boolean
  /** The FIN was passed on: shutdown(dst, SHUT_WR). */
  done: boolean
}

/** A route's tally being counted here: its connect times pushed as connections end. */
type OpenTally = Tallied & { connectMs: number[] }

/** A route whose connections this thread accepts and dials itself. */
interface Acceptor {
  readonly route: number
  readonly fd: number
  plan: AcceptPlan
  sockaddr: Buffer
  /** The plan's keepalive as setsockopt calls (see tune); null for settings the kernel would refuse. */
  clientOptions: readonly KeepaliveOption[] | null
  upstreamOptions: readonly KeepaliveOption[] | null
  /** Its connections dialing or relaying, in every worker accepting for it (maxConnections; Atomics). */
  readonly live: Int32Array
  /** To be polled: not while the main thread has it paused, or while descriptors ran out (until it resumes it). */
  wanted: boolean
  /** Its new clients left to a less busy worker (see balance). */
  yielded: boolean
  /** In the epoll set: wanted and not yielded. */
  polling: boolean
  /** Each worker's count of the route's connections (see Listen.loads); this one's at `worker`. */
  readonly loads: Int32Array
  readonly worker: number
  /** How many workers poll the route now (see balanceRoute). */
  readonly pollers: Int32Array
  /** Each worker's poke flag for the route, this one's at `worker`, and their eventfds (see pokeWorker). */
  readonly pokes: Int32Array
  readonly wakeFds: Int32Array
  /** The route's connections this thread holds, dialing or relaying. */
  mine: number
  /** Its connections that ended here (or failed) since `churnFrom`; `churn`: how many ended per BALANCE_EVERY_MS in the last window (see slackOf). */
  ended: number
  churnFrom: number
  churn: number
  /** When it last asked the others to look again without yielding itself (see askOthers). */
  askedAt: number
  /** Its connections being dialed (not reported yet). */
  dialing: number
  /** Told to stop: `unlistened` goes out once none is being dialed. */
  closing: boolean
  /**
   * The listening socket carries the plan's client keepalive and TCP_NODELAY, which accepted
   * sockets inherit (Linux copies them when the handshake completes): `inherits` once accept4
   * found the queue empty at `inheritFrom` or later (see tuneListener; NaN: the listener could not
   * be tuned). Until then each accepted socket is tuned by itself.
   */
  inheritFrom: number
  inherits: boolean
  /** Its connections that ended in order before their report since the last batch, when no record of each is wanted (see Tallied). */
  tally: OpenTally
}

/** An accepted client whose upstream is being dialed. Both descriptors are this thread's until reported. */
interface Dial {
  readonly id: number
  readonly acceptor: Acceptor
  readonly clientFd: number
  readonly client: ClientAddress
  readonly upstreamFd: number
  readonly acceptedAt: number
  readonly deadline: number
}

interface Pair {
  readonly id: number
  readonly clientFd: number
  readonly upstreamFd: number
  readonly toUpstream: Direction
  readonly toClient: Direction
  readonly stats: Float64Array
  readonly base: number
  readonly idleTimeoutMs: number
  firstFin: 'client' | 'upstream' | null
  lastActivity: number
  ended: boolean
  /** The route that accepted it here (its live count), or null for a pair the main thread handed over. */
  readonly acceptor: Acceptor | null
  /** Its slot in this thread's own statistics blocks, freed when it ends; -1 for the main thread's. */
  readonly ownSlot: number
  /** The main thread knows it (handed over, or accepted here and reported; see reportAfterMs). */
  reported: boolean
  /** Accepted here: the client's address, when (absolute ms), how long the dial took, when it is reported. */
  readonly client: ClientAddress
  readonly acceptedAt: number
  readonly connectMs: number
  readonly reportAt: number
}

const epfd = sys.epollCreate()
if (epfd < 0) throw new Error(`epoll_create1 failed: errno ${-epfd}`)
sys.epollCtl(epfd, EPOLL_CTL_ADD, wakeFd, EPOLLIN)
Atomics.store(heldDescriptors, 0, 1)

/** epoll_wait's events, read as words: flags at i * EVENT_WORDS, the descriptor (the data's low word) DATA_WORD after. */
const EVENT_WORDS = EPOLL_EVENT_SIZE / 4
const DATA_WORD = EPOLL_EVENT_DATA / 4
const eventWords = new Uint32Array(MAX_EVENTS * EVENT_WORDS)
const events = Buffer.from(eventWords.buffer)
const copyBuffer = Buffer.alloc(COPY_BYTES)
const blocks: Float64Array[] = []
/** Pairs by descriptor: both of a pair's sockets map to it. */
const byFd: Array<Pair | undefined> = []
const byId = new Map<number, Pair>()
const spare: Pipe[] = []
/** Bulk buffers free for a direction; `bulkBuffersMade` of them at most `bulkBuffers`. */
const spareBuffers: Buffer[] = []
let bulkBuffersMade = 0
/** Pairs with work left after their turn, or waiting for a pipe. */
let ready: Pair[] = []
let readyNext: Pair[] = []
const idleWatched = new Set<Pair>()
let sweepEveryMs = 1000
let nextSweepAt = Infinity
const outbox = new EventBatcher()
/**
 * When the events gathered go to the main thread: each post wakes it, so under load a post carries
 * the events of several rounds, at most FLUSH_AFTER_MS late when one of them waits on the main
 * thread (see EventBatcher.urgent), else REPORT_FLUSH_MS (or FLUSH_EVENTS of them). Posting the
 * reports of short connections every 10 ms rather than every 1 ms cost the main thread about a
 * microsecond less per connection at 11,000 a second, every 50 ms rather than 10 another one
 * (docs/performance.md): a post costs both threads tens of µs, a report waits for no one.
 */
let flushAt = Infinity
const FLUSH_AFTER_MS = 1
const REPORT_FLUSH_MS = 50
const FLUSH_EVENTS = 256
const acceptors = new Map<number, Acceptor>()
const acceptorByFd: Array<Acceptor | undefined> = []
/**
 * Upstreams being dialed, by descriptor: a Map, as few are at any time (an array indexed by
 * descriptor would span every descriptor number: 48 bytes per connection held at 9,000).
 */
const dials = new Map<number, Dial>()
let nextDialSweepAt = Infinity
// A connection accepted here is reported to the main thread once it has relayed `reportAfterMs`;
// one that ends sooner is closed here and reported once, finished (see Finished). A report costs
// the main thread a connection record and the closing of both descriptors: for connections of a
// few ms, a quarter of kaproxy's CPU per connection (docs/performance.md).
/** Pairs accepted here and not reported yet, in the order they are due; those from `unreportedHead` on are pending. */
let unreported: Array<Pair | null> = []
let unreportedHead = 0
/** Statistics blocks this thread made for the connections it accepts, and their free slots. */
const ownBlocks: Float64Array[] = []
const ownFreeSlots: number[] = []
/** Accepts per listener per turn; the listener is level-triggered, so the rest come next turn. */
const ACCEPTS_PER_TURN = 64
const DIAL_SWEEP_MS = 50
/** How long after tuning a listener its accepted sockets are still tuned one by one (see tuneListener). */
const INHERIT_AFTER_MS = 50
/** How often the routes' loads are compared at most (see balance), and when next. */
const BALANCE_EVERY_MS = 10
let balanceAt = 0
/** Longest epoll_wait: one wake-up a second at most while idle. */
const MAX_WAIT_MS = 1000
let stopping = false
/**
 * The epoll_wait round, and the round each descriptor was put in the epoll set: a round's events
 * were collected before it began, so those of a descriptor registered in it belong to an earlier
 * socket with the same number (closed by the main thread, which takes it out of the set, after
 * epoll_wait returned its event).
 */
let turn = 0
const registeredIn: number[] = []
/** The worker's clock as an absolute time, comparable with the main thread's (see STAT_LAST_BYTE_AT). */
let now = performance.timeOrigin + performance.now()

function direction (src: number, dst: number, fromClient: boolean, ended: boolean): Direction {
  return { src, dst, fromClient, pipe: null, held: null, start: 0, pending: 0, unsent: null, bulk: false, readable: !ended, writable: true, eof: ended, closingSeen: false, done: false }
}

interface PairStart {
  id: number
  clientFd: number
  upstreamFd: number
  stats: Float64Array
  base: number
  idleTimeoutMs: number
  clientEnded: boolean
  lastByteAt: number
  acceptor: Acceptor | null
  ownSlot: number
  /** The upstream descriptor is in the epoll set already, with the relay's interest (dialed here). */
  upstreamRegistered: boolean
  reported: boolean
  client: ClientAddress
  acceptedAt: number
  connectMs: number
}

function add (start: PairStart): Pair {
  const pair: Pair = {
    id: start.id,
    clientFd: start.clientFd,
    upstreamFd: start.upstreamFd,
    toUpstream: direction(start.clientFd, start.upstreamFd, true, start.clientEnded),
    toClient: direction(start.upstreamFd, start.clientFd, false, false),
    stats: start.stats,
    base: start.base,
    idleTimeoutMs: start.idleTimeoutMs,
    firstFin: start.clientEnded ? 'client' : null,
    lastActivity: now,
    ended: false,
    acceptor: start.acceptor,
    ownSlot: start.ownSlot,
    reported: start.reported,
    client: start.client,
    acceptedAt: start.acceptedAt,
    connectMs: start.connectMs,
    reportAt: now + reportAfterMs
  }
  pair.stats[pair.base + STAT_BYTES_FROM_CLIENT] = 0
  pair.stats[pair.base + STAT_BYTES_FROM_UPSTREAM] = 0
  pair.stats[pair.base + STAT_LAST_BYTE_AT] = start.lastByteAt
  pair.stats[pair.base + STAT_LAST_SILENCE_MS] = 0
  pair.stats[pair.base + STAT_LAST_SILENCE_ENDED_AT] = 0
  byId.set(pair.id, pair)
  byFd[pair.clientFd] = pair
  byFd[pair.upstreamFd] = pair
  const failedClient = sys.epollCtl(epfd, EPOLL_CTL_ADD, pair.clientFd, RELAY_INTEREST)
  if (failedClient < 0) { end(pair, 'error', 'client', -failedClient); return pair }
  registeredIn[pair.clientFd] = turn
  if (!start.upstreamRegistered) {
    const failedUpstream = sys.epollCtl(epfd, EPOLL_CTL_ADD, pair.upstreamFd, RELAY_INTEREST)
    if (failedUpstream < 0) { end(pair, 'error', 'upstream', -failedUpstream); return pair }
    registeredIn[pair.upstreamFd] = turn
  }
  if (pair.idleTimeoutMs > 0) {
    idleWatched.add(pair)
    // Check idle pairs often enough to close each within ~5% of its timeout.
    sweepEveryMs = Math.min(sweepEveryMs, Math.max(50, Math.floor(pair.idleTimeoutMs / 20)))
    nextSweepAt = Math.min(nextSweepAt, now + sweepEveryMs)
  }
  // The end of a client FIN seen by Node is passed on once the (empty) pipe allows it.
  pump(pair)
  return pair
}

function addHandedOver (message: AddPair): void {
  const block = blocks[Math.floor(message.slot / SLOTS_PER_BLOCK)]
  if (block === undefined) throw new Error(`statistics block for slot ${message.slot} missing`)
  add({
    id: message.id,
    clientFd: message.clientFd,
    upstreamFd: message.upstreamFd,
    stats: block,
    base: (message.slot % SLOTS_PER_BLOCK) * STAT_FIELDS,
    idleTimeoutMs: message.idleTimeoutMs,
    clientEnded: message.clientEnded,
    lastByteAt: message.lastByteAt,
    acceptor: null,
    ownSlot: -1,
    upstreamRegistered: false,
    reported: true,
    client: '',
    acceptedAt: 0,
    connectMs: 0
  })
}

/** Let go of a pair: out of the epoll set and every table; its pipes back to the pool (emptied ones only). */
function end (pair: Pair, how: PairEnded['how'], side: PairEnded['side'], errno: number): void {
  if (pair.ended) return
  pair.ended = true
  // Descriptors this thread accepted and made are the only ones to their sockets: the main
  // thread's close takes them out of the epoll set. A handed-over pair's descriptors are
  // duplicates (epoll keeps watching a socket while any descriptor to it is open): taken out here.
  if (pair.acceptor === null) {
    sys.epollCtl(epfd, EPOLL_CTL_DEL, pair.clientFd, 0)
    sys.epollCtl(epfd, EPOLL_CTL_DEL, pair.upstreamFd, 0)
  }
  if (byFd[pair.clientFd] === pair) byFd[pair.clientFd] = undefined
  if (byFd[pair.upstreamFd] === pair) byFd[pair.upstreamFd] = undefined
  byId.delete(pair.id)
  idleWatched.delete(pair)
  releaseStaging(pair.toUpstream)
  releaseStaging(pair.toClient)
  const stats = pair.stats
  const base = pair.base
  const bytesFromClient = stats[base + STAT_BYTES_FROM_CLIENT] ?? 0
  const bytesFromUpstream = stats[base + STAT_BYTES_FROM_UPSTREAM] ?? 0
  if (!pair.reported) {
    // The main thread never held these descriptors: this thread closes them, as the main thread
    // would have (a reset where the reason calls for one), once this turn's events are handled.
    if (isAbortive(relayEndReason(how, side, errno, pair.firstFin))) { resetOnClose(pair.clientFd); resetOnClose(pair.upstreamFd) }
    closeAfterTurn(pair.clientFd)
    closeAfterTurn(pair.upstreamFd)
    Atomics.sub(heldDescriptors, 0, 2)
  }
  if (!pair.reported && !records && how === 'closed') {
    // Counted, no record: nothing is allocated for it.
    const tally = (pair.acceptor as Acceptor).tally
    if (pair.firstFin === 'upstream') tally.upstreamFirst++
    else tally.clientFirst++
    tally.bytesFromClient += bytesFromClient
    tally.bytesFromUpstream += bytesFromUpstream
    tally.connectMs.push(pair.connectMs)
    tallied++
  } else {
    const ended: PairEnded = {
      kind: 'ended',
      id: pair.id,
      how,
      side,
      errno,
      firstFin: pair.firstFin,
      bytesFromClient,
      bytesFromUpstream,
      lastByteAt: stats[base + STAT_LAST_BYTE_AT] ?? 0,
      lastSilenceMs: stats[base + STAT_LAST_SILENCE_MS] ?? 0,
      lastSilenceEndedAt: stats[base + STAT_LAST_SILENCE_ENDED_AT] ?? 0
    }
    outbox.push(pair.reported ? ended : { ...ended, kind: 'finished', route: (pair.acceptor as Acceptor).route, client: pair.client, acceptedAt: pair.acceptedAt, connectMs: pair.connectMs, endedAt: now })
  }
  if (pair.acceptor !== null) {
    routeLive(pair.acceptor, -1)
    holding(pair.acceptor, -1)
  }
  if (pair.ownSlot >= 0) ownFreeSlots.push(pair.ownSlot)
}

/** When a pipe may be made again after one could not be. */
let pipeRetryAt = 0

function takePipe (): Pipe | null {
  const reused = spare.pop()
  if (reused !== undefined) return reused
  if (now < pipeRetryAt) return null
  const made = sys.pipe(PIPE_SIZE)
  if (typeof made === 'number') { pipeRetryAt = now + PIPE_RETRY_MS; return null }
  Atomics.add(heldDescriptors, 0, 2)
  return { readEnd: made[0], writeEnd: made[1], capacity: made[2], buffers: Math.max(1, Math.floor(made[2] / sys.pageSize)) }
}

function closePipe (pipe: Pipe): void {
  sys.close(pipe.readEnd)
  sys.close(pipe.writeEnd)
  Atomics.sub(heldDescriptors, 0, 2)
}

/** A direction's pipe or bulk buffer back to the pool; bytes left in it (a failed pair) belong to nobody. */
function releaseStaging (dir: Direction): void {
  const pipe = dir.pipe
  if (pipe !== null) {
    dir.pipe = null
    // A pipe with bytes left in it is closed: they cannot be taken out.
    if (dir.pending === 0 && spare.length < SPARE_PIPES) spare.push(pipe)
    else closePipe(pipe)
  }
  if (dir.held !== null) {
    spareBuffers.push(dir.held)
    dir.held = null
  }
  dir.pending = 0
  dir.start = 0
}

function sideOf (pair: Pair, fd: number): 'client' | 'upstream' {
  return fd === pair.clientFd ? 'client' : 'upstream'
}

function counted (pair: Pair, dir: Direction, bytes: number): void {
  const stats = pair.stats
  const base = pair.base
  const field = base + (dir.fromClient ? STAT_BYTES_FROM_CLIENT : STAT_BYTES_FROM_UPSTREAM)
  stats[field] = (stats[field] ?? 0) + bytes
  const quietMs = now - (stats[base + STAT_LAST_BYTE_AT] ?? now)
  if (quietMs >= SILENCE_MIN_MS) {
    stats[base + STAT_LAST_SILENCE_MS] = quietMs
    stats[base + STAT_LAST_SILENCE_ENDED_AT] = now
  }
  stats[base + STAT_LAST_BYTE_AT] = now
  pair.lastActivity = now
}

/**
 * Move what one direction can now. Returns 'more' when it stopped at its turn's budget (or for a
 * pipe) with work left, 'idle' when it waits for an event, 'failed' when the pair ended.
 *
 * Two ways, in order: small reads are copied (recv into this thread's buffer, send at once),
 * which costs the kernel less than two splices through a pipe for a few bytes; a read that fills
 * the buffer turns the direction to splice (no copy) until a read finds little again. Bytes a send
 * could not place wait in `unsent`, and go out before anything in the pipe.
 */
function pumpDirection (pair: Pair, dir: Direction): 'more' | 'idle' | 'failed' {
  let budget = TURN_BYTES
  for (;;) {
    let progressed = false
    if (!dir.eof && dir.readable) {
      const outcome = dir.bulk ? readBulk(pair, dir) : dir.pending === 0 && dir.unsent === null ? copyAcross(pair, dir) : 0
      if (outcome < 0) return 'failed'
      if (outcome > 0) { budget -= outcome; progressed = true }
      if (dir.eof) progressed = true
    }
    if (dir.unsent !== null && dir.writable) {
      const unsent = dir.unsent
      const n = sendNow(dir.dst, unsent, unsent.length)
      if (n === unsent.length) { dir.unsent = null; pair.lastActivity = now; progressed = true }
      else if (n > 0) { dir.unsent = unsent.subarray(n); dir.writable = false; pair.lastActivity = now; progressed = true }
      else if (n === -EAGAIN) dir.writable = false
      else { end(pair, 'error', sideOf(pair, dir.dst), -n); return 'failed' }
    }
    if (dir.unsent === null && dir.pending > 0 && dir.writable) {
      const n = writeStaged(dir)
      if (n > 0) {
        dir.pending -= n
        // Bytes leaving count as activity too, as they do for the net relay's socket timeout.
        pair.lastActivity = now
        progressed = true
      } else if (n === -EAGAIN || n === 0) {
        dir.writable = false
      } else {
        end(pair, 'error', sideOf(pair, dir.dst), -n)
        return 'failed'
      }
    }
    if (dir.pending === 0 && (dir.pipe !== null || dir.held !== null)) releaseStaging(dir)
    if (dir.eof && dir.pending === 0 && dir.unsent === null && !dir.done) {
      dir.done = true
      // The last direction to end leaves its FIN to the main thread's close of the pair.
      if ((dir.fromClient ? pair.toClient : pair.toUpstream).done) return 'idle'
      const n = sys.shutdownWrite(dir.dst)
      // ENOTCONN: the peer is already gone; its own event tells how.
      if (n < 0 && n !== -107) { end(pair, 'error', sideOf(pair, dir.dst), -n); return 'failed' }
    }
    if (!progressed) return 'idle'
    if (budget <= 0) return 'more'
  }
}

/**
 * The end of src's stream: its FIN. A reset after the FIN reads as the end too; the kernel
 * reports it with EPOLLERR, which onSocketEvent reads before anything else.
 */
function sourceEnded (pair: Pair, dir: Direction): void {
  dir.eof = true
  pair.firstFin ??= dir.fromClient ? 'client' : 'upstream'
}

/** Copy one read across: recv, then send what the destination takes. Bytes read, or -1 when the pair ended. */
function copyAcross (pair: Pair, dir: Direction): number {
  const n = sys.recv(dir.src, copyBuffer, COPY_BYTES)
  if (n === 0) { sourceEnded(pair, dir); return 0 }
  if (n === -EAGAIN) { dir.readable = false; return 0 }
  if (n < 0) { end(pair, 'error', sideOf(pair, dir.src), -n); return -1 }
  counted(pair, dir, n)
  // A short read emptied the socket: edge-triggered epoll reports the next bytes. Not when the FIN
  // may already be in: only a read finds it.
  if (n < COPY_BYTES && !dir.closingSeen) dir.readable = false
  if (n === COPY_BYTES) dir.bulk = true
  const sent = sendNow(dir.dst, copyBuffer, n)
  if (sent === n) { pair.lastActivity = now; return n }
  if (sent < 0 && sent !== -EAGAIN) { end(pair, 'error', sideOf(pair, dir.dst), -sent); return -1 }
  // The destination is full: keep the rest (a copy: the buffer is the next read's).
  const taken = Math.max(0, sent)
  if (taken > 0) pair.lastActivity = now
  dir.unsent = Buffer.from(copyBuffer.subarray(taken, n))
  dir.writable = false
  return n
}

/**
 * One splice from src into the direction's pipe. Bytes read, -1 when the pair ended. Without a
 * pipe (descriptors ran out) the direction copies instead: a pair never waits for a descriptor,
 * which a connection closing elsewhere (or another worker's spare pipe) might never free.
 */
function readIntoPipe (pair: Pair, dir: Direction): number {
  if (dir.pipe === null) {
    dir.pipe = takePipe()
    if (dir.pipe === null) {
      dir.bulk = false
      return dir.unsent === null ? copyAcross(pair, dir) : 0
    }
  }
  const room = dir.pipe.capacity - dir.pending
  if (room <= 0) return 0
  const n = sys.splice(dir.src, dir.pipe.writeEnd, room)
  if (n > 0) {
    if (dir.pending === 0) {
      // A read into an empty pipe that filled neither its bytes nor its buffers (a packet takes
      // at least one) emptied the socket, as a short recv does (see copyAcross).
      if (n < dir.pipe.buffers && !dir.closingSeen) dir.readable = false
      // The flow slowed down: copying is cheaper again.
      if (n < COPY_BYTES) dir.bulk = false
    }
    dir.pending += n
    counted(pair, dir, n)
    return n
  }
  if (n === 0) { sourceEnded(pair, dir); return 0 }
  if (n === -EAGAIN) {
    // With bytes in the pipe, EAGAIN may mean the pipe ran out of buffers (one per packet, long
    // before its bytes run out), not that the socket is empty: try again once the pipe drained.
    // Only an empty pipe proves the socket empty.
    if (dir.pending === 0) dir.readable = false
    return 0
  }
  end(pair, 'error', sideOf(pair, dir.src), -n)
  return -1
}

/**
 * A bulk read: into a bulk buffer while one is free (or the direction holds one), else into a pipe.
 * Measured here (loopback, 2 cores): one copy in and one out through a 4 MiB buffer moved a stream
 * faster than splice through a 1 MiB pipe (the pipe's pages stay shared with the sender and the
 * receiver longer), at the same CPU per byte; splice keeps the memory of many flows in the kernel.
 */
function readBulk (pair: Pair, dir: Direction): number {
  if (dir.held === null && dir.pipe === null) dir.held = takeBuffer()
  const held = dir.held
  return held === null ? readIntoPipe(pair, dir) : readIntoBuffer(pair, dir, held)
}

/** Write what the direction's bulk buffer or pipe holds (`pending` > 0 means it has one): bytes written, or -errno. */
function writeStaged (dir: Direction): number {
  const held = dir.held
  if (held === null) return dir.pipe === null ? 0 : sys.splice(dir.pipe.readEnd, dir.dst, dir.pending)
  const n = sendNow(dir.dst, dir.start === 0 ? held : held.subarray(dir.start), dir.pending)
  if (n > 0) dir.start += n
  return n
}

function takeBuffer (): Buffer | null {
  const reused = spareBuffers.pop()
  if (reused !== undefined) return reused
  if (bulkBuffersMade >= bulkBuffers) return null
  bulkBuffersMade++
  // Pages are touched (and count in the RSS) only as reads fill them.
  return Buffer.allocUnsafeSlow(BULK_BUFFER_BYTES)
}

/**
 * One recv from src into the direction's bulk buffer, once the bytes it held are all written (as
 * the net relay pauses reading while a write is pending). Bytes read, -1 when the pair ended.
 */
function readIntoBuffer (pair: Pair, dir: Direction, held: Buffer): number {
  if (dir.pending > 0) return 0
  const n = sys.recv(dir.src, held, held.length)
  if (n > 0) {
    // A short read emptied the socket (see copyAcross).
    if (n < held.length && !dir.closingSeen) dir.readable = false
    // The flow slowed down: copying through the shared buffer is cheaper again.
    if (n < COPY_BYTES) dir.bulk = false
    dir.start = 0
    dir.pending = n
    counted(pair, dir, n)
    return n
  }
  if (n === 0) { sourceEnded(pair, dir); return 0 }
  if (n === -EAGAIN) { dir.readable = false; return 0 }
  end(pair, 'error', sideOf(pair, dir.src), -n)
  return -1
}

function pump (pair: Pair): void {
  if (pair.ended) return
  const up = pumpDirection(pair, pair.toUpstream)
  if (up === 'failed') return
  const down = pumpDirection(pair, pair.toClient)
  if (down === 'failed') return
  if (pair.toUpstream.done && pair.toClient.done) { end(pair, 'closed', null, 0); return }
  if (up === 'more' || down === 'more') ready.push(pair)
}

function onSocketEvent (fd: number, flags: number): void {
  const pair = byFd[fd]
  if (pair === undefined || pair.ended) return
  const fromThis = fd === pair.clientFd ? pair.toUpstream : pair.toClient
  const toThis = fd === pair.clientFd ? pair.toClient : pair.toUpstream
  if ((flags & EPOLLERR) !== 0) {
    // A socket error (keepalive gave up, a reset) also ends directions that no longer read it.
    const error = sys.socketError(fd)
    if (error !== 0) { end(pair, 'error', sideOf(pair, fd), error); return }
  }
  if ((flags & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) !== 0) fromThis.readable = true
  if ((flags & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) !== 0) fromThis.closingSeen = true
  if ((flags & (EPOLLOUT | EPOLLHUP | EPOLLERR)) !== 0) toThis.writable = true
  pump(pair)
}

function onMessage (message: ToWorker): void {
  switch (message.type) {
    case 'block':
      blocks.push(new Float64Array(message.buffer))
      break
    case 'add':
      addHandedOver(message)
      break
    case 'listen': {
      const acceptor: Acceptor = {
        route: message.route,
        fd: message.fd,
        ...planned(message.plan),
        live: new Int32Array(message.live),
        wanted: false,
        yielded: false,
        polling: false,
        loads: new Int32Array(message.loads),
        worker: message.worker,
        pollers: new Int32Array(message.pollers),
        pokes: new Int32Array(message.pokes),
        wakeFds: new Int32Array(message.wakeFds),
        mine: 0,
        ended: 0,
        churnFrom: now,
        churn: 0,
        askedAt: -Infinity,
        dialing: 0,
        closing: false,
        inheritFrom: NaN,
        inherits: false,
        tally: emptyTally(message.route)
      }
      tuneListener(acceptor)
      acceptors.set(acceptor.route, acceptor)
      acceptorByFd[acceptor.fd] = acceptor
      poll(acceptor, true)
      outbox.push({ kind: 'listening', route: acceptor.route })
      break
    }
    case 'plan': {
      const acceptor = acceptors.get(message.route)
      if (acceptor !== undefined) {
        const retuned = !isDeepStrictEqual(acceptor.plan.clientKeepalive, message.plan.clientKeepalive)
        const changed = retuned || !isDeepStrictEqual(acceptor.plan.upstreamKeepalive, message.plan.upstreamKeepalive)
        Object.assign(acceptor, planned(message.plan))
        if (retuned) tuneListener(acceptor)
        if (changed && message.plan.applyToExisting) retunePending(acceptor)
      }
      outbox.push({ kind: 'planned', route: message.route })
      break
    }
    case 'pause': {
      const acceptor = acceptors.get(message.route)
      if (acceptor !== undefined) poll(acceptor, !message.paused)
      break
    }
    case 'unlisten': {
      const acceptor = acceptors.get(message.route)
      if (acceptor === undefined) break
      poll(acceptor, false)
      acceptors.delete(acceptor.route)
      if (acceptorByFd[acceptor.fd] === acceptor) acceptorByFd[acceptor.fd] = undefined
      // Its live connections are the main thread's to drain from here.
      reportPending(true, acceptor)
      postTally(acceptor)
      acceptor.closing = true
      unlistenedWhenDone(acceptor)
      break
    }
    case 'drop': {
      const pair = byId.get(message.id)
      // An unknown id already ended on its own: that report is on its way.
      if (pair !== undefined) end(pair, 'dropped', null, 0)
      break
    }
    case 'stop':
      stopping = true
      break
    case 'records':
      records = message.wanted
      break
  }
}

/**
 * Descriptors this thread made and gave up on close at the end of the turn: closed at once, a
 * number could come back from accept4 or socket in the same turn while an event for the old
 * descriptor still waits in this turn's list.
 */
const closing: number[] = []

function closeAfterTurn (fd: number): void {
  closing.push(fd)
}

/** ENOSYS: close_range is missing from the kernel (before 5.9). */
const ENOSYS = 38
let closeRange = sys.closeRange

/**
 * Close the turn's descriptors: each run of consecutive numbers in one close_range call. A pair's
 * two descriptors were made one after the other (accept4, socket), and pairs ending in the same
 * turn often sit side by side: about 2.6 descriptors per call under connect-echo-close, where one
 * call each was 2 per connection.
 */
function closeAll (fds: number[]): void {
  if (fds.length > 1) fds.sort((a, b) => a - b)
  let first = 0
  for (let i = 1; i <= fds.length; i++) {
    const fd = fds[i - 1] as number
    if (i < fds.length && fds[i] === fd + 1) continue
    closeRun(fds[first] as number, fd)
    first = i
  }
}

function closeRun (low: number, high: number): void {
  if (low < high && closeRange !== null) {
    if (closeRange(low, high) !== -ENOSYS) return
    closeRange = null
  }
  for (let fd = low; fd <= high; fd++) sys.close(fd)
}

/** A stopping route is reported let go of once its last connection being dialed was reported. */
function unlistenedWhenDone (acceptor: Acceptor): void {
  if (acceptor.closing && acceptor.dialing === 0) {
    acceptor.closing = false
    postTally(acceptor)
    outbox.push({ kind: 'unlistened', route: acceptor.route })
  }
}

/** Whether the main thread wants the route's listening socket polled (see applyPolling). */
function poll (acceptor: Acceptor, on: boolean): void {
  acceptor.wanted = on
  publishLoad(acceptor)
  applyPolling(acceptor)
}

/**
 * Put a listening descriptor in the epoll set (level-triggered: what is left is reported again) or
 * take it out. Every worker polls the listening socket, unless it yielded: a connection wakes one
 * of those waiting, or is reported to one busy relaying once it waits again.
 */
function applyPolling (acceptor: Acceptor): void {
  const on = acceptor.wanted && !acceptor.yielded
  if (acceptor.polling === on) return
  acceptor.polling = on
  // A yield took itself off the count already (see balanceRoute).
  if (on) Atomics.add(acceptor.pollers, 0, 1)
  else if (!acceptor.yielded) Atomics.sub(acceptor.pollers, 0, 1)
  sys.epollCtl(epfd, on ? EPOLL_CTL_ADD : EPOLL_CTL_DEL, acceptor.fd, EPOLLIN | EPOLLEXCLUSIVE)
}

/** The route's connections dialing or relaying in every worker (maxConnections) went up or down by `change`; returns the count before. */
function routeLive (acceptor: Acceptor, change: number): number {
  return Atomics.add(acceptor.live, 0, change)
}

/** The route's connections held here (`mine`, balance) went up or down by `change`: the others see it at once. */
function holding (acceptor: Acceptor, change: number): void {
  acceptor.mine += change
  if (change < 0) acceptor.ended -= change
  publishLoad(acceptor)
  // Looked at again at the end of this turn, not a period later: a worker that now holds more than
  // another (connections arriving one at a time, a turn each), or a yielded one whose connections end.
  if (acceptor.yielded ? change < 0 : change > 0 && excessOver(acceptor) > slackOf(acceptor)) balanceAt = 0
}

/** Write what the other workers compare with (see balance): NOT_ACCEPTING while the route is not to be polled (paused, exhausted, unlistened, stopping). */
function publishLoad (acceptor: Acceptor): void {
  Atomics.store(acceptor.loads, acceptor.worker, acceptor.wanted ? acceptor.mine : NOT_ACCEPTING)
}

/**
 * Spread each route's connections over the workers, as HAProxy spreads them over its threads.
 * EPOLLEXCLUSIVE wakes the first worker waiting: at a low rate that is always the same one, and
 * long-lived connections (a few bulk streams, thousands of idle ones) would all land on it while
 * the other cores idle. Each worker writes how many of the route's connections it holds as that
 * changes (NOT_ACCEPTING while it does not accept for the route: paused, out of descriptors,
 * stopping, gone), and stops polling the route once it holds more than the least busy other one
 * by over 1 + 1/8 of that one's, plus as many as ended here lately (slackOf: none where
 * connections live long); it polls again once it holds no more than that. Never the last one
 * polling (the `pollers` count): a client always finds a worker. A worker that yields, or holds
 * more than one that yielded, pokes the others (pokeWorker): they look again at once. Otherwise
 * at most every BALANCE_EVERY_MS: under a high connection rate EPOLLEXCLUSIVE spreads clients by
 * itself.
 */
function balance (): void {
  for (const acceptor of acceptors.values()) balanceRoute(acceptor)
  balanceAt = now + BALANCE_EVERY_MS
}

function balanceRoute (acceptor: Acceptor): void {
  const excess = excessOver(acceptor)
  // Holding more than another that yielded on older counts: have it look again (it may poll again).
  if (!acceptor.yielded && excess > 0 && Atomics.load(acceptor.pollers, 0) < accepting(acceptor)) askOthers(acceptor)
  // Back to polling only once it holds no more than the least busy (plus its eighth): connection
  // counts that move by one around the mark do not turn polling on and off at every turn.
  const slack = slackOf(acceptor)
  const crowded = acceptor.yielded ? excess > slack : excess > 1 + slack
  if (crowded === acceptor.yielded) return
  // Never the last one polling: the others may have yielded on counts older than this one's.
  if (crowded && acceptor.polling && !leavePollers(acceptor)) return
  acceptor.yielded = crowded
  applyPolling(acceptor)
  // The others are poked only when one of them yielded too (it may poll again now): those polling
  // take the next clients anyway. Under a run of short connections the counts swing around the
  // mark at every turn, and a poke each time was a wake-up for one connection in 15.
  if (crowded && Atomics.load(acceptor.pollers, 0) < accepting(acceptor) - 1) pokeOthers(acceptor)
}

/**
 * How many connections over its share a worker may hold before it yields the route: as many as
 * ended here in the last BALANCE_EVERY_MS (0 where connections live long). Short connections come
 * and go faster than yielding and polling again can follow: under connect-echo-close about 65 end
 * per 10 ms in each worker and the counts swing by several at every turn, and each yield was an
 * epoll_ctl, often a poke, and a worker left out while the other took every client (the
 * connection rate was 5% higher with no balancing at all, in an interleaved A/B).
 */
function slackOf (acceptor: Acceptor): number {
  const span = now - acceptor.churnFrom
  if (span >= BALANCE_EVERY_MS) {
    acceptor.churn = Math.floor(acceptor.ended * BALANCE_EVERY_MS / span)
    acceptor.ended = 0
    acceptor.churnFrom = now
  }
  return acceptor.churn
}

/** Workers accepting for the route, this one included. */
function accepting (acceptor: Acceptor): number {
  let count = 0
  for (let worker = 0; worker < acceptor.loads.length; worker++) if (Atomics.load(acceptor.loads, worker) !== NOT_ACCEPTING) count++
  return count
}

/** pokeOthers, at most once per BALANCE_EVERY_MS. */
function askOthers (acceptor: Acceptor): void {
  if (now < acceptor.askedAt + BALANCE_EVERY_MS) return
  acceptor.askedAt = now
  pokeOthers(acceptor)
}

/**
 * Poke the other workers accepting for the route: they look at the loads again at once (a yielded
 * one may poll again) and accept what waits. Straight through their eventfds: a poke through the
 * main thread woke it about 130 times a second under connect-echo-close, for half its CPU time.
 */
function pokeOthers (acceptor: Acceptor): void {
  for (let worker = 0; worker < acceptor.loads.length; worker++) {
    if (worker !== acceptor.worker && Atomics.load(acceptor.loads, worker) !== NOT_ACCEPTING) pokeWorker(acceptor.pokes, acceptor.wakeFds, worker)
  }
}

/** Take this worker off the route's pollers, unless it is the only one left. */
function leavePollers (acceptor: Acceptor): boolean {
  for (;;) {
    const pollers = Atomics.load(acceptor.pollers, 0)
    if (pollers <= 1) return false
    if (Atomics.compareExchange(acceptor.pollers, 0, pollers, pollers - 1) === pollers) return true
  }
}

/** How many of the route's connections this worker holds beyond the least busy other one accepting for it, plus an eighth of that one's. */
function excessOver (acceptor: Acceptor): number {
  const loads = acceptor.loads
  let least = NOT_ACCEPTING
  for (let worker = 0; worker < loads.length; worker++) {
    if (worker === acceptor.worker) continue
    const load = Atomics.load(loads, worker)
    if (load < least) least = load
  }
  return acceptor.mine - least - (least >> 3)
}

/**
 * Give the listening socket the plan's client keepalive and TCP_NODELAY, for accepted sockets to
 * inherit. Connections whose handshake completed before wait in the accept queue with the old
 * values: they are tuned one by one until accept4 found the queue empty, a moment after the
 * listener was tuned (a handshake completing during the setsockopt calls may still be on its way).
 */
function tuneListener (acceptor: Acceptor): void {
  acceptor.inheritFrom = NaN
  acceptor.inherits = false
  // A user timeout left alone is the kernel's default (0) on a new socket: so on the listener.
  const keepalive = acceptor.plan.clientKeepalive
  try {
    applyKeepaliveFd(acceptor.fd, { ...keepalive, userTimeoutMs: keepalive.userTimeoutMs ?? 0 })
    if (sys.noDelay(acceptor.fd) < 0) return
  } catch {
    // Not inherited then: each accepted socket is tuned, and its failure is reported.
    return
  }
  acceptor.inheritFrom = now + INHERIT_AFTER_MS
}

/** Whether two more descriptors fit the main thread's descriptor budget (which counts this thread's too). */
function budgetLeft (): boolean {
  const high = Atomics.load(budget, 1)
  return high === 0 || Atomics.load(budget, 0) + Atomics.load(heldDescriptors, 0) + 4 + 2 < high
}

function onListenerEvent (acceptor: Acceptor): void {
  for (let i = 0; i < ACCEPTS_PER_TURN && acceptor.polling; i++) {
    if (!budgetLeft()) {
      poll(acceptor, false)
      outbox.push({ kind: 'exhausted', route: acceptor.route, code: 'budget' })
      return
    }
    peerLength[0] = peer.length
    // Clients arriving together wake one worker: it takes its share, then leaves the rest to the
    // others (it yields and has them poked), unless no other polls.
    if (i > 0 && excessOver(acceptor) > 1 + slackOf(acceptor)) {
      balanceRoute(acceptor)
      if (acceptor.yielded) return
    }
    const fd = sys.accept(acceptor.fd, peer, peerLength)
    if (fd >= 0) { acceptOne(acceptor, fd, clientAddress(peer, peerLength[0] ?? 0)); continue }
    if (fd === -EAGAIN) {
      // The queue is empty: whatever comes next completed its handshake on the tuned listener.
      if (now >= acceptor.inheritFrom) acceptor.inherits = true
      return
    }
    const code = errnoName(-fd)
    // Out of descriptors or memory: stop polling until the main thread, which counts descriptors,
    // resumes the route.
    if (code === 'EMFILE' || code === 'ENFILE' || code === 'ENOBUFS' || code === 'ENOMEM') {
      poll(acceptor, false)
      outbox.push({ kind: 'exhausted', route: acceptor.route, code })
      return
    }
    // The main thread stopped the listener: wait for its unlisten.
    if (code === 'EINVAL' || code === 'EBADF' || code === 'ENOTSOCK') { poll(acceptor, false); return }
    // Anything else (ECONNABORTED, EPROTO, EPERM from a firewall rule, network errors passed on)
    // concerns that one client: go on with the next, as libuv does.
  }
}

/** The peer address accept4 wrote. */
const peer = Buffer.alloc(128)
const peerLength = new Uint32Array([peer.length])


/** Report a client that will not be relayed, and give back its place in the route's count. */
function acceptFailed (acceptor: Acceptor, id: number, clientFd: number, client: ClientAddress, acceptedAt: number, failure: AcceptFailure, side: 'client' | 'upstream' | null, code: string): void {
  routeLive(acceptor, -1)
  holding(acceptor, -1)
  outbox.push({ kind: 'accepted', route: acceptor.route, id, clientFd, client, upstreamFd: -1, acceptedAt, connectMs: 0, failure, side, code, block: -1, base: 0 })
}

/** An accepted client: its keepalive, then a non-blocking dial of the route's target with its own. */
function acceptOne (acceptor: Acceptor, clientFd: number, client: ClientAddress): void {
  // Until the main thread has read its report, a connection's two descriptors are counted here
  // (it takes them off when it counts the connection itself).
  Atomics.add(heldDescriptors, 0, 2)
  const id = ids.next()
  const acceptedAt = now
  const plan = acceptor.plan
  // Taken before anything else, as other workers count the same route: given back by
  // acceptFailed or the pair's end.
  const before = routeLive(acceptor, 1)
  holding(acceptor, 1)
  if (plan.maxConnections !== null && before >= plan.maxConnections) {
    acceptFailed(acceptor, id, clientFd, client, acceptedAt, 'limit', null, '')
    return
  }
  if (plan.downUntil !== 0) {
    if (now < plan.downUntil) { acceptFailed(acceptor, id, clientFd, client, acceptedAt, 'down', 'upstream', ''); return }
    // One trial connection, until the main thread says how it went (a new plan).
    plan.downUntil = Infinity
  }
  if (!acceptor.inherits) {
    const refused = tune(clientFd, acceptor.clientOptions)
    if (refused !== '') {
      acceptFailed(acceptor, id, clientFd, client, acceptedAt, 'sockopt', 'client', refused)
      return
    }
  }
  const upstreamFd = sys.tcpSocket(acceptor.sockaddr)
  if (upstreamFd < 0) {
    acceptFailed(acceptor, id, clientFd, client, acceptedAt, 'socket', 'upstream', errnoName(-upstreamFd))
    return
  }
  const refused = tune(upstreamFd, acceptor.upstreamOptions)
  if (refused !== '') {
    closeAfterTurn(upstreamFd)
    acceptFailed(acceptor, id, clientFd, client, acceptedAt, 'sockopt', 'upstream', refused)
    return
  }
  const started = sys.connect(upstreamFd, acceptor.sockaddr)
  if (started < 0 && started !== -EINPROGRESS) {
    closeAfterTurn(upstreamFd)
    acceptFailed(acceptor, id, clientFd, client, acceptedAt, 'dial', 'upstream', errnoName(-started))
    return
  }
  acceptor.dialing++
  const dial: Dial = { id, acceptor, clientFd, client, upstreamFd, acceptedAt, deadline: now + plan.connectTimeoutMs }
  dials.set(upstreamFd, dial)
  nextDialSweepAt = Math.min(nextDialSweepAt, now + DIAL_SWEEP_MS)
  // Writable (or an error) once the handshake ends; then the same registration relays.
  const added = sys.epollCtl(epfd, EPOLL_CTL_ADD, upstreamFd, RELAY_INTEREST)
  if (added < 0) dialEnded(dial, 'dial', errnoName(-added))
  else registeredIn[upstreamFd] = turn
}

/** An acceptor's plan and what each connection needs of it, worked out once per plan. */
function planned (plan: AcceptPlan): Pick<Acceptor, 'plan' | 'sockaddr' | 'clientOptions' | 'upstreamOptions'> {
  return { plan, sockaddr: Buffer.from(plan.target), clientOptions: optionsOf(plan.clientKeepalive), upstreamOptions: optionsOf(plan.upstreamKeepalive) }
}

/** A side's keepalive as setsockopt calls; null when the kernel would refuse it. */
function optionsOf (settings: KeepaliveSettings): readonly KeepaliveOption[] | null {
  try {
    return keepaliveOptions(settings)
  } catch {
    return null
  }
}

/**
 * A new socket's keepalive (`options`), then TCP_NODELAY: '' when the keepalive took, else the
 * errno name of the call refused (EINVAL for settings outside the kernel's limits).
 */
function tune (fd: number, options: readonly KeepaliveOption[] | null): string {
  if (options === null) return 'EINVAL'
  for (const { level, name, value } of options) {
    const failed = sys.setInt(fd, level, name, value)
    if (failed < 0) return errnoName(-failed)
  }
  sys.noDelay(fd)
  return ''
}

/** Take a dial off the books; with a failure, close its upstream and report the client. */
function dialEnded (dial: Dial, failure: AcceptFailure | null, code: string): void {
  if (dials.get(dial.upstreamFd) === dial) dials.delete(dial.upstreamFd)
  dial.acceptor.dialing--
  if (failure === null) return
  sys.epollCtl(epfd, EPOLL_CTL_DEL, dial.upstreamFd, 0)
  closeAfterTurn(dial.upstreamFd)
  acceptFailed(dial.acceptor, dial.id, dial.clientFd, dial.client, dial.acceptedAt, failure, 'upstream', code)
  unlistenedWhenDone(dial.acceptor)
}

function onDialEvent (dial: Dial, flags: number): void {
  // A failed handshake reports an error and a hang-up; only then is SO_ERROR read, for its errno.
  if ((flags & (EPOLLERR | EPOLLHUP)) !== 0) {
    const error = sys.socketError(dial.upstreamFd)
    dialEnded(dial, 'dial', error > 0 ? errnoName(error) : 'ECONNABORTED')
    return
  }
  dialEnded(dial, null, '')
  const slot = takeOwnSlot()
  const block = Math.floor(slot / SLOTS_PER_BLOCK)
  const base = (slot % SLOTS_PER_BLOCK) * STAT_FIELDS
  const connectMs = now - dial.acceptedAt
  // A stopping route's connections are reported at once (see Unlisten); before it relays, as an
  // end in this same turn must follow its report.
  const reported = dial.acceptor.closing || reportAfterMs === 0
  if (reported) outbox.push({ kind: 'accepted', route: dial.acceptor.route, id: dial.id, clientFd: dial.clientFd, client: dial.client, upstreamFd: dial.upstreamFd, acceptedAt: dial.acceptedAt, connectMs, failure: null, side: null, code: '', block, base })
  const pair = add({
    id: dial.id,
    clientFd: dial.clientFd,
    upstreamFd: dial.upstreamFd,
    stats: ownBlocks[block] as Float64Array,
    base,
    idleTimeoutMs: dial.acceptor.plan.idleTimeoutMs,
    clientEnded: false,
    lastByteAt: now,
    acceptor: dial.acceptor,
    ownSlot: slot,
    upstreamRegistered: true,
    reported,
    client: dial.client,
    acceptedAt: dial.acceptedAt,
    connectMs
  })
  if (!pair.ended && !reported) unreported.push(pair)
  // The upstream's FIN may have come with this event (a late turn): its edge is spent, so the
  // relay must know now that a short read is not the end of what there is to read.
  if ((flags & EPOLLRDHUP) !== 0) onSocketEvent(dial.upstreamFd, flags)
  unlistenedWhenDone(dial.acceptor)
}

/** Tell the main thread of a connection accepted here: from now on it holds (and closes) the descriptors. */
function report (pair: Pair): void {
  if (pair.reported || pair.ended) return
  pair.reported = true
  const acceptor = pair.acceptor as Acceptor
  outbox.push({
    kind: 'accepted',
    route: acceptor.route,
    id: pair.id,
    clientFd: pair.clientFd,
    client: pair.client,
    upstreamFd: pair.upstreamFd,
    acceptedAt: pair.acceptedAt,
    connectMs: pair.connectMs,
    failure: null,
    side: null,
    code: '',
    block: Math.floor(pair.ownSlot / SLOTS_PER_BLOCK),
    base: (pair.ownSlot % SLOTS_PER_BLOCK) * STAT_FIELDS
  })
}

/** Report the pending pairs that are due (all of them with `force`, or those of `acceptor` only). */
function reportPending (force: boolean, acceptor: Acceptor | null = null): void {
  for (let i = unreportedHead; i < unreported.length; i++) {
    const pair = unreported[i]
    if (pair === null || pair === undefined) continue
    if (!force && now < pair.reportAt) break
    if (acceptor !== null && pair.acceptor !== acceptor) continue
    report(pair)
    if (i === unreportedHead) { unreported[i] = null; unreportedHead++ }
  }
  // Ended and reported ones at the head are done with.
  while (unreportedHead < unreported.length) {
    const pair = unreported[unreportedHead]
    if (pair !== null && pair !== undefined && !pair.ended && !pair.reported) break
    unreported[unreportedHead++] = null
  }
  if (unreportedHead === unreported.length) {
    unreported.length = 0
    unreportedHead = 0
  } else if (unreportedHead > 1024 && unreportedHead * 2 > unreported.length) {
    unreported = unreported.slice(unreportedHead)
    unreportedHead = 0
  }
}

/** When the next pending pair is due for its report (Infinity for none). */
function nextReportAt (): number {
  return unreported[unreportedHead]?.reportAt ?? Infinity
}

/** A reload re-tunes live connections (keepalive.applyToExisting): those not reported yet are this thread's to re-tune. */
function retunePending (acceptor: Acceptor): void {
  const { clientKeepalive, upstreamKeepalive } = acceptor.plan
  for (let i = unreportedHead; i < unreported.length; i++) {
    const pair = unreported[i]
    if (pair === null || pair === undefined || pair.ended || pair.reported || pair.acceptor !== acceptor) continue
    // As Connection.retune: a refused value leaves the connection with what the kernel kept.
    try { applyKeepaliveFd(pair.clientFd, clientKeepalive) } catch {}
    try { applyKeepaliveFd(pair.upstreamFd, upstreamKeepalive) } catch {}
  }
}

function takeOwnSlot (): number {
  const free = ownFreeSlots.pop()
  if (free !== undefined) return free
  const buffer = new SharedArrayBuffer(SLOTS_PER_BLOCK * STAT_FIELDS * Float64Array.BYTES_PER_ELEMENT)
  const first = ownBlocks.length * SLOTS_PER_BLOCK
  ownBlocks.push(new Float64Array(buffer))
  outbox.push({ kind: 'block', buffer })
  for (let slot = first + SLOTS_PER_BLOCK - 1; slot > first; slot--) ownFreeSlots.push(slot)
  return first
}

function sweepDials (): void {
  for (const dial of dials.values()) {
    if (now >= dial.deadline) dialEnded(dial, 'connect-timeout', 'ETIMEDOUT')
  }
  nextDialSweepAt = dials.size === 0 ? Infinity : now + DIAL_SWEEP_MS
}

/** The eventfd woke this thread: messages from the main thread, or pokes (read after the drain, see pokeWorker). */
function readMessages (): void {
  sys.drainSignal(wakeFd)
  for (let message = receiveMessageOnPort(port); message !== undefined; message = receiveMessageOnPort(port)) {
    onMessage(message.message as ToWorker)
  }
  for (const acceptor of acceptors.values()) {
    if (Atomics.exchange(acceptor.pokes, acceptor.worker, 0) === 0) continue
    // Another worker yielded or holds more: look at the loads again, and accept what waits.
    balanceRoute(acceptor)
    if (acceptor.polling) onListenerEvent(acceptor)
  }
}

function sweepIdle (): void {
  for (const pair of idleWatched) {
    if (now - pair.lastActivity >= pair.idleTimeoutMs) end(pair, 'idle', null, 0)
  }
  nextSweepAt = idleWatched.size === 0 ? Infinity : now + sweepEveryMs
  if (idleWatched.size === 0) sweepEveryMs = 1000
}

/**
 * Busy polling. A thread asleep in epoll_wait leaves its CPU idle, and on a VM an idle vCPU halts:
 * every wake-up then goes through the hypervisor, tens of µs per hop (ping-pong through the relay
 * here: 77 µs a round trip sleeping, 42 polling). So after a turn that had events, the thread calls
 * epoll_wait without sleeping for up to `pollWindowUs` first. The window adapts as Linux's haltpoll
 * governor does: it grows (doubling from POLL_GROW_START_US up to busyPollUs) when the thread slept
 * and was woken within busyPollUs, and halves when it slept longer (down to 0), so a flow whose
 * gaps are longer than busyPollUs soon costs no polling. (A 50 µs cap was too close to this
 * machine's request-reply gaps: its p99 went either way; 15 and 25 µs never caught a reply.)
 */
let pollWindowUs = busyPollUs
const POLL_GROW_START_US = 10
/** Shorter windows are not worth a poll: the window closes (0) instead. */
const POLL_MIN_US = 5
/** The last turn had events (socket or wake-up): only then may the thread poll before sleeping. */
let lastTurnBusy = false

/** Wait for events: poll first when the window is open, then sleep up to `timeoutMs`. */
function waitForEvents (timeoutMs: number): number {
  if (busyPollUs === 0 || timeoutMs === 0) return sys.epollWait(epfd, events, MAX_EVENTS, timeoutMs)
  const quietFrom = performance.now()
  if (lastTurnBusy && pollWindowUs > 0) {
    const until = quietFrom + pollWindowUs / 1000
    do {
      const count = sys.epollWait(epfd, events, MAX_EVENTS, 0)
      if (count !== 0) return count
    } while (performance.now() < until)
  }
  const count = sys.epollWait(epfd, events, MAX_EVENTS, timeoutMs)
  const quietUs = (performance.now() - quietFrom) * 1000
  if (count > 0 && quietUs <= busyPollUs) pollWindowUs = Math.min(busyPollUs, Math.max(POLL_GROW_START_US, pollWindowUs * 2))
  else if (quietUs > busyPollUs) pollWindowUs = pollWindowUs / 2 < POLL_MIN_US ? 0 : pollWindowUs / 2
  return count
}

function timeout (): number {
  if (ready.length > 0) return 0
  const next = Math.min(nextSweepAt, nextDialSweepAt, flushAt, nextReportAt())
  // Never blocked for long: a thread inside epoll_wait cannot be terminated, and a process whose
  // data plane was never told to stop (its start failed half-way) must still be able to exit.
  if (next === Infinity) return MAX_WAIT_MS
  return Math.min(MAX_WAIT_MS, Math.max(0, Math.ceil(next - now)))
}

/** Connections counted in the routes' tallies since the last batch. */
let tallied = 0

function emptyTally (route: number): OpenTally {
  return { kind: 'tallied', route, clientFirst: 0, upstreamFirst: 0, bytesFromClient: 0, bytesFromUpstream: 0, connectMs: [] }
}

/** The route's tally into the outbox (when it counts any), and a fresh one for what follows. */
function postTally (acceptor: Acceptor): void {
  const tally = acceptor.tally
  if (tally.connectMs.length === 0) return
  outbox.push(tally)
  tallied -= tally.connectMs.length
  acceptor.tally = emptyTally(acceptor.route)
}

function flush (): void {
  flushAt = Infinity
  if (tallied > 0) for (const acceptor of acceptors.values()) postTally(acceptor)
  const batch = outbox.take()
  if (batch === null) return
  port.postMessage(batch, [batch.numbers.buffer as ArrayBuffer])
}

try {
  while (!stopping) {
    const count = waitForEvents(timeout())
    lastTurnBusy = count > 0
    now = performance.timeOrigin + performance.now()
    turn++
    // Pairs with work left from the last turn go first, then whatever woke us.
    // Two lists swapped each turn: no allocation per turn (a young collection is a pause for every pair).
    const again = ready
    ready = readyNext
    readyNext = again
    for (const pair of again) pump(pair)
    again.length = 0
    // Messages first: a new plan (a reload, an ejected target) applies to this turn's accepts.
    for (let i = 0; i < count; i++) {
      if (eventWords[i * EVENT_WORDS + DATA_WORD] === wakeFd) readMessages()
    }
    for (let i = 0; i < count; i++) {
      const flags = eventWords[i * EVENT_WORDS] ?? 0
      const fd = eventWords[i * EVENT_WORDS + DATA_WORD] ?? -1
      if (fd === wakeFd) continue
      const acceptor = acceptorByFd[fd]
      if (acceptor !== undefined) { onListenerEvent(acceptor); continue }
      if (registeredIn[fd] === turn) continue
      const dial = dials.size === 0 ? undefined : dials.get(fd)
      if (dial !== undefined) onDialEvent(dial, flags)
      else onSocketEvent(fd, flags)
    }
    if (now >= nextSweepAt) sweepIdle()
    if (now >= nextDialSweepAt) sweepDials()
    if (closing.length > 0) { closeAll(closing); closing.length = 0 }
    if (now >= balanceAt) balance()
    if (now >= nextReportAt()) reportPending(false)
    const unposted = outbox.size + tallied
    if (unposted >= FLUSH_EVENTS || now >= flushAt) flush()
    else if (unposted > 0) flushAt = Math.min(flushAt, now + (outbox.urgent ? FLUSH_AFTER_MS : REPORT_FLUSH_MS))
  }
  // Stop: let go of every pair (the main thread closes their sockets); connections still being
  // dialed were never reported, so they are this thread's to close.
  for (const pair of [...byId.values()]) end(pair, 'dropped', null, 0)
  for (const dial of dials.values()) { sys.close(dial.upstreamFd); sys.close(dial.clientFd); Atomics.sub(heldDescriptors, 0, 2) }
  dials.clear()
  for (const acceptor of acceptors.values()) poll(acceptor, false)
  flush()
} finally {
  // Stopped or failed: free what this thread made (pipes in use are closed by end(); a failure
  // leaves them to the process, reported by the count going to zero only for what was closed).
  // Connections still being dialed were never reported: they are this thread's to close. What
  // was not posted yet is posted now (the main thread reads the port once more after the exit).
  for (const dial of dials.values()) { sys.close(dial.upstreamFd); sys.close(dial.clientFd) }
  closeAll(closing)
  // Pairs never reported (a failure): the main thread does not know their descriptors.
  for (const pair of byId.values()) if (!pair.reported) { sys.close(pair.clientFd); sys.close(pair.upstreamFd) }
  try { flush() } catch {}
  for (const pair of [...byId.values()]) { releaseStaging(pair.toUpstream); releaseStaging(pair.toClient) }
  spareBuffers.length = 0
  for (const pipe of spare) closePipe(pipe)
  spare.length = 0
  sys.close(epfd)
  Atomics.store(heldDescriptors, 0, 0)
  port.close()
}
