// Looking at another process's sockets from the test: `ss -tnpoi` inside the namespace finds them (with
// their owner's pid and descriptor number and the keepalive timer), and pidfd_getfd(2) duplicates one
// into the test process so its options are read back with getsockopt, exactly as the owner set them.
// Needs Linux 5.6+ and ptrace rights over the owner (root with CAP_SYS_PTRACE).
import { readdirSync } from 'node:fs'
import koffi from 'koffi'
import { errnoName, getsockoptInt, sockoptConstants, closeDescriptor } from '../../src/sockopt/libc.js'
import type { Lab, Role } from './lab.js'

/** One established TCP socket as `ss -tnpoi` shows it. */
export interface SsSocket {
  local: string
  peer: string
  localPort: number
  peerPort: number
  /** Owners: pid and descriptor number in that process. */
  users: Array<{ pid: number, fd: number }>
  /** `timer:(keepalive,9.8sec,0)` -> { kind: 'keepalive', text: '9.8sec', probes: 0 }; undefined without a timer. */
  timer: { kind: string, text: string, probes: number } | undefined
  line: string
}

function portOf (address: string): number {
  return Number(address.slice(address.lastIndexOf(':') + 1))
}

/** Parse `ss -tnpoiH` output (a socket line, then its tab-indented info line). */
export function parseSs (text: string): SsSocket[] {
  const sockets: SsSocket[] = []
  for (const line of text.split('\n')) {
    if (line.trim() === '' || /^\s/.test(line)) continue
    const fields = line.trim().split(/\s+/)
    // With a state filter ss omits the State column: Recv-Q Send-Q Local Peer ...
    const local = fields[2] ?? ''
    const peer = fields[3] ?? ''
    const users = [...line.matchAll(/pid=(\d+),fd=(\d+)/g)].map((m) => ({ pid: Number(m[1]), fd: Number(m[2]) }))
    const timer = /timer:\((\w+),([^,]+),(\d+)\)/.exec(line)
    sockets.push({
      local,
      peer,
      localPort: portOf(local),
      peerPort: portOf(peer),
      users,
      timer: timer === null ? undefined : { kind: timer[1] ?? '', text: timer[2] ?? '', probes: Number(timer[3]) },
      line
    })
  }
  return sockets
}

/** Established TCP sockets in namespace `role`, all or those owned by `pid`. */
export async function establishedSockets (lab: Lab, role: Role, pid?: number): Promise<SsSocket[]> {
  const { stdout } = await lab.exec(role, 'ss', ['-tnpoiH', 'state', 'established'])
  const all = parseSs(stdout)
  return pid === undefined ? all : all.filter((s) => s.users.some((u) => u.pid === pid))
}

/** Seconds left on an ss timer text: `9.8sec` -> 9.8, `1min2sec` -> 62, `980ms` -> 0.98. iproute2 6.1 prints `1.360ms` for 1.36 s. */
export function timerSeconds (text: string): number {
  let total = 0
  for (const m of text.matchAll(/([\d.]+)(min|sec|ms)/g)) {
    const value = Number(m[1])
    if (m[2] === 'min') total += value * 60
    else if (m[2] === 'sec') total += value
    else total += (m[1] ?? '').includes('.') ? value : value / 1000
  }
  return total
}

type PidfdOpen = (pid: number, flags: number) => number
type PidfdGetfd = (pidfd: number, targetfd: number, flags: number) => number
let pidfd: { open: PidfdOpen, getfd: PidfdGetfd } | undefined

function pidfdCalls (): { open: PidfdOpen, getfd: PidfdGetfd } {
  if (pidfd !== undefined) return pidfd
  const libc = koffi.load('libc.so.6')
  pidfd = {
    open: libc.func('int pidfd_open(int pid, unsigned int flags)') as PidfdOpen,
    getfd: libc.func('int pidfd_getfd(int pidfd, int targetfd, unsigned int flags)') as PidfdGetfd
  }
  return pidfd
}

/** What getsockopt reports for a socket of another process. */
export interface RemoteSockopts {
  keepalive: boolean
  idleSec: number
  intervalSec: number
  count: number
  userTimeoutMs: number
  mark: number
}

/** Duplicate descriptor `fd` of process `pid` into this process, read its options with getsockopt, close the copy. */
export function readRemoteSockopts (pid: number, fd: number): RemoteSockopts {
  const calls = pidfdCalls()
  const handle = calls.open(pid, 0)
  if (handle < 0) throw new Error(`pidfd_open(${pid}) failed: ${errnoName(koffi.errno())}`)
  try {
    const copy = calls.getfd(handle, fd, 0)
    if (copy < 0) throw new Error(`pidfd_getfd(${pid}, ${fd}) failed: ${errnoName(koffi.errno())}`)
    try {
      const c = sockoptConstants()
      const tcp = (name: number | undefined, option: string): number => getsockoptInt(copy, c.IPPROTO_TCP, name ?? -1, option)
      return {
        keepalive: getsockoptInt(copy, c.SOL_SOCKET, c.SO_KEEPALIVE, 'SO_KEEPALIVE') !== 0,
        idleSec: tcp(c.TCP_KEEPIDLE, 'TCP_KEEPIDLE'),
        intervalSec: tcp(c.TCP_KEEPINTVL, 'TCP_KEEPINTVL'),
        count: tcp(c.TCP_KEEPCNT, 'TCP_KEEPCNT'),
        userTimeoutMs: tcp(c.TCP_USER_TIMEOUT, 'TCP_USER_TIMEOUT'),
        mark: getsockoptInt(copy, c.SOL_SOCKET, c.SO_MARK ?? -1, 'SO_MARK') >>> 0
      }
    } finally {
      closeDescriptor(copy)
    }
  } finally {
    closeDescriptor(handle)
  }
}

/** How many descriptors process `pid` has open (/proc/PID/fd). */
export function openDescriptors (pid: number): number {
  return readdirSync(`/proc/${pid}/fd`).length
}
