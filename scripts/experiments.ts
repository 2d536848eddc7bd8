/**
 * The predictive strategies against vanilla pre-copy in the emulator, and against what the published research (MBDPC, U2CMigration)
 * reports. Writes its section of docs/results.md (between the `experiments` markers), SVG charts under
 * docs/experiments/ and every run under docs/data/. Nothing in that section is typed by hand.
 *
 *   npm run experiments                     # 2 rates x 4 memory sizes x 8 strategies x 3 seeds
 *   npm run experiments -- --quick          # 256 MiB and 512 MiB, 1 seed: a smoke run
 *   npm run experiments -- --from-json F    # re-render the section from saved runs (no emulation)
 *   options: --out=FILE (docs/results.md), --json=FILE (docs/data/experiments.json; quick: none)
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import os from 'node:os';
import * as vega from 'vega';
import { compile, type TopLevelSpec } from 'vega-lite';
import { runExperiment, scenarios, summarize, type Experiment, type Summary } from '../src/sim/experiment.ts';
import { simulate, SCENARIO_DEFAULTS, type SimResult } from '../src/sim/run.ts';
import { renderTable } from '../src/report/table.ts';
import { median } from '../src/report/metrics.ts';
import { formatBytes, formatSeconds } from '../src/util/units.ts';
import { replaceSection } from './sections.ts';

export const SECTION = 'experiments';
const MiB = 2 ** 20;

const args = process.argv.slice(2);
const flag = (name: string): string | undefined =>
  args.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3) ??
  (args.includes(`--${name}`) ? args[args.indexOf(`--${name}`) + 1] : undefined);
const quick = args.includes('--quick');
const out = flag('out') ?? 'docs/results.md';
const fromJson = flag('from-json');
const jsonOut = flag('json') ?? (quick || fromJson ? undefined : 'docs/data/experiments.json');
const chartDir = join(dirname(out), 'experiments');

const STRATEGIES = ['precopy', 'markov', 'pr', 'mbdp', 'mbdpc', 'u2c', 'iterpredict', 'oracle'];
const BASELINE = 'precopy';

const MEMORIES = (quick ? [256, 512] : [256, 512, 1024, 2048]).map((m) => m * MiB);
const SEEDS = quick ? [1] : [1, 2, 3];
/** A last-sent cache larger than any memory here: MBDPC as published keeps every page it sent. */
const WHOLE_CACHE = 'xor-lz4:cache=2GiB';

/** The comparison of the published research (MBDPC, U2CMigration): both dirty rates, every memory size, every strategy. */
const grid: Experiment = {
  base: SCENARIO_DEFAULTS,
  workloads: ['memchange:low', 'memchange:high'],
  strategies: STRATEGIES,
  memories: MEMORIES,
  bandwidths: [100e6],
  seeds: SEEDS,
};

/** mbdpc again, with a last-sent cache that holds all of memory instead of the codec's default 64 MiB. */
const wholeCache: Experiment = {
  ...grid,
  base: { ...SCENARIO_DEFAULTS, codec: WHOLE_CACHE },
  strategies: ['mbdpc'],
};

/** Writes of 256 bytes instead of whole pages: what delta compression is for. */
const partial: Experiment = {
  ...grid,
  workloads: ['memchange:low:touch=256', 'memchange:high:touch=256'],
  strategies: ['precopy', 'mbdp', 'mbdpc', 'oracle'],
  memories: [(quick ? 256 : 512) * MiB],
};
const partialCache: Experiment = { ...partial, base: wholeCache.base, strategies: ['mbdpc'] };

const GRIDS = [grid, wholeCache, partial, partialCache];

interface Saved {
  schema: 'precog.experiments/v1';
  quick: boolean;
  wallSeconds: number;
  cores: number;
  node: string;
  experiment: Experiment;
  unavailable: { strategy: string; reason: string }[];
  runs: SimResult[];
}

/** Strategies whose predictor or codec is not there: a tiny run finds out before the long ones start. */
async function probe(strategies: string[]): Promise<{ strategy: string; reason: string }[]> {
  const missing: { strategy: string; reason: string }[] = [];
  for (const strategy of strategies) {
    try {
      await simulate({ ...SCENARIO_DEFAULTS, workload: 'memchange:low', memoryBytes: MiB, strategy });
    } catch (e) {
      missing.push({ strategy, reason: (e as Error).message.split('\n')[0] });
    }
  }
  return missing;
}

