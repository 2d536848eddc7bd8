// The container-move driver and the agent's restorer against a fake runtime: switchover, rollback and post-copy
// resume without root, CRIU or test hosts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ContainerRestorer } from '../src/agent/restore.ts';
import { moveContainer, resumeMove, type MoveProgress } from '../src/migrate/driver.ts';
import { parseStrategy, isPostcopy } from '../src/policy/index.ts';
import type { CheckpointResult, ContainerInfo, LazyResult } from '../src/runtime/container.ts';
import { makeRuntime, runtimeNames } from '../src/runtime/index.ts';
import type { MovableRuntime, MoveRestoreOptions, PostcopyPending } from '../src/runtime/registry.ts';
import { FrameType, jsonFrame, decodeFrame, parseJson } from '../src/transport/frame.ts';
import { UsageError } from '../src/util/errors.ts';
import { createLogger } from '../src/util/log.ts';

type Status = ContainerInfo['status'];

/** Containers as a map of host -> name -> status; every call is recorded. */
class FakeRuntime implements MovableRuntime {
  readonly kind = 'fake';
  readonly lazyRestore = true;
  keepsProcessesAfterDump = true;
  lazyDump = false;
  readonly imageHint = 'none';
  recoverHint(name: string): string {
    return `fake restore ${name}`;
  }
  cannotRun(): string | null {
    return null;
  }
  readonly hosts = new Map<string, Map<string, Status>>([
    ['a', new Map()],
    ['b', new Map()],
  ]);
  readonly calls: string[] = [];
  readonly pending = new Map<string, PostcopyPending>();
  lazy: Promise<LazyResult> | undefined;
  failRestore: Error | null = null;

  private on(host: string): Map<string, Status> {
    const h = this.hosts.get(host);
    if (!h) throw new UsageError(`no host ${host}`);
    return h;
  }
  private info(name: string, host: string, status: Status): ContainerInfo {
    return {
      schema: 'test',
      name,
      host,
      runtime: this.kind,
      command: ['sleep'],
      created: '',
      memoryBytes: null,
      pid: 42,
      machinePid: null,
      status,
      dir: '/nowhere',
      cgroups: [],
    };
  }
  async locate(name: string, host: string): Promise<ContainerInfo> {
    const status = this.on(host).get(name);
    if (!status)
      throw new UsageError(
        `no container named "${name}" on host ${host}; there: ${[...this.on(host).keys()].join(', ') || 'none'}`,
      );
    return this.info(name, host, status);
  }
  async checkpoint(
    name: string,
    dir: string,
    opts: { host?: string; keepFrozen?: boolean } = {},
  ): Promise<CheckpointResult> {
    this.calls.push(`checkpoint ${name}@${opts.host}`);
    if (opts.keepFrozen) this.on(opts.host!).set(name, 'frozen');
    return { dir, name, host: opts.host!, frozenMs: 1, dumpMs: 1, imageBytes: 0, layerBytes: 0 };
  }
  async resumeSource(name: string, host: string): Promise<void> {
    this.calls.push(`resumeSource ${name}@${host}`);
    if (this.on(host).get(name) === 'frozen') this.on(host).set(name, 'running');
  }
  async freeze(name: string, host = 'a'): Promise<void> {
    this.calls.push(`freeze ${name}@${host}`);
    this.on(host).set(name, 'frozen');
  }
  async thaw(name: string, host = 'a'): Promise<void> {
    this.calls.push(`thaw ${name}@${host}`);
    this.on(host).set(name, 'running');
  }
  async remove(name: string, host: string): Promise<void> {
    this.calls.push(`remove ${name}@${host}`);
    this.on(host).delete(name);
  }
  async restore(dir: string, host: string, opts: MoveRestoreOptions = {}): Promise<ContainerInfo> {
    this.calls.push(
      `restore ${dir}@${host}${opts.lazy ? ' lazy' : ''}${opts.lazyPageServer ? ' pageserver' : ''}`,
    );
    if (this.failRestore) throw this.failRestore;
    this.on(host).set('web', 'running');
    return this.info('web', host, 'running');
  }
  has(name: string, host: string): boolean {
    return this.on(host).has(name);
  }
  imageOf(): string | null {
    return 'img:1';
  }
  hasImage(image: string): boolean {
    return image === 'img:1';
  }
  lazyDone(): Promise<LazyResult> | undefined {
    return this.lazy;
  }
  forgetLazy(): void {
    this.lazy = undefined;
  }
  async setPostcopyPending(name: string, host: string, p: PostcopyPending | null): Promise<void> {
    if (p) this.pending.set(`${name}@${host}`, p);
    else this.pending.delete(`${name}@${host}`);
  }
  async postcopyPending(name: string, host: string): Promise<PostcopyPending | undefined> {
    return this.pending.get(`${name}@${host}`);
  }
}

