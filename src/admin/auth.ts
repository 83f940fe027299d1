import { createHash, timingSafeEqual } from 'node:crypto'

function sha256 (text: string): Buffer {
  return createHash('sha256').update(text, 'utf8').digest()
}

const BEARER = /^Bearer[ \t]+([^\s]+)[ \t]*$/i

/** The outcome of checking a request's `Authorization` header. */
export type AuthResult = 'ok' | 'missing' | 'invalid'

/**
 * Bearer-token check for the admin API. Tokens are compared as SHA-256 digests with
 * timingSafeEqual: equal lengths whatever was sent, so the time taken tells nothing about the token.
 */
export class BearerAuth {
  private readonly digest: Buffer | null

  /** `token` "" means no token is required. */
  constructor (token: string) {
    this.digest = token === '' ? null : sha256(token)
  }

  get required (): boolean {
    return this.digest !== null
  }

  check (authorization: string | undefined): AuthResult {
    if (this.digest === null) return 'ok'
    if (authorization === undefined || authorization === '') return 'missing'
    const match = BEARER.exec(authorization)
    if (match === null) return 'invalid'
    return timingSafeEqual(sha256(match[1] ?? ''), this.digest) ? 'ok' : 'invalid'
  }
}
