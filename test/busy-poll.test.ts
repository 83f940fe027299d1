import assert from 'node:assert/strict'
import { existsSync, mkdirSync, readFileSync, readdirSync, rmdirSync, writeFileSync } from 'node:fs'
import { describe, it, type TestContext } from 'node:test'
import { buildConfig } from '../src/config/load.js'
import { overridesFromFlags, parseConfigFlags } from '../src/config/flags.js'
import { cpuQuota } from '../src/cpu-quota.js'
import { topLevelIssues } from './helpers/config-issues.js'
import { ENGINES } from './helpers/engines.js'
import { connect, echoThrough, startEchoServer } from './helpers/peers.js'
import { spawnCli, startProxy, type CliRun, type RunningProxy } from './helpers/proxy.js'

const FAST = ENGINES[0] === 'fast'

function busyPoll (raw: Record<string, unknown>, env: NodeJS.ProcessEnv = {}, overrides: Record<string, unknown> = {}): { us: number, auto: boolean, cpuQuota: number | null } {
  return buildConfig({ admin: { listen: '' }, routes: [], ...raw }, { env, overrides }).dataPlane.busyPoll
}

/**
 * A cgroup of its own with a CPU quota of half a CPU (v2 `cpu.max`, or v1's cpu controller), for
 * children to move into. The test owns it: after the test, its children are killed and awaited
 * (a cgroup with members cannot be removed), then it is removed.
 */
function quotaCgroup (t: TestContext, children: CliRun[]): string {
  const v2 = existsSync('/sys/fs/cgroup/cgroup.controllers')
  const parent = v2 ? '/sys/fs/cgroup' : '/sys/fs/cgroup/cpu'
  removeAbandoned(parent)
  const dir = `${parent}/kaproxy-test-${process.pid}-${Date.now()}`
  mkdirSync(dir)
  t.after(async () => {
    for (const child of children) await child.kill()
    rmdirSync(dir)
  })
  if (v2) writeFileSync(`${dir}/cpu.max`, '50000 100000')
  else writeFileSync(`${dir}/cpu.cfs_quota_us`, '50000')
  return dir
}

/**
 * A run that was killed (not failed: a failing test cleans up) leaves its cgroup behind: remove
 * those whose test process is gone, with whatever still runs in them (SIGKILL; rmdir once empty).
 */
function removeAbandoned (parent: string): void {
  for (const name of readdirSync(parent)) {
    const owner = /^kaproxy-test-(\d+)-\d+$/.exec(name)?.[1]
    if (owner === undefined || existsSync(`/proc/${owner}`)) continue
    for (const pid of readFileSync(`${parent}/${name}/cgroup.procs`, 'utf8').split('\n').filter(Boolean)) {
      try { process.kill(Number(pid), 'SIGKILL') } catch {}
    }
    // A killed process leaves the cgroup when it is reaped; bounded, then left for the next run.
    for (let attempt = 0; attempt < 50; attempt++) {
      try { rmdirSync(`${parent}/${name}`); break } catch { Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 20) }
    }
  }
}

/** An echo server closed after the test: its address. */
async function echoUpstream (t: TestContext): Promise<string> {
  const echo = await startEchoServer()
  t.after(echo.close)
  return echo.address
}

/** A proxy on `raw` closed after the test. */
async function proxyFor (t: TestContext, raw: Record<string, unknown>): Promise<RunningProxy> {
  const proxy = await startProxy(raw)
  t.after(proxy.close)
  return proxy
}

/** Why this machine cannot make a cgroup with a quota (not Linux, not root, no cpu controller), or false. */
function cgroupUnavailable (): string | false {
  if (process.platform !== 'linux') return 'cgroups are Linux'
  if (process.getuid?.() !== 0) return 'making a cgroup needs root'
  // v2: a child cgroup has the cpu controller only where the root delegates it (not changed here).
  if (existsSync('/sys/fs/cgroup/cgroup.controllers')) return readFileSync('/sys/fs/cgroup/cgroup.subtree_control', 'utf8').includes('cpu') ? false : 'the cpu controller is not delegated to child cgroups'
  return existsSync('/sys/fs/cgroup/cpu/cpu.cfs_quota_us') ? false : 'no cpu controller'
}

