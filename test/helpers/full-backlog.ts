import koffi from 'koffi'
import net from 'node:net'
import { once } from 'node:events'

// A listener that never accepts, with a backlog of 0: once one connection waits in its accept
// queue the kernel drops further SYNs, so connecting hangs. This is how a real overloaded or
// wedged server looks to kaproxy's dialer, and it stays on loopback.
const libc = koffi.load('libc.so.6')
const socketCall = libc.func('int socket(int domain, int type, int protocol)') as (d: number, t: number, p: number) => number
const bindCall = libc.func('int bind(int fd, const void *addr, uint32_t len)') as (fd: number, addr: Buffer, len: number) => number
const listenCall = libc.func('int listen(int fd, int backlog)') as (fd: number, backlog: number) => number
const getsocknameCall = libc.func('int getsockname(int fd, _Out_ void *addr, _Inout_ uint32_t *len)') as (fd: number, addr: Buffer, len: [number]) => number
const closeCall = libc.func('int close(int fd)') as (fd: number) => number

export interface FullBacklog {
  port: number
  close: () => void
}

export async function fullBacklogListener (): Promise<FullBacklog> {
  const fd = socketCall(2 /* AF_INET */, 1 /* SOCK_STREAM */, 0)
  if (fd < 0) throw new Error(`socket() failed: errno ${koffi.errno()}`)
  const address = Buffer.alloc(16)
  address.writeUInt16LE(2, 0) // sin_family, host order
  address.writeUInt16BE(0, 2) // sin_port 0: any free port
  address.set([127, 0, 0, 1], 4)
  if (bindCall(fd, address, 16) !== 0 || listenCall(fd, 0) !== 0) {
    closeCall(fd)
    throw new Error(`bind/listen failed: errno ${koffi.errno()}`)
  }
  getsocknameCall(fd, address, [16])
  const port = address.readUInt16BE(2)
  // Fill the accept queue.
  const filler = net.connect({ port, host: '127.0.0.1' })
  await once(filler, 'connect')
  return {
    port,
    close: () => { filler.destroy(); closeCall(fd) }
  }
}
