import http, { type IncomingMessage, type ServerResponse } from 'node:http'
import type { Socket } from 'node:net'
import type { Logger } from 'pino'
import { adminConfigIssues } from '../config/admin.js'
import { formatHostPort, type HostPort } from '../config/formats.js'
import type { RouteConfig } from '../config/types.js'
import { ConfigError, KaproxyError } from '../errors.js'
import type { Engine } from '../relay/engine.js'
import { BearerAuth } from './auth.js'
import type { Metrics } from './metrics.js'
import { STATUS_PAGE, STATUS_PAGE_CSP } from './status-page.js'
import { CONNECTIONS_LIMIT_DEFAULT, CONNECTIONS_LIMIT_MAX, connectionsView, routesView } from './views.js'

/** What the admin API shows; read at request time, so a reload's new routes appear at once. */
export interface AdminSource {
  engine: Engine
  routes: () => readonly RouteConfig[]
  ready: () => boolean
  metrics: Metrics
  /** POST /reload: re-read and apply the configuration (Kaproxy.reload); absent when reloads are not offered. */
  reload?: () => Promise<{ ok: boolean, error: { code: string } | null }>
}

export interface AdminServerOptions {
  listen: HostPort
  /** Bearer token; "" for none (allowed on loopback addresses only). */
  token: string
  source: AdminSource
  log: Logger
  /** Milliseconds in-flight requests get to finish on close() before their sockets are destroyed; default 1000. */
  closeGraceMs?: number
}

/** Longest request target accepted (bytes); longer gets 414. */
export const MAX_URL_BYTES = 2048
/** Largest header block accepted (bytes); larger gets 431 from Node's parser. */
export const MAX_HEADER_BYTES = 8192
const MAX_ADMIN_CONNECTIONS = 128

const JSON_TYPE = 'application/json; charset=utf-8'
const TEXT_TYPE = 'text/plain; charset=utf-8'

/** An error answer: `{ "error": { "code", "message" } }` with this status. */
class HttpError extends Error {
  constructor (readonly status: number, readonly code: string, message: string, readonly headers: Record<string, string> = {}) {
    super(message)
  }
}

type Handler = (url: URL) => Promise<{ type: string, body: string, status?: number }> | { type: string, body: string, status?: number }

/**
 * The admin HTTP API: health, readiness, Prometheus metrics, routes, live connections read back
 * from the kernel, and the status page. GET and HEAD, plus POST /reload; no request bodies.
 */
export class AdminServer {
  private readonly options: AdminServerOptions
  private readonly auth: BearerAuth
  private readonly server: http.Server
  private readonly sockets = new Set<Socket>()
  private readonly routes: ReadonlyMap<string, { auth: boolean, method?: 'POST', handler: Handler }>
  private closing: Promise<void> | null = null
  private boundAddress: string | null = null

  /** Throws ConfigError when the address is not loopback and no token is set. */
  constructor (options: AdminServerOptions) {
    const issues = adminConfigIssues({ listen: options.listen, token: options.token })
    if (issues.length > 0) throw new ConfigError(issues)
    this.options = options
    this.auth = new BearerAuth(options.token)
    const { source } = options
    this.routes = new Map<string, { auth: boolean, method?: 'POST', handler: Handler }>([
      // The page holds no data (it fetches it with the token), so it is served to anyone who can connect.
      ['/', { auth: false, handler: () => ({ type: 'text/html; charset=utf-8', body: STATUS_PAGE }) }],
      ['/healthz', { auth: false, handler: () => ({ type: TEXT_TYPE, body: 'ok\n' }) }],
      ['/readyz', { auth: false, handler: () => source.ready() ? { type: TEXT_TYPE, body: 'ready\n' } : { type: TEXT_TYPE, body: 'not ready\n', status: 503 } }],
      ['/metrics', {
        auth: true,
        handler: async () => {
          const { contentType, text } = await source.metrics.prometheus()
          return { type: contentType, body: text }
        }
      }],
      ['/stats', { auth: true, handler: () => json(source.metrics.snapshot()) }],
      ['/routes', { auth: true, handler: () => json({ ready: source.ready(), routes: routesView(source.routes(), source.engine, (route, side) => source.metrics.resetSilences(route, side)) }) }],
      ['/connections', { auth: true, handler: (url) => json(connectionsView(source.engine, this.connectionsQuery(url))) }],
      ['/reload', {
        auth: true,
        method: 'POST',
        handler: async () => {
          if (source.reload === undefined) throw new HttpError(404, 'KAPROXY_ERR_ADMIN_NOT_FOUND', 'reloads are not offered by this instance')
          const result = await source.reload()
          // 422: the new configuration was rejected (the old one keeps serving); 409: kaproxy is stopping.
          const status = result.ok ? 200 : result.error?.code === 'KAPROXY_ERR_STOPPING' ? 409 : 422
          return { ...json(result), status }
        }
      }]
    ])
    this.server = http.createServer({
      maxHeaderSize: MAX_HEADER_BYTES,
      headersTimeout: 10_000,
      requestTimeout: 30_000,
      keepAliveTimeout: 5_000
    }, (req, res) => { this.handle(req, res) })
    this.server.maxConnections = MAX_ADMIN_CONNECTIONS
    this.server.on('connection', (socket: Socket) => {
      this.sockets.add(socket)
      socket.once('close', () => this.sockets.delete(socket))
    })
    // Errors of a running server (not of listen) must not crash the proxy.
    this.server.on('clientError', (err: NodeJS.ErrnoException, socket: Socket) => {
      if (!socket.writable) { socket.destroy(); return }
      const status = err.code === 'HPE_HEADER_OVERFLOW' ? 431 : err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? 408 : 400
      socket.end(`HTTP/1.1 ${status} ${http.STATUS_CODES[status] ?? ''}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`)
    })
  }

