import type { EngineObserver } from './engine.js'

type Hook = keyof EngineObserver
type AnyHook = (...args: unknown[]) => void

const HOOKS = ['onOpen', 'onClose', 'onListening', 'onDialFailed', 'onUpstreamState', 'onRouteError', 'onDataPlaneFailed', 'onRouteDrained', 'onAcceptPaused', 'onAcceptResumed'] as const satisfies readonly Hook[]

// A hook added to EngineObserver but missing from HOOKS fails to compile here.
const complete: [Exclude<Hook, typeof HOOKS[number]>] extends [never] ? true : never = true
void complete

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
    composed[hook] = (...args: unknown[]) => { for (const fn of fns) fn(...args) }
  }
  return composed as Required<EngineObserver>
}
