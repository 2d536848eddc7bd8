/**
 * Local test hosts ("testbed"): two machines on one kernel, for real migrations without a second computer.
 *
 * Each host is a long-lived init process (PID 1 of its own PID, mount, UTS and IPC namespaces) inside a named
 * network namespace, rooted in an overlay over the cached Debian trixie tree (rootfs.ts) with the mount tree that
 * CRIU 4 needs (ENVIRONMENT.md). The two hosts are joined by a veth pair on 10.213.77.0/24 with an optional
 * `tc tbf` rate limit. The repository is bind-mounted read-only at /opt/precog in both. A third network namespace,
 * precog-probe, has an unshaped veth pair of its own to each host (10.213.78.0/24 to a, 10.213.79.0/24 to b): the
 * downtime probe (probe.ts) asks the workloads from there, off the migration link.
 *
 * Everything made here carries a name precog owns (netns precog-a/precog-b/precog-probe, cgroup precog-testbed, the
 * directories below), and the PIDs are recorded in /run/precog/testbed.json with their start times: `down` kills
 * exactly those processes and sweeps the names, so it also cleans up after a crash.
 */
import { spawn } from 'node:child_process';
import {
  closeSync,
  createReadStream,
  existsSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  renameSync,
  rmdirSync,
  rmSync,
  statSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { constants } from 'node:os';
import { dirname, join, posix } from 'node:path';
import { fileURLToPath } from 'node:url';
import { initPki, issueCert } from '../transport/pki.ts';
import { UsageError } from '../util/errors.ts';
import { cgroup2Mount, CONTAINERS_DIR, HOST_DATA_DIR, PODMAN_ENV, type Site } from './site.ts';
import { ensurePodmanImageArchive, type PodmanImageArchive } from './podman-image.ts';
import { formatBandwidth, parseBandwidth } from '../util/units.ts';
import { HOSTS, NAME_PREFIX, TBF_LATENCY, type HostSpec } from './testbed-hosts.ts';
import {
  ensureRootfs,
  mustRun,
  readRootfsStamp,
  removeTree,
  rootfsDir,
  runTool,
  type RootfsInfo,
} from './rootfs.ts';

export { HOSTS, NAME_PREFIX, TBF_BURST, TBF_LATENCY, type HostSpec } from './testbed-hosts.ts';

export const TESTBED_STATE_SCHEMA = 'precog.testbed/v1';
export const TESTBED_STATUS_SCHEMA = 'precog.testbed.status/v1';
/** Runtime state: the state file, the lock, the hosts' start logs. Gone after a reboot, like the hosts. */
export const STATE_DIR = '/run/precog';
export const STATE_FILE = join(STATE_DIR, 'testbed.json');
const LOCK_FILE = join(STATE_DIR, 'testbed.lock');
/** The hosts' writable layers (upper, work) and overlay mount points; on disk, as container layers can be large. */
export const HOSTS_DIR = '/var/lib/precog/testbed';
export const SUBNET = '10.213.77.0/24';
const CGROUP_NAME = 'precog-testbed';

/** The tbf burst for a rate, as tc reads it (a size; tc's kbit is 1024 bits): 32kbit, or 0.25 ms of traffic if more. */
export function tbfBurst(rateBits: number): string {
  return `${Math.max(32, Math.ceil(rateBits / 4000 / 1024))}kbit`;
}
/** The file a host's init writes (inside the host) once its root is pivoted and it is ready for `exec`. */
const READY_FILE = 'run/precog-host.ready';
/** The environment of commands run inside a host: nothing leaks in from the caller's shell (or test runner). */
const HOST_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

/** The repository (what is mounted at /opt/precog in every host). */
export const REPO_DIR = fileURLToPath(new URL('../..', import.meta.url)).replace(/\/$/, '');
const HOST_SCRIPT = join(REPO_DIR, 'scripts/testbed/host.sh');

/** One host's side link to the probe namespace: a veth pair on a subnet of its own. */
export interface ProbeLink {
  host: string;
  /** The host's end (inside the host's network namespace) and its address: where the probe sends. */
  hostIface: string;
  hostAddress: string;
  /** The probe's end (inside the probe namespace) and its address: where replies go. */
  probeIface: string;
  probeAddress: string;
  prefixLength: number;
}

/**
 * The probe: a third network namespace with a veth pair of its own to each host, on separate subnets, so its
 * traffic never crosses (nor is shaped by) the a<->b migration link. It does not forward: a and b cannot reach each
 * other through it. Downtime is measured from there (src/runtime/probe.ts).
 */
export const PROBE = {
  netns: `${NAME_PREFIX}probe`,
  links: [
    {
      host: 'a',
      hostIface: 'probe0',
      hostAddress: '10.213.78.1',
      probeIface: 'to-a',
      probeAddress: '10.213.78.254',
      prefixLength: 24,
    },
    {
      host: 'b',
      hostIface: 'probe0',
      hostAddress: '10.213.79.2',
      probeIface: 'to-b',
      probeAddress: '10.213.79.254',
      prefixLength: 24,
    },
  ] as readonly ProbeLink[],
} as const;

/**
 * The service network: a LAN the test hosts share, for containers with a network namespace and an
 * address of their own. A fourth namespace, precog-lan, holds the LAN's bridge (lan0) and the client's address on
 * it; each host has a bridge (svc0) whose uplink is a veth pair to lan0. A container started with an address gets a
 * veth pair whose outer end is a port of its host's svc0, so it is reachable from the client wherever it runs: when
 * it migrates, its address (and MAC) move with it and a gratuitous ARP tells the bridges where it is now. No
 * host has an address on this network, nothing on it is rate-limited, and it never carries migration traffic.
 */
export const SERVICE_NET = {
  netns: `${NAME_PREFIX}lan`,
  bridge: 'lan0',
  subnet: '10.213.80.0/24',
  prefixLength: 24,
  /** The client's address (on lan0, in precog-lan). */
  client: '10.213.80.254',
  /** The bridge in each host, and the host end of its uplink to lan0. */
  hostBridge: 'svc0',
  hostUplink: 'svc-up',
} as const;

export interface ServiceNetState {
  netns: string;
  bridge: string;
  subnet: string;
  prefixLength: number;
  client: string;
  hostBridge: string;
  hostUplink: string;
}

/** A container address on the service network: 10.213.80.1 .. 10.213.80.253. */
export function parseServiceAddress(text: string): string {
  const m = /^10\.213\.80\.(\d{1,3})$/.exec(text.trim());
  const last = m ? Number(m[1]) : NaN;
  if (!m || last < 1 || last > 253 || String(last) !== m[1])
    throw new UsageError(
      `--ip ${text}: a container address must be on precog's service network, 10.213.80.1 to 10.213.80.253 ` +
        `(10.213.80.254 is the client's)`,
    );
  return `10.213.80.${last}`;
}

/** The host-side name of a container's veth pair: "vc" + the last byte of its address (unique on the LAN). */
export const serviceHostIface = (address: string): string => `vc${address.split('.')[3]}`;

export interface ProbeState {
  netns: string;
  /** Host name -> the host-side address the probe sends to. */
  addresses: Record<string, string>;
  links: ProbeLink[];
}

/** A process as recorded: PID plus its start time (clock ticks since boot), so a reused PID is never killed. */
export interface ProcRef {
  pid: number;
  start: number;
}

export interface HostState extends HostSpec {
  /** HOSTS_DIR/<name>: upper/, work/, root/ (the overlay mount point, mounted only inside the host). */
  dir: string;
  log: string;
  /** The cgroup2 directory all of the host's processes live in, when cgroup2 is mounted. */
  cgroup: string | null;
  /** The unshare process that waits for the init (outside the host). */
  launcher: ProcRef | null;
  /** The host's PID 1, as seen from outside: the target of `exec`. */
  init: ProcRef | null;
}

export interface TestbedState {
  schema: string;
  bootId: string;
  createdAt: string;
  /** tc rate as given ("100mbit"), or null for an unlimited link. */
  rate: string | null;
  rateBits: number | null;
  subnet: string;
  rootfs: string;
  repo: string;
  /** False while `up` is still running (or crashed half-way). */
  complete: boolean;
  hosts: HostState[];
  /** The probe namespace and the addresses it reaches the hosts at (absent in states of older versions). */
  probe?: ProbeState | null;
  /** The service network (absent in states of older versions). */
  service?: ServiceNetState | null;
}

/** One-line refusal for commands that change the machine. */
export function requireRoot(command: string, uid: number | undefined = process.getuid?.()): void {
  if (uid !== 0)
    throw new UsageError(
      `testbed ${command} needs root (it creates namespaces, mounts and network links); run it as root, e.g. with sudo`,
    );
}

/** "a", "A", "precog-a" -> the host; anything else is a UsageError listing the hosts. */
export function parseHost(text: string): HostSpec {
  const t = text.trim().toLowerCase();
  const host = HOSTS.find((h) => h.name === t || h.netns === t);
  if (!host)
    throw new UsageError(
      `unknown test host "${text}"; the hosts are ${HOSTS.map((h) => h.name).join(' and ')}`,
    );
  return host;
}

/** `--rate`: "none" (no limit) or a speed such as 100mbit, 1gbit, 250Mbit. Returns null for none. */
export function parseLinkRate(text: string): { text: string; bits: number } | null {
  const t = text.trim().toLowerCase();
  if (t === 'none' || t === 'off' || t === 'unlimited') return null;
  let bits: number;
  try {
    bits = parseBandwidth(t, '--rate');
  } catch {
    throw new UsageError(`--rate "${text}" must be none or a speed such as 100mbit, 1gbit, 250mbit`);
  }
  if (bits < 8000 || bits > 1e11 || !Number.isInteger(bits))
    throw new UsageError(
      `--rate "${text}" must be a whole number of bit/s between 8kbit and 100gbit, or none`,
    );
  return { text: formatBandwidth(bits).toLowerCase(), bits };
}

/** The tc command that limits one end of the link. */
export function tbfArgs(netns: string, iface: string, bits: number): string[] {
  return [
    '-n',
    netns,
    'qdisc',
    'replace',
    'dev',
    iface,
    'root',
    'tbf',
    'rate',
    `${bits}bit`,
    'burst',
    tbfBurst(bits),
    'latency',
    TBF_LATENCY,
  ];
}

// ---------------------------------------------------------------------------------------------------------------
// Processes

/** Start time (field 22 of /proc/PID/stat) of a living, non-zombie process; undefined otherwise. */
export function procStart(pid: number): number | undefined {
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
  const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // rest[0] is field 3 (state), so field N is rest[N - 3].
  if (rest[0] === 'Z' || rest[0] === 'X') return undefined;
  return Number(rest[19]);
}

function procPpid(pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
  } catch {
    return undefined;
  }
}

