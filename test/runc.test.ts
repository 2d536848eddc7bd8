// The runc runtime: `precog migrate --runtime runc` moves a container a user runs from an OCI bundle between the
// test hosts, with its bundle (the writable root filesystem), by pre-copy, post-copy and cold; at the destination it
// is a runc container (runc list, exec, delete work on it). Needs root and its own testbed.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { describe, test } from 'node:test';
import { hostCommand, type TestbedState } from '../src/runtime/testbed.ts';
import { must, precog, type Ran } from './support/cli.ts';
import { agentLeftovers as leftovers, memcheckOf, migrateJson, migrateWhile } from './support/moves.ts';
import { sharedTestbed, testbedSkip } from './support/testbed.ts';
import { bundleScript } from './support/oci.ts';

const cli = (...args: string[]): Ran => precog(args);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const skip = testbedSkip('containers live in the test hosts');

describe('runc containers (OCI bundles) moved between the test hosts', { skip }, () => {
  let state: TestbedState;

  const inHost = (host: string, argv: string[], input?: string): Ran => {
    const c = hostCommand(state, host, argv);
    const r = spawnSync(c.cmd, c.args, { env: c.env, encoding: 'utf8', ...(input ? { input } : {}) });
    return { code: r.status, stdout: r.stdout, stderr: r.stderr };
  };
  const runc = (host: string, ...args: string[]): Ran => inHost(host, ['runc', ...args]);
  const names = (host: string): string[] =>
    (
      (JSON.parse(must(runc(host, 'list', '--format', 'json'), 'runc list').stdout) as
        { id: string; status: string }[] | null) ?? []
    ).map((c) => `${c.id} ${c.status}`);

  const { memcheck, waitChecks } = memcheckOf((host, name, argv) => runc(host, 'exec', name, ...argv));
  const agentLeftovers = (host: string): string[] => leftovers(state, host);
  /** A move a -> b or back, checked: every page intact, the checks went on, the file written before it arrived. */
  const moved = async (from: string, to: string, strategy: string) => {
    const before = memcheck(from, 'rmc');
    const report = migrateJson('rmc', 'runc', from, to, strategy);
    process.stdout.write(`# runc ${strategy} 64 MiB: ${JSON.stringify({ ...report, metrics: undefined })}\n`);
    assert.ok(names(to).includes('rmc running'), names(to).join(', '));
    assert.deepEqual(names(from), [], `${from} keeps no runc container`);
    const s = await waitChecks(to, 'rmc', before.checks);
    assert.ok(s.ok, `memory check after the move: ${s.line}`);
    assert.ok(
      s.checks > before.checks && s.rewrites > before.rewrites,
      `went on: ${before.line} -> ${s.line}`,
    );
    assert.equal(
      must(runc(to, 'exec', 'rmc', 'cat', '/data/note.txt'), 'note').stdout,
      'written before the move\n',
    );
    for (let i = 0; i < 50 && agentLeftovers(to).length + agentLeftovers(from).length > 0; i++)
      await sleep(200);
    assert.deepEqual(agentLeftovers(to), []);
    assert.deepEqual(agentLeftovers(from), []);
    return report;
  };

  sharedTestbed({ rate: 'none' }, async (s) => {
    state = s;
    for (const h of ['a', 'b'])
      must(inHost(h, ['sh', '-c', 'mkdir -p /srv/ro && echo shared > /srv/ro/hello']), 'bind source');
    must(
      inHost(
        'a',
        ['sh'],
        bundleScript('rmc', ['python3', '/opt/precog/workloads/memcheck.py', '--size', '64', '--rate', '5'], {
          readOnly: ['/srv/ro'],
        }),
      ),
      'runc run memcheck',
    );
    for (let i = 0; i < 100 && runc('a', 'exec', 'rmc', 'cat', '/tmp/memcheck.status').code !== 0; i++)
      await sleep(100);
    must(
      runc(
        'a',
        'exec',
        'rmc',
        'sh',
        '-c',
        'mkdir -p /data && echo "written before the move" > /data/note.txt',
      ),
      'write',
    );
  });

  test('bad input: an unknown container names what exists; a read-write bind mount is refused before the stop', () => {
    let r = cli('migrate', 'nosuch', '--runtime', 'runc', '--from', 'a', '--to', 'b');
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /no runc container nosuch on host a; there: rmc/);
    must(
      inHost('a', ['sh'], bundleScript('rwc', ['sleep', '600'], { readWrite: ['/srv/ro'] })),
      'runc run with a volume',
    );
    try {
      r = cli('migrate', 'rwc', '--runtime', 'runc', '--from', 'a', '--to', 'b');
      assert.equal(r.code, 2, r.stderr);
      assert.match(r.stderr, /bind mount \/srv\/ro -> \/srv\/ro is read-write/);
      assert.ok(names('a').includes('rwc running'), names('a').join(', '));
      assert.deepEqual(names('b'), []);
    } finally {
      runc('a', 'delete', '--force', 'rwc');
    }
  });

  test('precopy a -> b: a runc container at b, every page intact, its bundle along, nothing left on a', async () => {
    const report = await moved('a', 'b', 'precopy');
    assert.ok(Number(report.liveRounds) >= 1, 'live rounds ran');
    assert.ok(Number(report.pagesUnchanged) > 10_000, `pages already at b: ${report.pagesUnchanged}`);
    // The read-only bind mount is b's own /srv/ro.
    assert.equal(must(runc('b', 'exec', 'rmc', 'cat', '/srv/ro/hello'), 'bind').stdout, 'shared\n');
  });

  test('postcopy b -> a: the container runs at a before its pages are there, and every page arrives', async () => {
    const report = await moved('b', 'a', 'postcopy');
    assert.equal(report.restoreMode, 'lazy');
    assert.ok(Number(report.lazyPages) > 0, `pages left to the lazy copy: ${report.lazyPages}`);
  });

  test('cold a -> b: stop, copy, restore', async () => {
    const report = await moved('a', 'b', 'cold');
    assert.equal(report.liveRounds, 0);
  });

  test('a bind-mount source missing at the destination: refused before the container stops', async () => {
    must(inHost('a', ['mv', '/srv/ro', '/srv/ro.away']), 'take the source away');
    try {
      const before = memcheck('b', 'rmc');
      const r = cli('migrate', 'rmc', '--runtime', 'runc', '--from', 'b', '--to', 'a');
      assert.notEqual(r.code, 0);
      assert.match(r.stderr, /\/srv\/ro/);
      assert.match(r.stderr, /source keeps running on b/);
      const s = await waitChecks('b', 'rmc', before.checks);
      assert.ok(s.ok && s.checks > before.checks, s.line);
      assert.ok(names('b').includes('rmc running'));
    } finally {
      inHost('a', ['mv', '/srv/ro.away', '/srv/ro']);
    }
  });

  test('the restore fails at the destination after the stop: the source is restored in place and goes on', async () => {
    // The bind-mount source goes away at a during the live rounds: the destination's check at the start passes,
    // its restore (after the source's checkpoint ended it) fails.
    const before = memcheck('b', 'rmc');
    const r = await migrateWhile(
      state,
      { name: 'rmc', runtime: 'runc', from: 'b', to: 'a' },
      () => must(inHost('a', ['mv', '/srv/ro', '/srv/ro.away']), 'take the source away'),
      () => void inHost('a', ['mv', '/srv/ro.away', '/srv/ro']),
    );
    assert.equal(r.code, 1, r.stderr + r.stdout);
    assert.match(r.stderr, /runc restore of rmc failed/);
    assert.match(r.stderr, /source keeps running on b/);
    const s = await waitChecks('b', 'rmc', before.checks);
    assert.ok(s.ok && s.checks > before.checks, s.line);
    assert.ok(names('b').includes('rmc running'), names('b').join(', '));
    assert.deepEqual(names('a'), []);
    assert.equal(
      must(runc('b', 'exec', 'rmc', 'cat', '/data/note.txt'), 'note').stdout,
      'written before the move\n',
    );
    for (let i = 0; i < 50 && agentLeftovers('a').length > 0; i++) await sleep(200);
    assert.deepEqual(agentLeftovers('a'), []);
  });
});
