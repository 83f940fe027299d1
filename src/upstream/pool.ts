import { isDeepStrictEqual } from 'node:util'
import type { Balance, RouteConfig } from '../config/types.js'
import type { UpstreamTarget } from './target.js'

export type UpstreamState = 'up' | 'down'

/** Called when a target goes up or down, with a reason in words. */
export type StateListener = (target: UpstreamTarget, state: UpstreamState, reason: string) => void

const BACKOFF_MIN_MS = 1000
const BACKOFF_MAX_MS = 30_000

/** One target of a pool and what the pool knows about it. */
export class UpstreamMember {
  readonly target: UpstreamTarget
  state: UpstreamState = 'up'
  /** Connections dialing or relaying through this target. */
  active = 0
  consecutiveFailures = 0
  consecutivePasses = 0
  /** Without active checks, a down target gets one trial connection once this time (ms) is reached. */
  retryAt = 0
  backoffMs = BACKOFF_MIN_MS

  constructor (target: UpstreamTarget) {
    this.target = target
  }
}

/**
 * A route's targets: which one a new connection dials (by the route's balance policy), and
 * passive ejection: `fall` consecutive connect failures take a target down until an active check,
 * or, without checks, a trial connection after a back-off (1 s doubling to 30 s), brings it back.
 */
export class UpstreamPool {
  readonly members: readonly UpstreamMember[]
  private readonly balance: Balance
  private readonly fall: number
  private readonly rise: number
  private readonly activeChecks: boolean
  private readonly onState: StateListener
  private cursor = 0

  /**
   * `previous`: the members of the pool this one replaces (a reload changed the route); a target
   * still listed keeps its member, so its state, back-off and live connection count carry over.
   */
  constructor (route: RouteConfig, onState: StateListener, previous: readonly UpstreamMember[] = []) {
    this.members = route.upstreams.map((target) => previous.find((member) => isDeepStrictEqual(member.target, target)) ?? new UpstreamMember(target))
    this.balance = route.balance
    this.fall = route.healthCheck?.fall ?? 3
    this.rise = route.healthCheck?.rise ?? 2
    this.activeChecks = route.healthCheck !== null
    this.onState = onState
  }

  /** The target for the next attempt, skipping those already tried; null when none is available. */
  pick (tried: ReadonlySet<UpstreamMember>, now = Date.now()): UpstreamMember | null {
    const eligible = (member: UpstreamMember): boolean => !tried.has(member) &&
      (member.state === 'up' || (!this.activeChecks && member.retryAt <= now))
    const count = this.members.length
    let chosen: UpstreamMember | null = null
    if (this.balance === 'first-available') {
      chosen = this.members.find(eligible) ?? null
    } else {
      // Round-robin order; least-connections takes the least busy, ties in round-robin order.
      for (let i = 0; i < count; i++) {
        const member = this.members[(this.cursor + i) % count]
        if (member === undefined || !eligible(member)) continue
        if (chosen === null || (this.balance === 'least-connections' && member.active < chosen.active)) chosen = member
        if (this.balance === 'round-robin') break
      }
      if (chosen !== null) this.cursor = (this.members.indexOf(chosen) + 1) % count
    }
    if (chosen !== null && chosen.state === 'down') this.trialMade(chosen, now)
    return chosen
  }

  /** A trial connection went to a down target (here, or from the fast engine's worker): the next waits a full back-off. */
  trialMade (member: UpstreamMember, now = Date.now()): void {
    member.retryAt = now + member.backoffMs
    member.backoffMs = Math.min(member.backoffMs * 2, BACKOFF_MAX_MS)
  }

  connectSucceeded (member: UpstreamMember): void {
    member.consecutiveFailures = 0
    if (member.state === 'down' && !this.activeChecks) this.setState(member, 'up', 'trial connection succeeded')
  }

  connectFailed (member: UpstreamMember, why: string, now = Date.now()): void {
    member.consecutiveFailures++
    member.consecutivePasses = 0
    if (member.state === 'up' && member.consecutiveFailures >= this.fall) {
      member.retryAt = now + member.backoffMs
      this.setState(member, 'down', `${member.consecutiveFailures} consecutive connect failures (last: ${why})`)
    }
  }

  checkPassed (member: UpstreamMember): void {
    member.consecutiveFailures = 0
    member.consecutivePasses++
    if (member.state === 'down' && member.consecutivePasses >= this.rise) this.setState(member, 'up', `${member.consecutivePasses} consecutive health checks passed`)
  }

  checkFailed (member: UpstreamMember, why: string): void {
    member.consecutivePasses = 0
    member.consecutiveFailures++
    if (member.state === 'up' && member.consecutiveFailures >= this.fall) this.setState(member, 'down', `${member.consecutiveFailures} consecutive health checks failed (last: ${why})`)
  }

  private setState (member: UpstreamMember, state: UpstreamState, reason: string): void {
    member.state = state
    if (state === 'up') member.backoffMs = BACKOFF_MIN_MS
    this.onState(member.target, state, reason)
  }
}
