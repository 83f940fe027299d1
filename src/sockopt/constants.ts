/**
 * Socket option numbers per platform, in one table. An option a platform lacks is `undefined`:
 * callers skip it (with one warning) instead of failing.
 */
export interface SockoptConstants {
  SOL_SOCKET: number
  SO_KEEPALIVE: number
  IPPROTO_TCP: number
  /** Seconds of idle before the first probe (TCP_KEEPALIVE on macOS). */
  TCP_KEEPIDLE: number | undefined
  /** Seconds between probes. */
  TCP_KEEPINTVL: number | undefined
  /** Unanswered probes before the connection is dropped. */
  TCP_KEEPCNT: number | undefined
  /** Milliseconds unacknowledged data may stay in flight (Linux only). */
  TCP_USER_TIMEOUT: number | undefined
  /** TCP_INFO, decoded on Linux only. */
  TCP_INFO: number | undefined
  /** SO_MARK: a firewall mark on the socket's packets (Linux only, CAP_NET_ADMIN). */
  SO_MARK: number | undefined
}

export type SupportedPlatform = 'linux' | 'darwin' | 'freebsd'

export const SOCKOPT_CONSTANTS: Readonly<Record<SupportedPlatform, Readonly<SockoptConstants>>> = {
  // <linux/tcp.h>, <asm-generic/socket.h>
  linux: { SOL_SOCKET: 1, SO_KEEPALIVE: 9, IPPROTO_TCP: 6, TCP_KEEPIDLE: 4, TCP_KEEPINTVL: 5, TCP_KEEPCNT: 6, TCP_USER_TIMEOUT: 18, TCP_INFO: 11, SO_MARK: 36 },
  // <netinet/tcp.h> on macOS: TCP_KEEPALIVE (0x10) is the idle time; there is no TCP_USER_TIMEOUT.
  darwin: { SOL_SOCKET: 0xffff, SO_KEEPALIVE: 0x8, IPPROTO_TCP: 6, TCP_KEEPIDLE: 0x10, TCP_KEEPINTVL: 0x101, TCP_KEEPCNT: 0x102, TCP_USER_TIMEOUT: undefined, TCP_INFO: undefined, SO_MARK: undefined },
  // <netinet/tcp.h> on FreeBSD.
  freebsd: { SOL_SOCKET: 0xffff, SO_KEEPALIVE: 0x8, IPPROTO_TCP: 6, TCP_KEEPIDLE: 256, TCP_KEEPINTVL: 512, TCP_KEEPCNT: 1024, TCP_USER_TIMEOUT: undefined, TCP_INFO: undefined, SO_MARK: undefined }
}

/** libc's file name per platform, for koffi.load(). */
export const LIBC_PATH: Readonly<Record<SupportedPlatform, string>> = {
  linux: 'libc.so.6',
  darwin: 'libSystem.B.dylib',
  freebsd: 'libc.so.7'
}

export function isSupportedPlatform (platform: string): platform is SupportedPlatform {
  return platform === 'linux' || platform === 'darwin' || platform === 'freebsd'
}
