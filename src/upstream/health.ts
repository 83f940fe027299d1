import net from 'node:net'
import { Agent, request } from 'undici'
import type { HealthCheckConfig } from '../config/types.js'
import { isDescriptorExhaustion } from '../relay/close-reason.js'
import type { UpstreamMember, UpstreamPool } from './pool.js'
import type { UpstreamTarget } from './target.js'

/** Runs a route's active health checks, one timer per target; `close()` stops them all. */
export class HealthChecker {
  private readonly pool: UpstreamPool
  private readonly config: HealthCheckConfig
  private readonly timers = new Set<NodeJS.Timeout>()
  private readonly running = new Set<AbortController>()
  private readonly agent: Agent
  private closed = false

  constructor (pool: UpstreamPool, config: HealthCheckConfig) {
    this.pool = pool
    this.config = config
    // One connection per check (reset: true below), so a check proves a fresh connect works.
    this.agent = new Agent({ connections: 1, pipelining: 0 })
  }

  /** Check every target now, then every interval. */
  start (): void {
    for (const member of this.pool.members) this.schedule(member, 0)
  }

  async close (): Promise<void> {
    this.closed = true
    for (const timer of this.timers) clearTimeout(timer)
    this.timers.clear()
    for (const controller of this.running) controller.abort()
    await this.agent.destroy()
  }

  private schedule (member: UpstreamMember, delayMs: number): void {
    if (this.closed) return
    const timer = setTimeout(() => {
      this.timers.delete(timer)
      void this.checkOnce(member).finally(() => { this.schedule(member, this.config.intervalMs) })
    }, delayMs)
    this.timers.add(timer)
  }

  private async checkOnce (member: UpstreamMember): Promise<void> {
    const controller = new AbortController()
    this.running.add(controller)
    const timer = setTimeout(() => { controller.abort(new Error(`timed out after ${this.config.timeoutMs} ms`)) }, this.config.timeoutMs)
    try {
      if (this.config.type === 'http') await this.httpCheck(member.target, controller.signal)
      else await tcpCheck(member.target, controller.signal)
      if (!this.closed) this.pool.checkPassed(member)
    } catch (err) {
      // No descriptor for the check's socket says nothing about the target: the check is skipped.
      if (!this.closed && !isDescriptorExhaustion(errorCode(err))) this.pool.checkFailed(member, describe(err))
    } finally {
      clearTimeout(timer)
      this.running.delete(controller)
    }
  }

  private async httpCheck (target: UpstreamTarget, signal: AbortSignal): Promise<void> {
    const origin = target.kind === 'unix' ? 'http://localhost' : `http://${target.label}`
    const dispatcher = target.kind === 'unix' ? new Agent({ connect: { socketPath: target.path } }) : this.agent
    try {
      const response = await request(`${origin}${this.config.path}`, { method: 'GET', signal, reset: true, dispatcher })
      await response.body.dump()
      if (response.statusCode !== this.config.expectStatus) throw new Error(`HTTP ${response.statusCode}, expected ${this.config.expectStatus}`)
    } finally {
      if (dispatcher !== this.agent) await dispatcher.destroy()
    }
  }
}

function errorCode (err: unknown): string | undefined {
  const e = err as (NodeJS.ErrnoException & { cause?: NodeJS.ErrnoException }) | null
  return e?.code ?? e?.cause?.code
}

function describe (err: unknown): string {
  const e = err as NodeJS.ErrnoException & { cause?: unknown }
  return e.code ?? (e.cause instanceof Error ? e.cause.message : e.message)
}

async function tcpCheck (target: UpstreamTarget, signal: AbortSignal): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    const socket = target.kind === 'unix' ? net.connect({ path: target.path }) : net.connect({ host: target.host, port: target.port })
    const onAbort = (): void => { socket.destroy(); reject(signal.reason) }
    signal.addEventListener('abort', onAbort, { once: true })
    socket.once('connect', () => { signal.removeEventListener('abort', onAbort); socket.destroy(); resolve() })
    socket.once('error', (err) => { signal.removeEventListener('abort', onAbort); socket.destroy(); reject(err) })
  })
}
