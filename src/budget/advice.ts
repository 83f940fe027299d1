import type { Side } from '../config/types.js'
import { detectionSeconds, KEEPALIVE_LIMITS, type KeepaliveSettings } from '../keepalive.js'
import { MIDDLEBOX_PRESETS, type Middlebox } from './middleboxes.js'

// Learning a middlebox's idle timeout from live traffic: given the silences (seconds with no bytes
// either way) that preceded resets or keepalive timeouts on one route and side, find where they
// cluster and say what keepalive idle would beat it. Pure: the relay records the silences, the admin
// API keeps them per route and side, and `kaproxy advise` prints the sentence.

/** Where most silences before a reset fall, in seconds. */
export interface SilenceCluster {
  /** Silences inside the cluster. */
  count: number
  minSec: number
  maxSec: number
  medianSec: number
}

/**
 * How far apart two silences may be and still show the same timeout: 5 % of the value, at least
 * 2 s. Middleboxes sweep their tables on a timer, and a reset answers whichever send comes first.
 */
export function clusterWidthSec (atSec: number): number {
  return Math.max(2, atSec * 0.05)
}

/**
 * The tightest cluster: the window of width clusterWidthSec(start) holding the most silences; on a
 * tie the narrower, then the shorter one. Non-finite and negative values are ignored; null when
 * nothing is left.
 */
export function tightestCluster (silencesSec: readonly number[]): SilenceCluster | null {
  const sorted = silencesSec.filter((s) => Number.isFinite(s) && s >= 0).sort((a, b) => a - b)
  let best: { start: number, end: number } | null = null
  let end = 0
  for (let start = 0; start < sorted.length; start++) {
    const first = sorted[start] as number
    const limit = first + clusterWidthSec(first)
    if (end < start + 1) end = start + 1
    while (end < sorted.length && (sorted[end] as number) <= limit) end++
    if (best === null) { best = { start, end }; continue }
    const count = end - start
    const bestCount = best.end - best.start
    const spread = (sorted[end - 1] as number) - first
    const bestSpread = (sorted[best.end - 1] as number) - (sorted[best.start] as number)
    if (count > bestCount || (count === bestCount && spread < bestSpread)) best = { start, end }
  }
  if (best === null) return null
  const inside = sorted.slice(best.start, best.end)
  const middle = Math.floor(inside.length / 2)
  const medianSec = inside.length % 2 === 1 ? inside[middle] as number : ((inside[middle - 1] as number) + (inside[middle] as number)) / 2
  return { count: inside.length, minSec: inside[0] as number, maxSec: inside[inside.length - 1] as number, medianSec }
}

/** What one route and side's evidence says. */
export interface AdviceInput {
  route: string
  side: Side
  /** Silences before resets (ECONNRESET, EPIPE) or keepalive timeouts, in seconds. */
  silencesSec: readonly number[]
  /** The side's resolved keepalive, as applied. */
  keepalive: KeepaliveSettings
  /** The side's declared middleboxes, named in the sentence when one matches the cluster. */
  middleboxes?: readonly Middlebox[]
  /** Fewest silences in the cluster to say anything; default 1. */
  minCount?: number
}

/**
 * - `idle-timeout`: the resets came after silences shorter than the side's keepalive idle (or with
 *   keepalive off): a middlebox forgets flows near `nearSec`.
 * - `before-first-probe`: the resets came when keepalive began probing: the flow was gone before
 *   the first probe, so the timeout is below the current idle.
 * - `not-idle-related`: the resets came after keepalive's worst-case detection time, so probes were
 *   answered and kept the flow: the resets come from the peer, or from a box that ignores probes.
 */
export type AdviceKind = 'idle-timeout' | 'before-first-probe' | 'not-idle-related'

export interface Advice {
  route: string
  side: Side
  kind: AdviceKind
  cluster: SilenceCluster
  /** The timeout the evidence points at, in seconds: a matching middlebox's, else the cluster's median, rounded. */
  nearSec: number
  /** The side's declared middleboxes whose idle timeout is `nearSec`, else the presets whose default it is. */
  matches: string[]
  /** Whether `matches` are declared middleboxes (true) or presets (false). */
  declared: boolean
  /** Keepalive idle must be below this many seconds; null for `not-idle-related`. */
  idleBelowSec: number | null
  /** A suggested idle in seconds (half of `idleBelowSec`, as `idle: auto` would); null when none fits. */
  suggestedIdleSec: number | null
  /** e.g. `3 upstream connections were reset after 348–352 s of silence: ...; set it below 348s, e.g. idle: 174s`. */
  sentence: string
}

