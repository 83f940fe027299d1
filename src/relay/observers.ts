import type { EngineObserver } from './engine.js'

/**
 * One observer that tells each of `observers`, in order (e.g. logging, then metrics), so the
 * relay knows nothing of what listens to it. Observers must not throw.
 */
export function composeObservers (...observers: readonly EngineObserver[]): Required<EngineObserver> {
  const onOpen = observers.flatMap((o) => o.onOpen === undefined ? [] : [o.onOpen])
  const onClose = observers.flatMap((o) => o.onClose === undefined ? [] : [o.onClose])
  const onListening = observers.flatMap((o) => o.onListening === undefined ? [] : [o.onListening])
  const onRouteError = observers.flatMap((o) => o.onRouteError === undefined ? [] : [o.onRouteError])
  return {
    onOpen (connection) { for (const f of onOpen) f(connection) },
    onClose (connection, summary) { for (const f of onClose) f(connection, summary) },
    onListening (route, address) { for (const f of onListening) f(route, address) },
    onRouteError (route, err) { for (const f of onRouteError) f(route, err) }
  }
}
