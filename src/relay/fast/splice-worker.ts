import { receiveMessageOnPort, workerData } from 'node:worker_threads'
import {
  EAGAIN, EPOLLERR, EPOLLET, EPOLLHUP, EPOLLIN, EPOLLOUT, EPOLLRDHUP, EPOLL_CTL_ADD, EPOLL_CTL_DEL, EPOLL_EVENT_DATA, EPOLL_EVENT_SIZE,
  dataPlaneCalls
} from '../../sockopt/libc.js'
import {
  SLOTS_PER_BLOCK, STAT_BYTES_FROM_CLIENT, STAT_BYTES_FROM_UPSTREAM, STAT_FIELDS, STAT_LAST_BYTE_AT, STAT_LAST_SILENCE_ENDED_AT,
  STAT_LAST_SILENCE_MS, type AddPair, type PairEnded, type ToWorker, type WorkerStart
} from './protocol.js'

// The fast engine's data plane: one thread, one epoll set, splice(2) through pooled pipes. Bytes
// go socket -> pipe -> socket inside the kernel and never enter JavaScript. The thread blocks in
// epoll_wait (inside koffi), so its own event loop never runs: the main thread wakes it through an
// eventfd in the same epoll set, and it reads the port with receiveMessageOnPort.

const sys = dataPlaneCalls()
const { port, wakeFd, descriptors } = workerData as WorkerStart
/** What this thread holds, for the main thread's descriptor budget: the epoll set and two per pipe. */
const heldDescriptors = new Int32Array(descriptors)

/** Pipe size asked for (fs.pipe-max-size is 1 MiB by default): one splice moves up to this much. */
const PIPE_SIZE = 1 << 20
/** Free pipes kept for reuse; beyond this they are closed. */
const SPARE_PIPES = 16
/** Bytes one direction may move per turn before others get theirs (edge-triggered: it goes on a ready list). */
const TURN_BYTES = 4 << 20
/** Shortest quiet (ms) that counts as a silence, as in the net engine. */
const SILENCE_MIN_MS = 1000
const MAX_EVENTS = 512
/** Retry after this many ms when no pipe could be made (descriptors ran out). */
const PIPE_RETRY_MS = 20

interface Pipe { readEnd: number, writeEnd: number, capacity: number }

/** One direction of a pair: bytes read from `src` into the pipe, then written from it to `dst`. */
interface Direction {
  readonly src: number
  readonly dst: number
  readonly fromClient: boolean
  pipe: Pipe | null
  /** Bytes in the pipe not yet written to dst. */
  pending: number
  /** Edge-triggered readiness: set by an event, cleared by EAGAIN. */
  readable: boolean
  writable: boolean
  /** src sent its FIN. */
  eof: boolean
  /** The FIN was passed on: shutdown(dst, SHUT_WR). */
  done: boolean
  /** Waiting for a pipe (descriptors ran out). */
  starved: boolean
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
}

const epfd = sys.epollCreate()
if (epfd < 0) throw new Error(`epoll_create1 failed: errno ${-epfd}`)
sys.epollCtl(epfd, EPOLL_CTL_ADD, wakeFd, EPOLLIN)
heldDescriptors[0] = 1

const events = Buffer.alloc(MAX_EVENTS * EPOLL_EVENT_SIZE)
const blocks: Float64Array[] = []
/** Pairs by descriptor: both of a pair's sockets map to it. */
const byFd: Array<Pair | undefined> = []
const byId = new Map<number, Pair>()
const spare: Pipe[] = []
/** Pairs with work left after their turn, or waiting for a pipe. */
let ready: Pair[] = []
const idleWatched = new Set<Pair>()
let sweepEveryMs = 1000
let nextSweepAt = Infinity
let ended: PairEnded[] = []
let stopping = false
/** The worker's clock as an absolute time, comparable with the main thread's (see STAT_LAST_BYTE_AT). */
let now = performance.timeOrigin + performance.now()

function direction (src: number, dst: number, fromClient: boolean, ended: boolean): Direction {
  return { src, dst, fromClient, pipe: null, pending: 0, readable: !ended, writable: true, eof: ended, done: false, starved: false }
}

