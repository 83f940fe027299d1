import { isDeepStrictEqual } from 'node:util'
import { listenCollides } from '../../config/routes.js'
import type { RouteConfig } from '../../config/types.js'
import { KaproxyError } from '../../errors.js'
import type { ApplyResult, ConnectionRecord, Engine, EngineObserver } from '../engine.js'
import type { UpstreamState } from '../../upstream/pool.js'
import type { UpstreamTarget } from '../../upstream/target.js'
import { SpliceWorkers } from '../fast/worker-pool.js'
import { DescriptorBudget } from './descriptor-budget.js'
import { probeRouteSocketMark, RouteListener } from './route-listener.js'

/**
 * Deep equality of resolved route settings. Functions (an address rule's `matches`) are derived
 * from the data beside them (its `text`), so they are skipped rather than compared by identity.
 */
export function sameSettings (a: unknown, b: unknown): boolean {
  if (a === b) return true
  if (typeof a === 'function' && typeof b === 'function') return true
  if (typeof a !== 'object' || typeof b !== 'object' || a === null || b === null || Array.isArray(a) !== Array.isArray(b)) return false
  const left = a as Record<string, unknown>
  const right = b as Record<string, unknown>
  const keys = Object.keys(left)
  return keys.length === Object.keys(right).length && keys.every((key) => Object.hasOwn(right, key) && sameSettings(left[key], right[key]))
}

/**
 * The relay engine: each route accepts and dials with net.Sockets (keepalive, pools, PROXY
 * protocol, loop guard); a connected pair is then relayed by the route's engine, `net` (Node
 * streams) or `fast` (handed to the splice worker of `dataPlane`).
 */
export class NetEngine implements Engine {
  private readonly observer: EngineObserver
  /** Descriptors, shared by every route: accepting pauses for all when they run short. */
  readonly budget: DescriptorBudget
  /** The splice workers shared by every route on `fast`; started by the first route or connection that needs them. */
  readonly dataPlane: SpliceWorkers
  /** The configured routes' listeners, in config order. */
  private listeners = new Map<string, RouteListener>()
  /** Listeners of removed routes whose connections are still draining. */
  private readonly retiring = new Set<RouteListener>()
  private applying: Promise<unknown> = Promise.resolve()
  private draining: Promise<void> | null = null
  private closing: Promise<void> | null = null

  constructor (observer: EngineObserver = {}, options: { workers?: number, bulkBuffers?: number, reportAfterMs?: number, busyPoll?: { us: number } } = {}) {
    this.observer = observer
    this.dataPlane = new SpliceWorkers(options.workers ?? 1, { bulkBuffers: options.bulkBuffers ?? 0, reportAfterMs: options.reportAfterMs ?? 0, busyPollUs: options.busyPoll?.us ?? 0 }, (err, failure) => { observer.onDataPlaneFailed?.(err, failure) })
    this.budget = new DescriptorBudget(observer, {
      extra: () => this.dataPlane.descriptors(),
      publish: (estimate, high) => { this.dataPlane.publishBudget(estimate, high) }
    })
  }

  async start (routes: readonly RouteConfig[]): Promise<void> {
    const started: RouteListener[] = []
    try {
      for (const route of routes) {
        const listener = new RouteListener(route, this.observer, this.budget, this.dataPlane)
        started.push(listener)
        await listener.listen()
        this.listeners.set(route.name, listener)
      }
    } catch (err) {
      await Promise.all(started.map(async (listener) => { await listener.close() }))
      this.listeners.clear()
      await this.dataPlane.close()
      throw err
    }
  }

  address (route: string): string | null {
    return this.listeners.get(route)?.address ?? null
  }

  upstreams (route: string): Array<{ target: UpstreamTarget, state: UpstreamState, active: number }> {
    return this.listeners.get(route)?.pool.members.map((m) => ({ target: m.target, state: m.state, active: m.active })) ?? []
  }

  acceptedBy (route: string): 'worker' | 'main' | null {
    return this.listeners.get(route)?.acceptedBy ?? null
  }

  * connections (route?: string): Iterable<ConnectionRecord> {
    for (const listener of [...this.listeners.values(), ...this.retiring]) {
      if (route === undefined || listener.route.name === route) yield * listener.connections
    }
  }

  async apply (routes: readonly RouteConfig[]): Promise<ApplyResult> {
    const run = this.applying.then(async () => await this.applyNow(routes))
    this.applying = run.catch(() => {})
    return await run
  }

  private stopped (): boolean {
    return this.draining !== null || this.closing !== null
  }

