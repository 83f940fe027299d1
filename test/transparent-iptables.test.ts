// `kaproxy iptables`: the exact rules printed for a transparent route, and clear refusals (exit 1) when
// no rule could work. The namespace scenarios (transparent-*.test.ts) install these very lines.
import assert from 'node:assert/strict'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { before, describe, it } from 'node:test'
import { KaproxyError } from '../src/errors.js'
import { chainName, iptablesCommand, parseCidr, parsePorts } from '../src/iptables.js'
import { spawnCli } from './helpers/proxy.js'
import { labGate } from './netlab/gate.js'
import { itLeavesNothingBehind, newLab } from './netlab/suite.js'
import { NFT_TOOLS, installRules } from './netlab/transparent.js'

const gate = await labGate({ needKaproxy: false, tools: NFT_TOOLS })

const CONFIG = `routes:
  - name: outbound
    listen: "[::]:15001"
    upstream: original-dst
    socketMark: 0x539
  - name: v4
    listen: 127.0.0.1:15002
    upstream: original-dst
  - name: v6
    listen: "[::1]:15003"
    upstream: original-dst
  - name: any4
    listen: 0.0.0.0:15004
    upstream: original-dst
  - name: pinned
    listen: 10.0.0.5:15005
    upstream: original-dst
  - name: ephemeral
    listen: 127.0.0.1:0
    upstream: original-dst
  - name: demo
    listen: 127.0.0.1:7000
    upstream: 127.0.0.1:7001
  - name: a-very-long-route-name-for-a-chain
    listen: 127.0.0.1:15006
    upstream: original-dst
`

function configFile (t: { after: (fn: () => void) => void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'kaproxy-iptables-'))
  t.after(() => { rmSync(dir, { recursive: true, force: true }) })
  const file = join(dir, 'kaproxy.yaml')
  writeFileSync(file, CONFIG)
  return file
}

const refusal = (pattern: RegExp) => (err: unknown): boolean => {
  assert.ok(err instanceof KaproxyError, String(err))
  assert.match(err.message, pattern)
  return true
}

