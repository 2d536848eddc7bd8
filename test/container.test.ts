// precog run / ps / stop / logs: containers in the test hosts. Name checks run everywhere; the containers need root
// and their own testbed (skipped when one is already up: other people's hosts are left alone).
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { CONTAINERS_DIR, LAZY_STATUS, validateName, type ContainerInfo } from '../src/runtime/container.ts';
import { hostPath, type TestbedState } from '../src/runtime/testbed.ts';
import { inHost, must, precog, type Ran } from './support/cli.ts';
import { ps } from './support/containers.ts';
import { sharedTestbed, testbedSkip } from './support/testbed.ts';
import { UsageError } from '../src/util/errors.ts';

const cli = (...args: string[]): Ran => precog(args);

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('container names', () => {
  test('valid and invalid names', () => {
    assert.equal(validateName('counter-1'), 'counter-1');
    for (const bad of ['', '-x', 'a/b', 'x'.repeat(64), 'a b'])
      assert.throws(() => validateName(bad), UsageError);
  });
});

describe("the lazy-pages daemon's exit status", () => {
  test('is never seen half written, by a reader that reads it the moment it exists', async () => {
    // The status written in place ('echo $? >rc') was read empty here in 13 of 300 such tries: a successful
    // copy-in then failed as 'criu lazy-pages failed (exit )'.
    const dir = mkdtempSync(join(tmpdir(), 'precog-rc-'));
    const images = join(dir, 'images');
    mkdirSync(images);
    const rc = join(dir, 'lazy-pages.rc');
    try {
      const seen: string[] = [];
      for (let i = 0; i < 300; i++) {
        rmSync(rc, { force: true });
        const child = spawn('sh', ['-c', `true; ${LAZY_STATUS}`, 'precog-lazy', images]);
        const exited = new Promise((r) => child.on('exit', r));
        const t0 = Date.now();
        while (!existsSync(rc) && Date.now() - t0 < 5000);
        seen.push(readFileSync(rc, 'utf8'));
        await exited;
      }
      assert.deepEqual(
        seen.filter((x) => x !== '0\n'),
        [],
        'every status read was whole',
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

const skip = testbedSkip('containers live in the test hosts');

describe('containers in a test host', { skip }, () => {
  let state: TestbedState;
  const hostDir = () => hostPath(state.hosts[0], CONTAINERS_DIR);

  sharedTestbed({ rate: 'none' }, (s) => {
    state = s;
  });

  test('a counter container: run, counter grows, ps, logs, duplicate name refused', async () => {
    must(
      cli('run', '--host', 'a', '--name', 'ctr', '--', 'python3', '/opt/precog/workloads/counter.py'),
      'run',
    );
    const [c] = ps().filter((x) => x.name === 'ctr');
    assert.equal(c.status, 'running');
    assert.equal(c.host, 'a');
    assert.ok(c.pid && c.pid > 1, `pid in the host: ${c.pid}`);
    // The container's PID 1 is the workload, in its own PID namespace, seen by the host.
    const status = await inHost(state, 'a', ['cat', `/proc/${c.pid}/status`]);
    assert.match(status.stdout, new RegExp(`NSpid:\\s+${c.pid}\\s+1\\n`));
    const text = must(cli('ps'), 'ps').stdout;
    assert.match(text, new RegExp(`ctr\\s+a\\s+${c.pid}\\s+running`));

    const ask = async () => {
      for (let i = 0; i < 50; i++) {
        const r = await inHost(state, 'a', [
          'python3',
          '-c',
          "import socket; print(socket.create_connection(('127.0.0.1', 7000)).recv(64).decode().strip())",
        ]);
        if (r.code === 0) return Number(r.stdout.trim());
        await sleep(100);
      }
      throw new Error('the counter never answered on port 7000');
    };
    const first = await ask();
    await sleep(500);
    const second = await ask();
    assert.ok(second > first, `counter grows over TCP: ${first} then ${second}`);
    const file = await inHost(state, 'a', ['cat', `${CONTAINERS_DIR}/ctr/upper/var/lib/counter/value`]);
    assert.ok(Number(file.stdout) >= second, `the file follows: ${file.stdout}`);

    const logs = must(cli('logs', 'ctr'), 'logs').stdout;
    assert.match(logs, /counter: listening on port 7000/);

    const dup = cli('run', '--host', 'b', '--name', 'ctr', '--', 'sleep', '60');
    assert.equal(dup.code, 2);
    assert.match(dup.stderr, /a container named "ctr" already exists on host a/);
  });

  test('the memory limit kills a memchange asking for more', async () => {
    must(
      cli(
        'run',
        '--host',
        'a',
        '--name',
        'hog',
        '--memory',
        '64M',
        '--',
        'python3',
        '/opt/precog/workloads/memchange.py',
        '--size',
        '256',
      ),
      'run hog',
    );
    must(
      cli(
        'run',
        '--host',
        'a',
        '--name',
        'fits',
        '--memory',
        '256M',
        '--',
        'python3',
        '/opt/precog/workloads/memchange.py',
        '--size',
        '64',
        '--rate',
        '12',
      ),
      'run fits',
    );
    let hog: ContainerInfo | undefined;
    for (let i = 0; i < 100; i++) {
      hog = ps().find((x) => x.name === 'hog');
      if (hog?.status === 'exited') break;
      await sleep(100);
    }
    assert.equal(hog?.status, 'exited', 'the 256 MiB memchange in a 64 MiB container is killed');
    await sleep(2500);
    const fits = ps().find((x) => x.name === 'fits');
    assert.equal(fits?.status, 'running', 'a 64 MiB memchange fits in 256 MiB');
    assert.match(must(cli('logs', 'fits'), 'logs').stdout, /memchange: 16384 pages/);
    for (const n of ['hog', 'fits']) must(cli('stop', n), `stop ${n}`);
  });

  test('criu dump of a container (file-only counter) succeeds inside the host', async () => {
    must(
      cli(
        'run',
        '--host',
        'a',
        '--name',
        'ck',
        '--',
        'python3',
        '/opt/precog/workloads/counter.py',
        '--port',
        '0',
      ),
      'run',
    );
    const c = ps().find((x) => x.name === 'ck')!;
    await sleep(300);
    const r = await inHost(state, 'a', [
      'sh',
      '-c',
      `mkdir -p /tmp/ck && criu dump -t ${c.pid} -D /tmp/ck -o dump.log; rc=$?; grep -E 'Error|FAILED' /tmp/ck/dump.log | grep -v RLIMIT_NOFILE; exit $rc`,
    ]);
    assert.equal(r.code, 0, `criu dump failed:\n${r.stdout}${r.stderr}`);
    assert.equal(ps().find((x) => x.name === 'ck')?.status, 'exited', 'dump stops the container');
    must(cli('stop', 'ck'), 'stop ck');
  });

  test('stop removes the process, the cgroups and the layer', async () => {
    const c = ps().find((x) => x.name === 'ctr')!;
    must(cli('stop', 'ctr'), 'stop');
    assert.equal(existsSync(`/proc/${c.machinePid!.pid}`), false, 'process gone');
    for (const cg of c.cgroups) assert.equal(existsSync(cg), false, `cgroup ${cg} gone`);
    assert.equal(existsSync(join(hostDir(), 'ctr')), false, 'layer gone');
    // The overlay was mounted only in the container's mount namespace; no mount of it is left anywhere.
    assert.doesNotMatch(readFileSync('/proc/self/mountinfo', 'utf8'), /containers\/ctr/);
    const init = state.hosts[0].init!.pid;
    assert.doesNotMatch(readFileSync(`/proc/${init}/mountinfo`, 'utf8'), /containers\/ctr/);
    assert.equal(ps().length, 0);
    const again = cli('stop', 'ctr');
    assert.equal(again.code, 2);
    assert.match(again.stderr, /no container named "ctr"/);
  });
});
