import { MessageChannel, Worker, receiveMessageOnPort, type MessagePort } from 'node:worker_threads'
import { closeDescriptor, dataPlaneCalls } from '../../sockopt/libc.js'
import type { WakeSignals } from './wake-signals.js'
import {
  ConnectionIds, forEachEvent, SLOTS_PER_BLOCK, STAT_BYTES_FROM_CLIENT, STAT_BYTES_FROM_UPSTREAM, STAT_FIELDS, STAT_LAST_BYTE_AT, STAT_LAST_SILENCE_ENDED_AT,
  STAT_LAST_SILENCE_MS, type AcceptPlan, type Accepted, type DataPlaneTuning, type Finished, type FromWorker, type PairEnded, type Tallied, type ToWorker, type WorkerEvent, type WorkerStart
} from './protocol.js'

// Connection ids: one counter in shared memory, for the main thread and the worker alike.
const connectionIdBuffer = new SharedArrayBuffer(8)
const connectionIds = new ConnectionIds(connectionIdBuffer)

/** The next connection id (process-wide, increasing, shared with the worker). */
export function nextConnectionId (): number {
  return connectionIds.next()
}

/** A connection whose bytes the worker relays; told once when the worker lets go of it. */
export interface SplicedConnection {
  readonly id: number
  /** The statistics the worker writes for it (null once it let go). */
  readonly spliceStats: SpliceStats | null
  relayEnded: (end: PairEnded) => void
}

/** A route whose connections the worker accepts and dials (see AcceptPlan). */
export interface WorkerAcceptor {
  /**
   * The worker accepted a connection (`stats` null when it failed before relaying): the route
   * takes over both descriptors. Returns the connection the worker now relays, if any.
   */
  accepted: (event: Accepted, stats: SpliceStats | null) => SplicedConnection | null
  /** The worker accepted, relayed and closed a connection before reporting it (see Finished). */
  finished: (event: Readonly<Finished>) => void
  /** Connections that did so and closed in order, counted together (see Tallied). */
  tallied: (event: Readonly<Tallied>) => void
  /** The worker no longer touches the listening descriptor it was given. */
  unlistened: () => void
  /** accept4 found no descriptor (or memory) left; the worker stopped polling until resumed. */
  exhausted: (code: string) => void
  /** The worker is gone: the route must accept by itself again. */
  lost: () => void
  /** The worker polls the route's listening socket from now on. */
  listening?: () => void
}

/**
 * A handed-over connection's live statistics, written by the worker into shared memory: byte
 * counts and silence times read here without a message.
 */
export class SpliceStats {
  private readonly block: Float64Array
  private readonly base: number
  constructor (block: Float64Array, base: number) {
    this.block = block
    this.base = base
  }

  /** A count field (bytes, ms). */
  value (field: number): number {
    return this.block[this.base + field] ?? 0
  }

  /** A time field on this thread's performance.now() clock; 0 stays 0 (none). */
  time (field: number): number {
    const absolute = this.block[this.base + field] ?? 0
    return absolute === 0 ? 0 : absolute - performance.timeOrigin
  }
}

/** What the workers accepting for one route share (see Listen): its connection count, each worker's load, the pokes. */
export interface RouteShares {
  live: SharedArrayBuffer
  loads: SharedArrayBuffer
  /** This worker's index in `loads`, `pokes` and `wakeFds`. */
  worker: number
  pollers: SharedArrayBuffer
  pokes: SharedArrayBuffer
  wakeFds: SharedArrayBuffer
}

export interface RelayOptions {
  idleTimeoutMs: number | null
  clientEnded: boolean
  /** performance.now() of the last byte (or of the connect). */
  lastByteAt: number
}

/**
 * The fast engine's data plane, seen from the main thread: it owns the splice worker, the shared
 * statistics, and the table of connections handed over; its pool owns the eventfd that wakes it
 * (WakeSignals). Node keeps
 * owning every socket: the worker reports when it let go of a pair, and only then may the main
 * thread close the descriptors (an fd number closed early could be reused by a new accept while
 * the worker still polls it). The worker starts with the first connection, so routes on `net`
 * never pay for it.
 */
