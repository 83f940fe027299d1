// The shipped examples: conf/examples/transparent-sidecar.yaml and the Kubernetes manifest agree with
// each other and with `kaproxy iptables`, and the manifest's pod works as written when replayed in the
// lab: the init container's script installs the rules, kaproxy runs as uid 1337 with the ConfigMap's
// config, and an unchanged application (uid nobody) reaches PostgreSQL's address 10.0.5.20:5432 through
// it with the destination's keepalive override. docs/transparent.md shows the rules exactly as printed.
import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { before, describe, it } from 'node:test'
import YAML from 'yaml'
import { loadConfigFile } from '../src/config/load.js'
import { iptablesCommand } from '../src/iptables.js'
import { labGate } from './netlab/gate.js'
import { KAPROXY_CLI, Kaproxy } from './netlab/kaproxy.js'
import { readRemoteSockopts } from './netlab/remote-socket.js'
import { App, HashServer, target } from './netlab/sidecar-peers.js'
import { figure, itLeavesNothingBehind, newLab } from './netlab/suite.js'
import { TRANSPARENT_TOOLS, adminGet, installRules, logEvents, traceToClientSocket, usersCanRun } from './netlab/transparent.js'
import { NOBODY } from './netlab/users.js'

const ROOT = new URL('../../', import.meta.url)
const CONFIG_FILE = new URL('conf/examples/transparent-sidecar.yaml', ROOT)
const K8S_FILE = new URL('conf/examples/k8s-transparent-sidecar.yaml', ROOT)
const DOCS_FILE = new URL('docs/transparent.md', ROOT)
const DATABASE = { host: '10.0.5.20', port: 5432 }

interface Container {
  name: string
  image: string
  command?: string[]
  args?: string[]
  env?: unknown
  restartPolicy?: string
  securityContext?: { runAsUser?: number, runAsGroup?: number, capabilities?: { add?: string[], drop?: string[] } }
  volumeMounts?: Array<{ name: string, mountPath: string }>
}

function manifest (): { configYaml: string, init: Container, sidecar: Container, app: Container, containers: Container[] } {
  const docs = YAML.parseAllDocuments(readFileSync(K8S_FILE, 'utf8')).map((d) => d.toJS() as Record<string, unknown>)
  const configMap = docs.find((d) => d.kind === 'ConfigMap') as { data: Record<string, string> } | undefined
  const deployment = docs.find((d) => d.kind === 'Deployment') as { spec: { template: { spec: { initContainers: Container[], containers: Container[] } } } } | undefined
  assert.ok(configMap !== undefined && deployment !== undefined, 'a ConfigMap and a Deployment')
  const pod = deployment.spec.template.spec
  const [init, sidecar] = pod.initContainers
  const [app] = pod.containers
  assert.ok(init !== undefined && sidecar !== undefined && app !== undefined && configMap.data['kaproxy.yaml'] !== undefined)
  return { configYaml: configMap.data['kaproxy.yaml'], init, sidecar, app, containers: pod.containers }
}

/** The `kaproxy iptables ...` arguments in the init container's script. */
function initIptablesArgs (init: Container): string[] {
  const script = init.command?.at(-1) ?? ''
  const line = /dist\/cli\.js iptables ([^>\n]+?)\s*>/.exec(script)
  assert.ok(line?.[1] !== undefined, `the init script runs kaproxy iptables: ${script}`)
  return line[1].split(/\s+/)
}

const gate = await labGate({ needKaproxy: true, tools: TRANSPARENT_TOOLS, probe: usersCanRun })

describe('the transparent sidecar examples', () => {
  it('the Kubernetes manifest runs the example config, kaproxy as the uid its rules exclude, the application unchanged', () => {
    const { configYaml, init, sidecar, app, containers } = manifest()
    assert.deepEqual(YAML.parse(configYaml), YAML.parse(readFileSync(CONFIG_FILE, 'utf8')), 'the ConfigMap holds conf/examples/transparent-sidecar.yaml')
    const config = loadConfigFile(CONFIG_FILE.pathname, { env: {} })
    const route = config.routes.find((r) => r.name === 'outbound')
    assert.ok(route?.originalDst !== null && route?.originalDst !== undefined, 'the example route is original-dst')

    const args = initIptablesArgs(init)
    assert.deepEqual(args.slice(0, 6), ['--config', '/etc/kaproxy/kaproxy.yaml', '--route', 'outbound', '--uid', '1337'])
    assert.ok(init.securityContext?.capabilities?.add?.includes('NET_ADMIN'), 'the init container has NET_ADMIN')
    assert.equal(init.securityContext?.runAsUser, 0)
    assert.equal(sidecar.restartPolicy, 'Always', 'kaproxy is a native sidecar')
    assert.equal(sidecar.securityContext?.runAsUser, 1337, 'kaproxy runs as the uid the rules exclude')
    assert.deepEqual(sidecar.securityContext?.capabilities, { drop: ['ALL'] }, 'kaproxy needs no capability with uid exclusion')
    assert.deepEqual(sidecar.args, ['--config', '/etc/kaproxy/kaproxy.yaml'])
    assert.equal(containers.length, 1)
    assert.deepEqual(Object.keys(app).sort(), ['env', 'image', 'name'], 'the application container has nothing of kaproxy: no securityContext, command or mounts')
  })

  it('docs/transparent.md shows the rules exactly as kaproxy iptables prints them for the example', () => {
    const docs = readFileSync(DOCS_FILE, 'utf8')
    const printed = iptablesCommand(['--config', CONFIG_FILE.pathname, '--route', 'outbound', '--uid', '1337'], {})
    const block = /<!-- kaproxy iptables example -->\n```sh\n([\s\S]*?)```/.exec(docs)?.[1]
    assert.equal(block, printed.replace(/--config \S+/, '--config conf/examples/transparent-sidecar.yaml'))
  })
})

