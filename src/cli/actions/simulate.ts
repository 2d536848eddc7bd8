import { codecChain } from '../../codec/index.ts';
import { parseWorkload } from '../../memory/workloads.ts';
import { parseStrategy } from '../../policy/index.ts';
import { summaryTable } from '../../report/summary.ts';
import { runExperiment, type Experiment } from '../../sim/experiment.ts';
import { SCENARIO_DEFAULTS } from '../../sim/run.ts';
import { DEFAULT_SWITCHOVER_MODEL, loadSwitchoverModel } from '../../sim/switchover.ts';
import { UsageError } from '../../util/errors.ts';
import { splitList } from '../../util/spec.ts';
import { parseBandwidth, parseCount, parseDuration, parseSize } from '../../util/units.ts';
import { SWEEP_KEYS } from '../simulate.ts';
import { emit, jsonTarget, type JsonFlag } from './json.ts';

export const SIMULATE_JSON_SCHEMA = 'precog.simulate/v1';

export interface SimulateFlags {
  workload: string;
  memory: string;
  bandwidth: string;
  latency: string;
  frameOverhead: string;
  strategy: string;
  codec: string;
  batch: string;
  stateSize: string;
  restoreCost: string;
  switchover?: string;
  seed: string;
  repeat: string;
  sweep: string[];
  json?: JsonFlag;
  format: 'text' | 'markdown';
  quiet?: boolean;
}

/** Turns the flags into an experiment grid; every bad value is a UsageError naming it. */
export function experimentFromFlags(f: SimulateFlags): Experiment {
  const lists: Record<string, string[]> = {
    memory: splitList(f.memory),
    bandwidth: splitList(f.bandwidth),
    workload: splitList(f.workload),
    strategy: splitList(f.strategy),
  };
  for (const s of f.sweep) {
    const eq = s.indexOf('=');
    const key = s.slice(0, eq).trim();
    if (eq < 0 || !SWEEP_KEYS.includes(key)) {
      throw new UsageError(`--sweep "${s}" must be KEY=v1,v2,... with KEY one of ${SWEEP_KEYS.join(', ')}`);
    }
    lists[key] = splitList(s.slice(eq + 1));
  }
  for (const [k, v] of Object.entries(lists))
    if (v.length === 0) throw new UsageError(`--${k} needs at least one value`);
  const memories = lists.memory.map((m) => {
    const bytes = parseSize(m, 'memory');
    if (bytes < 4096) throw new UsageError(`memory "${m}" must be at least one page (4KiB)`);
    if (bytes > 2 ** 32) throw new UsageError(`memory "${m}" is above the emulator's limit of 4GiB per run`);
    return bytes;
  });
  const bandwidths = lists.bandwidth.map((b) => parseBandwidth(b));
  // Parse everything up front so that a typo fails before a long sweep starts.
  lists.strategy.forEach(parseStrategy);
  lists.workload.forEach((w) => parseWorkload(w, memories[0]));
  if (f.codec !== 'auto') codecChain(f.codec);
  const seed = parseCount(f.seed, '--seed', 0);
  const repeat = parseCount(f.repeat, '--repeat', 1);
  const latency = parseDuration(f.latency, '--latency');
  const batchBytes = parseSize(f.batch, '--batch');
  if (batchBytes < 4096 || batchBytes > 8 * 2 ** 20)
    throw new UsageError(`--batch "${f.batch}" must be 4KiB..8MiB`);
  return {
    base: {
      ...SCENARIO_DEFAULTS,
      latency,
      frameOverhead: parseCount(f.frameOverhead, '--frame-overhead', 0),
      codec: f.codec,
      batchBytes,
      stateBytes: parseSize(f.stateSize, '--state-size'),
      restoreCost: parseDuration(f.restoreCost, '--restore-cost'),
      ...(f.switchover
        ? {
            switchover: loadSwitchoverModel(
              f.switchover === 'live' ? DEFAULT_SWITCHOVER_MODEL : f.switchover,
            ),
          }
        : {}),
    },
    workloads: lists.workload,
    strategies: lists.strategy,
    memories,
    bandwidths,
    seeds: Array.from({ length: repeat }, (_, i) => seed + i),
  };
}

