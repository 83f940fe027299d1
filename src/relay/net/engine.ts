import type { RouteConfig } from '../../config/types.js'
import type { ConnectionRecord, Engine, EngineObserver } from '../engine.js'
import type { UpstreamState } from '../../upstream/pool.js'
import type { UpstreamTarget } from '../../upstream/target.js'
import { RouteListener } from './route-listener.js'

/** The portable engine: one net.Socket pair per connection. */
export class NetEngine implements Engine {
  private readonly observer: EngineObserver
  private readonly listeners = new Map<string, RouteListener>()
  private closing: Promise<void> | null = null

  constructor (observer: EngineObserver = {}) {
    this.observer = observer
  }

  async start (routes: readonly RouteConfig[]): Promise<void> {
    const started: RouteListener[] = []
    try {
      for (const route of routes) {
        const listener = new RouteListener(route, this.observer)
        started.push(listener)
        await listener.listen()
        this.listeners.set(route.name, listener)
      }
    } catch (err) {
      await Promise.all(started.map(async (listener) => { await listener.close() }))
      this.listeners.clear()
      throw err
    }
  }

  address (route: string): string | null {
    return this.listeners.get(route)?.address ?? null
  }

  upstreams (route: string): Array<{ target: UpstreamTarget, state: UpstreamState, active: number }> {
    return this.listeners.get(route)?.pool.members.map((m) => ({ target: m.target, state: m.state, active: m.active })) ?? []
  }

  * connections (route?: string): Iterable<ConnectionRecord> {
    for (const listener of this.listeners.values()) {
      if (route === undefined || listener.route.name === route) yield * listener.connections
    }
  }

  async close (): Promise<void> {
    this.closing ??= Promise.all([...this.listeners.values()].map(async (listener) => { await listener.close() })).then(() => {})
    return await this.closing
  }
}
