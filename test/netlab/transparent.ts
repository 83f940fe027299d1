// Shared pieces of the transparent-sidecar scenarios (test/transparent-*.test.ts): the rules come from
// `kaproxy iptables` itself and are installed exactly as printed; kaproxy runs as its own uid beside an
// application running as another; a flow is traced from what a server saw back to the process that
// opened it (server peer -> nat conntrack entry -> socket in the client namespace -> its owner's pid).
import assert from 'node:assert/strict'
import { run } from './exec.js'
import { KAPROXY_CLI, type Kaproxy } from './kaproxy.js'
import type { Lab } from './lab.js'
import { establishedSockets, type SsSocket } from './remote-socket.js'
import { SIDECAR_PEER_SCRIPT } from './sidecar-peers.js'
import { KAPROXY_USER, NOBODY, asUser } from './users.js'

/** The port of the transparent route in every scenario (the Kubernetes example uses it too). */
export const OUTBOUND_PORT = 15001

/** Commands the transparent scenarios need beyond the NAT lab's (`nft` only where nft rules are installed: NFT_TOOLS). */
export const TRANSPARENT_TOOLS = ['ip6tables', 'setpriv'] as const
export const NFT_TOOLS = [...TRANSPARENT_TOOLS, 'nft'] as const

/** Gate probe: kaproxy's uid and the application's uid must be able to run this node and their scripts from this checkout. */
export async function usersCanRun (): Promise<string | undefined> {
  for (const [who, user] of [['kaproxy (uid 1337)', KAPROXY_USER], ['the application (nobody)', NOBODY]] as const) {
    const [node, nodeArgs] = asUser(user, process.execPath, ['-e', ''])
    try {
      await run(node, nodeArgs)
    } catch {
      return `${who} cannot run ${process.execPath} (a node binary under a private directory, e.g. mktemp -d's 0700?)`
    }
    for (const file of [KAPROXY_CLI, SIDECAR_PEER_SCRIPT]) {
      const [cmd, args] = asUser(user, 'test', ['-r', file])
      try {
        await run(cmd, args)
      } catch {
        return `${who} cannot read ${file} (a checkout under a private directory?)`
      }
    }
  }
  return undefined
}

/** What `kaproxy iptables ARGS` prints (run in the root namespace: it only prints). */
export async function printedRules (args: readonly string[]): Promise<string> {
  const { stdout } = await run(process.execPath, [KAPROXY_CLI, 'iptables', ...args])
  return stdout
}

/** Run a printed rule script with `sh -e` inside the client namespace, exactly as an init container would. */
export async function installRules (lab: Lab, script: string): Promise<void> {
  await lab.exec('client', 'sh', ['-e', '-c', script])
}

/** The host part of `host:port` / `[v6]:port`, and the port. */
export function splitAddress (address: string): { host: string, port: number } {
  const colon = address.lastIndexOf(':')
  return { host: address.slice(0, colon).replace(/^\[|\]$/g, '').replace(/^::ffff:/, ''), port: Number(address.slice(colon + 1)) }
}

/**
 * Trace a connection a server accepted (its `remote`, the nat's address and port) back through the nat's
 * conntrack table to the client-namespace socket that opened it; resolves with that socket as ss shows it.
 */
export async function traceToClientSocket (lab: Lab, serverSaw: string, serverAddress: string): Promise<SsSocket> {
  const seen = splitAddress(serverSaw)
  const server = splitAddress(serverAddress)
  const family = seen.host.includes(':') ? 6 : 4
  const entries = await lab.conntrackEntries(undefined, family)
  const entry = entries.find((e) => e.reply.dst === seen.host && e.reply.dport === seen.port && e.reply.src === server.host && e.reply.sport === server.port)
  assert.ok(entry !== undefined, `a nat conntrack entry for the server's peer ${serverSaw}: ${entries.map((e) => e.line).join('\n')}`)
  const sockets = await establishedSockets(lab, 'client')
  const socket = sockets.find((s) => splitAddress(s.local).host === entry.orig.src && s.localPort === entry.orig.sport &&
    splitAddress(s.peer).host === server.host && s.peerPort === server.port)
  assert.ok(socket !== undefined, `the client-namespace socket ${entry.orig.src}:${entry.orig.sport} -> ${serverAddress}:\n${sockets.map((s) => s.line).join('\n')}`)
  return socket
}

/** Resolve with the first `count` kaproxy log lines of `event` (bounded by `timeoutMs`). */
export async function logEvents (kaproxy: Kaproxy, event: string, count: number, timeoutMs: number): Promise<Array<Record<string, unknown>>> {
  let seen = 0
  await kaproxy.proc.waitFor((l) => { if (l.json?.event === event) seen++; return seen >= count }, timeoutMs, `${count} ${event} lines`)
  return kaproxy.proc.json().filter((e) => e.event === event).slice(0, count)
}

/** The admin API address the transparent scenarios give kaproxy, inside the client namespace. */
export const ADMIN_LISTEN = '127.0.0.1:9901'

/** GET an admin API path from inside the client namespace (loopback: never captured); resolves with the body. */
export async function adminGet (lab: Lab, path: string): Promise<string> {
  const script = `fetch(${JSON.stringify(`http://${ADMIN_LISTEN}${path}`)}).then(async (r) => { if (!r.ok) throw new Error(String(r.status)); process.stdout.write(await r.text()) })`
  const { stdout } = await lab.exec('client', process.execPath, ['-e', script])
  return stdout
}

/** `kaproxy_connections_closed_total` of one route from /metrics, summed over sides, by reason. */
export async function closedByReason (lab: Lab, route: string): Promise<Record<string, number>> {
  const out: Record<string, number> = {}
  for (const line of (await adminGet(lab, '/metrics')).split('\n')) {
    if (!line.startsWith('kaproxy_connections_closed_total{') || !line.includes(`route="${route}"`)) continue
    const reason = /reason="([^"]+)"/.exec(line)?.[1]
    const value = Number(line.slice(line.lastIndexOf(' ') + 1))
    if (reason !== undefined && value > 0) out[reason] = (out[reason] ?? 0) + value
  }
  return out
}
