// Transparent sidecar, capture: an application running as `nobody` connects to two servers across the
// NAT, over IPv4 and IPv6, knowing nothing of kaproxy. The rules `kaproxy iptables` prints (installed as
// printed) redirect it into kaproxy, which runs as uid 1337 and is not captured itself. The bytes arrive
// byte-exact; each server's peer traces back (nat conntrack -> client socket -> owner pid) to kaproxy,
// not to the application; each upstream socket carries its destination's keepalive, read back with
// getsockopt on the very descriptor (pidfd_getfd) and seen ticking in `ss -tnoi`.
import assert from 'node:assert/strict'
import { before, it } from 'node:test'
import { labGate } from './netlab/gate.js'
import { Kaproxy } from './netlab/kaproxy.js'
import { ADDR, ADDR6 } from './netlab/lab.js'
import { establishedSockets, readRemoteSockopts, timerSeconds } from './netlab/remote-socket.js'
import { App, HashServer, target } from './netlab/sidecar-peers.js'
import { figure, itLeavesNothingBehind, newLab } from './netlab/suite.js'
import { ADMIN_LISTEN, OUTBOUND_PORT, TRANSPARENT_TOOLS, adminGet, installRules, logEvents, printedRules, splitAddress, traceToClientSocket, usersCanRun } from './netlab/transparent.js'
import { KAPROXY_UID, KAPROXY_USER, NOBODY } from './netlab/users.js'
import { describeEachEngine } from './helpers/engines.js'

const gate = await labGate({ needKaproxy: true, tools: TRANSPARENT_TOOLS, probe: usersCanRun })
const BYTES = 1024 * 1024

/** The keepalive each destination must get: the route's, or its `destinations` override merged over it. */
const ROUTE_KEEPALIVE = { idleSec: 11, intervalSec: 4, count: 5, userTimeoutMs: 0 }
const EXPECTED: Record<string, typeof ROUTE_KEEPALIVE> = {
  [target(ADDR.server, 7001)]: ROUTE_KEEPALIVE,
  [target(ADDR.server, 7002)]: { idleSec: 7, intervalSec: 3, count: 2, userTimeoutMs: 0 },
  [target(ADDR6.server, 7001)]: ROUTE_KEEPALIVE,
  [target(ADDR6.server, 7002)]: { idleSec: 8, intervalSec: 2, count: 3, userTimeoutMs: 20_000 }
}

