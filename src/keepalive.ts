import type { Socket } from 'node:net'
import { KaproxyError, NoDescriptorError } from './errors.js'
import { errnoName, getsockoptInt, setsockoptInt, sockoptConstants } from './sockopt/libc.js'

/** One side's keepalive, as kaproxy applies it to a socket. */
export interface KeepaliveSettings {
  /** SO_KEEPALIVE. `false` writes 0 explicitly, so a socket that inherited keepalive loses it. */
  enabled: boolean
  /** TCP_KEEPIDLE: seconds without traffic before the first probe, 1..32767. */
  idleSec: number
  /** TCP_KEEPINTVL: seconds between unanswered probes, 1..32767. */
  intervalSec: number
  /** TCP_KEEPCNT: unanswered probes before the kernel drops the connection, 1..127. */
  count: number
  /**
   * TCP_USER_TIMEOUT: milliseconds data may stay unacknowledged before the connection is dropped,
   * 0..2147483647; 0 means the kernel's default. Undefined leaves the socket's value alone.
   */
  userTimeoutMs?: number
}

/** What the kernel reports for a socket; `null` where the platform has no such option. */
export interface KeepaliveReading {
  enabled: boolean
  idleSec: number | null
  intervalSec: number | null
  count: number | null
  userTimeoutMs: number | null
}

/** The kernel's limits (net/ipv4/tcp.c: MAX_TCP_KEEPIDLE, MAX_TCP_KEEPINTVL, MAX_TCP_KEEPCNT). */
export const KEEPALIVE_LIMITS = {
  idleSec: { min: 1, max: 32767 },
  intervalSec: { min: 1, max: 32767 },
  count: { min: 1, max: 127 },
  userTimeoutMs: { min: 0, max: 2147483647 }
} as const

/** A field of KeepaliveSettings outside the kernel's limits, with the rule it breaks. */
export interface KeepaliveProblem {
  field: 'idleSec' | 'intervalSec' | 'count' | 'userTimeoutMs'
  rule: string
}

function outside (value: number, limit: { min: number, max: number }): boolean {
  return !Number.isInteger(value) || value < limit.min || value > limit.max
}

/** Check settings against the kernel's limits before any system call; empty when valid. */
export function keepaliveProblems (settings: KeepaliveSettings): KeepaliveProblem[] {
  const problems: KeepaliveProblem[] = []
  const L = KEEPALIVE_LIMITS
  if (outside(settings.idleSec, L.idleSec)) problems.push({ field: 'idleSec', rule: `must be whole seconds ${L.idleSec.min}..${L.idleSec.max}` })
  if (outside(settings.intervalSec, L.intervalSec)) problems.push({ field: 'intervalSec', rule: `must be whole seconds ${L.intervalSec.min}..${L.intervalSec.max}` })
  if (outside(settings.count, L.count)) problems.push({ field: 'count', rule: `must be an integer ${L.count.min}..${L.count.max}` })
  if (settings.userTimeoutMs !== undefined && outside(settings.userTimeoutMs, L.userTimeoutMs)) {
    problems.push({ field: 'userTimeoutMs', rule: `must be milliseconds ${L.userTimeoutMs.min}..${L.userTimeoutMs.max}` })
  }
  return problems
}

/**
 * The socket's OS descriptor, read from its libuv handle.
 * Throws NoDescriptorError before connect, after close, or for a socket without a handle.
 */
export function socketFd (socket: Socket): number {
  // `_handle` is Node's internal TCPWrap; its `fd` is the descriptor on Unix (-1 until connected).
  const handle = (socket as unknown as { _handle?: { fd?: unknown } | null })._handle
  const fd = handle?.fd
  if (typeof fd !== 'number' || fd < 0) throw new NoDescriptorError('socket')
  return fd
}

const warnedMissing = new Set<string>()

function warnMissingOnce (option: string): void {
  if (warnedMissing.has(option)) return
  warnedMissing.add(option)
  process.emitWarning(`${option} is not available on ${process.platform}; kaproxy skips it`, { code: 'KAPROXY_SOCKOPT_UNSUPPORTED' })
}

function getTcp (fd: number, name: number | undefined, option: string): number | null {
  if (name === undefined) return null
  return getsockoptInt(fd, sockoptConstants().IPPROTO_TCP, name, option)
}

/**
 * Apply one side's keepalive with setsockopt. Throws SockoptError (errno name, option, value).
 * Node's `socket.setKeepAlive()` must never be called on this socket afterwards: libuv would reset
 * the interval to 1 s and the count to 10.
 */
export function applyKeepalive (socket: Socket, settings: KeepaliveSettings): void {
  applyKeepaliveFd(socketFd(socket), settings)
}

