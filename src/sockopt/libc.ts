import koffi from 'koffi'
import { constants as osConstants } from 'node:os'
import { KaproxyError, SockoptError } from '../errors.js'
import { LIBC_PATH, SOCKOPT_CONSTANTS, isSupportedPlatform, type SockoptConstants } from './constants.js'

// The only place that loads libc. Every export is typed; koffi's untyped functions stay in here.

type RawSetsockopt = (fd: number, level: number, name: number, value: Int32Array, length: number) => number
type RawGetsockoptInt = (fd: number, level: number, name: number, value: [number], length: [number]) => number
type RawGetsockoptBuffer = (fd: number, level: number, name: number, value: Buffer, length: [number]) => number
type RawSocket = (domain: number, type: number, protocol: number) => number
type RawClose = (fd: number) => number
type RawGetrlimit = (resource: number, limits: Buffer) => number
type RawFcntl = (fd: number, command: number, arg: number) => number
type RawSockname = (fd: number, address: Buffer, length: [number]) => number
type RawSend = (fd: number, buffer: Buffer, length: number, flags: number) => number | bigint

interface Libc {
  constants: Readonly<SockoptConstants>
  setsockopt: RawSetsockopt
  getsockoptInt: RawGetsockoptInt
  getsockoptBuffer: RawGetsockoptBuffer
  socket: RawSocket
  close: RawClose
  getrlimit: RawGetrlimit
  fcntl: RawFcntl
  getsockname: RawSockname
  getpeername: RawSockname
  send: RawSend
}

let libc: Libc | undefined

function load (): Libc {
  if (libc !== undefined) return libc
  const platform = process.platform
  if (!isSupportedPlatform(platform)) {
    throw new KaproxyError('KAPROXY_ERR_PLATFORM', `socket options are not supported on ${platform} (supported: linux, darwin, freebsd)`)
  }
  const lib = koffi.load(LIBC_PATH[platform])
  libc = {
    constants: SOCKOPT_CONSTANTS[platform],
    setsockopt: lib.func('int setsockopt(int fd, int level, int optname, const void *optval, uint32_t optlen)') as RawSetsockopt,
    getsockoptInt: lib.func('int getsockopt(int fd, int level, int optname, _Out_ int *optval, _Inout_ uint32_t *optlen)') as RawGetsockoptInt,
    getsockoptBuffer: lib.func('getsockopt', 'int', ['int', 'int', 'int', 'void *', koffi.inout(koffi.pointer('uint32_t'))]) as RawGetsockoptBuffer,
    socket: lib.func('int socket(int domain, int type, int protocol)') as RawSocket,
    close: lib.func('int close(int fd)') as RawClose,
    getrlimit: lib.func('int getrlimit(int resource, _Out_ void *rlim)') as RawGetrlimit,
    fcntl: lib.func('int fcntl(int fd, int cmd, int arg)') as RawFcntl,
    getsockname: lib.func('getsockname', 'int', ['int', 'void *', koffi.inout(koffi.pointer('uint32_t'))]) as RawSockname,
    getpeername: lib.func('getpeername', 'int', ['int', 'void *', koffi.inout(koffi.pointer('uint32_t'))]) as RawSockname,
    send: lib.func('intptr_t send(int fd, const void *buf, size_t len, int flags)') as RawSend
  }
  return libc
}

/** The option numbers of the running platform. Throws KAPROXY_ERR_PLATFORM elsewhere. */
export function sockoptConstants (): Readonly<SockoptConstants> {
  return load().constants
}

const errnoNames = new Map<number, string>(
  Object.entries(osConstants.errno).map(([name, value]) => [value, name])
)

/** The symbolic name of an errno value (`EINVAL`), or `errno N` when unknown. */
export function errnoName (errno: number): string {
  return errnoNames.get(errno) ?? `errno ${errno}`
}

// Preallocated so the per-connection path allocates nothing for its five setsockopt calls.
const intValue = new Int32Array(1)

/** setsockopt(fd, level, name, &value, 4); throws SockoptError with the errno name. */
export function setsockoptInt (fd: number, level: number, name: number, value: number, optionName: string): void {
  const { setsockopt } = load()
  intValue[0] = value
  if (setsockopt(fd, level, name, intValue, 4) !== 0) {
    throw new SockoptError('setsockopt', errnoName(koffi.errno()), optionName, value)
  }
}