describeEachEngine('transparent sidecar: capture by uid, IPv4 and IPv6', { skip: gate.skip }, () => {
  before(() => { gate.check() })

  it('redirects the application into kaproxy, byte-exact, from kaproxy\'s sockets, with each destination\'s keepalive', { timeout: 60_000 }, async (t) => {
    const lab = await newLab(t, { ipv6: true })
    const servers = [await HashServer.start(lab, 'server', '::', 7001), await HashServer.start(lab, 'server', '::', 7002)]
    const kaproxy = await Kaproxy.startConfig(lab, 'client', {
      admin: { listen: ADMIN_LISTEN },
      routes: [{
        name: 'outbound',
        listen: `[::]:${OUTBOUND_PORT}`,
        upstream: 'original-dst',
        keepalive: { upstream: { idle: '11s', interval: '4s', count: 5 } },
        destinations: [
          { match: `${ADDR.server}/32:7002`, keepalive: { idle: '7s', interval: '3s', count: 2 } },
          { match: `[${ADDR6.server}/128]:7002`, keepalive: { idle: '8s', interval: '2s', count: 3, userTimeout: '20s' } }
        ]
      }]
    }, { route: 'outbound', user: KAPROXY_USER })

    const rules = await printedRules(['--config', kaproxy.configFile ?? '', '--route', 'outbound', '--uid', String(KAPROXY_UID), '--ports', '7001,7002', '--format', 'iptables'])
    assert.match(rules, /^iptables -t nat -A KAPROXY_OUTBOUND -p tcp -m multiport --dports 7001,7002 -m owner ! --uid-owner 1337 -j REDIRECT --to-ports 15001$/m)
    assert.match(rules, /^ip6tables -t nat -A OUTPUT -p tcp -j KAPROXY_OUTBOUND$/m)
    await installRules(lab, rules)

    const targets = Object.keys(EXPECTED)
    const app = await App.connect(lab, 'client', NOBODY, BYTES, targets)
    for (const c of app.connections) {
      assert.equal(c.uid, NOBODY.uid, 'the application runs as nobody')
      assert.equal(c.remote, c.target, 'the application believes it is connected to the server itself')
    }
    const opens = await logEvents(kaproxy, 'open', targets.length, 5_000)
    for (const c of app.connections) {
      const open = opens.find((o) => o.upstream === c.target)
      assert.ok(open !== undefined, `kaproxy logged an open with upstream = the original destination ${c.target}: ${JSON.stringify(opens)}`)
      assert.equal(splitAddress(String(open.client)).port, splitAddress(c.local).port, 'its client is the application\'s socket')
      assert.equal(splitAddress(String(open.client)).host, splitAddress(c.local).host)
    }

    // Every upstream socket: who the server saw, traced back to its owner, and its keepalive read back.
    const appPid = app.proc.pid
    const readings: string[] = []
    for (const server of servers) {
      const accepts = await server.acceptedAtLeast(2)
      assert.equal(accepts.length, 2, `server ${server.port} accepted one IPv4 and one IPv6 connection`)
      for (const accepted of accepts) {
        const v6 = splitAddress(accepted.remote).host.includes(':')
        const dest = target(v6 ? ADDR6.server : ADDR.server, server.port)
        const socket = await traceToClientSocket(lab, accepted.remote, dest)
        assert.deepEqual(socket.users.map((u) => u.pid), [kaproxy.pid], `the server's peer ${accepted.remote} is kaproxy's socket ${socket.local}, not the application's (pid ${String(appPid)})`)
        const fd = socket.users[0]?.fd ?? -1
        const got = readRemoteSockopts(kaproxy.pid, fd)
        const want = EXPECTED[dest]
        assert.deepEqual({ idleSec: got.idleSec, intervalSec: got.intervalSec, count: got.count, userTimeoutMs: got.userTimeoutMs }, want, `keepalive of kaproxy's upstream socket to ${dest}`)
        assert.equal(got.keepalive, true)
        assert.equal(socket.timer?.kind, 'keepalive', `ss shows the keepalive timer on ${socket.local} -> ${dest}: ${socket.line}`)
        const left = timerSeconds(socket.timer?.text ?? '')
        assert.ok(left > 0 && left <= (want?.idleSec ?? 0), `timer ${socket.timer?.text ?? ''} within idle ${want?.idleSec ?? 0} s`)
        readings.push(`${dest} idle=${got.idleSec}s intvl=${got.intervalSec}s cnt=${got.count} uto=${got.userTimeoutMs}ms (ss timer ${socket.timer?.text ?? ''})`)
      }
    }
    // kaproxy's own view, /connections: the original destinations as upstreams, each side read back with getsockopt.
    const listed = JSON.parse(await adminGet(lab, '/connections?route=outbound')) as { total: number, connections: Array<{ upstream: string, client: string, sides: Record<string, { remote: string, keepalive: Record<string, unknown> | null }> }> }
    assert.equal(listed.total, 4)
    for (const c of listed.connections) {
      const want = EXPECTED[c.upstream]
      assert.ok(want !== undefined, `/connections lists the original destination ${c.upstream} as upstream`)
      assert.equal(c.sides.upstream?.remote, c.upstream)
      assert.deepEqual(c.sides.upstream?.keepalive, { enabled: true, ...want }, `/connections reads back ${c.upstream}'s keepalive`)
      assert.ok(app.connections.some((a) => splitAddress(a.local).port === splitAddress(c.client).port), `its client ${c.client} is the application's socket`)
    }
    const routes = JSON.parse(await adminGet(lab, '/routes')) as { routes: Array<{ name: string, upstream: string, destinations: unknown[] }> }
    assert.deepEqual(routes.routes.map((r) => [r.name, r.upstream, r.destinations.length]), [['outbound', 'original-dst', 2]], '/routes shows the transparent route and its destinations')
    // The application's own sockets never leave the client namespace: no nat entry carries their ports.
    const appSockets = (await establishedSockets(lab, 'client', appPid)).filter((s) => targets.includes(s.peer))
    assert.equal(appSockets.length, 4, 'the application holds its four sockets, each connected (as it sees it) to a server')
    const natPorts = new Set([...await lab.conntrackEntries(undefined, 4), ...await lab.conntrackEntries(undefined, 6)].map((e) => e.orig.sport))
    for (const s of appSockets) assert.ok(!natPorts.has(s.localPort), `the application's port ${s.localPort} never crossed the nat`)

    const transfers = await app.transfer(15_000)
    for (const tr of transfers) {
      assert.equal(tr.sent, BYTES)
      assert.equal(tr.received, BYTES, `${tr.target}: the whole echo came back`)
      assert.equal(tr.receivedSha256, tr.sentSha256, `${tr.target}: the echo is byte-exact`)
      const { host, port } = splitAddress(tr.target)
      const server = servers.find((s) => s.port === port)
      const accepted = server?.accepts().find((a) => splitAddress(a.remote).host.includes(':') === host.includes(':'))
      assert.ok(server !== undefined && accepted !== undefined)
      const hashed = await server.hashed(accepted.id, 5_000)
      assert.deepEqual({ bytes: hashed.bytes, sha256: hashed.sha256 }, { bytes: BYTES, sha256: tr.sentSha256 }, `${tr.target}: the server received exactly what the application sent`)
    }
    await logEvents(kaproxy, 'close', targets.length, 5_000)
    const closes = kaproxy.closes()
    assert.deepEqual(closes.map((c) => c.reason), ['client-closed', 'client-closed', 'client-closed', 'client-closed'])
    assert.deepEqual(closes.map((c) => c.upstream).sort(), [...targets].sort(), 'the close lines name the original destinations')
    for (const c of closes) assert.deepEqual([c.bytesFromClient, c.bytesFromUpstream], [BYTES, BYTES])
    figure(`transparent capture: 4 connections of uid ${NOBODY.uid} redirected into kaproxy (uid ${KAPROXY_UID}), ${BYTES} bytes each way byte-exact; upstream keepalive read back: ${readings.join('; ')}`)
  })

  it('leaves IPv6 link-local destinations uncaptured: the application reaches them directly', { timeout: 30_000 }, async (t) => {
    const lab = await newLab(t, { ipv6: true })
    const { stdout } = await lab.exec('nat', 'ip', ['-6', '-o', 'addr', 'show', 'dev', lab.ifaces.natClient, 'scope', 'link'])
    const linkLocal = /inet6 (fe80::[0-9a-f:]+)\//.exec(stdout)?.[1]
    assert.ok(linkLocal !== undefined, `the nat's link-local address: ${stdout}`)
    const server = await HashServer.start(lab, 'nat', '::', 7001)
    const kaproxy = await Kaproxy.startConfig(lab, 'client', { routes: [{ name: 'outbound', listen: `[::]:${OUTBOUND_PORT}`, upstream: 'original-dst' }] }, { route: 'outbound', user: KAPROXY_USER })
    const rules = await printedRules(['--config', kaproxy.configFile ?? '', '--route', 'outbound', '--uid', String(KAPROXY_UID), '--format', 'iptables'])
    assert.match(rules, /^ip6tables -t nat -A KAPROXY_OUTBOUND -d fe80::\/10 -j RETURN$/m)
    await installRules(lab, rules)
    // Redirected to ::1, a connection from a link-local source stays in SYN-SENT: it must not be captured.
    const to = `[${linkLocal}%${lab.ifaces.client}]:7001`
    const app = await App.connect(lab, 'client', NOBODY, 4096, [to])
    const [transfer] = await app.transfer(5_000)
    assert.ok(transfer !== undefined && transfer.received === 4096 && transfer.receivedSha256 === transfer.sentSha256, 'byte-exact, directly')
    assert.equal((await server.acceptedAtLeast(1)).length, 1)
    assert.deepEqual(kaproxy.proc.json().filter((e) => e.event === 'open' || e.event === 'close'), [], 'kaproxy saw nothing')
  })

  itLeavesNothingBehind()
})