async function run(): Promise<Saved> {
  const started = performance.now();
  const unavailable = await probe(grid.strategies);
  const usable = (e: Experiment): Experiment => ({
    ...e,
    strategies: e.strategies.filter((s) => !unavailable.some((u) => u.strategy === s)),
  });
  const grids = GRIDS.map(usable);
  const total = grids.reduce((a, e) => a + scenarios(e).length, 0);
  const runs: SimResult[] = [];
  for (const e of grids) {
    await runExperiment(e, (r) => {
      process.stderr.write(
        `\r${runs.length + 1}/${total} ${r.scenario.workload} ${r.scenario.memoryBytes / MiB}MiB ${r.scenario.strategy} ${r.codec} seed ${r.scenario.seed} (${r.wallTime.toFixed(1)} s)\x1b[K`,
      );
      runs.push(r);
    });
  }
  process.stderr.write('\n');
  return {
    schema: 'precog.experiments/v1',
    quick,
    wallSeconds: (performance.now() - started) / 1000,
    cores: os.cpus().length,
    node: process.version,
    experiment: grids[0],
    unavailable,
    runs,
  };
}

// ---- figures -----------------------------------------------------------------------------------------------

const strategyName = (r: Summary): string => r.strategy.split(':')[0];
/** The strategy, marked when it ran with a codec other than its own (mbdpc with a whole-memory cache). */
const label = (r: Summary): string =>
  r.codec === WHOLE_CACHE ? `${strategyName(r)}+cache` : strategyName(r);
const rate = (workload: string): string => workload.split(':')[1] ?? workload;
const mib = (b: number): string => (b / MiB).toFixed(b < 10 * MiB ? 1 : 0);

/** Relative change in percent (negative: shorter or smaller). */
const change = (a: number, b: number): number => ((a - b) / b) * 100;
const pct = (d: number): string => {
  if (!Number.isFinite(d)) return '-';
  const r = Number(d.toFixed(1));
  return r === 0 ? '0.0 %' : `${r > 0 ? '+' : '−'}${Math.abs(r).toFixed(1)} %`;
};

type Metric = 'downtime' | 'totalTime' | 'bytesTotal' | 'bytesPerRound';
const METRIC_TITLE: Record<Metric, string> = {
  downtime: 'downtime',
  totalTime: 'total time',
  bytesTotal: 'total data',
  bytesPerRound: 'data per live round',
};

/** Per memory size, a strategy's change against the baseline on one metric. */
function changes(rows: readonly Summary[], workload: string, strategy: string, metric: Metric): number[] {
  const out: number[] = [];
  for (const r of rows) {
    if (r.workload !== workload || label(r) !== strategy) continue;
    const b = rows.find(
      (x) => x.workload === workload && x.memoryBytes === r.memoryBytes && label(x) === BASELINE,
    );
    if (b) out.push(change(r[metric], b[metric]));
  }
  return out;
}

function resultsTable(rows: readonly Summary[], workload: string): string {
  return renderTable(
    rows.filter((r) => r.workload === workload),
    [
      { title: 'memory', align: 'right', value: (r) => formatBytes(r.memoryBytes) },
      { title: 'strategy', value: label },
      { title: 'codec', value: (r) => r.codec },
      { title: 'rounds', align: 'right', value: (r) => String(r.liveRounds) },
      { title: 'converged', value: (r) => (r.converged ? `${r.converged.yes}/${r.converged.of}` : '-') },
      { title: 'total', align: 'right', value: (r) => formatSeconds(r.totalTime) },
      { title: 'downtime', align: 'right', value: (r) => formatSeconds(r.downtime) },
      { title: 'data MiB', align: 'right', value: (r) => mib(r.bytesTotal) },
      { title: 'MiB/round', align: 'right', value: (r) => mib(r.bytesPerRound) },
      { title: 'stop MiB', align: 'right', value: (r) => mib(r.bytesStop) },
      { title: 'resent pages', align: 'right', value: (r) => String(Math.round(r.pagesResent)) },
      { title: 'held page-rounds', align: 'right', value: (r) => String(Math.round(r.pagesHeld)) },
      { title: 'stop reason (seed 1)', value: (r) => r.stopReasons[0] },
    ],
    'markdown',
  );
}

