import { formatHostPort, parseHostPort } from '../config/formats.js'

/** Where a route relays to: a TCP host (name or address) and port, or a Unix socket path. */
export type UpstreamTarget =
  | { readonly kind: 'tcp', readonly host: string, readonly port: number, readonly label: string }
  | { readonly kind: 'unix', readonly path: string, readonly label: string }

/** Parse `host:port`, `[v6]:port` or `unix:/absolute/path`; returns the target or the rule it breaks. */
export function parseUpstreamTarget (value: unknown): UpstreamTarget | { rule: string } {
  if (typeof value === 'string' && value.startsWith('unix:')) {
    const path = value.slice('unix:'.length)
    if (!path.startsWith('/') || path.length > 107 || path.includes('\0')) return { rule: 'must be unix:/absolute/path (at most 107 bytes)' }
    return { kind: 'unix', path, label: value }
  }
  const parsed = parseHostPort(value, 1)
  if ('rule' in parsed) return { rule: `${parsed.rule}, or unix:/path` }
  return { kind: 'tcp', host: parsed.host, port: parsed.port, label: formatHostPort(parsed) }
}

/**
 * The targets as one string for logs: `10.0.0.5:5432,10.0.0.6:5432`. Only transparent routes have
 * no configured target: each connection goes to its own original destination.
 */
export function targetsLabel (targets: readonly UpstreamTarget[]): string {
  return targets.length === 0 ? 'original-dst' : targets.map((target) => target.label).join(',')
}
