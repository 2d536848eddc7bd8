/**
 * The Podman runtime: moves containers a user runs with Podman, by name or ID, so that at the destination the
 * result is a real Podman container (it shows in `podman ps` with its name; `podman logs`, `stop`, `rm` work on it).
 *
 * Podman keeps its own bookkeeping (container config, network status, the writable layer, /dev/shm), so precog goes
 * through Podman's own checkpoint format rather than around it:
 * - live rounds read the container's processes through /proc, as for any runtime (the engine's pre-copy);
 * - the stop is `podman container checkpoint --export` (CRIU under runc): its CRIU images become images/ and every
 *   other member of the archive (config.dump, spec.dump, rootfs-diff.tar, ...) the "writable layer" (upper/); the
 *   engine sends only the pages the destination does not already hold;
 * - the destination agent rebuilds images/ from its page store, puts the archive back together and runs
 *   `podman container restore --import` on it;
 * - a failed move restores the source in place from the checkpoint Podman kept (`--keep`).
 * Podman's restore has no lazy mode of its own: precog makes it lazy (post-copy, and a pre-copy's lazy restore) with
 * a CRIU configuration file the container's spec names for that restore (podman-lazy.ts).
 */
import { spawn, spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { isIP, isIPv4, isIPv6 } from 'node:net';
import { basename, dirname, join, posix } from 'node:path';
import { UsageError } from '../util/errors.ts';
import {
  duBytes,
  LazyWatches,
  lazyTimeoutMs,
  readPending,
  validateName,
  writePending,
  type CheckpointOptions,
  CheckpointResult,
  ContainerInfo,
  type ContainerStatus,
  type LazyResult,
} from './container.ts';
import {
  NETWORK_NAME,
  type MovableRuntime,
  type MoveRestoreOptions,
  type PostcopyPending,
} from './registry.ts';
import { isPageImage } from '../criu/localdump.ts';
import { markLazy } from '../criu/lazy.ts';
import { PODMAN_LAZY_DIR, prepareLazy, setCriuConfig } from './podman-lazy.ts';
import { cleanAbsolute, specRefusal, under, type OciSpec, type SpecPolicy } from './peerspec.ts';
import { runTool } from './rootfs.ts';
import { hasTool, HOST_DATA_DIR, localSite, PODMAN_ENV, type Site } from './site.ts';
import { procStart } from './testbed.ts';

/** The export archive inside a checkpoint directory while it is taken apart or put back together. */
const ARCHIVE = 'podman.tar';
/** Where the source keeps an interrupted move's record (a path inside the host). */
const PENDING_DIR = posix.join(HOST_DATA_DIR, 'podman-pending');

interface Inspect {
  Id: string;
  Name: string;
  Created: string;
  Path: string;
  Args: string[] | null;
  Image: string;
  ImageName?: string;
  StaticDir?: string;
  State: { Status: string; Pid: number; Checkpointed?: boolean };
  HostConfig?: { Memory?: number; NetworkMode?: string };
  NetworkSettings?: { Networks?: Record<string, unknown> | null };
}

const STATUS: Record<string, ContainerStatus> = {
  running: 'running',
  paused: 'frozen',
  created: 'created',
  configured: 'created',
  exited: 'exited',
  stopped: 'stopped',
};

export class PodmanRuntime implements MovableRuntime {
  readonly kind = 'podman';
  readonly lazyRestore = true;
  // Podman's full restore archives, unpacks and restores every page before the container runs (7-10 s for 1 GiB).
  readonly prefersLazyRestore = true;
  readonly keepsProcessesAfterDump = false;
  readonly lazyDump = false;
  readonly imageHint =
    'pull it by digest from the registry the source used, or podman save IMAGE there | podman load here';
  private readonly site: Site;
  private roots: string[] | undefined;
  /** Lazy restores whose pages are still being copied in. */
  private readonly lazy = new LazyWatches();

  constructor(site?: Site) {
    this.site = site ?? localSite();
  }

  private cmd(args: readonly string[]): { cmd: string; args: string[]; env: NodeJS.ProcessEnv } {
    const c = this.site.command(['podman', ...args]);
    return { ...c, env: { ...c.env, ...PODMAN_ENV } };
  }

  /** Runs podman in the host; rejects with the end of its error output (its warnings left out). */
  private async podman(args: readonly string[]): Promise<string> {
    const c = this.cmd(args);
    const r = await runTool(c.cmd, c.args, { env: c.env });
    if (r.code === 0) return r.stdout;
    const why = r.stderr
      .trim()
      .split('\n')
      .filter((l) => !l.includes('level=warning'))
      .slice(-3)
      .join(' | ');
    throw new Error(`podman ${args.slice(0, 2).join(' ')} failed (exit ${r.code}): ${why}`);
  }

  /** Whether the host has the command TOOL. */
  private hostHas(tool: string): boolean {
    const c = this.site.command(['sh', '-c', `command -v ${tool}`]);
    return spawnSync(c.cmd, c.args, { env: c.env, stdio: 'ignore' }).status === 0;
  }

  private podmanOk(args: readonly string[]): boolean {
    const c = this.cmd(args);
    return spawnSync(c.cmd, c.args, { env: c.env, stdio: 'ignore' }).status === 0;
  }

  private async inspect(name: string): Promise<Inspect | undefined> {
    try {
      const list = JSON.parse(
        await this.podman(['container', 'inspect', '--format', 'json', name]),
      ) as Inspect[];
      return list[0];
    } catch {
      return undefined;
    }
  }

  private toInfo(i: Inspect, host: string): ContainerInfo {
    const status = STATUS[i.State.Status] ?? 'stopped';
    const pid = status === 'running' || status === 'frozen' ? i.State.Pid || null : null;
    const start = pid && this.site.local ? procStart(pid) : undefined;
    return {
      schema: 'precog.container/v1',
      name: i.Name,
      host,
      runtime: 'podman',
      command: [i.Path, ...(i.Args ?? [])],
      created: i.Created,
      memoryBytes: i.HostConfig?.Memory ? i.HostConfig.Memory : null,
      pid,
      // The agent runs in the host: the PID Podman reports is this process's PID of the container's init.
      machinePid: pid && start !== undefined ? { pid, start } : null,
      status,
      dir: i.StaticDir ?? '',
      cgroups: [],
      image: i.Image,
    };
  }

  async locate(name: string, host: string): Promise<ContainerInfo> {
    const i = await this.inspect(name);
    if (!i) {
      const names = (await this.podman(['ps', '-a', '--format', '{{.Names}}']).catch(() => ''))
        .split('\n')
        .filter(Boolean);
      throw new UsageError(
        `no Podman container ${name} on host ${host}; there: ${names.length ? names.join(', ') : '(none)'}`,
      );
    }
    return this.toInfo(i, host);
  }

  /**
   * `podman container checkpoint --export` into DIR, taken apart: images/ (CRIU's images) and upper/ (the rest of
   * the archive: Podman's config, the root filesystem's changes, /dev/shm). With keepFrozen the container stays
   * stopped with its checkpoint kept (resumeSource restores it in place); otherwise it runs on.
   */
  async checkpoint(
    name: string,
    dir: string,
    opts: CheckpointOptions & { host?: string } = {},
  ): Promise<CheckpointResult> {
    if (opts.pageServer)
      throw new UsageError(
        '--dump-via page-server: the podman runtime dumps through podman container checkpoint (use --dump-via images)',
      );
    const host = opts.host ?? this.site.name;
    const d = this.site.fsPath(dir);
    mkdirSync(d, { recursive: true });
    const upper = join(d, 'upper');
    rmSync(upper, { recursive: true, force: true });
    rmSync(join(d, 'images'), { recursive: true, force: true });
    mkdirSync(upper);
    // CRIU's images stay where Podman keeps them (--keep): the memory is read there, not copied out of the archive.
    const i = await this.inspect(name);
    if (!i?.StaticDir) throw new UsageError(`no Podman container ${name} on host ${host}`);
    const kept = this.site.path(posix.join(i.StaticDir, 'checkpoint'));
    // Podman writes its archive into a pipe that tar unpacks as it comes: no archive file (a second copy of the
    // memory on disk), and the unpacking overlaps the writing.
    const archive = join(d, ARCHIVE);
    rmSync(archive, { force: true });
    const fifo = spawnSync('mkfifo', ['-m', '600', archive], { encoding: 'utf8' });
    if (fifo.status !== 0) throw new Error(`cannot make a pipe at ${archive}: ${fifo.stderr.trim()}`);
    // zstd when the host has it: Podman writes a compressed archive faster than a plain one (1 GiB: 2.3 s against
    // 5.8-7.3 s, docs/runtimes.md), and the memory in it is thrown away by this tar anyway.
    const zstd = this.hostHas('zstd');
    const untar = spawn(
      'tar',
      [
        '-xf',
        archive,
        ...(zstd ? ['--zstd'] : []),
        '-C',
        upper,
        '--no-same-owner',
        '--delay-directory-restore',
        '--exclude=checkpoint',
      ],
      {
        stdio: ['ignore', 'ignore', 'pipe'],
      },
    );
    let untarErr = '';
    untar.stderr.on('data', (b: Buffer) => (untarErr += b));
    const untarDone = new Promise<number | null>((res) => untar.on('close', res));
    const t0 = performance.now();
    try {
      await this.podman([
        'container',
        'checkpoint',
        name,
        `--export=${this.site.path(posix.join(dir, ARCHIVE))}`,
        `--compress=${zstd ? 'zstd' : 'none'}`,
        '--tcp-established',
        '--keep',
        ...(opts.keepFrozen || opts.leaveStopped ? [] : ['--leave-running']),
      ]);
    } catch (err) {
      untar.kill('SIGKILL'); // still waiting for the pipe's writer
      await untarDone;
      rmSync(archive, { force: true });
      throw err;
    }
    const code = await untarDone;
    const dumpMs = performance.now() - t0;
    rmSync(archive, { force: true });
    if (code !== 0) throw new Error(`cannot unpack Podman's checkpoint archive: ${untarErr.trim()}`);
    if (!existsSync(join(kept, 'inventory.img')))
      throw new Error(`Podman kept no checkpoint images in ${kept}`);
    // The images without the memory go with the state; the memory is read from Podman's copy by the caller. A
    // container removed now takes that copy with it: then the memory is copied out too.
    const removing = opts.leaveStopped === true;
    mkdirSync(join(d, 'images'));
    for (const e of readdirSync(kept, { withFileTypes: true }))
      if (e.isFile() && (removing || !isPageImage(e.name)))
        copyFileSync(join(kept, e.name), join(d, 'images', e.name));
    const imageBytes = duBytes(kept);
    if (removing) await this.podman(['rm', '--force', name]);
    return {
      dir,
      name,
      host,
      frozenMs: performance.now() - t0,
      dumpMs,
      imageBytes,
      layerBytes: duBytes(upper),
      ...(removing ? {} : { pagesDir: kept }),
    };
  }

  async resumeSource(name: string, host: string): Promise<void> {
    const i = await this.inspect(name);
    if (!i) throw new Error(`Podman container ${name} is gone from host ${host}: nothing to resume`);
    if (i.State.Status === 'paused') await this.podman(['unpause', name]);
    else if (i.State.Status !== 'running')
      // Stopped by its checkpoint: back from the images Podman kept, in place (same container, same ID).
      await this.podman(['container', 'restore', '--keep', '--tcp-established', name]);
  }

  async freeze(name: string): Promise<void> {
    await this.podman(['pause', name]);
  }

  async thaw(name: string): Promise<void> {
    await this.podman(['unpause', name]);
  }

  async remove(name: string): Promise<void> {
    await this.podman(['rm', '--force', '--time', '0', name]);
  }

  /**
   * Puts Podman's export archive back together from DIR (images/ as checkpoint/, upper/ as the rest) and imports
   * it: `podman container restore --import`. Lazily (opts.lazy, or post-copy with opts.lazyPageServer) through a
   * CRIU configuration file of precog's that the spec names (podman-lazy.ts): the container runs once its
   * non-memory state is restored, and `criu lazy-pages` copies its pages in (lazyDone).
   */
  async restore(dir: string, host: string, opts: MoveRestoreOptions = {}): Promise<ContainerInfo> {
    const d = this.site.fsPath(dir);
    const state = JSON.parse(readFileSync(join(d, 'state.json'), 'utf8')) as ContainerInfo;
    const name = validateName(state.name);
    const upper = join(d, 'upper');
    const refusal = podmanImportRefusal(upper, this.storage());
    if (refusal) throw new UsageError(`refusing to import Podman container ${name}: ${refusal}`);
    const lazy = opts.lazy === true || opts.lazyPageServer !== undefined;
    const mark = lazy ? markLazy(join(d, 'images')) : null;
    if (lazy && !mark)
      throw new UsageError(
        'a lazy restore needs to tell the stack pages, which precog can only on x86_64: use --restore full',
      );
    // Lazy: CRIU reads the images (and finds the daemon) where precog put them; the archive needs no memory.
    const held = mark
      ? await prepareLazy(this.site, name, join(d, 'images'), opts.lazyPageServer)
      : undefined;
    const images = held?.images ?? join(d, 'images');
    const archive = join(d, ARCHIVE);
    let release: (() => Promise<void>) | undefined;
    try {
      setCriuConfig(join(upper, 'spec.dump'), held?.conf ?? null);
      const r = spawnSync(
        'tar',
        [
          '-cf',
          archive,
          '-C',
          upper,
          '.',
          ...(held ? ['--exclude=pages-*.img'] : []),
          '-C',
          dirname(images),
          `--transform=s,^${basename(images)},checkpoint,`,
          basename(images),
        ],
        { encoding: 'utf8' },
      );
      if (r.status !== 0)
        throw new Error(`cannot assemble the Podman checkpoint archive: ${r.stderr.trim()}`);
      release = await this.holdAddresses(name, upper);
      await this.podman([
        'container',
        'restore',
        `--import=${this.site.path(posix.join(dir, ARCHIVE))}`,
        '--tcp-established',
      ]);
    } catch (err) {
      await this.podman(['rm', '--force', '--time', '0', name]).catch(() => {});
      if (held) {
        held.finish(false);
        // CRIU's log went to the work directory precog gave it: kept beside the move's state.
        try {
          copyFileSync(join(held.watchDir, 'work', 'restore.log'), join(d, 'restore-failed.log'));
        } catch {
          // no log
        }
        rmSync(held.watchDir, { recursive: true, force: true });
      }
      throw err;
    } finally {
      rmSync(archive, { force: true });
      await release?.();
    }
    if (held && mark) {
      held.finish(true);
      const timeoutMs = opts.lazyTimeoutMs ?? lazyTimeoutMs();
      this.lazy.watch(name, held.watchDir, mark, performance.now(), timeoutMs, held.files);
    }
    const info = await this.inspect(name);
    if (!info) throw new Error(`podman container restore left no container ${name} on ${host}`);
    const out = this.toInfo(info, host);
    if (info.HostConfig?.NetworkMode === 'none') await this.loopbackUp(out);
    return out;
  }

  /**
   * Podman restores a container of `--network none` with its loopback down (`podman container checkpoint` and
   * `restore` alone do the same here), so a service that talks to itself over 127.0.0.1 (redis-cli, health checks) would fail.
   * The loopback was up at the source (Podman brings it up at start), so it comes up again here.
   */
  private async loopbackUp(info: ContainerInfo): Promise<void> {
    if (!info.pid) return;
    const c = this.site.command([
      'nsenter',
      '-t',
      String(info.pid),
      '-n',
      '--',
      'ip',
      'link',
      'set',
      'lo',
      'up',
    ]);
    const r = spawnSync(c.cmd, c.args, { env: c.env, encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`cannot bring up the loopback of ${info.name}: ${r.stderr.trim()}`);
  }

  cannotRun(): string | null {
    if (!this.podmanOk(['--version']))
      return 'podman is not installed: apt-get install podman conmon runc libcriu2';
    if (!hasTool('runc') && !hasTool('crun'))
      return 'neither runc nor crun is installed (Podman checkpoints through one): apt-get install runc';
    return null;
  }

  lazyDone(name: string): Promise<LazyResult> | undefined {
    return this.lazy.done(name);
  }

  forgetLazy(name: string): void {
    this.lazy.forget(name);
  }

  /**
   * The image ID. A container whose configuration the destination would refuse (peerspec.ts: a read-write bind
   * mount, host-level capabilities, devices, hooks...) is refused here, before anything stops.
   */
  imageOf(info: ContainerInfo): string | null {
    let spec: OciSpec;
    try {
      spec = JSON.parse(
        readFileSync(this.site.fsPath(posix.join(info.dir, 'config.json')), 'utf8'),
      ) as OciSpec;
    } catch (err) {
      throw new Error(`cannot read the OCI configuration of ${info.name}: ${(err as Error).message}`);
    }
    const why = specRefusal(spec, this.policy());
    if (why) throw new UsageError(`cannot move Podman container ${info.name}: ${why}`);
    return info.image ?? null;
  }

  /** Podman's storage on this host (graph root, run root), from podman info. */
  private storage(): string[] {
    if (!this.roots) {
      const c = this.cmd(['info', '--format', '{{.Store.GraphRoot}}\n{{.Store.RunRoot}}']);
      const r = spawnSync(c.cmd, c.args, { env: c.env, encoding: 'utf8' });
      if (r.status !== 0) throw new Error(`podman info failed: ${r.stderr.trim()}`);
      this.roots = r.stdout.split('\n').filter(cleanAbsolute);
    }
    return this.roots;
  }

  private policy(): SpecPolicy {
    return podmanPolicy(this.storage());
  }

  has(name: string): boolean {
    return this.podmanOk(['container', 'exists', name]);
  }

  hasImage(image: string): boolean {
    return this.podmanOk(['image', 'exists', image]);
  }

  readonly networkHint =
    'create it with the same name and options as at the source (podman network inspect NAME there shows them)';

  /**
   * The Podman networks the container is attached to (a network of `--network none` or `host` is none): Podman's
   * restore attaches it to the same ones by name, so they must exist at the destination.
   */
  networksOf(info: ContainerInfo): string[] {
    const c = this.cmd(['container', 'inspect', '--format', '{{json .NetworkSettings.Networks}}', info.name]);
    const r = spawnSync(c.cmd, c.args, { env: c.env, encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`podman container inspect ${info.name} failed: ${r.stderr.trim()}`);
    const nets = JSON.parse(r.stdout.trim() || 'null') as Record<string, unknown> | null;
    // Only networks Podman defines (a network mode such as host shows under its own name, but is not one).
    return Object.keys(nets ?? {}).filter((n) => NETWORK_NAME.test(n) && this.hasNetwork(n));
  }

  hasNetwork(name: string): boolean {
    return NETWORK_NAME.test(name) && this.podmanOk(['network', 'exists', name]);
  }

  /**
   * Holds the container's addresses on this host's LAN while Podman restores it, on its macvlan and ipvlan
   * networks: Podman gives the new interface its address before CRIU has restored the container's TCP sockets, and a
   * client's packet that arrives in between would be answered with a reset (the connection lost). An nftables
   * ingress rule on the network's parent interface drops IP packets for those addresses (before macvlan hands them
   * to the container) until `release`; the client retransmits them to the restored sockets. Addresses come from
   * the checkpoint's network.status (a peer's data: only IP literals are taken).
   */
  private async holdAddresses(name: string, upper: string): Promise<() => Promise<void>> {
    const status = join(upper, 'network.status');
    if (!existsSync(status) || !lstatSync(status).isFile()) return async () => {};
    let parsed: unknown;
    try {
      parsed = JSON.parse(readFileSync(status, 'utf8'));
    } catch {
      return async () => {}; // Podman's import refuses it with its own message
    }
    if (typeof parsed !== 'object' || parsed === null) return async () => {};
    const devices = new Set<string>();
    for (const net of Object.keys(parsed).filter((n) => NETWORK_NAME.test(n))) {
      const c = this.cmd(['network', 'inspect', '--format', '{{.Driver}} {{.NetworkInterface}}', net]);
      const r = spawnSync(c.cmd, c.args, { env: c.env, encoding: 'utf8' });
      const [driver, dev] = r.status === 0 ? r.stdout.trim().split(/\s+/) : [];
      if ((driver === 'macvlan' || driver === 'ipvlan') && dev && /^[A-Za-z0-9_.@-]{1,15}$/.test(dev))
        devices.add(dev);
    }
    const addresses = ipnetsOf(parsed).slice(0, 64);
    if (devices.size === 0 || addresses.length === 0) return async () => {};
    const table = `precog_hold_${name.replace(/[^A-Za-z0-9_]/g, '_')}`;
    const v4 = addresses.filter((a) => isIPv4(a));
    const v6 = addresses.filter((a) => isIPv6(a));
    const rules = [...devices].map(
      (dev, i) =>
        `  chain in${i} {\n    type filter hook ingress device "${dev}" priority -500; policy accept;\n` +
        (v4.length ? `    ip daddr { ${v4.join(', ')} } drop\n` : '') +
        (v6.length ? `    ip6 daddr { ${v6.join(', ')} } drop\n` : '') +
        '  }\n',
    );
    await this.nft(`table netdev ${table}\ndelete table netdev ${table}\n`); // a leftover of a crashed agent
    await this.nft(`table netdev ${table} {\n${rules.join('')}}\n`);
    return async () => {
      await this.nft(`delete table netdev ${table}\n`);
    };
  }

  private async nft(script: string): Promise<void> {
    const c = this.site.command(['nft', '-f', '-']);
    const r = spawnSync(c.cmd, c.args, { env: c.env, input: script, encoding: 'utf8' });
    if (r.status !== 0)
      throw new Error(
        `cannot hold the container's LAN addresses while it is restored: nft failed (${(r.stderr || String(r.error)).trim()}); ` +
          'nftables must be installed on the destination (apt-get install nftables)',
      );
  }

  private pendingFile(name: string): string {
    return this.site.fsPath(posix.join(PENDING_DIR, `${name}.json`));
  }

  async setPostcopyPending(name: string, _host: string, pending: PostcopyPending | null): Promise<void> {
    writePending(this.pendingFile(name), pending);
  }

  async postcopyPending(name: string): Promise<PostcopyPending | undefined> {
    return readPending(this.pendingFile(name));
  }
}

/** What a Podman container's OCI spec may ask for on a host whose Podman storage is ROOTS (peerspec.ts). */
export function podmanPolicy(roots: string[]): SpecPolicy {
  // Podman's restore mounts the container's own storage as its root: the path in the spec is not used.
  return {
    root: 'set-by-runtime',
    writableUnder: roots,
    netnsUnder: ['/run/netns', '/var/run/netns'],
    // A container precog restored lazily here names the (removed) configuration file of that restore.
    criuConfigUnder: [PODMAN_LAZY_DIR],
  };
}

/**
 * Why the container configuration a peer sent (UPPER/config.dump and spec.dump, which Podman's import takes as
 * they are) must not run on a host whose Podman storage is ROOTS, or null: the spec checks of peerspec.ts on both
 * specs, a privileged container, and every path of config.dump where Podman or conmon write (log, pid files,
 * static directory...) inside that storage.
 */
export function podmanImportRefusal(upper: string, roots: string[]): string | null {
  let config: Record<string, unknown>;
  let spec: OciSpec;
  for (const f of ['config.dump', 'spec.dump'])
    if (existsSync(join(upper, f)) && !lstatSync(join(upper, f)).isFile())
      return `its ${f} is not a regular file`;
  try {
    config = JSON.parse(readFileSync(join(upper, 'config.dump'), 'utf8')) as Record<string, unknown>;
    spec = JSON.parse(readFileSync(join(upper, 'spec.dump'), 'utf8')) as OciSpec;
  } catch (err) {
    return `its checkpoint has no readable config.dump and spec.dump (${(err as Error).message})`;
  }
  if (typeof config !== 'object' || config === null) return 'its config.dump is not a JSON object';
  if (config.privileged === true) return 'it is privileged';
  if (config.mountAllDevices === true) return 'it is given all host devices';
  const paths = ['logPath', 'conmonPidFile', 'staticDir', 'pid_file', 'ShmDir', 'secretsPath'].map(
    (k): [string, unknown] => [k, config[k]],
  );
  for (const m of Array.isArray(config.mounts) ? (config.mounts as unknown[]) : []) paths.push(['mounts', m]);
  for (const [k, v] of paths) {
    if (v === undefined || v === null || v === '') continue;
    if (!cleanAbsolute(v) || !roots.some((d) => under(v, d)))
      return `its ${k} (${JSON.stringify(v)}) is outside Podman's storage here (${roots.join(', ')})`;
  }
  const policy = podmanPolicy(roots);
  return specRefusal(spec, policy) ?? (config.spec ? specRefusal(config.spec as OciSpec, policy) : null);
}

/** Every "ipnet" address in a checkpoint's network.status (JSON from the peer), without its prefix length. */
export function ipnetsOf(status: unknown): string[] {
  const out = new Set<string>();
  const walk = (v: unknown, depth: number): void => {
    if (depth > 8 || typeof v !== 'object' || v === null) return;
    for (const [k, x] of Object.entries(v)) {
      if (k === 'ipnet' && typeof x === 'string') {
        const addr = x.split('/')[0];
        if (isIP(addr)) out.add(addr);
      } else walk(x, depth + 1);
    }
  };
  walk(status, 0);
  return [...out];
}
