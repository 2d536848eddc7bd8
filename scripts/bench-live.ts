/**
 * Live migration of real containers between the test hosts, strategy against strategy, with the downtime measured
 * from outside by the probe (src/runtime/probe.ts), next to what the emulator predicts for the same workload.
 *
 * For every link rate, memory size, dirty rate, strategy and run: a fresh memchange container in host a (memory
 * limit a quarter above its size), 3 s for its first touch of memory, the probe asking it every 2 ms from the probe
 * namespace, then `precog migrate NAME --from a --to b --strategy S --json`. Reported: the probe's downtime (longest
 * silence, from the last answer in a to the first answer in b, which must carry a value at least as high: the
 * state went on), precog's own downtime and total time, the bytes on the a->b link. Medians of --runs runs (the
 * strategies alternate within each run, so drift hits all of them alike). The baseline is cold migration of the
 * same container in the same run: downtime(cold)/downtime(strategy), and the issue's goal, downtime at most 1/10
 * of cold's for the 1 GiB low-rate case. Then the emulator (src/sim/run.ts) runs the same scenarios: memchange
 * with the same buffer, rate and pattern (8 bytes written per page, as memchange.py does), the memory precog
 * reported for the live container, the link's tc rate; its predictions are printed with the ratio live/emulated.
 *
 * Needs root. Each link rate gets its own testbed (`precog testbed up --rate R`), taken down afterwards, also on
 * failure or Ctrl-C. A testbed that is already up belongs to someone else: the bench waits (polling every 20 s)
 * until it is down.
 *
 *   sudo npm run bench:live                     # 256 MiB + 1 GiB x 5 + 50 MB/s x 100mbit + 1gbit, 3 runs (~1.5 h)
 *   sudo npm run bench:live -- --quick          # 64 MiB, 5 MB/s, 1gbit, 1 run (about a minute)
 *   sudo npm run bench:live -- --sizes 1024 --rates 5 --links 1gbit --strategies cold,precopy,iterpredict \
 *        --runs 5 --out docs/bench-live.md --json runs.json
 *
 * Dirty rates (MB/s of 4 KiB pages rewritten): low 5 MB/s is 40 % of the 100 Mbit/s link (12.5 MB/s) and 4 % of
 * the 1 Gbit/s link, so pre-copy converges on both; high 50 MB/s is 4x what the 100 Mbit/s link carries (pre-copy
 * cannot converge: rounds never shrink, iterpredict stops at once) and 40 % of the 1 Gbit/s link (converges, slowly).
 * Each rate is thus 40 % of one link and on the other side of the other, and memchange.py holds both exactly in one
 * Python thread (it rewrote ~6 M pages/s unthrottled, 50 MB/s is 12 k pages/s).
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { dirname } from 'node:path';
import { parseArgs } from 'node:util';
import type { LiveMigrationReport } from '../src/migrate/live.ts';
import { median } from '../src/report/metrics.ts';
import { probeNow, startProbe, type Probe, type ProbeResult } from '../src/runtime/probe.ts';
import {
  startServiceClient,
  type ServiceClient,
  type ServiceClientResult,
} from '../src/runtime/svcclient.ts';
import {
  AGENT,
  downForSure,
  hostCommand,
  readState,
  testbedOwner,
  testbedStatus,
  type TestbedState,
} from '../src/runtime/testbed.ts';
import { PODMAN_TEST_IMAGE } from '../src/runtime/podman-image.ts';
import { loadTrace } from '../src/memory/trace.ts';
import { runTool } from '../src/runtime/rootfs.ts';
import { simulate, SCENARIO_DEFAULTS } from '../src/sim/run.ts';
import {
  DEFAULT_SWITCHOVER_MODEL,
  loadSwitchoverModel,
  type SwitchoverModel,
} from '../src/sim/switchover.ts';
import { parseBandwidth } from '../src/util/units.ts';
import { requireRootOrExit } from './testbed-run.ts';
import { KEPT_SECTIONS, LIVE_SECTION, replaceSection } from './sections.ts';
import { latestRuns } from './live-runs.ts';

const BIN = new URL('../bin/precog', import.meta.url).pathname;
/** redis-lan's address on the testbed's service LAN (one container at a time). */
const SERVICE_ADDRESS = '10.213.80.50';
const isRedis = (w: string) => w === 'redis' || w === 'redis-lan';
/** replay:NAME: workloads/replay.py rewriting its memory as traces/live/NAME.trace.gz recorded a real program. */
const REPLAY = 'replay:';
const isReplay = (w: string) => w.startsWith(REPLAY);
const replayTrace = (w: string) => `traces/live/${w.slice(REPLAY.length)}.trace.gz`;
/** A replay's size in MiB: the trace's pages (its cell's size; --sizes and --rates do not apply). */
const replayMiBs = new Map<string, number>();
const replayMiB = (w: string): number => {
  // Asked by every loop over the cells: the trace is read once.
  if (!replayMiBs.has(w)) replayMiBs.set(w, Math.ceil((loadTrace(replayTrace(w)).pageCount * 4096) / MiB));
  return replayMiBs.get(w)!;
};
/** The sizes and rates a workload's cells take: a replay has one, its trace's size at its own rates (0). */
const sizesOf = (w: string): number[] => (isReplay(w) ? [replayMiB(w)] : sizes);
const ratesOf = (w: string): number[] => (isReplay(w) ? [0] : rates);
const MiB = 2 ** 20;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The floor (--no-floor): memchange of this many MiB at this rate, a minimal container (a Python process). */
const FLOOR_MIB = 1;
const FLOOR_RATE = 1;

const { values: flags } = parseArgs({
  options: {
    sizes: { type: 'string' },
    rates: { type: 'string' },
    links: { type: 'string' },
    strategies: { type: 'string' },
    runtime: { type: 'string', default: 'precog' },
    workloads: { type: 'string', default: 'memchange' },
    section: { type: 'string', default: LIVE_SECTION },
    runs: { type: 'string' },
    pattern: { type: 'string', default: 'sequential' },
    quick: { type: 'boolean', default: false },
    out: { type: 'string' },
    results: { type: 'string' },
    'from-json': { type: 'string' },
    json: { type: 'string' },
    interval: { type: 'string', default: '2' },
    settle: { type: 'string', default: '3' },
    'probe-port': { type: 'string', default: '7001' },
    'no-emulator': { type: 'boolean', default: false },
    'no-floor': { type: 'boolean', default: false },
    switchover: { type: 'string', default: DEFAULT_SWITCHOVER_MODEL },
    help: { type: 'boolean', short: 'h', default: false },
  },
  strict: true,
});