function changeTable(rows: readonly Summary[], workload: string, metric: Metric): string {
  const memories = [...new Set(rows.filter((r) => r.workload === workload).map((r) => r.memoryBytes))];
  const strategies = [...new Set(rows.map(label))].filter((s) => s !== BASELINE);
  return renderTable(
    strategies,
    [
      { title: 'strategy', value: (s) => s },
      ...memories.map((m) => ({
        title: formatBytes(m),
        align: 'right' as const,
        value: (s: string) => {
          const r = rows.find((x) => x.workload === workload && x.memoryBytes === m && label(x) === s);
          const b = rows.find((x) => x.workload === workload && x.memoryBytes === m && label(x) === BASELINE);
          return r && b ? pct(change(r[metric], b[metric])) : '-';
        },
      })),
      { title: 'median', align: 'right', value: (s) => pct(median(changes(rows, workload, s, metric))) },
    ],
    'markdown',
  );
}

/** A claim of the published research (MBDPC, U2CMigration): a change against vanilla pre-copy, a point or a range of percent. */
interface Claim {
  source: string;
  workload: string;
  strategy: string;
  metric: Metric;
  seed: number | [number, number];
}

const CLAIMS: Claim[] = [
  { source: 'MBDPC', workload: 'memchange:high', strategy: 'markov', metric: 'downtime', seed: -3.3 },
  { source: 'MBDPC', workload: 'memchange:high', strategy: 'pr', metric: 'downtime', seed: -4.1 },
  { source: 'MBDPC', workload: 'memchange:high', strategy: 'mbdp', metric: 'downtime', seed: -3.7 },
  { source: 'MBDPC', workload: 'memchange:high', strategy: 'mbdpc', metric: 'downtime', seed: -34.9 },
  { source: 'MBDPC', workload: 'memchange:low', strategy: 'mbdp', metric: 'totalTime', seed: -3 },
  { source: 'MBDPC', workload: 'memchange:low', strategy: 'mbdpc', metric: 'totalTime', seed: -16.5 },
  { source: 'MBDPC', workload: 'memchange:high', strategy: 'mbdpc+cache', metric: 'downtime', seed: -34.9 },
  { source: 'MBDPC', workload: 'memchange:low', strategy: 'mbdpc+cache', metric: 'totalTime', seed: -16.5 },
  {
    source: 'U2CMigration',
    workload: 'memchange:low',
    strategy: 'u2c',
    metric: 'totalTime',
    seed: [-47.9, -26.1],
  },
  {
    source: 'U2CMigration',
    workload: 'memchange:high',
    strategy: 'u2c',
    metric: 'totalTime',
    seed: [-47.9, -26.1],
  },
  {
    source: 'U2CMigration',
    workload: 'memchange:low',
    strategy: 'u2c',
    metric: 'downtime',
    seed: [-32.6, -21.3],
  },
  {
    source: 'U2CMigration',
    workload: 'memchange:high',
    strategy: 'u2c',
    metric: 'downtime',
    seed: [-32.6, -21.3],
  },
];

/** Percentage points a point claim may be off and still match: a quarter of it, at least one point. */
const tolerance = (s: number): number => Math.max(1, Math.abs(s) / 4);

function verdict(seed: number | [number, number], v: number): string {
  if (!Number.isFinite(v)) return '-';
  const [lo, hi] = Array.isArray(seed)
    ? [seed[0] - 1, seed[1] + 1]
    : [seed - tolerance(seed), seed + tolerance(seed)];
  return v < lo ? 'beats' : v > hi ? 'misses' : 'matches';
}

/** What the runs show about why a strategy lands where it does: its rounds, holds, stops and bytes per page. */
function why(rows: readonly Summary[], c: Claim): string {
  const mine = rows.filter((r) => r.workload === c.workload && label(r) === c.strategy);
  const base = rows.filter((r) => r.workload === c.workload && label(r) === BASELINE);
  if (mine.length === 0 || base.length === 0) return '-';
  const perPage = (r: Summary[]): number =>
    median(r.map((x) => x.bytesTotal / (x.memoryBytes / 4096 + x.pagesResent)));
  const ratio = perPage(mine) / perPage(base);
  const parts = [
    `${median(mine.map((r) => r.liveRounds))} live rounds (pre-copy ${median(base.map((r) => r.liveRounds))})`,
    `${Math.round(median(mine.map((r) => r.pagesHeld)))} page-rounds held`,
  ];
  if (Math.abs(ratio - 1) > 0.02) parts.push(`wire bytes per page sent ×${ratio.toFixed(2)}`);
  parts.push(`stop at ${formatBytes(mine[0].memoryBytes)}: ${mine[0].stopReasons[0]}`);
  return parts.join('; ');
}

