import assert from 'node:assert/strict'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, it, type TestContext } from 'node:test'
import type { StatusSnapshot } from '../src/admin/status-format.js'
import { adminAddress } from './helpers/admin.js'
import { closedPort, connect, startEchoServer } from './helpers/peers.js'
import { spawnCli, startProxy, type CliRun } from './helpers/proxy.js'

const TOKEN = 'status-test-token'

/** Run `kaproxy status ...` to its exit; resolves with the exit code and both outputs. */
async function status (args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number | null, stdout: string, stderr: string }> {
  const run = spawnCli(['status', ...args], env)
  let stdout = ''
  run.child.stdout?.on('data', (chunk: Buffer) => { stdout += chunk.toString() })
  const code = await run.exit
  return { code, stdout, stderr: run.stderr() }
}

/** The data row of a table whose first column is `first`, split on runs of 2+ spaces. */
function rowOf (text: string, first: RegExp): string[] {
  const line = text.split('\n').find((l) => first.test(l))
  assert.ok(line !== undefined, `a row matching ${String(first)} in:\n${text}`)
  return line.trim().split(/ {2,}/)
}

async function liveProxy (t: TestContext, admin: Record<string, unknown>) {
  const echo = await startEchoServer()
  t.after(echo.close)
  const proxy = await startProxy({
    admin,
    routes: [{ name: 'web', listen: '127.0.0.1:0', upstream: echo.address, keepalive: { client: { idle: '30s', interval: '5s', count: 4 }, upstream: { idle: '2m', interval: '15s', count: 8, userTimeout: '50s' } } }]
  })
  t.after(proxy.close)
  const client = await connect(proxy.port('web'))
  t.after(() => client.destroy())
  client.write('hello status')
  await new Promise<void>((resolve) => { client.once('data', () => { resolve() }) })
  // Listed once opened (the fast engine's worker reports a connection it accepted a moment later).
  await proxy.log.waitFor({ event: 'open', route: 'web' })
  return { proxy, client, upstream: echo.address }
}

