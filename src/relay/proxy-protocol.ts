import { isIPv4, isIPv6 } from 'node:net'
import { KaproxyError } from '../errors.js'

/** The addresses a PROXY protocol header carries; null addresses mean UNKNOWN / LOCAL. */
export interface ProxiedAddresses {
  source: { address: string, port: number } | null
  destination: { address: string, port: number } | null
}

// The v2 signature: \r\n\r\n\0\r\nQUIT\n (spec section 2.2).
export const V2_SIGNATURE = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a])
const V1_MAX = 107

function strip4in6 (address: string): string {
  return address.startsWith('::ffff:') && isIPv4(address.slice(7)) ? address.slice(7) : address
}

function family (a: ProxiedAddresses): 4 | 6 | null {
  if (a.source === null || a.destination === null) return null
  const src = strip4in6(a.source.address)
  const dst = strip4in6(a.destination.address)
  if (isIPv4(src) && isIPv4(dst)) return 4
  if (isIPv6(a.source.address) && isIPv6(a.destination.address)) return 6
  return null
}

/** `PROXY TCP4 src dst sport dport\r\n` (or `PROXY UNKNOWN\r\n`), spec section 2.1. */
export function encodeV1 (a: ProxiedAddresses): Buffer {
  const fam = family(a)
  if (fam === null || a.source === null || a.destination === null) return Buffer.from('PROXY UNKNOWN\r\n', 'latin1')
  const src = fam === 4 ? strip4in6(a.source.address) : a.source.address
  const dst = fam === 4 ? strip4in6(a.destination.address) : a.destination.address
  return Buffer.from(`PROXY TCP${fam} ${src} ${dst} ${a.source.port} ${a.destination.port}\r\n`, 'latin1')
}

function ipv6Bytes (address: string): Buffer {
  // Expand "::" and an embedded IPv4 tail into 8 groups.
  let text = address
  const v4 = /(\d+\.\d+\.\d+\.\d+)$/.exec(text)
  if (v4?.[1] !== undefined) {
    const [a, b, c, d] = v4[1].split('.').map(Number) as [number, number, number, number]
    text = text.slice(0, -v4[1].length) + `${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`
  }
  const [head, tail] = text.split('::') as [string, string | undefined]
  const headGroups = head === '' ? [] : head.split(':')
  const tailGroups = tail === undefined || tail === '' ? [] : tail.split(':')
  const groups = tail === undefined ? headGroups : [...headGroups, ...new Array<string>(8 - headGroups.length - tailGroups.length).fill('0'), ...tailGroups]
  const bytes = Buffer.alloc(16)
  groups.forEach((group, i) => bytes.writeUInt16BE(parseInt(group, 16), i * 2))
  return bytes
}

/** The binary v2 header (PROXY command, TCP over IPv4/IPv6, or LOCAL when unknown), spec section 2.2. */
export function encodeV2 (a: ProxiedAddresses): Buffer {
  const fam = family(a)
  if (fam === null || a.source === null || a.destination === null) {
    return Buffer.concat([V2_SIGNATURE, Buffer.from([0x20, 0x00, 0x00, 0x00])])
  }
  if (fam === 4) {
    const body = Buffer.alloc(12)
    strip4in6(a.source.address).split('.').forEach((octet, i) => { body[i] = Number(octet) })
    strip4in6(a.destination.address).split('.').forEach((octet, i) => { body[4 + i] = Number(octet) })
    body.writeUInt16BE(a.source.port, 8)
    body.writeUInt16BE(a.destination.port, 10)
    return Buffer.concat([V2_SIGNATURE, Buffer.from([0x21, 0x11, 0x00, 12]), body])
  }
  const body = Buffer.alloc(36)
  ipv6Bytes(a.source.address).copy(body, 0)
  ipv6Bytes(a.destination.address).copy(body, 16)
  body.writeUInt16BE(a.source.port, 32)
  body.writeUInt16BE(a.destination.port, 34)
  return Buffer.concat([V2_SIGNATURE, Buffer.from([0x21, 0x21, 0x00, 36]), body])
}

export class ProxyHeaderError extends KaproxyError {
  constructor (message: string) {
    super('KAPROXY_ERR_PROXY_HEADER', `malformed PROXY protocol header: ${message}`)
  }
}

/** A parsed header and the bytes after it, which belong to the stream. */
export interface ParsedHeader {
  addresses: ProxiedAddresses
  rest: Buffer
}

const V1_LINE = /^PROXY (?:UNKNOWN(?: .*)?|(TCP4|TCP6) (\S+) (\S+) (\d{1,5}) (\d{1,5}))$/

