// Typed handles on sidecar-peer.ts run inside lab namespaces: the hashing echo server, the application
// (optionally as another uid) and the short-connection loop.
import { fileURLToPath } from 'node:url'
import type { Lab, Role } from './lab.js'
import type { LabProcess } from './proc.js'
import { asUser, type RunAs } from './users.js'

/** Absolute path of the compiled sidecar peer script. */
export const SIDECAR_PEER_SCRIPT = fileURLToPath(new URL('./sidecar-peer.js', import.meta.url))

function num (value: unknown): number {
  return typeof value === 'number' ? value : NaN
}

/** `host:port`, with brackets around an IPv6 host. */
export function target (host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`
}

function spawnPeer (lab: Lab, role: Role, user: RunAs | undefined, args: readonly string[], label: string): LabProcess {
  const [cmd, argv] = asUser(user, process.execPath, [SIDECAR_PEER_SCRIPT, ...args])
  return lab.spawn(role, cmd, argv, label)
}

/** A connection the server accepted: who it saw connecting. */
export interface Accepted { id: number, remote: string, local: string }

/** What the server received on one connection once the client half-closed. */
export interface Hashed { id: number, bytes: number, sha256: string }

/** An echo server that reports each connection's peer and the SHA-256 of what it received. */
export class HashServer {
  private constructor (readonly proc: LabProcess, readonly host: string, readonly port: number) {}

  static async start (lab: Lab, role: Role, host: string, port: number): Promise<HashServer> {
    const proc = spawnPeer(lab, role, undefined, ['server', host, String(port)], `hash-server@${role}:${port}`)
    await proc.waitJson((e) => e.ev === 'listening', 5_000, `hash server ${port} listening`)
    return new HashServer(proc, host, port)
  }

  get address (): string {
    return target(this.host, this.port)
  }

  accepts (): Accepted[] {
    return this.proc.json().filter((e) => e.ev === 'accept').map((e) => ({ id: num(e.id), remote: String(e.remote), local: String(e.local) }))
  }

  async accepted (timeoutMs = 5_000, from = 0): Promise<Accepted> {
    const e = await this.proc.waitJson((o) => o.ev === 'accept', timeoutMs, `accept on ${this.port}`, from)
    return { id: num(e.id), remote: String(e.remote), local: String(e.local) }
  }

  async hashed (id: number, timeoutMs: number): Promise<Hashed> {
    const e = await this.proc.waitJson((o) => o.ev === 'hashed' && o.id === id, timeoutMs, `hash of connection ${id} on ${this.port}`)
    return { id, bytes: num(e.bytes), sha256: String(e.sha256) }
  }

  /** Resolve with the accepts once `count` connections have been accepted in total (bounded): its log trails kaproxy's. */
  async acceptedAtLeast (count: number, timeoutMs = 5_000): Promise<Accepted[]> {
    let seen = 0
    await this.proc.waitFor((l) => { if (l.json?.ev === 'accept') seen++; return seen >= count }, timeoutMs, `${count} accepts on ${this.port}`)
    return this.accepts()
  }

  /** Resolve once `count` connections have closed in total (bounded). */
  async closedAtLeast (count: number, timeoutMs: number): Promise<void> {
    let seen = 0
    await this.proc.waitFor((l) => { if (l.json?.ev === 'close') seen++; return seen >= count }, timeoutMs, `${count} closes on ${this.port}`)
  }
}

export interface AppConnection { target: string, uid: number, local: string, remote: string }
export interface Transfer { target: string, sent: number, sentSha256: string, received: number, receivedSha256: string }

/** The application: connects to its servers' real addresses, sets no keepalive, knows nothing of kaproxy. */
export class App {
  private constructor (readonly proc: LabProcess, readonly targets: readonly string[], readonly connections: AppConnection[]) {}

  /** Connect to every target as `user`; resolves once all are connected (rejects if any closes first). */
  static async connect (lab: Lab, role: Role, user: RunAs | undefined, bytes: number, targets: readonly string[], timeoutMs = 5_000): Promise<App> {
    const proc = spawnPeer(lab, role, user, ['app', String(bytes), ...targets], `app@${role}`)
    const connections: AppConnection[] = []
    for (const t of targets) {
      const e = await proc.waitJson((o) => (o.ev === 'connected' || o.ev === 'close') && o.target === t, timeoutMs, `app connect to ${t}`)
      if (e.ev !== 'connected') throw new Error(`app: connection to ${t} closed before it connected: ${JSON.stringify(proc.json())}`)
      connections.push({ target: t, uid: num(e.uid), local: String(e.local), remote: String(e.remote) })
    }
    return new App(proc, targets, connections)
  }

  /** Resolve when the connection to `to` closes; with the error code seen on it, if any (bounded by `timeoutMs`). */
  async closed (to: string, timeoutMs: number): Promise<{ code: string | undefined, bytesReceived: number }> {
    await this.proc.waitJson((o) => o.ev === 'close' && o.target === to, timeoutMs, `close of ${to}`)
    const error = this.proc.json().find((o) => o.ev === 'error' && o.target === to)
    const bytesReceived = this.proc.json().filter((o) => o.ev === 'data' && o.target === to).reduce((sum, o) => sum + num(o.bytes), 0)
    return { code: typeof error?.code === 'string' ? error.code : undefined, bytesReceived }
  }

  /** Send the random bytes on every connection, half-close, and resolve with each echo's hash. */
  async transfer (timeoutMs: number): Promise<Transfer[]> {
    this.proc.send({ cmd: 'transfer' })
    const out: Transfer[] = []
    for (const t of this.targets) {
      const e = await this.proc.waitJson((o) => o.ev === 'transferred' && o.target === t, timeoutMs, `transfer on ${t}`)
      out.push({ target: t, sent: num(e.sent), sentSha256: String(e.sentSha256), received: num(e.received), receivedSha256: String(e.receivedSha256) })
    }
    return out
  }
}

/** `count` short connections to `to`, `concurrency` at a time, as `user`; resolves with the tally. */
export async function connectionLoop (lab: Lab, role: Role, user: RunAs | undefined, count: number, concurrency: number, to: string, timeoutMs: number):
Promise<{ ok: number, failed: number, errors: Record<string, number>, ms: number }> {
  const proc = spawnPeer(lab, role, user, ['loop', String(count), String(concurrency), to], `loop@${role}->${to}`)
  const e = await proc.waitJson((o) => o.ev === 'loop', timeoutMs, `${count} connections to ${to}`)
  await proc.stop()
  return { ok: num(e.ok), failed: num(e.failed), errors: (e.errors ?? {}) as Record<string, number>, ms: num(e.ms) }
}
