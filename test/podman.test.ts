// The Podman runtime: `precog migrate --runtime podman` moves a real Podman container between the test hosts, and
// the result is a Podman container at the destination (podman ps, logs, exec, rm work on it). Needs root and its
// own testbed (the hosts' root filesystem has podman, runc and CRIU; the test image is loaded at testbed up).
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { describe, test } from 'node:test';
import { ensurePodmanImageArchive, PODMAN_TEST_IMAGE } from '../src/runtime/podman-image.ts';
import { ensureRootfs } from '../src/runtime/rootfs.ts';
import { PODMAN_ENV } from '../src/runtime/site.ts';
import { PODMAN_LAZY_DIR } from '../src/runtime/podman-lazy.ts';
import {
  hostCommand,
  hostPath,
  loadPodmanImage,
  readState,
  type TestbedState,
} from '../src/runtime/testbed.ts';
import { dirname } from 'node:path';
import { inHost, must, precog, type Ran } from './support/cli.ts';
import { startServiceClient, type ServiceClient } from '../src/runtime/svcclient.ts';
import { agentLeftovers as leftovers, memcheckOf, migrateJson, migrateWhile } from './support/moves.ts';
import { sharedTestbed } from './support/testbed.ts';

const cli = (...args: string[]): Ran => precog(args);
const IS_ROOT = process.getuid?.() === 0;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const skip = !IS_ROOT
  ? 'needs root: containers live in the test hosts'
  : readState()
    ? 'a testbed is already up (someone else may be using it); not touching it'
    : false;