describe('kaproxy status', () => {
  it('prints routes and live connections as aligned tables, with each side read back from the kernel', async (t) => {
    const { proxy, client, upstream } = await liveProxy(t, { listen: '127.0.0.1:0' })
    const admin = adminAddress(proxy)
    const { code, stdout, stderr } = await status(['--admin', admin])
    assert.equal(stderr, '')
    assert.equal(code, 0)
    assert.match(stdout, new RegExp(`^kaproxy admin http://${admin.replace(/\./g, '\\.')} {2}ready {2}up `))
    // Routes: configured keepalive per side, counts, bytes.
    assert.deepEqual(rowOf(stdout, /^web /), ['web', `127.0.0.1:${proxy.port('web')}`, upstream, '30s/5s/4', '2m/15s/8 ut 50s', '1', '1', '12 B', '12 B'])
    // Connections: one row, peers, bytes, each side's keepalive as getsockopt reads it,
    // probes and time since the last data from TCP_INFO.
    const row = rowOf(stdout, /^\s*\d+ {2}web /)
    assert.equal(row[2], `127.0.0.1:${String(client.localPort)}`)
    assert.deepEqual(row.slice(5, 7), ['12 B', '12 B'])
    assert.equal(row[7], '30s/5s/4')
    assert.equal(row[8], '0', 'no client-side probe sent')
    assert.match(row[9] ?? '', /^\d+ms$|^\d+\.\ds$/)
    assert.equal(row[10], '2m/15s/8 ut 50s')
    assert.equal(row[11], '0')
    // Headers and rows line up: every column starts at the same offset.
    const lines = stdout.split('\n')
    const header = lines.find((l) => l.startsWith('ID '))
    const data = lines.find((l) => /^\s*\d+ {2}web /.test(l))
    assert.ok(header !== undefined && data !== undefined)
    assert.equal(data.indexOf('127.0.0.1'), header.indexOf('CLIENT '), 'CLIENT column aligned')
  })

  it('--json prints the raw snapshot; --route and --limit narrow it', async (t) => {
    const { proxy } = await liveProxy(t, { listen: '127.0.0.1:0' })
    const { code, stdout } = await status(['--admin', adminAddress(proxy), '--json', '--route', 'web', '--limit', '5'])
    assert.equal(code, 0)
    const snapshot = JSON.parse(stdout) as StatusSnapshot
    assert.equal(snapshot.routes.routes[0]?.name, 'web')
    assert.equal(snapshot.stats.ready, true)
    assert.equal(snapshot.connections.total, 1)
    assert.equal(snapshot.connections.limit, 5)
    assert.deepEqual(snapshot.connections.connections[0]?.sides.client.keepalive, { enabled: true, idleSec: 30, intervalSec: 5, count: 4, userTimeoutMs: 0 })
    assert.equal(snapshot.connections.connections[0]?.sides.upstream.tcpInfo?.state, 'ESTABLISHED')

    const unknown = await status(['--admin', adminAddress(proxy), '--route', 'nope'])
    assert.equal(unknown.code, 1)
    assert.match(unknown.stderr, /answered 404: no route named "nope"/)
  })

  it('--watch prints a fresh table every interval until SIGINT, then exits 0', async (t) => {
    const { proxy } = await liveProxy(t, { listen: '127.0.0.1:0' })
    const run: CliRun = spawnCli(['status', '--admin', adminAddress(proxy), '--watch', '--interval', '200ms'])
    t.after(run.kill)
    let stdout = ''
    const twice = new Promise<void>((resolve) => {
      run.child.stdout?.on('data', (chunk: Buffer) => {
        stdout += chunk.toString()
        if ((stdout.match(/^kaproxy admin /gm) ?? []).length >= 2) resolve()
      })
    })
    await twice
    run.child.kill('SIGINT')
    assert.equal(await run.exit, 0)
    assert.equal(run.stderr(), '')
  })

  it('finds the address and token in the config file, and needs the token when one is set', async (t) => {
    const { proxy } = await liveProxy(t, { listen: '127.0.0.1:0', token: TOKEN })
    const admin = adminAddress(proxy)
    const refused = await status(['--admin', admin])
    assert.equal(refused.code, 1)
    assert.match(refused.stderr, /^kaproxy: admin API http:\/\/127\.0\.0\.1:\d+\/routes answered 401: a bearer token is required .*; set KAPROXY_ADMIN_TOKEN\n$/)

    const withEnv = await status(['--admin', admin], { KAPROXY_ADMIN_TOKEN: TOKEN })
    assert.equal(withEnv.code, 0)
    assert.match(withEnv.stdout, /^web /m)

    const dir = mkdtempSync(join(tmpdir(), 'kaproxy-status-'))
    t.after(() => { rmSync(dir, { recursive: true, force: true }) })
    const file = join(dir, 'kaproxy.yaml')
    writeFileSync(file, `admin: { listen: "${admin}", token: "${TOKEN}" }\nroutes:\n  - { name: web, listen: "127.0.0.1:0", upstream: "127.0.0.1:1" }\n`)
    // spawnCli turns the admin API off through the environment, which outranks the file: undo that here.
    const fromFile = await status(['--config', file], { KAPROXY_ADMIN_LISTEN: undefined })
    assert.equal(fromFile.code, 0)
    assert.match(fromFile.stdout, /^web /m)
  })

  it('says clearly when the admin API cannot be reached', async () => {
    const port = await closedPort()
    const { code, stdout, stderr } = await status(['--admin', `127.0.0.1:${port}`])
    assert.equal(code, 1)
    assert.equal(stdout, '')
    assert.equal(stderr, `kaproxy: cannot reach the admin API at http://127.0.0.1:${port}: connection refused (ECONNREFUSED); is kaproxy running with admin.listen on this address? (choose another with --admin HOST:PORT)\n`)
    const bad = await status(['--admin', 'nowhere'])
    assert.equal(bad.code, 1)
    assert.match(bad.stderr, /--admin: must be host:port/)
  })
})
