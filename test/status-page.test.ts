import assert from 'node:assert/strict'
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs'
import type net from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { chromium, type Browser, type Page } from 'playwright-core'
import { adminAddress } from './helpers/admin.js'
import { closedPort, connect, startEchoServer } from './helpers/peers.js'
import { startProxy } from './helpers/proxy.js'

// Debian's chromium, driven by playwright-core (which downloads nothing). Outside CI a missing
// browser skips this file with the reason; with CI=true it fails instead.
const CHROMIUM = '/usr/bin/chromium'
const missing = existsSync(CHROMIUM) ? undefined : `${CHROMIUM} is missing (apt-get install -y chromium)`
const skip = missing !== undefined && process.env.CI !== 'true' ? `skipped: ${missing}` : false
// KAPROXY_SCREENSHOT=docs/status-page.png saves the picture for the docs; otherwise a temp file.
const SCREENSHOT = process.env.KAPROXY_SCREENSHOT

/** One page whose console errors (a CSP violation is one) and off-origin requests are collected. */
async function openPage (browser: Browser, origin: string): Promise<{ page: Page, problems: string[] }> {
  const page = await browser.newPage({ viewport: { width: 1280, height: 600 } })
  const problems: string[] = []
  page.on('console', (message) => { if (message.type() === 'error') problems.push(`console: ${message.text()}`) })
  page.on('pageerror', (err) => { problems.push(`page error: ${err.message}`) })
  page.on('request', (request) => { if (!request.url().startsWith(origin) && !request.url().startsWith('data:')) problems.push(`request outside the admin API: ${request.url()}`) })
  return { page, problems }
}

async function cells (page: Page, selector: string): Promise<string[]> {
  return await page.locator(`${selector} td`).allTextContents()
}

/** Write and wait for the echo, so every side has carried data. */
async function exchange (socket: net.Socket, text: string): Promise<void> {
  const echoed = new Promise<void>((resolve) => { socket.once('data', () => { resolve() }) })
  socket.write(text)
  await echoed
}