function parsePort (text: string): number {
  const port = Number(text)
  if (!Number.isInteger(port) || port > 65535 || (text.length > 1 && text.startsWith('0'))) throw new ProxyHeaderError(`bad port ${JSON.stringify(text)}`)
  return port
}

function parseV1 (buffer: Buffer): ParsedHeader | null {
  const end = buffer.indexOf('\r\n', 0, 'latin1')
  if (end < 0) {
    if (buffer.length >= V1_MAX) throw new ProxyHeaderError(`v1 line longer than ${V1_MAX} bytes`)
    if (buffer.includes(0x0a)) throw new ProxyHeaderError('v1 line ends without CRLF')
    return null
  }
  if (end + 2 > V1_MAX) throw new ProxyHeaderError(`v1 line longer than ${V1_MAX} bytes`)
  const line = buffer.toString('latin1', 0, end)
  const match = V1_LINE.exec(line)
  if (match === null) throw new ProxyHeaderError(`bad v1 line ${JSON.stringify(line.slice(0, 60))}`)
  const rest = buffer.subarray(end + 2)
  if (match[1] === undefined) return { addresses: { source: null, destination: null }, rest }
  const [, proto, src = '', dst = '', sport = '', dport = ''] = match
  const valid = proto === 'TCP4' ? isIPv4 : isIPv6
  if (!valid(src) || !valid(dst)) throw new ProxyHeaderError(`bad ${String(proto)} address in ${JSON.stringify(line)}`)
  return { addresses: { source: { address: src, port: parsePort(sport) }, destination: { address: dst, port: parsePort(dport) } }, rest }
}

function ipv6Text (bytes: Buffer): string {
  const groups: string[] = []
  for (let i = 0; i < 16; i += 2) groups.push(bytes.readUInt16BE(i).toString(16))
  // The WHATWG URL parser prints the canonical (RFC 5952) form.
  return new URL(`http://[${groups.join(':')}]/`).hostname.slice(1, -1)
}

function parseV2 (buffer: Buffer): ParsedHeader | null {
  if (buffer.length < 16) return null
  const verCmd = buffer[12] ?? 0
  if ((verCmd & 0xf0) !== 0x20) throw new ProxyHeaderError(`unsupported v2 version ${verCmd >> 4}`)
  const command = verCmd & 0x0f
  if (command > 1) throw new ProxyHeaderError(`unsupported v2 command ${command}`)
  const length = buffer.readUInt16BE(14)
  if (buffer.length < 16 + length) return null
  const rest = buffer.subarray(16 + length)
  const fam = buffer[13] ?? 0
  if (command === 0) return { addresses: { source: null, destination: null }, rest } // LOCAL: health check from the LB
  const body = buffer.subarray(16, 16 + length)
  if (fam === 0x11) {
    if (length < 12) throw new ProxyHeaderError('v2 TCP4 block shorter than 12 bytes')
    const ip = (offset: number): string => [...body.subarray(offset, offset + 4)].join('.')
    return { addresses: { source: { address: ip(0), port: body.readUInt16BE(8) }, destination: { address: ip(4), port: body.readUInt16BE(10) } }, rest }
  }
  if (fam === 0x21) {
    if (length < 36) throw new ProxyHeaderError('v2 TCP6 block shorter than 36 bytes')
    return { addresses: { source: { address: ipv6Text(body.subarray(0, 16)), port: body.readUInt16BE(32) }, destination: { address: ipv6Text(body.subarray(16, 32)), port: body.readUInt16BE(34) } }, rest }
  }
  if (fam === 0x00) return { addresses: { source: null, destination: null }, rest }
  throw new ProxyHeaderError(`unsupported v2 address family/protocol 0x${fam.toString(16)}`)
}

/**
 * Parse a PROXY protocol v1 or v2 header from the first bytes of a connection. Returns null
 * while more bytes are needed, throws ProxyHeaderError when the bytes cannot be a valid header.
 */
export function parseProxyHeader (buffer: Buffer): ParsedHeader | null {
  const probe = Math.min(buffer.length, V2_SIGNATURE.length)
  if (buffer.subarray(0, probe).equals(V2_SIGNATURE.subarray(0, probe))) {
    return buffer.length < V2_SIGNATURE.length ? null : parseV2(buffer)
  }
  const v1Probe = Math.min(buffer.length, 6)
  if (buffer.toString('latin1', 0, v1Probe) !== 'PROXY '.slice(0, v1Probe)) throw new ProxyHeaderError('does not start with a v1 or v2 signature')
  return parseV1(buffer)
}