if (flags.help) {
  console.log(`usage: npm run bench:live -- [options]
  --sizes MIB,...        memchange sizes in MiB (default 256,1024; --quick: 64)
  --rates MBPS,...       dirty rates in MB/s (default 5,50; --quick: 5)
  --links RATE,...       testbed link rates (default 100mbit,1gbit; --quick: 1gbit)
  --runtime R            precog (containers of precog run) or podman (Podman containers, --network host, moved
                         with precog migrate --runtime podman) (default precog)
  --strategies S,...     migrate strategies (default cold,precopy,iterpredict; cold is the baseline; with
                         --runtime podman: podman,cold,cold@zstd,precopy,precopy@zstd, where "podman" is Podman's
                         own cold migration, the baseline: podman container checkpoint --export (Podman's default
                         archive, zstd; podman@none: --compress=none), the archive copied a -> b over the link
                         (mutual TLS, scripts/link-copy.mjs), podman container restore --import);
                         S+full or S+lazy picks precog migrate's --restore (default: lazy, full for cold),
                         S/ROUTE its --dump-via (lazy, images, page-server; default auto),
                         S@CODEC its --codec (e.g. precopy@xor-lz4: compression without prediction)
  --runs N               runs per cell, medians reported (default 3; --quick: 1)
  --workloads W,...      memchange (a buffer of SIZE MiB rewritten at RATE MB/s) and/or redis (redis-server with
                         SIZE MiB of values, rewritten at RATE MB/s by a client in the container, checked whole
                         after the move; workloads/redisload.py), and/or redis-lan (the same in a network namespace
                         of its own at ${SERVICE_ADDRESS}, with a client on the service LAN keeping one TCP
                         connection and sending INCR back to back: its longest pause is the downtime), and/or
                         replay:NAME (workloads/replay.py rewriting its memory as traces/live/NAME.trace.gz recorded
                         a real program, each change of the recorded size; its cell is the trace's size, --sizes and
                         --rates do not apply; emulated from the same trace) (default memchange)
  --pattern P            memchange pattern: sequential, random, hotspot (default sequential; redis: random)
  --quick                64 MiB, 5 MB/s, 1gbit, 1 run (flags given explicitly still win)
  --out FILE             also write the markdown report to FILE
  --json FILE            write every run (live and emulated) as JSON
  --results FILE         rewrite the live-migration section of FILE (docs/results.md) with the report
  --section NAME         the section of --results to rewrite (default ${LIVE_SECTION})
  --from-json FILE,...   no live runs: the report from the runs --json FILEs saved (e.g. of an interrupted run);
                         a cell's runs come from the last file that has it
  --interval MS          probe interval (default 2)
  --settle S             seconds between starting memchange and migrating (default 3)
  --probe-port P         memchange's UDP probe port (default 7001)
  --no-emulator          skip the emulator comparison
  --no-floor             skip the floor: before each link's grid, --runs pre-copy moves of a minimal container
                         (memchange of ${FLOOR_MIB} MiB at ${FLOOR_RATE} MB/s: a Python process), whose dump and restore
                         are CRIU's fixed cost here; the steps table shows each step above it
  --switchover FILE      the emulator's switchover cost model, fitted to live runs by npm run fit:switchover
                         (default ${DEFAULT_SWITCHOVER_MODEL}; none: the stop costs only its pages and state on the link)`);
  process.exit(0);
}

function list(text: string, what: string): string[] {
  const items = text
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  if (items.length === 0) usage(`${what} "${text}" is empty`);
  return items;
}
function numbers(text: string, what: string): number[] {
  return list(text, what).map((s) => {
    const n = Number(s);
    if (!(n > 0)) usage(`${what}: "${s}" is not a number > 0`);
    return n;
  });
}
function usage(msg: string): never {
  console.error(`bench:live: ${msg}`);
  process.exit(2);
}

const quick = flags.quick;
const sizes = numbers(flags.sizes ?? (quick ? '64' : '256,1024'), '--sizes');
const rates = numbers(flags.rates ?? (quick ? '5' : '5,50'), '--rates');
const links = list(flags.links ?? (quick ? '1gbit' : '100mbit,1gbit'), '--links');
const runtime = flags.runtime!;
if (!['precog', 'podman'].includes(runtime)) usage(`--runtime ${runtime}: precog or podman`);
const podmanRuntime = runtime === 'podman';
/** Podman's own cold migration, measured as a strategy of its own (the baseline with --runtime podman). */
const PODMAN_COLD = 'podman';
const strategies = list(
  flags.strategies ??
    (podmanRuntime ? `${PODMAN_COLD},cold,cold@zstd,precopy,precopy@zstd` : 'cold,precopy,iterpredict'),
  '--strategies',
);
if (!podmanRuntime && strategies.some((s) => parseCell(s).strategy === PODMAN_COLD))
  usage(`--strategies ${PODMAN_COLD}: Podman's own migration needs --runtime podman`);
const workloads = list(flags.workloads!, '--workloads');
for (const w of workloads) {
  if (isReplay(w)) {
    if (!/^[A-Za-z0-9_.-]+$/.test(w.slice(REPLAY.length)) || !existsSync(replayTrace(w)))
      usage(`--workloads ${w}: no trace ${replayTrace(w)} (the names in traces/live, without .trace.gz)`);
    continue;
  }
  if (!['memchange', 'redis', 'redis-lan'].includes(w))
    usage(`--workloads: "${w}" is not memchange, redis, redis-lan or replay:NAME`);
}
if (podmanRuntime && workloads.includes('redis-lan'))
  usage('--workloads redis-lan: the service LAN is for precog containers; use redis with --runtime podman');
if (!KEPT_SECTIONS.includes(flags.section!))
  usage(`--section ${flags.section}: one of ${KEPT_SECTIONS.join(', ')} (scripts/sections.ts)`);
const runs = numbers(flags.runs ?? (quick ? '1' : '3'), '--runs')[0];
const pattern = flags.pattern!;
let switchoverModel: SwitchoverModel | undefined;
if (!flags['no-emulator'] && flags.switchover !== 'none')
  try {
    switchoverModel = loadSwitchoverModel(flags.switchover!);
  } catch (err) {
    usage(`--switchover: ${(err as Error).message}`);
  }
const intervalMs = Number(flags.interval);
const settleMs = Number(flags.settle) * 1000;
const probePort = Number(flags['probe-port']);
if (!['sequential', 'random', 'hotspot'].includes(pattern))
  usage(`--pattern ${pattern}: sequential, random or hotspot`);
for (const l of links) {
  try {
    parseBandwidth(l, '--links');
  } catch {
    usage(`--links: "${l}" is not a rate such as 100mbit or 1gbit`);
  }
}
const BASELINE = podmanRuntime ? PODMAN_COLD : 'cold';
if (!strategies.includes(BASELINE))
  console.warn(`note: --strategies has no "${BASELINE}": no baseline ratios and no goal check`);
/** The issue's goal: for the 1 GiB low-rate case, downtime at most this fraction of cold's. */
const GOAL = { sizeMiB: 1024, rate: Math.min(...rates), fraction: 1 / 10 };
/** Against Podman's own cold migration: precog's cold no slower, every other strategy at most GOAL.fraction. */
const goalFraction = (s: string): number =>
  podmanRuntime && parseCell(s).strategy === 'cold' ? 1 : GOAL.fraction;

requireRootOrExit('bench:live');

// ---------------------------------------------------------------------------------------------------------------
// Running precog

interface Ran {
  code: number | null;
  stdout: string;
  stderr: string;
}