function matching (cluster: SilenceCluster, declared: readonly Middlebox[]): { nearSec: number, matches: string[], declared: boolean } {
  const low = cluster.minSec - clusterWidthSec(cluster.minSec)
  const high = cluster.maxSec + clusterWidthSec(cluster.maxSec)
  const candidates = [
    ...declared.map((m) => ({ name: m.name, sec: m.idleTimeoutSec, declared: true })),
    ...Object.entries(MIDDLEBOX_PRESETS).map(([name, preset]) => ({ name, sec: preset.idleTimeoutSec as number, declared: false }))
  ].filter((c) => c.sec >= low && c.sec <= high)
  const first = candidates[0]
  if (first === undefined) return { nearSec: Math.round(cluster.medianSec), matches: [], declared: false }
  // The candidate closest to the median; declared middleboxes come first, so they win a tie.
  let near = first
  for (const c of candidates) if (Math.abs(c.sec - cluster.medianSec) < Math.abs(near.sec - cluster.medianSec)) near = c
  const matches = [...new Set(candidates.filter((c) => c.sec === near.sec && c.declared === near.declared).map((c) => c.name))]
  return { nearSec: near.sec, matches, declared: near.declared }
}

function secondsRange (cluster: SilenceCluster): string {
  const low = Math.floor(cluster.minSec)
  const high = Math.max(low, Math.round(cluster.maxSec))
  return low === high ? `${low} s` : `${low}–${high} s`
}

function suggestion (belowSec: number): number | null {
  const { min, max } = KEEPALIVE_LIMITS.idleSec
  if (belowSec <= min) return null
  return Math.min(max, Math.max(min, Math.floor(belowSec / 2)))
}

/**
 * Advice for one route and side, or null where there is no evidence (fewer than `minCount`
 * usable silences). The sentence leaves the route name to the caller, e.g. `route db: <sentence>`.
 */
export function adviseSide (input: AdviceInput): Advice | null {
  const cluster = tightestCluster(input.silencesSec)
  if (cluster === null || cluster.count < (input.minCount ?? 1)) return null
  const { side, keepalive } = input
  const { nearSec, matches, declared } = matching(cluster, input.middleboxes ?? [])
  const who = matches.length === 0 ? '' : declared ? ` (${matches.join(', ')}, declared on this side)` : ` (the default of ${matches.join(', ')})`
  const head = `${cluster.count} ${side} connection${cluster.count === 1 ? ' was' : 's were'} reset after ${secondsRange(cluster)} of silence`
  const base = { route: input.route, side, cluster, nearSec, matches, declared }

  const detection = detectionSeconds(keepalive)
  if (keepalive.enabled && detection !== null && cluster.minSec > detection + clusterWidthSec(detection)) {
    return {
      ...base,
      kind: 'not-idle-related',
      idleBelowSec: null,
      suggestedIdleSec: null,
      sentence: `${head}, longer than keepalive.${side} allows a silent flow to live (${detection}s): the probes were answered and kept these flows, so the resets come from the peer or from a middlebox that ignores keepalive probes`
    }
  }

  const beforeFirstProbe = keepalive.enabled && cluster.minSec >= keepalive.idleSec - clusterWidthSec(keepalive.idleSec)
  const belowSec = beforeFirstProbe ? keepalive.idleSec : Math.floor(cluster.minSec)
  const suggestedIdleSec = suggestion(belowSec)
  const fix = suggestedIdleSec === null
    ? `keepalive cannot probe more often than every ${KEEPALIVE_LIMITS.idleSec.min}s, so it cannot beat this timeout`
    : keepalive.enabled
      ? `keepalive.${side}.idle is ${keepalive.idleSec}s: set it below ${belowSec}s, e.g. idle: ${suggestedIdleSec}s`
      : `keepalive.${side} is off: enable it with idle below ${belowSec}s, e.g. idle: ${suggestedIdleSec}s`
  if (beforeFirstProbe) {
    return {
      ...base,
      kind: 'before-first-probe',
      idleBelowSec: belowSec,
      suggestedIdleSec,
      sentence: `${head}, when keepalive probing began: a middlebox dropped these flows before the first probe; ${fix}`
    }
  }
  return {
    ...base,
    kind: 'idle-timeout',
    idleBelowSec: belowSec,
    suggestedIdleSec,
    sentence: `${head}: a middlebox drops idle flows near ${nearSec} s${who}; ${fix}`
  }
}
