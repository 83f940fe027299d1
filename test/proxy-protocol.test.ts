import assert from 'node:assert/strict'
import { type ChildProcess, spawn, spawnSync } from 'node:child_process'
import { once } from 'node:events'
import { existsSync, mkdtempSync, readFileSync, rmSync, watch, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, it } from 'node:test'
import { encodeV1, encodeV2, parseProxyHeader, ProxyHeaderError, V2_SIGNATURE } from '../src/relay/proxy-protocol.js'
import { closed, closedPort, connect, startEchoServer } from './helpers/peers.js'
import { startProxy } from './helpers/proxy.js'
import { describeEachEngine } from './helpers/engines.js'

const hex = (text: string): Buffer => Buffer.from(text.replace(/\s+/g, ''), 'hex')

describe('PROXY protocol encoding and parsing', () => {
  it('encodes v1 exactly as the specification examples', () => {
    assert.equal(encodeV1({ source: { address: '192.168.0.1', port: 56324 }, destination: { address: '192.168.0.11', port: 443 } }).toString(), 'PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n')
    assert.equal(encodeV1({ source: { address: '255.255.255.255', port: 65535 }, destination: { address: '255.255.255.255', port: 65535 } }).toString(), 'PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n')
    const f = 'ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff'
    const worst = encodeV1({ source: { address: f, port: 65535 }, destination: { address: f, port: 65535 } })
    assert.equal(worst.toString(), `PROXY TCP6 ${f} ${f} 65535 65535\r\n`)
    assert.equal(worst.length, 104, 'the specification\'s worst-case TCP6 line is 104 bytes')
    assert.equal(encodeV1({ source: null, destination: null }).toString(), 'PROXY UNKNOWN\r\n')
    // An IPv4 client on a dual-stack socket is sent as TCP4.
    assert.equal(encodeV1({ source: { address: '::ffff:10.0.0.1', port: 1 }, destination: { address: '::ffff:10.0.0.2', port: 2 } }).toString(), 'PROXY TCP4 10.0.0.1 10.0.0.2 1 2\r\n')
  })

  it('encodes v2 byte-exact: signature, version/command, family, length, addresses, ports', () => {
    assert.deepEqual(V2_SIGNATURE, hex('0D 0A 0D 0A 00 0D 0A 51 55 49 54 0A'))
    assert.deepEqual(encodeV2({ source: { address: '192.168.0.1', port: 56324 }, destination: { address: '192.168.0.11', port: 443 } }),
      hex('0D0A0D0A000D0A515549540A 21 11 000C C0A80001 C0A8000B DC04 01BB'))
    assert.deepEqual(encodeV2({ source: { address: '2001:db8::1', port: 1 }, destination: { address: '::1', port: 2 } }),
      hex('0D0A0D0A000D0A515549540A 21 21 0024 20010DB8000000000000000000000001 00000000000000000000000000000001 0001 0002'))
    assert.deepEqual(encodeV2({ source: null, destination: null }), hex('0D0A0D0A000D0A515549540A 20 00 0000'), 'LOCAL command when addresses are unknown')
  })

  it('parses what it encodes, byte by byte, keeping the bytes after the header', () => {
    const cases = [
      { source: { address: '10.1.2.3', port: 40000 }, destination: { address: '10.9.9.9', port: 5432 } },
      { source: { address: '2001:db8::7', port: 1234 }, destination: { address: 'fe80::1', port: 80 } }
    ]
    for (const addresses of cases) {
      for (const header of [encodeV1(addresses), encodeV2(addresses)]) {
        const stream = Buffer.concat([header, Buffer.from('payload')])
        for (let cut = 0; cut < header.length; cut++) assert.equal(parseProxyHeader(stream.subarray(0, cut)), null, `needs more bytes at ${cut}`)
        const parsed = parseProxyHeader(stream)
        assert.deepEqual(parsed?.addresses, addresses)
        assert.equal(parsed?.rest.toString(), 'payload')
      }
    }
  })

  it('rejects malformed headers with a typed error', () => {
    const bad = [
      'GET / HTTP/1.1\r\n',
      'PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n',
      'PROXY TCP4 1.2.3.999 5.6.7.8 1 2\r\n',
      'PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n',
      'PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n',
      `PROXY TCP4 ${'1'.repeat(120)}`
    ]
    for (const text of bad) assert.throws(() => parseProxyHeader(Buffer.from(text)), ProxyHeaderError, text)
    assert.throws(() => parseProxyHeader(Buffer.concat([V2_SIGNATURE, hex('31 11 000C')])), /unsupported v2 version 3/)
    assert.throws(() => parseProxyHeader(Buffer.concat([V2_SIGNATURE, hex('21 11 0004 00000000')])), /shorter than 12/)
  })
})

