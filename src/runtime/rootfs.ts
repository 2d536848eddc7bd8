/**
 * The base root filesystem of the local test hosts: a Debian trixie tree built once with debootstrap and cached.
 *
 * Debian 12's own CRIU (3.17) fails on the kernels precog is tested on; trixie's CRIU 4 works when it runs inside
 * a trixie tree (see ENVIRONMENT.md). The tree is built into `<cache>/rootfs-trixie.partial`, checked, given a stamp
 * file and only then renamed to `<cache>/rootfs-trixie`: a tree without a valid stamp is never used, so an
 * interrupted or failed build is simply redone on the next run.
 */
import { spawn, spawnSync } from 'node:child_process';
import {
  createWriteStream,
  existsSync,
  lstatSync,
  mkdirSync,
  readFileSync,
  renameSync,
  writeFileSync,
} from 'node:fs';
import { join, resolve } from 'node:path';

export const ROOTFS_SUITE = 'trixie';
export const ROOTFS_MIRROR = 'http://deb.debian.org/debian';
/** What the test hosts need: CRIU 4 and crit, the network tools, Node for the agent, and a few workloads. */
export const ROOTFS_PACKAGES: readonly string[] = [
  'criu',
  'python3-pycriu',
  'iproute2',
  'iptables',
  // nft: the destination holds a moved container's address while Podman restores it (podman.ts, AddressLock).
  'nftables',
  // zstd: Podman's checkpoint archive comes zstd-compressed through a pipe into tar (podman.ts, checkpoint).
  'zstd',
  'iputils-ping',
  'iputils-arping',
  'procps',
  'nodejs',
  'python3',
  'redis-server',
  // Container engines users run, for the runc/crun/podman runtimes (podman brings conmon and netavark).
  'podman',
  'crun',
  'runc',
  'conmon',
];
/** Files that must exist in a finished tree (relative paths), checked before the stamp is written. */
export const ROOTFS_REQUIRED_FILES: readonly string[] = [
  'usr/sbin/criu',
  'usr/bin/crit',
  'usr/bin/node',
  'usr/bin/python3',
  'usr/sbin/ip',
  'usr/sbin/tc',
  'usr/sbin/iptables',
  'usr/sbin/nft',
  'usr/bin/zstd',
  'usr/bin/ps',
  'usr/bin/ping',
  'usr/bin/arping',
  'usr/bin/redis-server',
  'usr/bin/podman',
  'usr/bin/crun',
  'usr/sbin/runc',
  'usr/bin/conmon',
];
/** v2: CRIU comes from ROOTFS_CRIU_SUITE (v1 trees have trixie's 4.1.1 and are rebuilt). */
export const ROOTFS_STAMP_SCHEMA = 'precog.rootfs/v2';
/**
 * CRIU and crit come from Debian forky (4.2.x), pinned so nothing else does: trixie's CRIU 4.1.1 cannot dump any
 * process with a TCP socket on Linux >= 6.16 ("sockets: Can't get 1:16 opt": the kernel restricted SO_PASSCRED to
 * AF_UNIX/NETLINK; CRIU 4.2 follows it). That rules out redis and every network service.
 */
export const ROOTFS_CRIU_SUITE = 'forky';
// libcriu2: crun and runc load it for checkpoint/restore; it must match the criu binary.
export const ROOTFS_CRIU_PACKAGES: readonly string[] = ['criu', 'python3-pycriu', 'libcriu2'];
/** The oldest CRIU precog accepts in the tree (major, minor). */
const CRIU_MIN: readonly [number, number] = [4, 2];
/** The stamp lives inside the tree, so removing the tree always removes its stamp too. */
export const ROOTFS_STAMP_FILE = '.precog-rootfs.json';

export interface RootfsStamp {
  schema: string;
  suite: string;
  mirror: string;
  packages: string[];
  builtAt: string;
  buildSeconds: number;
  criuVersion: string;
  /** The Debian suite CRIU was installed from. */
  criuSuite: string;
  nodeVersion: string;
}

export interface RootfsInfo {
  dir: string;
  stamp: RootfsStamp;
  /** True when this call built the tree, false when the cached one was used. */
  built: boolean;
  /** Wall time of this call (the whole build when built, the cache check otherwise). */
  seconds: number;
}