const spec = (rt: FakeRuntime) => ({ rt, name: 'web', from: 'a', to: 'b' });
const progress = (): MoveProgress => ({ migrationId: 'web-1', resumedThere: false });

test('a move removes the source only after the transfer confirmed', async () => {
  const rt = new FakeRuntime();
  rt.hosts.get('a')!.set('web', 'running');
  const r = await moveContainer(spec(rt), progress(), async (info, dump) => {
    assert.equal(info.status, 'running');
    await dump('/tmp/x');
    assert.equal(rt.hosts.get('a')!.get('web'), 'frozen', 'the dump leaves the source frozen');
    assert.ok(!rt.calls.some((c) => c.startsWith('remove')), 'nothing removed before the confirmation');
    return 'confirmed';
  });
  assert.equal(r, 'confirmed');
  assert.equal(rt.hosts.get('a')!.has('web'), false);
  assert.deepEqual(rt.calls, ['checkpoint web@a', 'remove web@a']);
});

test('a failure before the confirmation thaws the source, which keeps running', async () => {
  const rt = new FakeRuntime();
  rt.hosts.get('a')!.set('web', 'running');
  await assert.rejects(
    moveContainer(spec(rt), progress(), async (_info, dump) => {
      await dump('/tmp/x');
      throw Object.assign(new Error('the destination refused: restore failed'), { exitCode: 1 });
    }),
    (err: Error & { exitCode?: number }) => {
      assert.match(err.message, /restore failed\nthe source keeps running on a/);
      assert.equal(err.exitCode, 1);
      return true;
    },
  );
  assert.equal(rt.hosts.get('a')!.get('web'), 'running');
  assert.ok(rt.calls.includes('resumeSource web@a'));
  assert.ok(!rt.calls.some((c) => c.startsWith('remove')));
});

/** A post-copy move of web a -> b whose link is lost once the copy at b resumed. */
function postcopyCutAfterSwitchover(rt: FakeRuntime): Promise<unknown> {
  rt.hosts.get('a')!.set('web', 'running');
  const p = progress();
  return moveContainer(spec(rt), p, async (_info, dump) => {
    await dump('/tmp/x');
    p.resumedThere = true;
    throw new Error('link lost');
  });
}

test('a post-copy that fails after the destination resumed keeps the source frozen and records it', async () => {
  const rt = new FakeRuntime();
  await assert.rejects(
    postcopyCutAfterSwitchover(rt),
    /post-copy failed after the container resumed on b: link lost[\s\S]*precog migrate web --from a --to b --resume/,
  );
  assert.equal(rt.hosts.get('a')!.get('web'), 'frozen', 'neither copy may run on by itself');
  assert.equal((await rt.postcopyPending('web', 'a'))?.migrationId, 'web-1');
  assert.ok(!rt.calls.includes('resumeSource web@a'));
  // --resume: the push completes, then the source goes.
  const done = await resumeMove(spec(rt), async (source, pending) => {
    assert.equal(source.status, 'frozen');
    assert.equal(pending.to, 'b');
    return 7;
  });
  assert.equal(done.result, 7);
  assert.equal(rt.hosts.get('a')!.has('web'), false);
});

