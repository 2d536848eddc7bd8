/**
 * Where a container runtime acts: one host, seen either from inside it (what an agent on a real server does, and
 * what each test host's agent does) or from the machine that runs the test hosts (`precog run/ps/stop` of the
 * testbed). The runtime's code is the same for both; only the paths, the way into the host's namespaces and the
 * cgroup parent differ, and those live here.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, posix } from 'node:path';
import { hostname } from 'node:os';

/** A host's own data directory (containers, agent state, checkpoints): a real directory, not an overlay. */
export const HOST_DATA_DIR = '/var/lib/precog';
/** Where a host keeps its containers' directories (a path inside the host). */
export const CONTAINERS_DIR = posix.join(HOST_DATA_DIR, 'containers');
/** Where a host keeps checkpoint work directories while CRIU dumps (a path inside the host). */
export const CHECKPOINTS_DIR = posix.join(HOST_DATA_DIR, 'checkpoints');
/** The base image containers are made from, read-only, inside a test host. */
export const BASE_IN_HOST = '/var/cache/precog/base';

/** What every podman command gets in its environment (the test hosts' cgroups are hybrid: v1 controllers). */
export const PODMAN_ENV: Record<string, string> = { PODMAN_IGNORE_CGROUPSV1_WARNING: '1' };

/** A command line to spawn. */
export interface SiteCommand {
  cmd: string;
  args: string[];
  env: NodeJS.ProcessEnv;
}

/** What CRIU's runner needs of the place it runs in: a way to run commands there, and to reach its files. */
export interface CommandSite {
  readonly name: string;
  /** The command line that runs argv in the host. */
  command(argv: readonly string[]): SiteCommand;
  /** A path inside the host -> the same file for this process. */
  path(inHost: string): string;
}

export interface Site extends CommandSite {
  /** Where the containers' directories are, for this process. */
  readonly containersDir: string;
  /** The base image (the lower layer of every container), for this process. */
  readonly rootfs: string;
  /** A process whose network and PID namespaces are the host's; null when this process is in them already. */
  readonly nsPid: number | null;
  /** The host's network namespace for `ip -n`; null: this process's own. */
  readonly netns: string | null;
  /** The cgroup2 directory under which the containers' cgroups go (HOST-NAME), or null without cgroup2. */
  readonly cgroupParent: string | null;
  /** The service LAN the host's bridge joins (containers with an address of their own), if any. */
  readonly serviceNet: { prefixLength: number; hostBridge: string } | null;
  /**
   * A path inside the host -> the same file by this process's own mounts, where renames within the host's data
   * directory stay on one mount (path() may go through another view of it, where a rename is a copy).
   */
  fsPath(inHost: string): string;
  /** True when this process is inside the host (an agent), false when it acts from the outside. */
  readonly local: boolean;
}

/** Mount point of the cgroup2 hierarchy (the unified one in hybrid setups), or null. */
export function cgroup2Mount(): string | null {
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const [left, right] = line.split(' - ');
    if (right?.startsWith('cgroup2 ')) return left.split(' ')[4];
  }
  return null;
}

/** This process's cgroup2 directory (from /proc/self/cgroup), or null. */
function ownCgroup(): string | null {
  const root = cgroup2Mount();
  if (!root) return null;
  try {
    const line = readFileSync('/proc/self/cgroup', 'utf8')
      .split('\n')
      .find((l) => l.startsWith('0::'));
    return line ? join(root, line.slice(3)) : null;
  } catch {
    return null;
  }
}

export interface LocalSiteOptions {
  /** The host's name (containers' cgroups are named HOST-NAME). Default: the host name. */
  name?: string;
  /** The base image. Default: BASE_IN_HOST when it exists. */
  rootfs?: string;
  /** Where the containers' directories go. Default: CONTAINERS_DIR. */
  containersDir?: string;
  serviceNet?: Site['serviceNet'];
}

/**
 * The host this process runs in. Containers' cgroups go next to this process's own cgroup (an agent in
 * precog-testbed/b makes precog-testbed/b-NAME), so a whole host's tree can be removed at once.
 */
export function localSite(o: LocalSiteOptions = {}): Site {
  const own = ownCgroup();
  const rootfs = o.rootfs ?? (existsSync(BASE_IN_HOST) ? BASE_IN_HOST : '/');
  return {
    name: o.name ?? hostname(),
    containersDir: o.containersDir ?? CONTAINERS_DIR,
    rootfs,
    nsPid: null,
    netns: null,
    cgroupParent: own ? dirname(own) : null,
    serviceNet: o.serviceNet ?? null,
    local: true,
    command: (argv) => ({ cmd: argv[0], args: argv.slice(1), env: process.env }),
    path: (p) => p,
    fsPath: (p) => p,
  };
}

/** Whether a command is on this process's PATH. */
export function hasTool(name: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${name}`], { stdio: 'ignore' }).status === 0;
}

/** `ip` arguments for the host's network namespace. */
export const ipIn = (site: Pick<Site, 'netns'>, args: string[]): string[] =>
  site.netns ? ['-n', site.netns, ...args] : args;