/** applyKeepalive on a socket descriptor (one the fast engine holds without a net.Socket). */
export function applyKeepaliveFd (fd: number, settings: KeepaliveSettings): void {
  for (const { level, name, value, option } of keepaliveOptions(settings)) setsockoptInt(fd, level, name, value, option)
}

/** One setsockopt call of a side's keepalive: level, option and value, and the option's name for errors. */
export interface KeepaliveOption {
  readonly level: number
  readonly name: number
  readonly value: number
  readonly option: string
}

/**
 * The setsockopt calls that apply `settings`, in order; options the platform lacks are left out
 * (with a warning, once). Throws KaproxyError for settings outside the kernel's limits. The fast
 * engine's worker works them out once per route plan, not once per connection.
 */
export function keepaliveOptions (settings: KeepaliveSettings): KeepaliveOption[] {
  const problem = keepaliveProblems(settings)[0]
  if (problem !== undefined) {
    throw new KaproxyError('KAPROXY_ERR_INVALID_ARG', `keepalive ${problem.field}: ${problem.rule} (got ${String(settings[problem.field])})`)
  }
  const c = sockoptConstants()
  const options: KeepaliveOption[] = [{ level: c.SOL_SOCKET, name: c.SO_KEEPALIVE, value: settings.enabled ? 1 : 0, option: 'SO_KEEPALIVE' }]
  const tcp = (name: number | undefined, value: number, option: string): void => {
    if (name === undefined) warnMissingOnce(option)
    else options.push({ level: c.IPPROTO_TCP, name, value, option })
  }
  if (settings.enabled) {
    tcp(c.TCP_KEEPIDLE, settings.idleSec, 'TCP_KEEPIDLE')
    tcp(c.TCP_KEEPINTVL, settings.intervalSec, 'TCP_KEEPINTVL')
    tcp(c.TCP_KEEPCNT, settings.count, 'TCP_KEEPCNT')
  }
  // The user timeout also bounds unacknowledged data, so it applies with keepalive off too.
  if (settings.userTimeoutMs !== undefined) tcp(c.TCP_USER_TIMEOUT, settings.userTimeoutMs, 'TCP_USER_TIMEOUT')
  return options
}

/** Read the socket's effective keepalive back from the kernel with getsockopt. */
export function readKeepalive (socket: Socket): KeepaliveReading {
  return readKeepaliveFd(socketFd(socket))
}

/** readKeepalive on a socket descriptor. */
export function readKeepaliveFd (fd: number): KeepaliveReading {
  const c = sockoptConstants()
  return {
    enabled: getsockoptInt(fd, c.SOL_SOCKET, c.SO_KEEPALIVE, 'SO_KEEPALIVE') !== 0,
    idleSec: getTcp(fd, c.TCP_KEEPIDLE, 'TCP_KEEPIDLE'),
    intervalSec: getTcp(fd, c.TCP_KEEPINTVL, 'TCP_KEEPINTVL'),
    count: getTcp(fd, c.TCP_KEEPCNT, 'TCP_KEEPCNT'),
    userTimeoutMs: getTcp(fd, c.TCP_USER_TIMEOUT, 'TCP_USER_TIMEOUT')
  }
}

/**
 * Worst-case seconds from the last byte received to the kernel dropping a silent peer; null when
 * keepalive is off. Without a user timeout: idle + interval x count. With one, Linux ignores the
 * count and gives up at the first probe timer (idle + k x interval, k >= 1) at or after the user timeout.
 */
export function detectionSeconds (settings: KeepaliveSettings): number | null {
  if (!settings.enabled) return null
  const { idleSec, intervalSec, count, userTimeoutMs } = settings
  if (userTimeoutMs === undefined || userTimeoutMs === 0) return idleSec + intervalSec * count
  const probes = Math.max(1, Math.ceil((userTimeoutMs / 1000 - idleSec) / intervalSec))
  return idleSec + intervalSec * probes
}

/**
 * The socket's pending error as an errno-style error, or null. libuv reports a reset that arrives
 * while unread data is queued as a plain EOF (POLLHUP after a partial read); the kernel still holds
 * ECONNRESET in SO_ERROR, so an EOF can be told apart from a reset with one getsockopt.
 */
export function pendingSocketError (socket: Socket): NodeJS.ErrnoException | null {
  let fd: number
  try { fd = socketFd(socket) } catch { return null }
  const c = sockoptConstants()
  const errno = getsockoptInt(fd, c.SOL_SOCKET, c.SO_ERROR, 'SO_ERROR')
  if (errno === 0) return null
  const code = errnoName(errno)
  return Object.assign(new Error(`read ${code}`), { code, errno: -errno, syscall: 'read' })
}