export function cacheRoot(env: NodeJS.ProcessEnv = process.env): string {
  return resolve(env.PRECOG_CACHE || '/var/cache/precog');
}

export function rootfsDir(cache = cacheRoot()): string {
  return join(cache, `rootfs-${ROOTFS_SUITE}`);
}

/** The stamp of a finished tree, or undefined when the tree is missing, unfinished or built for another package set. */
export function readRootfsStamp(dir: string): RootfsStamp | undefined {
  let stamp: RootfsStamp;
  try {
    stamp = JSON.parse(readFileSync(join(dir, ROOTFS_STAMP_FILE), 'utf8')) as RootfsStamp;
  } catch {
    return undefined;
  }
  if (stamp.schema !== ROOTFS_STAMP_SCHEMA || stamp.suite !== ROOTFS_SUITE) return undefined;
  const want = [...ROOTFS_PACKAGES].sort().join(',');
  if (!Array.isArray(stamp.packages) || [...stamp.packages].sort().join(',') !== want) return undefined;
  if (ROOTFS_REQUIRED_FILES.some((f) => !inTree(dir, f))) return undefined;
  return stamp;
}

/**
 * Whether a path exists in the tree. lstat, not stat: absolute symlinks in the tree (the alternatives of
 * iptables...) point into the tree once it is the root, not into the machine building it.
 */
function inTree(dir: string, rel: string): boolean {
  try {
    lstatSync(join(dir, rel));
    return true;
  } catch {
    return false;
  }
}

export interface RunResult {
  code: number;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/**
 * Runs a program to completion and collects its output (no shell). `onLine` sees every output line as it comes
 * (for logs and progress). Never throws for a non-zero exit; throws only when the program cannot be started.
 */
export function runTool(
  cmd: string,
  args: readonly string[],
  opts: { input?: string; env?: NodeJS.ProcessEnv; onLine?: (line: string) => void } = {},
): Promise<RunResult> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(cmd, args, {
      stdio: [opts.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
      env: opts.env ?? process.env,
    });
    let stdout = '';
    let stderr = '';
    let pending = '';
    const feed = (chunk: string) => {
      if (!opts.onLine) return;
      pending += chunk;
      const lines = pending.split('\n');
      pending = lines.pop() ?? '';
      for (const l of lines) opts.onLine(l);
    };
    child.stdout!.setEncoding('utf8').on('data', (d: string) => {
      stdout += d;
      feed(d);
    });
    child.stderr!.setEncoding('utf8').on('data', (d: string) => {
      stderr += d;
      feed(d);
    });
    child.on('error', (err: NodeJS.ErrnoException) => {
      reject(
        err.code === 'ENOENT'
          ? new Error(`${cmd} is not installed (needed to run "${cmd} ${args[0] ?? ''}")`)
          : err,
      );
    });
    child.on('close', (code, signal) => {
      if (pending && opts.onLine) opts.onLine(pending);
      resolvePromise({ code: code ?? 128, signal, stdout, stderr });
    });
    if (child.stdin) {
      // A program may exit without reading its input: that is its business, not an error here.
      child.stdin.on('error', () => {});
      child.stdin.end(opts.input);
    }
  });
}

/** Like runTool, but a failure is an Error that names the command and quotes the end of its output. */
export async function mustRun(
  cmd: string,
  args: readonly string[],
  opts: { input?: string; env?: NodeJS.ProcessEnv; onLine?: (line: string) => void } = {},
): Promise<string> {
  const r = await runTool(cmd, args, opts);
  if (r.code !== 0) {
    const tail = (r.stderr || r.stdout).trim().split('\n').slice(-5).join(' | ');
    throw new Error(`"${cmd} ${args.join(' ')}" failed (exit ${r.code}): ${tail}`);
  }
  return r.stdout;
}

/** Decodes the octal escapes (\040 for a space...) of /proc/self/mountinfo fields. */
function unescapeMountField(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8)));
}