export class SpliceDataPlane {
  private worker: Worker | null = null
  private port: MessagePort | null = null
  private wakeFd = -1
  private wakeQueued = false
  private readonly blocks: Float64Array[] = []
  private readonly freeSlots: number[] = []
  /** Connections the worker holds, by id (the entries are the connections themselves: 48 bytes less each than a record). */
  private readonly live = new Map<number, SplicedConnection>()
  /** The statistics slots of the connections this thread handed over (the worker's own accepts use its blocks). */
  private readonly slots = new Map<number, number>()
  /** Routes the worker accepts for, by the key given to it; and the statistics blocks it made for them. */
  private readonly acceptors = new Map<number, WorkerAcceptor>()
  private nextAcceptorKey = 1
  private readonly workerBlocks: Float64Array[] = []
  /** Callers of replan, in order: the worker confirms each plan in the order it was sent. */
  private planWaiters: Array<() => void> = []
  /** Set when the worker could not start or died: connections then stay on the net relay. */
  private failure: Error | null = null
  private stopped: Promise<void> | null = null
  private readonly onFailure: (err: Error) => void
  /** Written by the worker: descriptors it holds (see WorkerStart). */
  private readonly workerDescriptors = new Int32Array(new SharedArrayBuffer(4))
  /** The descriptor budget as the worker checks it before accepting (see WorkerStart.budget). */
  private readonly budgetShare = new Int32Array(new SharedArrayBuffer(8))

  private readonly tuning: DataPlaneTuning
  /** See connectionRecords. */
  private records = true
  private readonly signals: WakeSignals
  /** This worker's index in the pool (and in `signals`). */
  private readonly index: number

  constructor (tuning: DataPlaneTuning, signals: WakeSignals, index: number, onFailure: (err: Error) => void) {
    this.tuning = tuning
    this.signals = signals
    this.index = index
    this.onFailure = onFailure
  }

  /**
   * Descriptors the data plane holds besides the sockets and its eventfd (the pool counts those):
   * the worker thread's own event loop (libuv's epoll and wake-up descriptors, about 3), its epoll
   * set and its pipes.
   */
  descriptors (): number {
    return this.worker === null ? 0 : 3 + (this.workerDescriptors[0] ?? 0)
  }

  /** The descriptor budget's estimate (without this data plane's descriptors) and its pause mark, for the worker. */
  publishBudget (estimateWithoutExtra: number, high: number): void {
    Atomics.store(this.budgetShare, 0, estimateWithoutExtra)
    Atomics.store(this.budgetShare, 1, high)
  }

  /**
   * Whether each connection the worker closes before reporting it comes with a record of its own
   * (Finished), as a log writing a line per connection needs; without, those closed in order are
   * counted per route (Tallied).
   */
  connectionRecords (wanted: boolean): void {
    if (wanted === this.records) return
    this.records = wanted
    this.send({ type: 'records', wanted })
  }

  /** Connections the worker relays now. */
  get size (): number {
    return this.live.size
  }

  /**
   * Hand a connected pair to the worker. Returns its live statistics, or null when the data plane
   * is unavailable (the worker failed, or the data plane is closing): the caller relays it itself.
   */
  relay (connection: SplicedConnection, clientFd: number, upstreamFd: number, options: RelayOptions): SpliceStats | null {
    if (this.failure !== null || this.stopped !== null) return null
    if (this.worker === null && !this.startWorker()) return null
    const slot = this.takeSlot()
    const block = this.blocks[Math.floor(slot / SLOTS_PER_BLOCK)] as Float64Array
    // Free slots keep their last connection's figures: cleared before anyone reads this one.
    const base = (slot % SLOTS_PER_BLOCK) * STAT_FIELDS
    block.fill(0, base, base + STAT_FIELDS)
    const stats = new SpliceStats(block, base)
    this.live.set(connection.id, connection)
    this.slots.set(connection.id, slot)
    this.updateRef()
    this.send({
      type: 'add',
      id: connection.id,
      clientFd,
      upstreamFd,
      slot,
      idleTimeoutMs: options.idleTimeoutMs ?? 0,
      clientEnded: options.clientEnded,
      lastByteAt: options.lastByteAt + performance.timeOrigin
    })
    return stats
  }

  /**
   * Node does not see the worker's sockets as busy (it polls none of them): the port keeps the
   * event loop alive while the worker holds connections (e.g. during a drain) or accepts for a route.
   */
  private updateRef (): void {
    if (this.live.size > 0 || this.acceptors.size > 0) this.port?.ref()
    else this.port?.unref()
  }

  /**
   * Have the worker accept and dial the route's connections on `fd` (a duplicate of its listening
   * socket, closed by the caller after `unlistened`), sharing the route's counts with the other
   * workers accepting for it (`shared`). Returns the key for the calls below, or null when the data
   * plane is unavailable (the route accepts by itself).
   */
  listen (acceptor: WorkerAcceptor, fd: number, plan: AcceptPlan, shared: RouteShares): number | null {
    if (this.failure !== null || this.stopped !== null) return null
    if (this.worker === null && !this.startWorker()) return null
    const key = this.nextAcceptorKey++
    this.acceptors.set(key, acceptor)
    this.updateRef()
    this.send({ type: 'listen', route: key, fd, plan, ...shared })
    return key
  }

