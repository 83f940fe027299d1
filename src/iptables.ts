// `kaproxy iptables`: the firewall rules that capture an application's outbound TCP into a
// transparent (`upstream: original-dst`) route. It prints them; it never runs them.
import { isIP } from 'node:net'
import { parseArgs } from 'node:util'
import { formatHostPort } from './config/formats.js'
import { loadConfigFile } from './config/load.js'
import type { KaproxyConfig, RouteConfig } from './config/types.js'
import { ConfigError, KaproxyError } from './errors.js'

/** What to capture and what to leave alone. */
export interface CaptureOptions {
  /** The route (by name) whose listener receives the redirected connections. */
  route: string
  /** The uid kaproxy runs as: its own connections are not captured (`-m owner ! --uid-owner`); null for none. */
  uid: number | null
  /** Destination ports to capture (single ports or `[first, last]` ranges); empty captures every port. */
  ports: ReadonlyArray<number | readonly [number, number]>
  /** Destination CIDRs never captured (normalised, e.g. `10.0.0.0/8`, `fd00::/8`). */
  excludeCidrs: readonly string[]
  /** A firewall mark never captured (`-m mark ! --mark`); null means the route's socketMark, if any. */
  mark: number | null
}

export type RuleFormat = 'all' | 'iptables' | 'nft'

/** The rules for one route, ready to print. */
export interface CaptureRules {
  route: string
  /** Port the route listens on: where REDIRECT sends connections. */
  port: number
  /** Address families the route's listener can receive redirected connections on. */
  families: ReadonlyArray<4 | 6>
  /** The mark excluded (the route's socketMark unless --mark was given), or null. */
  mark: number | null
  uid: number | null
  /** `iptables ...` lines; empty when the route cannot receive IPv4. */
  iptables: string[]
  /** `ip6tables ...` lines; empty when the route cannot receive IPv6. */
  ip6tables: string[]
  /** An `nft -f` ruleset (inet family, both address families in one table). */
  nft: string
  /** Comment lines explaining what is and is not captured. */
  summary: string[]
}

/**
 * IPv6 link-local destinations are never captured: a connection from a link-local source redirected to
 * ::1 never completes (it stays in SYN-SENT), and such a destination needs its interface to be dialed.
 */
const IPV6_LINK_LOCAL = 'fe80::/10'

/** Maximum ports one `-m multiport` match takes (a range counts as two). */
const MULTIPORT_MAX = 15

function fail (message: string): never {
  throw new KaproxyError('KAPROXY_ERR_INVALID_ARG', message)
}

/** `1337` -> 1337; uids are 0..4294967294 (4294967295 is "no uid"). */
export function parseUid (text: string): number {
  if (!/^\d{1,10}$/.test(text) || Number(text) > 4294967294) fail(`--uid must be a numeric uid 0..4294967294 (got ${JSON.stringify(text)})`)
  return Number(text)
}

/** `0x539` or `1337` -> 1337, 1..0xffffffff. */
export function parseMark (text: string): number {
  const value = /^0x[0-9a-f]{1,8}$/i.test(text) ? parseInt(text, 16) : /^\d{1,10}$/.test(text) ? Number(text) : NaN
  if (!Number.isInteger(value) || value < 1 || value > 0xffffffff) fail(`--mark must be an integer 1..0xffffffff, e.g. 0x539 (got ${JSON.stringify(text)})`)
  return value
}

/** `5432,6379,8000-8100` -> [5432, 6379, [8000, 8100]] (duplicates dropped, order kept). */
export function parsePorts (texts: readonly string[]): Array<number | [number, number]> {
  const ports: Array<number | [number, number]> = []
  const seen = new Set<string>()
  for (const item of texts.flatMap((text) => text.split(','))) {
    const part = item.trim()
    const match = /^(\d{1,5})(?:-(\d{1,5}))?$/.exec(part)
    const first = Number(match?.[1])
    const last = match?.[2] === undefined ? first : Number(match[2])
    if (match === null || first < 1 || last > 65535 || last < first) fail(`--ports must be a comma-separated list of ports 1..65535 or ranges FIRST-LAST, e.g. 5432,6379,8000-8100 (got ${JSON.stringify(part)})`)
    if (seen.has(part)) continue
    seen.add(part)
    ports.push(first === last ? first : [first, last])
  }
  return ports
}

