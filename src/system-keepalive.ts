import { readFileSync } from 'node:fs'

/** The kernel's system-wide keepalive defaults (Linux /proc/sys), used by sockets kaproxy does not tune. */
export interface SystemKeepalive {
  timeSec: number | null
  intervalSec: number | null
  probes: number | null
}

function readNumber (path: string): number | null {
  try {
    const value = Number(readFileSync(path, 'utf8').trim())
    return Number.isFinite(value) ? value : null
  } catch {
    return null
  }
}

/** Read net.ipv4.tcp_keepalive_{time,intvl,probes}; nulls where unavailable (not Linux, no /proc). */
export function readSystemKeepalive (): SystemKeepalive {
  return {
    timeSec: readNumber('/proc/sys/net/ipv4/tcp_keepalive_time'),
    intervalSec: readNumber('/proc/sys/net/ipv4/tcp_keepalive_intvl'),
    probes: readNumber('/proc/sys/net/ipv4/tcp_keepalive_probes')
  }
}
