// precog checkpoint / restore / export / migrate --strategy cold with real CRIU in the test hosts. The flag checks run
// everywhere; the containers need root and their own testbed (skipped when one is already up).
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { CONTAINERS_DIR, type ContainerInfo } from '../src/runtime/container.ts';
import { hostPath, readState, testbedDown, testbedUp, type TestbedState } from '../src/runtime/testbed.ts';
import { must, precog, type Ran } from './support/cli.ts';
import { ps, find, inContainer } from './support/containers.ts';

const cli = (...args: string[]): Ran => precog(args);
const IS_ROOT = process.getuid?.() === 0;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const counterOf = (c: ContainerInfo) => Number(inContainer(c, 'cat /var/lib/counter/value').trim());

describe('checkpoint flags', () => {
  test('missing --out and --host are usage errors', () => {
    assert.equal(cli('checkpoint', 'x').code, 2);
    assert.equal(cli('restore', '/tmp/nothing').code, 2);
  });
});

const skip = !IS_ROOT
  ? 'needs root: containers live in the test hosts'
  : readState()
    ? 'a testbed is already up (someone else may be using it); not touching it'
    : false;

describe('checkpoint, restore, export and cold migration with CRIU', { skip }, () => {
  let state: TestbedState;
  let tmp: string;
  let ck: string;

  before(async () => {
    state = (await testbedUp({ rate: 'none' })).state;
    tmp = mkdtempSync(join(tmpdir(), 'precog-ck-'));
    ck = join(tmp, 'ck1');
  });
  after(async () => {
    try {
      for (const c of ps()) cli('stop', c.name);
    } finally {
      await testbedDown();
      rmSync(tmp, { recursive: true, force: true });
    }
  });

  test('checkpoint in a, restore in b: the counter continues, the file written before is there', async () => {
    must(
      cli(
        'run',
        '--host',
        'a',
        '--name',
        'ctr',
        '--',
        'python3',
        '/opt/precog/workloads/counter.py',
        '--port',
        '0',
      ),
      'run',
    );
    let c = find('ctr')!;
    for (let i = 0; i < 100 && !existsSync(`/proc/${c.machinePid!.pid}`); i++) await sleep(50);
    await sleep(3000);
    inContainer(c, 'mkdir -p /data && echo "written before the checkpoint" >/data/note.txt');
    const out = must(cli('checkpoint', 'ctr', '--out', ck), 'checkpoint').stdout;
    assert.match(out, /ctr: checkpoint in .*container running/);
    for (const f of ['images', 'upper', 'state.json', 'checkpoint.json', 'dump.log'])
      assert.ok(existsSync(join(ck, f)), `${f} in the checkpoint`);
    assert.ok(
      readdirSync(join(ck, 'images')).some((f) => f.startsWith('pages-')),
      'the images hold memory',
    );
    assert.equal(readFileSync(join(ck, 'upper/data/note.txt'), 'utf8'), 'written before the checkpoint\n');
    const atDump = Number(readFileSync(join(ck, 'upper/var/lib/counter/value'), 'utf8'));
    assert.ok(atDump >= 20, `counter at dump time: ${atDump}`);

    // The source keeps running (thawed) and counting.
    c = find('ctr')!;
    assert.equal(c.status, 'running');
    const s1 = counterOf(c);
    await sleep(500);
    assert.ok(counterOf(c) > s1, 'the source still counts after the checkpoint');

    const r = must(cli('restore', ck, '--host', 'b', '--name', 'ctr2'), 'restore').stdout;
    assert.match(r, /ctr2: restored on host b, pid \d+/);
    const c2 = find('ctr2')!;
    assert.equal(c2.host, 'b');
    assert.equal(c2.status, 'running');
    await sleep(1000);
    const v1 = counterOf(c2);
    await sleep(700);
    const v2 = counterOf(c2);
    assert.ok(v1 > atDump, `restored counter continues: ${atDump} at dump, ${v1} a second after the restore`);
    assert.ok(v2 > v1, `and keeps counting: ${v1} then ${v2}`);
    assert.equal(inContainer(c2, 'cat /data/note.txt'), 'written before the checkpoint\n');
    assert.match(must(cli('logs', 'ctr2'), 'logs').stdout, /counter: .*writing \/var\/lib\/counter\/value/);
    const hostDirB = hostPath(state.hosts[1], CONTAINERS_DIR, 'ctr2');
    must(cli('stop', 'ctr2'), 'stop ctr2');
    assert.equal(existsSync(hostDirB), false, 'stop removes the restored container');
    assert.equal(existsSync(`/proc/${c2.machinePid!.pid}`), false, 'and its process');
  });

  test('export writes the writable layer as tar.zst with the note', () => {
    const file = join(tmp, 'layer.tar.zst');
    must(cli('export', 'ctr', '--out', file), 'export');
    const list = spawnSync('tar', ['--zstd', '-tf', file], { encoding: 'utf8' });
    assert.equal(list.status, 0, list.stderr);
    assert.match(list.stdout, /^\.\/data\/note\.txt$/m);
    assert.match(list.stdout, /^\.\/var\/lib\/counter\/value$/m);
    assert.equal(find('ctr')?.status, 'running', 'export thaws the container');
  });

  test('a restore of corrupted images fails with CRIU errors and leaves the source running', async () => {
    const bad = join(tmp, 'bad');
    spawnSync('cp', ['-a', ck, bad]);
    const core = readdirSync(join(bad, 'images')).find((f) => /^core-\d+\.img$/.test(f))!;
    const buf = readFileSync(join(bad, 'images', core));
    writeFileSync(join(bad, 'images', core), buf.subarray(0, 20));
    const r = cli('restore', bad, '--host', 'b', '--name', 'broken');
    assert.equal(r.code, 1, `restore should fail: ${r.stdout}${r.stderr}`);
    assert.match(r.stderr, /criu restore failed \(exit code 1\)/);
    assert.match(r.stderr, /errors in the log:\n\s+\(\d+\.\d+\) Error \(/);
    assert.equal(find('broken'), undefined, 'nothing left of the failed restore');
    assert.equal(existsSync(hostPath(state.hosts[1], CONTAINERS_DIR, 'broken')), false);
    const c = find('ctr')!;
    assert.equal(c.status, 'running');
    const v = counterOf(c);
    await sleep(500);
    assert.ok(counterOf(c) > v, 'the source keeps counting');
    process.stdout.write(`# the failed restore said:\n${r.stderr.replace(/^/gm, '#   ')}\n`);
  });

  test('cold migration a -> b: counter continues, note there, source removed', async () => {
    const before = find('ctr')!;
    const v0 = counterOf(before);
    const r = must(cli('migrate', 'ctr', '--from', 'a', '--to', 'b', '--strategy', 'cold'), 'migrate').stdout;
    assert.match(r, /ctr: migrated a -> b \(cold\)/);
    process.stdout.write(`# ${r}`);
    const c = find('ctr')!;
    assert.equal(c.host, 'b');
    assert.equal(c.status, 'running');
    assert.equal(existsSync(`/proc/${before.machinePid!.pid}`), false, 'the source process is gone');
    assert.equal(existsSync(hostPath(state.hosts[0], CONTAINERS_DIR, 'ctr')), false);
    await sleep(800);
    const v1 = counterOf(c);
    assert.ok(v1 > v0, `counter continues on b: ${v0} before, ${v1} after`);
    assert.equal(inContainer(c, 'cat /data/note.txt'), 'written before the checkpoint\n');
  });
});
