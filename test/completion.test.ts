import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Command } from 'commander';
import { completionScript } from '../src/cli/actions/completion.ts';
import { precogProgram } from '../src/cli/program.ts';

const BIN = new URL('../bin/precog', import.meta.url).pathname;
const dir = mkdtempSync(join(tmpdir(), 'precog-completion-'));
const has = (shell: string) => spawnSync(shell, ['-c', 'exit 0']).status === 0;

/** Every command of the tree with its words from the root ("precog pki issue"). */
function commands(c: Command, path = c.name()): { path: string; cmd: Command }[] {
  return [{ path, cmd: c }, ...c.commands.flatMap((s) => commands(s, `${path} ${s.name()}`))];
}

/** What the bash script offers for the words of LINE (the last one being completed). */
function bashCompletes(script: string, line: string[]): string[] {
  const file = join(dir, 'precog.bash');
  writeFileSync(file, script);
  const words = line.map((w) => `'${w}'`).join(' ');
  const r = spawnSync(
    'bash',
    [
      '-c',
      `source ${file}; COMP_WORDS=(${words}); COMP_CWORD=${line.length - 1}; _precog; printf '%s\\n' "\${COMPREPLY[@]}"`,
    ],
    { encoding: 'utf8' },
  );
  assert.equal(r.status, 0, r.stderr);
  return r.stdout.split('\n').filter(Boolean);
}

test('the bash script names every command and every long option of each, under its own path', () => {
  const program = precogProgram();
  const script = completionScript(program, 'bash');
  const all = commands(program);
  assert.ok(all.length > 25, `${all.length} commands`);
  // The script's two tables: the subcommands of each path, then its options.
  const [commandTable, optionTable] = script.split(/^_precog_options\(\) \{$/m);
  const offered = (table: string, path: string) =>
    new RegExp(`^ {4}'${path}'\\) REPLY='([^']*)' ;;$`, 'm').exec(table)?.[1].split(' ') ?? [];
  for (const { path, cmd } of all) {
    for (const s of cmd.commands)
      assert.ok(offered(commandTable, path).includes(s.name()), `${path}: ${s.name()}`);
    for (const o of cmd.options.filter((o) => !o.hidden && o.long))
      assert.ok(offered(optionTable, path).includes(o.long!), `${path}: ${o.long}`);
  }
  assert.ok(offered(optionTable, 'precog migrate').includes('--strategy'));
  // Hidden aliases stay hidden, as in --help.
  assert.doesNotMatch(script, /--trace /);
});

test(
  'bash completes commands, subcommands and options from the words before the cursor',
  { skip: !has('bash') && 'no bash' },
  () => {
    const script = completionScript(precogProgram(), 'bash');
    assert.deepEqual(bashCompletes(script, ['precog', 'mig']), ['migrate']);
    assert.deepEqual(bashCompletes(script, ['precog', 'migrate', 'web', '--from', 'a', '--str']), [
      '--strategy',
    ]);
    assert.deepEqual(bashCompletes(script, ['precog', 'pki', 'i']), ['init', 'issue']);
    assert.deepEqual(bashCompletes(script, ['precog', 'pki', 'issue', '--d']), ['--dir', '--dns']);
    assert.deepEqual(bashCompletes(script, ['precog', 'trace', 'record', '--t']), ['--tracker']);
    assert.deepEqual(bashCompletes(script, ['precog', 'help', 'sim']), ['simulate']);
    // An argument: nothing offered, so that bash completes file names (complete -o default).
    assert.deepEqual(bashCompletes(script, ['precog', 'predict-eval', '--traces', '']), []);
    assert.deepEqual(bashCompletes(script, ['precog', 'run', '--host', 'a', '--', 'p']), []);
  },
);

test(
  'zsh offers the same words, subcommands with their descriptions',
  { skip: !has('zsh') && 'no zsh' },
  () => {
    const file = join(dir, '_precog');
    writeFileSync(file, completionScript(precogProgram(), 'zsh'));
    // compadd, _describe and compdef stand in for zsh's completion system, which needs a terminal.
    const zsh = (...line: string[]) => {
      const r = spawnSync(
        'zsh',
        [
          '-c',
          `compdef() { :; }; compadd() { shift; print -rl -- "$@"; }; _files() { print '<files>'; }
         _describe() { print -rl -- "\${(@P)4}"; }
         source ${file}; words=("$@"); CURRENT=$#; _precog`,
          'zsh',
          ...line,
        ],
        { encoding: 'utf8' },
      );
      assert.equal(r.status, 0, r.stderr);
      return r.stdout.split('\n').filter(Boolean);
    };
    assert.ok(
      zsh('precog', '').includes(
        'simulate:run migrations in the emulator (same engine, virtual clock) and compare strategies',
      ),
    );
    assert.ok(zsh('precog', 'migrate', 'web', '-').includes('--strategy'));
    assert.deepEqual(
      zsh('precog', 'job', '').map((l) => l.split(':')[0]),
      ['list', 'cancel', 'help'],
    );
    assert.deepEqual(zsh('precog', 'logs', ''), ['<files>']);
  },
);

test('precog completion prints the script of its own tree; a shell it does not know is a usage error', () => {
  const r = spawnSync(process.execPath, [BIN, 'completion', 'bash'], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout, completionScript(precogProgram(), 'bash'));
  const bad = spawnSync(process.execPath, [BIN, 'completion', 'fish'], { encoding: 'utf8' });
  assert.equal(bad.status, 2);
  assert.match(bad.stderr, /'fish' is invalid for argument 'shell'. Allowed choices are bash, zsh/);
});