/** `10.0.0.0/8` or `10.0.0.5` (-> `/32`) with no host bits set; returns the normalised CIDR and its family. */
export function parseCidr (text: string): { cidr: string, family: 4 | 6 } {
  const rule = `--exclude-cidr must be an IPv4 or IPv6 CIDR such as 10.0.0.0/8 or fd00::/8 (got ${JSON.stringify(text)})`
  const slash = text.indexOf('/')
  const address = slash < 0 ? text : text.slice(0, slash)
  const family = isIP(address)
  if (family !== 4 && family !== 6) fail(rule)
  const max = family === 4 ? 32 : 128
  const prefixText = slash < 0 ? String(max) : text.slice(slash + 1)
  if (!/^\d{1,3}$/.test(prefixText) || Number(prefixText) > max) fail(rule)
  const prefix = Number(prefixText)
  const network = networkAddress(address, prefix, family)
  if (network !== canonical(address, family)) fail(`--exclude-cidr ${text} has host bits set: did you mean ${network}/${prefix}?`)
  return { cidr: `${network}/${prefix}`, family }
}

function canonical (address: string, family: 4 | 6): string {
  return family === 4 ? address : new URL(`http://[${address}]/`).hostname.slice(1, -1)
}

function networkAddress (address: string, prefix: number, family: 4 | 6): string {
  if (family === 4) {
    const value = address.split('.').reduce((acc, octet) => (acc << 8n) | BigInt(octet), 0n)
    const masked = prefix === 0 ? 0n : value & (((1n << 32n) - 1n) ^ ((1n << BigInt(32 - prefix)) - 1n))
    return [24n, 16n, 8n, 0n].map((shift) => String((masked >> shift) & 255n)).join('.')
  }
  const groups = canonicalGroups(address)
  const value = groups.reduce((acc, group) => (acc << 16n) | BigInt(group), 0n)
  const masked = prefix === 0 ? 0n : value & (((1n << 128n) - 1n) ^ ((1n << BigInt(128 - prefix)) - 1n))
  const out: string[] = []
  for (let shift = 112n; shift >= 0n; shift -= 16n) out.push(((masked >> shift) & 0xffffn).toString(16))
  return canonical(out.join(':'), 6)
}

function canonicalGroups (address: string): number[] {
  // The WHATWG URL parser expands and validates IPv6 text (including embedded IPv4) for us.
  const text = new URL(`http://[${address}]/`).hostname.slice(1, -1)
  const [head = '', tail] = text.split('::')
  const left = head === '' ? [] : head.split(':')
  const right = tail === undefined || tail === '' ? [] : tail.split(':')
  const middle = tail === undefined ? [] : Array<string>(8 - left.length - right.length).fill('0')
  return [...left, ...middle, ...right].map((group) => parseInt(group, 16))
}

/**
 * Which families a listener receives REDIRECTed connections on. REDIRECT sends locally generated
 * connections to 127.0.0.1 (IPv4) or ::1 (IPv6), so only those addresses or a wildcard can receive them;
 * Node listens on `::` dual-stack (IPV6_V6ONLY off).
 */
export function redirectFamilies (route: RouteConfig): Array<4 | 6> {
  const listen = formatHostPort(route.listen)
  if (route.listen.port === 0) fail(`route ${route.name} listens on ${listen}, an ephemeral port: give it a fixed port for REDIRECT --to-ports`)
  switch (route.listen.host) {
    case '127.0.0.1': case '0.0.0.0': return [4]
    case '::1': return [6]
    case '::': return [4, 6]
    default:
      return fail(`route ${route.name} listens on ${listen}, which REDIRECT cannot reach: it sends locally generated connections to 127.0.0.1 (IPv4) or ::1 (IPv6), so listen on 127.0.0.1, 0.0.0.0, [::1] or [::] (both families)`)
  }
}

/** An iptables chain name for the route: at most 28 characters. */
export function chainName (route: string): string {
  const name = `KAPROXY_${route.toUpperCase().replace(/-/g, '_')}`
  if (name.length <= 28) return name
  let hash = 0
  for (const ch of route) hash = (hash * 31 + ch.charCodeAt(0)) >>> 0
  return `${name.slice(0, 21)}_${hash.toString(36).slice(0, 6)}`
}

function hex (mark: number): string {
  return `0x${mark.toString(16)}`
}

function portText (port: number | readonly [number, number], separator: string): string {
  return typeof port === 'number' ? String(port) : `${port[0]}${separator}${port[1]}`
}

/** Split the port list into groups one multiport match takes (a range counts as two). */
function multiportGroups (ports: CaptureOptions['ports']): Array<Array<number | readonly [number, number]>> {
  const groups: Array<Array<number | readonly [number, number]>> = []
  let group: Array<number | readonly [number, number]> = []
  let size = 0
  for (const port of ports) {
    const cost = typeof port === 'number' ? 1 : 2
    if (size + cost > MULTIPORT_MAX) { groups.push(group); group = []; size = 0 }
    group.push(port)
    size += cost
  }
  if (group.length > 0) groups.push(group)
  return groups
}