function seedTable(rows: readonly Summary[]): string {
  const claims = CLAIMS.filter((c) => rows.some((r) => r.workload === c.workload && label(r) === c.strategy));
  return renderTable(
    claims,
    [
      { title: 'source', value: (c) => c.source },
      { title: 'rate', value: (c) => rate(c.workload) },
      { title: 'strategy', value: (c) => c.strategy },
      { title: 'metric vs pre-copy', value: (c) => METRIC_TITLE[c.metric] },
      {
        title: 'seed reports',
        align: 'right',
        value: (c) => (Array.isArray(c.seed) ? `${pct(c.seed[0])} to ${pct(c.seed[1])}` : pct(c.seed)),
      },
      {
        title: 'precog (median; range over memory)',
        align: 'right',
        value: (c) => {
          const d = changes(rows, c.workload, c.strategy, c.metric);
          return `${pct(median(d))} (${pct(Math.min(...d))} to ${pct(Math.max(...d))})`;
        },
      },
      {
        title: 'verdict',
        value: (c) => verdict(c.seed, median(changes(rows, c.workload, c.strategy, c.metric))),
      },
      { title: 'what the runs show', value: (c) => why(rows, c) },
    ],
    'markdown',
  );
}

// ---- charts ------------------------------------------------------------------------------------------------

const CHARTS: { metric: Metric; file: string; unit: string; scale: number }[] = [
  { metric: 'downtime', file: 'downtime.svg', unit: 's', scale: 1 },
  { metric: 'totalTime', file: 'total-time.svg', unit: 's', scale: 1 },
  { metric: 'bytesTotal', file: 'total-data.svg', unit: 'MiB', scale: 1 / MiB },
  { metric: 'bytesPerRound', file: 'data-per-round.svg', unit: 'MiB', scale: 1 / MiB },
];

/** A grouped bar chart: memory on x, one bar per strategy, one panel per dirty rate (own y scales). */
async function chart(rows: readonly Summary[], metric: Metric, unit: string, scale: number): Promise<string> {
  const order = [...new Set(rows.map(label))];
  const spec: TopLevelSpec = {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: `${METRIC_TITLE[metric]} (median over seeds)`,
    data: {
      values: rows.map((r) => ({
        rate: `memchange:${rate(r.workload)}`,
        memory: formatBytes(r.memoryBytes),
        bytes: r.memoryBytes,
        strategy: label(r),
        value: r[metric] * scale,
      })),
    },
    facet: { row: { field: 'rate', type: 'nominal', title: null } },
    resolve: { scale: { y: 'independent' } },
    spec: {
      width: 520,
      height: 180,
      mark: 'bar',
      encoding: {
        x: {
          field: 'memory',
          type: 'ordinal',
          sort: { field: 'bytes' },
          title: 'memory',
          axis: { labelAngle: 0 },
        },
        xOffset: { field: 'strategy', sort: order },
        y: { field: 'value', type: 'quantitative', title: `${METRIC_TITLE[metric]} (${unit})` },
        color: { field: 'strategy', sort: order, scale: { scheme: 'tableau10' } },
        tooltip: [{ field: 'strategy' }, { field: 'memory' }, { field: 'value', format: '.3~f' }],
      },
    },
  };
  const view = new vega.View(vega.parse(compile(spec).spec), { renderer: 'none' });
  const svg = await view.toSVG();
  view.finalize();
  return svg + '\n';
}

// ---- the section -------------------------------------------------------------------------------------------

function partialTable(rows: readonly Summary[]): string {
  const base = (r: Summary): Summary | undefined =>
    rows.find((x) => x.workload === r.workload && x.memoryBytes === r.memoryBytes && label(x) === BASELINE);
  const vs = (r: Summary, m: Metric): string => {
    const b = base(r);
    return b && label(r) !== BASELINE ? pct(change(r[m], b[m])) : '-';
  };
  return renderTable(
    rows,
    [
      { title: 'workload', value: (r) => r.workload },
      { title: 'memory', align: 'right', value: (r) => formatBytes(r.memoryBytes) },
      { title: 'strategy', value: label },
      { title: 'codec', value: (r) => r.codec },
      { title: 'rounds', align: 'right', value: (r) => String(r.liveRounds) },
      { title: 'total', align: 'right', value: (r) => formatSeconds(r.totalTime) },
      { title: 'downtime', align: 'right', value: (r) => formatSeconds(r.downtime) },
      { title: 'data MiB', align: 'right', value: (r) => mib(r.bytesTotal) },
      { title: 'total vs pre-copy', align: 'right', value: (r) => vs(r, 'totalTime') },
      { title: 'downtime vs pre-copy', align: 'right', value: (r) => vs(r, 'downtime') },
      { title: 'data vs pre-copy', align: 'right', value: (r) => vs(r, 'bytesTotal') },
    ],
    'markdown',
  );
}