/** getsockopt(fd, level, name) for an int option; throws SockoptError with the errno name. */
export function getsockoptInt (fd: number, level: number, name: number, optionName: string): number {
  const { getsockoptInt: getsockopt } = load()
  const value: [number] = [0]
  const length: [number] = [4]
  if (getsockopt(fd, level, name, value, length) !== 0) {
    throw new SockoptError('getsockopt', errnoName(koffi.errno()), optionName)
  }
  return value[0]
}

/** getsockopt into `buffer`; returns how many bytes the kernel filled in. */
export function getsockoptBuffer (fd: number, level: number, name: number, buffer: Buffer, optionName: string): number {
  const { getsockoptBuffer: getsockopt } = load()
  const length: [number] = [buffer.length]
  if (getsockopt(fd, level, name, buffer, length) !== 0) {
    throw new SockoptError('getsockopt', errnoName(koffi.errno()), optionName)
  }
  return length[0]
}

// Linux values: AF_INET 2, AF_INET6 10, SOCK_STREAM 1 | SOCK_NONBLOCK 0x800 | SOCK_CLOEXEC 0x80000.
const LINUX_STREAM_NONBLOCK_CLOEXEC = 1 | 0x800 | 0x80000

/**
 * A new non-blocking TCP socket descriptor (Linux), for options that must be set before connect
 * (SO_MARK). The caller hands it to `new net.Socket({ fd })`, which then owns and closes it.
 */
export function tcpSocket (family: 4 | 6): number {
  const { socket } = load()
  const fd = socket(family === 4 ? 2 : 10, LINUX_STREAM_NONBLOCK_CLOEXEC, 0)
  if (fd < 0) throw new SockoptError('setsockopt', errnoName(koffi.errno()), 'socket()')
  return fd
}

/**
 * The socket's local (`getsockname`) or peer (`getpeername`) address as raw `struct sockaddr`
 * bytes; null when the kernel refuses (closed, not connected).
 */
export function socketAddress (fd: number, which: 'local' | 'peer'): Buffer | null {
  const lib = load()
  const buffer = Buffer.alloc(128)
  const length: [number] = [buffer.length]
  const call = which === 'local' ? lib.getsockname : lib.getpeername
  return call(fd, buffer, length) === 0 ? buffer.subarray(0, length[0]) : null
}

// struct linger { int l_onoff; int l_linger; } = { 1, 0 }: close() then sends a reset, not a FIN.
const lingerZero = new Int32Array([1, 0])
const SO_LINGER: Readonly<Record<string, number>> = { linux: 13, darwin: 0x80, freebsd: 0x80 }

/**
 * Close a socket descriptor with a reset (SO_LINGER 0) instead of a FIN, so the peer cannot take
 * a cut stream for a complete one. Closes it either way.
 */
export function closeWithReset (fd: number): void {
  resetOnClose(fd)
  load().close(fd)
}

/** SO_LINGER 0: the socket's close (later, see closeWithReset) sends a reset instead of a FIN. */
export function resetOnClose (fd: number): void {
  const lib = load()
  lib.setsockopt(fd, lib.constants.SOL_SOCKET, SO_LINGER[process.platform] ?? 13, lingerZero, 8)
}

// MSG_NOSIGNAL (Linux, FreeBSD): a closed peer is EPIPE, not a signal. macOS has no such flag;
// Node ignores SIGPIPE in every case.
const MSG_NOSIGNAL = ({ linux: 0x4000, darwin: 0, freebsd: 0x20000 } as Readonly<Record<string, number>>)[process.platform] ?? 0

/**
 * send(2) the first `length` bytes of `buffer` on a non-blocking socket descriptor now (the net
 * relay's and the fast engine's worker's, whose sockets are all non-blocking): the bytes
 * the kernel took (copied: the buffer is free again when this returns), -EAGAIN when it took
 * none, or minus another errno (EPIPE, ECONNRESET).
 */
export function sendNow (fd: number, buffer: Buffer, length: number): number {
  const sent = Number(load().send(fd, buffer, length, MSG_NOSIGNAL))
  return sent < 0 ? -koffi.errno() : sent
}

/** close(2) for a descriptor no Node handle owns (a failed setup, or one the fast engine held). */
export function closeDescriptor (fd: number): void {
  load().close(fd)
}

// RLIMIT_NOFILE and F_DUPFD_CLOEXEC differ per platform (<sys/resource.h>, <fcntl.h>).
const RLIMIT_NOFILE: Readonly<Record<string, number>> = { linux: 7, darwin: 8, freebsd: 8 }
const F_DUPFD_CLOEXEC: Readonly<Record<string, number>> = { linux: 1030, darwin: 67, freebsd: 17 }

