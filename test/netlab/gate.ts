// Whether the lab can run here: root, the tools, namespaces that can be made, the compiled peer
// (and kaproxy when a suite needs it). Outside CI a missing piece skips the suite with the reason;
// with CI=true it fails instead: CI must run these tests, never skip them.
import { existsSync } from 'node:fs'
import { run } from './exec.js'
import { KAPROXY_CLI, kaproxyBuilt } from './kaproxy.js'
import { RUN_PREFIX } from './lab.js'
import { PEER_SCRIPT } from './peers.js'

export interface Gate {
  /** Pass as `describe(name, { skip: gate.skip })`: the reason to skip, or false. */
  skip: string | false
  /** Call first in `before()`: throws the reason when the lab cannot run and skipping is not allowed (CI). */
  check: () => void
}

const TOOLS = ['ip', 'iptables', 'conntrack', 'tcpdump', 'tshark', 'ss'] as const

async function whyNot (needKaproxy: boolean, extraTools: readonly string[]): Promise<string | undefined> {
  if (process.platform !== 'linux') return `network namespaces need Linux (this is ${process.platform})`
  if (process.getuid?.() !== 0) return 'network-namespace lab needs root (CAP_NET_ADMIN)'
  for (const tool of [...TOOLS, ...extraTools]) {
    try {
      await run('sh', ['-c', `command -v ${tool}`])
    } catch {
      return `${tool} is not installed (apt-get install -y iproute2 iptables nftables util-linux conntrack tcpdump tshark)`
    }
  }
  if (!existsSync(PEER_SCRIPT)) return `${PEER_SCRIPT} is missing (npm run build:test)`
  if (needKaproxy && !kaproxyBuilt()) return `${KAPROXY_CLI} is missing (npm run build)`
  const probe = `${RUN_PREFIX}probe`
  try {
    await run('ip', ['netns', 'add', probe])
  } catch (err) {
    return `cannot create a network namespace: ${err instanceof Error ? err.message : String(err)}`
  }
  try {
    await run('ip', ['netns', 'exec', probe, 'iptables', '-L', '-n'])
    await run('ip', ['netns', 'exec', probe, 'sysctl', '-q', 'net.netfilter.nf_conntrack_tcp_loose'])
  } catch (err) {
    return `netfilter is unusable in a namespace: ${err instanceof Error ? err.message : String(err)}`
  } finally {
    await run('ip', ['netns', 'del', probe]).catch(() => {})
  }
  return undefined
}

/**
 * Decide once per test file whether the lab suites run, skip (with the reason) or fail (CI).
 * `tools`: commands the suite needs beyond the lab's own (e.g. `ip6tables`, `nft`, `setpriv`);
 * `probe`: a further check once those pass, resolving with the reason it cannot run, or undefined.
 */
export async function labGate (options: { needKaproxy: boolean, tools?: readonly string[], probe?: () => Promise<string | undefined> }): Promise<Gate> {
  const reason = await whyNot(options.needKaproxy, options.tools ?? []) ?? await options.probe?.()
  const ci = process.env.CI === 'true'
  if (reason === undefined) return { skip: false, check: () => {} }
  if (!ci) return { skip: reason, check: () => {} }
  return { skip: false, check: () => { throw new Error(`CI=true: the NAT lab must run, but ${reason}`) } }
}