describe('Podman containers moved between the test hosts', { skip }, () => {
  let state: TestbedState;

  /** podman ARGS in HOST, its output (exit code checked by the caller through `code`). */
  const podman = (host: string, ...args: string[]): Ran => {
    const c = hostCommand(state, host, ['podman', ...args], PODMAN_ENV);
    const r = spawnSync(c.cmd, c.args, { env: c.env, encoding: 'utf8' });
    return { code: r.status, stdout: r.stdout, stderr: r.stderr };
  };
  const names = (host: string): string[] =>
    must(podman(host, 'ps', '-a', '--format', '{{.Names}} {{.State}}'), 'podman ps')
      .stdout.split('\n')
      .filter(Boolean);

  const { memcheck, waitChecks } = memcheckOf((host, name, argv) => podman(host, 'exec', name, ...argv));
  const agentLeftovers = (host: string): string[] => leftovers(state, host);
  /** What precog keeps of Podman's lazy restores on host H (podman-lazy.ts), by this process's path. */
  const lazyDir = (h: string) =>
    hostPath(
      state.hosts.find((x) => x.name === h)!,
      PODMAN_LAZY_DIR,
    );
  const lazyLeftovers = (h: string): string[] => (existsSync(lazyDir(h)) ? readdirSync(lazyDir(h)) : []);
  /** Moves pmc FROM -> TO with STRATEGY; its JSON report. */
  const movePmc = (from: string, to: string, strategy: string) =>
    migrateJson('pmc', 'podman', from, to, strategy);
  /** The source went on: the container runs on HOST with its memory checks going on, the other agent keeps nothing. */
  const sourceWentOn = async (host: string, other: string, before: { checks: number }) => {
    const s = await waitChecks(host, 'pmc', before.checks);
    assert.ok(s.ok && s.checks > before.checks, s.line);
    assert.ok(names(host).includes('pmc running'), names(host).join(', '));
    assert.ok(
      !names(other).some((n) => n.startsWith('pmc ')),
      `${other} has a copy: ${names(other).join(', ')}`,
    );
    for (let i = 0; i < 50 && agentLeftovers(other).length > 0; i++) await sleep(200);
    assert.deepEqual(agentLeftovers(other), []);
  };

  /** The test image back in b's Podman after a test took it away (the testbed's own loading, again). */
  const reloadImage = async () => {
    const rootfs = await ensureRootfs();
    await loadPodmanImage(state, await ensurePodmanImageArchive(rootfs, dirname(rootfs.dir)));
  };

  sharedTestbed({ rate: 'none' }, async (s) => {
    state = s;
    must(
      podman(
        'a',
        'run',
        '-d',
        '--name',
        'pmc',
        '--network',
        'none',
        '-v',
        '/opt/precog/workloads:/w:ro',
        PODMAN_TEST_IMAGE,
        'python3',
        '/w/memcheck.py',
        '--size',
        '64',
        '--rate',
        '5',
      ),
      'podman run memcheck',
    );
    for (let i = 0; i < 100 && podman('a', 'exec', 'pmc', 'cat', '/tmp/memcheck.status').code !== 0; i++)
      await sleep(100);
  });

  test('the test image has the same ID on both hosts (a checkpoint names its image by ID)', () => {
    const id = (h: string) =>
      must(podman(h, 'image', 'inspect', '--format', '{{.Id}}', PODMAN_TEST_IMAGE), 'inspect').stdout;
    assert.equal(id('a'), id('b'));
  });

  test('bad input: an unknown runtime or container is a usage error naming what exists', () => {
    let r = cli('migrate', 'pmc', '--runtime', 'docker', '--from', 'a', '--to', 'b');
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /--runtime docker: unknown; registered: precog, podman, runc, crun/);
    r = cli('migrate', 'nosuch', '--runtime', 'podman', '--from', 'a', '--to', 'b');
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /no Podman container nosuch on host a; there: pmc/);
    assert.ok(names('a').includes('pmc running'));
  });

  test('a read-write bind mount (its data would stay behind) is refused before the stop, exit 2', () => {
    must(
      podman(
        'a',
        'run',
        '-d',
        '--name',
        'prw',
        '--network',
        'none',
        '-v',
        '/srv:/data',
        PODMAN_TEST_IMAGE,
        'sleep',
        '600',
      ),
      'run',
    );
    try {
      const r = cli('migrate', 'prw', '--runtime', 'podman', '--from', 'a', '--to', 'b');
      assert.equal(r.code, 2, r.stderr);
      assert.match(r.stderr, /cannot move Podman container prw: bind mount \/srv -> \/data is read-write/);
      assert.ok(names('a').includes('prw running'), names('a').join(', '));
      assert.ok(!names('b').some((n) => n.startsWith('prw ')));
    } finally {
      podman('a', 'rm', '-f', '--time', '0', 'prw');
    }
  });

  test('precopy a -> b: a Podman container at b, every page intact, its writable layer along, nothing left on a', async () => {
    must(
      podman(
        'a',
        'exec',
        'pmc',
        'sh',
        '-c',
        'mkdir -p /data && echo "written before the move" > /data/note.txt',
      ),
      'write',
    );
    const id = must(podman('a', 'inspect', '--format', '{{.Id}}', 'pmc'), 'inspect').stdout.trim();
    const before = memcheck('a', 'pmc');
    const r = must(
      cli('migrate', 'pmc', '--runtime', 'podman', '--from', 'a', '--to', 'b', '--json'),
      'migrate',
    );
    const report = JSON.parse(r.stdout) as Record<string, number | string>;
    process.stdout.write(`# podman precopy 64 MiB: ${JSON.stringify({ ...report, metrics: undefined })}\n`);
    // Podman's restore made lazy by precog's CRIU configuration file (podman-lazy.ts): the default, as for runc.
    assert.equal(report.restoreMode, 'lazy');
    assert.ok(Number(report.liveRounds) >= 1, 'live rounds ran');
    assert.ok(Number(report.pagesUnchanged) > 10_000, `pages already at b: ${report.pagesUnchanged}`);
    assert.ok(Number(report.pagesFinal) < 5_000, `pages sent stopped: ${report.pagesFinal}`);
    // A Podman container at b: the same container (ID), running, with its logs; none at a.
    assert.ok(names('b').includes('pmc running'), names('b').join(', '));
    assert.equal(must(podman('b', 'inspect', '--format', '{{.Id}}', 'pmc'), 'inspect b').stdout.trim(), id);
    assert.match(must(podman('b', 'logs', 'pmc'), 'logs').stdout, /memcheck: 16384 pages/);
    assert.deepEqual(names('a'), [], 'a keeps no trace of the container');
    const s = await waitChecks('b', 'pmc', before.checks);
    assert.ok(s.ok, `memory check after the move: ${s.line}`);
    assert.ok(
      s.checks > before.checks && s.rewrites > before.rewrites,
      `went on: ${before.line} -> ${s.line}`,
    );
    assert.equal(
      must(podman('b', 'exec', 'pmc', 'cat', '/data/note.txt'), 'note').stdout,
      'written before the move\n',
    );
    assert.deepEqual(agentLeftovers('b'), []);
    assert.deepEqual(agentLeftovers('a'), []);
  });

  test('cold b -> a: the same container moves back intact', async () => {
    const before = memcheck('b', 'pmc');
    const report = movePmc('b', 'a', 'cold');
    assert.equal(report.liveRounds, 0);
    // Lazily even for cold: Podman's full restore would archive, unpack and restore every page first.
    assert.equal(report.restoreMode, 'lazy');
    assert.ok(names('a').includes('pmc running'));
    assert.deepEqual(names('b'), []);
    const s = await waitChecks('a', 'pmc', before.checks);
    assert.ok(s.ok && s.checks > before.checks, s.line);
    assert.equal(
      must(podman('a', 'exec', 'pmc', 'cat', '/data/note.txt'), 'note').stdout,
      'written before the move\n',
    );
  });

  test("post-copy a -> b, then hybrid back: Podman's restore made lazy, pages from the source, memory intact, no file of the restore left", async () => {
    const before = memcheck('a', 'pmc');
    const report = movePmc('a', 'b', 'postcopy');
    const pc = report.postcopy as { pages: number } | null;
    assert.equal(report.restoreMode, 'lazy');
    assert.equal(report.liveRounds, 0);
    // The stop sent no memory: every page came after the switchover, from a's page server.
    assert.ok(pc && pc.pages > 10_000, JSON.stringify(pc));
    assert.ok(Number(report.pagesFinal) < 1_000, `pages sent stopped: ${report.pagesFinal}`);
    assert.ok(names('b').includes('pmc running'), names('b').join(', '));
    assert.deepEqual(names('a'), []);
    let s = await waitChecks('b', 'pmc', before.checks);
    assert.ok(s.ok && s.checks > before.checks, s.line);
    assert.equal(
      must(podman('b', 'exec', 'pmc', 'cat', '/data/note.txt'), 'note').stdout,
      'written before the move\n',
    );
    // The configuration file, images and daemon log of the lazy restore are gone once every page is in.
    assert.deepEqual(lazyLeftovers('b'), []);
    // The container keeps Podman's own checkpoint and restore (its spec names the removed file: CRIU ignores it).
    must(podman('b', 'container', 'checkpoint', 'pmc'), 'checkpoint at b');
    must(podman('b', 'container', 'restore', 'pmc'), 'restore at b');
    const mid = memcheck('b', 'pmc');
    movePmc('b', 'a', 'hybrid');
    assert.ok(names('a').includes('pmc running'), names('a').join(', '));
    assert.deepEqual(names('b'), []);
    s = await waitChecks('a', 'pmc', mid.checks);
    assert.ok(s.ok && s.checks > mid.checks, s.line);
    assert.deepEqual(agentLeftovers('a'), []);
    assert.deepEqual(agentLeftovers('b'), []);
  });

  test('the image is missing at the destination: refused before the container stops', async () => {
    must(podman('b', 'rmi', PODMAN_TEST_IMAGE), 'rmi');
    try {
      const before = memcheck('a', 'pmc');
      const r = cli('migrate', 'pmc', '--runtime', 'podman', '--from', 'a', '--to', 'b');
      assert.notEqual(r.code, 0);
      assert.match(r.stderr, /image/);
      assert.match(r.stderr, /source keeps running on a/);
      await sourceWentOn('a', 'b', before);
    } finally {
      await reloadImage();
    }
  });

  test('the restore fails at the destination after the stop: the source is restored in place and goes on', async () => {
    // The image goes away at b during the live rounds: the destination's check at the start passes, its restore
    // (after the source stopped) fails.
    const before = memcheck('a', 'pmc');
    const r = await migrateWhile(
      state,
      { name: 'pmc', runtime: 'podman', from: 'a', to: 'b' },
      () => must(podman('b', 'rmi', PODMAN_TEST_IMAGE), 'rmi'),
      reloadImage,
    );
    assert.equal(r.code, 1, r.stderr + r.stdout);
    assert.match(r.stderr, /podman container restore failed.*precog-base/);
    assert.match(r.stderr, /source keeps running on a/);
    await sourceWentOn('a', 'b', before);
    // The lazy restore's images and configuration file went with the failed restore.
    assert.deepEqual(lazyLeftovers('b'), []);
  });

  test('redis in Podman: keys written before the move are read back at the destination', () => {
    must(
      podman(
        'a',
        'run',
        '-d',
        '--name',
        'predis',
        '--network',
        'none',
        PODMAN_TEST_IMAGE,
        'redis-server',
        '--save',
        '',
        '--appendonly',
        'no',
      ),
      'podman run redis',
    );
    try {
      for (
        let i = 0;
        i < 50 && podman('a', 'exec', 'predis', 'redis-cli', 'ping').stdout.trim() !== 'PONG';
        i++
      )
        spawnSync('sleep', ['0.1']);
      must(
        podman(
          'a',
          'exec',
          'predis',
          'sh',
          '-c',
          'for k in $(seq 0 99); do redis-cli set k$k v$k >/dev/null; done',
        ),
        'set',
      );
      must(cli('migrate', 'predis', '--runtime', 'podman', '--from', 'a', '--to', 'b'), 'migrate redis');
      assert.equal(must(podman('b', 'exec', 'predis', 'redis-cli', 'dbsize'), 'dbsize').stdout.trim(), '100');
      assert.equal(
        must(podman('b', 'exec', 'predis', 'redis-cli', 'get', 'k42'), 'get').stdout.trim(),
        'v42',
      );
      assert.ok(!names('a').some((n) => n.startsWith('predis ')));
    } finally {
      podman('a', 'rm', '-f', 'predis');
      podman('b', 'rm', '-f', 'predis');
    }
  });

  // Podman's restore gives the new macvlan its address (and the interface announces its MAC over IPv6) before CRIU
  // has restored the socket: the destination holds the address (an nftables ingress drop on the parent interface)
  // until the restore returns, so a client retransmission in between is dropped, not answered with a reset.
  test("redis in Podman with its own address on the LAN: refused while b lacks its network; then moved with its client's TCP connection, 0 failed requests", async () => {
    // A macvlan network over each host's service bridge (the LAN that joins the hosts), the same on both hosts; the
    // container keeps its address and MAC (Podman restores them) and CRIU its established connections. At first
    // only a has it.
    const createNetwork = (h: string) =>
      must(
        podman(
          h,
          'network',
          'create',
          '--driver',
          'macvlan',
          '--opt',
          'parent=svc0',
          '--subnet',
          '10.213.80.0/24',
          '--gateway',
          '10.213.80.254',
          '--disable-dns',
          'svcnet',
        ),
        `network on ${h}`,
      );
    createNetwork('a');
    const address = '10.213.80.60';
    must(
      podman(
        'a',
        'run',
        '-d',
        '--name',
        'pnet',
        '--network',
        'svcnet',
        '--ip',
        address,
        PODMAN_TEST_IMAGE,
        'redis-server',
        '--save',
        '',
        '--appendonly',
        'no',
        '--protected-mode',
        'no',
      ),
      'podman run redis with an address',
    );
    let client: ServiceClient | undefined;
    try {
      for (let i = 0; i < 50 && !client; i++) {
        client = await startServiceClient(state, { address, port: 6379 }).catch(() => undefined);
        if (!client) await sleep(100);
      }
      assert.ok(client, `no redis answers at ${address}:6379 from the LAN`);
      await sleep(500);
      // b has no network svcnet: refused before the container stops, naming it; the client goes on against a.
      const refused = cli('migrate', 'pnet', '--runtime', 'podman', '--from', 'a', '--to', 'b');
      assert.notEqual(refused.code, 0);
      assert.match(refused.stderr, /network container pnet is attached to \(svcnet\) is not on this host/);
      assert.match(refused.stderr, /source keeps running on a/);
      const afterRefusal = client.replies();
      await sleep(500);
      assert.ok(client.replies() > afterRefusal, 'redis on a went on answering after the refusal');
      createNetwork('b');
      const before = client.replies();
      must(cli('migrate', 'pnet', '--runtime', 'podman', '--from', 'a', '--to', 'b'), 'migrate');
      for (let i = 0; i < 50 && client.replies() < before + 200; i++) await sleep(100);
      const r = await client.stop();
      client = undefined;
      process.stdout.write(`# podman redis with its own address, client: ${JSON.stringify(r)}\n`);
      assert.equal(r.failed, 0, `failed requests: ${r.errors.join('; ')}`);
      assert.equal(r.connections, 1, 'the client kept its one TCP connection');
      assert.ok(r.sequential, 'every reply was the previous one + 1: redis went on from its state');
      assert.ok(r.last > before + 100, `requests went on after the move: ${before} -> ${r.last}`);
      assert.ok(names('b').includes('pnet running'), names('b').join(', '));
      assert.ok(!names('a').some((n) => n.startsWith('pnet ')));
      // The hold on its address is gone with the restore.
      const tables = must(await inHost(state, 'b', ['nft', 'list', 'tables']), 'nft list tables').stdout;
      assert.doesNotMatch(tables, /precog_hold/);
    } finally {
      await client?.stop();
      podman('a', 'rm', '-f', 'pnet');
      podman('b', 'rm', '-f', 'pnet');
    }
  });
});
