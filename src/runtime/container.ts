/**
 * Containers inside the test hosts: `precog run / ps / stop / logs`.
 *
 * `ContainerRuntime` is what the rest of precog (the CLI, later the migration engine) talks to; `NamespaceRuntime`
 * is the implementation made of plain namespaces, an overlay and cgroups. A runc or Podman adapter implements the
 * same interface (run, list, inspect, stop, logs, freeze, thaw) and nothing else has to change.
 *
 * A container of NamespaceRuntime (see docs/containers.md):
 * - its own PID, mount, UTS and IPC namespaces; the network namespace of its test host (the PID namespace is a child
 *   of the host's, so the host, and CRIU running in it, see the container's processes);
 * - an overlay root: lower = the base image (the cached trixie rootfs, the hosts' own lower layer), upper/work =
 *   /var/lib/precog/containers/NAME/{upper,work} of the host (an overlay's upper layer cannot be on an overlay, so
 *   the container's overlay is mounted on the host's real writable directory, from outside the host);
 * - the mount tree CRIU understands: private propagation, proc, a tmpfs /dev with mknod'ed nodes, devpts
 *   newinstance, /dev/shm, pivot_root, no inherited descriptors, stdio to /var/log/container.log in its own
 *   writable layer; the workload itself is the container's PID 1;
 * - a cgroup2 directory precog-testbed/HOST-NAME (freezing: cgroup.freeze) and, for --memory, the memory controller
 *   where it is (cgroup2 memory.max, or cgroup v1 memory.limit_in_bytes on hybrid machines like ours).
 * - a JSON state file, /var/lib/precog/containers/NAME/state.json in the host.
 */
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  closeSync,
  existsSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  rmdirSync,
  statSync,
  writeFileSync,
  cpSync,
  renameSync,
  rmSync,
} from 'node:fs';
import { basename, dirname, join, posix, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { markLazy, type LazyMarkResult } from '../criu/lazy.ts';
import { PS_SOCKET_FD, type PsConnection } from '../criu/pageserver.ts';
import { LazyDumpEnd, probeLazyDump } from '../criu/lazydump.ts';
import { CriuRunner } from '../criu/runner.ts';
import { UsageError } from '../util/errors.ts';
import { removeTree } from './rootfs.ts';
import {
  announceNetwork,
  attachNetwork,
  dumpNetworkArgs,
  lockNetwork,
  removeHostLink,
  restoreNetworkArgs,
  serviceNetworkFor,
  unlockNetwork,
  type ContainerNetwork,
} from './svcnet.ts';
import type { MovableRuntime, PostcopyPending } from './registry.ts';
import { CHECKPOINTS_DIR, CONTAINERS_DIR, hasTool, type Site } from './site.ts';
import {
  cgroup2Root,
  HOSTS,
  isAlive,
  machineSite,
  parseHost,
  parseServiceAddress,
  procStart,
  readState,
  REPO_DIR,
  type ProcRef,
  waitUntil,
} from './testbed.ts';

export const CONTAINER_STATE_SCHEMA = 'precog.container/v1';
/** Where a host keeps its containers (a path inside the host). */
export { CHECKPOINTS_DIR, CONTAINERS_DIR };
/** The container's stdout and stderr, a path inside the container (so inside its writable layer). */
export const CONTAINER_LOG = '/var/log/container.log';
/** Where the workloads of workloads/ are installed in every container (a path inside the container). */
export const WORKLOADS_DIR = '/opt/precog/workloads';
/** Where the traces of traces/ are installed in a container whose command names a path there. */
export const TRACES_DIR = '/opt/precog/traces';
/**
 * The files of the repository's traces/ that a command names by their path in the container
 * (/opt/precog/traces/...), relative to traces/; a path that leaves the directory or names no file is left out.
 */
export function namedTraces(command: readonly string[]): string[] {
  const out: string[] = [];
  const root = join(REPO_DIR, 'traces');
  for (const arg of command) {
    const at = arg.indexOf(`${TRACES_DIR}/`);
    if (at < 0) continue;
    const rel = arg.slice(at + TRACES_DIR.length + 1).split(/[\s=,:]/)[0];
    const abs = resolve(root, rel);
    if (!abs.startsWith(`${root}/`) || !existsSync(abs) || !statSync(abs).isFile()) continue;
    out.push(abs.slice(root.length + 1));
  }
  return out;
}

const CONTAINER_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';
const CGROUP_V1_MEMORY = '/sys/fs/cgroup/memory';

export type ContainerStatus = 'created' | 'running' | 'frozen' | 'exited' | 'stopped';

export interface ContainerSpec {
  name: string;
  host: string;
  /** The command, run as PID 1 of the container (no shell in between). */
  command: string[];
  /** memory limit in bytes, or null for none. */
  memoryBytes?: number | null;
  /** Extra environment (PATH, HOME, LANG are set). */
  env?: Record<string, string>;
  /**
   * An address on the testbed's service LAN (10.213.80.1-253): the container gets a network namespace of its own
   * with this address (svcnet.ts). Without it, the container uses its host's network namespace.
   */
  address?: string;
}

export interface ContainerInfo {
  schema: string;
  name: string;
  host: string;
  runtime: string;
  command: string[];
  created: string;
  memoryBytes: number | null;
  /** PID of the container's init as seen in its test host (what `criu dump -t` takes inside the host). */
  pid: number | null;
  /** The same process as seen on the machine (outside the hosts), with its start time. */
  machinePid: ProcRef | null;
  status: ContainerStatus;
  /** The container's directory as seen inside the host (upper/, work/, root/, state.json). */
  dir: string;
  /** cgroup directories (on the machine) the container's processes are in. */
  cgroups: string[];
  /** Its own network on the service LAN (absent or null: the host's network namespace). */
  network?: ContainerNetwork | null;
  /** The image the container runs (a Podman image ID), when the runtime has images. */
  image?: string;
}

export interface StopOptions {
  /** How long PID 1 gets after SIGTERM before SIGKILL (PID 1 ignores SIGTERM unless it handles it). */
  timeoutMs?: number;
  /** Keep the writable layer and the state (status "stopped"); the name stays taken until a stop without it. */
  keepLayer?: boolean;
}

/** What precog needs from a container engine. */
export interface ContainerRuntime {
  readonly kind: string;
  run(spec: ContainerSpec): Promise<ContainerInfo>;
  /** Every container, on every host (or on one). */
  list(host?: string): Promise<ContainerInfo[]>;
  inspect(name: string): Promise<ContainerInfo | undefined>;
  stop(name: string, opts?: StopOptions): Promise<ContainerInfo>;
  /** The container's combined stdout and stderr. */
  logs(name: string): Promise<string>;
  freeze(name: string): Promise<void>;
  thaw(name: string): Promise<void>;
  /** Saves the container (CRIU images, writable layer, state) into a directory on this machine. */
  checkpoint(name: string, dir: string, opts?: CheckpointOptions): Promise<CheckpointResult>;
  /** Starts a container from a checkpoint directory in a host. */
  restore(dir: string, host: string, opts?: RestoreOptions): Promise<ContainerInfo>;
  /** The writable layer as a tar compressed with zstd. */
  exportLayer(name: string, file: string): Promise<void>;
}

export const CHECKPOINT_SCHEMA = 'precog.checkpoint/v1';

export interface CheckpointOptions {
  /** Stop (kill and remove) the container after a successful checkpoint; by default it keeps running. */
  leaveStopped?: boolean;
  /** Leave the container frozen after the checkpoint (for migration: thawed or removed by the caller). */
  keepFrozen?: boolean;
  /**
   * Stream the memory to a CRIU page server (precog's own, for live migration) instead of writing pages-*.img:
   * images/ then holds no pagemap or pages images; the page server has them. CRIU gets its connection as a
   * socket pair: nothing listens.
   */
  pageServer?: PsConnection;
  /**
   * The lazy dump route (src/criu/lazydump.ts): `criu dump --lazy-pages` leaves the pages of anonymous private
   * mappings in the stopped tasks; this is called with the images directory (complete but for those pages) while
   * CRIU still holds the tasks, reads them from /proc/PID/mem and resolves; then CRIU is told to end. A rejection
   * fails the dump (the container thaws). Runtimes that cannot dump lazily say so (`lazyDump` false).
   */
  lazyMemory?: (imagesDir: string) => Promise<void>;
}

export interface CheckpointResult {
  dir: string;
  name: string;
  host: string;
  /** Time the container was frozen (freeze, dump, layer copy, thaw). */
  frozenMs: number;
  dumpMs: number;
  /** Bytes of the images directory and of the writable layer copy. */
  imageBytes: number;
  layerBytes: number;
  /**
   * Where the page images are when they are not in DIR/images (this process's path): a runtime's own checkpoint
   * directory, read but not changed (the runtime restores the source from it after a failed move).
   */
  pagesDir?: string;
  /**
   * A lazy dump (lazyMemory), step by step (ms): CRIU up to its post-dump hook (the non-memory state, the pages
   * pinned), the writable layer's copy, lazyMemory (precog's read and comparison), and CRIU's end after CLOSE.
   */
  lazySteps?: { criuMs: number; layerMs: number; memoryMs: number; endMs: number };
}

export interface RestoreOptions {
  /** Name of the restored container (default: the checkpointed container's name). */
  name?: string;
  /** Allow the name to exist on this host already (cold migration: the source is removed afterwards). */
  replacingOn?: string;
  /** Move images/ and upper/ out of the checkpoint directory instead of copying them (it is used up). */
  move?: boolean;
  /**
   * Lazy restore: the container runs as soon as its non-memory state is restored; `criu lazy-pages` copies the
   * pages of its private anonymous mappings in from the local images as they are touched, and the rest in the
   * background (docs/migration.md, "Lazy restore"). restore() resolves when the container runs; lazyDone() tells
   * when every page is in place.
   */
  lazy?: boolean;
  /**
   * Post-copy: `criu lazy-pages` asks this page server for the pages instead of reading them from the local images
   * (src/criu/lazyserver.ts), over a socket pair it is spawned with: nothing listens. Implies lazy.
   */
  lazyPageServer?: PsConnection;
  /** Longest the lazy copy-in may take before it counts as failed (default: PRECOG_LAZY_TIMEOUT_MS or 10 min). */
  lazyTimeoutMs?: number;
}

export type { PostcopyPending };

export const POSTCOPY_PENDING_FILE = 'postcopy.json';

/** The identity of a base image: `SUITE:` and a digest of its recipe (its stamp file); null when it has none. */
export function baseImageId(rootfs: string): string | null {
  let stamp: { suite?: string; packages?: string[]; criuSuite?: string };
  try {
    stamp = JSON.parse(readFileSync(join(rootfs, '.precog-rootfs.json'), 'utf8')) as typeof stamp;
  } catch {
    return null;
  }
  const recipe = JSON.stringify({ suite: stamp.suite, packages: stamp.packages, criuSuite: stamp.criuSuite });
  return `${stamp.suite ?? 'image'}:${createHash('sha256').update(recipe).digest('hex').slice(0, 16)}`;
}

/** The end of a lazy restore's page copying (RestoreOptions.lazy). */
export interface LazyResult {
  /** Pages left to the lazy-pages daemon, and pages the restorer copied itself. */
  lazyPages: number;
  eagerPages: number;
  /** From the container running to the daemon done (the time the container depended on the images). */
  ms: number;
}

const NAME_RE = /^[a-z0-9][a-z0-9_.-]{0,62}$/i;
/**
 * Longest a lazy restore may take to copy every page in before it counts as failed (env PRECOG_LAZY_TIMEOUT_MS,
 * default 10 minutes).
 */
export const lazyTimeoutMs = (): number => Number(process.env.PRECOG_LAZY_TIMEOUT_MS) || 10 * 60_000;

/**
 * The shell that writes the exit status ($?) of `criu lazy-pages -D "$1"` into lazy-pages.rc beside $1: whole, or
 * not at all (written aside and renamed into place), since lazyFinished reads it as soon as it exists. Written in
 * place, a status read between the file's creation and its write was empty: 'criu lazy-pages failed (exit )'
 * for a copy-in that had succeeded.
 */
export const LAZY_STATUS =
  'echo $? >"$1/../lazy-pages.rc.part" && mv "$1/../lazy-pages.rc.part" "$1/../lazy-pages.rc"';

/** Where a lazy restore's daemon read its images and wrote its log (default: WD/images, and the log in it). */
export interface LazyFiles {
  images: string;
  log: string;
}

/**
 * Waits until the `criu lazy-pages` of a lazy restore whose images are in WD/images (or FILES.images, whose parent
 * is WD) has copied every page in (its exit status lands in WD/lazy-pages.rc), then removes the images it read;
 * resolves with the milliseconds since `running`. Rejects with the daemon's error lines when it failed, after the
 * lazy timeout, or once `cancelled()` says so.
 */
export async function lazyFinished(
  wd: string,
  running: number,
  cancelled = (): boolean => false,
  limit = lazyTimeoutMs(),
  files: LazyFiles = { images: join(wd, 'images'), log: join(wd, 'images', 'lazy-pages.log') },
): Promise<number> {
  const rcFile = join(wd, 'lazy-pages.rc');
  const deadline = performance.now() + limit;
  while (!existsSync(rcFile)) {
    if (cancelled()) throw new Error('no longer watched');
    if (performance.now() > deadline)
      throw new Error(
        `criu lazy-pages did not copy every page in within ${limit / 1000} s ` +
          `(PRECOG_LAZY_TIMEOUT_MS; log: ${files.log})`,
      );
    await sleep(10);
  }
  const ms = performance.now() - running;
  // Whole once it exists: the daemon's wrapper renames it into place.
  const rc = readFileSync(rcFile, 'utf8').trim();
  if (rc !== '0') {
    let lines = '';
    try {
      lines = readFileSync(files.log, 'utf8')
        .split('\n')
        .filter((l) => /Error|error|fail/.test(l))
        .slice(-8)
        .join('\n');
    } catch {
      // no log
    }
    throw new Error(`criu lazy-pages failed (exit ${rc}) while copying pages in:\n${lines}`);
  }
  await removeTree(files.images).catch(() => {});
  return ms;
}

/** Lazy restores whose pages are still being copied in, by container name, and how to stop watching each. */
export class LazyWatches {
  private readonly watches = new Map<string, Promise<LazyResult>>();
  private readonly cancels = new Map<string, () => void>();

  /** Watches the lazy restore of NAME whose work directory is WD (lazyFinished); done() gives its end. */
  watch(
    name: string,
    wd: string,
    mark: LazyMarkResult,
    running: number,
    limitMs?: number,
    files?: LazyFiles,
  ): void {
    let cancelled = false;
    this.cancels.set(name, () => (cancelled = true));
    const w = lazyFinished(wd, running, () => cancelled, limitMs, files).then((ms) => ({
      lazyPages: mark.lazyPages,
      eagerPages: mark.eagerPages,
      ms,
    }));
    w.catch(() => {}); // awaited through done(); a cancelled watch rejects unobserved
    this.watches.set(name, w);
  }

  /**
   * After a lazy restore: resolves when the lazy-pages daemon has put every page in place (the images are then
   * removed), rejects with the daemon's error lines if it failed. Undefined when the restore was not lazy.
   */
  done(name: string): Promise<LazyResult> | undefined {
    return this.watches.get(name);
  }

  /** Stops watching (its move failed otherwise; the watch would keep the process alive). */
  forget(name: string): void {
    this.cancels.get(name)?.();
    this.cancels.delete(name);
    this.watches.delete(name);
  }
}

/** A source's record of a post-copy interrupted after the switchover, in FILE (null: remove it). */
export function writePending(file: string, pending: PostcopyPending | null): void {
  if (!pending) rmSync(file, { force: true });
  else {
    mkdirSync(dirname(file), { recursive: true });
    writeFileSync(file, JSON.stringify(pending, null, 2) + '\n');
  }
}

/** The record writePending left in FILE, if any. */
export function readPending(file: string): PostcopyPending | undefined {
  return existsSync(file) ? (JSON.parse(readFileSync(file, 'utf8')) as PostcopyPending) : undefined;
}

export function validateName(name: string): string {
  if (!NAME_RE.test(name))
    throw new UsageError(
      `container name "${name}" must be 1-63 letters, digits, ".", "_" or "-", starting with a letter or digit`,
    );
  return name;
}

function tail(file: string, lines: number): string {
  try {
    return readFileSync(file, 'utf8').trim().split('\n').slice(-lines).join(' | ');
  } catch {
    return '';
  }
}

/**
 * PID 1 of the container, from `unshare --pid --fork` on: builds the mount tree, pivots, closes every inherited
 * descriptor and execs the command with stdio in the container's own writable layer. Arguments: the container's
 * directory (machine path), the base image, the container name, then the command.
 */
export const INIT_SCRIPT = String.raw`set -eu
dir=$1 rootfs=$2 name=$3
shift 3
# NSpid: the PID as the launcher sees it, ..., in the host, in the container (the launcher's /proc is still
# mounted here): the runtime takes the first and the next to last.
while read -r key rest; do
	if [ "$key" = NSpid: ]; then echo "$rest" >"$dir/pids"; fi
done </proc/self/status
# A container with its own network namespace waits here until precog has given it its address (svcnet.ts).
if [ -e "$dir/net-wait" ]; then
	i=0
	while [ ! -e "$dir/net-ready" ]; do
		i=$((i + 1))
		if [ $i -ge 1500 ]; then echo "precog: the network was not set up within 15 s" >&2; exit 1; fi
		sleep 0.01
	done
fi
root=$dir/root
mount --make-rprivate /
mount -t overlay overlay -o "lowerdir=$rootfs,upperdir=$dir/upper,workdir=$dir/work" "$root"
mount -t proc -o nosuid,nodev,noexec proc "$root/proc"
# A fresh /dev with its own nodes: bind-mounted nodes make criu dump fail ("Can't lookup mount").
mount -t tmpfs -o nosuid,mode=755,size=1m tmpfs "$root/dev"
mknod -m 666 "$root/dev/null" c 1 3
mknod -m 666 "$root/dev/zero" c 1 5
mknod -m 666 "$root/dev/full" c 1 7
mknod -m 666 "$root/dev/random" c 1 8
mknod -m 666 "$root/dev/urandom" c 1 9
mknod -m 666 "$root/dev/tty" c 5 0
mkdir -m 755 "$root/dev/pts"
mkdir -m 1777 "$root/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5 devpts "$root/dev/pts"
ln -s pts/ptmx "$root/dev/ptmx"
ln -s /proc/self/fd "$root/dev/fd"
ln -s /proc/self/fd/0 "$root/dev/stdin"
ln -s /proc/self/fd/1 "$root/dev/stdout"
ln -s /proc/self/fd/2 "$root/dev/stderr"
mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs "$root/dev/shm"
echo "$name" >/proc/sys/kernel/hostname
echo "$name" >"$root/etc/hostname"
mkdir -p "$root/var/log" "$root/oldroot"
: >>"$root${CONTAINER_LOG}"
echo "$(date -u +%FT%TZ)" >"$dir/started"
cd "$root"
pivot_root . oldroot
cd /
umount -l /oldroot
rmdir /oldroot
# bash, not dash: dash cannot name descriptors above 9 in a redirection. setsid: the container's PID 1 leads its
# own session (criu dump refuses a session leader outside the PID namespace).
exec /bin/bash -c '
for fd in /proc/self/fd/*; do
	n=${'$'}{fd##*/}
	if [ "$n" -gt 2 ]; then eval "exec $n>&-"; fi
done 2>/dev/null
exec </dev/null >>${CONTAINER_LOG} 2>&1
exec /usr/bin/setsid /usr/bin/env -i "PATH=${CONTAINER_PATH}" HOME=/root LANG=C.UTF-8 "$@"' precog-init "$@"
`;

/**
 * Runs on the machine, detached: joins the container's cgroups, enters the host's network and PID namespaces and
 * starts INIT_SCRIPT as PID 1 of new mount, PID, UTS and IPC namespaces (and network, when the 4th argument is
 * "net"). Arguments: init pid of the host, the cgroup.procs files (":"-separated, or "-"), the init script, "net"
 * or "-", then INIT_SCRIPT's arguments.
 */
export const LAUNCH_SCRIPT = String.raw`set -eu
hostpid=$1 procs=$2 init=$3 net=$4
shift 4
netns=
if [ "$net" = net ]; then netns=--net; fi
if [ "$procs" != - ]; then
	old_ifs=$IFS IFS=:
	for f in $procs; do echo $$ >"$f"; done
	IFS=$old_ifs
fi
enter=
# "-": the launcher is in the host's namespaces already (an agent inside the host).
if [ "$hostpid" != - ]; then enter="nsenter -t $hostpid -n -p --"; fi
exec $enter unshare --mount --propagation private --uts --ipc --pid $netns --fork -- \
	/bin/sh "$init" "$@"
`;

/**
 * `criu` as CriuRunner runs it for a restore (docs/containers.md, "CRIU"): runs on this machine, joins the new
 * container's cgroups, enters the host's network and PID namespaces and a private mount namespace, and runs
 * RESTORE_ROOT_SCRIPT there with CRIU's arguments. Arguments: host init pid, cgroup.procs files (":"-separated or
 * "-"), RESTORE_ROOT_SCRIPT's file, base image, upper, work, overlay mount point, work directory, then CRIU's
 * arguments.
 */
export const RESTORE_LAUNCH_SCRIPT = String.raw`set -eu
hostpid=$1 procs=$2 script=$3
shift 3
if [ "$procs" != - ]; then
	old_ifs=$IFS IFS=:
	for f in $procs; do echo $$ >"$f"; done
	IFS=$old_ifs
fi
enter=
if [ "$hostpid" != - ]; then enter="nsenter -t $hostpid -n -p --"; fi
exec $enter unshare -m --propagation private /bin/sh "$script" "$@"
`;

/**
 * Builds the small root CRIU restores from (the recipe that worked by hand): the container's overlay mounted with
 * the machine's paths, a tmpfs root with the base image's /usr and /etc, proc of the host's PID namespace, a tmpfs
 * /tmp, /dev/null and /dev/urandom, the overlay at /ctr, the work directory (images, log, pidfile) at its own path;
 * pivot_root into it (a chroot is not enough for CRIU), close inherited descriptors, exec criu.
 */
export const RESTORE_ROOT_SCRIPT = String.raw`set -eu
rootfs=$1 upper=$2 work=$3 ctr=$4 wd=$5
shift 5
mount --make-rprivate /
mount -t overlay overlay -o "lowerdir=$rootfs,upperdir=$upper,workdir=$work" "$ctr"
new=$wd/newroot
mkdir -p "$new"
mount -t tmpfs -o mode=755,size=16m tmpfs "$new"
mkdir -p "$new/usr" "$new/etc" "$new/proc" "$new/tmp" "$new/dev" "$new/ctr" "$new/oldroot" "$new/run" "$new$wd"
for l in bin sbin lib lib64; do
	if [ -L "$rootfs/$l" ]; then ln -s "$(readlink "$rootfs/$l")" "$new/$l"; fi
done
mount --bind "$rootfs/usr" "$new/usr"
mount --bind "$rootfs/etc" "$new/etc"
mount -t proc proc "$new/proc"
mount -t tmpfs -o mode=1777 tmpfs "$new/tmp"
mkdir -p "$new/dev/net"
for d in null urandom net/tun; do
	if [ -e "/dev/$d" ]; then
		: >"$new/dev/$d"
		mount --bind "/dev/$d" "$new/dev/$d"
	fi
done
mount --bind "$ctr" "$new/ctr"
mount --bind "$wd" "$new$wd"
cd "$new"
pivot_root . oldroot
cd /
umount -l /oldroot
if [ -n "${'$'}{PRECOG_LAZY_PAGES:-}" ]; then
	# criu lazy-pages serves the restore's page faults from the images, or (post-copy, PRECOG_LAZY_PS=FD) from
	# precog's page server on the socket inherited as that descriptor; its exit status lands in lazy-pages.rc.
	/bin/bash -c '
for fd in /proc/self/fd/*; do
	n=${'$'}{fd##*/}
	if [ "$n" -gt 2 ] && [ "$n" != "${'$'}{2:-}" ]; then eval "exec $n>&-"; fi
done 2>/dev/null
ps=
if [ -n "$2" ]; then ps="--page-server --ps-socket $2"; fi
criu lazy-pages -D "$1" -W "$1" -o lazy-pages.log -v4 $ps </dev/null >/dev/null 2>&1
${LAZY_STATUS}' precog-lazy "$PRECOG_LAZY_PAGES" "${'$'}{PRECOG_LAZY_PS:-}" </dev/null >/dev/null 2>&1 &
	i=0
	while [ ! -S "$PRECOG_LAZY_PAGES/lazy-pages.socket" ]; do
		i=$((i + 1))
		if [ $i -ge 1000 ] || [ -e "$PRECOG_LAZY_PAGES/../lazy-pages.rc" ]; then
			echo "precog: criu lazy-pages did not start (see $PRECOG_LAZY_PAGES/lazy-pages.log)" >&2
			exit 1
		fi
		sleep 0.01
	done
fi
exec /bin/bash -c '
for fd in /proc/self/fd/*; do
	n=${'$'}{fd##*/}
	if [ "$n" -gt 2 ]; then eval "exec $n>&-"; fi
done 2>/dev/null
exec criu "$@"' precog-criu "$@"
`;

/**
 * CRIU's action script for a checkpoint: at post-dump (images written, tasks still stopped by CRIU) it says so with
 * a file "dumped" next to it and waits for "go" (at most 10 minutes): "ok" lets CRIU resume the tasks, anything else
 * fails the dump (CRIU then resumes them too).
 */
export const POST_DUMP_SCRIPT = `#!/bin/sh
[ "$CRTOOLS_SCRIPT_ACTION" = post-dump ] || exit 0
d=$(dirname "$0")
: >"$d/dumped"
i=0
while [ ! -e "$d/go" ]; do
	i=$((i + 1))
	[ $i -lt 60000 ] || exit 1
	sleep 0.01
done
[ "$(cat "$d/go")" = ok ]
`;

/**
 * Renames a directory known by several paths (the first that renames wins), or copies it from the last where none
 * can be renamed (another file system or mount).
 */
function moveTree(from: readonly string[], to: string, what: string): void {
  for (const f of from) {
    try {
      renameSync(f, to);
      return;
    } catch {
      // next path, or the copy
    }
  }
  copyTree(from[from.length - 1], to, what);
}

/** Runs a tool on this machine; throws with its stderr when it fails. */
function tool(cmd: string, args: string[], what: string): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 64 << 20 });
  if (r.error) throw new Error(`${what}: cannot run ${cmd}: ${r.error.message}`);
  if (r.status !== 0)
    throw new Error(`${what}: ${cmd} ${args.join(' ')} failed (exit ${r.status}): ${r.stderr.trim()}`);
  return r.stdout;
}