function add (message: AddPair): void {
  const block = blocks[Math.floor(message.slot / SLOTS_PER_BLOCK)]
  if (block === undefined) throw new Error(`statistics block for slot ${message.slot} missing`)
  const pair: Pair = {
    id: message.id,
    clientFd: message.clientFd,
    upstreamFd: message.upstreamFd,
    toUpstream: direction(message.clientFd, message.upstreamFd, true, message.clientEnded),
    toClient: direction(message.upstreamFd, message.clientFd, false, false),
    stats: block,
    base: (message.slot % SLOTS_PER_BLOCK) * STAT_FIELDS,
    idleTimeoutMs: message.idleTimeoutMs,
    firstFin: message.clientEnded ? 'client' : null,
    lastActivity: now,
    ended: false
  }
  pair.stats[pair.base + STAT_BYTES_FROM_CLIENT] = 0
  pair.stats[pair.base + STAT_BYTES_FROM_UPSTREAM] = 0
  pair.stats[pair.base + STAT_LAST_BYTE_AT] = message.lastByteAt
  pair.stats[pair.base + STAT_LAST_SILENCE_MS] = 0
  pair.stats[pair.base + STAT_LAST_SILENCE_ENDED_AT] = 0
  byId.set(pair.id, pair)
  byFd[pair.clientFd] = pair
  byFd[pair.upstreamFd] = pair
  const interest = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET
  const failedClient = sys.epollCtl(epfd, EPOLL_CTL_ADD, pair.clientFd, interest)
  if (failedClient < 0) { end(pair, 'error', 'client', -failedClient); return }
  const failedUpstream = sys.epollCtl(epfd, EPOLL_CTL_ADD, pair.upstreamFd, interest)
  if (failedUpstream < 0) { end(pair, 'error', 'upstream', -failedUpstream); return }
  if (pair.idleTimeoutMs > 0) {
    idleWatched.add(pair)
    // Check idle pairs often enough to close each within ~5% of its timeout.
    sweepEveryMs = Math.min(sweepEveryMs, Math.max(50, Math.floor(pair.idleTimeoutMs / 20)))
    nextSweepAt = Math.min(nextSweepAt, now + sweepEveryMs)
  }
  // The end of a client FIN seen by Node is passed on once the (empty) pipe allows it.
  pump(pair)
}

/** Let go of a pair: out of the epoll set and every table; its pipes back to the pool (emptied ones only). */
function end (pair: Pair, how: PairEnded['how'], side: PairEnded['side'], errno: number): void {
  if (pair.ended) return
  pair.ended = true
  sys.epollCtl(epfd, EPOLL_CTL_DEL, pair.clientFd, 0)
  sys.epollCtl(epfd, EPOLL_CTL_DEL, pair.upstreamFd, 0)
  if (byFd[pair.clientFd] === pair) byFd[pair.clientFd] = undefined
  if (byFd[pair.upstreamFd] === pair) byFd[pair.upstreamFd] = undefined
  byId.delete(pair.id)
  idleWatched.delete(pair)
  releasePipe(pair.toUpstream)
  releasePipe(pair.toClient)
  ended.push({ id: pair.id, how, side, errno, firstFin: pair.firstFin })
}

function takePipe (): Pipe | null {
  const reused = spare.pop()
  if (reused !== undefined) return reused
  const made = sys.pipe(PIPE_SIZE)
  if (typeof made === 'number') return null
  heldDescriptors[0] = (heldDescriptors[0] ?? 0) + 2
  return { readEnd: made[0], writeEnd: made[1], capacity: made[2] }
}

function closePipe (pipe: Pipe): void {
  sys.close(pipe.readEnd)
  sys.close(pipe.writeEnd)
  heldDescriptors[0] = (heldDescriptors[0] ?? 0) - 2
}

