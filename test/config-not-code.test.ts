import assert from 'node:assert/strict'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, it } from 'node:test'
import { buildConfig, loadConfigFile } from '../src/config/load.js'
import { ConfigError } from '../src/errors.js'

// Each payload, if ever run, sets this global: the tests prove it never is.
const MARK = '__kaproxyEvaluated'
const payload = `globalThis.${MARK} = true`

function evaluated (): boolean {
  return (globalThis as Record<string, unknown>)[MARK] === true
}

describe('the process never evaluates config as code', () => {
  it('YAML tags that construct code in other loaders stay data or are rejected, and never run', (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'kaproxy-tags-'))
    t.after(() => { rmSync(dir, { recursive: true, force: true }) })
    const documents = [
      `routes: !!js/function "function () { ${payload}; return [] }"`,
      `routes:\n  - name: !!js/function "function () { ${payload} }"\n    listen: 127.0.0.1:0\n    upstream: 127.0.0.1:1`,
      `log:\n  level: !<tag:yaml.org,2002:js/function> "function () { ${payload}; return 'info' }"\nroutes: []`,
      'routes: !!js/regexp /x/',
      'routes: !!js/undefined ""',
      `routes: !!python/object/apply:os.system ["${payload}"]`,
      `routes: !custom "${payload}"`,
      'routes:\n  - !!binary aGVsbG8=',
      `defaults:\n  connectTimeout: !!js/function "() => { ${payload}; return '5s' }"\nroutes: []`
    ]
    for (const [index, text] of documents.entries()) {
      const file = join(dir, `tag${index}.yaml`)
      writeFileSync(file, text)
      let result: unknown
      try { result = loadConfigFile(file, { env: {} }) } catch (err) {
        assert.ok(err instanceof ConfigError, `${text}: threw ${String(err)}`)
        continue
      }
      // Accepted only as plain data: nothing in the result is a function.
      assert.equal(JSON.stringify(result, (_key, value: unknown) => typeof value === 'function' ? 'FUNCTION' : value).includes('FUNCTION'), false, text)
    }
    assert.equal(evaluated(), false)
  })

  it('environment values and flags are data too: a template or a script in them is only an invalid value', () => {
    for (const value of ['${process.exit(3)}', '`rm -rf /`', `$(node -e "${payload}")`, `{{${payload}}}`]) {
      assert.throws(() => buildConfig({ routes: [] }, { env: { KAPROXY_LOG_LEVEL: value } }),
        (err: unknown) => err instanceof ConfigError && err.issues.some((issue) => issue.path === 'log.level'))
    }
    assert.equal(evaluated(), false)
  })

  it('__proto__ and constructor keys in a config neither pollute prototypes nor pass as settings', (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'kaproxy-proto-'))
    t.after(() => { rmSync(dir, { recursive: true, force: true }) })
    const sources: Array<[string, string]> = [
      ['proto.json', '{"__proto__": {"polluted": true}, "routes": []}'],
      ['route-proto.json', '{"routes": [{"name": "a", "listen": "127.0.0.1:0", "upstream": "127.0.0.1:1", "__proto__": {"polluted": true}}]}'],
      ['proto.yaml', '__proto__:\n  polluted: true\nroutes: []\n'],
      ['constructor.yaml', 'constructor:\n  prototype:\n    polluted: true\nroutes: []\n'],
      ['defaults-proto.yaml', 'defaults:\n  __proto__:\n    polluted: true\nroutes: []\n']
    ]
    for (const [name, text] of sources) {
      const file = join(dir, name)
      writeFileSync(file, text)
      try { loadConfigFile(file, { env: {} }) } catch (err) { assert.ok(err instanceof ConfigError, `${name}: threw ${String(err)}`) }
      assert.equal(({} as Record<string, unknown>).polluted, undefined, `${name} polluted Object.prototype`)
    }
  })

  it('a YAML alias bomb is refused quickly instead of expanding', (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'kaproxy-bomb-'))
    t.after(() => { rmSync(dir, { recursive: true, force: true }) })
    const lines = ['a: &a ["x","x","x","x","x","x","x","x","x","x"]']
    for (let level = 1; level < 9; level++) {
      const prev = String.fromCharCode(96 + level)
      const name = String.fromCharCode(97 + level)
      lines.push(`${name}: &${name} [${Array(10).fill(`*${prev}`).join(',')}]`)
    }
    lines.push('routes: *i')
    const file = join(dir, 'bomb.yaml')
    writeFileSync(file, lines.join('\n') + '\n')
    const started = Date.now()
    assert.throws(() => loadConfigFile(file, { env: {} }), ConfigError)
    assert.ok(Date.now() - started < 2000, `took ${Date.now() - started} ms`)
  })
})