describe('kaproxy iptables', () => {
  it('prints iptables, ip6tables and nft rules for a dual-stack route, excluding loopback, uid, mark and CIDRs', (t) => {
    const file = configFile(t)
    const text = iptablesCommand(['--config', file, '--route', 'outbound', '--uid', '1337', '--ports', '5432,6379', '--ports', '8000-8100',
      '--exclude-cidr', '10.96.0.0/12', '--exclude-cidr', 'fd00::/8'], {})
    assert.equal(text, `# kaproxy iptables --route outbound: printed, never run. Run it once, with NET_ADMIN, in the
# application's network namespace (e.g. a Kubernetes init container).
# route outbound: outbound TCP to ports 5432,6379,8000-8100 (IPv4 and IPv6) is redirected to kaproxy on port 15001
# not captured: loopback (-o lo), IPv6 link-local (fe80::/10), uid 1337 (kaproxy), mark 0x539 (the route's socketMark), 10.96.0.0/12, fd00::/8

# --- iptables (legacy or nft backend); or use the nft block below instead ---
# IPv4
iptables -t nat -N KAPROXY_OUTBOUND
iptables -t nat -A KAPROXY_OUTBOUND -o lo -j RETURN
iptables -t nat -A KAPROXY_OUTBOUND -d 10.96.0.0/12 -j RETURN
iptables -t nat -A KAPROXY_OUTBOUND -p tcp -m multiport --dports 5432,6379,8000:8100 -m owner ! --uid-owner 1337 -m mark ! --mark 0x539 -j REDIRECT --to-ports 15001
iptables -t nat -A OUTPUT -p tcp -j KAPROXY_OUTBOUND
# IPv6
ip6tables -t nat -N KAPROXY_OUTBOUND
ip6tables -t nat -A KAPROXY_OUTBOUND -o lo -j RETURN
ip6tables -t nat -A KAPROXY_OUTBOUND -d fe80::/10 -j RETURN
ip6tables -t nat -A KAPROXY_OUTBOUND -d fd00::/8 -j RETURN
ip6tables -t nat -A KAPROXY_OUTBOUND -p tcp -m multiport --dports 5432,6379,8000:8100 -m owner ! --uid-owner 1337 -m mark ! --mark 0x539 -j REDIRECT --to-ports 15001
ip6tables -t nat -A OUTPUT -p tcp -j KAPROXY_OUTBOUND

# --- nft (instead of the iptables lines above) ---
nft -f - <<'EOF'
table inet kaproxy_outbound {
\tchain output {
\t\ttype nat hook output priority -100; policy accept;
\t\toifname "lo" return
\t\tip6 daddr fe80::/10 return
\t\tip daddr 10.96.0.0/12 return
\t\tip6 daddr fd00::/8 return
\t\tmeta l4proto tcp meta skuid != 1337 meta mark != 0x539 tcp dport { 5432, 6379, 8000-8100 } redirect to :15001
\t}
}
EOF
`)
  })

  it('prints only IPv4 rules for a 127.0.0.1 or 0.0.0.0 listener and only IPv6 rules for [::1]', (t) => {
    const file = configFile(t)
    const v4 = iptablesCommand(['--config', file, '--route', 'v4', '--uid', '1337'], {})
    assert.match(v4, /^iptables -t nat -A KAPROXY_V4 -p tcp -m owner ! --uid-owner 1337 -j REDIRECT --to-ports 15002$/m)
    assert.doesNotMatch(v4, /ip6tables/)
    assert.match(v4, /^\t\tmeta nfproto ipv6 return$/m, 'the nft table lets IPv6 through')
    assert.match(v4, /^\t\tmeta l4proto tcp meta skuid != 1337 redirect to :15002$/m)
    assert.match(v4, /all outbound TCP \(IPv4\)/)
    const any4 = iptablesCommand(['--config', file, '--route', 'any4', '--uid', '0', '--format', 'iptables'], {})
    assert.match(any4, /--uid-owner 0 -j REDIRECT --to-ports 15004$/m)
    const v6 = iptablesCommand(['--config', file, '--route', 'v6', '--uid', '1337', '--format', 'iptables'], {})
    assert.doesNotMatch(v6, /^iptables /m)
    assert.match(v6, /^ip6tables -t nat -A KAPROXY_V6 -p tcp -m owner ! --uid-owner 1337 -j REDIRECT --to-ports 15003$/m)
    assert.doesNotMatch(v6, /nft/, '--format iptables prints no nft block')
  })

  it('--format nft prints one ready nft block; a mark alone excludes kaproxy when the route sets socketMark', (t) => {
    const file = configFile(t)
    const nft = iptablesCommand(['--config', file, '--route', 'outbound', '--format', 'nft'], {})
    assert.doesNotMatch(nft, /iptables -t/)
    assert.match(nft, /^\t\tmeta l4proto tcp meta mark != 0x539 redirect to :15001$/m)
    assert.match(nft, /not captured: loopback \(-o lo\), IPv6 link-local \(fe80::\/10\), mark 0x539 \(the route's socketMark\)$/m)
    const marked = iptablesCommand(['--config', file, '--route', 'outbound', '--mark', '1337', '--format', 'iptables'], {})
    assert.match(marked, /^iptables -t nat -A KAPROXY_OUTBOUND -p tcp -m mark ! --mark 0x539 -j REDIRECT --to-ports 15001$/m)
  })

  it('splits more than 15 ports over several multiport rules and keeps chain names within 28 characters', (t) => {
    const file = configFile(t)
    const ports = Array.from({ length: 20 }, (_, i) => String(9000 + i)).join(',')
    const text = iptablesCommand(['--config', file, '--route', 'v4', '--uid', '1337', '--ports', ports, '--ports', '100-200', '--format', 'iptables'], {})
    const redirects = text.split('\n').filter((l) => l.includes('REDIRECT'))
    assert.deepEqual(redirects.map((l) => /--dports (\S+)/.exec(l)?.[1]), [
      '9000,9001,9002,9003,9004,9005,9006,9007,9008,9009,9010,9011,9012,9013,9014',
      '9015,9016,9017,9018,9019,100:200'
    ])
    const single = iptablesCommand(['--config', file, '--route', 'v4', '--uid', '1337', '--ports', '5432', '--format', 'iptables'], {})
    assert.match(single, / -p tcp --dport 5432 -m owner ! --uid-owner 1337 -j REDIRECT/)
    const long = chainName('a-very-long-route-name-for-a-chain')
    assert.ok(long.length <= 28 && long.startsWith('KAPROXY_A_VERY_LONG'), long)
    assert.notEqual(long, chainName('a-very-long-route-name-for-a-chair'), 'truncated names stay distinct')
    assert.match(iptablesCommand(['--config', file, '--route', 'a-very-long-route-name-for-a-chain', '--uid', '1', '--format', 'iptables'], {}), new RegExp(`-N ${long}$`, 'm'))
  })

  it('normalises and checks CIDRs and ports', () => {
    assert.deepEqual(parseCidr('10.0.0.5'), { cidr: '10.0.0.5/32', family: 4 })
    assert.deepEqual(parseCidr('FD00:0::/8'), { cidr: 'fd00::/8', family: 6 })
    assert.deepEqual(parseCidr('0.0.0.0/0'), { cidr: '0.0.0.0/0', family: 4 })
    assert.throws(() => parseCidr('10.1.2.3/8'), refusal(/host bits set: did you mean 10\.0\.0\.0\/8\?/))
    assert.throws(() => parseCidr('fd00::1/64'), refusal(/did you mean fd00::\/64\?/))
    assert.throws(() => parseCidr('10.0.0.0/33'), refusal(/--exclude-cidr must be an IPv4 or IPv6 CIDR/))
    assert.throws(() => parseCidr('db.internal'), refusal(/--exclude-cidr must be/))
    assert.deepEqual(parsePorts(['5432,6379', '5432', '80-90']), [5432, 6379, [80, 90]])
    for (const bad of ['0', '65536', '90-80', 'http', '']) assert.throws(() => parsePorts([bad]), refusal(/--ports must be/))
  })

  it('refuses what cannot work, naming the problem', (t) => {
    const file = configFile(t)
    const cases: Array<[string[], RegExp]> = [
      [['--route', 'nope', '--uid', '1'], /route "nope" is not in .*kaproxy\.yaml \(routes: outbound, v4, v6, any4, pinned, ephemeral, demo, a-very-long-route-name-for-a-chain\)/],
      [['--route', 'demo', '--uid', '1'], /route demo relays to 127\.0\.0\.1:7001, not original-dst/],
      [['--route', 'v4'], /give --uid UID \(the uid kaproxy runs as\) or set socketMark on route v4: without an exclusion kaproxy's own upstream connections are captured again, in a loop/],
      [['--route', 'v4', '--mark', '0x539'], /route v4 has no socketMark, so kaproxy's connections do not carry mark 0x539/],
      [['--route', 'outbound', '--uid', '1', '--mark', '0x53a'], /--mark 0x53a does not match route outbound's socketMark 0x539/],
      [['--route', 'pinned', '--uid', '1'], /route pinned listens on 10\.0\.0\.5:15005, which REDIRECT cannot reach: .*127\.0\.0\.1 \(IPv4\) or ::1 \(IPv6\)/],
      [['--route', 'ephemeral', '--uid', '1'], /route ephemeral listens on 127\.0\.0\.1:0, an ephemeral port/],
      [['--route', 'v4', '--uid', '1', '--exclude-cidr', 'fd00::/8'], /--exclude-cidr fd00::\/8 is IPv6, but route v4 only receives IPv4/],
      [['--route', 'v4', '--uid', 'root'], /--uid must be a numeric uid/],
      [['--route', 'v4', '--uid', '1', '--mark', '0'], /--mark must be an integer 1\.\.0xffffffff/],
      [['--route', 'v4', '--uid', '1', '--format', 'yaml'], /--format must be all, iptables or nft/],
      [['--uid', '1'], /--route NAME is required/]
    ]
    for (const [args, pattern] of cases) assert.throws(() => iptablesCommand(['--config', file, ...args], {}), refusal(pattern), args.join(' '))
    assert.throws(() => iptablesCommand(['--route', 'v4', '--uid', '1'], {}), refusal(/give --config FILE \(or KAPROXY_CONFIG\)/))
    assert.match(iptablesCommand(['--route', 'v4', '--uid', '1'], { KAPROXY_CONFIG: file }), /REDIRECT --to-ports 15002/, 'KAPROXY_CONFIG names the file')
  })

  it('the command exits 0 with the rules on stdout, and 1 with the reason on stderr', async (t) => {
    const file = configFile(t)
    const ok = spawnCli(['iptables', '--config', file, '--route', 'v4', '--uid', '1337', '--format', 'iptables'])
    t.after(ok.kill)
    let out = ''
    ok.child.stdout?.on('data', (chunk: Buffer) => { out += chunk.toString() })
    assert.equal(await ok.exit, 0)
    assert.equal(out, iptablesCommand(['--config', file, '--route', 'v4', '--uid', '1337', '--format', 'iptables'], {}))
    for (const [args, pattern] of [
      [['--route', 'demo', '--uid', '1'], /^kaproxy: route demo relays to 127\.0\.0\.1:7001, not original-dst/],
      [['--route', 'nope', '--uid', '1'], /^kaproxy: route "nope" is not in/],
      [['--route', 'v4', '--uid', '1', '--bogus'], /Unknown option '--bogus'/]
    ] as Array<[string[], RegExp]>) {
      const bad = spawnCli(['iptables', '--config', file, ...args])
      t.after(bad.kill)
      assert.equal(await bad.exit, 1, args.join(' '))
      assert.match(bad.stderr(), pattern)
    }
  })
})

describe('kaproxy iptables: every printed variant installs', { skip: gate.skip }, () => {
  before(() => { gate.check() })

  it('iptables, ip6tables and nft accept the rules as printed (in a lab namespace)', { timeout: 30_000 }, async (t) => {
    const file = configFile(t)
    const lab = await newLab(t)
    const variants: string[][] = [
      ['--route', 'outbound', '--uid', '1337', '--ports', '5432,6379,8000-8100', '--exclude-cidr', '10.96.0.0/12', '--exclude-cidr', 'fd00::/8'],
      ['--route', 'outbound'],
      ['--route', 'v4', '--uid', '0', '--ports', Array.from({ length: 20 }, (_, i) => String(9000 + i)).join(',')],
      ['--route', 'v6', '--uid', '1337', '--ports', '443', '--exclude-cidr', '2001:db8::/32'],
      ['--route', 'any4', '--uid', '1337', '--exclude-cidr', '192.168.0.0/16'],
      ['--route', 'a-very-long-route-name-for-a-chain', '--uid', '1337']
    ]
    for (const args of variants) {
      const xtables = iptablesCommand(['--config', file, ...args, '--format', 'iptables'], {})
      await installRules(lab, xtables)
      const { stdout: v4 } = await lab.exec('client', 'iptables', ['-t', 'nat', '-S'])
      const { stdout: v6 } = await lab.exec('client', 'ip6tables', ['-t', 'nat', '-S'])
      for (const [tool, installed] of [['iptables', v4], ['ip6tables', v6]] as const) {
        const printed = xtables.split('\n').filter((l) => l.startsWith(`${tool} -t nat -A `)).length
        assert.equal(installed.split('\n').filter((l) => l.startsWith('-A ')).length, printed, `${args.join(' ')}: all ${printed} ${tool} rules installed\n${installed}`)
      }
      for (const tool of ['iptables', 'ip6tables']) {
        await lab.exec('client', tool, ['-t', 'nat', '-F'])
        await lab.exec('client', tool, ['-t', 'nat', '-X'])
      }
      const nft = iptablesCommand(['--config', file, ...args, '--format', 'nft'], {})
      await installRules(lab, nft)
      await lab.exec('client', 'nft', ['flush', 'ruleset'])
    }
  })

  itLeavesNothingBehind()
})