/** A process's state and command as /proc says ("D disk sleep: criu"), for messages. */
function procState(pid: number): string {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const state = /^State:\s+(.*)$/m.exec(status)?.[1] ?? '?';
    const name = /^Name:\s+(.*)$/m.exec(status)?.[1] ?? '?';
    return `${state}: ${name}`;
  } catch {
    return 'gone';
  }
}

export function isAlive(ref: ProcRef | null | undefined): ref is ProcRef {
  return !!ref && procStart(ref.pid) === ref.start;
}

/** How long killed processes get to go before `down` calls them survivors. */
export const KILL_GRACE_MS = 20_000;

/**
 * Waits until every killed process is gone, or throws naming each one left with its state. A killed process may
 * take seconds to go: freeing gigabytes of memory, or in uninterruptible sleep (D) until something releases it,
 * such as a freezer cgroup that CRIU froze and thaws only when its dump ends. Only one still there after `ms`
 * counts as surviving.
 */
export async function awaitKilled(killed: ProcRef[], ms = KILL_GRACE_MS): Promise<void> {
  if (await waitUntil(() => !killed.some(isAlive), ms)) return;
  const left = killed.filter(isAlive).map((k) => `${k.pid} (${procState(k.pid)})`);
  throw new Error(`processes ${left.join(', ')} still exist ${ms / 1000} s after SIGKILL; run down again`);
}

/**
 * Takes down a testbed that this process brought up, for sure: `down` is tried `attempts` times, `pauseMs`
 * apart, then an error names the command to run. A half-removed testbed of one's own must not be left, since
 * the next `up` (or a bench's next link) would take it for somebody else's and wait for it.
 */
