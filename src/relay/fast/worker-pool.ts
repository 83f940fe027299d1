import { closeDescriptor, duplicateDescriptor } from '../../sockopt/libc.js'
import { SpliceDataPlane, type RelayOptions, type SpliceStats, type SplicedConnection, type WorkerAcceptor } from './data-plane.js'
import type { WorkerFailure } from '../engine.js'
import { WakeSignals, pokeWorker } from './wake-signals.js'
import { NOT_ACCEPTING, type AcceptPlan, type Accepted, type DataPlaneTuning, type Finished, type Tallied } from './protocol.js'

/** One worker's share of a route's accepting: its key there and its descriptor of the listening socket. */
interface Member {
  readonly plane: SpliceDataPlane
  /** The worker's index in the pool (and in the route's loads). */
  readonly worker: number
  key: number
  readonly fd: number
  /** The descriptor is a duplicate this pool made (the first worker uses the caller's). */
  readonly duplicate: boolean
}

/** A route that every worker accepts for; its acceptor hears once when all of them let go. */
interface SharedListener {
  /** Its key in `listeners` (0 until every worker was asked). */
  key: number
  readonly acceptor: WorkerAcceptor
  readonly members: Set<Member>
  /** Each worker's load for the route (see Listen.loads). */
  readonly loads: Int32Array
  /** Members that said they poll the listening socket; `polled` resolves once all of them did (or let go). */
  listening: number
  readonly polled: Promise<void>
  allPolling: () => void
  /** A worker died: the others were told to let go, and the route accepts by itself again after. */
  lost: boolean
  /** Each worker's poke flag for the route (see Listen.pokes). */
  readonly pokes: Int32Array
}

/**
 * The fast engine's data plane: `count` splice workers, each a thread with its own epoll set.
 * Every worker polls each accepting route's listening socket (EPOLLEXCLUSIVE: one of those
 * waiting is woken per connection, so a busy worker leaves new clients to an idle one); pairs
 * the main thread hands over go to the worker relaying the fewest. Connection ids come from one
 * counter, so a drop can be sent to every worker: only the one holding the id answers.
 * Workers start with the first connection or route that needs them.
 */
export class SpliceWorkers {
  private readonly planes: SpliceDataPlane[]
  private readonly listeners = new Map<number, SharedListener>()
  private nextKey = 1
  /** Duplicates of listening sockets held for workers beyond the first. */
  private duplicates = 0
  /** The workers' eventfds: closed once every worker stopped (see WakeSignals). */
  private readonly signals: WakeSignals

  /** `tuning`: each worker's (see WorkerStart). */
  constructor (count: number, tuning: DataPlaneTuning, onFailure: (err: Error, failure: WorkerFailure) => void) {
    if (!Number.isInteger(count) || count < 1) throw new RangeError(`worker count must be a positive integer, got ${count}`)
    let workersLeft = count
    this.signals = new WakeSignals(count)
    this.planes = Array.from({ length: count }, (_, worker) => new SpliceDataPlane(tuning, this.signals, worker, (err) => {
      workersLeft--
      onFailure(err, { worker, workersLeft })
    }))
  }

  /** See SpliceDataPlane.connectionRecords. */
  connectionRecords (wanted: boolean): void {
    for (const plane of this.planes) plane.connectionRecords(wanted)
  }

  /** How many workers there are (started or not). */
  get workers (): number {
    return this.planes.length
  }

  /** Connections relayed now, per worker. */
  sizes (): number[] {
    return this.planes.map((plane) => plane.size)
  }

  /** Connections relayed now by all workers. */
  get size (): number {
    let total = 0
    for (const plane of this.planes) total += plane.size
    return total
  }

  /** Descriptors the workers hold besides the sockets (see SpliceDataPlane.descriptors). */
  descriptors (): number {
    let total = this.duplicates + this.signals.count
    for (const plane of this.planes) total += plane.descriptors()
    return total
  }

  /** Each worker checks the budget against the estimate plus what the other workers hold. */
  publishBudget (estimateWithoutExtra: number, high: number): void {
    const all = this.descriptors()
    for (const plane of this.planes) plane.publishBudget(estimateWithoutExtra + all - plane.descriptors(), high)
  }

  /** Hand a connected pair to the worker relaying the fewest; null when none can take it. */
  relay (connection: SplicedConnection, clientFd: number, upstreamFd: number, options: RelayOptions): SpliceStats | null {
    let least = this.planes[0] as SpliceDataPlane
    for (const plane of this.planes) if (plane.size < least.size) least = plane
    const stats = least.relay(connection, clientFd, upstreamFd, options)
    if (stats !== null) return stats
    // That worker failed or is stopping: any other that can take it.
    for (const plane of this.planes) {
      if (plane === least) continue
      const taken = plane.relay(connection, clientFd, upstreamFd, options)
      if (taken !== null) return taken
    }
    return null
  }

