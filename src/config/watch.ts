import { createHash } from 'node:crypto'
import { type FSWatcher, readFileSync, realpathSync, watch } from 'node:fs'
import { dirname, resolve } from 'node:path'

export interface ConfigWatchOptions {
  /** Milliseconds of quiet after the last file-system event before the file is read; default 200. */
  debounceMs?: number
  /** A directory could not be watched (or its watch failed); the other watches go on. */
  onError?: (err: Error) => void
}

/** A running watch; `close()` stops it. Idempotent. */
export interface ConfigWatch {
  close: () => void
}

/**
 * Call `onChange` whenever the bytes of `file` change, however they are changed: written in place,
 * replaced by a rename (editors, `mv`, config-management tools), or swapped behind a symlink
 * (a Kubernetes ConfigMap volume atomically renames its `..data` symlink to a new directory).
 *
 * A watch on the file itself would follow its inode, which a rename or a symlink swap leaves
 * behind; so the directories holding the path and its resolved target are watched instead, and
 * re-resolved after each change. Events are debounced and then the content is hashed: `onChange`
 * runs only when it differs from the last content seen (an unreadable file counts as content, so
 * a file that comes back triggers a reload).
 */
export function watchConfigFile (file: string, onChange: () => void, options: ConfigWatchOptions = {}): ConfigWatch {
  const path = resolve(file)
  const debounceMs = options.debounceMs ?? 200
  const watchers = new Map<string, FSWatcher>()
  let timer: NodeJS.Timeout | null = null
  let closed = false
  let seen = fingerprint(path)

  const report = (err: unknown): void => { options.onError?.(err instanceof Error ? err : new Error(String(err))) }

  const schedule = (): void => {
    if (closed) return
    if (timer !== null) clearTimeout(timer)
    timer = setTimeout(check, debounceMs)
  }

  const rewatch = (): void => {
    const wanted = new Set([dirname(path)])
    try { wanted.add(dirname(realpathSync(path))) } catch { /* missing for now: its directory is watched */ }
    for (const [dir, watcher] of watchers) {
      if (!wanted.has(dir)) { watcher.close(); watchers.delete(dir) }
    }
    for (const dir of wanted) {
      if (watchers.has(dir)) continue
      try {
        const watcher = watch(dir, schedule)
        // E.g. the directory was removed (an old ConfigMap generation): drop it, the next change re-resolves.
        watcher.on('error', (err) => { watcher.close(); watchers.delete(dir); report(err) })
        watchers.set(dir, watcher)
      } catch (err) {
        report(err)
      }
    }
  }

  function check (): void {
    timer = null
    if (closed) return
    rewatch()
    const now = fingerprint(path)
    if (now === seen) return
    seen = now
    onChange()
  }

  rewatch()
  return {
    close: () => {
      closed = true
      if (timer !== null) clearTimeout(timer)
      for (const watcher of watchers.values()) watcher.close()
      watchers.clear()
    }
  }
}

function fingerprint (path: string): string {
  try {
    return createHash('sha256').update(readFileSync(path)).digest('hex')
  } catch (err) {
    return `unreadable: ${(err as NodeJS.ErrnoException).code ?? String(err)}`
  }
}
