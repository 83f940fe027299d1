import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { once } from 'node:events'
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, it } from 'node:test'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { connect, startEchoServer } from './helpers/peers.js'
import { spawnCli } from './helpers/proxy.js'

const run = promisify(execFile)
const ROOT = fileURLToPath(new URL('../../', import.meta.url))
/** The Dockerfile's final-stage install; the test checks the Dockerfile still says exactly this. */
const PRODUCTION_INSTALL = ['ci', '--omit=dev', '--ignore-scripts', '--no-audit', '--no-fund']

async function npm (args: string[], cwd: string): Promise<string> {
  const { stdout } = await run('npm', args, { cwd, env: { ...process.env, npm_config_update_notifier: 'false' }, maxBuffer: 16 * 1024 * 1024 })
  return stdout
}

describe('the production tree, built the way the Dockerfile builds it', () => {
  it('installs from npm pack output with npm ci --omit=dev, then runs check and a live relay from there', async (t) => {
    const dockerfile = readFileSync(join(ROOT, 'Dockerfile'), 'utf8')
    assert.ok(dockerfile.includes(`npm ${PRODUCTION_INSTALL.join(' ')}`), 'the Dockerfile installs the production tree the same way')
    assert.ok(existsSync(join(ROOT, 'dist', 'cli.js')), 'dist/ is built (npm test builds it first)')

    const dir = mkdtempSync(join(tmpdir(), 'kaproxy-prod-'))
    t.after(() => { rmSync(dir, { recursive: true, force: true }) })
    // dist/ is fresh from `npm run build`, as in the Dockerfile's build stage.
    const packed = JSON.parse(await npm(['pack', '--ignore-scripts', '--json', '--pack-destination', dir], ROOT)) as Array<{ filename: string, files: Array<{ path: string }> }>
    const tarball = packed[0]
    assert.ok(tarball !== undefined)
    const packedPaths = tarball.files.map((file) => file.path)
    assert.ok(packedPaths.includes('dist/cli.js') && packedPaths.includes('conf/container.yaml'))
    assert.ok(!packedPaths.some((path) => path.startsWith('src/') || path.startsWith('test/') || path.startsWith('build/')), 'no sources or tests in the package')

    const tree = join(dir, 'kaproxy')
    mkdirSync(tree)
    await run('tar', ['-xzf', join(dir, tarball.filename), '-C', tree, '--strip-components=1'])
    copyFileSync(join(ROOT, 'package-lock.json'), join(tree, 'package-lock.json'))
    await npm([...PRODUCTION_INSTALL, '--prefer-offline'], tree)
    assert.ok(existsSync(join(tree, 'node_modules', 'koffi')), 'runtime dependencies installed')
    assert.ok(!existsSync(join(tree, 'node_modules', 'typescript')), 'no dev dependencies')
    assert.ok(!existsSync(join(tree, 'node_modules', '@types')), 'no type packages')

    const cli = join(tree, 'dist', 'cli.js')
    // The image's config (/etc/kaproxy/kaproxy.yaml) passes check from the production tree.
    const check = spawnCli(['check', '--config', join(tree, 'conf', 'container.yaml')], {}, cli)
    t.after(check.kill)
    let out = ''
    check.child.stdout?.on('data', (chunk: Buffer) => { out += chunk.toString() })
    assert.equal(await check.exit, 0, check.stderr())
    assert.match(out, /route demo: 0\.0\.0\.0:7000 -> 127\.0\.0\.1:7001/)
    assert.match(out, /configuration OK/)

    const echo = await startEchoServer()
    t.after(echo.close)
    const relay = spawnCli(['--name', 'prod', '--listen', '127.0.0.1:0', '--upstream', echo.address, '--admin-listen', ''], {}, cli)
    t.after(relay.kill)
    const listening = await relay.stdout.waitFor({ event: 'listening', route: 'prod' })
    const client = await connect(Number(String(listening.address).split(':').pop()), '127.0.0.1', { allowHalfOpen: true })
    t.after(() => client.destroy())
    client.end('from the production tree')
    const chunks: Buffer[] = []
    client.on('data', (chunk: Buffer) => chunks.push(chunk))
    await once(client, 'end')
    assert.equal(Buffer.concat(chunks).toString(), 'from the production tree')
    relay.child.kill('SIGTERM')
    assert.equal(await relay.exit, 0)
    assert.equal((await relay.stdout.waitFor({ event: 'close', route: 'prod' })).reason, 'client-closed')
  })
})