  /** The bound `host:port` once listening (the real port when 0 was configured). */
  get address (): string | null {
    return this.boundAddress
  }

  /** Whether a bearer token is required (everywhere but /, /healthz and /readyz). */
  get tokenRequired (): boolean {
    return this.auth.required
  }

  /** Resolves with the bound address once listening; rejects with KAPROXY_ERR_LISTEN. */
  async listen (): Promise<string> {
    const { host, port } = this.options.listen
    await new Promise<void>((resolve, reject) => {
      const onError = (err: NodeJS.ErrnoException): void => {
        reject(new KaproxyError('KAPROXY_ERR_LISTEN', `admin API: cannot listen on ${formatHostPort(this.options.listen)}: ${err.code ?? err.message}`, { cause: err }))
      }
      this.server.once('error', onError)
      this.server.listen({ host, port }, () => {
        this.server.off('error', onError)
        resolve()
      })
    })
    this.server.on('error', (err) => { this.options.log.warn({ event: 'admin-error', err }, `admin API: ${err.message}`) })
    const bound = this.server.address()
    this.boundAddress = bound !== null && typeof bound === 'object' ? formatHostPort({ host: bound.address, port: bound.port }) : String(bound)
    this.options.log.info({ event: 'admin-listening', address: this.boundAddress, token: this.auth.required }, `admin API listening on http://${this.boundAddress}/`)
    return this.boundAddress
  }

  /**
   * Stop accepting; requests already being answered finish (with `Connection: close`) within
   * closeGraceMs, then every socket is destroyed. Idempotent; a second call joins the first.
   */
  async close (): Promise<void> {
    this.closing ??= new Promise<void>((resolve) => {
      if (!this.server.listening) { resolve(); return }
      const timer = setTimeout(() => { this.destroy() }, this.options.closeGraceMs ?? 1000)
      timer.unref()
      this.server.close(() => { clearTimeout(timer); resolve() })
      this.server.closeIdleConnections()
    })
    return await this.closing
  }

  /** Close at once: every socket is destroyed, in-flight requests included. */
  destroy (): void {
    if (this.server.listening) this.server.close()
    for (const socket of this.sockets) socket.destroy()
  }

  private connectionsQuery (url: URL): { route?: string, limit: number } {
    const allowed = new Set(['route', 'limit'])
    for (const key of url.searchParams.keys()) {
      if (!allowed.has(key)) throw new HttpError(400, 'KAPROXY_ERR_ADMIN_BAD_REQUEST', `unknown query parameter ${JSON.stringify(key)} (allowed: route, limit)`)
    }
    let limit = CONNECTIONS_LIMIT_DEFAULT
    const rawLimit = url.searchParams.get('limit')
    if (rawLimit !== null) {
      limit = /^\d{1,6}$/.test(rawLimit) ? Number(rawLimit) : NaN
      if (!(limit >= 1 && limit <= CONNECTIONS_LIMIT_MAX)) {
        throw new HttpError(400, 'KAPROXY_ERR_ADMIN_BAD_REQUEST', `limit must be an integer 1..${CONNECTIONS_LIMIT_MAX} (got ${JSON.stringify(rawLimit)})`)
      }
    }
    const route = url.searchParams.get('route')
    if (route === null) return { limit }
    if (!this.options.source.routes().some((r) => r.name === route)) {
      throw new HttpError(404, 'KAPROXY_ERR_ADMIN_NOT_FOUND', `no route named ${JSON.stringify(route)}`)
    }
    return { route, limit }
  }