test('a post-copy that fails after the switchover, with a runtime whose dump ended the source: the way back is named', async () => {
  const rt = new FakeRuntime();
  rt.keepsProcessesAfterDump = false;
  await assert.rejects(
    postcopyCutAfterSwitchover(rt),
    (err: Error) =>
      /post-copy failed after the container resumed on b: link lost/.test(err.message) &&
      /--resume cannot take a fake post-copy up again/.test(err.message) &&
      /remove the copy on b, then on a: fake restore web/.test(err.message) &&
      !/--from a --to b --resume/.test(err.message),
  );
  // Not resumed (its memory is older than the copy that ran at b), not removed, nothing recorded for --resume.
  assert.ok(!rt.calls.includes('resumeSource web@a'));
  assert.ok(!rt.calls.some((c) => c.startsWith('remove')));
  assert.equal(await rt.postcopyPending('web', 'a'), undefined);
});

test('resume without an interrupted post-copy, a missing container and a stopped one are usage errors', async () => {
  const rt = new FakeRuntime();
  rt.hosts.get('a')!.set('web', 'running');
  await assert.rejects(
    resumeMove(spec(rt), async () => 0),
    /no interrupted post-copy/,
  );
  await assert.rejects(
    moveContainer({ ...spec(rt), name: 'db' }, progress(), async () => 0),
    (err: Error) =>
      err instanceof UsageError && /no container named "db" on host a; there: web/.test(err.message),
  );
  rt.hosts.get('a')!.set('web', 'exited');
  await assert.rejects(
    moveContainer(spec(rt), progress(), async () => 0),
    /web is exited/,
  );
  await assert.rejects(
    moveContainer({ ...spec(rt), to: 'a' }, progress(), async () => 0),
    /already on host a/,
  );
});

test('post-copy is a property of the strategy, not of its name', () => {
  assert.equal(isPostcopy(parseStrategy('postcopy')), true);
  assert.equal(isPostcopy(parseStrategy('hybrid')), true);
  assert.equal(isPostcopy(parseStrategy('hybrid:rounds=2')), true);
  assert.equal(isPostcopy(parseStrategy('precopy')), false);
  assert.equal(isPostcopy(parseStrategy('cold')), false);
  assert.equal(parseStrategy('cold').restore, 'full');
});

test('runtimes are registered by name; an unknown one names those that exist', () => {
  assert.ok(runtimeNames().includes('precog'));
  assert.throws(
    () => makeRuntime('lxc'),
    (err: Error) =>
      err instanceof UsageError && /unknown runtime "lxc"; registered: precog/.test(err.message),
  );
});

const log = createLogger('test', 'silent');
const hello = { runtime: 'fake', name: 'web', from: 'a', restore: 'lazy' as const };

test("the agent's restorer answers RESUMED with its report once every page is in", async () => {
  const rt = new FakeRuntime();
  let finish!: (r: LazyResult) => void;
  rt.lazy = new Promise((r) => (finish = r));
  const restorer = new ContainerRestorer(rt, hello, 'b', log);
  restorer.commitMs = 12;
  let settled = false;
  const restoring = restorer.restore('/agent/m1/checkpoint', { lazyWait: true }).then(() => (settled = true));
  await new Promise((r) => setTimeout(r, 20));
  assert.equal(settled, false, 'a lazy restore is not confirmed before its pages are in');
  finish({ lazyPages: 100, eagerPages: 3, ms: 5 });
  await restoring;
  assert.deepEqual(rt.calls, ['restore /agent/m1/checkpoint@b lazy']);
  const resumed = parseJson<{ resumedAt: number; restore: Record<string, unknown> }>(
    decodeFrame(restorer.withReport(jsonFrame(FrameType.Resumed, { resumedAt: 1 }))),
  );
  assert.equal(resumed.resumedAt, 1);
  assert.equal(resumed.restore.lazyPages, 100);
  assert.equal(resumed.restore.commitMs, 12);
  assert.equal(resumed.restore.mode, 'lazy');
  assert.equal(resumed.restore.pid, 42);
  assert.ok((resumed.restore.sinceRunningMs as number) >= 15);
  // Other frames pass as they are.
  const other = jsonFrame(FrameType.Error, { x: 1 });
  assert.equal(restorer.withReport(other), other);
});

