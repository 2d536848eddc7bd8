import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const BIN = new URL('../bin/precog', import.meta.url).pathname;
const dir = mkdtempSync(join(tmpdir(), 'precog-cli-'));
const precog = (...args: string[]) => spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8' });
/** The same command line run in this process, its output and exit code captured. */
async function inProcess(...args: string[]): Promise<{ status: number; stdout: string; stderr: string }> {
  const { runCli } = await import('../src/cli/run.ts');
  let stdout = '';
  let stderr = '';
  const status = await runCli(args, { out: (t) => (stdout += t), err: (t) => (stderr += t) });
  return { status, stdout, stderr };
}

test('--help lists every command with one line', () => {
  const r = precog('--help');
  assert.equal(r.status, 0);
  assert.match(r.stdout, /simulate \[options\]\s+run migrations in the emulator/);
});

test('every strategy that migrate --help offers is one the parser takes; -q is taken as in simulate', async () => {
  const { parseStrategy } = await import('../src/policy/index.ts');
  const r = precog('migrate', '--help');
  assert.equal(r.status, 0);
  const text = /--strategy <spec>\s+([\s\S]*?)\(docs\/strategies\.md\)/.exec(r.stdout)?.[1];
  assert.ok(text, r.stdout);
  const offered = text
    .split(',')
    .map((x) => x.trim())
    .filter(Boolean);
  assert.ok(offered.length >= 10, offered.join(' | '));
  for (const spec of offered) assert.doesNotThrow(() => parseStrategy(spec), spec);
  // -q as in simulate: taken (the run then fails for want of certificates, not of the option).
  const q = precog('migrate', 'x', '-q', '--from', 'a', '--to', 'b', '--pki', join(dir, 'none'));
  assert.doesNotMatch(q.stderr, /unknown option/);
});

