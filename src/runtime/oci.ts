/**
 * The OCI runtimes runc and crun: containers a user runs from an OCI bundle (`runc run -d --bundle DIR NAME`),
 * moved with their bundle (config.json and the root filesystem: the container's writable state) through the
 * runtime's own checkpoint and restore, so that at the destination the result is a container of that runtime
 * (`runc list`, `runc exec`, `runc kill` and `runc delete` work on it).
 *
 * - Live rounds read the container's processes through /proc, as for any runtime (the engine's pre-copy).
 * - The stop is `runc checkpoint` into a directory the source keeps until the move ends: its page images are read
 *   there (only what the destination lacks is sent); the other images and a copy of the bundle go with the state.
 *   The checkpoint ends the container's processes, so a failed move restores the source in place from that kept
 *   checkpoint (`runc restore`, the same bundle).
 * - The destination agent puts the bundle in a directory of its own (/var/lib/precog/oci/NAME/bundle: never a path
 *   the source names), checks its config.json against what a peer may ask for (no hooks, no read-write bind
 *   mounts, no joining a namespace of this host) and runs `runc restore`, lazily with `criu lazy-pages` for
 *   post-copy (runc only: crun's restore has no lazy mode).
 *
 * A read-write bind mount (a volume) is refused at the source: its data stays on the source's disk, so a container
 * moved without it would run on another copy of its data. Read-only bind mounts must exist at the destination under
 * the same path: the destination checks that before the source stops (imageOf/hasImage).
 */
import { spawn, spawnSync } from 'node:child_process';
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { join, posix } from 'node:path';
import { UsageError } from '../util/errors.ts';
import {
  duBytes,
  LazyWatches,
  lazyTimeoutMs,
  readPending,
  writePending,
  validateName,
  type CheckpointOptions,
  type CheckpointResult,
  type ContainerInfo,
  type ContainerStatus,
  type LazyResult,
} from './container.ts';
import type { MovableRuntime, MoveRestoreOptions, PostcopyPending } from './registry.ts';
import { isPageImage } from '../criu/localdump.ts';
import { markLazy } from '../criu/lazy.ts';
import type { PsConnection } from '../criu/pageserver.ts';
import { killGroup, startLazyPages } from './lazypages.ts';
import { moveTree, removeTree, runTool } from './rootfs.ts';
import { bundleFilesRefusal, cleanAbsolute, isBindMount, specRefusal, type OciSpec } from './peerspec.ts';
import { HOST_DATA_DIR, localSite, type Site } from './site.ts';
import { procStart } from './testbed.ts';

/** Where a host keeps what precog holds of an OCI container (a path inside the host): OCI_DIR/NAME. */
export const OCI_DIR = posix.join(HOST_DATA_DIR, 'oci');

/** `runc state NAME`. */
interface OciState {
  id: string;
  pid: number;
  status: string;
  bundle: string;
  created: string;
}

const STATUS: Record<string, ContainerStatus> = {
  running: 'running',
  paused: 'frozen',
  pausing: 'frozen',
  created: 'created',
  stopped: 'stopped',
};

/**
 * Why a bundle's config.json must not be run here as a peer sent it, or null: peerspec.ts's checks, with the root
 * inside the bundle and no read-write bind mounts at all (their data would stay on the source).
 */
export function bundleRefusal(cfg: OciSpec): string | null {
  return specRefusal(cfg, { root: 'relative' });
}

export class OciRuntime implements MovableRuntime {
  readonly kind: string;
  readonly lazyRestore: boolean;
  readonly keepsProcessesAfterDump = false;
  readonly lazyDump = false;
  readonly imageHint =
    "the bundle's read-only bind mounts must exist here under the same paths: install or mount them";
  private readonly site: Site;
  /** Lazy restores whose pages are still being copied in. */
  private readonly lazy = new LazyWatches();

