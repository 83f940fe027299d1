import { getsockoptBuffer, sockoptConstants } from './libc.js'

/** Linux `enum` of TCP states (include/net/tcp_states.h), by `tcpi_state`. */
const TCP_STATES = ['', 'ESTABLISHED', 'SYN_SENT', 'SYN_RECV', 'FIN_WAIT1', 'FIN_WAIT2', 'TIME_WAIT', 'CLOSE', 'CLOSE_WAIT', 'LAST_ACK', 'LISTEN', 'CLOSING', 'NEW_SYN_RECV'] as const

/** Congestion-avoidance states (`enum tcp_ca_state` in linux/tcp.h), by `tcpi_ca_state`. */
const CA_STATES = ['open', 'disorder', 'cwr', 'recovery', 'loss'] as const

/**
 * The kernel's view of one TCP socket, decoded from `struct tcp_info` (linux/tcp.h).
 * Units are in the names: `Us` microseconds, `Ms` milliseconds; `Bytes` bytes; counts otherwise.
 * Fields a kernel too old to fill them left out are null.
 */
export interface TcpInfo {
  /** `ESTABLISHED`, `CLOSE_WAIT`, ... (or `state N` for a value this table lacks). */
  state: string
  /** Congestion state: open, disorder, cwr, recovery, loss. */
  caState: string
  /** Retransmissions of the current segment by the retransmit timer (icsk_retransmits). */
  retransmits: number
  /** Unanswered keepalive or zero-window probes sent since the peer last answered. */
  probes: number
  /** Exponential backoff of the retransmit timer. */
  backoff: number
  /** Retransmission timeout. */
  rtoUs: number
  /** Delayed-ACK timeout. */
  atoUs: number
  sndMss: number
  rcvMss: number
  /** Segments sent and not yet acknowledged. */
  unacked: number
  sacked: number
  /** Segments considered lost. */
  lost: number
  /** Segments retransmitted and not yet acknowledged. */
  retrans: number
  /** Since the last data segment was sent. */
  lastDataSentMs: number
  /** Since the last data segment was received. */
  lastDataRecvMs: number
  /** Since the last ACK was received (a keepalive probe's answer counts). */
  lastAckRecvMs: number
  pmtu: number
  rcvSsthresh: number
  /** Smoothed round-trip time. */
  rttUs: number
  /** Round-trip time variance. */
  rttvarUs: number
  sndSsthresh: number
  /** Congestion window, in segments. */
  sndCwnd: number
  advmss: number
  reordering: number
  rcvRttUs: number
  rcvSpace: number
  /** Retransmitted segments over the connection's life. */
  totalRetrans: number
  /** Null where the kernel did not fill it in (older kernels return a shorter struct). */
  bytesAcked: number | null
  bytesReceived: number | null
  segsOut: number | null
  segsIn: number | null
  notsentBytes: number | null
  minRttUs: number | null
  bytesSent: number | null
  bytesRetrans: number | null
  /** The peer's advertised receive window after scaling. */
  sndWnd: number | null
}

// Byte offsets in struct tcp_info (x86-64 and arm64 alike: no padding before the first u64 at 104).
const OFFSET = {
  state: 0, caState: 1, retransmits: 2, probes: 3, backoff: 4,
  rto: 8, ato: 12, sndMss: 16, rcvMss: 20, unacked: 24, sacked: 28, lost: 32, retrans: 36,
  lastDataSent: 44, lastDataRecv: 52, lastAckRecv: 56,
  pmtu: 60, rcvSsthresh: 64, rtt: 68, rttvar: 72, sndSsthresh: 76, sndCwnd: 80, advmss: 84, reordering: 88,
  rcvRtt: 92, rcvSpace: 96, totalRetrans: 100,
  bytesAcked: 120, bytesReceived: 128, segsOut: 136, segsIn: 140, notsentBytes: 144, minRtt: 148,
  bytesSent: 200, bytesRetrans: 208, sndWnd: 228
} as const

/** The smallest struct every kernel since 2.6 fills in: up to tcpi_total_retrans. */
export const TCP_INFO_MIN_LENGTH = 104