describe('the Kubernetes example, replayed in the lab', { skip: gate.skip }, () => {
  before(() => { gate.check() })

  it('init script, kaproxy as uid 1337, unchanged application: reaches the database through kaproxy with its keepalive', { timeout: 30_000 }, async (t) => {
    const lab = await newLab(t)
    // The database's address lives in the server namespace, behind the nat.
    await lab.exec('server', 'ip', ['addr', 'add', `${DATABASE.host}/24`, 'dev', lab.ifaces.server])
    await lab.exec('nat', 'ip', ['route', 'add', '10.0.5.0/24', 'dev', lab.ifaces.natServer])
    const database = await HashServer.start(lab, 'server', DATABASE.host, DATABASE.port)

    const { configYaml, init, sidecar } = manifest()
    // The ConfigMap volume, then the init container's script as written, with `kaproxy` being this build.
    const configFile = lab.writeFile('kaproxy.yaml', configYaml)
    const script = (init.command?.at(-1) ?? '')
      .replaceAll('/etc/kaproxy/kaproxy.yaml', configFile)
      .replaceAll('node /opt/kaproxy/dist/cli.js', `${process.execPath} ${KAPROXY_CLI}`)
      .replaceAll('/tmp/capture.sh', lab.writeFile('capture.sh', ''))
    await installRules(lab, script)
    const { stdout: installed } = await lab.exec('client', 'iptables', ['-t', 'nat', '-S', 'KAPROXY_OUTBOUND'])
    assert.match(installed, /-A KAPROXY_OUTBOUND -p tcp -m owner ! --uid-owner 1337 -j REDIRECT --to-ports 15001/)

    const uid = sidecar.securityContext?.runAsUser ?? -1
    const gid = sidecar.securityContext?.runAsGroup ?? -1
    const kaproxy = await Kaproxy.startConfig(lab, 'client', YAML.parse(configYaml) as Record<string, unknown>, { route: 'outbound', user: { uid, gid } })
    const to = target(DATABASE.host, DATABASE.port)
    const app = await App.connect(lab, 'client', NOBODY, 64 * 1024, [to])
    const [open] = await logEvents(kaproxy, 'open', 1, 5_000)
    assert.equal(open?.upstream, to)
    const [accepted] = await database.acceptedAtLeast(1)
    assert.ok(accepted !== undefined)
    const socket = await traceToClientSocket(lab, accepted.remote, to)
    assert.deepEqual(socket.users.map((u) => u.pid), [kaproxy.pid], 'the database sees kaproxy\'s connection')
    const got = readRemoteSockopts(kaproxy.pid, socket.users[0]?.fd ?? -1)
    assert.deepEqual([got.idleSec, got.intervalSec, got.count, got.userTimeoutMs], [20, 3, 4, 50_000], 'the 10.0.5.0/24:5432 override merged over the route\'s keepalive')
    // The sidecar's startup probe, as written, run inside the pod's namespace: /readyz on the admin API.
    const probe = (sidecar as Container & { startupProbe?: { exec?: { command?: string[] } } }).startupProbe?.exec?.command ?? []
    assert.equal(probe[0], 'node')
    await lab.exec('client', process.execPath, probe.slice(1))
    // /connections: the original destination as upstream, the override read back by kaproxy itself.
    const listed = JSON.parse(await adminGet(lab, '/connections?route=outbound')) as { connections: Array<{ upstream: string, sides: { upstream: { remote: string, keepalive: unknown } } }> }
    const live = listed.connections[0]
    assert.equal(live?.upstream, to)
    assert.deepEqual(live?.sides.upstream.keepalive, { enabled: true, idleSec: 20, intervalSec: 3, count: 4, userTimeoutMs: 50_000 })
    figure(`kubernetes example: /connections -> ${JSON.stringify(live, (key, value: unknown) => key === 'tcpInfo' ? undefined : value)}`)
    const [transfer] = await app.transfer(5_000)
    assert.ok(transfer !== undefined && transfer.receivedSha256 === transfer.sentSha256 && transfer.received === 64 * 1024)
    const [close] = await logEvents(kaproxy, 'close', 1, 5_000)
    assert.equal(close?.reason, 'client-closed')
    figure(`kubernetes example replayed: ${to} reached through kaproxy (uid ${uid}) with idle 20s interval 3s count 4 userTimeout 50s; log: ${JSON.stringify({ ...close, time: undefined, pid: undefined, level: undefined })}`)
  })

  itLeavesNothingBehind()
})
