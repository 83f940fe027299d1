import type { RouteConfig, Side } from '../../config/types.js'
import { relayEndError, relayEndReason, silenceBeforeReset } from '../close-reason.js'
import type { CloseSummary, ConnectionRecord, SideEndpoint } from '../engine.js'
import { clientText, epochMs, onThisClock, type ClientAddress, type Finished } from './protocol.js'

/**
 * A connection the fast engine's worker accepted, relayed and closed before reporting it (see
 * Finished), as logs and metrics see it: the same fields and close summary a Connection gives,
 * read from the worker's one record. It has no sockets left (`endpoint` null).
 */
export class FinishedConnection implements ConnectionRecord {
  readonly id: number
  readonly route: RouteConfig
  private readonly clientAddress: ClientAddress
  readonly clientVia: string | null = null
  readonly upstream: string
  /** Absolute ms on the workers' clock (see STAT_LAST_BYTE_AT). */
  private readonly acceptedAt: number
  readonly bytesFromClient: number
  readonly bytesFromUpstream: number
  readonly connectMs: number
  readonly lastByteAt: number
  readonly lastSilenceMs: number
  readonly lastSilenceEndedAt: number
  readonly summary: CloseSummary

  /** `event` is read now, never kept (see forEachEvent). */
  constructor (route: RouteConfig, upstream: string, event: Readonly<Finished>) {
    this.id = event.id
    this.route = route
    this.clientAddress = event.client
    this.upstream = upstream
    this.acceptedAt = event.acceptedAt
    this.bytesFromClient = event.bytesFromClient
    this.bytesFromUpstream = event.bytesFromUpstream
    this.connectMs = Math.round(event.connectMs)
    this.lastByteAt = onThisClock(event.lastByteAt)
    this.lastSilenceMs = event.lastSilenceMs
    this.lastSilenceEndedAt = onThisClock(event.lastSilenceEndedAt)
    // As a Connection closes (finish, socketClosed): the side that failed, or the first FIN's.
    const reason = relayEndReason(event.how, event.side, event.errno, event.firstFin)
    const failedSide: Side | null = event.how === 'closed' ? event.firstFin ?? 'client' : event.side
    const idleMs = event.lastByteAt === 0 ? null : Math.max(0, event.endedAt - event.lastByteAt)
    this.summary = {
      reason,
      side: failedSide ?? event.firstFin,
      durationMs: Math.round(event.endedAt - event.acceptedAt),
      error: event.how === 'error' ? relayEndError(event.side, event.errno) : null,
      idleMs,
      silenceBeforeResetMs: silenceBeforeReset(reason, idleMs, event.lastSilenceMs, event.lastSilenceEndedAt, event.endedAt)
    }
  }

  /** Date.now() at the accept; computed when read, as `client` is. */
  get openedAt (): number {
    return epochMs(this.acceptedAt)
  }

  /** Formatted when read: at the default log level, never. */
  get client (): string {
    return clientText(this.clientAddress)
  }

  endpoint (): SideEndpoint | null {
    return null
  }
}