async function render(saved: Saved): Promise<string> {
  const all = summarize(saved.runs);
  const e = saved.experiment;
  const rows = all.filter((r) => e.workloads.includes(r.workload));
  const partialRows = all.filter((r) => !e.workloads.includes(r.workload));
  mkdirSync(chartDir, { recursive: true });
  const links: string[] = [];
  for (const c of CHARTS) {
    const file = join(chartDir, c.file);
    writeFileSync(file, await chart(rows, c.metric, c.unit, c.scale));
    links.push(`![${METRIC_TITLE[c.metric]}](${relative(dirname(out), file)})`);
  }
  const codecs = [...new Set(all.map((r) => `${label(r)}: ${r.codec}`))].join(', ');
  const missing = saved.unavailable.length
    ? `\n\nNot run (their predictor or codec is missing from this tree): ${saved.unavailable.map((u) => `${u.strategy} (${u.reason})`).join('; ')}.`
    : '';
  const parts: string[] = [
    `## Predictive strategies in the emulator

Generated by \`npm run experiments${saved.quick ? ' -- --quick' : ''}\` (scripts/experiments.ts); do not edit by hand.
${saved.runs.length} emulator runs in ${saved.wallSeconds.toFixed(0)} s wall on ${saved.cores} cores, Node ${saved.node}; every run
verified byte for byte at the destination; medians over ${e.seeds.length} seed(s) per row. memchange at the seed
research's dirty rates (low: 1–2 MB/s, high: 11–12 MB/s; a buffer of half the memory rewritten sequentially, whole
pages), 100 Mbit/s link, 0.5 ms one-way latency, 64 bytes per frame, 64 KiB frames. Codecs: ${codecs}
(\`mbdpc+cache\`: mbdpc with a last-sent cache larger than memory, as MBDPC keeps every page it sent; plain
\`mbdpc\` has the codec's default bound of 64 MiB). Strategies, their parameters and how to read this:
docs/strategies.md. \`held page-rounds\`: pending pages held back, summed over live rounds; \`resent pages\`: pages
sent again after an earlier send; \`MiB/round\`: mean wire data of a live round; \`stop MiB\`: data of the
stop-and-copy.${missing}`,
    `### Against the published research (MBDPC, U2CMigration)

Changes against vanilla pre-copy (Xen rules) at the same memory size, dirty rate and seeds; negative is shorter or
smaller. precog's figure is the median over memory sizes (${e.memories.map(formatBytes).join(', ')}), with their range.
Verdict: a point figure of the seed matches when precog is within a quarter of it (at least 1 point), beats it when
lower, misses it when higher; a range matches within 1 point of its ends. U2CMigration compares against "the state of
the art"; here that is vanilla pre-copy.

${seedTable(rows)}`,
  ];
  for (const w of e.workloads) {
    parts.push(`### ${w}: changes against vanilla pre-copy

Downtime:

${changeTable(rows, w, 'downtime')}
Total migration time:

${changeTable(rows, w, 'totalTime')}
Total data:

${changeTable(rows, w, 'bytesTotal')}`);
  }
  for (const w of e.workloads) parts.push(`### ${w}: every strategy\n\n${resultsTable(rows, w)}`);
  if (partialRows.length > 0) {
    parts.push(`### Writes of 256 bytes instead of whole pages

The same memchange rates, but each write changes 256 bytes of a page (\`touch=256\`) instead of rewriting all of it:
the XOR of a page with its last-sent copy is then mostly zeros, which is what MBDPC's delta compression is for.
Medians over ${e.seeds.length} seed(s).

${partialTable(partialRows)}`);
  }
  parts.push(`### Charts\n\n${links.join('\n')}`);
  return parts.join('\n\n');
}

const saved: Saved = fromJson ? (JSON.parse(readFileSync(fromJson, 'utf8')) as Saved) : await run();
if (jsonOut) {
  mkdirSync(dirname(jsonOut), { recursive: true });
  writeFileSync(
    jsonOut,
    JSON.stringify(saved, (_k, v) => (typeof v === 'number' && !Number.isFinite(v) ? null : v)) + '\n',
  );
}
replaceSection(out, SECTION, await render(saved));
console.log(
  `wrote the ${SECTION} section of ${out} (${saved.runs.length} runs) and ${CHARTS.length} charts in ${chartDir}${jsonOut ? `; runs in ${jsonOut}` : ''}`,
);
