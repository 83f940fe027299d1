import { parseDurationMs } from '../config/formats.js'
import { KEEPALIVE_LIMITS } from '../keepalive.js'

/** A stateful box on a side's path that forgets a flow after `idleTimeoutSec` without packets. */
export interface Middlebox {
  /** A preset name (`aws-nlb`) or the user's own (`corp-fw`). */
  name: string
  /** Seconds of silence after which the box drops (or resets) the flow; whole seconds, at least 1. */
  idleTimeoutSec: number
  /** True when the entry is a bare preset name, false for a `{ name, idleTimeout }` entry. */
  preset: boolean
}

/** One preset: the vendor's default idle timeout and where the vendor states it. */
export interface MiddleboxPreset {
  idleTimeoutSec: number
  /** What the box is, for docs and messages. */
  what: string
  /** The vendor statement behind the figure: document title and address. */
  source: string
}

/**
 * Default idle timeouts as their vendors document them. Defaults are defaults: a user who raised
 * a timeout writes `{ name, idleTimeout }` instead (the name may be a preset's). docs/keepalive-budget.md
 * lists the same table with the quotes.
 */
export const MIDDLEBOX_PRESETS = {
  'aws-nlb': {
    idleTimeoutSec: 350,
    what: 'AWS Network Load Balancer, TCP listener',
    source: 'AWS, "Update the TCP idle timeout for your Network Load Balancer listener" (docs.aws.amazon.com/elasticloadbalancing/latest/network/update-idle-timeout.html)'
  },
  'aws-nat-gateway': {
    idleTimeoutSec: 350,
    what: 'AWS NAT gateway',
    source: 'AWS, "Troubleshoot NAT gateways: internet connection drops after 350 seconds" (docs.aws.amazon.com/vpc/latest/userguide/nat-gateway-troubleshooting.html)'
  },
  'aws-gwlb': {
    idleTimeoutSec: 350,
    what: 'AWS Gateway Load Balancer',
    source: 'AWS, "Listeners for your Gateway Load Balancers": tcp.idle_timeout.seconds (docs.aws.amazon.com/elasticloadbalancing/latest/gateway/gateway-listeners.html)'
  },
  'azure-lb': {
    idleTimeoutSec: 240,
    what: 'Azure Load Balancer rule (load-balancing, inbound NAT or outbound)',
    source: 'Microsoft, "Configure TCP reset and idle timeout for Azure Load Balancer" (learn.microsoft.com/azure/load-balancer/load-balancer-tcp-idle-timeout)'
  },
  'azure-nat-gateway': {
    idleTimeoutSec: 240,
    what: 'Azure NAT Gateway',
    source: 'Microsoft, "Azure NAT Gateway resource": TCP idle timeout (learn.microsoft.com/azure/nat-gateway/nat-gateway-resource)'
  },
  'gcp-cloud-nat': {
    idleTimeoutSec: 1200,
    what: 'Google Cloud NAT, established TCP connections',
    source: 'Google Cloud, "Tune NAT configuration: NAT timeouts" (cloud.google.com/nat/docs/tune-nat-configuration); Compute API RouterNat.tcpEstablishedIdleTimeoutSec'
  },
  'kube-proxy-ipvs': {
    idleTimeoutSec: 900,
    what: 'kube-proxy in IPVS mode (the kernel IPVS table)',
    source: 'Linux net/netfilter/ipvs/ip_vs_proto_tcp.c: [IP_VS_TCP_S_ESTABLISHED] = 15*60*HZ; kube-proxy --ipvs-tcp-timeout defaults to 0, "leave as-is" (kubernetes.io/docs/reference/command-line-tools-reference/kube-proxy)'
  },
  'kube-proxy-conntrack': {
    idleTimeoutSec: 86400,
    what: 'kube-proxy in iptables/nftables mode (it sets the node\'s conntrack established timeout)',
    source: 'kube-proxy --conntrack-tcp-timeout-established, default 24h0m0s (kubernetes.io/docs/reference/command-line-tools-reference/kube-proxy)'
  },
  'linux-conntrack': {
    idleTimeoutSec: 432000,
    what: 'Linux netfilter conntrack (iptables/nftables NAT or stateful firewall)',
    source: 'Linux Documentation/networking/nf_conntrack-sysctl.rst: nf_conntrack_tcp_timeout_established, default 432000 (5 days)'
  }
} as const satisfies Readonly<Record<string, MiddleboxPreset>>

