import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import YAML from 'yaml'
import { connect, echoThrough, startEchoServer, startServer, type TestServer } from './peers.js'
import { startProxyFromFile } from './proxy.js'
import { HashedEnd } from './traffic.js'

export interface StormOptions {
  /** Reloads in the storm; every third one is invalid, in five different ways. */
  reloads: number
  /** Long echo transfers on the unchanged route, kept sending across the whole storm. */
  streams: number
  /** Bytes every stream must move (each way) between two reloads, so traffic and reloads interleave. */
  bytesBetweenReloads: number
}

export interface StormFigures {
  reloads: number
  valid: number
  invalid: number
  /** Reloads the proxy counted as applied / rejected. */
  ok: number
  failed: number
  durationMs: number
  streams: number
  /** Bytes each way over all streams. */
  bytes: number
  /** Streams whose echo did not match what they sent (sha256): must be 0. */
  mismatches: number
  /** Connections of the unchanged route closed by anything but their client's FIN: must be 0. */
  interrupted: number
  /** Short echo round trips opened on the unchanged route during the storm, and how many failed. */
  probes: number
  probeFailures: number
}

type Invalid = 'yaml-syntax' | 'count' | 'duplicate-name' | 'unknown-key' | 'listen-taken'
const INVALID: readonly Invalid[] = ['yaml-syntax', 'count', 'duplicate-name', 'unknown-key', 'listen-taken']

/**
 * A reload storm on a file-based proxy: route `stable` never changes, `churn` changes keepalive
 * and upstream on every valid reload, `flip` comes and goes; invalid reloads are mixed in. Long
 * transfers on `stable` keep sending across the storm and are compared by hash at the end.
 */
export async function reloadStorm (options: StormOptions): Promise<StormFigures> {
  const { reloads, streams, bytesBetweenReloads } = options
  const cleanup: Array<() => Promise<void> | void> = []
  try {
    const echo = await startEchoServer()
    cleanup.push(echo.close)
    const echo2 = await startEchoServer()
    cleanup.push(echo2.close)
    const taken: TestServer = await startServer(() => {})
    cleanup.push(taken.close)
    const dir = mkdtempSync(join(tmpdir(), 'kaproxy-storm-'))
    cleanup.push(() => { rmSync(dir, { recursive: true, force: true }) })
    const file = join(dir, 'kaproxy.yaml')
    const stable = { name: 'stable', listen: '127.0.0.1:0', upstream: echo.address }

    const config = (i: number): string => {
      const routes: unknown[] = [
        stable,
        { name: 'churn', listen: '127.0.0.1:0', upstream: i % 2 === 0 ? echo.address : echo2.address, keepalive: { client: { idle: `${10 + (i % 50)}s` }, applyToExisting: true } }
      ]
      if (i % 4 < 2) routes.push({ name: 'flip', listen: '127.0.0.1:0', upstream: echo.address, drainTimeout: '1s' })
      return YAML.stringify({ admin: { listen: '' }, reload: { watch: false }, routes })
    }
    const invalid = (kind: Invalid, i: number): string => {
      const valid = YAML.parse(config(i)) as { routes: Array<Record<string, unknown>> }
      switch (kind) {
        case 'yaml-syntax': return 'routes: [\n  - name: stable\n'
        case 'count': valid.routes.push({ name: 'bad', listen: '127.0.0.1:0', upstream: echo.address, keepalive: { upstream: { count: 999 } } }); break
        case 'duplicate-name': valid.routes.push({ ...stable }); break
        case 'unknown-key': valid.routes.push({ name: 'typo', listen: '127.0.0.1:0', upstrem: echo.address }); break
        case 'listen-taken': valid.routes.push({ name: 'taken', listen: taken.address, upstream: echo.address }); break
      }
      return YAML.stringify(valid)
    }

    writeFileSync(file, config(0))
    const proxy = await startProxyFromFile(file)
    cleanup.unshift(proxy.close)
    const port = proxy.port('stable')

    const ends: HashedEnd[] = []
    for (let s = 0; s < streams; s++) ends.push(new HashedEnd(await connect(port, '127.0.0.1', { allowHalfOpen: true })))
    const stableIds = new Set([...proxy.kaproxy.engine.connections('stable')].map((c) => c.id))
    let stop = false
    const pumps = ends.map(async (end) => {
      // Stop-and-wait in 64 KiB steps: traffic keeps flowing through every reload without racing ahead.
      while (!stop) {
        await end.send(64 * 1024, 64 * 1024)
        await end.receivedAtLeast(end.sentBytes)
      }
      end.socket.end()
    })

    const started = Date.now()
    let valid = 0
    let probes = 0
    let probeFailures = 0
    for (let i = 1; i <= reloads; i++) {
      const bad = i % 3 === 0
      writeFileSync(file, bad ? invalid(INVALID[(i / 3) % INVALID.length] ?? 'count', i) : config(i))
      const result = await proxy.kaproxy.reload({ trigger: 'storm' })
      if (result.ok === bad) throw new Error(`reload ${i} (${bad ? 'invalid' : 'valid'}) gave ok=${String(result.ok)}: ${result.error?.message ?? ''}`)
      if (!bad) valid++
      // Let every stream move bytes both ways before the next reload, and open a new connection now and then.
      await Promise.all(ends.map(async (end) => { await end.receivedAtLeast(end.receivedBytes + bytesBetweenReloads) }))
      if (i % 10 === 0) {
        probes++
        if (await echoThrough(port, `probe ${i}`).catch(() => null) !== `probe ${i}`) probeFailures++
      }
    }
    const durationMs = Date.now() - started
    stop = true
    await Promise.all(pumps)
    await Promise.all(ends.map(async (end) => { await end.ended }))

    let mismatches = 0
    let bytes = 0
    for (const end of ends) {
      const sent = end.sent()
      const received = end.received()
      bytes += sent.bytes
      if (sent.bytes !== received.bytes || sent.sha256 !== received.sha256 || end.error !== null) mismatches++
      end.socket.destroy()
    }
    await proxy.log.waitForCount({ event: 'close', route: 'stable' }, streams + probes)
    const interrupted = proxy.log.find({ event: 'close', route: 'stable' })
      .filter((line) => stableIds.has(Number(line.conn)) && line.reason !== 'client-closed').length
    return {
      reloads,
      valid,
      invalid: reloads - valid,
      ok: proxy.kaproxy.reloads.ok,
      failed: proxy.kaproxy.reloads.failed,
      durationMs,
      streams,
      bytes,
      mismatches,
      interrupted,
      probes,
      probeFailures
    }
  } finally {
    for (const step of cleanup) await step()
  }
}

export function formatStorm (f: StormFigures): string {
  return `reload storm: ${f.reloads} reloads (${f.valid} valid, ${f.invalid} invalid; proxy counted ${f.ok} ok, ${f.failed} failed) in ${f.durationMs} ms ` +
    `during traffic: ${f.streams} long transfers on the unchanged route moved ${(f.bytes / 1024 / 1024).toFixed(1)} MiB each way, ` +
    `${f.mismatches} hash mismatches, ${f.interrupted} interrupted; ${f.probes} new connections during the storm, ${f.probeFailures} failed`
}