describe('busy polling (dataPlane.busyPollUs)', () => {
  it('auto: 100 µs without a CPU quota, 0 under one; a number from the file, KAPROXY_BUSY_POLL_US or --busy-poll-us; a bad value names field, value and rule', () => {
    const quota = cpuQuota()
    assert.deepEqual(busyPoll({}), quota === null ? { us: 100, auto: true, cpuQuota: null } : { us: 0, auto: true, cpuQuota: quota })
    assert.deepEqual(busyPoll({ dataPlane: { busyPollUs: 0 } }), { us: 0, auto: false, cpuQuota: null })
    assert.deepEqual(busyPoll({ dataPlane: { busyPollUs: 200 } }), { us: 200, auto: false, cpuQuota: null })
    assert.equal(busyPoll({}, { KAPROXY_BUSY_POLL_US: '25' }).us, 25)
    const flags = overridesFromFlags(parseConfigFlags(['--busy-poll-us', '10']))
    assert.deepEqual(flags, { 'dataPlane.busyPollUs': '10' })
    assert.equal(busyPoll({}, {}, flags).us, 10)
    for (const bad of [-1, 1001, 2.5, 'fast', true]) {
      assert.deepEqual(topLevelIssues({ dataPlane: { busyPollUs: bad } }), [`dataPlane.busyPollUs: must be auto or an integer 0..1000 (microseconds; 0: never poll) (got ${JSON.stringify(bad)})`])
    }
  })

  it('under a cgroup CPU quota, auto turns polling off and says why at start-up; a number set is kept', { skip: FAST ? cgroupUnavailable() : 'fast needs Linux' }, async (t) => {
    const children: CliRun[] = []
    const cgroup = quotaCgroup(t, children)
    const upstream = await echoUpstream(t)
    // The shell joins the cgroup, then becomes node: kaproxy starts inside the quota.
    const inQuota = ['sh', '-c', `echo $$ > ${cgroup}/cgroup.procs && exec "$0" "$@"`]
    for (const [args, expected] of [[[], { busyPollUs: 0, busyPollAuto: true, cpuQuota: 0.5 }], [['--busy-poll-us', '20'], { busyPollUs: 20, busyPollAuto: false, cpuQuota: null }]] as const) {
      const run = spawnCli(['--name', 'quota', '--listen', '127.0.0.1:0', '--upstream', upstream, ...args], { KAPROXY_ENGINE: 'fast' }, undefined, inQuota)
      children.push(run)
      const dataPlane = await run.stdout.waitFor({ event: 'data-plane' })
      assert.deepEqual({ busyPollUs: dataPlane.busyPollUs, busyPollAuto: dataPlane.busyPollAuto, cpuQuota: dataPlane.cpuQuota }, expected)
      if (expected.busyPollAuto) assert.match(String(dataPlane.msg), /busy polling off: auto, under a CPU quota of 0\.5 CPU/)
      const listening = await run.stdout.waitFor({ event: 'listening', route: 'quota' })
      assert.equal(await echoThrough(Number(String(listening.address).split(':').pop()), 'inside the quota'), 'inside the quota')
      run.child.kill('SIGTERM')
      assert.equal(await run.exit, 0)
    }
  })

  it('a reload cannot change it: it says a restart is needed', { skip: FAST ? false : 'fast needs Linux' }, async (t) => {
    const route = { name: 'r', listen: '127.0.0.1:0', upstream: await echoUpstream(t), engine: 'fast' }
    const proxy = await proxyFor(t, { dataPlane: { busyPollUs: 40 }, routes: [route] })
    assert.equal((await proxy.reload({ dataPlane: { busyPollUs: 40 }, routes: [route] })).ok, true)
    assert.equal(proxy.log.find({ event: 'restart-needed' }).length, 0)
    assert.equal((await proxy.reload({ dataPlane: { busyPollUs: 7 }, routes: [route] })).ok, true)
    assert.deepEqual((await proxy.log.waitFor({ event: 'restart-needed' })).settings, ['dataPlane.busyPollUs'])
    assert.equal(await echoThrough(proxy.port('r'), 'unchanged'), 'unchanged')
  })

  it('the data-plane line comes once, with the first route on the fast engine: at start, or from the reload that adds it', { skip: FAST ? false : 'fast needs Linux' }, async (t) => {
    const upstream = await echoUpstream(t)
    const onNet = { name: 'n', listen: '127.0.0.1:0', upstream, engine: 'net' }
    const proxy = await proxyFor(t, { dataPlane: { busyPollUs: 30 }, routes: [onNet] })
    assert.equal(proxy.log.find({ event: 'data-plane' }).length, 0, 'no fast route yet')
    const onFast = { name: 'f', listen: '127.0.0.1:0', upstream, engine: 'fast' }
    assert.equal((await proxy.reload({ dataPlane: { busyPollUs: 30 }, routes: [onNet, onFast] })).ok, true)
    assert.equal((await proxy.log.waitFor({ event: 'data-plane' })).busyPollUs, 30)
    assert.equal(await echoThrough(proxy.port('f'), 'on fast'), 'on fast')
    assert.equal((await proxy.reload({ dataPlane: { busyPollUs: 30 }, routes: [onNet, { ...onFast, name: 'g' }] })).ok, true)
    assert.equal(proxy.log.find({ event: 'data-plane' }).length, 1, 'logged once')
  })

  for (const busyPollUs of [0, 1000]) {
    it(`relays request and reply in order, ${busyPollUs === 0 ? 'sleeping between them (0)' : 'polling between them (1000 µs)'}`, { skip: FAST ? false : 'fast needs Linux' }, async (t) => {
      const proxy = await proxyFor(t, { dataPlane: { busyPollUs }, routes: [{ name: 'r', listen: '127.0.0.1:0', upstream: await echoUpstream(t), engine: 'fast' }] })
      const socket = await connect(proxy.port('r'))
      t.after(() => { socket.destroy() })
      let received = ''
      let waiting: (() => void) | null = null
      socket.setEncoding('utf8').on('data', (text: string) => { received += text; waiting?.() })
      for (let i = 0; i < 200; i++) {
        const message = `request ${i};`
        const before = received.length
        const answered = new Promise<void>((resolve) => { waiting = () => { if (received.length >= before + message.length) resolve() } })
        socket.write(message)
        await answered
        assert.equal(received.slice(before), message)
      }
    })
  }
})
