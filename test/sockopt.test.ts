import assert from 'node:assert/strict'
import net from 'node:net'
import { describe, it } from 'node:test'
import { NoDescriptorError, SockoptError, KaproxyError } from '../src/errors.js'
import { applyKeepalive, detectionSeconds, keepaliveProblems, readKeepalive, socketFd } from '../src/keepalive.js'
import { getsockoptInt, setsockoptInt, socketAddress, sockoptConstants } from '../src/sockopt/libc.js'
import { encodeSockaddr, sockaddrText } from '../src/sockopt/original-dst.js'
import { connect, startEchoServer } from './helpers/peers.js'

describe('the koffi sockopt layer', () => {
  it('fails with a typed error carrying the errno name, the option and the value', async (t) => {
    const server = await startEchoServer()
    t.after(server.close)
    const socket = await connect(server.port)
    t.after(() => socket.destroy())
    const c = sockoptConstants()
    assert.throws(() => { setsockoptInt(socketFd(socket), c.IPPROTO_TCP, c.TCP_KEEPIDLE ?? -1, 0, 'TCP_KEEPIDLE') }, (err: unknown) => {
      assert.ok(err instanceof SockoptError)
      assert.equal(err.code, 'KAPROXY_ERR_SOCKOPT')
      assert.equal(err.errno, 'EINVAL')
      assert.equal(err.option, 'TCP_KEEPIDLE')
      assert.equal(err.value, 0)
      assert.match(err.message, /setsockopt\(TCP_KEEPIDLE = 0\) failed: EINVAL/)
      return true
    })
    assert.throws(() => getsockoptInt(987654, c.SOL_SOCKET, c.SO_KEEPALIVE, 'SO_KEEPALIVE'), (err: unknown) => err instanceof SockoptError && err.errno === 'EBADF')
  })

  it('refuses a socket without a descriptor with a clear error', () => {
    const socket = new net.Socket()
    assert.throws(() => readKeepalive(socket), (err: unknown) => err instanceof NoDescriptorError && err.code === 'KAPROXY_ERR_NO_FD')
  })

  it('validates against the kernel limits before any system call', async (t) => {
    const server = await startEchoServer()
    t.after(server.close)
    const socket = await connect(server.port)
    t.after(() => socket.destroy())
    assert.deepEqual(keepaliveProblems({ enabled: true, idleSec: 32768, intervalSec: 0, count: 128, userTimeoutMs: -1 }).map((p) => p.field),
      ['idleSec', 'intervalSec', 'count', 'userTimeoutMs'])
    assert.deepEqual(keepaliveProblems({ enabled: true, idleSec: 32767, intervalSec: 1, count: 127, userTimeoutMs: 2147483647 }), [])
    assert.throws(() => { applyKeepalive(socket, { enabled: true, idleSec: 1.5, intervalSec: 1, count: 1 }) },
      (err: unknown) => err instanceof KaproxyError && err.code === 'KAPROXY_ERR_INVALID_ARG' && /idleSec/.test(err.message))
    // The kernel's extremes are accepted and read back.
    applyKeepalive(socket, { enabled: true, idleSec: 32767, intervalSec: 32767, count: 127, userTimeoutMs: 2147483647 })
    assert.deepEqual(readKeepalive(socket), { enabled: true, idleSec: 32767, intervalSec: 32767, count: 127, userTimeoutMs: 2147483647 })
  })

  it("Node's setKeepAlive() overwrites interval and count, which is why kaproxy never calls it", async (t) => {
    const server = await startEchoServer()
    t.after(server.close)
    const socket = await connect(server.port)
    t.after(() => socket.destroy())
    applyKeepalive(socket, { enabled: true, idleSec: 30, intervalSec: 7, count: 3 })
    socket.setKeepAlive(true, 30_000)
    const after = readKeepalive(socket)
    assert.equal(after.intervalSec, 1)
    assert.equal(after.count, 10)
  })

  it('computes the worst-case dead-peer detection time, with the kernel rule for TCP_USER_TIMEOUT', () => {
    assert.equal(detectionSeconds({ enabled: true, idleSec: 30, intervalSec: 5, count: 4 }), 50)
    assert.equal(detectionSeconds({ enabled: false, idleSec: 30, intervalSec: 5, count: 4 }), null)
    // With a user timeout the count is ignored: the first probe timer at or after 42 s is 30 + 3 x 5.
    assert.equal(detectionSeconds({ enabled: true, idleSec: 30, intervalSec: 5, count: 4, userTimeoutMs: 42_000 }), 45)
    // At least one probe must have gone unanswered.
    assert.equal(detectionSeconds({ enabled: true, idleSec: 30, intervalSec: 5, count: 4, userTimeoutMs: 1000 }), 35)
  })

  it('reads the kernel\'s socket addresses as Node writes them, IPv4 and IPv6', async (t) => {
    for (const host of ['127.0.0.1', '::1']) {
      const server = await startEchoServer(host)
      t.after(server.close)
      const socket = await connect(server.port, host)
      t.after(() => socket.destroy())
      const fd = socketFd(socket)
      const bracketed = (address: string | undefined): string => host.includes(':') ? `[${address ?? ''}]` : address ?? ''
      assert.equal(sockaddrText(socketAddress(fd, 'local')), `${bracketed(socket.localAddress)}:${socket.localPort ?? 0}`)
      assert.equal(sockaddrText(socketAddress(fd, 'peer')), `${bracketed(host)}:${server.port}`)
    }
    for (const [address, text] of [['10.1.2.3', '10.1.2.3:443'], ['2001:db8::1', '[2001:db8::1]:443'], ['::ffff:10.0.0.1', '[::ffff:10.0.0.1]:443']]) {
      assert.equal(sockaddrText(encodeSockaddr(address ?? '', 443)), text)
    }
  })
})