  /**
   * Have every worker accept the route's connections: the first on `fd` (the caller's, closed by
   * it after `unlistened`), the others on duplicates of it. Null when no worker could take it.
   */
  listen (acceptor: WorkerAcceptor, fd: number, plan: AcceptPlan): number | null {
    // Until a worker says otherwise, it does not accept for the route: one that never got to
    // (it failed, or no descriptor was left for its duplicate) never counts as the least busy.
    const loads = new Int32Array(new SharedArrayBuffer(this.planes.length * Int32Array.BYTES_PER_ELEMENT)).fill(NOT_ACCEPTING)
    const pokes = new SharedArrayBuffer(this.planes.length * Int32Array.BYTES_PER_ELEMENT)
    const wakeFds = this.signals.fds.buffer as SharedArrayBuffer
    let allPolling = (): void => {}
    const polled = new Promise<void>((resolve) => { allPolling = resolve })
    const shared: SharedListener = { key: 0, acceptor, members: new Set(), loads, listening: 0, polled, allPolling, lost: false, pokes: new Int32Array(pokes) }
    // maxConnections counts the route's connections in every worker.
    const live = new SharedArrayBuffer(Int32Array.BYTES_PER_ELEMENT)
    const pollers = new SharedArrayBuffer(Int32Array.BYTES_PER_ELEMENT)
    for (const [worker, plane] of this.planes.entries()) {
      const duplicate = shared.members.size > 0
      let memberFd = fd
      if (duplicate) {
        try {
          memberFd = duplicateDescriptor(fd)
        } catch {
          // No descriptor left: the workers listening already will do.
          break
        }
        this.duplicates++
      }
      const member: Member = { plane, worker, key: 0, fd: memberFd, duplicate }
      const key = plane.listen(this.memberAcceptor(shared, member), memberFd, plan, { live, loads: loads.buffer as SharedArrayBuffer, worker, pollers, pokes, wakeFds })
      if (key === null) { this.closeMember(member); continue }
      member.key = key
      shared.members.add(member)
    }
    if (shared.members.size === 0) return null
    shared.key = this.nextKey++
    this.listeners.set(shared.key, shared)
    return shared.key
  }

  /** Resolves once every worker accepting for a route polls its listening socket (they start in parallel, a moment after listen). */
  async listening (): Promise<void> {
    await Promise.all([...this.listeners.values()].map(async (shared) => { await shared.polled }))
  }

  /** New connections of the route get `plan`; resolves once every worker has it. */
  async replan (key: number, plan: AcceptPlan): Promise<void> {
    const shared = this.listeners.get(key)
    if (shared === undefined) return
    await Promise.all([...shared.members].map(async (member) => { await member.plane.replan(member.key, plan) }))
  }

  pauseAccepting (key: number, paused: boolean): void {
    for (const member of this.listeners.get(key)?.members ?? []) member.plane.pauseAccepting(member.key, paused)
  }

  /** Stop every worker accepting for the route; its `unlistened` follows once all let go. */
  unlisten (key: number): void {
    for (const member of this.listeners.get(key)?.members ?? []) member.plane.unlisten(member.key)
  }

  /** Ask the worker holding the connection to let go of it now (see SpliceDataPlane.drop). */
  drop (id: number): void {
    for (const plane of this.planes) plane.drop(id)
  }

  /** Stop every worker once it let go of its connections, then close their eventfds. Idempotent. */
  async close (): Promise<void> {
    await Promise.all(this.planes.map(async (plane) => { await plane.close() }))
    this.signals.close()
  }

  private closeMember (member: Member): void {
    if (!member.duplicate) return
    closeDescriptor(member.fd)
    this.duplicates--
  }

  /** What one worker says about a shared route, gathered for the route's own acceptor. */
  private memberAcceptor (shared: SharedListener, member: Member): WorkerAcceptor {
    const pokeOthers = (): void => { for (const other of shared.members) if (other !== member) pokeWorker(shared.pokes, this.signals.fds, other.worker) }
    let polling = false
    const settled = (): void => { if (shared.listening >= shared.members.size) shared.allPolling() }
    const left = (): void => {
      if (!shared.members.delete(member)) return
      if (polling) shared.listening--
      settled()
      // A worker that died wrote nothing more: the others must not wait for it to take clients.
      Atomics.store(shared.loads, member.worker, NOT_ACCEPTING)
      this.closeMember(member)
      if (shared.members.size > 0) return
      this.listeners.delete(shared.key)
      if (shared.lost) shared.acceptor.lost()
      else shared.acceptor.unlistened()
    }
    return {
      accepted: (event: Accepted, stats: SpliceStats | null) => shared.acceptor.accepted(event, stats),
      finished: (event: Readonly<Finished>) => { shared.acceptor.finished(event) },
      tallied: (event: Readonly<Tallied>) => { shared.acceptor.tallied(event) },
      // A worker that stopped polling may leave clients waiting that no other was woken for.
      exhausted: (code: string) => { shared.acceptor.exhausted(code); pokeOthers() },
      listening: () => {
        if (polling || !shared.members.has(member)) return
        polling = true
        shared.listening++
        settled()
      },
      unlistened: left,
      lost: () => {
        // The route goes back to accepting by itself once the other workers let go too.
        if (!shared.lost) {
          shared.lost = true
          for (const other of shared.members) if (other !== member) other.plane.unlisten(other.key)
        }
        left()
      }
    }
  }
}