test('bad input: one line naming the value and what is accepted, exit code 2, no stack trace', async () => {
  const bad = join(dir, 'bad.json');
  writeFileSync(bad, '{"1000": {"isDirtyList": [1, 0]}, "2000": {"isDirtyList": [1]}}');
  const cases: [string[], RegExp][] = [
    [['simulate', '--workload', 'foo'], /unknown workload "foo"; accepted: idle, memchange, hotcold, trace/],
    [['simulate', '--strategy', 'precopy,teleport'], /unknown strategy "teleport"; accepted: /],
    [['simulate', '--memory', '12XB'], /memory "12XB" has an unknown unit "XB"; accepted: /],
    [['simulate', '--bandwidth', '0'], /bandwidth "0" must be greater than zero/],
    [['simulate', '--workload', `trace:file=${bad}`], /page 2000 has 1 samples, the first page has 2/],
    [
      ['simulate', '--workload', 'memchange:medium'],
      /unknown memchange preset "medium"; accepted: low, high/,
    ],
    [['simulate', '--sweep', 'colour=red'], /--sweep "colour=red" must be KEY=v1,v2/],
    [['simulate', '--repeat', '0'], /--repeat "0" must be a whole number >= 1/],
    // before: a million runs were accepted silently, and a JSON path in a missing directory failed after the run
    [
      ['simulate', '--repeat', '1000000'],
      /5000000 runs \(workloads x strategies x memories x bandwidths x --repeat\) is more than 10000: narrow the sweep or lower --repeat/,
    ],
    [
      ['simulate', '--memory', '64KiB', '--json', '/no/such/dir/x.json'],
      /--json \/no\/such\/dir\/x.json: the directory \/no\/such\/dir does not exist/,
    ],
    [['simulate', '--memory', '64KiB', '--json', dir], /that is a directory; name a file/],
    [['simulate', '--frobnicate'], /unknown option '--frobnicate'/],
    [['teleport'], /unknown command 'teleport'/],
    // every command's parse errors are usage errors too
    [['checkpoint', 'x'], /required option '--out <dir>' not specified/],
    [['restore', '/tmp/nothing'], /required option '--host/],
    [['run'], /required option '--host <host>' not specified/],
    [['ps', '--bogus'], /unknown option '--bogus'/],
    [['stop'], /missing required argument 'name'/],
    [['migrate', 'x'], /required option/],
    [['trace', 'record'], /--pid is required/],
    [['send-memory'], /required option/],
    [['agent'], /needs --pki DIR and --name NAME/],
    [['pki', 'issue'], /required option '--dir <dir>' not specified/],
  ];
  // In this process (src/cli/run.ts, what bin/precog runs): one CLI process per case took most of this file's time.
  for (const [args, re] of cases) {
    const r = await inProcess(...args);
    assert.equal(r.status, 2, `${args.join(' ')}: exit code`);
    assert.match(r.stderr, re, args.join(' '));
    assert.doesNotMatch(r.stderr, /\n\s+at /, `${args.join(' ')}: no stack trace`);
  }
});

test('a reader that stops early ends the output quietly (no EPIPE stack trace)', () => {
  // Before: `precog simulate | head -1` died with an EPIPE stack trace once head had closed the pipe.
  const r = spawnSync(
    'sh',
    [
      '-c',
      `"${process.execPath}" "${BIN}" simulate --memory 1MiB --strategy cold --repeat 200 --json - | head -c 100 >/dev/null`,
    ],
    { encoding: 'utf8' },
  );
  assert.doesNotMatch(r.stderr, /EPIPE|\n\s+at /, r.stderr);
  assert.equal(r.stderr, '');
});

test('simulate prints a comparison table and writes the documented JSON', () => {
  const out = join(dir, 'run.json');
  const r = precog(
    'simulate',
    '--workload',
    'memchange:rate=0.2MB/s',
    '--memory',
    '8MiB',
    '--bandwidth',
    '20Mbit',
    '--strategy',
    'precopy,cold',
    '--repeat',
    '2',
    '--json',
    out,
  );
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /medians over 2 seeds/);
  assert.match(r.stdout, /precopy .* 2\/2 /);
  assert.match(r.stdout, /cold .* - /);
  const doc = JSON.parse(readFileSync(out, 'utf8'));
  assert.equal(doc.schema, 'precog.simulate/v1');
  assert.equal(doc.runs.length, 4);
  assert.equal(doc.summary.length, 2);
  const run = doc.runs[0];
  assert.equal(run.pagesVerified, 2048);
  assert.ok(run.metrics.rounds.length >= 2);
  for (const key of [
    'round',
    'phase',
    'start',
    'duration',
    'pagesSent',
    'pagesSkipped',
    'pagesResent',
    'bytes',
  ]) {
    assert.ok(key in run.metrics.rounds[0], key);
  }
});

test('trace:FILE is short for trace:file=FILE', () => {
  const file = new URL('./data/npb-cg-B-dirty.json.gz', import.meta.url).pathname;
  const short = precog(
    'simulate',
    '--workload',
    `trace:${file}`,
    '--bandwidth',
    '1Gbit',
    '--strategy',
    'cold',
    '--json',
    join(dir, 's.json'),
  );
  const long = precog(
    'simulate',
    '--workload',
    `trace:file=${file}`,
    '--bandwidth',
    '1Gbit',
    '--strategy',
    'cold',
    '--json',
    join(dir, 'l.json'),
  );
  assert.equal(short.status, 0, short.stderr);
  assert.equal(long.status, 0, long.stderr);
  const runs = (f: string) =>
    (
      JSON.parse(readFileSync(join(dir, f), 'utf8')) as {
        runs: { metrics: { downtime: number; bytesTotal: number } }[];
      }
    ).runs.map((r) => [r.metrics.downtime, r.metrics.bytesTotal]);
  assert.equal(runs('s.json').length, 1);
  assert.ok(runs('s.json')[0][1] > 100e6, "the trace's 114 MiB went over the link");
  assert.deepEqual(runs('s.json'), runs('l.json'));
});

