import { isIP } from 'node:net'

/** A parsed `host:port` / `[v6]:port` address. */
export interface HostPort {
  host: string
  port: number
}

const DURATION = /^(\d+)(ms|s|m|h)?$/
const UNIT_MS: Readonly<Record<string, number>> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }

/**
 * Parse a duration: `500ms`, `30s`, `5m`, `2h`, or a bare integer of seconds (number or string).
 * Returns milliseconds, or undefined when the value is not a duration.
 */
export function parseDurationMs (value: unknown): number | undefined {
  if (typeof value === 'number') return Number.isSafeInteger(value) && value >= 0 ? value * 1000 : undefined
  if (typeof value !== 'string') return undefined
  const match = DURATION.exec(value.trim())
  if (match === null) return undefined
  const amount = Number(match[1])
  const ms = amount * (UNIT_MS[match[2] ?? 's'] ?? 1000)
  return Number.isSafeInteger(ms) ? ms : undefined
}

/** Format milliseconds the way a user would write them: `90s`, `2m`, `500ms`. */
export function formatDuration (ms: number): string {
  if (ms % 3_600_000 === 0 && ms !== 0) return `${ms / 3_600_000}h`
  if (ms % 60_000 === 0 && ms !== 0) return `${ms / 60_000}m`
  if (ms % 1000 === 0) return `${ms / 1000}s`
  return `${ms}ms`
}

const HOSTNAME = /^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$/

/**
 * Parse `host:port` or `[v6]:port`. `minPort` is 0 for listen addresses (0 = any free port).
 * Returns the address or the rule it breaks.
 */
export function parseHostPort (value: unknown, minPort: 0 | 1): HostPort | { rule: string } {
  const rule = `must be host:port or [ipv6]:port with port ${minPort}..65535`
  if (typeof value !== 'string') return { rule }
  let host: string
  let portText: string
  if (value.startsWith('[')) {
    const end = value.indexOf(']:')
    if (end < 0) return { rule }
    host = value.slice(1, end)
    portText = value.slice(end + 2)
    if (isIP(host) !== 6) return { rule: 'must have a valid IPv6 address inside [ ]' }
  } else {
    const colon = value.lastIndexOf(':')
    if (colon <= 0) return { rule }
    host = value.slice(0, colon)
    portText = value.slice(colon + 1)
    if (host.includes(':')) return { rule: 'must put an IPv6 address in brackets: [::1]:port' }
    if (isIP(host) === 0 && !HOSTNAME.test(host)) return { rule: 'must have a valid IPv4 address or hostname' }
  }
  if (!/^\d{1,5}$/.test(portText)) return { rule }
  const port = Number(portText)
  if (port < minPort || port > 65535) return { rule }
  return { host, port }
}

/** `host:port`, with brackets around IPv6 addresses. */
export function formatHostPort (address: HostPort): string {
  // Joined, not concatenated: a flat string, where `${host}:${port}` makes a rope (several heap
  // objects) that every connection record would keep. Only an IPv6 literal contains ':'.
  return [address.host.includes(':') ? `[${address.host}]` : address.host, address.port].join(':')
}
