import { isIP } from 'node:net'
import net from 'node:net'
import { KaproxyError, SockoptError } from '../errors.js'
import { closeDescriptor, setsockoptInt, sockoptConstants, tcpSocket } from './libc.js'

function markDescriptor (fd: number, mark: number): void {
  const c = sockoptConstants()
  if (c.SO_MARK === undefined) throw new KaproxyError('KAPROXY_ERR_PLATFORM', `SO_MARK is not available on ${process.platform}`)
  try {
    setsockoptInt(fd, c.SOL_SOCKET, c.SO_MARK, mark, 'SO_MARK')
  } catch (err) {
    if (err instanceof SockoptError && err.errno === 'EPERM') {
      throw new KaproxyError('KAPROXY_ERR_CAPABILITY', `setting SO_MARK 0x${mark.toString(16)} needs the CAP_NET_ADMIN capability (EPERM; recent kernels also accept CAP_NET_RAW): grant it to the process, or exclude kaproxy's traffic by uid instead`, { cause: err })
    }
    throw err
  }
}

/**
 * An unconnected TCP socket whose packets carry `mark` from the first SYN on, so a
 * `-m mark` firewall rule can exclude kaproxy's own upstream connections from capture.
 * The mark must be set before connect, so the descriptor is made here and handed to Node.
 */
export function markedSocket (host: string, mark: number, options: { allowHalfOpen: boolean, onread?: net.OnReadOpts }): net.Socket {
  const family = isIP(host)
  if (family === 0) throw new KaproxyError('KAPROXY_ERR_INVALID_ARG', `socketMark needs an IP address to connect to, got ${host}`)
  const fd = tcpSocket(family === 4 ? 4 : 6)
  try {
    markDescriptor(fd, mark)
  } catch (err) {
    closeDescriptor(fd)
    throw err
  }
  // A socket made from a descriptor starts reading at once (before connect). pauseOnCreate (the
  // option Node's child_process uses for its pipes) keeps it from reading until told: the fast
  // engine must be the only reader of an upstream it splices, and the net relay resumes it itself.
  return new net.Socket({ fd, allowHalfOpen: options.allowHalfOpen, pauseOnCreate: true, onread: options.onread } as net.SocketConstructorOpts)
}

/** Check at start-up that SO_MARK can be set, so a missing capability stops kaproxy with a clear message. */
export function probeSocketMark (mark: number): void {
  const fd = tcpSocket(4)
  try {
    markDescriptor(fd, mark)
  } finally {
    closeDescriptor(fd)
  }
}
