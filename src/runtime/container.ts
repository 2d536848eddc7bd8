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
import { spawn } from 'node:child_process';
import {
  closeSync,
  existsSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  rmdirSync,
  writeFileSync,
  cpSync,
  renameSync,
} from 'node:fs';
import { dirname, join } from 'node:path';
import { UsageError } from '../util/errors.ts';
import { removeTree } from './rootfs.ts';
import {
  cgroup2Root,
  HOSTS,
  isAlive,
  parseHost,
  procStart,
  readState,
  REPO_DIR,
  type HostState,
  type ProcRef,
  type TestbedState,
} from './testbed.ts';

export const CONTAINER_STATE_SCHEMA = 'precog.container/v1';
/** Where a host keeps its containers (a path inside the host). */
export const CONTAINERS_DIR = '/var/lib/precog/containers';
/** The container's stdout and stderr, a path inside the container (so inside its writable layer). */
export const CONTAINER_LOG = '/var/log/container.log';
/** Where the workloads of workloads/ are installed in every container (a path inside the container). */
export const WORKLOADS_DIR = '/opt/precog/workloads';
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
}

const NAME_RE = /^[a-z0-9][a-z0-9_.-]{0,62}$/i;

export function validateName(name: string): string {
  if (!NAME_RE.test(name))
    throw new UsageError(
      `container name "${name}" must be 1-63 letters, digits, ".", "_" or "-", starting with a letter or digit`,
    );
  return name;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function waitUntil(cond: () => boolean, ms: number, step = 25): Promise<boolean> {
  const end = performance.now() + ms;
  for (;;) {
    if (cond()) return true;
    if (performance.now() > end) return false;
    await sleep(step);
  }
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
# NSpid: the PID on the machine, in the host, in the container (the machine's /proc is still mounted here).
while read -r key machine host rest; do
	if [ "$key" = NSpid: ]; then echo "$machine $host" >"$dir/pids"; fi
done </proc/self/status
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
 * starts INIT_SCRIPT as PID 1 of new mount, PID, UTS and IPC namespaces. Arguments: init pid of the host, the
 * cgroup.procs files (":"-separated, or "-"), then INIT_SCRIPT's arguments.
 */
export const LAUNCH_SCRIPT = String.raw`set -eu
hostpid=$1 procs=$2 init=$3
shift 3
if [ "$procs" != - ]; then
	old_ifs=$IFS IFS=:
	for f in $procs; do echo $$ >"$f"; done
	IFS=$old_ifs
fi
exec nsenter -t "$hostpid" -n -p -- unshare --mount --propagation private --uts --ipc --pid --fork -- \
	/bin/sh "$init" "$@"
`;

interface Located {
  state: TestbedState;
  host: HostState;
  /** The container's directory on the machine. */
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

function cgroupPids(dir: string): number[] {
  try {
    return readFileSync(join(dir, 'cgroup.procs'), 'utf8').split('\n').filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

/** Containers made of namespaces, an overlay and cgroups, in the precog test hosts. */
export class NamespaceRuntime implements ContainerRuntime {
  readonly kind = 'namespaces';

  private testbed(): TestbedState {
    const s = readState();
    if (!s || !s.complete) throw new UsageError('the testbed is not up; start it with "precog testbed up"');
    return s;
  }

  private hostState(state: TestbedState, name: string): HostState {
    const spec = parseHost(name);
    const h = state.hosts.find((x) => x.name === spec.name);
    if (!h || !isAlive(h.init))
      throw new UsageError(
        `test host ${spec.name} is not running; start the testbed with "precog testbed up"`,
      );
    return h;
  }

  /** The container's directory on the machine for a host. */
  static dirOn(host: HostState, name: string): string {
    return join(host.dir, 'upper', CONTAINERS_DIR, name);
  }

  private cgroupsFor(host: HostState, name: string): { v2: string | null; mem: string | null } {
    const parent = host.cgroup ? dirname(host.cgroup) : null;
    const v2 = parent ? join(parent, `${host.name}-${name}`) : null;
    const kind = memoryController(parent);
    const mem =
      kind === 'v2'
        ? v2
        : kind === 'v1'
          ? join(CGROUP_V1_MEMORY, 'precog-testbed', `${host.name}-${name}`)
          : null;
    return { v2, mem };
  }

  private locate(name: string): Located | undefined {
    const state = this.testbed();
    for (const host of state.hosts) {
      const dir = NamespaceRuntime.dirOn(host, name);
      if (existsSync(join(dir, 'state.json'))) return { state, host, dir };
    }
    return undefined;
  }

  private must(name: string): Located {
    validateName(name);
    const at = this.locate(name);
    if (!at) throw new UsageError(`no container named "${name}"; "precog ps" lists them`);
    return at;
  }

  private read(at: Located): ContainerInfo {
    const info = JSON.parse(readFileSync(join(at.dir, 'state.json'), 'utf8')) as ContainerInfo;
    if (info.status === 'stopped') return { ...info, pid: null, machinePid: null };
    if (!isAlive(info.machinePid)) return { ...info, status: info.machinePid ? 'exited' : 'created' };
    const v2 = this.cgroupsFor(at.host, info.name).v2;
    let frozen = false;
    try {
      frozen = v2 !== null && readFileSync(join(v2, 'cgroup.events'), 'utf8').includes('frozen 1');
    } catch {
      // no cgroup2
    }
    return { ...info, status: frozen ? 'frozen' : 'running' };
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
    const state = this.testbed();
    const host = this.hostState(state, spec.host);
    const existing = this.locate(spec.name);
    if (existing) {
      const other = this.read(existing);
      throw new UsageError(
        `a container named "${spec.name}" already exists on host ${existing.host.name} (${other.status}); ` +
          `remove it with "precog stop ${spec.name}" or choose another name`,
      );
    }
    const dir = NamespaceRuntime.dirOn(host, spec.name);
    await removeTree(dir);
    for (const d of ['upper', 'work', 'root']) mkdirSync(join(dir, d), { recursive: true });
    // The workloads go into the writable layer: the container is self-contained (no bind mount from outside,
    // which CRIU could not resolve) and carries them along when it migrates.
    cpSync(join(REPO_DIR, 'workloads'), join(dir, 'upper', WORKLOADS_DIR), { recursive: true });

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
    };
    const at: Located = { state, host, dir };
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
          String(host.init!.pid),
          procs.length > 0 ? procs.join(':') : '-',
          join(dir, 'init.sh'),
          dir,
          state.rootfs,
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
    await waitUntil(() => exited || existsSync(startedFile), 15_000);
    let pids: number[] = [];
    try {
      pids = readFileSync(pidsFile, 'utf8').trim().split(/\s+/).map(Number);
    } catch {
      // never got that far
    }
    const ref = pids[0] ? procStart(pids[0]) : undefined;
    if (!existsSync(startedFile) || ref === undefined) {
      const why = tail(launchLog, 4) || tail(join(dir, 'upper', CONTAINER_LOG), 4);
      if (!process.env.PRECOG_KEEP_FAILED) await this.cleanup(at, info);
      throw new Error(`container ${spec.name} did not start${why ? `: ${why}` : ''}`);
    }
    info.machinePid = { pid: pids[0], start: ref };
    info.pid = pids[1];
    info.status = 'running';
    this.write(at, info);
    return this.read(at);
  }

  async list(hostName?: string): Promise<ContainerInfo[]> {
    const state = readState();
    if (!state) return [];
    const only = hostName ? parseHost(hostName).name : undefined;
    const out: ContainerInfo[] = [];
    for (const host of state.hosts) {
      if (only && host.name !== only) continue;
      const base = join(host.dir, 'upper', CONTAINERS_DIR);
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
          out.push(this.read({ state, host, dir }));
        } catch {
          // a state file being written: skip it this time
        }
      }
    }
    return out;
  }

  async inspect(name: string): Promise<ContainerInfo | undefined> {
    validateName(name);
    const at = this.locate(name);
    return at ? this.read(at) : undefined;
  }

  async stop(name: string, opts: StopOptions = {}): Promise<ContainerInfo> {
    const at = this.must(name);
    const info = this.read(at);
    const cg = this.cgroupsFor(at.host, name);
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
    const cg = this.cgroupsFor(at.host, info.name);
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

  private async setFrozen(name: string, frozen: boolean): Promise<void> {
    const at = this.must(name);
    const v2 = this.cgroupsFor(at.host, name).v2;
    if (!v2 || !existsSync(join(v2, 'cgroup.freeze')))
      throw new Error(`container ${name} has no cgroup2 directory to freeze`);
    writeFileSync(join(v2, 'cgroup.freeze'), frozen ? '1' : '0');
    const want = `frozen ${frozen ? 1 : 0}`;
    if (!(await waitUntil(() => readFileSync(join(v2, 'cgroup.events'), 'utf8').includes(want), 5000)))
      throw new Error(`container ${name} did not ${frozen ? 'freeze' : 'thaw'} within 5 s`);
  }

  freeze(name: string): Promise<void> {
    return this.setFrozen(name, true);
  }

  thaw(name: string): Promise<void> {
    return this.setFrozen(name, false);
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
