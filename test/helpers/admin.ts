import type { TestContext } from 'node:test'
import { Client } from 'undici'
import type { RunningProxy } from './proxy.js'

export interface AdminResponse {
  status: number
  headers: Record<string, string | string[] | undefined>
  text: string
  json: <T = unknown>() => T
}

/** GET a path of the admin API with undici; one client per test, closed in t.after. */
export type AdminGet = (path: string, headers?: Record<string, string>) => Promise<AdminResponse>

/** The bound `host:port` of a running proxy's admin API. */
export function adminAddress (proxy: RunningProxy): string {
  const address = proxy.kaproxy.admin?.address ?? null
  if (address === null) throw new Error('the admin API is not listening')
  return address
}

export function adminClient (t: TestContext, address: string): AdminGet {
  const client = new Client(`http://${address}`)
  t.after(async () => { await client.close() })
  return async (path, headers = {}) => {
    const response = await client.request({ path, method: 'GET', headers })
    const text = await response.body.text()
    return { status: response.statusCode, headers: response.headers, text, json: <T>() => JSON.parse(text) as T }
  }
}