function xtablesLines (tool: 'iptables' | 'ip6tables', chain: string, port: number, options: CaptureOptions, mark: number | null, cidrs: readonly string[]): string[] {
  const nat = `${tool} -t nat`
  const lines = [`${nat} -N ${chain}`, `${nat} -A ${chain} -o lo -j RETURN`]
  if (tool === 'ip6tables') lines.push(`${nat} -A ${chain} -d ${IPV6_LINK_LOCAL} -j RETURN`)
  for (const cidr of cidrs) lines.push(`${nat} -A ${chain} -d ${cidr} -j RETURN`)
  const exclusions = [
    ...(options.uid === null ? [] : [`-m owner ! --uid-owner ${options.uid}`]),
    ...(mark === null ? [] : [`-m mark ! --mark ${hex(mark)}`])
  ].join(' ')
  const redirect = `-j REDIRECT --to-ports ${port}`
  const groups = multiportGroups(options.ports)
  if (groups.length === 0) lines.push(`${nat} -A ${chain} -p tcp ${exclusions} ${redirect}`)
  for (const group of groups) {
    const match = group.length === 1 && typeof group[0] === 'number' ? `--dport ${group[0]}` : `-m multiport --dports ${group.map((p) => portText(p, ':')).join(',')}`
    lines.push(`${nat} -A ${chain} -p tcp ${match} ${exclusions} ${redirect}`)
  }
  lines.push(`${nat} -A OUTPUT -p tcp -j ${chain}`)
  return lines
}

function nftRuleset (table: string, port: number, families: ReadonlyArray<4 | 6>, options: CaptureOptions, mark: number | null, cidrs: ReadonlyArray<{ cidr: string, family: 4 | 6 }>): string {
  const rules = ['oifname "lo" return']
  if (!families.includes(4)) rules.push('meta nfproto ipv4 return')
  if (!families.includes(6)) rules.push('meta nfproto ipv6 return')
  else rules.push(`ip6 daddr ${IPV6_LINK_LOCAL} return`)
  for (const { cidr, family } of cidrs) rules.push(`${family === 4 ? 'ip' : 'ip6'} daddr ${cidr} return`)
  // `redirect to :port` needs the transport protocol matched in the same rule.
  const matches = [
    'meta l4proto tcp',
    ...(options.uid === null ? [] : [`meta skuid != ${options.uid}`]),
    ...(mark === null ? [] : [`meta mark != ${hex(mark)}`]),
    ...(options.ports.length === 0 ? [] : [`tcp dport { ${options.ports.map((p) => portText(p, '-')).join(', ')} }`])
  ]
  rules.push(`${matches.join(' ')} redirect to :${port}`)
  return [
    `table inet ${table} {`,
    '\tchain output {',
    '\t\ttype nat hook output priority -100; policy accept;',
    ...rules.map((rule) => `\t\t${rule}`),
    '\t}',
    '}'
  ].join('\n')
}