describe('status page in Chromium', { skip }, () => {
  let browser: Browser

  before(async () => {
    if (missing !== undefined) throw new Error(`CI=true: the status page must be tested, but ${missing}`)
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run']
    })
  })
  after(async () => { await browser?.close() })

  it('shows the routes and a live connection with both sides read back from the kernel, refreshing by itself', async (t) => {
    const echo = await startEchoServer()
    t.after(echo.close)
    const proxy = await startProxy({
      admin: { listen: '127.0.0.1:0' },
      routes: [
        { name: 'front', listen: '127.0.0.1:0', upstream: echo.address, keepalive: { client: { idle: '30s', interval: '5s', count: 4 }, upstream: { idle: '2m', interval: '15s', count: 8, userTimeout: '50s' } } },
        { name: 'sidecar', listen: '127.0.0.1:0', upstream: echo.address, keepalive: { client: { enabled: false }, upstream: { idle: '45s', interval: '9s', count: 5 } } },
        { name: 'legacy', listen: '127.0.0.1:0', upstream: `127.0.0.1:${await closedPort()}` }
      ]
    })
    t.after(proxy.close)
    const clients: net.Socket[] = []
    t.after(() => { for (const c of clients) c.destroy() })
    // Some history for the closes table: an exchange closed by its client, a refused dial.
    const done = await connect(proxy.port('front'))
    await exchange(done, 'bye')
    done.end()
    const refused = await connect(proxy.port('legacy'))
    refused.resume()
    refused.on('error', () => {})
    await proxy.log.waitForCount({ event: 'close' }, 2)
    for (const [route, text] of [['front', 'GET / HTTP/1.0\r\n\r\n'], ['front', 'x'.repeat(40_000)], ['sidecar', 'ping']] as const) {
      const client = await connect(proxy.port(route))
      clients.push(client)
      await exchange(client, text)
    }
    // Listed once opened: bytes can pass through a connection the fast engine's worker accepted
    // a moment before the main thread has read its report.
    await proxy.log.waitForCount({ event: 'open', route: 'front' }, 3)
    await proxy.log.waitForCount({ event: 'open', route: 'sidecar' }, 1)
    const first = [...proxy.kaproxy.engine.connections('front')].sort((a, b) => a.id - b.id)[0]
    assert.ok(first !== undefined)

    const origin = `http://${adminAddress(proxy)}`
    const { page, problems } = await openPage(browser, origin)
    t.after(async () => { await page.close() })
    await page.goto(`${origin}/`)
    const row = `#connections tbody tr[data-id="${first.id}"]`
    await page.waitForSelector(row)

    assert.equal(await page.textContent('#ready'), 'ready')
    const connection = await cells(page, row)
    assert.deepEqual(connection.slice(0, 4), [String(first.id), 'front', first.client, first.upstream])
    // Client side: keepalive as getsockopt reads it, TCP state, RTT, probes, last receive.
    assert.equal(connection[7], '30s/5s/4')
    assert.equal(connection[8], 'ESTABLISHED')
    assert.match(connection[9] ?? '', /^\d+\.\d\d ms$/)
    assert.equal(connection[10], '0')
    // Upstream side, with its user timeout.
    assert.equal(connection[12], '2m/15s/8 ut 50s')
    assert.equal(connection[13], 'ESTABLISHED')
    assert.equal(await page.locator('#connections tbody tr').count(), 3)
    const route = await cells(page, '#routes tbody tr[data-route="sidecar"]')
    assert.deepEqual(route.slice(0, 6), ['sidecar', `127.0.0.1:${proxy.port('sidecar')}`, echo.address, 'off', '45s / 9s / 5', '1'])

    const file = SCREENSHOT ?? join(mkdtempSync(join(tmpdir(), 'kaproxy-page-')), 'status-page.png')
    if (SCREENSHOT === undefined) t.after(() => { rmSync(join(file, '..'), { recursive: true, force: true }) })
    await page.screenshot({ path: file, fullPage: true })
    assert.deepEqual([...readFileSync(file).subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a], 'a PNG')

    assert.deepEqual(await cells(page, '#closes tbody tr:has-text("legacy")'), ['legacy', 'upstream-refused', 'upstream', '1'])
    assert.deepEqual(await cells(page, '#closes tbody tr:has-text("front")'), ['front', 'client-closed', 'client', '1'])

    // The page refreshes by itself: a closed connection leaves the table and shows in the closes.
    clients[2]?.end()
    await page.waitForSelector('#closes tbody tr:has-text("sidecar")', { timeout: 10_000 })
    assert.equal(await page.locator('#connections tbody tr').count(), 2)
    assert.deepEqual(problems, [], 'no console error (CSP included) and no request outside the admin API')
  })

  it('asks for the token when the admin API requires one, then loads with it', async (t) => {
    const echo = await startEchoServer()
    t.after(echo.close)
    const token = 'page-test-token'
    const proxy = await startProxy({ admin: { listen: '127.0.0.1:0', token }, routes: [{ name: 'locked', listen: '127.0.0.1:0', upstream: echo.address }] })
    t.after(proxy.close)
    const origin = `http://${adminAddress(proxy)}`
    const { page, problems } = await openPage(browser, origin)
    t.after(async () => { await page.close() })
    await page.goto(`${origin}/`)
    await page.waitForSelector('#auth:not([hidden])')
    assert.match(await page.textContent('#error') ?? '', /needs a bearer token/)
    assert.equal(await page.locator('#routes tbody tr').count(), 0, 'nothing shown without the token')
    await page.fill('#token', token)
    await page.click('#auth button')
    await page.waitForSelector('#routes tbody tr[data-route="locked"]')
    assert.equal(await page.isHidden('#auth'), true)
    // The browser logs the 401 answers themselves as console errors; nothing else may appear.
    assert.deepEqual(problems.filter((p) => !/status of 401/.test(p)), [])
  })
})
