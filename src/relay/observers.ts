import type { EngineObserver } from './engine.js'

type Hook = keyof EngineObserver
type AnyHook = (...args: unknown[]) => void

const HOOKS = ['onOpen', 'onClose', 'onTally', 'onListening', 'onDialFailed', 'onUpstreamState', 'onRouteError', 'onDataPlaneFailed', 'onRouteDrained', 'onAcceptPaused', 'onAcceptResumed'] as const satisfies readonly Hook[]

// A hook added to EngineObserver but missing from HOOKS fails to compile here.
const complete: [Exclude<Hook, typeof HOOKS[number]>] extends [never] ? true : never = true
void complete
// A hook with more than four parameters fails to compile here: composeObservers passes four on.
type LongHook = { [H in Hook]: Parameters<NonNullable<EngineObserver[H]>>['length'] extends 0 | 1 | 2 | 3 | 4 ? never : H }[Hook]
const fourAtMost: [LongHook] extends [never] ? true : never = true
void fourAtMost

/**
 * One observer that tells each of `observers`, in order (e.g. logging, then metrics), so the
 * relay knows nothing of what listens to it. Observers must not throw.
 */
export function composeObservers (...observers: readonly EngineObserver[]): Required<EngineObserver> {
  const composed: Partial<Record<Hook, AnyHook>> = {}
  for (const hook of HOOKS) {
    const fns = observers.flatMap((observer) => {
      const fn = observer[hook] as AnyHook | undefined
      return fn === undefined ? [] : [fn]
    })
    // Four parameters at most (EngineObserver's hooks), passed on as they are: a rest array and a
    // spread per call were two allocations for every connection's open and close.
    composed[hook] = (a?: unknown, b?: unknown, c?: unknown, d?: unknown) => { for (const fn of fns) fn(a, b, c, d) }
  }
  return composed as Required<EngineObserver>
}
