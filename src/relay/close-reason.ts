import type { Side } from '../config/types.js'
import { errnoName } from '../sockopt/libc.js'

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

/** Map a socket error on one side (its errno name, `code`) to a close reason. */
export function reasonForError (side: Side, code: string | undefined, connected: boolean): CloseReason {
  switch (code) {
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

/**
 * A reset this soon (ms) after bytes that ended a silence answers them: a middlebox that forgot the
 * flow resets the first packet it sees again, within a round trip.
 */
export const RESET_ANSWER_WINDOW_MS = 2000

/**
 * The silence a reset or keepalive timeout followed (CloseSummary.silenceBeforeResetMs): the quiet
 * before it (`idleMs`), or, when it answers bytes that ended a longer silence (sent within
 * RESET_ANSWER_WINDOW_MS of it), that silence. Null for other reasons and for connections that
 * never relayed. Times on one clock, in ms.
 */
export function silenceBeforeReset (reason: CloseReason, idleMs: number | null, lastSilenceMs: number, lastSilenceEndedAt: number, closingAt: number): number | null {
  if (idleMs === null || !(reason === 'client-reset' || reason === 'upstream-reset' || reason === 'keepalive-timeout')) return null
  const sinceEnded = closingAt - lastSilenceEndedAt
  if (lastSilenceMs > idleMs && lastSilenceEndedAt !== 0 && sinceEnded >= 0 && sinceEnded <= RESET_ANSWER_WINDOW_MS) return lastSilenceMs
  return idleMs
}

/** How the fast engine's worker let go of a relaying pair (see PairEnded['how']). */
export type RelayEnd = 'closed' | 'error' | 'idle' | 'dropped'

/**
 * The close reason of a pair the fast engine's worker let go of: `side` is the failed socket's for
 * `error` (null: the worker itself failed), `firstFin` the side whose FIN came first; `dropped`
 * (the worker was told to let go) reads as `shutdown`.
 */
export function relayEndReason (how: RelayEnd, side: Side | null, errno: number, firstFin: Side | null): CloseReason {
  switch (how) {
    case 'closed':
      return (firstFin ?? 'client') === 'client' ? 'client-closed' : 'upstream-closed'
    case 'error':
      return side === null ? 'upstream-error' : reasonForError(side, errnoName(errno), true)
    case 'idle':
      return 'idle-timeout'
    case 'dropped':
      return 'shutdown'
  }
}

/** The error behind a pair's `error` end, as a close summary logs it (`side` null: the worker failed). */
export function relayEndError (side: Side | null, errno: number): NodeJS.ErrnoException {
  if (side === null) return Object.assign(new Error('the fast engine\'s worker stopped'), { code: 'KAPROXY_ERR_DATA_PLANE' })
  const code = errnoName(errno)
  return Object.assign(new Error(`splice ${code}`), { code, errno: -errno, syscall: 'splice' })
}