  /** `binary`: runc or crun (the same command line for what precog uses; crun's restore has no lazy mode). */
  constructor(
    private readonly binary: 'runc' | 'crun',
    site?: Site,
  ) {
    this.kind = binary;
    this.lazyRestore = binary === 'runc';
    this.site = site ?? localSite();
  }

  /** Runs the runtime in the host; rejects with the end of its error output. */
  private async oci(args: readonly string[]): Promise<string> {
    const c = this.site.command([this.binary, ...args]);
    const r = await runTool(c.cmd, c.args, { env: c.env });
    if (r.code === 0) return r.stdout;
    const why = r.stderr.trim().split('\n').slice(-3).join(' | ');
    throw new Error(`${this.binary} ${args[0]} failed (exit ${r.code}): ${why}`);
  }

  private state(name: string): OciState | undefined {
    const c = this.site.command([this.binary, 'state', name]);
    const r = spawnSync(c.cmd, c.args, { env: c.env, encoding: 'utf8' });
    if (r.status !== 0) return undefined;
    try {
      return JSON.parse(r.stdout) as OciState;
    } catch {
      return undefined;
    }
  }

  /** What precog keeps of container NAME on this host (kept checkpoint, a bundle that arrived), this process's path. */
  private dirOf(name: string): string {
    return this.site.fsPath(posix.join(OCI_DIR, validateName(name)));
  }

  private config(bundle: string): OciSpec {
    const file = join(this.site.fsPath(bundle), 'config.json');
    try {
      return JSON.parse(readFileSync(file, 'utf8')) as OciSpec;
    } catch (err) {
      throw new Error(`cannot read the bundle's config ${file}: ${(err as Error).message}`);
    }
  }

  private toInfo(s: OciState, host: string): ContainerInfo {
    const status = STATUS[s.status] ?? 'stopped';
    const pid = (status === 'running' || status === 'frozen') && s.pid > 0 ? s.pid : null;
    const start = pid && this.site.local ? procStart(pid) : undefined;
    let cfg: OciSpec = {};
    try {
      cfg = this.config(s.bundle);
    } catch {
      // a bundle that went away: the state still tells the rest
    }
    const limit = cfg.linux?.resources?.memory?.limit;
    return {
      schema: 'precog.container/v1',
      name: s.id,
      host,
      runtime: this.kind,
      command: cfg.process?.args ?? [],
      created: s.created,
      memoryBytes: typeof limit === 'number' && limit > 0 ? limit : null,
      pid,
      machinePid: pid && start !== undefined ? { pid, start } : null,
      status,
      dir: s.bundle,
      cgroups: [],
    };
  }

  private names(): string[] {
    const c = this.site.command([this.binary, 'list', '--format', 'json']);
    const r = spawnSync(c.cmd, c.args, { env: c.env, encoding: 'utf8' });
    try {
      return ((JSON.parse(r.stdout) as OciState[] | null) ?? []).map((s) => s.id);
    } catch {
      return [];
    }
  }

  async locate(name: string, host: string): Promise<ContainerInfo> {
    validateName(name);
    const s = this.state(name);
    if (!s) {
      const there = this.names();
      throw new UsageError(
        `no ${this.binary} container ${name} on host ${host}; there: ${there.length ? there.join(', ') : '(none)'}`,
      );
    }
    return this.toInfo(s, host);
  }

