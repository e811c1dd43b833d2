import t from 'tap'
import { execFile } from 'node:child_process'
import { existsSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'

const run = promisify(execFile)
const root = fileURLToPath(new URL('..', import.meta.url))
const built = existsSync(new URL('../dist/lib/index.js', import.meta.url))

// These run the built package (npm test builds before tap).
t.test('the built package is required from CommonJS and imported from ESM, and both proxy', { skip: built ? false : 'dist/ not built: run npm run build' }, async (t) => {
  for (const [file, tag] of [['test/fixtures/consumer.cjs', 'cjs'], ['test/fixtures/consumer.mjs', 'esm']]) {
    const { stdout } = await run(process.execPath, [file], { cwd: root, timeout: 30_000 })
    const out = JSON.parse(stdout) as { status: number, body: string, named?: string }
    t.equal(out.status, 200, tag)
    t.equal(out.body, `${tag} /x`, `${tag} consumer proxied, prefix stripped`)
    if (tag === 'cjs') t.equal(out.named, 'function', 'the named export is there too')
  }
})
