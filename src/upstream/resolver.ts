import { lookup as dnsLookup, type LookupAddress, type LookupOptions } from 'node:dns'

type LookupCallback = (err: NodeJS.ErrnoException | null, address: string | LookupAddress[], family?: number) => void

interface CacheEntry {
  addresses: LookupAddress[]
  expiresAt: number
}

/** How long a hostname's addresses are reused, in milliseconds. */
export const RESOLVE_TTL_MS = 5000

const cache = new Map<string, CacheEntry>()

/**
 * A `lookup` for net.connect: the OS resolver (getaddrinfo, so /etc/hosts and search domains
 * apply), with answers kept for RESOLVE_TTL_MS so a burst of connections resolves once.
 * Failures are not cached.
 */
export function cachedLookup (hostname: string, options: LookupOptions, callback: LookupCallback): void {
  const family = typeof options.family === 'number' ? options.family : 0
  const key = `${family}/${hostname}`
  const entry = cache.get(key)
  const now = Date.now()
  if (entry !== undefined && entry.expiresAt > now) {
    answer(entry.addresses, options, callback)
    return
  }
  dnsLookup(hostname, { family, all: true, hints: options.hints ?? 0 }, (err, addresses) => {
    if (err !== null) { callback(err, ''); return }
    if (cache.size > 1024) cache.clear()
    cache.set(key, { addresses, expiresAt: Date.now() + RESOLVE_TTL_MS })
    answer(addresses, options, callback)
  })
}

function answer (addresses: LookupAddress[], options: LookupOptions, callback: LookupCallback): void {
  if (options.all === true) { callback(null, addresses); return }
  const first = addresses[0]
  if (first === undefined) { callback(Object.assign(new Error('no addresses'), { code: 'ENOTFOUND' }), ''); return }
  callback(null, first.address, first.family)
}