/** Mount points of the caller's mount namespace at or below `dir`, deepest first. */
export function mountsUnder(dir: string): string[] {
  const base = resolve(dir);
  const points = readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => unescapeMountField(l.split(' ')[4]))
    .filter((p) => p === base || p.startsWith(base + '/'));
  return [...new Set(points)].sort((a, b) => b.length - a.length);
}

/**
 * Moves the tree FROM to TO: a rename, or a copy that keeps links, owners and modes (cp -a, never dereferencing)
 * when they are on different file systems.
 */
export function moveTree(from: string, to: string): void {
  try {
    renameSync(from, to);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EXDEV') throw err;
    const r = spawnSync('cp', ['-a', from, to], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`cannot copy ${from}: ${r.stderr.trim()}`);
  }
}

/**
 * Unmounts everything mounted at or below `dir` (lazily, deepest first) and then removes `dir` without ever crossing
 * into another file system. A killed debootstrap leaves proc and sys mounted inside its target: never rm -rf those.
 */
export async function removeTree(dir: string): Promise<void> {
  if (!existsSync(dir)) return;
  for (let pass = 0; pass < 4; pass++) {
    const mounts = mountsUnder(dir);
    if (mounts.length === 0) break;
    for (const m of mounts) await runTool('umount', ['-l', m]);
  }
  const left = mountsUnder(dir);
  if (left.length > 0) throw new Error(`cannot remove ${dir}: still mounted at ${left.join(', ')}`);
  await mustRun('rm', ['-rf', '--one-file-system', dir]);
}

/** debootstrap's phase lines (not its one line per package), shown as progress. */
const PHASE =
  /^I: (Retrieving (Release|Packages) |Resolving|Checking|Installing|Unpacking (required|the base)|Configuring (required|the base)|Base system)/;

async function ensureDebootstrap(log: (line: string) => void): Promise<void> {
  if ((await runTool('sh', ['-c', 'command -v debootstrap'])).code === 0) return;
  log('debootstrap is missing: installing it with apt-get');
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  await mustRun('apt-get', ['update'], { env });
  await mustRun('apt-get', ['install', '-y', '--no-install-recommends', 'debootstrap'], { env });
}

/**
 * Replaces trixie's CRIU with ROOTFS_CRIU_SUITE's, pinned at low priority so apt takes nothing else from that suite
 * but what CRIU needs (libcompel, libnl, libnet: five packages). The mirror's Release files of the testing suite may
 * be past their Valid-Until here (a frozen mirror), so that check is off for this one step; signatures are checked.
 */
async function installCriuFromNewerSuite(
  tree: string,
  logFile: string,
  log: (l: string) => void,
): Promise<void> {
  log(`installing ${ROOTFS_CRIU_PACKAGES.join(', ')} from ${ROOTFS_CRIU_SUITE}`);
  writeFileSync(
    join(tree, 'etc/apt/sources.list.d/precog-criu.list'),
    `deb ${ROOTFS_MIRROR} ${ROOTFS_CRIU_SUITE} main\n`,
  );
  writeFileSync(
    join(tree, 'etc/apt/preferences.d/precog-criu'),
    `Package: *\nPin: release n=${ROOTFS_CRIU_SUITE}\nPin-Priority: 100\n`,
  );
  const apt = ['-o', 'Acquire::Check-Valid-Until=false', '-o', 'Dpkg::Use-Pty=0'];
  const steps: string[][] = [
    ['apt-get', ...apt, 'update'],
    [
      'apt-get',
      ...apt,
      'install',
      '-y',
      '--no-install-recommends',
      '-t',
      ROOTFS_CRIU_SUITE,
      ...ROOTFS_CRIU_PACKAGES,
    ],
  ];
  for (const step of steps) {
    const r = await runTool('chroot', [tree, ...step], {
      env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' },
    });
    writeFileSync(logFile, `$ chroot ${tree} ${step.join(' ')}\n${r.stdout}${r.stderr}`, { flag: 'a' });
    if (r.code !== 0) {
      const tail = `${r.stdout}\n${r.stderr}`.trim().split('\n').slice(-3).join(' | ');
      throw new Error(
        `installing CRIU from ${ROOTFS_CRIU_SUITE} failed (exit ${r.code}; full log in ${logFile}): ${tail}`,
      );
    }
  }
}

