import type { Logger } from 'pino'
import { watchConfigFile } from './config/watch.js'
import type { Kaproxy } from './kaproxy.js'

export interface ReloadTriggerOptions {
  /** The config file to watch; null (one-route mode from flags) watches nothing. */
  file: string | null
  /** Watch the file (the config's `reload.watch`); SIGHUP is handled either way. */
  watch: boolean
  log: Logger
  /** Quiet time after a file change before reloading, in milliseconds; default 200. */
  debounceMs?: number
}

/** The installed triggers; `close()` removes the SIGHUP handler and stops watching. Idempotent. */
export interface ReloadTriggers {
  close: () => void
}

/**
 * Reload on SIGHUP and, when asked, when the config file changes. Each trigger calls
 * `kaproxy.reload()`, which validates first, logs one `reload` line and never rejects.
 * (The admin API's `POST /reload` calls `kaproxy.reload({ trigger: 'api' })` itself.)
 */
export function startReloadTriggers (kaproxy: Kaproxy, options: ReloadTriggerOptions): ReloadTriggers {
  const onHangup = (): void => { void kaproxy.reload({ trigger: 'SIGHUP' }) }
  process.on('SIGHUP', onHangup)
  const watch = options.file === null || !options.watch
    ? null
    : watchConfigFile(options.file, () => { void kaproxy.reload({ trigger: 'file' }) }, {
      ...(options.debounceMs === undefined ? {} : { debounceMs: options.debounceMs }),
      onError: (err) => { options.log.warn({ event: 'config-watch-error', err }, `watching ${options.file ?? ''}: ${err.message}`) }
    })
  if (watch !== null) options.log.info({ event: 'config-watch', file: options.file }, `reloading when ${options.file ?? ''} changes`)
  let closed = false
  return {
    close: () => {
      if (closed) return
      closed = true
      process.off('SIGHUP', onHangup)
      watch?.close()
    }
  }
}