async function request (port: number, host = '127.0.0.1'): Promise<{ body: string, localPort: number }> {
  const client = await connect(port, host, { allowHalfOpen: true })
  const localPort = client.localPort ?? 0
  client.end('GET / HTTP/1.0\r\nHost: test\r\n\r\n')
  const chunks: Buffer[] = []
  client.on('data', (chunk: Buffer) => chunks.push(chunk))
  await once(client, 'end')
  client.destroy()
  const text = Buffer.concat(chunks).toString()
  return { body: text.slice(text.indexOf('\r\n\r\n') + 4), localPort }
}

/**
 * nginx writes its pid file only after it has opened its listening sockets, so the file's
 * appearance is the event that says it listens. Fails with nginx's error log if it exits first,
 * or after 10 s (a loaded CI machine can take far longer than a quiet one).
 */
async function nginxListening (nginx: ChildProcess, dir: string): Promise<void> {
  const pidFile = join(dir, 'nginx.pid')
  const watcher = watch(dir)
  let timer: NodeJS.Timeout | undefined
  let onExit: ((code: number | null) => void) | undefined
  try {
    await new Promise<void>((resolve, reject) => {
      watcher.on('change', () => { if (existsSync(pidFile)) resolve() })
      onExit = (code) => {
        const log = existsSync(join(dir, 'error.log')) ? readFileSync(join(dir, 'error.log'), 'utf8') : ''
        reject(new Error(`nginx exited with ${String(code)} before listening: ${log}`))
      }
      nginx.once('exit', onExit)
      timer = setTimeout(() => { reject(new Error('nginx did not write its pid file within 10 s')) }, 10_000)
      if (existsSync(pidFile)) resolve()
    })
  } finally {
    watcher.close()
    clearTimeout(timer)
    if (onExit !== undefined) nginx.off('exit', onExit)
  }
}

const hasNginx = spawnSync('nginx', ['-v']).status === 0