/** Build the rules capturing outbound TCP into `options.route`. Throws KaproxyError with a clear message. */
export function captureRules (config: KaproxyConfig, options: CaptureOptions, source: string): CaptureRules {
  const route = config.routes.find((r) => r.name === options.route)
  if (route === undefined) {
    const names = config.routes.map((r) => r.name)
    fail(`route ${JSON.stringify(options.route)} is not in ${source} (routes: ${names.length === 0 ? 'none' : names.join(', ')})`)
  }
  if (route.originalDst === null) {
    fail(`route ${route.name} relays to ${route.upstreams.map((t) => t.label).join(',')}, not original-dst: only an \`upstream: original-dst\` route can take redirected connections`)
  }
  const families = redirectFamilies(route)
  if (options.mark !== null && route.socketMark !== null && options.mark !== route.socketMark) {
    fail(`--mark ${hex(options.mark)} does not match route ${route.name}'s socketMark ${hex(route.socketMark)}: kaproxy's own connections would be captured again`)
  }
  const mark = options.mark ?? route.socketMark
  if (options.uid === null && mark === null) {
    fail(`give --uid UID (the uid kaproxy runs as) or set socketMark on route ${route.name}: without an exclusion kaproxy's own upstream connections are captured again, in a loop`)
  }
  if (options.uid === null && route.socketMark === null) {
    fail(`route ${route.name} has no socketMark, so kaproxy's connections do not carry mark ${hex(mark ?? 0)}: set socketMark: ${hex(mark ?? 0)} on the route, or give --uid`)
  }
  const cidrs = options.excludeCidrs.map((text) => parseCidr(text))
  for (const { cidr, family } of cidrs) {
    if (!families.includes(family)) fail(`--exclude-cidr ${cidr} is IPv${family}, but route ${route.name} only receives IPv${families[0] ?? 4} (listens on ${formatHostPort(route.listen)})`)
  }
  const chain = chainName(route.name)
  const port = route.listen.port
  const cidrsOf = (family: 4 | 6): string[] => cidrs.filter((c) => c.family === family).map((c) => c.cidr)
  const excluded = [
    'loopback (-o lo)',
    ...(families.includes(6) ? [`IPv6 link-local (${IPV6_LINK_LOCAL})`] : []),
    ...(options.uid === null ? [] : [`uid ${options.uid} (kaproxy)`]),
    ...(mark === null ? [] : [`mark ${hex(mark)}${route.socketMark === mark ? ' (the route\'s socketMark)' : ''}`]),
    ...cidrs.map((c) => c.cidr)
  ]
  const captured = options.ports.length === 0 ? 'all outbound TCP' : `outbound TCP to ports ${options.ports.map((p) => portText(p, '-')).join(',')}`
  return {
    route: route.name,
    port,
    families,
    mark,
    uid: options.uid,
    iptables: families.includes(4) ? xtablesLines('iptables', chain, port, options, mark, cidrsOf(4)) : [],
    ip6tables: families.includes(6) ? xtablesLines('ip6tables', chain, port, options, mark, cidrsOf(6)) : [],
    nft: nftRuleset(`kaproxy_${route.name.replace(/-/g, '_')}`, port, families, options, mark, cidrs),
    summary: [
      `route ${route.name}: ${captured} (IPv${families.join(' and IPv')}) is redirected to kaproxy on port ${port}`,
      `not captured: ${excluded.join(', ')}`
    ]
  }
}

/** The text `kaproxy iptables` prints: comments, then the iptables and/or nft block. */
export function formatCaptureRules (rules: CaptureRules, format: RuleFormat): string {
  const out = [
    `# kaproxy iptables --route ${rules.route}: printed, never run. Run it once, with NET_ADMIN, in the`,
    '# application\'s network namespace (e.g. a Kubernetes init container).',
    ...rules.summary.map((line) => `# ${line}`)
  ]
  if (format !== 'nft') {
    if (format === 'all') out.push('', '# --- iptables (legacy or nft backend); or use the nft block below instead ---')
    if (rules.iptables.length > 0) out.push('# IPv4', ...rules.iptables)
    if (rules.ip6tables.length > 0) out.push('# IPv6', ...rules.ip6tables)
  }
  if (format !== 'iptables') {
    if (format === 'all') out.push('', '# --- nft (instead of the iptables lines above) ---')
    out.push(`nft -f - <<'EOF'`, rules.nft, 'EOF')
  }
  return `${out.join('\n')}\n`
}

const OPTIONS = {
  route: { type: 'string' },
  config: { type: 'string', short: 'c' },
  uid: { type: 'string' },
  ports: { type: 'string', multiple: true },
  'exclude-cidr': { type: 'string', multiple: true },
  mark: { type: 'string' },
  format: { type: 'string' }
} as const

/**
 * `kaproxy iptables --route NAME [--config FILE] --uid UID [--ports P,Q] [--exclude-cidr CIDR ...]
 * [--mark MARK] [--format all|iptables|nft]`: the text to print. The config comes from --config or
 * KAPROXY_CONFIG. Throws KaproxyError (ConfigError for a bad file) with the message to show.
 */
export function iptablesCommand (args: string[], env: NodeJS.ProcessEnv = process.env): string {
  let values
  try {
    values = parseArgs({ args, options: OPTIONS, allowPositionals: false, strict: true }).values
  } catch (err) {
    throw new ConfigError([{ path: '', message: (err as Error).message }])
  }
  if (values.route === undefined) fail('--route NAME is required: the original-dst route that receives the redirected connections')
  const file = values.config ?? env.KAPROXY_CONFIG
  if (file === undefined) fail('give --config FILE (or KAPROXY_CONFIG): the file with the original-dst route')
  const format = values.format ?? 'all'
  if (format !== 'all' && format !== 'iptables' && format !== 'nft') fail(`--format must be all, iptables or nft (got ${JSON.stringify(format)})`)
  const options: CaptureOptions = {
    route: values.route,
    uid: values.uid === undefined ? null : parseUid(values.uid),
    ports: parsePorts(values.ports ?? []),
    excludeCidrs: values['exclude-cidr'] ?? [],
    mark: values.mark === undefined ? null : parseMark(values.mark)
  }
  const config = loadConfigFile(file, { env })
  return formatCaptureRules(captureRules(config, options, file), format)
}
