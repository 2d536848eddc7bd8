/**
 * Leave-one-program-out evaluation of the dirty-page predictors on recorded real programs. For each program P, a
 * forest is trained (the code and options of `precog train`, horizon 1) on the traces of every other program, then
 * every trace of P is replayed (each sampling interval on its own) through that forest, the baseline
 * `recent:window=5` and the registry's other untrained predictors: AUC and F1 at 0.5 (horizon 1, as predict-eval),
 * and each predictor's wall time for observe + predict over the trace, per GiB of pages per round. Checks the
 * goals: mean AUC >= 0.93, worst >= 0.85, above the baseline on every program, <= 50 ms per GiB per round.
 *
 *   npm run predict:lopo                                  # traces/live/*.trace.gz and traces/redis-benchmark.trace.gz
 *   npm run predict:lopo -- traces/live/postgres-100ms.trace.gz traces/live/gcc-500ms.trace.gz ...
 *   options: --results FILE (rewrite its predict-lopo section), --json FILE (raw figures),
 *            --trees N (16), --depth N (8), --min-leaf N (200), --seed N (1)
 *
 * A trace's program is its file name without `.trace.gz` and a trailing `-<interval>` (postgres-100ms: postgres);
 * redis-benchmark is redis.
 */
import { existsSync, readdirSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { basename, join } from 'node:path';
import { parseArgs } from 'node:util';
import { loadTrace } from '../src/memory/trace.ts';
import { evaluatePredictors, traceBitmaps, type EvalResult } from '../src/predict/evaluate.ts';
import { TRAIN_DEFAULTS, trainForest, type TrainingTrace } from '../src/predict/forest-train.ts';
import { createPredictor, PREDICTOR_NAMES, type Predictor } from '../src/predict/index.ts';
import { renderTable, type Column } from '../src/report/table.ts';
import type { Bitmap } from '../src/util/bitmap.ts';
import { PREDICT_LOPO_SECTION, replaceSection } from './sections.ts';
import { median } from '../src/report/metrics.ts';

export const JSON_SCHEMA = 'precog.predict-lopo/v1';
/** The frequency baseline every predictor has to beat. */
export const BASELINE = 'recent:window=5';
/** Registered predictors left out, and why. */
export const SKIPPED: Record<string, string> = {
  attention:
    'its model is trained (with tfjs, scripts/train-attention.ts; the shipped models/attention.json saw python and sqlite) and is not retrained without each held-out program here',
  u2c: 'its phase 2 is the attention model: the same',
  oracle: 'knows the future (AUC 1 by construction), not a predictor to compare',
};
export const GOALS = { meanAuc: 0.93, worstAuc: 0.85, msPerGiB: 50 };
const PAGES_PER_GIB = 262144;

/** Programs recorded under another name. */
const ALIASES: Record<string, string> = { 'redis-benchmark': 'redis' };

/**
 * The program a trace was recorded from: the file name without its directory, its extension (.trace, .json,
 * optionally .gz) and a trailing `-<interval>` (100ms, 0.5s, 250us); redis-benchmark is redis.
 */
export function programOf(file: string): string {
  const name = basename(file)
    .replace(/\.(trace|json)(\.gz)?$/, '')
    .replace(/-\d+(\.\d+)?(us|ms|s)$/, '');
  return ALIASES[name] ?? name;
}

export interface Fold {
  /** The held-out program. */
  program: string;
  /** Its traces, evaluated one by one. */
  test: string[];
  /** The traces of every other program: the forest's training set. */
  train: string[];
}

/** One fold per program (sorted by name): its traces held out, every other program's trained on. */
export function lopoFolds(files: readonly string[]): Fold[] {
  const programs = [...new Set(files.map(programOf))].sort();
  if (programs.length < 2)
    throw new RangeError(
      `leave-one-program-out needs traces of at least two programs; got ${programs.join(', ') || 'none'}`,
    );
  return programs.map((program) => ({
    program,
    test: files.filter((f) => programOf(f) === program),
    train: files.filter((f) => programOf(f) !== program),
  }));
}

/** Every traces/live/*.trace.gz (sorted) and traces/redis-benchmark.trace.gz. */
function defaultTraces(): string[] {
  const live = 'traces/live';
  const files = existsSync(live)
    ? readdirSync(live)
        .filter((f) => f.endsWith('.trace.gz'))
        .sort()
        .map((f) => join(live, f))
    : [];
  if (existsSync('traces/redis-benchmark.trace.gz')) files.push('traces/redis-benchmark.trace.gz');
  return files;
}

/** A predictor that adds up the wall time of its observe() and predict() calls. */
function timed(p: Predictor): Predictor & { ms: number } {
  return {
    name: p.name,
    pageCount: p.pageCount,
    ms: 0,
    observe(o) {
      const t0 = performance.now();
      p.observe(o);
      this.ms += performance.now() - t0;
    },
    predict(out, horizon) {
      const t0 = performance.now();
      p.predict(out, horizon);
      this.ms += performance.now() - t0;
    },
  };
}

const num = (x: number, digits = 3): string => (Number.isFinite(x) ? x.toFixed(digits) : '-');
const signed = (x: number): string => (x > 0 ? '+' : x < 0 ? '−' : '±') + Math.abs(x).toFixed(3);
const interval = (ms: number): string => (ms >= 1000 ? `${ms / 1000} s` : `${ms} ms`);
const shellWord = (a: string): string => (/^[\w./=:,@%+-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`);

interface Scored extends EvalResult {
  spec: string;
  /** observe + predict wall time over the whole trace, ms. */
  ms: number;
  msPerGiBRound: number;
}

interface TraceResult {
  file: string;
  program: string;
  intervalMs: number;
  pages: number;
  samples: number;
  /** Scored pairs dirty within the horizon. */
  dirtyShare: number;
  results: Scored[];
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      results: { type: 'string' },
      json: { type: 'string' },
      trees: { type: 'string', default: String(TRAIN_DEFAULTS.trees) },
      depth: { type: 'string', default: String(TRAIN_DEFAULTS.depth) },
      'min-leaf': { type: 'string', default: String(TRAIN_DEFAULTS.minLeaf) },
      seed: { type: 'string', default: String(TRAIN_DEFAULTS.seed) },
    },
  });
  const whole = (name: string, text: string, min: number): number => {
    const v = Number(text);
    if (!(Number.isInteger(v) && v >= min)) {
      console.error(`--${name} ${text} must be a whole number >= ${min}`);
      process.exit(2);
    }
    return v;
  };
  const options = {
    horizons: [1],
    trees: whole('trees', values.trees, 1),
    depth: whole('depth', values.depth, 1),
    minLeaf: whole('min-leaf', values['min-leaf'], 1),
    seed: whole('seed', values.seed, 0),
  };
  const files = positionals.length > 0 ? positionals : defaultTraces();
  const folds = lopoFolds(files);
  const specs = [BASELINE, ...PREDICTOR_NAMES.filter((n) => n !== 'recent' && !(n in SKIPPED))];
  const command = ['npm run predict:lopo', ...(argv.length > 0 ? ['--', ...argv.map(shellWord)] : [])].join(
    ' ',
  );

  const loadStart = os.loadavg()[0];
  const t0 = performance.now();
  const loaded = new Map<
    string,
    { trace: ReturnType<typeof loadTrace>; samples: Bitmap[]; accessed?: Bitmap[] }
  >();
  for (const f of files) {
    const trace = loadTrace(f);
    if (trace.samples < 2)
      throw new RangeError(`trace ${f} has ${trace.samples} sample(s): needs at least 2`);
    const samples = traceBitmaps(trace);
    loaded.set(f, {
      trace,
      samples,
      ...(trace.accessed ? { accessed: traceBitmaps(trace, 'accessed') } : {}),
    });
  }
  const training = (f: string): TrainingTrace => {
    const l = loaded.get(f)!;
    return { name: f, pageCount: l.trace.pageCount, samples: l.samples.map((b) => b.words) };
  };

  const foldReports: {
    program: string;
    train: string[];
    distinctRows: number;
    nodes: number;
    seconds: number;
  }[] = [];
  const traces: TraceResult[] = [];
  for (const fold of folds) {
    const ts = performance.now();
    const report = trainForest(fold.train.map(training), options);
    const seconds = (performance.now() - ts) / 1000;
    foldReports.push({
      program: fold.program,
      train: fold.train,
      distinctRows: report.rows,
      nodes: report.nodes,
      seconds: Math.round(seconds * 100) / 100,
    });
    process.stderr.write(
      `${fold.program}: forest trained on ${fold.train.length} traces (${report.rows} distinct windows) in ${seconds.toFixed(1)} s\n`,
    );
    for (const file of fold.test) {
      const { trace, samples, accessed } = loaded.get(file)!;
      const predictors = specs.map((s) =>
        timed(createPredictor(s, trace.pageCount, { model: report.model, seed: options.seed })),
      );
      const results = evaluatePredictors(
        samples,
        predictors,
        { horizon: 1, threshold: 0.5, warmup: 1 },
        {
          ...(accessed ? { accessed } : {}),
        },
      ).map((r, i): Scored => ({
        ...r,
        spec: specs[i],
        ms: predictors[i].ms,
        msPerGiBRound: predictors[i].ms / ((trace.samples * trace.pageCount) / PAGES_PER_GIB),
      }));
      traces.push({
        file,
        program: fold.program,
        intervalMs: trace.intervalMs,
        pages: trace.pageCount,
        samples: trace.samples,
        dirtyShare: results[0].positives / results[0].pairs,
        results,
      });
      process.stderr.write(
        `  ${basename(file)}: ${results.map((r) => `${r.spec} ${num(r.auc)}`).join(', ')}\n`,
      );
    }
  }
  const seconds = (performance.now() - t0) / 1000;
  const loadEnd = os.loadavg()[0];

  // The best predictor other than the baseline, per trace.
  const best = (t: TraceResult): Scored =>
    t.results.slice(1).reduce((a, b) => (b.auc > a.auc || !Number.isFinite(a.auc) ? b : a));
  const programs = folds.map((f) => f.program);
  const summary = specs.map((spec, i) => {
    const aucs = traces.map((t) => t.results[i].auc);
    const worst = traces.reduce((a, t) => (t.results[i].auc < a.results[i].auc ? t : a));
    // A program counts as beaten when the predictor's AUC is above the baseline's on every trace of it.
    const beats = programs.filter((p) =>
      traces.filter((t) => t.program === p).every((t) => t.results[i].auc > t.results[0].auc),
    );
    const meanAuc = aucs.reduce((a, b) => a + b, 0) / aucs.length;
    const msPerGiBRound = median(traces.map((t) => t.results[i].msPerGiBRound));
    const goals = {
      meanAuc: meanAuc >= GOALS.meanAuc,
      worstAuc: worst.results[i].auc >= GOALS.worstAuc,
      aboveBaseline: i === 0 ? null : beats.length === programs.length,
      speed: msPerGiBRound <= GOALS.msPerGiB,
    };
    return {
      spec,
      meanAuc,
      worstAuc: worst.results[i].auc,
      worstTrace: worst.file,
      beats,
      msPerGiBRound,
      goals,
    };
  });

  const traceTable = renderTable(
    traces,
    [
      { title: 'trace', value: (t) => basename(t.file) },
      { title: 'program', value: (t) => t.program },
      { title: 'interval', value: (t) => interval(t.intervalMs), align: 'right' },
      { title: 'dirty', value: (t) => `${(t.dirtyShare * 100).toFixed(1)}%`, align: 'right' },
      ...specs.map((spec, i): Column<TraceResult> => ({
        title: spec,
        value: (t) => `${num(t.results[i].auc)} / ${num(t.results[i].f1)}`,
        align: 'right',
      })),
      {
        title: 'best vs baseline',
        value: (t) => `${signed(best(t).auc - t.results[0].auc)} ${best(t).spec}`,
        align: 'right',
      },
    ],
    'markdown',
  );
  const goalText = (s: (typeof summary)[number]): string => {
    const names: [keyof typeof s.goals, string][] = [
      ['meanAuc', `mean >= ${GOALS.meanAuc}`],
      ['worstAuc', `worst >= ${GOALS.worstAuc}`],
      ['aboveBaseline', 'above baseline everywhere'],
      ['speed', `<= ${GOALS.msPerGiB} ms`],
    ];
    const met = names.filter(([k]) => s.goals[k] === true).map(([, n]) => n);
    const missed = names.filter(([k]) => s.goals[k] === false).map(([, n]) => n);
    return `${met.length}/${met.length + missed.length}${missed.length ? `; not: ${missed.join(', ')}` : ''}`;
  };
  const summaryTable = renderTable(
    summary,
    [
      { title: 'predictor', value: (s) => s.spec },
      { title: 'mean AUC', value: (s) => num(s.meanAuc), align: 'right' },
      { title: 'worst AUC', value: (s) => `${num(s.worstAuc)} (${basename(s.worstTrace)})`, align: 'right' },
      {
        title: 'programs above baseline',
        value: (s) =>
          s.spec === BASELINE
            ? '(baseline)'
            : `${s.beats.length}/${programs.length}: ${s.beats.join(', ') || '-'}`,
      },
      { title: 'ms per GiB per round (median)', value: (s) => num(s.msPerGiBRound, 1), align: 'right' },
      { title: 'goals met', value: goalText },
    ],
    'markdown',
  );
  const foldTable = renderTable(
    foldReports,
    [
      { title: 'held out', value: (f) => f.program },
      {
        title: 'trained on',
        value: (f) => `${f.train.length}: ${[...new Set(f.train.map(programOf))].join(', ')}`,
      },
      { title: 'distinct windows', value: (f) => String(f.distinctRows), align: 'right' },
      { title: 'nodes', value: (f) => String(f.nodes), align: 'right' },
      { title: 'train s', value: (f) => f.seconds.toFixed(1), align: 'right' },
    ],
    'markdown',
  );
  const met = summary.filter((s) => s.spec !== BASELINE && Object.values(s.goals).every((g) => g !== false));
  const body = [
    '### Leave-one-program-out: the predictors on recorded real programs',
    '',
    `Generated by \`${command}\` (scripts/predict-lopo.ts); do not edit by hand. For each program, a forest ` +
      `(${options.trees} trees, depth <= ${options.depth}, min-leaf ${options.minLeaf}, seed ${options.seed}, ` +
      'horizon 1, the training of `precog train`) is trained on the traces of every other program and evaluated on ' +
      "that program's traces, each interval on its own, next to the baseline `" +
      BASELINE +
      '` and the untrained predictors. AUC / F1 at threshold 0.5, horizon 1, every prediction after the first ' +
      'sample scored (as `precog predict-eval`); "dirty": the scored (page, round) pairs dirty in the next sample; ' +
      '"best vs baseline": the AUC of the best other predictor minus the baseline\'s. The baseline scores a page ' +
      '(5 − samples since it was last dirty) / 5, so at 0.5 it predicts the pages dirty in one of the last three samples.',
    '',
    traceTable,
    `Per predictor: mean and worst AUC over the ${traces.length} traces; a program counts as above the baseline ` +
      'when the AUC is higher on each of its traces; time: observe + predict wall time over a trace per GiB of ' +
      `pages (${PAGES_PER_GIB} pages) per sample, median over the traces. Goals: mean AUC >= ${GOALS.meanAuc}, ` +
      `worst >= ${GOALS.worstAuc}, above the baseline on every program, <= ${GOALS.msPerGiB} ms per GiB per round.`,
    '',
    summaryTable,
    `All goals met by: ${met.map((s) => s.spec).join(', ') || 'none'}.`,
    '',
    `Not evaluated: ${Object.entries(SKIPPED)
      .map(([n, why]) => `${n}: ${why}`)
      .join('; ')}.`,
    '',
    'The forest of each fold:',
    '',
    foldTable,
    `Machine load (1-minute average) ${loadStart.toFixed(2)} at the start and ${loadEnd.toFixed(2)} at the end, ` +
      `on ${os.cpus().length} cores; ${seconds.toFixed(0)} s of wall time. Times vary with the load; AUC and F1 ` +
      'do not (seeded).',
  ].join('\n');
  console.log(body);
  if (values.results) {
    replaceSection(values.results, PREDICT_LOPO_SECTION, body);
    console.error(`wrote the ${PREDICT_LOPO_SECTION} section of ${values.results}`);
  }
  if (values.json) {
    const doc = {
      schema: JSON_SCHEMA,
      command,
      horizon: 1,
      threshold: 0.5,
      warmup: 1,
      baseline: BASELINE,
      forest: options,
      goals: GOALS,
      skipped: SKIPPED,
      load: { start: loadStart, end: loadEnd },
      seconds,
      folds: foldReports,
      traces,
      summary,
    };
    writeFileSync(values.json, JSON.stringify(doc, null, 2) + '\n');
    console.error(`wrote ${values.json}`);
  }
}

if (import.meta.url === `file://${process.argv[1]}`) await main();