  /**
   * `runc checkpoint` into OCI_DIR/NAME/kept (kept until the move ends), then DIR: images/ (the images without the
   * memory; all of them with leaveStopped) and upper/ (a copy of the bundle). With keepFrozen or leaveStopped the
   * container's processes end with the checkpoint (resumeSource restores it in place from the kept images);
   * otherwise it runs on.
   */
  async checkpoint(
    name: string,
    dir: string,
    opts: CheckpointOptions & { host?: string } = {},
  ): Promise<CheckpointResult> {
    if (opts.pageServer)
      throw new UsageError(
        `--dump-via page-server: the ${this.binary} runtime dumps through ${this.binary} checkpoint (use --dump-via images)`,
      );
    const host = opts.host ?? this.site.name;
    const s = this.state(validateName(name));
    if (!s) throw new UsageError(`no ${this.binary} container ${name} on host ${host}`);
    const refusal = bundleRefusal(this.config(s.bundle));
    if (refusal) throw new UsageError(`cannot move ${this.binary} container ${name}: ${refusal}`);
    const d = this.site.fsPath(dir);
    mkdirSync(d, { recursive: true });
    for (const part of ['upper', 'images']) rmSync(join(d, part), { recursive: true, force: true });
    const keptIn = posix.join(OCI_DIR, name, 'kept');
    const kept = this.site.fsPath(keptIn);
    rmSync(kept, { recursive: true, force: true });
    mkdirSync(join(kept, 'images'), { recursive: true });
    writeFileSync(join(kept, 'bundle.json'), JSON.stringify({ bundle: s.bundle }) + '\n');
    const ends = opts.keepFrozen === true || opts.leaveStopped === true;
    const t0 = performance.now();
    await this.oci([
      'checkpoint',
      '--image-path',
      posix.join(keptIn, 'images'),
      '--work-path',
      posix.join(keptIn, 'images'),
      '--tcp-established',
      ...(ends ? [] : ['--leave-running']),
      name,
    ]).catch((err: Error) => {
      throw new Error(`${err.message} (log: ${posix.join(keptIn, 'images', 'dump.log')} on ${host})`);
    });
    const dumpMs = performance.now() - t0;
    // The bundle as the checkpoint left it (the processes ended: the files are from the same instant as memory).
    const upper = join(d, 'upper');
    const cp = spawnSync('cp', ['-a', '--reflink=auto', this.site.fsPath(s.bundle), upper], {
      encoding: 'utf8',
    });
    if (cp.status !== 0) throw new Error(`cannot copy the bundle ${s.bundle}: ${cp.stderr.trim()}`);
    const removing = opts.leaveStopped === true;
    mkdirSync(join(d, 'images'));
    for (const e of readdirSync(join(kept, 'images'), { withFileTypes: true }))
      if (e.isFile() && (removing || !isPageImage(e.name)) && !e.name.endsWith('.log'))
        copyFileSync(join(kept, 'images', e.name), join(d, 'images', e.name));
    const imageBytes = duBytes(join(kept, 'images'));
    if (removing) await this.remove(name);
    return {
      dir,
      name,
      host,
      frozenMs: performance.now() - t0,
      dumpMs,
      imageBytes,
      layerBytes: duBytes(upper),
      ...(removing ? {} : { pagesDir: join(kept, 'images') }),
    };
  }

  async resumeSource(name: string, host: string): Promise<void> {
    const s = this.state(validateName(name));
    if (s?.status === 'paused') await this.oci(['resume', name]);
    if (s) return;
    // Ended by its checkpoint: back from the kept images, in place (the same bundle).
    const keptIn = posix.join(OCI_DIR, name, 'kept');
    const kept = this.site.fsPath(keptIn);
    if (!existsSync(join(kept, 'images', 'inventory.img')))
      throw new Error(
        `${this.binary} container ${name} is gone from host ${host} and no checkpoint of it is kept`,
      );
    const { bundle } = JSON.parse(readFileSync(join(kept, 'bundle.json'), 'utf8')) as { bundle: string };
    await this.restoreFrom(name, posix.join(keptIn, 'images'), bundle, null);
    rmSync(kept, { recursive: true, force: true });
  }

  recoverHint(name: string): string {
    const kept = posix.join(OCI_DIR, validateName(name), 'kept');
    let bundle = 'BUNDLE';
    try {
      bundle = (
        JSON.parse(readFileSync(join(this.site.fsPath(kept), 'bundle.json'), 'utf8')) as { bundle: string }
      ).bundle;
    } catch {
      // not kept here: the user knows the bundle
    }
    const images = posix.join(kept, 'images');
    return `${this.binary} restore --detach --image-path ${images} --work-path ${images} --bundle ${bundle} ${name}`;
  }

