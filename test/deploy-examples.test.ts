import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { describe, it } from 'node:test'
import { fileURLToPath } from 'node:url'
import YAML from 'yaml'
import { buildConfig, loadConfigFile } from '../src/config/load.js'

const ROOT = fileURLToPath(new URL('../../', import.meta.url))
const read = (path: string): string => readFileSync(join(ROOT, path), 'utf8')
const maxDrainSec = (config: { routes: Array<{ drainTimeoutMs: number }> }): number => Math.max(...config.routes.map((route) => route.drainTimeoutMs)) / 1000

interface K8sDoc {
  kind: string
  data?: Record<string, string>
  spec?: { terminationGracePeriodSeconds?: number, containers?: Container[] }
}
interface Container {
  name: string
  readinessProbe?: { httpGet?: { path: string, port: string } }
  livenessProbe?: { httpGet?: { path: string, port: string } }
  ports?: Array<{ name?: string, containerPort: number }>
  lifecycle?: { preStop?: { exec?: { command: string[] } } }
}

describe('deployment files', () => {
  it('the Kubernetes sidecar Pod: valid kaproxy config, probes on /healthz and /readyz at the admin port, grace period above drainTimeout', () => {
    const docs = YAML.parseAllDocuments(read('conf/examples/kubernetes-sidecar.yaml')).map((doc) => doc.toJS() as K8sDoc)
    const configMap = docs.find((doc) => doc.kind === 'ConfigMap')
    const pod = docs.find((doc) => doc.kind === 'Pod')
    assert.ok(configMap?.data !== undefined && pod?.spec !== undefined)
    const raw = YAML.parse(configMap.data['kaproxy.yaml'] ?? '') as unknown
    // The admin API listens beyond loopback: without a token kaproxy refuses to start.
    assert.throws(() => buildConfig(raw, { env: {} }), /admin\.token: required/)
    const config = buildConfig(raw, { env: { KAPROXY_ADMIN_TOKEN: 'from-the-secret' } })
    const adminPort = config.admin.listen?.port
    assert.equal(adminPort, 9901)

    const containers = pod.spec.containers ?? []
    const kaproxy = containers.find((container) => container.name === 'kaproxy')
    const app = containers.find((container) => container.name === 'app')
    assert.ok(kaproxy !== undefined && app !== undefined)
    const tokenEnv = (kaproxy as Container & { env?: Array<{ name: string, valueFrom?: { secretKeyRef?: { name: string } } }> }).env?.find((e) => e.name === 'KAPROXY_ADMIN_TOKEN')
    assert.ok(docs.some((doc) => doc.kind === 'Secret' && (doc as { metadata?: { name?: string } }).metadata?.name === tokenEnv?.valueFrom?.secretKeyRef?.name), 'the token comes from a Secret in the example')
    assert.equal(kaproxy.readinessProbe?.httpGet?.path, '/readyz')
    assert.equal(kaproxy.livenessProbe?.httpGet?.path, '/healthz')
    const admin = kaproxy.ports?.find((port) => port.name === kaproxy.readinessProbe?.httpGet?.port)
    assert.equal(admin?.containerPort, adminPort)
    assert.equal(kaproxy.ports?.find((port) => port.name === 'proxy')?.containerPort, config.routes[0]?.listen.port)

    const drainSec = maxDrainSec(config)
    const preStopSec = Number(app.lifecycle?.preStop?.exec?.command[1])
    assert.ok(preStopSec > drainSec, `the app outlives kaproxy's drain (${preStopSec} s > ${drainSec} s)`)
    assert.ok((pod.spec.terminationGracePeriodSeconds ?? 30) > preStopSec, 'terminationGracePeriodSeconds covers the drain and the app')
  })

  it('the systemd unit reloads with SIGHUP and waits longer than the drain', () => {
    const unit = read('conf/examples/kaproxy.service')
    assert.match(unit, /^ExecReload=\/bin\/kill -HUP \$MAINPID$/m)
    assert.match(unit, /^KillSignal=SIGTERM$/m)
    const stopSec = Number(/^TimeoutStopSec=(\d+)s$/m.exec(unit)?.[1])
    assert.ok(stopSec > 30, 'TimeoutStopSec above the default drainTimeout')
    assert.match(unit, /^ExecStartPre=.*kaproxy check --config/m)
  })

  it('the legacy-behind-NAT config probes the upstream well inside a 300 s NAT idle timeout', () => {
    const config = loadConfigFile(join(ROOT, 'conf/examples/legacy-nat.yaml'), { env: {} })
    const route = config.routes[0]
    assert.ok(route !== undefined)
    assert.ok(route.keepalive.upstream.enabled && route.keepalive.upstream.idleSec < 300)
    assert.equal(route.keepaliveApplyToExisting, true)
  })

  it('the Dockerfile: Node 24 slim, two stages, non-root, tini, /etc/kaproxy/kaproxy.yaml, admin port exposed and health-checked', () => {
    const dockerfile = read('Dockerfile')
    assert.throws(() => loadConfigFile(join(ROOT, 'conf/container.yaml'), { env: {} }), /admin\.token: required/)
    const container = loadConfigFile(join(ROOT, 'conf/container.yaml'), { env: { KAPROXY_ADMIN_TOKEN: 'set-at-run-time' } })
    const adminPort = container.admin.listen?.port
    assert.match(dockerfile, /^ARG NODE_IMAGE=node:24-bookworm-slim$/m)
    assert.equal(dockerfile.match(/^FROM /gm)?.length, 2)
    assert.match(dockerfile, /^USER node$/m)
    assert.match(dockerfile, /^ENTRYPOINT \["\/usr\/bin\/tini", "--", "node", /m)
    assert.match(dockerfile, /KAPROXY_CONFIG=\/etc\/kaproxy\/kaproxy\.yaml/)
    assert.match(dockerfile, /^COPY conf\/container\.yaml \/etc\/kaproxy\/kaproxy\.yaml$/m)
    assert.match(dockerfile, new RegExp(`^EXPOSE ${String(adminPort)}$`, 'm'))
    assert.match(dockerfile, new RegExp(`http://127\\.0\\.0\\.1:${String(adminPort)}/healthz`))
  })
})
