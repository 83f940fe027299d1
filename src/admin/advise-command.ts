import { parseArgs } from 'node:util'
import type { Advice } from '../budget/advice.js'
import type { Side } from '../config/types.js'
import { ConfigError } from '../errors.js'
import { AdminClient } from './client.js'
import { adminOrigin, explainAdminError } from './status-command.js'
import type { RouteView } from './views.js'

export const ADVISE_USAGE = `kaproxy advise [--admin HOST:PORT|URL] [--token TOKEN] [--json]
  What the resets seen so far say about the middleboxes on each route and side, read from the
  admin API's /routes: where the silences before resets cluster and which keepalive idle beats
  it. Routes and sides without such resets are not mentioned. The address comes from --admin,
  else KAPROXY_ADMIN_LISTEN, else 127.0.0.1:9901; the token from --token, else KAPROXY_ADMIN_TOKEN.`

const OPTIONS = {
  admin: { type: 'string' },
  token: { type: 'string' },
  json: { type: 'boolean' }
} as const

/** Where `advise` writes. */
export interface AdviseIo {
  stdout: { write: (text: string) => unknown }
  env: NodeJS.ProcessEnv
}

/** `advise --json`: the advice of every route and side with evidence, in route order, client first. */
export interface AdviseReport {
  admin: string
  /** Routes looked at. */
  routes: number
  advice: Array<Advice & { resets: number }>
}

/** One line per route and side with evidence: `route NAME: SENTENCE`. */
export function formatAdvice (report: AdviseReport): string {
  if (report.advice.length === 0) {
    return `no route has had a reset or keepalive timeout after a silence yet (${report.routes} route${report.routes === 1 ? '' : 's'} at ${report.admin}): nothing to advise`
  }
  return report.advice.map((a) => `route ${a.route}: ${a.sentence}`).join('\n')
}

/** Read /routes from the admin API at `origin` and collect each side's advice. */
export async function adviseReport (client: AdminClient): Promise<AdviseReport> {
  const { routes } = await client.getJson<{ routes: RouteView[] }>('/routes')
  const advice: AdviseReport['advice'] = []
  for (const route of routes) {
    for (const side of ['client', 'upstream'] as const satisfies readonly Side[]) {
      const resets = route.resets?.[side]
      if (resets?.advice != null) advice.push({ ...resets.advice, resets: resets.count })
    }
  }
  return { admin: client.origin, routes: routes.length, advice }
}

/**
 * `kaproxy advise`: print the advice once. Resolves with the exit code (0, with or without advice);
 * throws KaproxyError (unreachable, refused, bad flags), which cli.ts reports.
 */
export async function adviseCommand (args: string[], io: AdviseIo): Promise<number> {
  let values
  try {
    values = parseArgs({ args, options: OPTIONS, allowPositionals: false, strict: true }).values
  } catch (err) {
    throw new ConfigError([{ path: '', message: `${(err as Error).message}\nusage: ${ADVISE_USAGE}` }])
  }
  const origin = adminOrigin(values.admin ?? io.env.KAPROXY_ADMIN_LISTEN ?? '127.0.0.1:9901')
  const client = new AdminClient(origin, { token: values.token ?? io.env.KAPROXY_ADMIN_TOKEN ?? '' })
  try {
    let report: AdviseReport
    try {
      report = await adviseReport(client)
    } catch (err) {
      throw explainAdminError(err)
    }
    io.stdout.write(values.json === true ? `${JSON.stringify(report, null, 2)}\n` : `${formatAdvice(report)}\n`)
    return 0
  } finally {
    await client.destroy()
  }
}