/**
 * The process's descriptor limit (RLIMIT_NOFILE): `soft` is what open/accept/socket enforce,
 * `hard` the ceiling the soft limit may be raised to. Infinity stands for RLIM_INFINITY (or any
 * value beyond 2^31, which no descriptor table reaches). Throws SockoptError on failure.
 */
export function descriptorLimit (): { soft: number, hard: number } {
  const { getrlimit } = load()
  // struct rlimit { rlim_t rlim_cur, rlim_max }: rlim_t is 64-bit on every supported 64-bit platform.
  const limits = Buffer.alloc(16)
  if (getrlimit(RLIMIT_NOFILE[process.platform] ?? 7, limits) !== 0) throw new SockoptError('getrlimit', errnoName(koffi.errno()), 'RLIMIT_NOFILE')
  const finite = (value: bigint): number => value >= 2n ** 31n ? Infinity : Number(value)
  return { soft: finite(limits.readBigUInt64LE(0)), hard: finite(limits.readBigUInt64LE(8)) }
}

/**
 * A second descriptor for the same open socket (fcntl F_DUPFD_CLOEXEC): the socket lives on until
 * both are closed. The caller owns the copy (close it with `closeDescriptor`, or hand it to Node).
 * Throws SockoptError with the errno name (EMFILE when the table is full).
 */
export function duplicateDescriptor (fd: number): number {
  const { fcntl } = load()
  const copy = fcntl(fd, F_DUPFD_CLOEXEC[process.platform] ?? 1030, 0)
  if (copy < 0) throw new SockoptError('fcntl', errnoName(koffi.errno()), 'F_DUPFD_CLOEXEC')
  return copy
}

/**
 * The system calls of the fast engine's data plane (Linux): epoll, splice, pipes, eventfd. Each
 * returns its result, or minus the errno on failure, so the relay's hot path branches on a number
 * instead of catching exceptions (EAGAIN is the common case, not an error). Loaded on first use, in
 * whichever thread calls it (koffi binds per thread).
 */
export interface DataPlaneCalls {
  /** epoll_create1(EPOLL_CLOEXEC). */
  epollCreate: () => number
  /** epoll_ctl(epfd, op, fd, { events, data: fd }). */
  epollCtl: (epfd: number, op: number, fd: number, events: number) => number
  /** epoll_wait into `events` (EPOLL_EVENT_SIZE bytes per struct epoll_event); returns the count. */
  epollWait: (epfd: number, events: Buffer, maxEvents: number, timeoutMs: number) => number
  /** splice(in, NULL, out, NULL, length, SPLICE_F_MOVE | SPLICE_F_NONBLOCK): bytes moved, 0 at EOF. */
  splice: (fdIn: number, fdOut: number, length: number) => number
  /** recv(fd, buffer, length, MSG_DONTWAIT): bytes copied into `buffer`, 0 at EOF. */
  recv: (fd: number, buffer: Buffer, length: number) => number
  /** The memory page size: a pipe holds capacity / pageSize buffers (one per packet at least). */
  pageSize: number
  /** pipe2(O_NONBLOCK | O_CLOEXEC) grown to `size` bytes where allowed: [read end, write end, capacity]. */
  pipe: (size: number) => [number, number, number] | number
  /** shutdown(fd, SHUT_WR): a FIN to the peer. */
  shutdownWrite: (fd: number) => number
  /** The socket's pending error (SO_ERROR, cleared by reading it): 0 for none. */
  socketError: (fd: number) => number
  /** accept4(SOCK_NONBLOCK | SOCK_CLOEXEC): the new connection's descriptor; its peer's `struct sockaddr` into `address` (`length` in and out). */
  accept: (listenFd: number, address: Buffer, length: Uint32Array) => number
  /** A non-blocking TCP socket (SOCK_NONBLOCK | SOCK_CLOEXEC) of the family of `sockaddr`. */
  tcpSocket: (sockaddr: Buffer) => number
  /** connect(2): 0, or -EINPROGRESS while the handshake goes on (the socket turns writable). */
  connect: (fd: number, sockaddr: Buffer) => number
  /** TCP_NODELAY on: small writes leave at once, as Node's noDelay sockets do. */
  noDelay: (fd: number) => number
  /** setsockopt(fd, level, name, &value, 4): 0, or -errno. */
  setInt: (fd: number, level: number, name: number, value: number) => number
  /** shutdown(fd, SHUT_RD) on a listening socket: it stops listening now and frees the port, its descriptors stay valid. */
  stopListening: (fd: number) => number
  /** eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC). */
  eventfd: () => number
  /** Add 1 to an eventfd's counter (wakes a thread waiting on it). */
  signal: (fd: number) => number
  /** Reset an eventfd's counter. */
  drainSignal: (fd: number) => number
  close: (fd: number) => number
  /**
   * close(2) every descriptor from `first` to `last` in one call (close_range, Linux 5.9, glibc
   * 2.34): 0, or -errno (ENOSYS on an older kernel). Null where the C library lacks it.
   */
  closeRange: ((first: number, last: number) => number) | null
}