export async function downForSure(
  down: () => { code: number | null; stderr: string },
  opts: { attempts?: number; pauseMs?: number; log?: (line: string) => void } = {},
): Promise<void> {
  const attempts = opts.attempts ?? 3;
  for (let attempt = 1; ; attempt++) {
    const r = down();
    if (r.code === 0) return;
    opts.log?.(`testbed down failed (attempt ${attempt} of ${attempts}): ${r.stderr.trim()}`);
    if (attempt >= attempts)
      throw new Error(
        `the testbed this process brought up cannot be taken down (${r.stderr.trim()}); run "precog testbed down"`,
      );
    await sleep(opts.pauseMs ?? 5000);
  }
}

/**
 * Whose testbed a status shows: none is up ("free"), the one this process brought up ("ours", recognised by its
 * creation time, even half-removed), or somebody else's ("theirs").
 */
export function testbedOwner(
  status: { state: string; createdAt: string | null },
  ourCreatedAt: string | undefined,
): 'free' | 'ours' | 'theirs' {
  if (status.state === 'down') return 'free';
  return ourCreatedAt !== undefined && status.createdAt === ourCreatedAt ? 'ours' : 'theirs';
}

/** The process with this PID as a reference that a reused PID cannot match (null when it is gone). */
export function procRef(pid: number): ProcRef | null {
  return refOf(pid);
}

function refOf(pid: number): ProcRef | null {
  const start = procStart(pid);
  return start === undefined ? null : { pid, start };
}

function allPids(): number[] {
  return readdirSync('/proc')
    .filter((d) => /^[0-9]+$/.test(d))
    .map(Number);
}