/** `cp -a` (keeps overlay whiteouts, which are device nodes, and trusted.overlay.* xattrs). */
function copyTree(from: string, to: string, what: string): void {
  tool('cp', ['-a', '--', from, to], what);
}

/** Bytes under DIR (du -sb), 0 when it cannot be read. */
export function duBytes(dir: string): number {
  try {
    return Number(tool('du', ['-sb', dir], 'du').split(/\s+/)[0]) || 0;
  } catch {
    return 0;
  }
}

interface Located {
  site: Site;
  /** The container's directory, for this process. */
  dir: string;
}

/** The memory controller on this machine: cgroup2 (memory.max) or v1 (memory.limit_in_bytes), or none. */
function memoryController(cg2Parent: string | null): 'v2' | 'v1' | null {
  if (cg2Parent) {
    try {
      if (readFileSync(join(cg2Parent, 'cgroup.controllers'), 'utf8').split(/\s+/).includes('memory'))
        return 'v2';
    } catch {
      // no cgroup2 parent
    }
  }
  return existsSync(join(CGROUP_V1_MEMORY, 'memory.limit_in_bytes')) ? 'v1' : null;
}

function rmCgroup(dir: string): Promise<boolean> {
  return waitUntil(() => {
    try {
      rmdirSync(dir);
      return true;
    } catch (err) {
      return (err as NodeJS.ErrnoException).code === 'ENOENT';
    }
  }, 3000);
}

