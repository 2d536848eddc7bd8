import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import {
  copyFileSync,
  mkdirSync,
  mkdtempSync,
  rmSync,
  symlinkSync,
  utimesSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const REPO = new URL('..', import.meta.url).pathname;
const BIN = join(REPO, 'bin/precog');
const dir = mkdtempSync(join(tmpdir(), 'precog-packaging-'));

/** The modules of this repository and the packages that `precog ARGS` loads, as a resolve hook sees them. */
function loaded(...args: string[]): { modules: string[]; packages: string[] } {
  const hooks = join(dir, 'hooks.mjs');
  writeFileSync(
    hooks,
    'export async function resolve(s, c, next) {\n' +
      '  const r = await next(s, c);\n' +
      "  if (r.url.startsWith('file:')) process.stderr.write(`resolved ${r.url}\\n`);\n" +
      '  return r;\n' +
      '}\n',
  );
  const register = join(dir, 'register.mjs');
  writeFileSync(
    register,
    `import { register } from 'node:module';\nregister(${JSON.stringify('file://' + hooks)});\n`,
  );
  const r = spawnSync(process.execPath, ['--import', register, BIN, ...args], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  const urls = [...r.stderr.matchAll(/^resolved file:\/\/(.*)$/gm)].map((m) => m[1]);
  const inRepo = urls.filter((u) => u.startsWith(REPO)).map((u) => u.slice(REPO.length));
  return {
    modules: inRepo.filter((u) => /^(src|dist)\//.test(u)),
    packages: [...new Set(inRepo.flatMap((u) => /^node_modules\/((@[^/]+\/)?[^/]+)/.exec(u)?.[1] ?? []))],
  };
}

// What tsx needs when bin/precog runs the sources (no current dist/).
const LOADER = ['tsx', 'esbuild', 'get-tsconfig', 'resolve-pkg-maps'];

test('help loads the command definitions and commander, none of the code behind them', () => {
  for (const args of [
    ['--help'],
    ['migrate', '--help'],
    ['simulate', '--help'],
    ['testbed', 'up', '--help'],
  ]) {
    const { modules, packages } = loaded(...args);
    assert.ok(
      modules.some((m) => /cli\/main\.(ts|js)$/.test(m)),
      `${args.join(' ')}: ${modules.join(' ')}`,
    );
    assert.deepEqual(
      modules.filter((m) => /\/cli\/actions\/|\/(engine|criu|agent|transport|sim|policy|migrate)\//.test(m)),
      [],
      args.join(' '),
    );
    assert.deepEqual(
      packages.filter((p) => !LOADER.includes(p)),
      ['commander'],
      args.join(' '),
    );
  }
  // The same hook sees the engine once a command runs.
  const run = loaded('simulate', '--memory', '64KiB', '--strategy', 'cold', '--workload', 'idle');
  assert.ok(run.modules.some((m) => /cli\/actions\/simulate\.(ts|js)$/.test(m)));
  assert.ok(run.modules.some((m) => /\/engine\//.test(m)));
});

test('migrate --help lists the runtimes the registry holds', async () => {
  const { runtimeNames } = await import('../src/runtime/index.ts');
  const r = spawnSync(process.execPath, [BIN, 'migrate', '--help'], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout.replace(/\s+/g, ' '), new RegExp(`runtime \\(${runtimeNames().join(', ')}\\)`));
});

test('bin/precog runs dist/ only while its build is newer than every source', () => {
  // A copy of bin/precog beside a dist/ and a src/ that each say which ran.
  const root = join(dir, 'layout');
  mkdirSync(join(root, 'bin'), { recursive: true });
  mkdirSync(join(root, 'dist/cli'), { recursive: true });
  mkdirSync(join(root, 'src/cli'), { recursive: true });
  copyFileSync(BIN, join(root, 'bin/precog'));
  symlinkSync(join(REPO, 'node_modules'), join(root, 'node_modules'));
  writeFileSync(join(root, 'package.json'), '{ "type": "module" }\n');
  writeFileSync(join(root, 'dist/cli/main.js'), "console.log('dist');\n");
  writeFileSync(join(root, 'src/cli/main.ts'), "console.log('src' as string);\n");
  const ran = (env: Record<string, string> = {}) => {
    const r = spawnSync(process.execPath, [join(root, 'bin/precog')], {
      encoding: 'utf8',
      env: { ...process.env, PRECOG_DEV: '', ...env },
    });
    assert.equal(r.status, 0, r.stderr);
    return r.stdout.trim();
  };
  const now = Date.now() / 1000;
  const age = (path: string, seconds: number) => utimesSync(join(root, path), now - seconds, now - seconds);
  const sources = ['src', 'src/cli', 'src/cli/main.ts'];

  assert.equal(ran(), 'src', 'no build');
  writeFileSync(join(root, 'dist/.built'), '');
  sources.forEach((p) => age(p, 100));
  age('dist/.built', 50);
  assert.equal(ran(), 'dist', 'built after the last change');
  assert.equal(ran({ PRECOG_DEV: '1' }), 'src', 'PRECOG_DEV=1');
  age('src/cli/main.ts', 10);
  assert.equal(ran(), 'src', 'a source edited after the build');
  age('src/cli/main.ts', 100);
  assert.equal(ran(), 'dist');
  // A file copied in with an old time still changes its directory's.
  writeFileSync(join(root, 'src/cli/new.ts'), '');
  age('src/cli/new.ts', 100);
  assert.equal(ran(), 'src', 'a new source file');
  rmSync(join(root, 'src'), { recursive: true });
  assert.equal(ran(), 'dist', 'no sources: an installed package');
});