test('pki issue does not overwrite a key without --force, and a reissued key is owner-only', () => {
  const pki = join(dir, 'pki-reissue');
  assert.equal(precog('pki', 'init', '--dir', pki).status, 0);
  assert.equal(precog('pki', 'issue', 'h1', '--dir', pki).status, 0);
  const key = join(pki, 'h1-key.pem');
  const before = readFileSync(key, 'utf8');
  chmodSync(key, 0o644); // a key made readable by someone, or by an older precog
  const again = precog('pki', 'issue', 'h1', '--dir', pki);
  assert.equal(again.status, 2, again.stderr);
  assert.match(again.stderr, /h1 has a certificate in .* already; reissue it with --force/);
  assert.equal(readFileSync(key, 'utf8'), before, 'the key is untouched');
  assert.equal(precog('pki', 'issue', 'h1', '--dir', pki, '--force').status, 0);
  assert.notEqual(readFileSync(key, 'utf8'), before);
  assert.equal(statSync(key).mode & 0o777, 0o600);
});

test('an agent without TLS listens on loopback only', () => {
  // With a time limit: an agent that accepted would listen for ever.
  const r = spawnSync(
    process.execPath,
    [BIN, 'agent', '--insecure-plaintext', '--listen', '0.0.0.0:7999', '--state-dir', join(dir, 'plain')],
    { encoding: 'utf8', timeout: 15_000 },
  );
  assert.equal(r.status, 2, r.stderr);
  assert.match(r.stderr, /--insecure-plaintext listens on loopback only \(127.0.0.1, ::1\), not 0.0.0.0/);
});

test('the logs name their level and their time in ISO 8601, one JSON object per line', () => {
  const log = new URL('../src/util/log.ts', import.meta.url).href;
  const r = spawnSync(
    process.execPath,
    [
      '--import',
      'tsx',
      '--input-type=module',
      '-e',
      `const { createLogger } = await import(${JSON.stringify(log)}); const l = createLogger('t'); l.info({ a: 1 }, 'hello'); l.error('bad');`,
    ],
    { encoding: 'utf8', env: { ...process.env, PRECOG_LOG_LEVEL: 'info' } },
  );
  assert.equal(r.status, 0, r.stderr);
  const lines = r.stderr
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as Record<string, unknown>);
  assert.deepEqual(
    lines.map((l) => [l.level, l.msg]),
    [
      ['info', 'hello'],
      ['error', 'bad'],
    ],
  );
  for (const l of lines) assert.match(String(l.time), /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
});

test('--json [FILE] means the same everywhere: JSON on stdout alone, or the text on stdout and the JSON in FILE', () => {
  // check: the text and a file.
  const file = join(dir, 'checks.json');
  const c = precog('check', '--json', file);
  assert.match(c.stdout, /this host can move containers|required check\(s\) failed/);
  const checks = JSON.parse(readFileSync(file, 'utf8')) as { what: string; ok: boolean }[];
  assert.ok(checks.length > 0 && checks.every((x) => typeof x.what === 'string'));
  // Bare: JSON alone on stdout, the same checks.
  const bare = JSON.parse(precog('check', '--json').stdout) as { what: string }[];
  assert.deepEqual(
    bare.map((x) => x.what),
    checks.map((x) => x.what),
  );
  // A FILE whose directory is missing is refused before any work, by every command.
  const nowhere = '/no/such/dir/x.json';
  for (const args of [
    ['check'],
    ['predict-eval', '--traces', new URL('./data/npb-cg-B-dirty.json.gz', import.meta.url).pathname],
  ]) {
    const r = precog(...args, '--json', nowhere);
    assert.equal(r.status, 2, `${args[0]}: ${r.stderr}`);
    assert.match(r.stderr, /--json \/no\/such\/dir\/x.json: the directory \/no\/such\/dir does not exist/);
  }
  // migrate: NAME is required, so `migrate --json NAME` names the container, not a file.
  const swallowed = precog('migrate', '--json', 'Bad/Name', '--from', 'a', '--to', 'b');
  assert.equal(swallowed.status, 2);
  assert.match(swallowed.stderr, /Bad\/Name/);
  assert.doesNotMatch(swallowed.stderr, /missing required argument/);
  const none = precog('migrate', '--from', 'a', '--to', 'b');
  assert.equal(none.status, 2);
  assert.match(none.stderr, /missing required argument 'name'/);
});

