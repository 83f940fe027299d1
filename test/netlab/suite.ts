// Glue between node:test and the lab: a lab per test torn down in t.after(), the final
// nothing-left-behind check, and printing a scenario's figure.
import assert from 'node:assert/strict'
import { it } from 'node:test'
import type { TestContext } from 'node:test'
import { Lab, leftovers } from './lab.js'
import type { LabOptions } from './lab.js'

/** A fresh lab whose teardown is registered on `t` first, so it runs even when the test fails or times out. */
export async function newLab (t: TestContext, options: LabOptions = {}): Promise<Lab> {
  const lab = await Lab.create(options)
  t.after(async () => { await lab.destroy() })
  return lab
}

/** The last test of a lab suite: no namespace, veth or spawned process of this run remains. */
export function itLeavesNothingBehind (): void {
  it('leaves no namespace, veth, process or temporary directory behind', async () => {
    assert.deepEqual(await leftovers(), { namespaces: [], links: [], processes: [], tempDirs: [] })
  })
}

/** Print a scenario's one-line result (the figure the issue asks for). */
export function figure (line: string): void {
  console.log(line)
}

/** Seconds with one decimal, for figures. */
export function sec (ms: number): string {
  return `${(ms / 1000).toFixed(2)} s`
}