/**
 * The processes of a cgroup that this process can see. cgroup.procs lists a process outside the reader's PID
 * namespace as 0 (inside a host: the machine-side launcher of a container started from outside), and a kill of
 * PID 0 would hit the caller's own process group: those are left out.
 */
function cgroupPids(dir: string): number[] {
  try {
    return readFileSync(join(dir, 'cgroup.procs'), 'utf8')
      .split('\n')
      .map(Number)
      .filter((pid) => Number.isInteger(pid) && pid > 0);
  } catch {
    return [];
  }
}

/**
 * This process's PID of the process that is `hostPid` in its host, among the processes of a cgroup (the host's PID
 * is the next to last of NSpid: the last is the PID inside the container's own PID namespace).
 */
function findMachinePid(cgroup: string | null, hostPid: number): ProcRef | undefined {
  for (const pid of cgroup ? cgroupPids(cgroup) : []) {
    try {
      const m = /^NSpid:\s+(.*)$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
      const ns = m ? m[1].trim().split(/\s+/).map(Number) : [];
      if (ns.length >= 2 && ns[ns.length - 2] === hostPid) {
        const start = procStart(pid);
        if (start !== undefined) return { pid, start };
      }
    } catch {
      // gone
    }
  }
  return undefined;
}

/** Containers made of namespaces, an overlay and cgroups, in the precog test hosts. */
export class NamespaceRuntime implements ContainerRuntime, MovableRuntime {
  readonly kind = 'namespaces';
  readonly lazyRestore = true;
  readonly keepsProcessesAfterDump = true;
  readonly lazyDump = true;
  readonly imageHint = 'a base image built from the same recipe (see its .precog-rootfs.json)';