  async freeze(name: string): Promise<void> {
    await this.oci(['pause', validateName(name)]);
  }

  async thaw(name: string): Promise<void> {
    await this.oci(['resume', validateName(name)]);
  }

  /**
   * Kills and deletes the container on this host, with what precog kept of it: the kept checkpoint, and the bundle
   * when it is precog's own (it arrived by a move). A bundle the user made stays where it is.
   */
  async remove(name: string): Promise<void> {
    if (this.state(validateName(name))) await this.oci(['delete', '--force', name]);
    this.forgetLazy(name);
    await removeTree(this.dirOf(name)).catch(() => {});
  }

  /**
   * `runc restore -d` of images IMAGES (a path in the host) with the bundle BUNDLE; lazily when `lazy` says how:
   * `criu lazy-pages` started first on the images (and asking the page server for post-copy). On failure the
   * container is deleted and the daemon ended; the error carries the restore log's error lines.
   */
  private async restoreFrom(
    name: string,
    images: string,
    bundle: string,
    lazy: { pageServer?: PsConnection; timeoutMs: number } | null,
  ): Promise<void> {
    const imagesHere = this.site.fsPath(images);
    let daemon: number | undefined;
    try {
      if (lazy)
        daemon = await startLazyPages(this.site, {
          images,
          workDir: images,
          ...(lazy.pageServer ? { pageServer: lazy.pageServer } : {}),
        });
      const c = this.site.command([
        this.binary,
        'restore',
        '--detach',
        '--image-path',
        images,
        '--work-path',
        images,
        '--bundle',
        bundle,
        '--tcp-established',
        ...(lazy ? ['--lazy-pages'] : []),
        name,
      ]);
      const code = await new Promise<number | null>((res, rej) => {
        const child = spawn(c.cmd, c.args, { env: c.env, stdio: 'ignore' });
        // A lazy restore that cannot get its pages would wait for ever: it gets the copy-in's limit.
        const timer = lazy ? setTimeout(() => child.kill('SIGKILL'), lazy.timeoutMs) : undefined;
        child.on('error', rej);
        child.on('close', (n) => {
          clearTimeout(timer);
          res(n);
        });
      });
      if (code !== 0) {
        let lines = '';
        try {
          lines = readFileSync(join(imagesHere, 'restore.log'), 'utf8')
            .split('\n')
            .filter((l) => l.includes('Error') && !l.includes('RLIMIT_NOFILE'))
            .slice(-6)
            .join('\n');
        } catch {
          // no log
        }
        throw new Error(
          `${this.binary} restore of ${name} failed (exit ${code})${lines ? `:\n${lines}` : ''}`,
        );
      }
    } catch (err) {
      if (daemon) killGroup(daemon);
      if (this.state(name)) await this.oci(['delete', '--force', name]).catch(() => {});
      throw err;
    }
  }