// <sys/epoll.h>, <fcntl.h>, <sys/eventfd.h> on Linux.
export const EPOLLIN = 0x1
export const EPOLLOUT = 0x4
export const EPOLLERR = 0x8
export const EPOLLHUP = 0x10
export const EPOLLRDHUP = 0x2000
/** Wake one of the epoll sets waiting on the descriptor, not all (Linux 4.5). */
export const EPOLLEXCLUSIVE = 0x10000000
export const EPOLLET = 0x80000000
/**
 * struct epoll_event { uint32_t events; uint64_t data; }: packed (12 bytes, data at 4) on x86 only;
 * elsewhere (aarch64, ...) naturally aligned (16 bytes, data at 8).
 */
const EPOLL_PACKED = process.arch === 'x64' || process.arch === 'ia32'
export const EPOLL_EVENT_SIZE = EPOLL_PACKED ? 12 : 16
export const EPOLL_EVENT_DATA = EPOLL_PACKED ? 4 : 8
export const EPOLL_CTL_ADD = 1
export const EPOLL_CTL_DEL = 2
export const EPOLL_CTL_MOD = 3
export const EAGAIN = 11
export const EINPROGRESS = 115
const O_NONBLOCK = 0x800
const O_CLOEXEC = 0x80000
const F_SETPIPE_SZ = 1031
const F_GETPIPE_SZ = 1032
const SPLICE_MOVE_NONBLOCK = 1 | 2

let dataPlane: DataPlaneCalls | undefined