  /** The host checks (hostChecks) cover what precog's own containers need. */
  cannotRun(): string | null {
    return null;
  }
  /** Lazy restores whose pages are still being copied in. */
  private readonly lazy = new LazyWatches();

  lazyDone(name: string): Promise<LazyResult> | undefined {
    return this.lazy.done(name);
  }

  /** probeLazyDump's answer per host: CRIU and the kernel do not change under a running agent. */
  private readonly lazyProbes = new Map<string, Promise<string | null>>();

  /** Whether `criu dump --lazy-pages` works in HOST (src/criu/lazydump.ts, probeLazyDump): asked once per host. */
  probeLazyDump(host: string): Promise<string | null> {
    const site = this.site(host);
    let answer = this.lazyProbes.get(site.name);
    if (!answer) {
      const criu = new CriuRunner({ site, dir: posix.join(CHECKPOINTS_DIR, `lazy-probe-${Date.now()}`) });
      answer = probeLazyDump(criu, site).finally(() => removeTree(criu.onMachine(criu.dir)).catch(() => {}));
      this.lazyProbes.set(site.name, answer);
    }
    return answer;
  }

  /**
   * `sites`: the hosts this runtime acts on. Default: the test hosts, seen from the machine (`precog run/ps/stop`);
   * an agent passes the one host it runs in (localSite()).
   */
  constructor(private readonly sitesOf?: () => Site[]) {}

  private sites(): Site[] {
    if (this.sitesOf) return this.sitesOf();
    const s = readState();
    if (!s || !s.complete) throw new UsageError('the testbed is not up; start it with "precog testbed up"');
    return s.hosts.filter((h) => isAlive(h.init)).map((h) => machineSite(s, h.name));
  }

