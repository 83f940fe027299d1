import { SIDES, type RouteConfig, type Side } from '../config/types.js'
import type { KeepaliveSettings } from '../keepalive.js'
import { autoIdleSeconds, limitSeconds, tightestMiddlebox, type Middlebox } from './middleboxes.js'

/**
 * How one side's keepalive fares against the middleboxes it crosses. All figures in seconds.
 * - `limitSec`: the smallest middlebox idle timeout; null without middleboxes.
 * - `marginSec`: `limit - idle`, the slack before the first probe would come too late; null without
 *   middleboxes or with keepalive off.
 * - `ok`: false only when there is a warning (a note does not count).
 */
export interface SideBudget {
  limitSec: number | null
  marginSec: number | null
  ok: boolean
  warning: BudgetFinding | null
  note: BudgetFinding | null
}

/**
 * A problem found on one side. Warnings: `idle-not-below-limit` (the flow expires before the first
 * probe), `keepalive-off` (keepalive disabled on a side that crosses a middlebox). Note:
 * `one-lost-probe` (`idle + interval >= limit`: losing one probe lets the flow expire).
 */
export interface BudgetFinding {
  kind: 'idle-not-below-limit' | 'keepalive-off' | 'one-lost-probe'
  severity: 'warning' | 'note'
  /** The sentence `check` and the start-up log print, without the route and side. */
  message: string
}

function named (m: Middlebox): string {
  return `${m.name} (idle timeout ${m.idleTimeoutSec}s)`
}

/** The budget of one side: pure arithmetic over the resolved settings and middleboxes. */
export function sideBudget (settings: KeepaliveSettings, middleboxes: readonly Middlebox[]): SideBudget {
  const limitSec = limitSeconds(middleboxes)
  const tightest = tightestMiddlebox(middleboxes)
  if (limitSec === null || tightest === undefined) return { limitSec: null, marginSec: null, ok: true, warning: null, note: null }
  if (!settings.enabled) {
    return {
      limitSec,
      marginSec: null,
      ok: false,
      note: null,
      warning: {
        kind: 'keepalive-off',
        severity: 'warning',
        message: `keepalive is off but this side crosses ${named(tightest)}: an idle connection is dropped after ${limitSec}s and a dead peer is never noticed`
      }
    }
  }
  const { idleSec, intervalSec } = settings
  const marginSec = limitSec - idleSec
  if (idleSec >= limitSec) {
    return {
      limitSec,
      marginSec,
      ok: false,
      note: null,
      warning: {
        kind: 'idle-not-below-limit',
        severity: 'warning',
        message: `keepalive idle ${idleSec}s is not below ${named(tightest)}: the flow is dropped before the first probe; set idle below ${limitSec}s (idle: auto gives ${autoIdleSeconds(middleboxes) ?? 1}s)`
      }
    }
  }
  if (idleSec + intervalSec >= limitSec) {
    return {
      limitSec,
      marginSec,
      ok: true,
      warning: null,
      note: {
        kind: 'one-lost-probe',
        severity: 'note',
        message: `idle ${idleSec}s + interval ${intervalSec}s = ${idleSec + intervalSec}s reaches ${named(tightest)}: if the first probe is lost, the flow is dropped before the next one`
      }
    }
  }
  return { limitSec, marginSec, ok: true, warning: null, note: null }
}

/** A finding placed on a route and side, as `check` lists it and the start-up log writes it. */
export interface RouteFinding extends BudgetFinding {
  route: string
  side: Side
}

/** The budget of both sides of a route. */
export function routeBudget (route: RouteConfig): Record<Side, SideBudget> {
  return {
    client: sideBudget(route.keepalive.client, route.middleboxes.client),
    upstream: sideBudget(route.keepalive.upstream, route.middleboxes.upstream)
  }
}

/** Every warning and note of the given routes, in route order, client before upstream. */
export function budgetFindings (routes: readonly RouteConfig[]): RouteFinding[] {
  const findings: RouteFinding[] = []
  for (const route of routes) {
    const budget = routeBudget(route)
    for (const side of SIDES) {
      const { warning, note } = budget[side]
      if (warning !== null) findings.push({ ...warning, route: route.name, side })
      if (note !== null) findings.push({ ...note, route: route.name, side })
    }
  }
  return findings
}

/** `route db, upstream: message`: a finding as one line of text. */
export function formatFinding (finding: RouteFinding): string {
  return `route ${finding.route}, ${finding.side}: ${finding.message}`
}
