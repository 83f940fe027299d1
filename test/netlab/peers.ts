// Typed handles on the peer script (peer.ts) run inside lab namespaces: an echo server and a client.
import { fileURLToPath } from 'node:url'
import type { Lab, Role } from './lab.js'
import type { LabProcess } from './proc.js'
import { nowMs } from './proc.js'
import { asUser, type RunAs } from './users.js'

/** Absolute path of the compiled peer script. */
export const PEER_SCRIPT = fileURLToPath(new URL('./peer.js', import.meta.url))

/** How a socket ended: wall-clock time of its 'close' event, and the error code seen before it, if any. */
export interface Closed {
  t: number
  hadError: boolean
  code: string | undefined
}

function num (value: unknown): number {
  return typeof value === 'number' ? value : NaN
}

function closedFrom (proc: LabProcess, close: Record<string, unknown>, id?: number): Closed {
  const error = proc.json().find((e) => e.ev === 'error' && (id === undefined || e.id === id))
  return { t: num(close.t), hadError: close.hadError === true, code: typeof error?.code === 'string' ? error.code : undefined }
}

/** An echo server in a namespace: every connection gets its bytes back. */
export class EchoServer {
  private constructor (readonly proc: LabProcess) {}

  static async start (lab: Lab, role: Role, host: string, port: number): Promise<EchoServer> {
    const proc = lab.node(role, PEER_SCRIPT, ['server', host, String(port)], `echo@${role}:${port}`)
    await proc.waitJson((e) => e.ev === 'listening', 5_000, 'echo server listening')
    return new EchoServer(proc)
  }

  /** Resolve with the id and remote address of the next connection accepted after `from` (a proc.mark()). */
  async accepted (timeoutMs = 5_000, from = 0): Promise<{ id: number, remote: string }> {
    const e = await this.proc.waitJson((o) => o.ev === 'accept', timeoutMs, 'accept', from)
    return { id: num(e.id), remote: String(e.remote) }
  }

  /** Total payload bytes received on all connections so far. */
  bytesReceived (): number {
    return this.proc.json().filter((e) => e.ev === 'data').reduce((sum, e) => sum + num(e.bytes), 0)
  }

  /** Resolve once the server has received at least `bytes` bytes in total (its log line may trail the echo). */
  async receivedAtLeast (bytes: number, timeoutMs = 2_000): Promise<void> {
    let total = 0
    await this.proc.waitFor((l) => {
      if (l.json?.ev === 'data') total += num(l.json.bytes)
      return total >= bytes
    }, timeoutMs, `${bytes} bytes received`)
  }

  /** Resolve when connection `id` closes (bounded by `timeoutMs`). */
  async closed (id: number, timeoutMs: number): Promise<Closed> {
    const close = await this.proc.waitJson((e) => e.ev === 'close' && e.id === id, timeoutMs, `server connection ${id} close`)
    return closedFrom(this.proc, close, id)
  }

  /** Whether connection `id` has closed yet. */
  isClosed (id: number): boolean {
    return this.proc.json().some((e) => e.ev === 'close' && e.id === id)
  }

  /** Write `bytes` bytes to every open connection (data the client did not ask for). */
  push (bytes: number): void {
    this.proc.send({ cmd: 'push', bytes })
  }
}

/** One client connection from a namespace, driven line by line. */
export class Client {
  /** Local address of the connection, `ip:port`. */
  readonly local: string
  readonly localPort: number

  private constructor (readonly proc: LabProcess, local: string) {
    this.local = local
    this.localPort = Number(local.split(':').pop())
  }

  /**
   * Connect from `role` to `host:port`, as `user` if given; resolves once connected (rejects if it fails
   * or takes over `timeoutMs`).
   */
  static async connect (lab: Lab, role: Role, host: string, port: number, timeoutMs = 5_000, user?: RunAs): Promise<Client> {
    const [cmd, args] = asUser(user, process.execPath, [PEER_SCRIPT, 'client', host, String(port)])
    const proc = lab.spawn(role, cmd, args, `client@${role}->${host}:${port}`)
    const e = await proc.waitJson((o) => o.ev === 'connected' || o.ev === 'close', timeoutMs, `connect to ${host}:${port}`)
    if (e.ev !== 'connected') throw new Error(`connect to ${host}:${port} failed: ${JSON.stringify(proc.json())}`)
    return new Client(proc, String(e.local))
  }

  /**
   * Send `text` and wait for it to come back in full. Resolves with the round trip in ms;
   * rejects with a WaitError when it has not come back within `timeoutMs`.
   */
  async echo (text: string, timeoutMs: number): Promise<{ rttMs: number, sentAt: number, replyAt: number }> {
    const from = this.proc.mark()
    const sentAt = nowMs()
    this.proc.send({ cmd: 'send', text })
    let got = ''
    const line = await this.proc.waitFor((l) => {
      if (l.json?.ev === 'data') got += String(l.json.text)
      return got.includes(text)
    }, timeoutMs, `echo of ${JSON.stringify(text)}`, from)
    const replyAt = num(line.json?.t)
    return { rttMs: replyAt - sentAt, sentAt, replyAt }
  }

  /** Write `text` without waiting for anything; resolves with the time it was handed to the peer process. */
  send (text: string): number {
    const sentAt = nowMs()
    this.proc.send({ cmd: 'send', text })
    return sentAt
  }

  /** Resolve when the connection closes (bounded by `timeoutMs`). */
  async closed (timeoutMs: number): Promise<Closed> {
    const close = await this.proc.waitJson((e) => e.ev === 'close', timeoutMs, 'client close')
    return closedFrom(this.proc, close)
  }

  /** Whether the connection has closed yet. */
  isClosed (): boolean {
    return this.proc.json().some((e) => e.ev === 'close')
  }

  /** Reset the connection and let the process go. */
  async destroy (): Promise<void> {
    this.proc.send({ cmd: 'destroy' })
    await this.proc.stop('SIGTERM', 1_000)
  }
}