  /** The host NAME (a test host, or the one this runtime runs in). */
  site(name: string): Site {
    const all = this.sites();
    const want = this.sitesOf ? name : parseHost(name).name;
    const site = all.find((x) => x.name === want);
    if (!site)
      throw new UsageError(
        this.sitesOf
          ? `this runtime acts on host ${all.map((x) => x.name).join(', ')}, not ${name}`
          : `test host ${want} is not running; start the testbed with "precog testbed up"`,
      );
    return site;
  }

  /** The container's directory on a host, for this process. */
  static dirOn(site: Site, name: string): string {
    return join(site.containersDir, name);
  }

  private cgroupsFor(site: Site, name: string): { v2: string | null; mem: string | null } {
    const parent = site.cgroupParent;
    const v2 = parent ? join(parent, `${site.name}-${name}`) : null;
    const kind = memoryController(parent);
    const mem =
      kind === 'v2'
        ? v2
        : kind === 'v1'
          ? join(CGROUP_V1_MEMORY, parent ? basename(parent) : 'precog', `${site.name}-${name}`)
          : null;
    return { v2, mem };
  }

  private find(name: string): Located | undefined {
    for (const site of this.sites()) {
      const at = this.locateOn(site, name);
      if (at) return at;
    }
    return undefined;
  }

  /** The container NAME on a host (during a migration the name exists on both hosts: locate() finds the first). */
  private locateOn(site: Site, name: string): Located | undefined {
    const dir = NamespaceRuntime.dirOn(site, name);
    return existsSync(join(dir, 'state.json')) ? { site, dir } : undefined;
  }

  private must(name: string): Located {
    validateName(name);
    const at = this.find(name);
    if (!at) throw new UsageError(`no container named "${name}"; "precog ps" lists them`);
    return at;
  }

  /**
   * The state file with the live status, and `machinePid` as this process sees the container's PID 1: found
   * again each time from the container's cgroup (the file may have been written in another PID namespace: by the
   * agent inside the host, or by the machine).
   */
  private read(at: Located): ContainerInfo {
    const info = JSON.parse(readFileSync(join(at.dir, 'state.json'), 'utf8')) as ContainerInfo;
    if (info.status === 'stopped') return { ...info, pid: null, machinePid: null };
    const v2 = this.cgroupsFor(at.site, info.name).v2;
    const ref =
      v2 && info.pid !== null && existsSync(v2)
        ? (findMachinePid(v2, info.pid) ?? null)
        : isAlive(info.machinePid)
          ? info.machinePid
          : null;
    if (!ref) return { ...info, machinePid: null, status: info.pid ? 'exited' : 'created' };
    let frozen = false;
    try {
      frozen = v2 !== null && readFileSync(join(v2, 'cgroup.events'), 'utf8').includes('frozen 1');
    } catch {
      // no cgroup2
    }
    return { ...info, machinePid: ref, status: frozen ? 'frozen' : 'running' };
  }

  private write(at: Located, info: ContainerInfo): void {
    const file = join(at.dir, 'state.json');
    writeFileSync(`${file}.tmp`, JSON.stringify(info, null, 2) + '\n');
    renameSync(`${file}.tmp`, file);
  }

  async run(spec: ContainerSpec): Promise<ContainerInfo> {
    validateName(spec.name);
    if (spec.command.length === 0)
      throw new UsageError(
        'nothing to run: give a command after --, e.g. precog run --host a --name c -- sleep 60',
      );
    const host = this.site(spec.host);
    const existing = this.find(spec.name);
    if (existing) {
      const other = this.read(existing);
      throw new UsageError(
        `a container named "${spec.name}" already exists on host ${existing.site.name} (${other.status}); ` +
          `remove it with "precog stop ${spec.name}" or choose another name`,
      );
    }
    let network: ContainerNetwork | null = null;
    if (spec.address !== undefined) {
      const address = parseServiceAddress(spec.address);
      const holder = (await this.list()).find((c) => c.network?.address === address);
      if (holder)
        throw new UsageError(
          `address ${address} is taken by container ${holder.name} on host ${holder.host}; choose another --ip`,
        );
      network = serviceNetworkFor(host, address);
    }
    const dir = NamespaceRuntime.dirOn(host, spec.name);
    await removeTree(dir);
    for (const d of ['upper', 'work', 'root']) mkdirSync(join(dir, d), { recursive: true });
    if (network) writeFileSync(join(dir, 'net-wait'), '');
    // The workloads go into the writable layer: the container is self-contained (no bind mount from outside,
    // which CRIU could not resolve) and carries them along when it migrates.
    cpSync(join(REPO_DIR, 'workloads'), join(dir, 'upper', WORKLOADS_DIR), { recursive: true });
    // The repository's traces (for workloads/replay.py): only those the command names, since a container carries
    // its whole writable layer along every time it migrates (traces/ holds megabytes).
    for (const file of namedTraces(spec.command)) {
      mkdirSync(dirname(join(dir, 'upper', TRACES_DIR, file)), { recursive: true });
      cpSync(join(REPO_DIR, 'traces', file), join(dir, 'upper', TRACES_DIR, file));
    }

    const cg = this.cgroupsFor(host, spec.name);
    const procs: string[] = [];
    const memoryBytes = spec.memoryBytes ?? null;
    if (cg.v2) {
      await rmCgroup(cg.v2);
      mkdirSync(cg.v2);
      procs.push(join(cg.v2, 'cgroup.procs'));
    }
    if (memoryBytes !== null) {
      if (!cg.mem)
        throw new UsageError('--memory needs the cgroup memory controller, which this machine lacks');
      if (cg.mem !== cg.v2) {
        await rmCgroup(cg.mem);
        mkdirSync(cg.mem, { recursive: true });
        writeFileSync(join(cg.mem, 'memory.limit_in_bytes'), String(memoryBytes));
        // Without swap accounting limits nothing more; with swap, the limit covers memory + swap.
        try {
          writeFileSync(join(cg.mem, 'memory.memsw.limit_in_bytes'), String(memoryBytes));
        } catch {
          // no swap accounting
        }
        procs.push(join(cg.mem, 'cgroup.procs'));
      } else {
        writeFileSync(join(cg.mem, 'memory.max'), String(memoryBytes));
        writeFileSync(join(cg.mem, 'memory.swap.max'), '0');
      }
    }
    const info: ContainerInfo = {
      schema: CONTAINER_STATE_SCHEMA,
      name: spec.name,
      host: host.name,
      runtime: this.kind,
      command: spec.command,
      created: new Date().toISOString(),
      memoryBytes,
      pid: null,
      machinePid: null,
      status: 'created',
      dir: join(CONTAINERS_DIR, spec.name),
      cgroups: [...new Set([cg.v2, memoryBytes !== null ? cg.mem : null].filter((c): c is string => !!c))],
      network,
    };
    const at: Located = { site: host, dir };
    this.write(at, info);

    const command = spec.env
      ? ['/usr/bin/env', ...Object.entries(spec.env).map(([k, v]) => `${k}=${v}`), ...spec.command]
      : spec.command;
    writeFileSync(join(dir, 'init.sh'), INIT_SCRIPT);
    const launchLog = join(dir, 'launch.log');
    const fd = openSync(launchLog, 'w');
    let child;
    try {
      child = spawn(
        '/bin/sh',
        [
          '-c',
          LAUNCH_SCRIPT,
          'precog-launch',
          host.nsPid !== null ? String(host.nsPid) : '-',
          procs.length > 0 ? procs.join(':') : '-',
          join(dir, 'init.sh'),
          network ? 'net' : '-',
          dir,
          host.rootfs,
          spec.name,
          ...command,
        ],
        { detached: true, stdio: ['ignore', fd, fd], env: { PATH: CONTAINER_PATH, LANG: 'C.UTF-8' } },
      );
    } finally {
      closeSync(fd);
    }
    child.unref();
    let exited = false;
    child.on('exit', () => (exited = true));
    const pidsFile = join(dir, 'pids');
    const startedFile = join(dir, 'started');
    let netError: unknown;
    if (network) {
      // The init waits for its network before it builds its root (INIT_SCRIPT): give it the veth pair and address.
      await waitUntil(() => exited || existsSync(pidsFile), 15_000);
      const first = existsSync(pidsFile)
        ? Number(readFileSync(pidsFile, 'utf8').trim().split(/\s+/)[0] || 0)
        : 0;
      try {
        if (!first) throw new Error('the container did not start');
        await removeHostLink(host, network);
        await attachNetwork(host, first, network);
        // A new MAC for the address: tell the LAN (its neighbours may still hold an earlier container's).
        await announceNetwork(host, first, network);
        writeFileSync(join(dir, 'net-ready'), '');
      } catch (err) {
        netError = err;
      }
    }
    if (!netError) await waitUntil(() => exited || existsSync(startedFile), 15_000);
    let pids: number[] = [];
    try {
      pids = readFileSync(pidsFile, 'utf8').trim().split(/\s+/).map(Number);
    } catch {
      // never got that far
    }
    const ref = pids[0] ? procStart(pids[0]) : undefined;
    if (netError || !existsSync(startedFile) || ref === undefined) {
      const why =
        (netError ? `its network: ${(netError as Error).message}` : '') ||
        tail(launchLog, 4) ||
        tail(join(dir, 'upper', CONTAINER_LOG), 4);
      if (!process.env.PRECOG_KEEP_FAILED) await this.cleanup(at, info);
      throw new Error(`container ${spec.name} did not start${why ? `: ${why}` : ''}`);
    }
    info.machinePid = { pid: pids[0], start: ref };
    info.pid = pids[pids.length - 2];
    info.status = 'running';
    this.write(at, info);
    return this.read(at);
  }