/**
 * Returns the cached trixie tree, building it first when there is no finished one (or `rebuild` is set).
 * Needs root (debootstrap). The build log goes to `<cache>/rootfs-trixie.log`.
 */
export async function ensureRootfs(
  opts: { cache?: string; rebuild?: boolean; log?: (line: string) => void } = {},
): Promise<RootfsInfo> {
  const t0 = performance.now();
  const log = opts.log ?? (() => {});
  const cache = opts.cache ?? cacheRoot();
  const dir = rootfsDir(cache);
  if (!opts.rebuild) {
    const stamp = readRootfsStamp(dir);
    if (stamp) return { dir, stamp, built: false, seconds: (performance.now() - t0) / 1000 };
  }
  mkdirSync(cache, { recursive: true });
  const partial = `${dir}.partial`;
  const logFile = `${dir}.log`;
  await removeTree(partial);
  await ensureDebootstrap(log);
  log(`building the ${ROOTFS_SUITE} root filesystem in ${dir} (once; log: ${logFile})`);
  const out = createWriteStream(logFile);
  const args = [
    '--variant=minbase',
    `--include=${ROOTFS_PACKAGES.join(',')}`,
    ROOTFS_SUITE,
    partial,
    ROOTFS_MIRROR,
  ];
  out.write(`$ debootstrap ${args.join(' ')}\n`);
  let r: RunResult;
  try {
    r = await runTool('debootstrap', args, {
      onLine: (l) => {
        out.write(l + '\n');
        if (PHASE.test(l)) log(l.slice(3));
      },
    });
  } finally {
    await new Promise<void>((res) => out.end(res));
  }
  if (r.code !== 0) {
    const tail = `${r.stdout}\n${r.stderr}`.trim().split('\n').slice(-3).join(' | ');
    // Leave nothing mounted behind; the half-built tree is removed by the next attempt.
    for (const m of mountsUnder(partial)) await runTool('umount', ['-l', m]);
    throw new Error(`debootstrap failed (exit ${r.code}; full log in ${logFile}): ${tail}`);
  }
  for (const m of mountsUnder(partial)) await runTool('umount', ['-l', m]);
  await installCriuFromNewerSuite(partial, logFile, log);
  // Downloaded packages are not needed any more: about 100 MB less in the cache.
  await runTool('sh', ['-c', 'rm -f "$1"/var/cache/apt/archives/*.deb', 'sh', partial]);
  const missing = ROOTFS_REQUIRED_FILES.filter((f) => !inTree(partial, f));
  if (missing.length > 0)
    throw new Error(
      `the new root filesystem lacks ${missing.join(', ')} (see ${logFile}); run again to rebuild`,
    );
  const criuVersion = (await mustRun('chroot', [partial, '/usr/sbin/criu', '--version'])).match(
    /Version:\s*(\S+)/,
  )?.[1];
  const nodeVersion = (await mustRun('chroot', [partial, '/usr/bin/node', '--version'])).trim();
  const [major, minor] = (criuVersion ?? '0.0').split('.').map(Number);
  if (!criuVersion || major !== CRIU_MIN[0] || minor < CRIU_MIN[1])
    throw new Error(
      `the new root filesystem has criu "${criuVersion ?? '?'}", precog needs ${CRIU_MIN.join('.')} or newer 4.x (see ${logFile})`,
    );
  const stamp: RootfsStamp = {
    schema: ROOTFS_STAMP_SCHEMA,
    suite: ROOTFS_SUITE,
    mirror: ROOTFS_MIRROR,
    packages: [...ROOTFS_PACKAGES],
    criuSuite: ROOTFS_CRIU_SUITE,
    builtAt: new Date().toISOString(),
    buildSeconds: Math.round((performance.now() - t0) / 100) / 10,
    criuVersion,
    nodeVersion,
  };
  writeFileSync(join(partial, ROOTFS_STAMP_FILE), JSON.stringify(stamp, null, 2) + '\n');
  await removeTree(dir);
  renameSync(partial, dir);
  log(`root filesystem ready in ${stamp.buildSeconds}s: criu ${criuVersion}, node ${nodeVersion}`);
  return { dir, stamp, built: true, seconds: (performance.now() - t0) / 1000 };
}