export function dataPlaneCalls (): DataPlaneCalls {
  if (dataPlane !== undefined) return dataPlane
  if (process.platform !== 'linux') throw new KaproxyError('KAPROXY_ERR_PLATFORM', `the fast engine needs Linux (splice, epoll); this is ${process.platform}`)
  const lib = koffi.load(LIBC_PATH.linux)
  const base = load()
  const epollCreate1 = lib.func('int epoll_create1(int flags)') as (flags: number) => number
  const epollCtl = lib.func('int epoll_ctl(int epfd, int op, int fd, void *event)') as (epfd: number, op: number, fd: number, event: Buffer) => number
  const epollWait = lib.func('int epoll_wait(int epfd, void *events, int maxevents, int timeout)') as (epfd: number, events: Buffer, max: number, timeout: number) => number
  const splice = lib.func('intptr_t splice(int fd_in, void *off_in, int fd_out, void *off_out, size_t len, unsigned int flags)') as
    (fdIn: number, offIn: null, fdOut: number, offOut: null, length: number, flags: number) => number | bigint
  const pipe2 = lib.func('int pipe2(_Out_ int *fds, int flags)') as (fds: Int32Array, flags: number) => number
  const shutdown = lib.func('int shutdown(int fd, int how)') as (fd: number, how: number) => number
  const eventfd = lib.func('int eventfd(unsigned int initval, int flags)') as (initval: number, flags: number) => number
  const write = lib.func('intptr_t write(int fd, const void *buf, size_t count)') as (fd: number, buf: Buffer, count: number) => number | bigint
  const read = lib.func('intptr_t read(int fd, _Out_ void *buf, size_t count)') as (fd: number, buf: Buffer, count: number) => number | bigint
  // The length as a plain pointer to a Uint32Array, not koffi.inout: a third of the call's cost (0.17 against 0.52 µs here).
  const accept4 = lib.func('int accept4(int fd, void *addr, void *addrlen, int flags)') as (fd: number, addr: Buffer, length: Uint32Array, flags: number) => number
  const connect = lib.func('int connect(int fd, const void *addr, uint32_t addrlen)') as (fd: number, addr: Buffer, length: number) => number
  const sysconf = lib.func('long sysconf(int name)') as (name: number) => number | bigint
  const recv = lib.func('intptr_t recv(int fd, void *buf, size_t len, int flags)') as (fd: number, buf: Buffer, len: number, flags: number) => number | bigint
  type CloseRange = (first: number, last: number, flags: number) => number
  let closeRange: CloseRange | null = null
  try {
    closeRange = lib.func('int close_range(unsigned int first, unsigned int last, int flags)') as CloseRange
  } catch {
    // An older C library: descriptors close one by one.
  }
  const MSG_DONTWAIT = 0x40
  const _SC_PAGESIZE = 30
  const failed = (result: number | bigint): number => Number(result) < 0 ? -koffi.errno() : Number(result)
  const pageSize = Number(sysconf(_SC_PAGESIZE))
  const intValue = new Int32Array(1)
  const setInt = (fd: number, level: number, name: number, value: number): number => {
    intValue[0] = value
    return failed(base.setsockopt(fd, level, name, intValue, 4))
  }
  const { IPPROTO_TCP } = SOCKOPT_CONSTANTS.linux
  const TCP_NODELAY = 1
  // Preallocated: one event struct for epoll_ctl, one counter for eventfd, one int pair for pipe2.
  // The event struct as words: only the events and the data's low word (the descriptor) are ever
  // written, its padding and the data's high word stay 0.
  const eventWords = new Uint32Array(EPOLL_EVENT_SIZE / 4)
  const event = Buffer.from(eventWords.buffer)
  const counter = Buffer.alloc(8)
  const one = Buffer.alloc(8)
  one.writeBigUInt64LE(1n)
  const fds = new Int32Array(2)
  const errorValue: [number] = [0]
  const errorLength: [number] = [4]
  const { SOL_SOCKET, SO_ERROR } = SOCKOPT_CONSTANTS.linux
  dataPlane = {
    epollCreate: () => failed(epollCreate1(O_CLOEXEC)),
    epollCtl: (epfd, op, fd, events) => {
      eventWords[0] = events
      eventWords[EPOLL_EVENT_DATA / 4] = fd
      return failed(epollCtl(epfd, op, fd, event))
    },
    epollWait: (epfd, events, maxEvents, timeoutMs) => failed(epollWait(epfd, events, maxEvents, timeoutMs)),
    splice: (fdIn, fdOut, length) => failed(splice(fdIn, null, fdOut, null, length, SPLICE_MOVE_NONBLOCK)),
    recv: (fd, buffer, length) => failed(recv(fd, buffer, length, MSG_DONTWAIT)),
    pageSize: pageSize > 0 ? pageSize : 65536,
    pipe: (size) => {
      if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) !== 0) return -koffi.errno()
      const [readEnd = -1, writeEnd = -1] = fds
      // fs.pipe-max-size caps the size; beyond fs.pipe-user-pages-soft an unprivileged user gets
      // EPERM and the pipe keeps what the kernel gave it (64 KiB, or less past the soft limit).
      const grown = base.fcntl(writeEnd, F_SETPIPE_SZ, size)
      const capacity = grown > 0 ? grown : base.fcntl(writeEnd, F_GETPIPE_SZ, 0)
      return [readEnd, writeEnd, capacity > 0 ? capacity : 4096]
    },
    shutdownWrite: (fd) => failed(shutdown(fd, 1)),
    socketError: (fd) => {
      errorValue[0] = 0
      errorLength[0] = 4
      return base.getsockoptInt(fd, SOL_SOCKET, SO_ERROR, errorValue, errorLength) !== 0 ? koffi.errno() : errorValue[0]
    },
    accept: (listenFd, address, length) => failed(accept4(listenFd, address, length, O_NONBLOCK | O_CLOEXEC)),
    tcpSocket: (sockaddr) => failed(base.socket(sockaddr.readUInt16LE(0), LINUX_STREAM_NONBLOCK_CLOEXEC, 0)),
    connect: (fd, sockaddr) => failed(connect(fd, sockaddr, sockaddr.length)),
    noDelay: (fd) => setInt(fd, IPPROTO_TCP, TCP_NODELAY, 1),
    setInt,
    stopListening: (fd) => failed(shutdown(fd, 0)),
    eventfd: () => failed(eventfd(0, O_NONBLOCK | O_CLOEXEC)),
    signal: (fd) => failed(write(fd, one, 8)),
    drainSignal: (fd) => failed(read(fd, counter, 8)),
    close: (fd) => failed(base.close(fd)),
    closeRange: closeRange === null ? null : (first, last) => failed(closeRange(first, last, 0))
  }
  return dataPlane
}