describeEachEngine('PROXY protocol on live connections', () => {
  it('nginx, a real PROXY protocol server, sees the real client through v1, v2, and a chain of two kaproxy routes', { skip: !hasNginx && process.env.CI !== 'true' ? 'nginx is not installed (apt-get install nginx-light)' : false }, async (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'kaproxy-nginx-'))
    t.after(() => { rmSync(dir, { recursive: true, force: true }) })
    const port = await closedPort()
    writeFileSync(join(dir, 'nginx.conf'), `
daemon off; master_process off; worker_processes 1; pid ${dir}/nginx.pid; error_log ${dir}/error.log;
events { worker_connections 64; }
http {
  access_log off; client_body_temp_path ${dir}; proxy_temp_path ${dir}; fastcgi_temp_path ${dir}; uwsgi_temp_path ${dir}; scgi_temp_path ${dir};
  server { listen 127.0.0.1:${port} proxy_protocol; location / { return 200 "$proxy_protocol_addr $proxy_protocol_port"; } }
}`)
    const nginx = spawn('nginx', ['-p', dir, '-c', join(dir, 'nginx.conf')], { stdio: 'ignore' })
    t.after(() => { nginx.kill('SIGKILL') })
    await nginxListening(nginx, dir)

    const proxy = await startProxy({
      routes: [
        { name: 'v1', listen: '127.0.0.1:0', upstream: `127.0.0.1:${port}`, proxyProtocol: 'v1' },
        { name: 'v2', listen: '[::1]:0', upstream: `127.0.0.1:${port}`, proxyProtocol: 'v2' },
        // A chain: the front sends v2, the back accepts it and passes the original client on as v1.
        { name: 'back', listen: '127.0.0.1:0', upstream: `127.0.0.1:${port}`, acceptProxyProtocol: true, proxyProtocol: 'v1' }
      ]
    })
    t.after(proxy.close)
    const front = await startProxy({ routes: [{ name: 'front', listen: '127.0.0.1:0', upstream: `127.0.0.1:${proxy.port('back')}`, proxyProtocol: 'v2' }] })
    t.after(front.close)

    const v1 = await request(proxy.port('v1'))
    assert.equal(v1.body, `127.0.0.1 ${v1.localPort}`)
    const v2 = await request(proxy.port('v2'), '::1')
    assert.equal(v2.body, `::1 ${v2.localPort}`)
    const chained = await request(front.port('front'))
    assert.equal(chained.body, `127.0.0.1 ${chained.localPort}`, 'nginx sees the client of the first hop')
    const back = await proxy.log.waitFor({ event: 'open', route: 'back' })
    assert.equal(back.client, `127.0.0.1:${chained.localPort}`)
    assert.match(String(back.via), /^127\.0\.0\.1:\d+$/, 'the back route logs the front hop as via')
    console.log(`nginx ${spawnSync('nginx', ['-v']).stderr.toString().trim()}: v1 -> "${v1.body}", v2 over IPv6 -> "${v2.body}", chained v2->v1 -> "${chained.body}"`)
  })

  it('closes malformed or missing headers with a logged reason, and keeps serving', async (t) => {
    const echo = await startEchoServer()
    t.after(echo.close)
    const proxy = await startProxy({ routes: [{ name: 'strict', listen: '127.0.0.1:0', upstream: echo.address, acceptProxyProtocol: true, proxyHeaderTimeout: '300ms' }] })
    t.after(proxy.close)

    const garbage = await connect(proxy.port('strict'))
    garbage.resume()
    garbage.write('GET / HTTP/1.1\r\n\r\n')
    await closed(garbage)
    const bad = await proxy.log.waitFor({ event: 'close', route: 'strict', reason: 'proxy-protocol-error' })
    assert.match(String((bad.err as { message: string }).message), /does not start with a v1 or v2 signature/)

    const silent = await connect(proxy.port('strict'))
    silent.resume()
    await closed(silent)
    await proxy.log.waitFor({ event: 'close', route: 'strict', reason: 'proxy-header-timeout' })

    const flood = await connect(proxy.port('strict'))
    flood.resume()
    flood.write(Buffer.concat([V2_SIGNATURE, hex('21 11 FFFF'), Buffer.alloc(8192)]))
    await closed(flood)
    assert.equal(proxy.log.find({ event: 'close', route: 'strict', reason: 'proxy-protocol-error' }).length, 2, 'an oversized header is refused')

    // A valid header with the first payload bytes in the same segment: both reach the upstream.
    const good = await connect(proxy.port('strict'), '127.0.0.1', { allowHalfOpen: true })
    good.end(Buffer.concat([encodeV1({ source: { address: '203.0.113.7', port: 4242 }, destination: { address: '198.51.100.1', port: 443 } }), Buffer.from('after header')]))
    const chunks: Buffer[] = []
    good.on('data', (chunk: Buffer) => chunks.push(chunk))
    await once(good, 'end')
    assert.equal(Buffer.concat(chunks).toString(), 'after header')
    const open = await proxy.log.waitFor({ event: 'open', route: 'strict' })
    assert.equal(open.client, '203.0.113.7:4242')
    const close = await proxy.log.waitFor({ event: 'close', route: 'strict', conn: open.conn as number })
    assert.equal(close.bytesFromClient, 'after header'.length, 'the header is not counted as client bytes')
  })
})

