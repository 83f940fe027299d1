/** Base class of every error kaproxy throws on purpose; `code` is stable and documented. */
export class KaproxyError extends Error {
  readonly code: string
  constructor (code: string, message: string, options?: ErrorOptions) {
    super(message, options)
    this.name = new.target.name
    this.code = code
  }
}

/** One invalid field of a configuration: `path` like `routes[1].keepalive.upstream.count`. */
export interface ConfigIssue {
  path: string
  message: string
}

/** The configuration was rejected; every problem found is listed in `issues`. */
export class ConfigError extends KaproxyError {
  readonly issues: readonly ConfigIssue[]
  constructor (issues: readonly ConfigIssue[], source?: string) {
    const lines = issues.map((i) => i.path === '' ? i.message : `${i.path}: ${i.message}`)
    super('KAPROXY_ERR_CONFIG', `invalid configuration${source === undefined ? '' : ` in ${source}`}:\n  ${lines.join('\n  ')}`)
    this.issues = issues
  }
}

/** A setsockopt/getsockopt (or other libc) call failed; `errno` is the OS error name (`EINVAL`, `EBADF`, `EMFILE`, ...). */
export class SockoptError extends KaproxyError {
  readonly errno: string
  readonly option: string
  readonly value: number | undefined
  constructor (op: 'setsockopt' | 'getsockopt' | 'getrlimit' | 'fcntl', errno: string, option: string, value?: number) {
    super('KAPROXY_ERR_SOCKOPT',
      `${op}(${option}${value === undefined ? '' : ` = ${value}`}) failed: ${errno}`)
    this.errno = errno
    this.option = option
    this.value = value
  }
}

/** The socket has no OS descriptor (not connected yet, already closed, or not a TCP socket). */
export class NoDescriptorError extends KaproxyError {
  constructor (what: string) {
    super('KAPROXY_ERR_NO_FD', `${what} has no file descriptor (not connected, or already closed)`)
  }
}

/** The admin API could not be reached (refused, unreachable, timed out): `cause` has the socket error. */
export class AdminUnreachableError extends KaproxyError {
  readonly url: string
  /** What went wrong, e.g. `connection refused (ECONNREFUSED)`. */
  readonly reason: string
  constructor (url: string, reason: string, hint = '', options?: ErrorOptions) {
    super('KAPROXY_ERR_ADMIN_UNREACHABLE', `cannot reach the admin API at ${url}: ${reason}${hint === '' ? '' : `; ${hint}`}`, options)
    this.url = url
    this.reason = reason
  }
}

/** The admin API answered with an error status; `statusCode` is the HTTP status, `detail` the server's message. */
export class AdminResponseError extends KaproxyError {
  readonly url: string
  readonly statusCode: number
  readonly detail: string
  constructor (url: string, statusCode: number, detail: string, hint = '') {
    super('KAPROXY_ERR_ADMIN_RESPONSE', `admin API ${url} answered ${statusCode}: ${detail}${hint === '' ? '' : `; ${hint}`}`)
    this.url = url
    this.statusCode = statusCode
    this.detail = detail
  }
}
