import assert from 'node:assert/strict'
import { existsSync, readFileSync } from 'node:fs'
import { dirname, join, resolve } from 'node:path'
import { it } from 'node:test'
import { fileURLToPath, pathToFileURL } from 'node:url'

// build/test/package.test.js -> the project root.
const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..')

it('package.json points at files the build makes: the bin, and a main that exports the Kaproxy class', async () => {
  const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { main: string, types: string, bin: Record<string, string> }
  for (const file of [pkg.main, pkg.types, ...Object.values(pkg.bin)]) assert.ok(existsSync(join(ROOT, file)), `${file} exists after npm run build`)
  const main = await import(pathToFileURL(join(ROOT, pkg.main)).href) as { Kaproxy?: unknown }
  assert.equal(typeof main.Kaproxy, 'function')
})