  /** New connections of the route get `plan`; resolves once the worker has it (at once when it is gone). */
  async replan (key: number, plan: AcceptPlan): Promise<void> {
    if (!this.acceptors.has(key) || this.port === null) return
    await new Promise<void>((resolve) => {
      this.planWaiters.push(resolve)
      this.send({ type: 'plan', route: key, plan })
    })
  }

  pauseAccepting (key: number, paused: boolean): void {
    if (this.acceptors.has(key)) this.send({ type: 'pause', route: key, paused })
  }

  /** Stop the worker accepting for the route; its `unlistened` follows. */
  unlisten (key: number): void {
    if (this.acceptors.has(key)) this.send({ type: 'unlisten', route: key })
  }

  /** Ask the worker to let go of a connection now; `relayEnded` follows with `dropped` (or how it ended first). */
  drop (id: number): void {
    // Also for a connection the worker accepted whose report is being read right now (not in
    // `live` yet); the worker ignores ids it no longer holds.
    this.send({ type: 'drop', id })
  }

  /** Stop the worker once it let go of every connection (it is told to drop those left). Idempotent. */
  async close (): Promise<void> {
    this.stopped ??= this.stopWorker()
    await this.stopped
  }

  private startWorker (): boolean {
    try {
      const wakeFd = this.signals.open(this.index)
      if (wakeFd < 0) throw new Error(`eventfd failed: errno ${-wakeFd}`)
      this.wakeFd = wakeFd
      const { port1, port2 } = new MessageChannel()
      const worker = new Worker(new URL('./splice-worker.js', import.meta.url), {
        workerData: { port: port2, wakeFd, descriptors: this.workerDescriptors.buffer as SharedArrayBuffer, ids: connectionIdBuffer, budget: this.budgetShare.buffer as SharedArrayBuffer, records: this.records, ...this.tuning } satisfies WorkerStart,
        transferList: [port2],
        // The data plane uses little heap: its memory is the kernel's pipes and sockets, and bulk
        // buffers, which live outside the heap. Its young generation is held to 1 MB, below what
        // the process flag's 1 MiB semi-spaces allow: 0.2 KB less RSS per idle connection with two
        // workers (9,000 held), at no measured cost in connection rate or throughput
        // (docs/performance.md).
        resourceLimits: { maxOldGenerationSizeMb: 64, maxYoungGenerationSizeMb: 1 }
      })
      this.port = port1
      this.worker = worker
      port1.on('message', (batch: FromWorker) => { this.received(batch) })
      worker.on('error', (err) => { this.fail(err) })
      worker.on('exit', (code) => { if (this.stopped === null) this.fail(new Error(`splice worker exited with code ${code}`)) })
      // Neither keeps the process alive by itself: live sockets do, and close() stops the worker.
      port1.unref()
      worker.unref()
      for (const block of this.blocks) this.send({ type: 'block', buffer: block.buffer as SharedArrayBuffer })
      return true
    } catch (err) {
      this.fail(err as Error)
      return false
    }
  }

  private takeSlot (): number {
    const free = this.freeSlots.pop()
    if (free !== undefined) return free
    const block = new Float64Array(new SharedArrayBuffer(SLOTS_PER_BLOCK * STAT_FIELDS * Float64Array.BYTES_PER_ELEMENT))
    const first = this.blocks.length * SLOTS_PER_BLOCK
    this.blocks.push(block)
    this.send({ type: 'block', buffer: block.buffer as SharedArrayBuffer })
    for (let slot = first + SLOTS_PER_BLOCK - 1; slot > first; slot--) this.freeSlots.push(slot)
    return first
  }

  private send (message: ToWorker): void {
    if (this.port === null) return
    this.port.postMessage(message)
    // One wake-up for every message posted in this turn of the event loop (connections that
    // connected together are handed over together), after its I/O callbacks.
    if (this.wakeQueued) return
    this.wakeQueued = true
    setImmediate(this.wake)
  }

  private readonly wake = (): void => {
    this.wakeQueued = false
    if (this.wakeFd >= 0) dataPlaneCalls().signal(this.wakeFd)
  }

  /** A batch of the worker's reports: ends, accepted connections, statistics blocks, route changes. */
  private received (batch: FromWorker): void {
    forEachEvent(batch, this.handle)
    this.updateRef()
  }

