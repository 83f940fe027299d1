import { Client } from 'undici'
import { AdminResponseError, AdminUnreachableError } from '../errors.js'

export interface AdminClientOptions {
  /** Bearer token; "" sends none. */
  token?: string
  /** Milliseconds to connect, and to wait for the response headers and body; default 5000. */
  timeoutMs?: number
}

const REASONS: Readonly<Record<string, string>> = {
  ECONNREFUSED: 'connection refused',
  ECONNRESET: 'connection reset',
  EHOSTUNREACH: 'host unreachable',
  ENETUNREACH: 'network unreachable',
  ENOTFOUND: 'host not found',
  EAI_AGAIN: 'host name lookup failed',
  UND_ERR_CONNECT_TIMEOUT: 'connect timed out',
  UND_ERR_HEADERS_TIMEOUT: 'no answer in time',
  UND_ERR_BODY_TIMEOUT: 'answer stalled',
  UND_ERR_SOCKET: 'connection closed'
}

function reasonOf (err: unknown): string {
  const code = (err as { code?: unknown } | null)?.code
  if (typeof code === 'string') return `${REASONS[code] ?? 'failed'} (${code})`
  return err instanceof Error ? err.message : String(err)
}

/** A client of the admin API (undici), one keep-alive connection; close() when done. */
export class AdminClient {
  /** `http://host:port`. */
  readonly origin: string
  private readonly client: Client
  private readonly token: string
  private readonly timeoutMs: number

  constructor (origin: string, options: AdminClientOptions = {}) {
    this.origin = origin
    this.token = options.token ?? ''
    this.timeoutMs = options.timeoutMs ?? 5000
    this.client = new Client(origin, { connectTimeout: this.timeoutMs, headersTimeout: this.timeoutMs, bodyTimeout: this.timeoutMs })
  }

  /**
   * GET `path` and parse the JSON answer. Throws AdminUnreachableError when the API cannot be
   * reached, AdminResponseError on an error status (with the server's message).
   */
  async getJson<T> (path: string, signal?: AbortSignal): Promise<T> {
    const url = `${this.origin}${path}`
    let response: Awaited<ReturnType<Client['request']>>
    try {
      response = await this.client.request({
        path,
        method: 'GET',
        headers: this.token === '' ? {} : { authorization: `Bearer ${this.token}` },
        ...(signal === undefined ? {} : { signal })
      })
    } catch (err) {
      if (signal?.aborted === true) throw err
      throw new AdminUnreachableError(this.origin, reasonOf(err), '', { cause: err })
    }
    let text: string
    try {
      text = await response.body.text()
    } catch (err) {
      if (signal?.aborted === true) throw err
      throw new AdminUnreachableError(this.origin, reasonOf(err), '', { cause: err })
    }
    if (response.statusCode !== 200) {
      let message = text.trim()
      try {
        const parsed = JSON.parse(text) as { error?: { message?: unknown } }
        if (typeof parsed.error?.message === 'string') message = parsed.error.message
      } catch {}
      throw new AdminResponseError(url, response.statusCode, message)
    }
    try {
      return JSON.parse(text) as T
    } catch {
      throw new AdminResponseError(url, response.statusCode, 'the answer is not JSON: is this the kaproxy admin API?')
    }
  }

  async close (): Promise<void> {
    await this.client.close()
  }

  async destroy (): Promise<void> {
    await this.client.destroy()
  }
}