// Large enough for today's struct (~250 bytes) and a few future fields; the kernel copies
// min(its size, our length) and reports the length it wrote.
const buffer = Buffer.alloc(320)

/**
 * Decode the first `length` bytes of a `struct tcp_info`. Throws RangeError when shorter than
 * TCP_INFO_MIN_LENGTH. Fields beyond `length` are null.
 */
export function decodeTcpInfo (data: Buffer, length = data.length): TcpInfo {
  if (length < TCP_INFO_MIN_LENGTH || length > data.length) throw new RangeError(`struct tcp_info of ${length} bytes is too short (need ${TCP_INFO_MIN_LENGTH})`)
  const u32 = (offset: number): number => data.readUInt32LE(offset)
  const optional32 = (offset: number): number | null => offset + 4 <= length ? data.readUInt32LE(offset) : null
  // Byte counters fit a double exactly below 2^53 (8 PiB), which no connection reaches.
  const optional64 = (offset: number): number | null => offset + 8 <= length ? Number(data.readBigUInt64LE(offset)) : null
  const state = data.readUInt8(OFFSET.state)
  const caState = data.readUInt8(OFFSET.caState)
  return {
    state: TCP_STATES[state] ?? `state ${state}`,
    caState: CA_STATES[caState] ?? `ca_state ${caState}`,
    retransmits: data.readUInt8(OFFSET.retransmits),
    probes: data.readUInt8(OFFSET.probes),
    backoff: data.readUInt8(OFFSET.backoff),
    rtoUs: u32(OFFSET.rto),
    atoUs: u32(OFFSET.ato),
    sndMss: u32(OFFSET.sndMss),
    rcvMss: u32(OFFSET.rcvMss),
    unacked: u32(OFFSET.unacked),
    sacked: u32(OFFSET.sacked),
    lost: u32(OFFSET.lost),
    retrans: u32(OFFSET.retrans),
    lastDataSentMs: u32(OFFSET.lastDataSent),
    lastDataRecvMs: u32(OFFSET.lastDataRecv),
    lastAckRecvMs: u32(OFFSET.lastAckRecv),
    pmtu: u32(OFFSET.pmtu),
    rcvSsthresh: u32(OFFSET.rcvSsthresh),
    rttUs: u32(OFFSET.rtt),
    rttvarUs: u32(OFFSET.rttvar),
    sndSsthresh: u32(OFFSET.sndSsthresh),
    sndCwnd: u32(OFFSET.sndCwnd),
    advmss: u32(OFFSET.advmss),
    reordering: u32(OFFSET.reordering),
    rcvRttUs: u32(OFFSET.rcvRtt),
    rcvSpace: u32(OFFSET.rcvSpace),
    totalRetrans: u32(OFFSET.totalRetrans),
    bytesAcked: optional64(OFFSET.bytesAcked),
    bytesReceived: optional64(OFFSET.bytesReceived),
    segsOut: optional32(OFFSET.segsOut),
    segsIn: optional32(OFFSET.segsIn),
    notsentBytes: optional32(OFFSET.notsentBytes),
    minRttUs: optional32(OFFSET.minRtt),
    bytesSent: optional64(OFFSET.bytesSent),
    bytesRetrans: optional64(OFFSET.bytesRetrans),
    sndWnd: optional32(OFFSET.sndWnd)
  }
}

/** Whether this platform's TCP_INFO is decoded (Linux only). */
export function tcpInfoSupported (): boolean {
  return sockoptConstants().TCP_INFO !== undefined
}

/**
 * getsockopt(fd, IPPROTO_TCP, TCP_INFO) decoded; null where the platform has no Linux TCP_INFO.
 * Throws SockoptError (errno name) when the kernel refuses, e.g. EBADF on a closed descriptor.
 * One shared buffer: the call and the decoding are synchronous, so nothing can interleave.
 */
export function readTcpInfo (fd: number): TcpInfo | null {
  const c = sockoptConstants()
  if (c.TCP_INFO === undefined) return null
  const length = getsockoptBuffer(fd, c.IPPROTO_TCP, c.TCP_INFO, buffer, 'TCP_INFO')
  return decodeTcpInfo(buffer, length)
}
