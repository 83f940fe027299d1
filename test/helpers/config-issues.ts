import { buildConfig } from '../../src/config/load.js'
import { ConfigError } from '../../src/errors.js'

/** The issues (`path: message`) a top-level config with no routes and the admin API off is rejected with; [] when valid. */
export function topLevelIssues (raw: Record<string, unknown>, env: NodeJS.ProcessEnv = {}): string[] {
  try {
    buildConfig({ admin: { listen: '' }, routes: [], ...raw }, { env })
  } catch (err) {
    if (err instanceof ConfigError) return err.issues.map((issue) => `${issue.path}: ${issue.message}`)
    throw err
  }
  return []
}