  private handle (req: IncomingMessage, res: ServerResponse): void {
    const started = process.hrtime.bigint()
    res.on('finish', () => {
      this.options.log.debug({ event: 'admin-request', method: req.method, url: req.url?.slice(0, 200), status: res.statusCode, ms: Number(process.hrtime.bigint() - started) / 1e6 }, 'admin request')
    })
    // While closing, answer what is in flight and let the socket go.
    if (this.closing !== null) res.setHeader('Connection', 'close')
    this.respond(req, res).catch((err: unknown) => {
      // The handlers do not throw; this only guards the socket.
      this.options.log.error({ event: 'admin-error', err }, 'admin API handler failed')
      if (!res.headersSent) send(res, 500, JSON_TYPE, errorBody('KAPROXY_ERR_ADMIN_INTERNAL', 'internal error'))
      else res.destroy()
    })
  }

  private async respond (req: IncomingMessage, res: ServerResponse): Promise<void> {
    try {
      const target = req.url ?? '/'
      if (Buffer.byteLength(target) > MAX_URL_BYTES) throw new HttpError(414, 'KAPROXY_ERR_ADMIN_URI_TOO_LONG', `request target longer than ${MAX_URL_BYTES} bytes`)
      // No endpoint takes a body (POST /reload re-reads the file), so none is read.
      if ((req.headers['content-length'] !== undefined && req.headers['content-length'] !== '0') || req.headers['transfer-encoding'] !== undefined) {
        res.setHeader('Connection', 'close')
        throw new HttpError(413, 'KAPROXY_ERR_ADMIN_BODY', 'the admin API takes no request body')
      }
      const url = new URL(target, 'http://admin.invalid')
      const route = this.routes.get(url.pathname)
      if (route === undefined) throw new HttpError(404, 'KAPROXY_ERR_ADMIN_NOT_FOUND', `no such endpoint ${JSON.stringify(url.pathname)} (try /, /healthz, /readyz, /metrics, /routes, /connections, /stats, POST /reload)`)
      const allowed = route.method === 'POST' ? ['POST'] : ['GET', 'HEAD']
      if (!allowed.includes(req.method ?? '')) throw new HttpError(405, 'KAPROXY_ERR_ADMIN_METHOD', `method ${String(req.method)} not allowed`, { Allow: allowed.join(', ') })
      if (route.auth) {
        const auth = this.auth.check(req.headers.authorization)
        if (auth !== 'ok') {
          throw new HttpError(401, 'KAPROXY_ERR_ADMIN_UNAUTHORIZED', auth === 'missing' ? 'a bearer token is required (Authorization: Bearer TOKEN)' : 'invalid bearer token',
            { 'WWW-Authenticate': auth === 'missing' ? 'Bearer realm="kaproxy"' : 'Bearer realm="kaproxy", error="invalid_token"' })
        }
      }
      const result = await route.handler(url)
      if (url.pathname === '/') res.setHeader('Content-Security-Policy', STATUS_PAGE_CSP)
      send(res, result.status ?? 200, result.type, result.body)
    } catch (err) {
      if (!(err instanceof HttpError)) throw err
      for (const [name, value] of Object.entries(err.headers)) res.setHeader(name, value)
      send(res, err.status, JSON_TYPE, errorBody(err.code, err.message))
    }
  }
}

function json (value: unknown): { type: string, body: string } {
  return { type: JSON_TYPE, body: `${JSON.stringify(value, null, 2)}\n` }
}

function errorBody (code: string, message: string): string {
  return `${JSON.stringify({ error: { code, message } })}\n`
}

function send (res: ServerResponse, status: number, type: string, body: string): void {
  res.statusCode = status
  res.setHeader('Content-Type', type)
  res.setHeader('Content-Length', Buffer.byteLength(body))
  res.setHeader('Cache-Control', 'no-store')
  res.setHeader('X-Content-Type-Options', 'nosniff')
  res.end(body)
}
