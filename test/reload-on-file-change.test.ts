import assert from 'node:assert/strict'
import { mkdirSync, mkdtempSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, it } from 'node:test'
import { startReloadTriggers } from '../src/reload.js'
import { connect, startEchoServer, type TestServer, echoThrough } from './helpers/peers.js'
import { startProxyFromFile, type RunningProxy } from './helpers/proxy.js'

type After = { after: (fn: () => unknown) => void }

function tempDir (t: After): string {
  const dir = mkdtempSync(join(tmpdir(), 'kaproxy-watch-'))
  t.after(() => { rmSync(dir, { recursive: true, force: true }) })
  return dir
}

function configText (upstream: TestServer, routes: string[]): string {
  return `admin: { listen: "" }\nroutes:\n${routes.map((name) => `  - { name: ${name}, listen: "127.0.0.1:0", upstream: "${upstream.address}" }\n`).join('')}`
}


async function watched (t: After, file: string): Promise<RunningProxy> {
  const proxy = await startProxyFromFile(file)
  t.after(proxy.close)
  const triggers = startReloadTriggers(proxy.kaproxy, { file, watch: true, log: proxy.logger, debounceMs: 50 })
  t.after(triggers.close)
  return proxy
}

/** The n-th reload line (1-based) that came from the file watch. */
async function fileReload (proxy: RunningProxy, n: number) {
  return await proxy.log.waitUntil((line) => line.event === 'reload' && line.trigger === 'file' && proxy.log.find({ event: 'reload', trigger: 'file' }).length === n)
}

describe('reload when the config file changes', () => {
  it('follows an editor-style save: a new file renamed over the old one, then an in-place write', async (t) => {
    const upstream = await startEchoServer()
    t.after(upstream.close)
    const dir = tempDir(t)
    const file = join(dir, 'kaproxy.yaml')
    writeFileSync(file, configText(upstream, ['one']))
    const proxy = await watched(t, file)

    const temp = join(dir, '.kaproxy.yaml.swp')
    writeFileSync(temp, configText(upstream, ['one', 'two']))
    renameSync(temp, file)
    const first = await fileReload(proxy, 1)
    assert.equal(first.ok, true)
    assert.deepEqual(first.added, ['two'])
    assert.equal(await echoThrough(proxy.port('two'), 'renamed over'), 'renamed over')

    // The watch survived the rename: the new inode is watched as well.
    writeFileSync(file, configText(upstream, ['two']))
    const second = await fileReload(proxy, 2)
    assert.deepEqual(second.removed, ['one'])
    assert.equal(proxy.kaproxy.engine.address('one'), null)
  })

  it('follows a Kubernetes ConfigMap volume update: the ..data symlink swapped to a new directory', async (t) => {
    const upstream = await startEchoServer()
    t.after(upstream.close)
    const dir = tempDir(t)
    // The kubelet's layout: a timestamped directory, ..data pointing at it, the key a symlink through ..data.
    let generation = 0
    const publish = (text: string): void => {
      const previous = `..2026_01_01_00_00_0${generation}.000000001`
      const next = `..2026_01_01_00_00_0${++generation}.000000001`
      mkdirSync(join(dir, next))
      writeFileSync(join(dir, next, 'kaproxy.yaml'), text)
      if (generation === 1) {
        symlinkSync(next, join(dir, '..data'))
        symlinkSync(join('..data', 'kaproxy.yaml'), join(dir, 'kaproxy.yaml'))
        return
      }
      symlinkSync(next, join(dir, '..data_tmp'))
      renameSync(join(dir, '..data_tmp'), join(dir, '..data'))
      rmSync(join(dir, previous), { recursive: true })
    }
    publish(configText(upstream, ['one']))
    const file = join(dir, 'kaproxy.yaml')
    const proxy = await watched(t, file)

    // A broken ConfigMap is refused and the old routes keep serving.
    publish('routes:\n  - { name: one, listen: "127.0.0.1:0", upstream: "nowhere" }\n')
    const rejected = await fileReload(proxy, 1)
    assert.equal(rejected.ok, false)
    assert.match(String(rejected.msg), /routes\[0\]\.upstream: must be host:port or \[ipv6\]:port with port 1\.\.65535, or unix:\/path \(got "nowhere"\)/)
    assert.equal(await echoThrough(proxy.port('one'), 'still serving'), 'still serving')

    publish(configText(upstream, ['one', 'two']))
    const applied = await fileReload(proxy, 2)
    assert.equal(applied.ok, true)
    assert.deepEqual(applied.added, ['two'])
    assert.deepEqual(applied.unchanged, ['one'])
    assert.equal(await echoThrough(proxy.port('two'), 'via ..data'), 'via ..data')
    assert.deepEqual(proxy.kaproxy.reloads, { ok: 1, failed: 1 })
  })
})