function signal(ref: ProcRef, sig: NodeJS.Signals): boolean {
  if (!isAlive(ref)) return false;
  try {
    process.kill(ref.pid, sig);
    return true;
  } catch {
    return false;
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Polls cond every `step` ms until it holds (true) or `ms` have passed (false). */
export async function waitUntil(cond: () => boolean, ms: number, step = 25): Promise<boolean> {
  const end = performance.now() + ms;
  for (;;) {
    if (cond()) return true;
    if (performance.now() > end) return false;
    await sleep(step);
  }
}

function bootId(): string {
  try {
    return readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  } catch {
    return '';
  }
}

// ---------------------------------------------------------------------------------------------------------------
// State file and lock

export function readState(): TestbedState | undefined {
  let s: TestbedState;
  try {
    s = JSON.parse(readFileSync(STATE_FILE, 'utf8')) as TestbedState;
  } catch {
    return undefined;
  }
  if (s.schema !== TESTBED_STATE_SCHEMA || !Array.isArray(s.hosts)) return undefined;
  // After a reboot the recorded PIDs mean nothing (the start times would not protect a reused PID either).
  if (s.bootId && s.bootId !== bootId()) for (const h of s.hosts) h.launcher = h.init = null;
  return s;
}

function writeState(s: TestbedState): void {
  mkdirSync(STATE_DIR, { recursive: true });
  const tmp = `${STATE_FILE}.tmp`;
  writeFileSync(tmp, JSON.stringify(s, null, 2) + '\n');
  renameSync(tmp, STATE_FILE);
}

/** One testbed command at a time changes the machine; a lock left by a dead process is taken over. */
async function withLock<T>(fn: () => Promise<T>): Promise<T> {
  mkdirSync(STATE_DIR, { recursive: true });
  for (let attempt = 0; ; attempt++) {
    try {
      const fd = openSync(LOCK_FILE, 'wx');
      writeSync(fd, `${process.pid}\n`);
      closeSync(fd);
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const holder = Number(readFileSync(LOCK_FILE, 'utf8').trim());
      if (holder > 0 && holder !== process.pid && procStart(holder) !== undefined) {
        if (attempt < 40) {
          await sleep(250);
          continue;
        }
        throw new UsageError(
          `another precog testbed command (pid ${holder}) is running; wait for it, or remove ${LOCK_FILE} if it is stuck`,
        );
      }
      rmSync(LOCK_FILE, { force: true });
    }
  }
  try {
    return await fn();
  } finally {
    rmSync(LOCK_FILE, { force: true });
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Names precog owns: network namespaces, links, cgroups

export async function listNetns(): Promise<string[]> {
  // `ip netns list` only reads /run/netns; reading it directly works without root too.
  try {
    return readdirSync('/run/netns').filter((n) => n.startsWith(NAME_PREFIX));
  } catch {
    return [];
  }
}

/** Links in the caller's network namespace named precog-* (left behind if a crash hit between add and move). */
export async function listLinks(): Promise<string[]> {
  const r = await runTool('ip', ['-o', 'link', 'show']);
  if (r.code !== 0) return [];
  return r.stdout
    .split('\n')
    .map((l) => /^\d+:\s+([^:@\s]+)/.exec(l)?.[1])
    .filter((n): n is string => !!n && n.startsWith(NAME_PREFIX));
}

/** Mount point of the cgroup2 hierarchy (the unified one in hybrid setups), or null. */
export const cgroup2Root = cgroup2Mount;

function cgroupBase(): string | null {
  const root = cgroup2Root();
  return root ? join(root, CGROUP_NAME) : null;
}

export function listCgroups(): string[] {
  const base = cgroupBase();
  if (!base || !existsSync(base)) return [];
  const children = readdirSync(base, { withFileTypes: true })
    .filter((d) => d.isDirectory())
    .map((d) => join(base, d.name));
  return [...children, base];
}

/** Podman's cgroup parent under cgroupfs management (containers.conf: cgroup_manager = "cgroupfs"). */
const PODMAN_CGROUP_PARENT = 'libpod_parent';

/**
 * The cgroups the hosts' Podman made for its containers. The hosts have no cgroup namespace, so Podman makes them
 * in the machine's hierarchies (libpod_parent/libpod-ID in each): found by the IDs of the containers in the hosts'
 * storage, so that nothing of another Podman on the machine is touched.
 */
function podmanCgroups(): { containers: string[]; parents: string[] } {
  const ids = new Set<string>();
  let used = false;
  for (const h of existsSync(HOSTS_DIR) ? readdirSync(HOSTS_DIR) : []) {
    const dir = join(HOSTS_DIR, h, 'containers', 'storage', 'overlay-containers');
    used ||= existsSync(dir);
    for (const id of existsSync(dir) ? readdirSync(dir) : []) if (/^[0-9a-f]{64}$/.test(id)) ids.add(id);
  }
  const out: string[] = [];
  const parents: string[] = [];
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const [left, right] = line.split(' - ');
    if (!right || !/^cgroup2? /.test(right)) continue;
    const parent = join(left.split(' ')[4], PODMAN_CGROUP_PARENT);
    for (const id of ids) {
      const cg = join(parent, `libpod-${id}`);
      if (existsSync(cg)) out.push(cg);
    }
    if (used && existsSync(parent)) parents.push(join(parent, 'conmon'), parent);
  }
  return { containers: out, parents };
}

/**
 * The cgroup parent of the OCI bundles the tests and the demo make in the hosts (their config.json's cgroupsPath:
 * /precog-oci/NAME). Like Podman's, runc makes them in the machine's hierarchies (the hosts have no cgroup
 * namespace); `testbed down` removes what is left under it.
 */
export const OCI_TEST_CGROUP_PARENT = 'precog-oci';

/** The cgroups under OCI_TEST_CGROUP_PARENT in every hierarchy, children before their parent. */
function ociTestCgroups(): string[] {
  const out: string[] = [];
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const [left, right] = line.split(' - ');
    if (!right || !/^cgroup2? /.test(right)) continue;
    const parent = join(left.split(' ')[4], OCI_TEST_CGROUP_PARENT);
    if (!existsSync(parent)) continue;
    for (const d of readdirSync(parent, { withFileTypes: true }))
      if (d.isDirectory()) out.push(join(parent, d.name));
    out.push(parent);
  }
  return out;
}

/** PIDs of every process whose network namespace is the named one (root only: reads other processes' ns links). */
function pidsInNetns(netns: string): number[] {
  let ino: number;
  try {
    ino = statSync(`/run/netns/${netns}`).ino;
  } catch {
    return [];
  }
  const want = `net:[${ino}]`;
  return allPids().filter((pid) => {
    try {
      return readlinkSync(`/proc/${pid}/ns/net`) === want;
    } catch {
      return false;
    }
  });
}

function pidsInCgroup(dir: string): number[] {
  try {
    return readFileSync(join(dir, 'cgroup.procs'), 'utf8')
      .split('\n')
      .map(Number)
      .filter((pid) => Number.isInteger(pid) && pid > 0);
  } catch {
    return [];
  }
}

// ---------------------------------------------------------------------------------------------------------------
// up

export interface UpOptions {
  /** "100mbit", "1gbit", "none". */
  rate: string;
  log?: (line: string) => void;
  /** How long one host may take to come up. */
  hostTimeoutMs?: number;
  /** Build the root filesystem again even when a finished one is cached. */
  rebuildRootfs?: boolean;
}

export interface UpResult {
  state: TestbedState;
  rootfs: RootfsInfo;
  seconds: number;
}

export async function testbedUp(opts: UpOptions): Promise<UpResult> {
  requireRoot('up');
  const rate = parseLinkRate(opts.rate);
  const log = opts.log ?? (() => {});
  return withLock(async () => {
    const t0 = performance.now();
    const old = readState();
    if (old && old.complete && old.hosts.every((h) => isAlive(h.init))) {
      throw new UsageError(
        `the testbed is already up (since ${old.createdAt}, rate ${old.rate ?? 'none'}); run "precog testbed down" first`,
      );
    }
    // Whatever a crashed run left behind goes first, so that the names are free.
    const swept = await sweep();
    if (swept.length > 0) log(`removed leftovers of an earlier testbed: ${swept.join(', ')}`);

    const rootfs = await ensureRootfs({ log, rebuild: opts.rebuildRootfs });
    const base = cgroupBase();
    const state: TestbedState = {
      schema: TESTBED_STATE_SCHEMA,
      bootId: bootId(),
      createdAt: new Date().toISOString(),
      rate: rate?.text ?? null,
      rateBits: rate?.bits ?? null,
      subnet: SUBNET,
      rootfs: rootfs.dir,
      repo: REPO_DIR,
      complete: false,
      hosts: HOSTS.map((h) => ({
        ...h,
        dir: join(HOSTS_DIR, h.name),
        log: join(STATE_DIR, `host-${h.name}.log`),
        cgroup: base ? join(base, h.name) : null,
        launcher: null,
        init: null,
      })),
      probe: {
        netns: PROBE.netns,
        addresses: Object.fromEntries(PROBE.links.map((l) => [l.host, l.hostAddress])),
        links: PROBE.links.map((l) => ({ ...l })),
      },
      service: { ...SERVICE_NET },
    };
    writeState(state);
    try {
      await createNetwork(state);
      for (const h of state.hosts) {
        await startHost(state, h, opts.hostTimeoutMs ?? 20_000);
        writeState(state);
      }
      await startAgents(state);
      await loadPodmanImage(state, await ensurePodmanImageArchive(rootfs, dirname(rootfs.dir), log));
      state.complete = true;
      writeState(state);
    } catch (err) {
      log(`testbed up failed; removing what it made`);
      await sweep().catch(() => {});
      throw err;
    }
    return { state, rootfs, seconds: (performance.now() - t0) / 1000 };
  });
}

async function createNetwork(state: TestbedState): Promise<void> {
  const [a, b] = state.hosts;
  for (const h of state.hosts) {
    await mustRun('ip', ['netns', 'add', h.netns]);
    await mustRun('ip', ['-n', h.netns, 'link', 'set', 'lo', 'up']);
  }
  // Created directly inside the two namespaces: no moment where a half-made link sits in the caller's namespace.
  await mustRun('ip', [
    'link',
    'add',
    a.iface,
    'netns',
    a.netns,
    'type',
    'veth',
    'peer',
    b.iface,
    'netns',
    b.netns,
  ]);
  for (const h of state.hosts) {
    await mustRun('ip', ['-n', h.netns, 'addr', 'add', `${h.address}/${h.prefixLength}`, 'dev', h.iface]);
    await mustRun('ip', ['-n', h.netns, 'link', 'set', h.iface, 'up']);
    if (state.rateBits !== null) await mustRun('tc', tbfArgs(h.netns, h.iface, state.rateBits));
  }
  if (state.probe) await createProbeNetwork(state, state.probe);
  if (state.service) await createServiceNetwork(state, state.service);
}

/** The LAN namespace with its bridge and the client's address, and each host's bridge with its uplink to it. */
async function createServiceNetwork(state: TestbedState, net: ServiceNetState): Promise<void> {
  await mustRun('ip', ['netns', 'add', net.netns]);
  await mustRun('ip', ['-n', net.netns, 'link', 'set', 'lo', 'up']);
  await mustRun('ip', ['-n', net.netns, 'link', 'add', net.bridge, 'type', 'bridge']);
  await mustRun('ip', [
    '-n',
    net.netns,
    'addr',
    'add',
    `${net.client}/${net.prefixLength}`,
    'dev',
    net.bridge,
  ]);
  await mustRun('ip', ['-n', net.netns, 'link', 'set', net.bridge, 'up']);
  for (const h of state.hosts) {
    const lanPort = `up-${h.name}`;
    await mustRun('ip', ['-n', h.netns, 'link', 'add', net.hostBridge, 'type', 'bridge']);
    await mustRun('ip', [
      'link',
      'add',
      net.hostUplink,
      'netns',
      h.netns,
      'type',
      'veth',
      'peer',
      lanPort,
      'netns',
      net.netns,
    ]);
    await mustRun('ip', ['-n', h.netns, 'link', 'set', net.hostUplink, 'master', net.hostBridge, 'up']);
    await mustRun('ip', ['-n', h.netns, 'link', 'set', net.hostBridge, 'up']);
    await mustRun('ip', ['-n', net.netns, 'link', 'set', lanPort, 'master', net.bridge, 'up']);
  }
}

/** The probe namespace and its two side links (one per host, own subnets, never rate-limited). */
async function createProbeNetwork(state: TestbedState, probe: ProbeState): Promise<void> {
  await mustRun('ip', ['netns', 'add', probe.netns]);
  await mustRun('ip', ['-n', probe.netns, 'link', 'set', 'lo', 'up']);
  for (const l of probe.links) {
    const h = state.hosts.find((x) => x.name === l.host);
    if (!h) throw new Error(`probe link to unknown host ${l.host}`);
    await mustRun('ip', [
      'link',
      'add',
      l.hostIface,
      'netns',
      h.netns,
      'type',
      'veth',
      'peer',
      l.probeIface,
      'netns',
      probe.netns,
    ]);
    await mustRun('ip', [
      '-n',
      h.netns,
      'addr',
      'add',
      `${l.hostAddress}/${l.prefixLength}`,
      'dev',
      l.hostIface,
    ]);
    await mustRun('ip', ['-n', h.netns, 'link', 'set', l.hostIface, 'up']);
    await mustRun('ip', [
      '-n',
      probe.netns,
      'addr',
      'add',
      `${l.probeAddress}/${l.prefixLength}`,
      'dev',
      l.probeIface,
    ]);
    await mustRun('ip', ['-n', probe.netns, 'link', 'set', l.probeIface, 'up']);
  }
}

async function startHost(state: TestbedState, h: HostState, timeoutMs: number): Promise<void> {
  // A fresh writable layer every time: a host starts from the base image, like a freshly booted machine.
  await removeTree(h.dir);
  for (const d of ['upper', 'work', 'root']) mkdirSync(join(h.dir, d), { recursive: true });
  if (h.cgroup) mkdirSync(h.cgroup, { recursive: true });
  const hostsFile = state.hosts.map((x) => `${x.address}\t${x.name}`).join('\n');
  const logFd = openSync(h.log, 'w');
  let child;
  try {
    child = spawn(
      '/bin/sh',
      [HOST_SCRIPT, 'launch', h.name, h.netns, state.rootfs, h.dir, state.repo, h.cgroup ?? '-', hostsFile],
      { detached: true, stdio: ['ignore', logFd, logFd], env: { PATH: HOST_PATH, LANG: 'C.UTF-8' } },
    );
  } finally {
    closeSync(logFd);
  }
  child.unref();
  const launcherPid = child.pid;
  if (launcherPid === undefined) throw new Error(`cannot start host ${h.name}: /bin/sh did not start`);
  h.launcher = refOf(launcherPid);
  writeState(state);
  const failure = (what: string) => {
    const tail = readFileSync(h.log, 'utf8').trim().split('\n').slice(-4).join(' | ');
    return new Error(
      `host ${h.name} did not come up (${what})${tail ? `: ${tail}` : ''}; full log: ${h.log}`,
    );
  };
  // The init is the launcher's only child (no /proc/PID/task/*/children on every kernel: scan the parents).
  let initPid: number | undefined;
  await waitUntil(() => {
    initPid = allPids().find((p) => procPpid(p) === launcherPid);
    return initPid !== undefined || !isAlive(h.launcher);
  }, timeoutMs);
  if (initPid === undefined) throw failure('its init was never started');
  h.init = refOf(initPid);
  writeState(state);
  const ready = await waitUntil(
    () => !isAlive(h.init) || existsSync(`/proc/${initPid}/root/${READY_FILE}`),
    timeoutMs,
  );
  if (!isAlive(h.init)) throw failure('its init exited');
  if (!ready) throw failure(`not ready after ${timeoutMs / 1000}s`);
}

/**
 * Where the precog agents will be started, one per host, once `precog agent` exists: run
 * `node /opt/precog/bin/precog agent --listen <address>:<port>` in each host with `hostCommand` (the rootfs's Node,
 * the repository at /opt/precog), record its ProcRef in the host's state and wait for it to accept connections.
 * `down` needs nothing more: the agent dies with its host's PID namespace.
 */
/** Where each host's agent listens, keeps its migrations, finds its PKI and logs (paths inside the host). */
export const AGENT = {
  port: 7070,
  stateDir: '/var/lib/precog/agent',
  pkiDir: '/etc/precog/pki',
  config: '/etc/precog/agent.yaml',
  log: '/var/log/precog-agent.log',
} as const;
/** The name of the testbed's client certificate (in PKI_DIR), for precog migrate and precog job. */
export const OPERATOR_CERT = 'operator';
/** The testbed's certificate authority, on the machine; each host gets the CA and its own certificate. */
export const PKI_DIR = join(HOSTS_DIR, 'pki');

/** Runs a command inside a host, feeding it `input`; rejects with its stderr when it fails. */
export async function runInHost(
  state: TestbedState,
  host: string,
  argv: string[],
  input = '',
): Promise<string> {
  const c = hostCommand(state, host, argv);
  return new Promise((resolvePromise, reject) => {
    const child = spawn(c.cmd, c.args, { env: c.env, stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d));
    child.stderr.on('data', (d: Buffer) => (err += d));
    child.on('error', reject);
    child.on('close', (code) =>
      code === 0
        ? resolvePromise(out)
        : reject(new Error(`${argv.join(' ')} in host ${host} failed (${code}): ${err.trim()}`)),
    );
    // A command that exits without reading its input closes the pipe (EPIPE): its exit status tells what happened.
    child.stdin.on('error', () => {});
    child.stdin.end(input);
  });
}

/**
 * Gives each host a certificate from a fresh testbed CA and starts `precog agent` in it on its veth address, with
 * mutual TLS. The agents live in the hosts' PID namespaces: they end with the hosts.
 */
export async function startAgents(state: TestbedState): Promise<void> {
  await initPki(PKI_DIR, { force: true });
  // The client certificate `precog migrate` and `precog job` use on this machine (docs/deploy.md).
  await issueCert(PKI_DIR, OPERATOR_CERT, { force: true });
  for (const h of state.hosts) {
    await issueCert(PKI_DIR, h.name, { ips: [h.address], force: true });
    await runInHost(state, h.name, ['mkdir', '-p', '-m', '700', AGENT.pkiDir, AGENT.stateDir]);
    for (const f of ['ca.pem', `${h.name}.pem`, `${h.name}-key.pem`]) {
      await runInHost(
        state,
        h.name,
        ['sh', '-c', `umask 077 && cat > ${AGENT.pkiDir}/${f}`],
        readFileSync(join(PKI_DIR, f), 'utf8'),
      );
    }
    // Configured as on a server (docs/deploy.md): /etc/precog/agent.yaml, the agent started with --config.
    const config = [
      // Every address of the host: the migration link, and the probe link the clients come from.
      `listen: 0.0.0.0:${AGENT.port}`,
      `state-dir: ${AGENT.stateDir}`,
      `pki: ${AGENT.pkiDir}`,
      `name: ${h.name}`,
      // Up to 4 GiB of pages stay in memory (the machines have 24 GiB): above it they go to the host's disk,
      // whose writes (about 170 MB/s here) would then bound every migration.
      'spill-size: 4GiB',
    ].join('\n');
    await runInHost(state, h.name, ['sh', '-c', `cat > ${AGENT.config}`], config + '\n');
    const agent = `/opt/precog/bin/precog agent --config ${AGENT.config}`;
    // Started from inside the host and detached there: no process outside the host waits for it.
    await runInHost(state, h.name, ['sh', '-c', `setsid ${agent} >>${AGENT.log} 2>&1 </dev/null &`]);
  }
  for (const h of state.hosts) {
    const logFile = join(h.dir, 'upper', AGENT.log);
    const ok = await waitUntil(
      () => existsSync(logFile) && readFileSync(logFile, 'utf8').includes('agent listening'),
      20_000,
      100,
    );
    if (!ok) {
      const tail = existsSync(logFile) ? readFileSync(logFile, 'utf8').slice(-2000) : '(no log)';
      throw new Error(`the agent in host ${h.name} did not start listening within 20 s; its log:\n${tail}`);
    }
  }
}

/**
 * Loads the Podman test image into every host (both at once), each from its own stream of the archive: `podman
 * load` in the host reads it on its stdin, as it would come from a registry. Hosts that have it already skip it.
 */
export async function loadPodmanImage(state: TestbedState, archive: PodmanImageArchive): Promise<void> {
  await Promise.all(
    state.hosts.map(async (h) => {
      const exists = await runInHost(state, h.name, ['podman', 'image', 'exists', archive.id]).then(
        () => true,
        () => false,
      );
      if (exists) return;
      const c = hostCommand(state, h.name, ['podman', 'load', '--quiet'], PODMAN_ENV);
      await new Promise<void>((resolvePromise, reject) => {
        const child = spawn(c.cmd, c.args, { env: c.env, stdio: ['pipe', 'ignore', 'pipe'] });
        let err = '';
        child.stderr.on('data', (d: Buffer) => (err += d));
        child.on('error', reject);
        child.on('close', (code) =>
          code === 0
            ? resolvePromise()
            : reject(
                new Error(`podman load of ${archive.path} in host ${h.name} failed (${code}): ${err.trim()}`),
              ),
        );
        child.stdin.on('error', () => {});
        createReadStream(archive.path).pipe(child.stdin);
      });
    }),
  );
}

// ---------------------------------------------------------------------------------------------------------------
// down

/**
 * Removes every process, namespace, link, cgroup and directory the testbed owns, by the recorded PIDs and by name,
 * whether or not `up` finished. Returns what it removed (empty when there was nothing).
 */
export async function testbedDown(): Promise<string[]> {
  requireRoot('down');
  const done = await withLock(() => sweep());
  // The parents too, when nothing else lives there (the lock was the last file in STATE_DIR).
  for (const d of [dirname(HOSTS_DIR), STATE_DIR]) {
    try {
      rmdirSync(d);
    } catch {
      // not empty or already gone: leave it
    }
  }
  return done;
}

/** Processes running a host's init script, found by command line. */
function hostInits(): number[] {
  const out: number[] = [];
  for (const pid of allPids()) {
    try {
      const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
      if (cmd.includes('/run/precog-init') || cmd.includes(HOST_SCRIPT)) out.push(pid);
    } catch {
      // gone meanwhile
    }
  }
  return out;
}

async function sweep(): Promise<string[]> {
  const done: string[] = [];
  const state = readState();
  const killed: ProcRef[] = [];
  // 1. Ask each host's init to stop: it passes SIGTERM on to every process of the host, then exits.
  const inits = (state?.hosts ?? []).map((h) => h.init).filter(isAlive);
  for (const ref of inits) if (signal(ref, 'SIGTERM')) killed.push(ref);
  if (inits.length > 0) await waitUntil(() => !inits.some(isAlive), 3000);
  // 2. Then SIGKILL whatever is left: recorded PIDs (only if their start time still matches), every process in the
  //    testbed's cgroups and in its network namespaces.
  for (const h of state?.hosts ?? [])
    for (const ref of [h.init, h.launcher]) if (ref && signal(ref, 'SIGKILL')) killed.push(ref);
  const cgroups = listCgroups();
  for (const cg of cgroups) {
    // Record who is there before cgroup.kill: it may take them all before the loop below looks.
    const inside = pidsInCgroup(cg)
      .map(refOf)
      .filter((r): r is ProcRef => r !== null);
    if (inside.length > 0 && existsSync(join(cg, 'cgroup.kill'))) writeFileSync(join(cg, 'cgroup.kill'), '1');
    for (const ref of inside) {
      signal(ref, 'SIGKILL');
      killed.push(ref);
    }
  }
  const netns = await listNetns();
  for (const ns of netns)
    for (const pid of pidsInNetns(ns)) {
      const ref = refOf(pid);
      if (ref && signal(ref, 'SIGKILL')) killed.push(ref);
    }
  // Hosts whose records are lost (a crash) are still found by their init's command line; a host's init lives
  // until every process of its PID namespace (its agent, say) has exited.
  for (const pid of hostInits()) {
    const ref = refOf(pid);
    if (ref && signal(ref, 'SIGKILL')) killed.push(ref);
  }
  if (killed.length > 0) {
    const pids = [...new Set(killed.map((k) => k.pid))];
    done.push(`processes ${pids.join(' ')}`);
    await awaitKilled(killed);
  }
  // 3. Network: deleting a namespace deletes the veth end inside it, and with it the peer.
  for (const ns of netns) {
    await mustRun('ip', ['netns', 'del', ns]);
    done.push(`netns ${ns}`);
  }
  for (const link of await listLinks()) {
    await mustRun('ip', ['link', 'del', link]);
    done.push(`link ${link}`);
  }
  // 4. Cgroups (a cgroup can be removed only once its last process is fully gone: retry briefly).
  for (const cg of cgroups) {
    const ok = await waitUntil(() => {
      try {
        rmdirSync(cg);
        return true;
      } catch (err) {
        return (err as NodeJS.ErrnoException).code === 'ENOENT';
      }
    }, 3000);
    if (!ok) throw new Error(`cannot remove cgroup ${cg}: it still has processes; run down again`);
    done.push(`cgroup ${cg}`);
  }
  // Podman's cgroups of the hosts' containers (their processes died with the hosts' PID namespaces), then its
  // parents where they are left empty.
  const podmanCgs = podmanCgroups();
  for (const cg of podmanCgs.containers) {
    try {
      rmdirSync(cg);
      done.push(`cgroup ${cg}`);
    } catch (err) {
      throw new Error(`cannot remove Podman's cgroup ${cg}: ${(err as Error).message}; run down again`);
    }
  }
  for (const dir of podmanCgs.parents) {
    try {
      rmdirSync(dir);
    } catch {
      // still used (another Podman on this machine) or already gone
    }
  }
  for (const cg of ociTestCgroups()) {
    try {
      rmdirSync(cg);
      done.push(`cgroup ${cg}`);
    } catch (err) {
      throw new Error(`cannot remove the OCI test cgroup ${cg}: ${(err as Error).message}; run down again`);
    }
  }
  // 5. Files: the hosts' layers (their overlays were mounted only inside the hosts, which are gone), logs, state.
  if (existsSync(HOSTS_DIR)) {
    await removeTree(HOSTS_DIR);
    done.push(`dir ${HOSTS_DIR}`);
  }
  for (const h of HOSTS) rmSync(join(STATE_DIR, `host-${h.name}.log`), { force: true });
  if (existsSync(STATE_FILE)) {
    rmSync(STATE_FILE, { force: true });
    done.push(`state ${STATE_FILE}`);
  }
  return done;
}

// ---------------------------------------------------------------------------------------------------------------
// status

export interface HostStatus {
  name: string;
  hostname: string;
  address: string;
  iface: string;
  netns: string;
  netnsExists: boolean;
  initPid: number | null;
  alive: boolean;
  launcherPid: number | null;
  cgroup: string | null;
}

export interface ProbeStatus {
  netns: string;
  netnsExists: boolean;
  /** Host name -> the host-side address the probe sends to. */
  addresses: Record<string, string>;
}

export interface TestbedStatus {
  schema: string;
  /** up: every host alive; degraded: state or leftovers exist but not every host runs; down: nothing exists. */
  state: 'up' | 'degraded' | 'down';
  stateFile: string | null;
  createdAt: string | null;
  rate: string | null;
  subnet: string;
  rootfs: {
    dir: string;
    ready: boolean;
    criu: string | null;
    node: string | null;
    builtAt: string | null;
    buildSeconds: number | null;
  };
  hosts: HostStatus[];
  /** The probe namespace (null when the state has none). */
  probe: ProbeStatus | null;
  /** The service network: its namespace, subnet and client address (null when the state has none). */
  service: { netns: string; netnsExists: boolean; subnet: string; client: string } | null;
  /** Things named precog-* that no recorded host accounts for (removed by `down`). */
  leftovers: string[];
}

export async function testbedStatus(): Promise<TestbedStatus> {
  const state = readState();
  const netns = await listNetns();
  const links = await listLinks();
  const dir = state?.rootfs ?? rootfsDir();
  const stamp = readRootfsStamp(dir);
  const hosts: HostStatus[] = (state?.hosts ?? []).map((h) => ({
    name: h.name,
    hostname: h.name,
    address: `${h.address}/${h.prefixLength}`,
    iface: h.iface,
    netns: h.netns,
    netnsExists: netns.includes(h.netns),
    initPid: h.init?.pid ?? null,
    alive: isAlive(h.init),
    launcherPid: h.launcher?.pid ?? null,
    cgroup: h.cgroup,
  }));
  const probe: ProbeStatus | null = state?.probe
    ? {
        netns: state.probe.netns,
        netnsExists: netns.includes(state.probe.netns),
        addresses: { ...state.probe.addresses },
      }
    : null;
  const service = state?.service
    ? {
        netns: state.service.netns,
        netnsExists: netns.includes(state.service.netns),
        subnet: state.service.subnet,
        client: state.service.client,
      }
    : null;
  const known = new Set([
    ...hosts.map((h) => h.netns),
    ...(probe ? [probe.netns] : []),
    ...(service ? [service.netns] : []),
  ]);
  const leftovers = [
    ...netns.filter((n) => !known.has(n)).map((n) => `netns ${n}`),
    ...links.map((l) => `link ${l}`),
    ...(state ? [] : listCgroups().map((c) => `cgroup ${c}`)),
    ...(!state && existsSync(HOSTS_DIR) ? [`dir ${HOSTS_DIR}`] : []),
  ];
  const up =
    !!state?.complete &&
    hosts.length > 0 &&
    hosts.every((h) => h.alive && h.netnsExists) &&
    (probe === null || probe.netnsExists) &&
    (service === null || service.netnsExists);
  return {
    schema: TESTBED_STATUS_SCHEMA,
    state: up ? 'up' : state || leftovers.length > 0 ? 'degraded' : 'down',
    stateFile: state ? STATE_FILE : null,
    createdAt: state?.createdAt ?? null,
    rate: state ? state.rate : null,
    subnet: SUBNET,
    rootfs: {
      dir,
      ready: !!stamp,
      criu: stamp?.criuVersion ?? null,
      node: stamp?.nodeVersion ?? null,
      builtAt: stamp?.builtAt ?? null,
      buildSeconds: stamp?.buildSeconds ?? null,
    },
    hosts,
    probe,
    service,
    leftovers,
  };
}

// ---------------------------------------------------------------------------------------------------------------
// exec

export interface HostCommand {
  cmd: string;
  args: string[];
  env: NodeJS.ProcessEnv;
}

/**
 * The command line that runs `argv` inside a running host: joins the host's cgroup, enters its init's mount, UTS,
 * IPC, network and PID namespaces and its root and working directory, with a clean environment. Use it with
 * child_process.spawn; the exit status is the command's (128 + N when killed by signal N).
 */
export function hostCommand(
  state: TestbedState,
  hostName: string,
  argv: readonly string[],
  extraEnv: Record<string, string> = {},
): HostCommand {
  const spec = parseHost(hostName);
  const h = state.hosts.find((x) => x.name === spec.name);
  if (!h || !isAlive(h.init))
    throw new UsageError(`test host ${spec.name} is not running; start the testbed with "precog testbed up"`);
  if (argv.length === 0)
    throw new UsageError('nothing to run: give a command after the host, e.g. exec a -- uname -n');
  const env: NodeJS.ProcessEnv = {
    PATH: HOST_PATH,
    HOME: '/root',
    LANG: 'C.UTF-8',
    PRECOG_HOST: h.name,
    // The hosts' cgroups are hybrid (v1 controllers): Podman works, and would warn on every command otherwise.
    ...PODMAN_ENV,
    ...(process.env.TERM ? { TERM: process.env.TERM } : {}),
    ...extraEnv,
  };
  const nsenter = [
    'nsenter',
    '-t',
    String(h.init.pid),
    '-m',
    '-u',
    '-i',
    '-n',
    '-p',
    '-r',
    '-w',
    '--',
    ...argv,
  ];
  if (h.cgroup && existsSync(h.cgroup))
    return {
      cmd: '/bin/sh',
      args: ['-c', 'echo $$ >"$0/cgroup.procs" && exec "$@"', h.cgroup, ...nsenter],
      env,
    };
  return { cmd: nsenter[0], args: nsenter.slice(1), env };
}

/** Runs a command inside a host with the caller's stdio; resolves to its exit code. */
export async function testbedExec(
  hostName: string,
  argv: readonly string[],
  extraEnv: Record<string, string> = {},
): Promise<number> {
  requireRoot('exec');
  parseHost(hostName);
  const state = readState();
  if (!state) throw new UsageError('the testbed is not up; start it with "precog testbed up"');
  const c = hostCommand(state, hostName, argv, extraEnv);
  return new Promise((resolvePromise, reject) => {
    const child = spawn(c.cmd, c.args, { stdio: 'inherit', env: c.env });
    // Ctrl-C reaches the command through the terminal; precog stays to report its exit code.
    const forward = (sig: NodeJS.Signals) => () => child.kill(sig);
    const onInt = () => {};
    const onTerm = forward('SIGTERM');
    const onHup = forward('SIGHUP');
    process.on('SIGINT', onInt).on('SIGTERM', onTerm).on('SIGHUP', onHup);
    const done = () => process.off('SIGINT', onInt).off('SIGTERM', onTerm).off('SIGHUP', onHup);
    child.on('error', (err) => {
      done();
      reject(err);
    });
    child.on('close', (code, sig) => {
      done();
      resolvePromise(code ?? 128 + (sig ? (constants.signals[sig] ?? 0) : 0));
    });
  });
}

/**
 * A path inside a test host -> the same file on the machine: the host's data directory (HOST_DATA_DIR, a real
 * directory bind-mounted into the host) or its overlay's writable layer.
 */
export function hostPath(h: HostState, ...inHost: string[]): string {
  const path = posix.join(...inHost);
  const rel = posix.relative(HOST_DATA_DIR, path);
  if (rel === '' || (!rel.startsWith('..') && !posix.isAbsolute(rel))) return join(h.dir, 'data', rel);
  return join(h.dir, 'upper', path);
}

/** A test host as the machine sees it: the runtime's Site for `precog run/ps/stop/checkpoint` of the testbed. */
export function machineSite(state: TestbedState, hostName: string): Site {
  const h = state.hosts.find((x) => x.name === parseHost(hostName).name);
  if (!h || !isAlive(h.init))
    throw new UsageError(`test host ${hostName} is not running; start the testbed with "precog testbed up"`);
  return {
    name: h.name,
    containersDir: hostPath(h, CONTAINERS_DIR),
    rootfs: state.rootfs,
    nsPid: h.init.pid,
    netns: h.netns,
    cgroupParent: h.cgroup ? dirname(h.cgroup) : null,
    serviceNet: state.service
      ? { prefixLength: state.service.prefixLength, hostBridge: state.service.hostBridge }
      : null,
    local: false,
    command: (argv) => hostCommand(state, h.name, argv),
    // Through the host's own mount tree: right for every path (its tmpfs /tmp and /run too). hostPath() is the
    // same file by the machine's mounts, where a rename must not cross mounts.
    path: (p) => join(`/proc/${h.init!.pid}/root`, p),
    fsPath: (p) => hostPath(h, p),
  };
}
