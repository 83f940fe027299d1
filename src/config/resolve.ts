import { ConfigError } from '../errors.js'
import { type ConfigFlags, hasRouteFlags, overridesFromFlags, routeFromFlags } from './flags.js'
import { buildConfig, loadConfigFile } from './load.js'
import type { KaproxyConfig } from './types.js'

// In one-route mode issues are reported by the flag the user typed, not by routes[0].
const FLAG_PATHS: ReadonlyArray<[RegExp, string]> = [
  [/^routes\[0\]\.keepalive\.client\.middleboxes/, '--client-middleboxes '],
  [/^routes\[0\]\.keepalive\.upstream\.middleboxes/, '--upstream-middleboxes '],
  [/^routes\[0\]\.keepalive\.client\.?/, '--client-keepalive '],
  [/^routes\[0\]\.keepalive\.upstream\.?/, '--upstream-keepalive '],
  [/^routes\[0\]\.connectTimeout/, '--connect-timeout'],
  [/^routes\[0\]\./, '--']
]

function flagPath (path: string): string {
  for (const [pattern, flag] of FLAG_PATHS) if (pattern.test(path)) return path.replace(pattern, flag).trim()
  return path
}

/** Where the config comes from: `--config`, else KAPROXY_CONFIG, else one-route flags. */
export function configSource (flags: ConfigFlags, env: NodeJS.ProcessEnv): string | null {
  return flags.config ?? (hasRouteFlags(flags) ? null : env.KAPROXY_CONFIG ?? null)
}

/** Build the effective config from the command line and environment. Throws ConfigError. */
export function resolveConfig (flags: ConfigFlags, env: NodeJS.ProcessEnv = process.env): KaproxyConfig {
  const overrides = overridesFromFlags(flags)
  const file = configSource(flags, env)
  if (file !== null) {
    if (hasRouteFlags(flags)) throw new ConfigError([{ path: '--config', message: 'use either --config FILE or --listen/--upstream, not both' }])
    return loadConfigFile(file, { env, overrides })
  }
  if (!hasRouteFlags(flags)) {
    throw new ConfigError([{ path: '--config', message: 'no routes: give --config FILE (or KAPROXY_CONFIG), or --listen HOST:PORT --upstream HOST:PORT' }])
  }
  try {
    return buildConfig(routeFromFlags(flags), { env, overrides })
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err
    throw new ConfigError(err.issues.map((issue) => ({ path: flagPath(issue.path), message: issue.message })), 'command-line flags')
  }
}
