import { after, before, describe } from 'node:test'
import type { EngineName } from '../../src/config/types.js'

/** The engines this platform can run: the relay tests run once on each. */
export const ENGINES: readonly EngineName[] = process.platform === 'linux' ? ['fast', 'net'] : ['net']

let current: EngineName | null = null

/** The engine the running suite relays through; null outside `describeEachEngine` (the config's own default). */
export function testEngine (): EngineName | null {
  return current
}

/**
 * The test matrix: `body` is registered once per engine, as `name [fast]` and `name [net]`. While
 * a suite runs, every kaproxy the test helpers start (in this process, through the CLI, or in a
 * network namespace) uses its engine, unless the test's config names one itself.
 */
export function describeEachEngine (name: string, options: { skip?: string | boolean }, body: (engine: EngineName) => void): void
export function describeEachEngine (name: string, body: (engine: EngineName) => void): void
export function describeEachEngine (name: string, ...args: [{ skip?: string | boolean }, (engine: EngineName) => void] | [(engine: EngineName) => void]): void {
  const [options, body] = args.length === 2 ? args : [{}, args[0]]
  for (const engine of ENGINES) {
    describe(`${name} [${engine}]`, options, () => {
      before(() => { current = engine })
      after(() => { current = null })
      body(engine)
    })
  }
}

/** `raw` (a config as a file holds it) with `defaults.engine` set to the running suite's engine, when it sets none. */
export function withTestEngine (raw: Record<string, unknown>): Record<string, unknown> {
  if (current === null) return raw
  const defaults = (typeof raw.defaults === 'object' && raw.defaults !== null ? raw.defaults : {}) as Record<string, unknown>
  return { ...raw, defaults: { engine: current, ...defaults } }
}
