// Transparent sidecar, excluded by mark instead of uid: the route sets `socketMark: 0x539`, kaproxy runs
// as uid 1337 with CAP_NET_ADMIN (ambient, as a container granted NET_ADMIN), and the nft rules
// `kaproxy iptables --format nft` prints exclude only `meta mark 0x539` — kaproxy's uid is captured like
// any other. Its upstream sockets carry the mark (read back with getsockopt), so they are not captured
// again: no loop. Without the capability kaproxy refuses to start and names it.
import assert from 'node:assert/strict'
import { before, it } from 'node:test'
import { describeEachEngine } from './helpers/engines.js'
import { labGate } from './netlab/gate.js'
import { KAPROXY_CLI, Kaproxy } from './netlab/kaproxy.js'
import { ADDR, ADDR6 } from './netlab/lab.js'
import { readRemoteSockopts } from './netlab/remote-socket.js'
import { App, HashServer, target } from './netlab/sidecar-peers.js'
import { figure, itLeavesNothingBehind, newLab } from './netlab/suite.js'
import { NFT_TOOLS, OUTBOUND_PORT, installRules, logEvents, printedRules, splitAddress, traceToClientSocket, usersCanRun } from './netlab/transparent.js'
import { KAPROXY_USER, NOBODY, asUser } from './netlab/users.js'

const gate = await labGate({ needKaproxy: true, tools: NFT_TOOLS, probe: usersCanRun })
const MARK = 0x539
const ROUTE = { name: 'outbound', listen: `[::]:${OUTBOUND_PORT}`, upstream: 'original-dst', socketMark: '0x539', keepalive: { upstream: { idle: '20s', interval: '5s', count: 3 } } }

describeEachEngine('transparent sidecar: excluded by socketMark', { skip: gate.skip }, () => {
  before(() => { gate.check() })

  it('captures the application with a mark-only nft rule, and kaproxy\'s marked sockets are not captured again', { timeout: 30_000 }, async (t) => {
    const lab = await newLab(t, { ipv6: true })
    const server = await HashServer.start(lab, 'server', '::', 7001)
    const kaproxy = await Kaproxy.startConfig(lab, 'client', { routes: [ROUTE] }, { route: 'outbound', user: { ...KAPROXY_USER, caps: ['net_admin'] } })
    const rules = await printedRules(['--config', kaproxy.configFile ?? '', '--route', 'outbound', '--format', 'nft'])
    assert.match(rules, /^\t\tmeta l4proto tcp meta mark != 0x539 redirect to :15001$/m, 'the only exclusion (besides loopback) is the mark')
    assert.doesNotMatch(rules, /skuid|uid-owner/)
    await installRules(lab, rules)

    const targets = [target(ADDR.server, 7001), target(ADDR6.server, 7001)]
    const app = await App.connect(lab, 'client', NOBODY, 256 * 1024, targets)
    const opens = await logEvents(kaproxy, 'open', 2, 5_000)
    assert.deepEqual(opens.map((o) => o.upstream).sort(), [...targets].sort())
    const marks: string[] = []
    for (const accepted of await server.acceptedAtLeast(2)) {
      const dest = splitAddress(accepted.remote).host.includes(':') ? target(ADDR6.server, 7001) : target(ADDR.server, 7001)
      const socket = await traceToClientSocket(lab, accepted.remote, dest)
      assert.deepEqual(socket.users.map((u) => u.pid), [kaproxy.pid], `the server's peer ${accepted.remote} is kaproxy's socket`)
      const got = readRemoteSockopts(kaproxy.pid, socket.users[0]?.fd ?? -1)
      assert.equal(got.mark, MARK, `kaproxy's upstream socket to ${dest} carries SO_MARK 0x539`)
      assert.deepEqual([got.idleSec, got.intervalSec, got.count], [20, 5, 3])
      marks.push(`${dest} mark=0x${got.mark.toString(16)}`)
    }
    assert.equal(marks.length, 2, 'the server saw exactly two connections')

    const transfers = await app.transfer(10_000)
    assert.deepEqual(transfers.map((tr) => tr.received === tr.sent && tr.receivedSha256 === tr.sentSha256), [true, true], 'byte-exact both ways')
    const closes = await logEvents(kaproxy, 'close', 2, 5_000)
    assert.deepEqual(closes.map((c) => c.reason), ['client-closed', 'client-closed'])
    // A loop would show as more connections: kaproxy's own upstream redirected back into itself.
    assert.deepEqual(kaproxy.proc.json().filter((e) => e.event === 'open' || e.event === 'close').map((e) => e.conn).sort(), [1, 1, 2, 2], 'two connections, no more')
    assert.equal(server.accepts().length, 2)
    figure(`socketMark: capture excluded only by mark 0x539 (nft), kaproxy as uid 1337 with CAP_NET_ADMIN; ${marks.join(', ')}; 2 connections relayed byte-exact, 0 recaptured`)
  })

  it('refuses to start without CAP_NET_ADMIN, naming the capability', { timeout: 15_000 }, async (t) => {
    const lab = await newLab(t)
    const file = lab.writeFile('marked.json', JSON.stringify({ admin: { listen: '' }, routes: [ROUTE] }))
    const [cmd, args] = asUser(KAPROXY_USER, process.execPath, [KAPROXY_CLI, '--config', file])
    const proc = lab.spawn('client', cmd, args, 'kaproxy without CAP_NET_ADMIN')
    assert.equal(await proc.exited, 1)
    assert.match(proc.stderrTail(), /route outbound: setting SO_MARK 0x539 needs the CAP_NET_ADMIN capability \(EPERM/)
    assert.deepEqual(proc.json().filter((e) => e.event === 'listening'), [], 'nothing listened')
  })

  itLeavesNothingBehind()
})
