import type { Side } from '../config/types.js'

/**
 * Why a connection ended. The first cause wins, except that an error replaces an orderly close
 * seen earlier on the other side (a reset after a FIN is the more useful fact).
 */
export type CloseReason =
  | 'client-closed' | 'upstream-closed' // orderly FIN, named after the side that sent it first
  | 'client-reset' | 'upstream-reset' // ECONNRESET / EPIPE
  | 'keepalive-timeout' // ETIMEDOUT: keepalive probes or TCP_USER_TIMEOUT gave up on a silent peer
  | 'upstream-refused' | 'upstream-unreachable' | 'connect-timeout' // the only dial attempt failed
  | 'no-upstream' // every attempt failed, or every target is down
  | 'limit' // the route is at maxConnections
  | 'idle-timeout' // no bytes either way for the route's idleTimeout
  | 'proxy-protocol-error' | 'proxy-header-timeout' // acceptProxyProtocol: bad or missing header
  | 'no-original-destination' // transparent mode: the connection was not redirected (loop guard)
  | 'destination-denied' // transparent mode: the original destination is outside `allow`
  | 'loop-detected' // the client is one of kaproxy's own upstream connections, looped back to it
  | 'client-error' | 'upstream-error' // any other socket error
  | 'sockopt-failed' // setsockopt refused a keepalive value on this connection
  | 'fd-exhausted' // kaproxy had no descriptor left to dial (EMFILE, ENFILE): not the upstream's fault
  | 'route-removed' // a reload removed the route (or changed its listen address) and its drainTimeout ran out
  | 'shutdown' // kaproxy is stopping (after the route's drainTimeout, or at once when forced)

/** Map a socket error on one side to a close reason. */
export function reasonForError (side: Side, err: NodeJS.ErrnoException, connected: boolean): CloseReason {
  switch (err.code) {
    case 'ECONNRESET':
    case 'EPIPE':
      return side === 'client' ? 'client-reset' : 'upstream-reset'
    case 'ETIMEDOUT':
      return connected ? 'keepalive-timeout' : 'connect-timeout'
    case 'ECONNREFUSED':
      return side === 'upstream' ? 'upstream-refused' : 'client-error'
    case 'EHOSTUNREACH':
    case 'ENETUNREACH':
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
      return side === 'upstream' ? 'upstream-unreachable' : 'client-error'
    default:
      return side === 'client' ? 'client-error' : 'upstream-error'
  }
}

/** Reasons after which the surviving peer gets a reset instead of a FIN, so it cannot mistake a cut stream for a complete one. */
export function isAbortive (reason: CloseReason): boolean {
  return reason === 'client-reset' || reason === 'upstream-reset' || reason === 'keepalive-timeout' ||
    reason === 'client-error' || reason === 'upstream-error' ||
    // A looped-back connection is kaproxy's own: a reset tears the chain down at once.
    reason === 'loop-detected'
}

/** The process (EMFILE) or the system (ENFILE) is out of file descriptors. */
export function isDescriptorExhaustion (code: string | undefined): boolean {
  return code === 'EMFILE' || code === 'ENFILE'
}