test("the agent's restorer removes its copy when the lazy copy-in fails, and reports a failed restore", async () => {
  const rt = new FakeRuntime();
  rt.lazy = Promise.reject(new Error('criu lazy-pages failed (exit 1)'));
  const restorer = new ContainerRestorer(rt, hello, 'b', log);
  await assert.rejects(restorer.restore('/agent/m1/checkpoint', { lazyWait: true }), /lazy-pages failed/);
  assert.equal(rt.hosts.get('b')!.has('web'), false, 'the restored copy is gone');
  assert.ok(rt.calls.includes('remove web@b'));

  const rt2 = new FakeRuntime();
  rt2.failRestore = new Error('criu restore failed');
  const r2 = new ContainerRestorer(rt2, { ...hello, switchover: 'postcopy' }, 'b', log);
  await assert.rejects(
    r2.restore('/c', { lazyWait: false, pageServer: { attach: () => {} } }),
    /criu restore failed/,
  );
  assert.deepEqual(rt2.calls, ['restore /c@b lazy pageserver']);
});

test('precog check names a CRIU that is too old, and the fix', async () => {
  const { mkdtempSync, writeFileSync, rmSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const { join } = await import('node:path');
  const { hostChecks } = await import('../src/runtime/check.ts');
  const dir = mkdtempSync(join(tmpdir(), 'precog-criu-'));
  writeFileSync(join(dir, 'criu'), '#!/bin/sh\necho "Version: 3.17"\n', { mode: 0o755 });
  const path = process.env.PATH;
  process.env.PATH = `${dir}:${path}`;
  try {
    const criu = hostChecks(false).find((c) => c.what === 'criu')!;
    assert.equal(criu.ok, false);
    assert.equal(criu.detail, 'criu 3.17');
    assert.match(criu.fix!, /CRIU >= 4\.0/);
    writeFileSync(join(dir, 'criu'), '#!/bin/sh\necho "Version: 4.2.1"\n', { mode: 0o755 });
    assert.equal(hostChecks(false).find((c) => c.what === 'criu')!.ok, true);
  } finally {
    process.env.PATH = path;
    rmSync(dir, { recursive: true, force: true });
  }
});

test("a container's base image is named by its recipe; a host built from another recipe lacks it", async () => {
  const { mkdtempSync, writeFileSync, rmSync, mkdirSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const { join } = await import('node:path');
  const { NamespaceRuntime, baseImageId } = await import('../src/runtime/container.ts');
  const dir = mkdtempSync(join(tmpdir(), 'precog-image-'));
  const stamp = (root: string, packages: string[], builtAt: string) => {
    mkdirSync(root, { recursive: true });
    writeFileSync(
      join(root, '.precog-rootfs.json'),
      JSON.stringify({ suite: 'trixie', packages, criuSuite: 'forky', builtAt }),
    );
  };
  try {
    stamp(join(dir, 'a'), ['criu', 'redis-server'], '2026-01-01');
    stamp(join(dir, 'b'), ['criu', 'redis-server'], '2026-02-02'); // built elsewhere, same recipe
    stamp(join(dir, 'c'), ['criu'], '2026-01-01');
    const site = (name: string) => ({
      name,
      containersDir: join(dir, name, 'containers'),
      rootfs: join(dir, name),
      nsPid: null,
      netns: null,
      cgroupParent: null,
      serviceNet: null,
      local: true,
      command: (argv: readonly string[]) => ({ cmd: argv[0], args: argv.slice(1), env: process.env }),
      path: (p: string) => p,
      fsPath: (p: string) => p,
    });
    const id = baseImageId(join(dir, 'a'))!;
    assert.match(id, /^trixie:[0-9a-f]{16}$/);
    assert.equal(baseImageId(join(dir, 'b')), id, 'the build time is not part of the identity');
    assert.equal(new NamespaceRuntime(() => [site('b')]).hasImage(id), true);
    assert.equal(new NamespaceRuntime(() => [site('c')]).hasImage(id), false);
    assert.equal(baseImageId(join(dir, 'none')), null);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