export type MiddleboxPresetName = keyof typeof MIDDLEBOX_PRESETS
/** The preset names, in the order of the table. */
export const MIDDLEBOX_PRESET_NAMES = Object.keys(MIDDLEBOX_PRESETS) as MiddleboxPresetName[]

function isPresetName (value: string): value is MiddleboxPresetName {
  return Object.hasOwn(MIDDLEBOX_PRESETS, value)
}

const MIDDLEBOX_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/
const MIDDLEBOX_KEYS = new Set(['name', 'idleTimeout'])

// The rules config errors state, as `path: rule (got value)`.
export const MIDDLEBOX_RULE = `must be a preset (${MIDDLEBOX_PRESET_NAMES.join(', ')}) or { name, idleTimeout }`
export const MIDDLEBOX_NAME_RULE = 'must be 1..63 characters of A-Z, a-z, 0-9, ., _ and -, starting with a letter or digit'
export const MIDDLEBOX_TIMEOUT_RULE = 'must be whole seconds, at least 1s (e.g. 350s, 10m)'

/** One problem with a middlebox entry: `key` names the field of an object entry it is about. */
export interface MiddleboxProblem {
  key?: string
  /** The rule and, where there is one, the offending value: `must be ... (got "x")`. */
  message: string
}

function show (value: unknown): string {
  return JSON.stringify(value) ?? String(value)
}

/** Parse one list entry: a preset name, or `{ name, idleTimeout }` with a duration. */
export function parseMiddlebox (value: unknown): Middlebox | MiddleboxProblem[] {
  if (typeof value === 'string') {
    if (isPresetName(value)) return { name: value, idleTimeoutSec: MIDDLEBOX_PRESETS[value].idleTimeoutSec, preset: true }
    return [{ message: `${MIDDLEBOX_RULE} (got ${show(value)})` }]
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return [{ message: `${MIDDLEBOX_RULE} (got ${show(value)})` }]
  const raw = value as Record<string, unknown>
  const problems: MiddleboxProblem[] = []
  for (const key of Object.keys(raw)) {
    if (!MIDDLEBOX_KEYS.has(key)) problems.push({ key, message: 'unknown key (allowed: name, idleTimeout)' })
  }
  if (raw.name === undefined) problems.push({ key: 'name', message: `is required: ${MIDDLEBOX_NAME_RULE.replace(/^must be /, '')}` })
  else if (typeof raw.name !== 'string' || !MIDDLEBOX_NAME.test(raw.name)) problems.push({ key: 'name', message: `${MIDDLEBOX_NAME_RULE} (got ${show(raw.name)})` })
  const ms = parseDurationMs(raw.idleTimeout)
  if (raw.idleTimeout === undefined) problems.push({ key: 'idleTimeout', message: `is required: ${MIDDLEBOX_TIMEOUT_RULE.replace(/^must be /, '')}` })
  else if (ms === undefined || ms % 1000 !== 0 || ms < 1000) problems.push({ key: 'idleTimeout', message: `${MIDDLEBOX_TIMEOUT_RULE} (got ${show(raw.idleTimeout)})` })
  if (problems.length > 0 || ms === undefined) return problems
  return { name: raw.name as string, idleTimeoutSec: ms / 1000, preset: false }
}

/** The smallest idle timeout on a side, in seconds: the keepalive budget's limit. Null for none. */
export function limitSeconds (middleboxes: readonly Middlebox[]): number | null {
  if (middleboxes.length === 0) return null
  return Math.min(...middleboxes.map((m) => m.idleTimeoutSec))
}

/** The middlebox that sets the limit (the first one on a tie); undefined for none. */
export function tightestMiddlebox (middleboxes: readonly Middlebox[]): Middlebox | undefined {
  let tightest: Middlebox | undefined
  for (const m of middleboxes) if (tightest === undefined || m.idleTimeoutSec < tightest.idleTimeoutSec) tightest = m
  return tightest
}

/**
 * What `idle: auto` resolves to: half the smallest declared timeout, rounded down to whole seconds,
 * kept within TCP_KEEPIDLE's 1..32767 s (so a limit of 1 s gives 1 s, and linux-conntrack's 5 days
 * gives 32767 s). Null without middleboxes: the config rejects `auto` there.
 */
export function autoIdleSeconds (middleboxes: readonly Middlebox[]): number | null {
  const limit = limitSeconds(middleboxes)
  if (limit === null) return null
  const { min, max } = KEEPALIVE_LIMITS.idleSec
  return Math.min(max, Math.max(min, Math.floor(limit / 2)))
}