test("simulate's progress: runs done and the time left at the pace so far; off a terminal, a line at most every 10 s", async () => {
  const { RunProgress, formatLeft } = await import('../src/cli/actions/simulate.ts');
  assert.equal(RunProgress.text(1, 4, 'cold idle', 3000), '1/4 runs (cold idle), about 9 s left');
  assert.equal(RunProgress.text(4, 4, 'cold idle', 3000), '4/4 runs (cold idle), done');
  assert.deepEqual([formatLeft(45), formatLeft(200), formatLeft(3900)], ['45 s', '3 min 20 s', '1 h 5 min']);
  const lines: string[] = [];
  let now = 0;
  const p = new RunProgress(
    'lines',
    (t) => lines.push(t),
    () => now,
  );
  for (const [t, done] of [
    [1000, 1],
    [5000, 2],
    [12000, 3],
    [13000, 4],
  ]) {
    now = t;
    p.ran(done, 4, 'x');
  }
  assert.deepEqual(lines, [
    '1/4 runs (x), about 3 s left\n',
    '3/4 runs (x), about 4 s left\n',
    '4/4 runs (x), done\n',
  ]);
});

test('precog help TOPIC lists what the registries hold; help COMMAND [SUB] is the command help; anything else is named', async () => {
  const { STRATEGY_NAMES, parseStrategy } = await import('../src/policy/index.ts');
  const { CODEC_NAMES } = await import('../src/codec/names.ts');
  const { RUNTIME_NAMES } = await import('../src/runtime/names.ts');
  const { PREDICTOR_NAMES } = await import('../src/predict/index.ts');
  const { WORKLOAD_NAMES } = await import('../src/memory/workloads.ts');
  const topic = async (name: string) => {
    const r = await inProcess('help', name);
    assert.equal(r.status, 0, r.stderr);
    return r.stdout.split('\n').filter((l) => l.startsWith('  '));
  };
  const names = (lines: string[]) => lines.map((l) => l.trim().split(/[[:\s]/)[0]);
  const strategies = await topic('strategies');
  assert.deepEqual(names(strategies), STRATEGY_NAMES);
  for (const n of names(strategies)) assert.doesNotThrow(() => parseStrategy(n), n);
  assert.ok(strategies.some((l) => l.includes('precopy[:rule=..')));
  assert.deepEqual(names(await topic('codecs')), [...CODEC_NAMES]);
  assert.deepEqual(names(await topic('runtimes')), [...RUNTIME_NAMES]);
  assert.deepEqual(names(await topic('predictors')), PREDICTOR_NAMES);
  assert.deepEqual(names(await topic('workloads')), WORKLOAD_NAMES);
  const sub = await inProcess('help', 'pki', 'issue');
  assert.equal(sub.status, 0);
  assert.match(sub.stdout, /^Usage: precog pki issue \[options\] <name>/);
  const all = await inProcess('help');
  assert.match(all.stdout, /help \[name\.\.\.\]\s+help on a command, or on a topic/);
  const bad = await inProcess('help', 'nosuch');
  assert.equal(bad.status, 2);
  assert.match(
    bad.stderr,
    /no command or topic "nosuch"; commands: .*migrate.*; topics: strategies, predictors/,
  );
});