  /** One of the worker's reports (see forEachEvent: read now, never kept). */
  private readonly handle = (event: Readonly<WorkerEvent>): void => {
    switch (event.kind) {
      case 'ended': {
        const connection = this.live.get(event.id)
        if (connection === undefined) return
        this.live.delete(event.id)
        connection.relayEnded(event)
        // Slots of the worker's own blocks are its to free.
        const slot = this.slots.get(event.id)
        if (slot !== undefined) { this.slots.delete(event.id); this.freeSlots.push(slot) }
        break
      }
      case 'block':
        this.workerBlocks.push(new Float64Array(event.buffer))
        break
      case 'accepted': {
        // Its two descriptors move from the worker's count to the route's (acceptor.accepted).
        Atomics.sub(this.workerDescriptors, 0, 2)
        const acceptor = this.acceptors.get(event.route)
        const block = this.workerBlocks[event.block]
        const stats = event.failure === null && block !== undefined ? new SpliceStats(block, event.base) : null
        if (acceptor === undefined) {
          // Not reachable (a route is unlistened only after its last report); closed rather than leaked.
          if (stats === null) { closeDescriptor(event.clientFd); break }
          const { clientFd, upstreamFd } = event
          this.live.set(event.id, { id: event.id, spliceStats: stats, relayEnded: () => { closeDescriptor(clientFd); closeDescriptor(upstreamFd) } })
          this.drop(event.id)
          break
        }
        const connection = acceptor.accepted(event, stats)
        if (connection !== null && stats !== null) this.live.set(event.id, connection)
        break
      }
      case 'finished':
        this.acceptors.get(event.route)?.finished(event)
        break
      case 'tallied':
        this.acceptors.get(event.route)?.tallied(event)
        break
      case 'unlistened': {
        const acceptor = this.acceptors.get(event.route)
        this.acceptors.delete(event.route)
        acceptor?.unlistened()
        break
      }
      case 'exhausted':
        this.acceptors.get(event.route)?.exhausted(event.code)
        break
      case 'listening':
        this.acceptors.get(event.route)?.listening?.()
        break
      case 'planned':
        this.planWaiters.shift()?.()
        break
    }
  }

  /** The worker is gone: every connection it held is told (`error` with no side: they close with upstream-error), none is handed over again. */
  private fail (err: Error): void {
    if (this.failure !== null) return
    this.failure = err
    this.onFailure(err)
    this.readLeftovers()
    this.releaseLive('error')
    this.releaseAcceptors()
    this.release()
  }

  /** Handle what the worker posted that the port has not delivered yet (it stopped or failed). */
  private readLeftovers (): void {
    const port = this.port
    if (port === null) return
    for (let message = receiveMessageOnPort(port); message !== undefined; message = receiveMessageOnPort(port)) {
      this.received(message.message as FromWorker)
    }
  }

  /** Routes the worker accepted for accept by themselves again. */
  private releaseAcceptors (): void {
    const acceptors = [...this.acceptors.values()]
    this.acceptors.clear()
    for (const acceptor of acceptors) acceptor.lost()
  }

  private async stopWorker (): Promise<void> {
    const worker = this.worker
    if (worker === null || this.failure !== null) { this.release(); return }
    const exited = new Promise<void>((resolve) => { worker.once('exit', () => { resolve() }) })
    // Referenced again while stopping: awaiting an unreferenced worker would let the process end first.
    worker.ref()
    this.send({ type: 'stop' })
    await exited
    // The worker's last batches (the pairs it let go of on stop, connections it accepted) may
    // still wait on the port: read them now, then release whatever is left.
    this.readLeftovers()
    this.releaseLive('dropped')
    this.releaseAcceptors()
    this.release()
  }

  /** Tell every connection still held that the worker let go of it (`error`: it failed; `dropped`: it stopped). */
  private releaseLive (how: 'error' | 'dropped'): void {
    const live = [...this.live.values()]
    this.live.clear()
    this.slots.clear()
    // The worker is gone: the slots hold the final figures.
    for (const connection of live) {
      const stats = connection.spliceStats
      const value = (field: number): number => stats?.value(field) ?? 0
      connection.relayEnded({
        kind: 'ended',
        id: connection.id,
        how,
        side: null,
        errno: 0,
        firstFin: null,
        bytesFromClient: value(STAT_BYTES_FROM_CLIENT),
        bytesFromUpstream: value(STAT_BYTES_FROM_UPSTREAM),
        lastByteAt: value(STAT_LAST_BYTE_AT),
        lastSilenceMs: value(STAT_LAST_SILENCE_MS),
        lastSilenceEndedAt: value(STAT_LAST_SILENCE_ENDED_AT)
      })
    }
  }

  private release (): void {
    for (const waiter of this.planWaiters.splice(0)) waiter()
    this.port?.close()
    this.port = null
    // The eventfd stays open (other workers may still poke it): the pool closes it.
    this.wakeFd = -1
    this.worker = null
  }
}
