import net from 'node:net'
import { formatHostPort, type HostPort } from './config/formats.js'

/** A running echo server; `close()` stops it and its connections. */
export interface EchoServer {
  address: string
  close: () => Promise<void>
}

/**
 * An echo server to relay to in the quick start: every byte a client sends comes back, and a
 * client's FIN is answered with a FIN once the echo is written.
 */
export async function startEchoServer (address: HostPort): Promise<EchoServer> {
  const sockets = new Set<net.Socket>()
  const server = net.createServer({ allowHalfOpen: true }, (socket) => {
    sockets.add(socket)
    socket.on('close', () => sockets.delete(socket))
    socket.on('error', () => { socket.destroy() })
    socket.pipe(socket)
  })
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(address.port, address.host, () => { server.off('error', reject); resolve() })
  })
  const bound = server.address()
  return {
    address: bound !== null && typeof bound === 'object' ? formatHostPort({ host: bound.address, port: bound.port }) : formatHostPort(address),
    close: async () => {
      const closed = new Promise((resolve) => server.close(resolve))
      for (const socket of sockets) socket.destroy()
      await closed
    }
  }
}

export function demoBanner (echoAddress: string): string {
  return [
    `kaproxy demo: echo server listening on ${echoAddress}`,
    'The default config (npm start) relays 127.0.0.1:7000 to 127.0.0.1:7001. In another terminal:',
    "  printf 'hello through kaproxy\\n' | nc -q1 127.0.0.1 7000",
    'Press Ctrl-C to stop.'
  ].join('\n')
}