function precogSync(...args: string[]): Ran {
  const r = spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8', timeout: 900_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

function mustPrecog(...args: string[]): string {
  const r = precogSync(...args);
  if (r.code !== 0) throw new Error(`precog ${args.join(' ')} failed (exit ${r.code}): ${r.stderr.trim()}`);
  return r.stdout;
}

/** Asynchronous: the probe's output must keep being read while the migration runs. */
function precogAsync(...args: string[]): Promise<Ran> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

/** What `precog migrate --json` reports (the fields used here). */
interface MigrateReport {
  container: string;
  from: string;
  to: string;
  strategy: string;
  totalMs: number;
  downtimeMs: number;
  bytesTotal: number;
  liveRounds: number;
  memoryBytes: number;
  pagesFinal: number;
  dumpMs?: number;
  finalPagesMs?: number;
  stateMs?: number;
  restoreMs?: number;
  /** Absent in runs saved before the lazy restore (they were full restores). */
  restoreMode?: 'lazy' | 'full';
  lazyMs?: number | null;
  /** Absent in runs saved before the lazy dump route: 'images' (or page-server in the oldest). */
  dumpVia?: LiveMigrationReport['dumpVia'];
  lazyDumpSteps?: LiveMigrationReport['lazyDumpSteps'];
  /** Post-copy (postcopy, hybrid); absent in runs saved before it existed. */
  postcopy?: LiveMigrationReport['postcopy'];
}

interface LiveRun {
  /** Absent in runs saved before redis was added: memchange. */
  workload?: string;
  link: string;
  sizeMiB: number;
  rate: number;
  strategy: string;
  run: number;
  container: string;
  ok: boolean;
  error?: string;
  report?: MigrateReport;
  probe?: Omit<ProbeResult, 'samples'> & { answers: number };
  /** redis: the client's check of every key after the move ("verify ok KEYS REQUESTS FAILED"). */
  verify?: string;
  /** redis: requests that failed during the run, as the client counted them. */
  failedRequests?: number;
  /** redis-lan: what the client on the service LAN saw. */
  client?: ServiceClientResult;
}
const workloadOf = (r: { workload?: string }) => r.workload ?? 'memchange';
/** The floor's runs (--no-floor): a minimal container, its workload relabelled so that no grid cell takes them. */
const FLOOR = 'floor';
/** The downtime seen from outside: the probe's longest silence, or (redis-lan) the LAN client's longest pause. */
const outsideDowntime = (r: LiveRun): number | undefined => r.probe?.downtimeMs ?? r.client?.maxPauseMs;

interface EmulatedRun {
  /** The live workload it stands for (absent: memchange, in JSON saved before replays existed). */
  workload?: string;
  link: string;
  sizeMiB: number;
  rate: number;
  strategy: string;
  memoryBytes: number;
  /** The emulator's workload (memchange with the live run's buffer, rate and pattern; a replay's trace). */
  spec: string;
  ok: boolean;
  error?: string;
  downtimeMs?: number;
  totalMs?: number;
  bytesTotal?: number;
  liveRounds?: number;
}

// ---------------------------------------------------------------------------------------------------------------
// Testbed: one per link rate, only when nobody else's is up; always taken down

let ourTestbed = false;
/** When the testbed this bench last brought up was created: how it knows its own, even half-removed. */
let ourCreatedAt: string | undefined;
let activeProbe: Probe | undefined;
let activeClient: ServiceClient | undefined;
const started = new Set<string>();

async function waitForFreeTestbed(): Promise<void> {
  for (let announced = false; ; announced = true) {
    const s = await testbedStatus();
    const owner = testbedOwner(s, ourCreatedAt);
    if (owner === 'free') return;
    if (owner === 'ours') {
      // Our own, half-removed by an earlier link's down: ours to finish, not somebody else's to wait for.
      console.error(`the testbed this bench brought up (${s.createdAt}) is still ${s.state}: taking it down`);
      await downForSure(() => precogSync('testbed', 'down'), { log: (l) => console.error(l) });
      continue;
    }
    if (!announced)
      console.log(
        `a testbed is ${s.state} (since ${s.createdAt ?? '?'}): someone may be using it; waiting until it is down ` +
          '(polling every 20 s; if it is a crashed leftover, run "precog testbed down")',
      );
    await sleep(20_000);
  }
}

function stopContainers(): void {
  for (const name of started) stopContainer(name);
}

/** Removes a bench container wherever it is (with --runtime podman: from both hosts' Podman). */
function stopContainer(name: string): void {
  const state = podmanRuntime ? readState() : undefined;
  if (state)
    for (const h of ['a', 'b']) inHostSync(state, h, ['podman', 'rm', '--force', '--time', '0', name]);
  else precogSync('stop', name);
  started.delete(name);
}

/** A command in a test host, without the precog CLI around it (whose start-up would count in Podman's time). */
function inHostSync(state: TestbedState, host: string, argv: string[]): Ran {
  const c = hostCommand(state, host, argv);
  const r = spawnSync(c.cmd, c.args, { env: c.env, encoding: 'utf8', timeout: 900_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** The same without waiting (the receiver of the copy runs while the checkpoint does); ONLINE sees each line. */
function inHostAsync(
  state: TestbedState,
  host: string,
  argv: string[],
  onLine?: (line: string) => void,
): Promise<Ran> {
  const c = hostCommand(state, host, argv);
  return runTool(c.cmd, c.args, { env: c.env, ...(onLine ? { onLine } : {}) });
}

const mustIn = (r: Ran, what: string): Ran => {
  if (r.code !== 0)
    throw new Error(`${what} failed (exit ${r.code}): ${r.stderr.trim().split('\n').slice(-2).join(' | ')}`);
  return r;
};

/**
 * Podman's own cold migration of NAME from a to b, as a user does it between two servers: checkpoint with export,
 * the archive over the link (mutual TLS with the hosts' certificates, scripts/link-copy.mjs: scp's part), restore
 * with import. Reported like precog migrate --json: downtime from the checkpoint's start to the restore's end.
 */
async function podmanCold(state: TestbedState, name: string, entry: string): Promise<Ran> {
  // podman: Podman's default archive (zstd); podman@none, podman@gzip: --compress given.
  const compress = parseCell(entry).codec;
  const file = `/var/lib/precog/${name}.tar`;
  const b = state.hosts.find((h) => h.name === 'b')!;
  const to = `${b.address}:7098`;
  const copy = (mode: string, self: string, peer: string) => [
    'node',
    '/opt/precog/scripts/link-copy.mjs',
    mode,
    to,
    file,
    AGENT.pkiDir,
    self,
    peer,
  ];
  try {
    // The receiver listens in b before the container stops (a server's sshd is there already, too).
    let listening!: () => void;
    const ready = new Promise<void>((r) => (listening = r));
    const recv = inHostAsync(state, 'b', copy('recv', 'b', 'a'), (l) => l === 'listening' && listening());
    await Promise.race([ready, recv.then((r) => mustIn(r, 'link-copy recv'))]);
    const t0 = performance.now();
    mustIn(
      await inHostAsync(state, 'a', [
        'podman',
        'container',
        'checkpoint',
        name,
        `--export=${file}`,
        ...(compress ? [`--compress=${compress}`] : []),
        '--tcp-established',
      ]),
      'podman container checkpoint --export',
    );
    const t1 = performance.now();
    mustIn(await inHostAsync(state, 'a', copy('send', 'a', 'b')), 'link-copy send');
    mustIn(await recv, 'link-copy recv');
    const t2 = performance.now();
    mustIn(
      await inHostAsync(state, 'b', [
        'podman',
        'container',
        'restore',
        `--import=${file}`,
        '--tcp-established',
      ]),
      'podman container restore --import',
    );
    const t3 = performance.now();
    const bytes = Number(mustIn(inHostSync(state, 'b', ['stat', '-c', '%s', file]), 'stat').stdout);
    inHostSync(state, 'a', ['podman', 'rm', '--force', name]);
    const report: MigrateReport = {
      container: name,
      from: 'a',
      to: 'b',
      strategy: entry,
      totalMs: t3 - t0,
      downtimeMs: t3 - t0,
      bytesTotal: bytes,
      liveRounds: 0,
      memoryBytes: 0,
      pagesFinal: 0,
      dumpMs: t1 - t0,
      finalPagesMs: t2 - t1,
      stateMs: 0,
      restoreMs: t3 - t2,
      restoreMode: 'full',
    };
    return { code: 0, stdout: JSON.stringify(report), stderr: '' };
  } catch (err) {
    return { code: 1, stdout: '', stderr: (err as Error).message };
  } finally {
    for (const h of ['a', 'b']) inHostSync(state, h, ['rm', '-f', file]);
  }
}

async function cleanup(): Promise<void> {
  if (activeProbe) await activeProbe.stop().catch(() => {});
  if (activeClient) await activeClient.stop().catch(() => {});
  activeProbe = undefined;
  stopContainers();
  if (ourTestbed) {
    await downForSure(() => precogSync('testbed', 'down'), { log: (l) => console.error(l) });
    ourTestbed = false;
  }
}

for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const)
  process.on(sig, () => {
    console.error(`\n${sig}: stopping the containers and taking the testbed down`);
    void cleanup()
      .then(() => writeReport([], `interrupted by ${sig}: the runs done so far, no emulator`))
      .finally(() => process.exit(130));
  });

// ---------------------------------------------------------------------------------------------------------------
// One live migration

let serial = 0;

/**
 * A --strategies entry: STRATEGY[+lazy|+full][/ROUTE][@CODEC] (restore mode, dump route and page codec of precog
 * migrate).
 */
function parseCell(entry: string): { strategy: string; restore?: string; dumpVia?: string; codec?: string } {
  const [head, codec] = entry.split('@');
  const [withRestore, dumpVia] = head.split('/');
  const [strategy, restore] = withRestore.split('+');
  return {
    strategy,
    ...(restore ? { restore } : {}),
    ...(dumpVia ? { dumpVia } : {}),
    ...(codec ? { codec } : {}),
  };
}

function migrateArgs(entry: string): string[] {
  const c = parseCell(entry);
  return [
    '--strategy',
    c.strategy,
    ...(c.restore ? ['--restore', c.restore] : []),
    ...(c.dumpVia ? ['--dump-via', c.dumpVia] : []),
    ...(c.codec ? ['--codec', c.codec] : []),
  ];
}

/** The container's command for a workload of SIZE MiB rewritten at RATE MB/s. */
function workloadCommand(workload: string, sizeMiB: number, rate: number): string[] {
  if (isReplay(workload))
    return [
      'python3',
      '/opt/precog/workloads/replay.py',
      '--trace',
      `/opt/precog/${replayTrace(workload)}`,
      '--probe-port',
      String(probePort),
    ];
  if (isRedis(workload))
    return [
      'python3',
      '/opt/precog/workloads/redisload.py',
      '--size',
      String(sizeMiB),
      '--rate',
      String(rate),
      '--probe-port',
      String(probePort),
      ...(workload === 'redis-lan' ? ['--tcp-port', '6379'] : []),
    ];
  return [
    'python3',
    '/opt/precog/workloads/memchange.py',
    '--size',
    String(sizeMiB),
    '--rate',
    String(rate),
    '--pattern',
    pattern,
    '--probe-port',
    String(probePort),
  ];
}

/**
 * Asks redisload.py in container NAME a question of its probe port ("verify" or "stats"), over the loopback of
 * the container's network namespace (its host's, or its own).
 */
function askWorkload(name: string, question: string, state?: TestbedState): string {
  const py =
    'import socket,sys;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.settimeout(60);' +
    `s.sendto(sys.argv[1].encode(),("127.0.0.1",${probePort}));print(s.recv(512).decode().strip())`;
  if (podmanRuntime && state) {
    // A Podman container: asked through podman exec on the host that has it running.
    for (const h of ['b', 'a']) {
      const r = inHostSync(state, h, ['podman', 'exec', name, 'python3', '-c', py, question]);
      if (r.code === 0) return r.stdout.trim();
    }
    throw new Error(`asking ${name} "${question}" failed: it runs on neither host`);
  }
  const c = (
    JSON.parse(mustPrecog('ps', '--json')) as { name: string; machinePid: { pid: number } | null }[]
  ).find((x) => x.name === name);
  if (!c?.machinePid) throw new Error(`container ${name} is not running`);
  const r = spawnSync(
    'nsenter',
    ['-t', String(c.machinePid.pid), '-m', '-n', '--', 'python3', '-c', py, question],
    {
      encoding: 'utf8',
      timeout: 120_000,
    },
  );
  if (r.status !== 0) throw new Error(`asking ${name} "${question}" failed: ${r.stderr.trim()}`);
  return r.stdout.trim();
}

async function liveRun(
  state: TestbedState,
  workload: string,
  link: string,
  sizeMiB: number,
  rate: number,
  strategy: string,
  run: number,
): Promise<LiveRun> {
  const name = `bench${process.pid % 1000}-${++serial}`;
  // redis keeps each value with ~100 bytes of its own, and its allocator's slack
  const limitMiB = Math.ceil(isRedis(workload) ? sizeMiB * 1.6 + 128 : sizeMiB * 1.25 + 64);
  const base: LiveRun = { workload, link, sizeMiB, rate, strategy, run, container: name, ok: false };
  if (podmanRuntime)
    // The host's network, as precog's containers have it: the probe reaches it at a's address, then at b's.
    mustIn(
      inHostSync(state, 'a', [
        'podman',
        'run',
        '-d',
        '--name',
        name,
        '--network',
        'host',
        '--memory',
        `${limitMiB}m`,
        '-v',
        '/opt/precog/workloads:/opt/precog/workloads:ro',
        PODMAN_TEST_IMAGE,
        ...workloadCommand(workload, sizeMiB, rate),
      ]),
      'podman run',
    );
  else
    mustPrecog(
      'run',
      '--host',
      'a',
      '--name',
      name,
      '--memory',
      `${limitMiB}M`,
      ...(workload === 'redis-lan' ? ['--ip', SERVICE_ADDRESS] : []),
      '--',
      ...workloadCommand(workload, sizeMiB, rate),
    );
  started.add(name);
  if (workload === 'redis-lan') return lanRun(state, base, name);
  try {
    const probe = await startProbe(state, { port: probePort, intervalMs, awaitReplyMs: 60_000 });
    activeProbe = probe;
    await sleep(settleMs);
    const t0 = probeNow();
    const m =
      parseCell(strategy).strategy === PODMAN_COLD
        ? await podmanCold(state, name, strategy)
        : await precogAsync(
            'migrate',
            name,
            '--from',
            'a',
            '--to',
            'b',
            ...(podmanRuntime ? ['--runtime', 'podman'] : []),
            ...migrateArgs(strategy),
            '--json',
            '--no-progress',
          );
    // The first answer from b (the migrated container), then a little more, so the window closes after it. (After a
    // failed migration the source answers again: a short look is enough.)
    await probe.waitForReply({ host: 'b', after: t0 }, m.code === 0 ? 5000 : 300);
    await sleep(200);
    const result = await probe.stop();
    activeProbe = undefined;
    const { samples, ...rest } = result;
    base.probe = { ...rest, answers: samples.length };
    if (m.code !== 0)
      throw new Error(
        `migrate failed (exit ${m.code}): ${m.stderr.trim().split('\n').slice(-3).join(' | ')}`,
      );
    base.report = JSON.parse(m.stdout) as MigrateReport;
    if (result.firstAfter?.host !== 'b')
      throw new Error(
        `the probe's longest silence did not end with an answer from b: ${JSON.stringify(result.firstAfter)}`,
      );
    if (!result.continued)
      throw new Error(
        `the state did not go on: ${JSON.stringify(result.lastBefore)} then ${JSON.stringify(result.firstAfter)}`,
      );
    if (workload === 'redis') verifyRedis(base, name, state);
    base.ok = true;
  } catch (err) {
    base.error = (err as Error).message;
  } finally {
    if (activeProbe) await activeProbe.stop().catch(() => {});
    activeProbe = undefined;
    stopContainer(name);
  }
  return base;
}

/** Every key read back in b and compared with what the in-container client wrote; its count of failed requests. */
function verifyRedis(base: LiveRun, name: string, state?: TestbedState): void {
  base.verify = askWorkload(name, 'verify', state);
  const m = /^verify ok \d+ \d+ (\d+)$/.exec(base.verify);
  if (!m) throw new Error(`redis data after the move: ${base.verify}`);
  base.failedRequests = Number(m[1]);
  if (base.failedRequests > 0) throw new Error(`the client saw ${base.failedRequests} failed request(s)`);
}

/**
 * redis-lan: no UDP probe (the container's own network namespace is not on the probe's links); the client on the
 * service LAN is the user: one TCP connection, INCR back to back, from before the move until b has answered it.
 */
async function lanRun(state: TestbedState, base: LiveRun, name: string): Promise<LiveRun> {
  let client: ServiceClient | undefined;
  try {
    // redisload answers its probe port once the fill is done: wait for that (inside the container), then connect.
    for (let i = 0; ; i++) {
      try {
        askWorkload(name, 'stats');
        break;
      } catch (err) {
        if (i > 600) throw err;
        await sleep(100);
      }
    }
    client = await startServiceClient(state, { address: SERVICE_ADDRESS, port: 6379 });
    activeClient = client;
    await sleep(settleMs);
    const m = await precogAsync(
      'migrate',
      name,
      '--from',
      'a',
      '--to',
      'b',
      ...migrateArgs(base.strategy),
      '--json',
      '--no-progress',
    );
    const n = client.replies();
    for (let i = 0; i < 50 && client.replies() <= n + 10; i++) await sleep(100);
    await sleep(200);
    const r = await client.stop();
    activeClient = undefined;
    base.client = r;
    if (m.code !== 0)
      throw new Error(
        `migrate failed (exit ${m.code}): ${m.stderr.trim().split('\n').slice(-3).join(' | ')}`,
      );
    base.report = JSON.parse(m.stdout) as MigrateReport;
    if (r.failed > 0 || r.connections !== 1 || !r.sequential)
      throw new Error(
        `the LAN client saw ${r.failed} failed request(s), ${r.connections} connection(s), ` +
          `${r.sequential ? 'sequential' : 'NOT sequential'} replies: ${r.errors.join('; ')}`,
      );
    verifyRedis(base, name);
    base.ok = true;
  } catch (err) {
    base.error = (err as Error).message;
  } finally {
    if (activeClient) await activeClient.stop().catch(() => {});
    activeClient = undefined;
    precogSync('stop', name);
    started.delete(name);
  }
  return base;
}

// ---------------------------------------------------------------------------------------------------------------
// Formatting

const fmt = (x: number | undefined, digits = 0): string =>
  x === undefined || !Number.isFinite(x) ? '-' : x.toFixed(digits);
const ratio = (a: number | undefined, b: number | undefined): string =>
  a === undefined || b === undefined || !Number.isFinite(a) || !Number.isFinite(b) || b === 0
    ? '-'
    : `${(a / b).toFixed(2)}`;
const med = (xs: (number | undefined)[]): number | undefined => {
  const v = xs.filter((x): x is number => x !== undefined && Number.isFinite(x));
  return v.length > 0 ? median(v) : undefined;
};

function table(head: string[], rows: string[][]): string {
  const right = head.map((_, i) => rows.every((r) => /^[-0-9.,x%/ ]*$/.test(r[i] ?? '')));
  const line = (r: string[]) => `| ${r.join(' | ')} |`;
  return [line(head), line(head.map((_, i) => (right[i] ? '---:' : '---'))), ...rows.map(line)].join('\n');
}

// ---------------------------------------------------------------------------------------------------------------
// Main

const liveRuns: LiveRun[] = [];
const t0 = performance.now();
/** The machine's load averages (1, 5, 15 min) as the bench starts: these two cores are shared and noisy. */
const loadAtStart = loadavg()
  .map((x) => x.toFixed(2))
  .join(', ');
console.log(
  `bench:live: sizes ${sizes.join(', ')} MiB, rates ${rates.join(', ')} MB/s (${pattern}), links ${links.join(', ')}, ` +
    `strategies ${strategies.join(', ')}, ${runs} run(s) each; probe every ${intervalMs} ms on UDP ${probePort}`,
);

// --from-json: the report again from runs saved by an earlier (possibly interrupted) run, with the emulator.
if (flags['from-json']) {
  // Several files: a cell's runs come from the last file that has that cell (newer runs replace older ones).
  liveRuns.push(...latestRuns<LiveRun>(flags['from-json'].split(',')));
} else
  try {
    for (const link of links) {
      await waitForFreeTestbed();
      // Ours only once up succeeded: an up that fails removes what it made, and one refused because somebody
      // else's testbed came up meanwhile must not lead to taking theirs down.
      mustPrecog('testbed', 'up', '--rate', link);
      ourTestbed = true;
      const state = readState();
      ourCreatedAt = state?.createdAt;
      if (!state?.complete) throw new Error('testbed up returned, but the testbed is not up');
      if (!state.probe) throw new Error('the testbed has no probe namespace');
      console.log(`\ntestbed up, link ${state.rate ?? 'unlimited'}`);
      try {
        if (!flags['no-floor'] && !podmanRuntime)
          for (let run = 1; run <= runs; run++) {
            const r = await liveRun(state, 'memchange', link, FLOOR_MIB, FLOOR_RATE, 'precopy', run);
            r.workload = FLOOR;
            liveRuns.push(r);
            console.log(
              `floor ${link} run ${run}: ` +
                (r.ok
                  ? `dump ${fmt(r.report?.dumpMs)} ms, restore ${fmt(r.report?.restoreMs)} ms, ` +
                    `probe downtime ${fmt(r.probe?.downtimeMs)} ms`
                  : `FAILED: ${r.error}`),
            );
          }
        for (const workload of workloads)
          for (const sizeMiB of sizesOf(workload))
            for (const rate of ratesOf(workload))
              for (let run = 1; run <= runs; run++)
                for (const strategy of strategies) {
                  const r = await liveRun(state, workload, link, sizeMiB, rate, strategy, run);
                  liveRuns.push(r);
                  const p = r.probe;
                  console.log(
                    `${workload} ${link} ${sizeMiB} MiB ${rate} MB/s ${strategy} run ${run}: ` +
                      (r.ok
                        ? (r.client
                            ? `LAN client: longest pause ${fmt(r.client.maxPauseMs)} ms, ${r.client.failed} failed, ` +
                              `${r.client.connections} connection(s)`
                            : `probe downtime ${fmt(p?.downtimeMs)} ms (${p?.lastBefore?.host}:${p?.lastBefore?.value} -> ` +
                              `${p?.firstAfter?.host}:${p?.firstAfter?.value})`) +
                          `, precog downtime ${fmt(r.report?.downtimeMs)} ms, ` +
                          `total ${fmt((r.report?.totalMs ?? NaN) / 1000, 1)} s, ${fmt((r.report?.bytesTotal ?? NaN) / 1e6, 1)} MB, ` +
                          `${r.report?.liveRounds} live round(s)${r.verify ? `; ${r.verify}` : ''}`
                        : `FAILED: ${r.error}`),
                  );
                }
      } finally {
        await cleanup();
      }
    }
  } finally {
    await cleanup();
  }

// The emulator, same scenarios: the memory precog reported for the live container (median), else the buffer + 16 MiB;
// the stop charged by the switchover model fitted to earlier live runs (scripts/fit-switchover.ts), unless none.
async function runEmulator(): Promise<EmulatedRun[]> {
  const emulated: EmulatedRun[] = [];
  for (const link of links)
    for (const workload of workloads.filter((w) => w === 'memchange' || isReplay(w)))
      // no model of redis
      for (const sizeMiB of sizesOf(workload))
        for (const rate of ratesOf(workload))
          for (const strategy of strategies) {
            if (parseCell(strategy).strategy === PODMAN_COLD) continue; // nor of Podman's own migration
            const live = liveRuns.filter(
              (r) =>
                r.ok &&
                workloadOf(r) === workload &&
                r.link === link &&
                r.sizeMiB === sizeMiB &&
                r.rate === rate &&
                parseCell(r.strategy).strategy !== PODMAN_COLD &&
                r.report,
            );
            const memoryBytes = med(live.map((r) => r.report!.memoryBytes)) ?? (sizeMiB + 16) * MiB;
            const model = switchoverModel
              ? { switchover: switchoverModel, stateBytes: switchoverModel.stateBytes }
              : {};
            // memchange.py's hot spot: the first 10 % of the buffer gets 90 % of the writes (its defaults).
            const hot = pattern === 'hotspot' ? ':hot=0.1:hotshare=0.9' : '';
            // A replay: the trace it replays, each change the size it was recorded at.
            const spec = isReplay(workload)
              ? `trace:file=${replayTrace(workload)}`
              : `memchange:rate=${rate}MB/s:buffer=${sizeMiB}MiB:pattern=${pattern}:touch=8${hot}`;
            const e: EmulatedRun = { workload, link, sizeMiB, rate, strategy, memoryBytes, spec, ok: false };
            try {
              const r = await simulate({
                ...SCENARIO_DEFAULTS,
                workload: spec,
                memoryBytes: Math.ceil(memoryBytes / 4096) * 4096,
                bandwidth: parseBandwidth(link, '--links'),
                strategy: parseCell(strategy).strategy,
                ...(parseCell(strategy).codec ? { codec: parseCell(strategy).codec } : {}),
                seed: 1,
                ...model,
              });
              Object.assign(e, {
                ok: true,
                downtimeMs: r.metrics.downtime * 1000,
                totalMs: r.metrics.totalTime * 1000,
                bytesTotal: r.metrics.bytesTotal,
                liveRounds: r.metrics.liveRounds,
              });
            } catch (err) {
              e.error = (err as Error).message;
            }
            emulated.push(e);
          }
  return emulated;
}

// ---------------------------------------------------------------------------------------------------------------
// Report

function writeReport(emulated: EmulatedRun[], partial?: string): void {
  const out: string[] = [];
  out.push(
    // The section's name in the title: results.md holds several of these, each under a title of its own.
    `# Live migration, ${flags.section}: ${runs} run(s) per cell, medians${partial ? ` (${partial})` : ''}`,
    '',
    `${workloads.map((w) => (w === 'redis' ? 'redis (redis-server and its client, workloads/redisload.py)' : w === 'redis-lan' ? `redis-lan (the same with its own address, ${SERVICE_ADDRESS}, and a second client on the service LAN)` : `memchange (${pattern})`)).join(' and ')} ` +
      `in host a, migrated to b with \`precog migrate --json\`; downtime measured by the probe ` +
      `(UDP every ${intervalMs} ms from the probe namespace, longest silence, state continued) and by precog ` +
      `(source frozen -> running on b). Bytes: on the a->b link (precog's report). Emulated: src/sim/run.ts with ` +
      `the same buffer, rate, pattern and link rate, the memory precog reported, ` +
      (switchoverModel
        ? `the stop charged by the switchover model fitted to live runs (${switchoverModel.fittedFrom.split(':')[0]}; ` +
          `docs/results.md, "switchover-model"), `
        : 'no switchover model (the stop costs only its pages and state on the link), ') +
      `defaults otherwise; ` +
      `ratios are live / emulated (memchange only: the emulator has no model of redis). redis: a run counts only when ` +
      `the client saw no failed request and every key read back in b equals what it wrote. redis-lan: the downtime ` +
      `"probe" column is the LAN client's longest pause between two replies (one TCP connection, INCR back to back), ` +
      `and a run counts only when that connection lasted, no request failed and every reply was the last + 1.`,
    '',
  );
  const rows: string[][] = [];
  // A cell: one workload, link, size and rate (the rows of every table); the strategies are its columns or rows.
  interface Cell {
    workload: string;
    link: string;
    sizeMiB: number;
    rate: number;
  }
  const cells: Cell[] = [];
  for (const link of links)
    for (const workload of workloads)
      for (const sizeMiB of sizesOf(workload))
        for (const rate of ratesOf(workload))
          // Cells no run was made for (a report merged from runs of different grids) are left out.
          if (
            liveRuns.some(
              (r) =>
                workloadOf(r) === workload && r.link === link && r.sizeMiB === sizeMiB && r.rate === rate,
            )
          )
            cells.push({ workload, link, sizeMiB, rate });
  const cellsFor = (c: Cell, strategy: string) =>
    liveRuns.filter(
      (r) =>
        workloadOf(r) === c.workload &&
        r.link === c.link &&
        r.sizeMiB === c.sizeMiB &&
        r.rate === c.rate &&
        r.strategy === strategy,
    );
  const downtimeOf = (c: Cell, strategy: string) =>
    med(
      cellsFor(c, strategy)
        .filter((r) => r.ok)
        .map(outsideDowntime),
    );
  const cellHead = (c: Cell) => [
    c.workload,
    `${c.sizeMiB} MiB`,
    isReplay(c.workload) ? 'as recorded' : `${c.rate} MB/s`,
    c.link,
  ];
  /** The columns cellHead fills, first in every table. */
  const CELL_HEAD = ['workload', 'size', 'dirty rate', 'link'];
  for (const c of cells)
    for (const strategy of strategies) {
      const cells = cellsFor(c, strategy);
      if (!cells.length && (flags['from-json'] || liveRuns.length)) continue; // not run for this cell
      const ok = cells.filter((r) => r.ok);
      const probeDown = med(ok.map(outsideDowntime));
      const precogDown = med(ok.map((r) => r.report?.downtimeMs));
      const total = med(ok.map((r) => r.report?.totalMs));
      const bytes = med(ok.map((r) => r.report?.bytesTotal));
      const rounds = med(ok.map((r) => r.report?.liveRounds));
      const e = emulated.find(
        (x) =>
          (x.workload ?? 'memchange') === c.workload &&
          x.link === c.link &&
          x.sizeMiB === c.sizeMiB &&
          x.rate === c.rate &&
          x.strategy === strategy &&
          x.ok,
      );
      rows.push([
        ...cellHead(c),
        strategy,
        `${ok.length}/${cells.length}`,
        fmt(probeDown),
        fmt(precogDown),
        fmt(total === undefined ? undefined : total / 1000, 2),
        fmt(bytes === undefined ? undefined : bytes / 1e6, 1),
        fmt(rounds),
        fmt(e?.downtimeMs),
        fmt(e?.totalMs === undefined ? undefined : e.totalMs / 1000, 2),
        fmt(e?.bytesTotal === undefined ? undefined : e.bytesTotal / 1e6, 1),
        ratio(probeDown, e?.downtimeMs),
        ratio(total, e?.totalMs),
        ratio(bytes, e?.bytesTotal),
      ]);
    }
  out.push(
    table(
      [
        ...CELL_HEAD,
        'strategy',
        'ok runs',
        'downtime, probe (ms)',
        'downtime, precog (ms)',
        'total (s)',
        'on the link (MB)',
        'live rounds',
        'emulated downtime (ms)',
        'emulated total (s)',
        'emulated (MB)',
        'downtime live/emu',
        'total live/emu',
        'bytes live/emu',
      ],
      rows,
    ),
  );

  // Where precog's downtime goes, step by step (docs/migration.md, "The report"), each link's floor first: the same
  // steps for a minimal container moved in the same run, and each step above it.
  const steps: string[][] = [];
  const floorRuns = (link: string) =>
    liveRuns.filter((r) => r.ok && r.report && workloadOf(r) === FLOOR && r.link === link);
  const hasFloor = links.some((l) => floorRuns(l).length > 0);
  const stepRow = (head: string[], strategy: string, ok: LiveRun[], floor: LiveRun[]): string[] => {
    const m = (runs: LiveRun[], f: (x: MigrateReport) => number | null | undefined) =>
      med(runs.map((r) => f(r.report!) ?? undefined));
    const above = (f: (x: MigrateReport) => number | undefined) => {
      const a = m(ok, f);
      const b = m(floor, f);
      return fmt(a === undefined || b === undefined ? undefined : a - b);
    };
    return [
      ...head,
      strategy,
      ok[0].report!.restoreMode ?? 'full',
      ok[0].report!.dumpVia ?? 'images',
      fmt(m(ok, (x) => x.dumpMs)),
      fmt(m(ok, (x) => x.lazyDumpSteps?.criuMs)),
      fmt(m(ok, (x) => x.lazyDumpSteps?.memoryMs)),
      fmt(m(ok, (x) => x.finalPagesMs)),
      fmt(m(ok, (x) => x.stateMs)),
      fmt(m(ok, (x) => x.restoreMs)),
      fmt(m(ok, (x) => x.lazyMs)),
      ...(hasFloor ? [above((x) => x.dumpMs), above((x) => x.stateMs), above((x) => x.restoreMs)] : []),
    ];
  };
  for (const link of links) {
    const floor = floorRuns(link);
    if (floor.length)
      steps.push(stepRow([FLOOR, `${FLOOR_MIB} MiB`, `${FLOOR_RATE} MB/s`, link], 'precopy', floor, []));
    for (const c of cells.filter((x) => x.link === link))
      for (const strategy of strategies) {
        const ok = cellsFor(c, strategy).filter((r) => r.ok && r.report);
        if (ok.length) steps.push(stepRow(cellHead(c), strategy, ok, floor));
      }
  }
  if (steps.length) {
    out.push('', `## Where precog's downtime goes (medians, ms)`, '');
    out.push(
      "dump: `criu dump` (route lazy: CRIU's non-memory state, then precog's read of the anonymous memory from " +
        'the stopped tasks; images: a full local dump read back; page-server: streamed to precog) and the ' +
        'comparison of every dumped page with what was sent; of which criu and memory read: the two parts of a ' +
        'lazy dump; changed ' +
        "pages: on the link; state: images and layer on the link plus the agent's commit; restore: `criu restore` " +
        'with the container around it; lazy copy-in: after the container runs, until `criu lazy-pages` has copied ' +
        'the last page in from the local images (not downtime).' +
        (hasFloor
          ? ` floor: a minimal container (memchange of ${FLOOR_MIB} MiB, a Python process) moved by pre-copy on the ` +
            "same link in the same run, before the grid: CRIU's fixed cost on this machine; the last three columns " +
            'are each step of the cell minus the same step of the floor.'
          : ''),
      '',
    );
    out.push(
      table(
        [
          ...CELL_HEAD,
          'strategy',
          'restore',
          'route',
          'dump',
          'of which criu',
          'memory read',
          'changed pages',
          'state',
          'restore',
          'lazy copy-in',
          ...(hasFloor ? ['dump above floor', 'state above floor', 'restore above floor'] : []),
        ],
        steps,
      ),
    );
  }

  if (strategies.includes(BASELINE) && strategies.length > 1) {
    const others = strategies.filter((s) => s !== BASELINE);
    out.push(
      '',
      `## Downtime of ${BASELINE} / downtime of each strategy (probe, medians; higher is better)`,
      '',
    );
    const ratioRows: string[][] = [];
    for (const c of cells) {
      const cold = downtimeOf(c, BASELINE);
      ratioRows.push([...cellHead(c), fmt(cold), ...others.map((s) => ratio(cold, downtimeOf(c, s)))]);
    }
    out.push(
      table([...CELL_HEAD, `${BASELINE} downtime (ms)`, ...others.map((s) => `${BASELINE}/${s}`)], ratioRows),
    );

    out.push(
      '',
      podmanRuntime
        ? `## Goal: for ${GOAL.sizeMiB} MiB at ${GOAL.rate} MB/s, downtime at most 1/${1 / GOAL.fraction} of Podman's own cold migration (precog's cold: no slower than it)`
        : `## Goal: downtime at most 1/${1 / GOAL.fraction} of cold's for ${GOAL.sizeMiB} MiB at ${GOAL.rate} MB/s`,
      '',
    );
    if (!sizes.includes(GOAL.sizeMiB) || !workloads.includes('memchange'))
      out.push(`not measured in this run (no ${GOAL.sizeMiB} MiB size)`);
    else
      for (const link of links) {
        const goal: Cell = { workload: 'memchange', link, sizeMiB: GOAL.sizeMiB, rate: GOAL.rate };
        const cold = downtimeOf(goal, BASELINE);
        for (const s of others) {
          const d = downtimeOf(goal, s);
          const verdict =
            cold === undefined || d === undefined
              ? 'not measured'
              : d <= cold * goalFraction(s)
                ? 'met'
                : 'NOT met';
          out.push(
            `- ${link}, ${s}: ${fmt(d)} ms vs ${BASELINE} ${fmt(cold)} ms (limit ${fmt(cold === undefined ? undefined : cold * goalFraction(s))} ms): **${verdict}**`,
          );
        }
      }
  }

  // Post-copy: what the container went through after it resumed at the destination.
  const pc: string[][] = [];
  for (const c of cells)
    for (const strategy of strategies) {
      const ok = cellsFor(c, strategy).filter((r) => r.ok && r.report?.postcopy);
      if (!ok.length) continue;
      const m = (f: (x: NonNullable<MigrateReport['postcopy']>) => number | null | undefined) =>
        med(ok.map((r) => f(r.report!.postcopy!) ?? undefined));
      pc.push([
        ...cellHead(c),
        strategy,
        fmt(m((x) => x.pages)),
        fmt(m((x) => x.faults)),
        fmt(
          m((x) => x.faultLatencyMedianMs),
          1,
        ),
        fmt(
          m((x) => x.faultLatencyP99Ms),
          1,
        ),
        fmt(m((x) => x.degradedMs)),
      ]);
    }
  if (pc.length) {
    out.push('', `## Post-copy after the switchover (medians)`, '');
    out.push(
      "pages: sent after the container resumed at the destination; remote faults: the workload's page faults " +
        "(one-page requests of `criu lazy-pages`) on pages not yet in the destination agent's store, which had to " +
        'come from the source (runs before 2026-12-05 07:30 counted every request that waited, its background ' +
        'chunks too); latency: from such a request to its reply (ms); degraded: from the container running at ' +
        'the destination until its last page was in (ms).',
      '',
    );
    out.push(
      table(
        [...CELL_HEAD, 'strategy', 'pages', 'remote faults', 'fault latency median', 'p99', 'degraded (ms)'],
        pc,
      ),
    );
  }

  // The service on its own address: what its client on the LAN went through.
  const svc: string[][] = [];
  for (const c of cells)
    for (const strategy of strategies) {
      const all = cellsFor(c, strategy).filter((r) => r.client);
      if (!all.length) continue;
      const ok = all.filter((r) => r.ok);
      svc.push([
        ...cellHead(c),
        strategy,
        `${ok.length}/${all.length}`,
        fmt(med(ok.map((r) => r.client!.maxPauseMs))),
        fmt(med(ok.map((r) => r.report?.downtimeMs))),
        fmt(med(all.map((r) => r.client!.replies))),
        String(all.reduce((n, r) => n + r.client!.failed, 0)),
        String(Math.max(...all.map((r) => r.client!.connections))),
        all.every((r) => r.verify?.startsWith('verify ok')) ? 'intact' : 'NOT checked or bad',
      ]);
    }
  if (svc.length) {
    out.push('', `## A service on its own address: its client on the LAN (medians; failed: all runs)`, '');
    out.push(
      `redis at ${SERVICE_ADDRESS} in a network namespace of its own, on the testbed's service LAN; the client in ` +
        'the LAN namespace keeps one TCP connection and sends INCR back to back, from before the move until host ' +
        'b has answered it. Longest pause: between two replies. Connections: the most any run opened (1: it lasted). ' +
        "Data: every key read back in b equals what redisload's own client wrote.",
      '',
    );
    out.push(
      table(
        [
          ...CELL_HEAD,
          'strategy',
          'ok runs',
          'longest pause (ms)',
          'downtime, precog (ms)',
          'requests',
          'failed',
          'connections',
          'data',
        ],
        svc,
      ),
    );
  }

  const failures = liveRuns.filter((r) => !r.ok);
  const emuFailures = emulated.filter((e) => !e.ok);
  if (failures.length + emuFailures.length > 0) {
    out.push('', '## Failures', '');
    for (const r of failures)
      out.push(
        `- live ${workloadOf(r)} ${r.link} ${r.sizeMiB} MiB ${r.rate} MB/s ${r.strategy} run ${r.run}: ${r.error}`,
      );
    for (const e of emuFailures)
      out.push(`- emulated ${e.link} ${e.sizeMiB} MiB ${e.rate} MB/s ${e.strategy}: ${e.error}`);
  }
  out.push(
    '',
    flags['from-json']
      ? `${liveRuns.length} live migrations, read from ${flags['from-json']} (the runs themselves were not repeated).`
      : `${liveRuns.length} live migrations in ${((performance.now() - t0) / 60_000).toFixed(1)} min; load ` +
          `average at the start ${loadAtStart} (1, 5, 15 min), at the end ${loadavg()
            .map((x) => x.toFixed(2))
            .join(', ')}.`,
  );

  const report = out.join('\n') + '\n';
  console.log('\n' + report);
  if (flags.out) {
    mkdirSync(dirname(flags.out), { recursive: true });
    writeFileSync(flags.out, report);
    console.log(`written to ${flags.out}`);
  }
  if (flags.results) {
    const command = `sudo npm run bench:live -- ${process.argv.slice(2).join(' ')}`;
    replaceSection(
      flags.results,
      flags.section!,
      `Generated by \`${command}\`.\n\n${report.replace(/^# /m, '## ')}`,
    );
    console.log(`the live section of ${flags.results} rewritten`);
  }
  if (flags.json) {
    writeFileSync(flags.json, JSON.stringify({ live: liveRuns, emulated }, null, 2) + '\n');
    console.log(`every run written to ${flags.json}`);
  }
}

const emulated = flags['no-emulator'] ? [] : await runEmulator();
writeReport(emulated);
if (liveRuns.some((r) => !r.ok)) process.exitCode = 1;
