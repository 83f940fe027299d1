import { isIP } from 'node:net'
import type { ConfigIssue } from '../errors.js'
import { formatHostPort } from './formats.js'
import type { AdminConfig } from './types.js'

/**
 * Whether a listen host only accepts connections from this machine: 127.0.0.0/8, ::1,
 * ::ffff:127.x.y.z or `localhost`. Wildcards (0.0.0.0, ::) and other names are not.
 */
export function isLoopbackHost (host: string): boolean {
  const lower = host.toLowerCase()
  if (lower === 'localhost' || lower === 'localhost.') return true
  if (isIP(lower) === 4) return lower.startsWith('127.')
  if (isIP(lower) === 6) return lower === '::1' || lower === '0:0:0:0:0:0:0:1' || /^::ffff:127\./.test(lower)
  return false
}

// RFC 6750 b64token: what a client can put after `Bearer ` without quoting.
const BEARER_TOKEN = /^[A-Za-z0-9\-._~+/]+=*$/

/**
 * The admin settings' problems: a token that cannot be sent as a bearer token, and a
 * non-loopback listen address without a token (anyone who can reach it could read every
 * connection's peers). Empty when valid.
 */
export function adminConfigIssues (admin: AdminConfig): ConfigIssue[] {
  const issues: ConfigIssue[] = []
  if (admin.token !== '' && !BEARER_TOKEN.test(admin.token)) {
    // The token is a secret: never echo it.
    issues.push({ path: 'admin.token', message: 'must be a bearer token: letters, digits and -._~+/ (optionally ending in =)' })
  }
  if (admin.listen !== null && admin.token === '' && !isLoopbackHost(admin.listen.host)) {
    issues.push({
      path: 'admin.token',
      message: `required when admin.listen is not a loopback address (admin.listen is ${formatHostPort(admin.listen)}): ` +
        'set admin.token or KAPROXY_ADMIN_TOKEN, or listen on 127.0.0.1'
    })
  }
  return issues
}