  async list(hostName?: string): Promise<ContainerInfo[]> {
    let sites: Site[];
    try {
      sites = this.sites();
    } catch {
      return []; // no testbed
    }
    const only = hostName ? (this.sitesOf ? hostName : parseHost(hostName).name) : undefined;
    const out: ContainerInfo[] = [];
    for (const host of sites) {
      if (only && host.name !== only) continue;
      const base = host.containersDir;
      let names: string[] = [];
      try {
        names = readdirSync(base).sort();
      } catch {
        continue;
      }
      for (const name of names) {
        const dir = join(base, name);
        if (!existsSync(join(dir, 'state.json'))) continue;
        try {
          out.push(this.read({ site: host, dir }));
        } catch {
          // a state file being written: skip it this time
        }
      }
    }
    return out;
  }

  async inspect(name: string): Promise<ContainerInfo | undefined> {
    validateName(name);
    const at = this.find(name);
    return at ? this.read(at) : undefined;
  }

  async stop(name: string, opts: StopOptions = {}): Promise<ContainerInfo> {
    const at = this.must(name);
    const info = this.read(at);
    const cg = this.cgroupsFor(at.site, name);
    // A frozen container cannot act on SIGTERM: thaw it first.
    if (cg.v2 && existsSync(join(cg.v2, 'cgroup.freeze'))) writeFileSync(join(cg.v2, 'cgroup.freeze'), '0');
    if (isAlive(info.machinePid)) {
      try {
        process.kill(info.machinePid.pid, 'SIGTERM');
      } catch {
        // gone already
      }
      await waitUntil(() => !isAlive(info.machinePid), opts.timeoutMs ?? 3000);
    }
    await this.cleanup(at, info, opts.keepLayer);
    if (isAlive(info.machinePid))
      throw new Error(`container ${name} (pid ${info.machinePid.pid}) survived SIGKILL`);
    return { ...info, status: 'stopped', pid: null, machinePid: null };
  }

