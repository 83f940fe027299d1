import { isIPv4, isIPv6, type Socket } from 'node:net'
import { formatHostPort } from '../config/formats.js'
import { SockoptError } from '../errors.js'
import { socketFd } from '../keepalive.js'
import { getsockoptBuffer } from './libc.js'

// Linux netfilter: getsockopt(SOL_IP, SO_ORIGINAL_DST) and getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST)
// return the destination a connection had before an iptables REDIRECT/DNAT rewrote it.
const SOL_IP = 0
const SOL_IPV6 = 41
const SO_ORIGINAL_DST = 80
const IP6T_SO_ORIGINAL_DST = 80

// struct sockaddr_in / sockaddr_in6 (Linux): family in host order at 0, port in network order at 2,
// then the IPv4 address at 4 or (after flowinfo) the IPv6 address at 8. Read with Buffer methods:
// a client's address is decoded on every accept, where koffi.decode cost a microsecond.
export const SOCKADDR_IN_SIZE = 16
const SOCKADDR_IN6_SIZE = 28

/** Where a redirected connection was going. */
export interface OriginalDestination {
  address: string
  port: number
  family: 4 | 6
}

/** Whether this platform can read original destinations at all. */
export const originalDstSupported = process.platform === 'linux'

function ipv4Text (bytes: Uint8Array, at: number): string {
  return `${bytes[at] ?? 0}.${bytes[at + 1] ?? 0}.${bytes[at + 2] ?? 0}.${bytes[at + 3] ?? 0}`
}

function ipv6Text (bytes: Uint8Array): string {
  // An IPv4 client of a dual-stack socket, written as Node writes it (::ffff:a.b.c.d).
  if (bytes.subarray(0, 10).every((byte) => byte === 0) && bytes[10] === 0xff && bytes[11] === 0xff) return `::ffff:${ipv4Text(bytes, 12)}`
  const groups: string[] = []
  for (let i = 0; i < 16; i += 2) groups.push((((bytes[i] ?? 0) << 8) | (bytes[i + 1] ?? 0)).toString(16))
  // The WHATWG URL parser prints the canonical (RFC 5952) form.
  return new URL(`http://[${groups.join(':')}]/`).hostname.slice(1, -1)
}

export const AF_INET = 2
const AF_INET6 = 10

/** `host` and `port` of raw `struct sockaddr_in` / `sockaddr_in6` bytes (Linux); null for any other family. */
export function decodeSockaddr (bytes: Buffer): { address: string, port: number } | null {
  if (bytes.length < 2) return null
  const family = bytes.readUInt16LE(0)
  if (family === AF_INET && bytes.length >= SOCKADDR_IN_SIZE) return { address: ipv4Text(bytes, 4), port: bytes.readUInt16BE(2) }
  if (family === AF_INET6 && bytes.length >= SOCKADDR_IN6_SIZE) return { address: ipv6Text(bytes.subarray(8, 24)), port: bytes.readUInt16BE(2) }
  return null
}

/** `host:port` (IPv6 in brackets) of raw `struct sockaddr` bytes; null for none or another family. */
export function sockaddrText (bytes: Buffer | null): string | null {
  const decoded = bytes === null ? null : decodeSockaddr(bytes)
  return decoded === null ? null : formatHostPort({ host: decoded.address, port: decoded.port })
}

/** Raw `struct sockaddr_in` / `sockaddr_in6` bytes (Linux) for a numeric IPv4 or IPv6 address, to connect(2) to. */
export function encodeSockaddr (address: string, port: number): Buffer {
  if (isIPv4(address)) {
    const bytes = Buffer.alloc(SOCKADDR_IN_SIZE)
    bytes.writeUInt16LE(AF_INET, 0)
    bytes.writeUInt16BE(port, 2)
    address.split('.').forEach((part, i) => { bytes[4 + i] = Number(part) })
    return bytes
  }
  if (!isIPv6(address)) throw new TypeError(`not a numeric IP address: ${address}`)
  const bytes = Buffer.alloc(SOCKADDR_IN6_SIZE)
  bytes.writeUInt16LE(AF_INET6, 0)
  bytes.writeUInt16BE(port, 2)
  // Expand '::' to the missing zero groups; an embedded IPv4 tail becomes two groups.
  let text = address
  const v4 = /(\d+\.\d+\.\d+\.\d+)$/.exec(text)
  if (v4?.[1] !== undefined) {
    const [a = 0, b = 0, c = 0, d = 0] = v4[1].split('.').map(Number)
    text = text.slice(0, -v4[1].length) + `${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`
  }
  const [head = '', tail] = text.split('::')
  const left = head === '' ? [] : head.split(':')
  const right = tail === undefined || tail === '' ? [] : tail.split(':')
  const groups = tail === undefined ? left : [...left, ...Array<string>(8 - left.length - right.length).fill('0'), ...right]
  groups.forEach((group, i) => { bytes.writeUInt16BE(parseInt(group, 16), 8 + i * 2) })
  return bytes
}

/**
 * Read the pre-NAT destination of an accepted socket. Throws SockoptError with errno ENOENT when
 * the connection was not redirected (no conntrack NAT entry).
 */
export function originalDestination (socket: Socket): OriginalDestination {
  const fd = socketFd(socket)
  const local = socket.localAddress ?? ''
  const six = local.includes(':') && !local.startsWith('::ffff:')
  const buffer = Buffer.alloc(six ? SOCKADDR_IN6_SIZE : SOCKADDR_IN_SIZE)
  if (six) getsockoptBuffer(fd, SOL_IPV6, IP6T_SO_ORIGINAL_DST, buffer, 'IP6T_SO_ORIGINAL_DST')
  else getsockoptBuffer(fd, SOL_IP, SO_ORIGINAL_DST, buffer, 'SO_ORIGINAL_DST')
  const decoded = decodeSockaddr(buffer)
  if (decoded === null) throw new SockoptError('getsockopt', 'EAFNOSUPPORT', six ? 'IP6T_SO_ORIGINAL_DST' : 'SO_ORIGINAL_DST')
  return { ...decoded, family: six ? 6 : 4 }
}