/** Most emulated runs one simulate takes (a typo in --repeat must not start a run of days). */
const MAX_RUNS = 10_000;

/** `precog simulate`: runs the experiment the flags describe and prints its table (or JSON). */
/**
 * Runs done of a grid, with the time left at the pace so far: on a terminal one line rewritten in place; elsewhere a
 * plain line at most every 10 s and at the last run.
 */
export class RunProgress {
  private readonly t0: number;
  private lastLine = -Infinity;

  constructor(
    private readonly mode: 'tty' | 'lines' | 'off',
    private readonly write: (text: string) => void = (t) => process.stderr.write(t),
    private readonly now: () => number = () => performance.now(),
  ) {
    this.t0 = now();
  }

  /** The text for DONE of N runs, the last one WHAT, at ELAPSED ms. */
  static text(done: number, n: number, what: string, elapsedMs: number): string {
    const left = done > 0 ? ((elapsedMs / done) * (n - done)) / 1000 : NaN;
    const eta = done === n ? 'done' : Number.isFinite(left) ? `about ${formatLeft(left)} left` : '';
    return `${done}/${n} runs (${what})${eta ? `, ${eta}` : ''}`;
  }

  ran(done: number, n: number, what: string): void {
    if (this.mode === 'off') return;
    const t = this.now();
    const text = RunProgress.text(done, n, what, t - this.t0);
    if (this.mode === 'tty') this.write(`\r${text}\x1b[K`);
    else if (done === n || t - this.lastLine >= 10_000) {
      this.write(`${text}\n`);
      this.lastLine = t;
    }
  }

  end(): void {
    if (this.mode === 'tty') this.write('\r\x1b[K');
  }
}

/** Seconds as a person reads a wait: 45 s, 3 min 20 s, 1 h 5 min. */
export function formatLeft(seconds: number): string {
  const s = Math.round(seconds);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min${s % 60 ? ` ${s % 60} s` : ''}`;
  return `${Math.floor(s / 3600)} h${Math.round((s % 3600) / 60) ? ` ${Math.round((s % 3600) / 60)} min` : ''}`;
}

export async function simulate(flags: SimulateFlags): Promise<void> {
  const experiment = experimentFromFlags(flags);
  const total =
    experiment.workloads.length *
    experiment.strategies.length *
    experiment.memories.length *
    experiment.bandwidths.length *
    experiment.seeds.length;
  if (total > MAX_RUNS)
    throw new UsageError(
      `${total} runs (workloads x strategies x memories x bandwidths x --repeat) is more than ${MAX_RUNS}: ` +
        'narrow the sweep or lower --repeat',
    );
  // Where the JSON goes is checked now, not after a long run.
  const target = jsonTarget(flags.json);
  const progress = new RunProgress(
    flags.quiet || total === 1 || target === 'stdout' ? 'off' : process.stderr.isTTY ? 'tty' : 'lines',
  );
  const { runs, summary } = await runExperiment(experiment, (r, done, n) =>
    progress.ran(done, n, `${r.scenario.strategy} ${r.scenario.workload}`),
  );
  progress.end();
  const table = summaryTable(summary, flags.format);
  const seeds = experiment.seeds.length;
  emit(
    target,
    { schema: SIMULATE_JSON_SCHEMA, experiment, summary, runs },
    () =>
      `precog simulate: ${runs.length} run(s)${seeds > 1 ? `, medians over ${seeds} seeds` : ''}; every run verified byte for byte at the destination\n\n` +
      table +
      (target && target !== 'stdout' ? `\nfull records: ${target.file}\n` : ''),
  );
}