  /** Kills every process of the container (its cgroups and its PID 1), removes the cgroups and the layer. */
  private async cleanup(at: Located, info: ContainerInfo, keepLayer = false): Promise<void> {
    const cg = this.cgroupsFor(at.site, info.name);
    if (cg.v2 && existsSync(join(cg.v2, 'cgroup.kill')) && cgroupPids(cg.v2).length > 0)
      writeFileSync(join(cg.v2, 'cgroup.kill'), '1');
    for (const dir of [cg.v2, cg.mem])
      for (const pid of dir ? cgroupPids(dir) : []) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // gone
        }
      }
    if (isAlive(info.machinePid)) {
      try {
        process.kill(info.machinePid.pid, 'SIGKILL');
      } catch {
        // gone
      }
    }
    await waitUntil(() => !isAlive(info.machinePid), 3000);
    if (info.network) await removeHostLink(at.site, info.network);
    for (const dir of [cg.v2, cg.mem]) {
      if (!dir) continue;
      await waitUntil(() => cgroupPids(dir).length === 0, 3000);
      if (!(await rmCgroup(dir))) throw new Error(`cannot remove cgroup ${dir}: it still has processes`);
    }
    // The v1 memory parent precog made, once its last container is gone (cgroup2's is the testbed's own).
    if (cg.mem && cg.mem !== cg.v2) {
      try {
        rmdirSync(dirname(cg.mem));
      } catch {
        // other containers still there
      }
    }
    if (keepLayer) {
      this.write(at, { ...info, status: 'stopped', pid: null, machinePid: null });
    } else {
      await removeTree(at.dir);
    }
  }

  async logs(name: string): Promise<string> {
    const at = this.must(name);
    try {
      return readFileSync(join(at.dir, 'upper', CONTAINER_LOG), 'utf8');
    } catch {
      return '';
    }
  }

  private async setFrozen(name: string, frozen: boolean, located?: Located): Promise<void> {
    const at = located ?? this.must(name);
    const v2 = this.cgroupsFor(at.site, name).v2;
    if (!v2 || !existsSync(join(v2, 'cgroup.freeze')))
      throw new Error(`container ${name} has no cgroup2 directory to freeze`);
    writeFileSync(join(v2, 'cgroup.freeze'), frozen ? '1' : '0');
    const want = `frozen ${frozen ? 1 : 0}`;
    if (!(await waitUntil(() => readFileSync(join(v2, 'cgroup.events'), 'utf8').includes(want), 5000)))
      throw new Error(`container ${name} did not ${frozen ? 'freeze' : 'thaw'} within 5 s`);
  }

  /**
   * Checkpoint: freeze (cgroup2), `criu dump -R` inside the host, copy the writable layer and the state while still
   * frozen (memory and files from the same instant), then thaw (or stop with `leaveStopped`). DIR (on this machine)
   * gets images/, upper/, state.json, checkpoint.json and dump.log. If the dump fails, the container is thawed and
   * keeps running; the CriuError carries CRIU's error lines.
   */
  async checkpoint(
    name: string,
    outDir: string,
    opts: CheckpointOptions & { host?: string } = {},
  ): Promise<CheckpointResult> {
    const at = opts.host === undefined ? this.must(name) : this.mustOn(name, opts.host);
    const info = this.read(at);
    if (info.status !== 'running' || info.pid === null)
      throw new UsageError(
        `container ${name} is ${info.status}; only a running container can be checkpointed`,
      );
    if (opts.lazyMemory && opts.pageServer)
      throw new UsageError('a dump goes to a page server or lazily, not both');
    const out = resolve(outDir);
    if (existsSync(out) && readdirSync(out).length > 0)
      throw new UsageError(`${out} exists and is not empty; give a new directory to --out`);
    mkdirSync(out, { recursive: true });
    const id = `${name}-${Date.now()}`;
    const criu = new CriuRunner({ site: at.site, dir: posix.join(CHECKPOINTS_DIR, id) });
    const t0 = performance.now();
    criu.prepare();
    // CRIU stops the tasks itself (ptrace); a container frozen by cgroup2 beforehand never runs CRIU's parasite
    // (the dump hangs at "Parasite syscall_ip"). The post-dump hook keeps the tasks stopped while precog copies
    // the writable layer, so files and memory are from the same instant.
    const hook = criu.path('post-dump.sh');
    writeFileSync(criu.onMachine(hook), POST_DUMP_SCRIPT, { mode: 0o755 });
    const dumpedFile = criu.onMachine(criu.path('dumped'));
    const goFile = criu.onMachine(criu.path('go'));
    const v2 = this.cgroupsFor(at.site, name).v2;
    // A move locks the container's network first, and keeps it locked after the dump (svcnet.ts, lockNetwork).
    const locked = !!(opts.keepFrozen && info.network);
    if (locked) await lockNetwork(at.site, info.network!);
    let settled = false;
    const lazyEnd = opts.lazyMemory ? new LazyDumpEnd() : undefined;
    const dumping = criu
      .dump({
        pid: info.pid,
        images: criu.path('images'),
        leaveRunning: true,
        pageServer: opts.pageServer ?? lazyEnd,
        lazy: !!lazyEnd,
        extra: ['--action-script', hook, ...dumpNetworkArgs(info.network)],
      })
      .finally(() => (settled = true));
    dumping.catch(() => {});
    await waitUntil(() => settled || existsSync(dumpedFile), 600_000, 5);
    const tHook = performance.now();
    let tLayer = tHook;
    let tMemory = tHook;
    let copyError: unknown;
    let froze = false;
    if (!settled && existsSync(dumpedFile)) {
      try {
        copyTree(join(at.dir, 'upper'), join(out, 'upper'), 'copying the writable layer');
        if (opts.keepFrozen && v2) {
          // The tasks are stopped by CRIU; frozen by the cgroup they stay when CRIU lets them go.
          writeFileSync(join(v2, 'cgroup.freeze'), '1');
          froze = true;
        }
      } catch (err) {
        copyError = err;
      }
      writeFileSync(goFile, copyError ? 'fail\n' : 'ok\n');
      tLayer = performance.now();
      if (lazyEnd && !copyError) {
        // The images are written (post-dump runs after them); CRIU now holds the stopped tasks for their pages.
        try {
          await opts.lazyMemory!(criu.onMachine(criu.path('images')));
          tMemory = performance.now();
          lazyEnd.close();
        } catch (err) {
          copyError = err;
        }
      }
    }
    if (lazyEnd && (copyError || settled)) lazyEnd.destroy();
    let dumpMs = 0;
    let lazySteps: CheckpointResult['lazySteps'];
    try {
      const run = await dumping;
      if (copyError) throw copyError;
      dumpMs = run.durationMs;
      if (lazyEnd)
        lazySteps = {
          criuMs: tHook - t0,
          layerMs: tLayer - tHook,
          memoryMs: tMemory - tLayer,
          endMs: performance.now() - tMemory,
        };
      // Renamed from the host's writable layer (the host's own view of it is another mount, so a rename through
      // it would be a copy: seconds per GiB of a full dump); copied when that fails.
      moveTree(
        [at.site.fsPath(criu.path('images')), criu.onMachine(criu.path('images'))],
        join(out, 'images'),
        'moving the images',
      );
      copyTree(criu.onMachine(criu.path('dump.log')), join(out, 'dump.log'), 'copying the dump log');
      writeFileSync(join(out, 'state.json'), JSON.stringify(info, null, 2) + '\n');
      if (froze) await this.setFrozen(name, true, at);
    } catch (err) {
      if (froze) await this.setFrozen(name, false, at).catch(() => {});
      if (locked) await unlockNetwork(at.site, info.network!).catch(() => {});
      await removeTree(criu.onMachine(criu.dir)).catch(() => {});
      throw copyError ?? err;
    }
    if (opts.leaveStopped) await this.cleanup(at, info);
    const frozenMs = performance.now() - t0;
    await removeTree(criu.onMachine(criu.dir));
    const result: CheckpointResult = {
      dir: out,
      name,
      host: at.site.name,
      frozenMs,
      dumpMs,
      imageBytes: duBytes(join(out, 'images')),
      layerBytes: duBytes(join(out, 'upper')),
      ...(lazySteps ? { lazySteps } : {}),
    };
    const manifest = {
      schema: CHECKPOINT_SCHEMA,
      created: new Date().toISOString(),
      container: name,
      host: at.site.name,
      pid: info.pid,
      command: info.command,
      memoryBytes: info.memoryBytes,
      rootfs: at.site.rootfs,
      dumpMs,
      frozenMs,
      imageBytes: result.imageBytes,
      layerBytes: result.layerBytes,
    };
    writeFileSync(join(out, 'checkpoint.json'), JSON.stringify(manifest, null, 2) + '\n');
    return result;
  }

  /**
   * Restore: a new container directory in HOST with a copy of the saved writable layer and images, its cgroups,
   * then `criu restore -d --root` from the small root of RESTORE_ROOT_SCRIPT in the host's network and PID
   * namespaces. On failure everything made here is removed (the restore log is copied into the checkpoint as
   * restore-failed.log) and the CriuError carries CRIU's error lines; nothing else is touched.
   */
  async restore(dir: string, hostName: string, opts: RestoreOptions = {}): Promise<ContainerInfo> {
    const src = resolve(dir);
    let saved: ContainerInfo;
    try {
      saved = JSON.parse(readFileSync(join(src, 'state.json'), 'utf8')) as ContainerInfo;
    } catch (err) {
      throw new UsageError(`${src} is not a precog checkpoint (state.json: ${(err as Error).message})`);
    }
    for (const part of ['images', 'upper'])
      if (!existsSync(join(src, part)))
        throw new UsageError(`${src} is not a precog checkpoint (no ${part}/)`);
    const name = validateName(opts.name ?? saved.name);
    const host = this.site(hostName);
    const existing = this.find(name);
    if (existing && existing.site.name !== opts.replacingOn) {
      throw new UsageError(
        `a container named "${name}" already exists on host ${existing.site.name} (${this.read(existing).status}); ` +
          `stop it or restore with --name NEW`,
      );
    }
    if (saved.network) {
      const holder = (await this.list()).find(
        (c) =>
          c.network?.address === saved.network!.address && !(c.name === name && c.host === opts.replacingOn),
      );
      if (holder)
        throw new UsageError(
          `the checkpoint's address ${saved.network.address} is taken by container ${holder.name} on host ` +
            `${holder.host}; stop it first (two containers cannot answer at one address)`,
        );
    }
    const cdir = NamespaceRuntime.dirOn(host, name);
    if (existsSync(cdir))
      throw new UsageError(`a container named "${name}" already exists on host ${host.name}`);
    // Root only: the writable layer may come from a peer, with its setuid files and owners (the container's).
    mkdirSync(cdir, { recursive: true, mode: 0o700 });
    const wd = join(cdir, 'checkpoint');
    for (const d of ['work', 'root', 'checkpoint']) mkdirSync(join(cdir, d), { recursive: true });
    const cg = this.cgroupsFor(host, name);
    const memoryBytes = saved.memoryBytes ?? null;
    const info: ContainerInfo = {
      ...saved,
      schema: CONTAINER_STATE_SCHEMA,
      name,
      host: host.name,
      runtime: this.kind,
      memoryBytes,
      pid: null,
      machinePid: null,
      status: 'created',
      dir: join(CONTAINERS_DIR, name),
      cgroups: [...new Set([cg.v2, memoryBytes !== null ? cg.mem : null].filter((c): c is string => !!c))],
    };
    const at: Located = { site: host, dir: cdir };
    this.write(at, info);
    try {
      const take = (from: string, to: string, what: string) => {
        if (opts.move) {
          try {
            renameSync(from, to);
            return;
          } catch (err) {
            if ((err as NodeJS.ErrnoException).code !== 'EXDEV') throw err;
          }
        }
        copyTree(from, to, what);
      };
      if (opts.move) rmSync(join(cdir, 'upper'), { recursive: true, force: true });
      take(join(src, 'upper'), join(cdir, 'upper'), 'copying the writable layer');
      take(join(src, 'images'), join(wd, 'images'), 'copying the images');
      const procs: string[] = [];
      if (cg.v2) {
        await rmCgroup(cg.v2);
        mkdirSync(cg.v2);
        procs.push(join(cg.v2, 'cgroup.procs'));
      }
      if (memoryBytes !== null && cg.mem && cg.mem !== cg.v2) {
        await rmCgroup(cg.mem);
        mkdirSync(cg.mem, { recursive: true });
        writeFileSync(join(cg.mem, 'memory.limit_in_bytes'), String(memoryBytes));
        procs.push(join(cg.mem, 'cgroup.procs'));
      } else if (memoryBytes !== null && cg.mem) {
        writeFileSync(join(cg.mem, 'memory.max'), String(memoryBytes));
      }
      const lazyMark = opts.lazy || opts.lazyPageServer ? markLazy(join(wd, 'images')) : null;
      if (opts.lazyPageServer && !lazyMark)
        throw new UsageError(
          'post-copy needs a lazy restore, and precog cannot tell the stack pages of this architecture (x86_64 only)',
        );
      const ps = opts.lazyPageServer;
      // CRIU makes the outer end of the veth pair here under its old name: a leftover of that name goes first.
      if (saved.network) await removeHostLink(host, saved.network);
      writeFileSync(join(wd, 'restore-root.sh'), RESTORE_ROOT_SCRIPT);
      // CriuRunner runs `<criu> restore -o LOG -v4 ARGS`: <criu> is this wrapper, with the paths baked in.
      const wrapper = join(wd, 'criu-in-host');
      const q = (x: string) => `'${x.replace(/'/g, `'\\''`)}'`;
      writeFileSync(
        wrapper,
        `#!/bin/sh\n# criu restore for container ${name} in host ${host.name} (precog)\n` +
          (lazyMark ? `PRECOG_LAZY_PAGES=${q(join(wd, 'images'))}\nexport PRECOG_LAZY_PAGES\n` : '') +
          (ps ? `PRECOG_LAZY_PS=${PS_SOCKET_FD}\nexport PRECOG_LAZY_PS\n` : '') +
          `exec /bin/sh -c ${q(RESTORE_LAUNCH_SCRIPT)} precog-restore ` +
          [
            host.nsPid !== null ? String(host.nsPid) : '-',
            procs.length ? procs.join(':') : '-',
            join(wd, 'restore-root.sh'),
            host.rootfs,
            join(cdir, 'upper'),
            join(cdir, 'work'),
            join(cdir, 'root'),
            wd,
          ]
            .map(q)
            .join(' ') +
          ' "$@"\n',
        { mode: 0o755 },
      );
      const criu = new CriuRunner({ dir: wd, criu: wrapper });
      const pidfile = join(wd, 'restore.pid');
      await criu.restore({
        images: join(wd, 'images'),
        pidfile,
        extra: [
          '--root',
          '/ctr',
          '--manage-cgroups=ignore',
          ...restoreNetworkArgs(saved.network),
          ...(lazyMark ? ['--lazy-pages'] : []),
        ],
        // A lazy restore that cannot reach its daemon waits forever: it gets the copy-in's limit.
        ...(lazyMark && opts.lazyTimeoutMs ? { timeoutMs: opts.lazyTimeoutMs } : {}),
        ...(ps ? { psSocket: ps } : {}),
      });
      const running = performance.now();
      const hostPid = Number(readFileSync(pidfile, 'utf8').trim());
      const machinePid = findMachinePid(cg.v2, hostPid);
      if (!machinePid) throw new Error(`restored container ${name}: pid ${hostPid} not found in ${cg.v2}`);
      info.pid = hostPid;
      info.machinePid = machinePid;
      info.status = 'running';
      this.write(at, info);
      if (saved.network) await announceNetwork(host, machinePid.pid, saved.network);
      if (lazyMark) {
        this.lazy.watch(name, wd, lazyMark, running, opts.lazyTimeoutMs);
      } else await removeTree(join(wd, 'images')).catch(() => {});
      return this.read(at);
    } catch (err) {
      try {
        copyTree(join(wd, 'restore.log'), join(src, 'restore-failed.log'), 'keeping the restore log');
      } catch {
        // no log
      }
      if (!process.env.PRECOG_KEEP_FAILED) await this.cleanup(at, info).catch(() => {});
      throw err;
    }
  }

  /** The writable layer as FILE (tar, zstd), taken while the container is frozen when it runs. */
  async exportLayer(name: string, file: string): Promise<void> {
    const at = this.must(name);
    const info = this.read(at);
    if (!hasTool('zstd'))
      throw new UsageError('export needs zstd on this machine (Debian package "zstd": apt-get install zstd)');
    const out = resolve(file);
    const frozen = info.status === 'running';
    if (frozen) await this.freeze(name);
    try {
      tool(
        'tar',
        [
          '--zstd',
          '--xattrs',
          '--xattrs-include=trusted.overlay.*',
          '-cpf',
          out,
          '-C',
          join(at.dir, 'upper'),
          '.',
        ],
        `export of ${name}`,
      );
    } finally {
      if (frozen) await this.thaw(name);
    }
  }

  freeze(name: string, host?: string): Promise<void> {
    return this.setFrozen(name, true, host === undefined ? undefined : this.mustOn(name, host));
  }

  thaw(name: string, host?: string): Promise<void> {
    return this.setFrozen(name, false, host === undefined ? undefined : this.mustOn(name, host));
  }

  /** The container NAME on HOST; a UsageError naming the containers there when there is none. */
  private mustOn(name: string, host: string): Located {
    validateName(name);
    const site = this.site(host);
    const at = this.locateOn(site, name);
    if (at) return at;
    let there: string[] = [];
    try {
      there = readdirSync(site.containersDir).filter((n) =>
        existsSync(join(site.containersDir, n, 'state.json')),
      );
    } catch {
      // none
    }
    throw new UsageError(
      `no container named "${name}" on host ${site.name}; there: ${there.length ? there.join(', ') : 'none'}`,
    );
  }

  async locate(name: string, host: string): Promise<ContainerInfo> {
    return this.read(this.mustOn(name, host));
  }

  async resumeSource(name: string, host: string): Promise<void> {
    const at = this.mustOn(name, host);
    const info = this.read(at);
    if (info.status === 'frozen') await this.setFrozen(name, false, at);
    // Its address answers from here again (the network was locked for the move).
    if (info.network) await unlockNetwork(at.site, info.network).catch(() => {});
  }

  async remove(name: string, host: string): Promise<void> {
    const at = this.locateOn(this.site(host), name);
    if (at) await this.cleanup(at, this.read(at));
  }

  /**
   * precog's containers need the base image they were made from (their lower layer): its identity is the recipe
   * in the image's stamp (suite, packages, CRIU's suite), which two hosts built from the same recipe share.
   */
  imageOf(info: ContainerInfo): string | null {
    return baseImageId(this.site(info.host).rootfs);
  }

  has(name: string, host: string): boolean {
    return this.locateOn(this.site(host), validateName(name)) !== undefined;
  }

  hasImage(image: string): boolean {
    return this.sites().some((s) => baseImageId(s.rootfs) === image);
  }

  forgetLazy(name: string): void {
    this.lazy.forget(name);
  }

  async setPostcopyPending(name: string, host: string, pending: PostcopyPending | null): Promise<void> {
    writePending(join(this.mustOn(name, host).dir, POSTCOPY_PENDING_FILE), pending);
  }

  async postcopyPending(name: string, host: string): Promise<PostcopyPending | undefined> {
    const at = this.locateOn(this.site(host), name);
    return at ? readPending(join(at.dir, POSTCOPY_PENDING_FILE)) : undefined;
  }
}

/** The runtime precog uses (the only one so far). */
export function defaultRuntime(): ContainerRuntime {
  return new NamespaceRuntime();
}

/** For messages: the hosts a container can run on. */
export const HOST_NAMES = HOSTS.map((h) => h.name);

/** Whether the cgroup2 hierarchy exists at all (for docs and tests). */
export const hasCgroup2 = (): boolean => cgroup2Root() !== null;
