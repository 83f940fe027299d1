import { readFileSync } from 'node:fs'

let cached: string | undefined

/**
 * kaproxy's version from its package.json: next to dist/ when installed, or two levels up when
 * the sources are compiled into build/src/ for the tests. "unknown" if neither is readable.
 */
export function kaproxyVersion (): string {
  if (cached !== undefined) return cached
  cached = 'unknown'
  for (const relative of ['../package.json', '../../package.json']) {
    try {
      const pkg = JSON.parse(readFileSync(new URL(relative, import.meta.url), 'utf8')) as { name?: unknown, version?: unknown }
      if (pkg.name === 'kaproxy' && typeof pkg.version === 'string') { cached = pkg.version; break }
    } catch {}
  }
  return cached
}