  /**
   * Restores the checkpoint in DIR: the bundle (upper/) goes to OCI_DIR/NAME/bundle once its config passes
   * bundleRefusal, the images to OCI_DIR/NAME/images, then `runc restore` (lazy: post-copy or lazy restore).
   */
  async restore(dir: string, host: string, opts: MoveRestoreOptions = {}): Promise<ContainerInfo> {
    const d = this.site.fsPath(dir);
    const saved = JSON.parse(readFileSync(join(d, 'state.json'), 'utf8')) as ContainerInfo;
    const name = validateName(saved.name);
    if (this.state(name)) throw new UsageError(`a ${this.binary} container named ${name} exists on ${host}`);
    const upper = posix.join(dir, 'upper');
    const cfg = this.config(upper);
    const refusal = bundleRefusal(cfg) ?? bundleFilesRefusal(this.site.fsPath(upper), cfg.root?.path ?? '');
    if (refusal) throw new UsageError(`refusing to restore ${name}: ${refusal}`);
    const lazy = opts.lazy === true || opts.lazyPageServer !== undefined;
    if (lazy && !this.lazyRestore)
      throw new UsageError(`${this.binary} restores in full only: no lazy restore or post-copy`);
    const inHost = posix.join(OCI_DIR, name);
    const here = this.dirOf(name);
    await removeTree(here).catch(() => {});
    // Root only: the bundle a peer sent may hold setuid files and device-free but owner-kept trees (the container's).
    mkdirSync(here, { recursive: true, mode: 0o700 });
    try {
      moveTree(join(d, 'upper'), join(here, 'bundle'));
      moveTree(join(d, 'images'), join(here, 'images'));
      const mark = lazy ? markLazy(join(here, 'images')) : null;
      if (lazy && !mark)
        throw new UsageError(
          'a lazy restore needs to tell the stack pages, which precog can only on x86_64: use --restore full',
        );
      const timeoutMs = opts.lazyTimeoutMs ?? lazyTimeoutMs();
      await this.restoreFrom(
        name,
        posix.join(inHost, 'images'),
        posix.join(inHost, 'bundle'),
        mark ? { ...(opts.lazyPageServer ? { pageServer: opts.lazyPageServer } : {}), timeoutMs } : null,
      );
      const running = performance.now();
      if (mark) this.lazy.watch(name, here, mark, running, timeoutMs);
      else await removeTree(join(here, 'images')).catch(() => {});
      const s = this.state(name);
      if (!s) throw new Error(`${this.binary} restore left no container ${name} on ${host}`);
      return this.toInfo(s, host);
    } catch (err) {
      try {
        copyFileSync(join(here, 'images', 'restore.log'), join(d, 'restore-failed.log'));
      } catch {
        // no log
      }
      await removeTree(here).catch(() => {});
      throw err;
    }
  }

  cannotRun(): string | null {
    const c = this.site.command([this.binary, '--version']);
    if (spawnSync(c.cmd, c.args, { env: c.env, stdio: 'ignore' }).status !== 0)
      return `${this.binary} is not installed: apt-get install ${this.binary}`;
    return null;
  }

  lazyDone(name: string): Promise<LazyResult> | undefined {
    return this.lazy.done(name);
  }

  forgetLazy(name: string): void {
    this.lazy.forget(name);
  }

  /**
   * What the destination must have: the host paths of the bundle's read-only bind mounts, as a JSON list. A bundle
   * that cannot move (bundleRefusal) is refused here, before anything stops.
   */
  imageOf(info: ContainerInfo): string | null {
    const cfg = this.config(info.dir);
    const refusal = bundleRefusal(cfg);
    if (refusal) throw new UsageError(`cannot move ${this.binary} container ${info.name}: ${refusal}`);
    const sources = [
      ...new Set((cfg.mounts ?? []).filter(isBindMount).map((m) => m.source as string)),
    ].sort();
    return sources.length ? JSON.stringify(sources) : null;
  }

  has(name: string): boolean {
    return this.state(validateName(name)) !== undefined;
  }

  /** Whether every host path of the source's list (imageOf, sent by the peer: checked as untrusted) exists here. */
  hasImage(image: string): boolean {
    let list: unknown;
    try {
      list = JSON.parse(image);
    } catch {
      return false;
    }
    return (
      Array.isArray(list) &&
      list.length <= 256 &&
      list.every((p) => cleanAbsolute(p) && existsSync(this.site.fsPath(p)))
    );
  }

  private pendingFile(name: string): string {
    return join(this.dirOf(name), 'postcopy.json');
  }

  async setPostcopyPending(name: string, _host: string, pending: PostcopyPending | null): Promise<void> {
    writePending(this.pendingFile(name), pending);
  }

  async postcopyPending(name: string): Promise<PostcopyPending | undefined> {
    return readPending(this.pendingFile(name));
  }
}