function releasePipe (dir: Direction): void {
  const pipe = dir.pipe
  if (pipe === null) return
  dir.pipe = null
  // A pipe with bytes left in it (a failed pair) is closed: its contents belong to nobody.
  if (dir.pending === 0 && spare.length < SPARE_PIPES) spare.push(pipe)
  else closePipe(pipe)
  dir.pending = 0
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
 */
function pumpDirection (pair: Pair, dir: Direction): 'more' | 'idle' | 'failed' {
  let budget = TURN_BYTES
  for (;;) {
    let progressed = false
    if (!dir.eof && dir.readable) {
      if (dir.pipe === null) {
        dir.pipe = takePipe()
        dir.starved = dir.pipe === null
        if (dir.pipe === null) return 'more'
      }
      const room = dir.pipe.capacity - dir.pending
      if (room > 0) {
        const n = sys.splice(dir.src, dir.pipe.writeEnd, room)
        if (n > 0) {
          dir.pending += n
          budget -= n
          counted(pair, dir, n)
          progressed = true
        } else if (n === 0) {
          // EOF. A reset that arrived with unread bytes can look like one: the kernel still knows.
          const error = sys.socketError(dir.src)
          if (error !== 0) { end(pair, 'error', sideOf(pair, dir.src), error); return 'failed' }
          dir.eof = true
          pair.firstFin ??= dir.fromClient ? 'client' : 'upstream'
          progressed = true
        } else if (n === -EAGAIN) {
          // With bytes in the pipe, EAGAIN may mean the pipe ran out of slots (one per packet,
          // long before its bytes run out), not that the socket is empty: try again once the
          // pipe drained. Only an empty pipe proves the socket empty.
          if (dir.pending === 0) dir.readable = false
        } else {
          end(pair, 'error', sideOf(pair, dir.src), -n)
          return 'failed'
        }
      }
    }
    if (dir.pending > 0 && dir.writable && dir.pipe !== null) {
      const n = sys.splice(dir.pipe.readEnd, dir.dst, dir.pending)
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
    if (dir.pending === 0 && dir.pipe !== null) releasePipe(dir)
    if (dir.eof && dir.pending === 0 && !dir.done) {
      dir.done = true
      const n = sys.shutdownWrite(dir.dst)
      // ENOTCONN: the peer is already gone; its own event tells how.
      if (n < 0 && n !== -107) { end(pair, 'error', sideOf(pair, dir.dst), -n); return 'failed' }
    }
    if (!progressed) return 'idle'
    if (budget <= 0) return 'more'
  }
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
  if ((flags & (EPOLLOUT | EPOLLHUP | EPOLLERR)) !== 0) toThis.writable = true
  pump(pair)
}

function onMessage (message: ToWorker): void {
  switch (message.type) {
    case 'block':
      blocks.push(new Float64Array(message.buffer))
      break
    case 'add':
      add(message)
      break
    case 'drop': {
      const pair = byId.get(message.id)
      // An unknown id already ended on its own: that report is on its way.
      if (pair !== undefined) end(pair, 'dropped', null, 0)
      break
    }
    case 'stop':
      stopping = true
      break
  }
}

function readMessages (): void {
  sys.drainSignal(wakeFd)
  for (let message = receiveMessageOnPort(port); message !== undefined; message = receiveMessageOnPort(port)) {
    onMessage(message.message as ToWorker)
  }
}

function sweepIdle (): void {
  for (const pair of idleWatched) {
    if (now - pair.lastActivity >= pair.idleTimeoutMs) end(pair, 'idle', null, 0)
  }
  nextSweepAt = idleWatched.size === 0 ? Infinity : now + sweepEveryMs
  if (idleWatched.size === 0) sweepEveryMs = 1000
}

function timeout (): number {
  // Starved pairs wait a little for descriptors instead of spinning; others go on at once.
  if (ready.some((pair) => !pair.toUpstream.starved && !pair.toClient.starved)) return 0
  if (ready.length > 0) return Math.min(PIPE_RETRY_MS, nextSweepAt === Infinity ? PIPE_RETRY_MS : Math.max(0, Math.ceil(nextSweepAt - now)))
  if (nextSweepAt === Infinity) return -1
  return Math.max(0, Math.ceil(nextSweepAt - now))
}

function flush (): void {
  if (ended.length === 0) return
  port.postMessage(ended)
  ended = []
}

try {
  while (!stopping) {
    const count = sys.epollWait(epfd, events, MAX_EVENTS, timeout())
    now = performance.timeOrigin + performance.now()
    // Pairs with work left from the last turn go first (a starved one retries for its pipe), then
    // whatever woke us.
    const again = ready
    ready = []
    for (const pair of again) pump(pair)
    for (let i = 0; i < count; i++) {
      const flags = events.readUInt32LE(i * EPOLL_EVENT_SIZE)
      const fd = events.readUInt32LE(i * EPOLL_EVENT_SIZE + EPOLL_EVENT_DATA)
      if (fd === wakeFd) readMessages()
      else onSocketEvent(fd, flags)
    }
    if (now >= nextSweepAt) sweepIdle()
    flush()
  }
  // Stop: let go of every pair (the main thread closes their sockets).
  for (const pair of [...byId.values()]) end(pair, 'dropped', null, 0)
  flush()
} finally {
  // Stopped or failed: free what this thread made (pipes in use are closed by end(); a failure
  // leaves them to the process, reported by the count going to zero only for what was closed).
  for (const pair of [...byId.values()]) { releasePipe(pair.toUpstream); releasePipe(pair.toClient) }
  for (const pipe of spare) closePipe(pipe)
  spare.length = 0
  sys.close(epfd)
  heldDescriptors[0] = 0
  port.close()
}