  private async applyNow (routes: readonly RouteConfig[]): Promise<ApplyResult> {
    if (this.stopped()) throw new KaproxyError('KAPROXY_ERR_STOPPING', 'kaproxy is stopping: routes can no longer change')
    const next = new Map(routes.map((route) => [route.name, route]))
    // A route leaves when it is gone or its listen address changed (then it comes back as new).
    const leaving = [...this.listeners.values()].filter((listener) => {
      const route = next.get(listener.route.name)
      return route === undefined || !isDeepStrictEqual(route.listen, listener.route.listen)
    })
    const leavingNames = new Set(leaving.map((listener) => listener.route.name))
    const arriving = routes.filter((route) => !this.listeners.has(route.name) || leavingNames.has(route.name))
    // Bind new addresses while the old routes still serve: if one fails, nothing has changed.
    // An address a leaving route holds can only be bound once that route stopped accepting.
    const later = arriving.filter((route) => leaving.some((listener) => listenCollides(listener.route.listen, route.listen)))
    const started = new Map<string, RouteListener>()
    try {
      // A kept route newly given a socket mark must be allowed to set it, or its dials would fail later.
      for (const route of routes) {
        const kept = this.listeners.get(route.name)
        if (kept !== undefined && !leavingNames.has(route.name) && route.socketMark !== kept.route.socketMark) probeRouteSocketMark(route)
      }
      for (const route of arriving) {
        if (!later.includes(route)) started.set(route.name, await this.listenRoute(route))
      }
      if (this.stopped()) throw new KaproxyError('KAPROXY_ERR_STOPPING', 'kaproxy is stopping: routes can no longer change')
    } catch (err) {
      await Promise.all([...started.values()].map(async (listener) => { await listener.close() }))
      throw err
    }

    // From here on the change is committed.
    for (const listener of leaving) this.retire(listener)
    const failed: ApplyResult['failed'] = []
    for (const route of later) {
      try {
        started.set(route.name, await this.listenRoute(route))
      } catch (err) {
        // Someone else took the address in between: the route is not running.
        failed.push({ route: route.name, message: (err as Error).message })
      }
    }

    const result: ApplyResult = { added: [], removed: [...leavingNames], updated: [], unchanged: [], failed, retunedSockets: 0 }
    const listeners = new Map<string, RouteListener>()
    for (const route of routes) {
      const fresh = started.get(route.name)
      if (fresh !== undefined) {
        listeners.set(route.name, fresh)
        result.added.push(route.name)
        continue
      }
      const kept = this.listeners.get(route.name)
      if (kept === undefined || leavingNames.has(route.name)) continue
      listeners.set(route.name, kept)
      if (sameSettings(kept.route, route)) {
        result.unchanged.push(route.name)
      } else {
        result.retunedSockets += kept.update(route)
        result.updated.push(route.name)
      }
    }
    this.listeners = listeners
    // Connections accepted after apply() returns get the new settings, in the worker too.
    await Promise.all([...listeners.values()].map(async (listener) => { await listener.settingsTaken() }))
    if (this.stopped()) await Promise.all([...started.values()].map(async (listener) => { await listener.close() }))
    return result
  }

  private async listenRoute (route: RouteConfig): Promise<RouteListener> {
    const listener = new RouteListener(route, this.observer, this.budget, this.dataPlane)
    try {
      await listener.listen()
    } catch (err) {
      await listener.close()
      throw err
    }
    return listener
  }

  /** Stop accepting now; the connections drain for the route's drainTimeoutMs, then close with `route-removed`. */
  private retire (listener: RouteListener): void {
    this.retiring.add(listener)
    listener.drain(listener.route.drainTimeoutMs, 'route-removed').then(() => { this.retiring.delete(listener) }, () => {})
  }

  async reported (): Promise<void> {
    await Promise.all([...this.listeners.values(), ...this.retiring].map(async (listener) => { await listener.reported() }))
  }

  async drain (graceMs?: number): Promise<void> {
    // Every listener.drain() closes its listening socket synchronously, before the first await.
    this.draining ??= Promise.all([
      ...[...this.listeners.values()].map(async (listener) => { await listener.drain(graceMs ?? listener.route.drainTimeoutMs, 'shutdown') }),
      // Removed routes keep draining on their own deadline.
      ...[...this.retiring].map(async (listener) => { await listener.drain(0, 'route-removed') })
    ]).then(async () => { this.budget.close(); await this.dataPlane.close() })
    return await this.draining
  }

  async close (): Promise<void> {
    this.closing ??= Promise.all([...this.listeners.values(), ...this.retiring].map(async (listener) => { await listener.close() }))
      .then(async () => { this.budget.close(); await this.dataPlane.close() })
    return await this.closing
  }
}
