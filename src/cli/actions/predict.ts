import { readdirSync, statSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { loadTrace } from '../../memory/trace.ts';
import { evaluatePredictors, traceBitmaps, traceLookahead, type EvalResult } from '../../predict/evaluate.ts';
import { loadForestModel, DEFAULT_FOREST_MODEL } from '../../predict/forest.ts';
import { trainForest, type TrainingTrace } from '../../predict/forest-train.ts';
import { createPredictor, parsePredictorList } from '../../predict/index.ts';
import { checkWindow } from '../../predict/window.ts';
import { renderTable, type Column } from '../../report/table.ts';
import { UsageError } from '../../util/errors.ts';
import { checkWritable } from '../../util/paths.ts';
import { splitList } from '../../util/spec.ts';
import { parseCount } from '../../util/units.ts';
import { emit, jsonTarget, type JsonFlag } from './json.ts';

export const PREDICT_EVAL_JSON_SCHEMA = 'precog.predict-eval/v1';

const TRACE_FILE = /\.(trace|json)(\.gz)?$/;

/** Trace files named directly, and those found (recursively, sorted) in named directories. */
export function expandTraces(args: string[]): string[] {
  const files: string[] = [];
  const walk = (dir: string): void => {
    for (const e of readdirSync(dir, { withFileTypes: true }).sort((a, b) => a.name.localeCompare(b.name))) {
      const p = join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else if (TRACE_FILE.test(e.name)) files.push(p);
    }
  };
  for (const a of args) {
    let st;
    try {
      st = statSync(a);
    } catch {
      throw new UsageError(`--traces: "${a}" does not exist (give trace files or directories holding them)`);
    }
    if (st.isDirectory()) {
      const before = files.length;
      walk(a);
      if (files.length === before)
        throw new UsageError(
          `--traces: directory "${a}" holds no trace files (*.trace, *.trace.gz, *.json, *.json.gz)`,
        );
    } else files.push(a);
  }
  return files;
}

function trainingTrace(file: string): TrainingTrace {
  const t = loadTrace(file);
  return { name: file, pageCount: t.pageCount, samples: traceBitmaps(t).map((b) => b.words) };
}

export interface TrainFlags {
  traces?: string[];
  kind: string;
  model?: string;
  out?: string;
  trees: string;
  depth: string;
  m: string;
  n: string;
  l: string;
  horizons: string;
  minLeaf: string;
  seed: string;
  json?: JsonFlag;
}

/** `precog train`: fits the forest on the traces and writes the model file. */
export function train(f: TrainFlags): void {
  if (!f.traces || f.traces.length === 0)
    throw new UsageError('--traces is required: trace files or directories to train on');
  if (!f.out) throw new UsageError('--out is required: the model file to write');
  checkWritable(f.out, '--out');
  const target = jsonTarget(f.json);
  const window = {
    m: parseCount(f.m, '--m', 1),
    n: parseCount(f.n, '--n', 1),
    l: parseCount(f.l, '--l', 1),
  };
  const bad = checkWindow(window);
  if (bad) throw new UsageError(`window: ${bad.replace(/^(\w) =/, '--$1 =')}`);
  const horizons = splitList(f.horizons).map((h) => parseCount(h, '--horizons', 1));
  if (horizons.length === 0) throw new UsageError('--horizons needs at least one horizon, e.g. 1,2,3');
  if (new Set(horizons).size !== horizons.length)
    throw new UsageError(`--horizons "${f.horizons}" repeats a horizon`);
  const options = {
    window,
    horizons,
    trees: parseCount(f.trees, '--trees', 1),
    depth: parseCount(f.depth, '--depth', 1),
    minLeaf: parseCount(f.minLeaf, '--min-leaf', 1),
    seed: parseCount(f.seed, '--seed', 0),
  };
  if (options.depth > 30) throw new UsageError(`--depth "${f.depth}" must be at most 30`);
  const files = expandTraces(f.traces);
  const t0 = performance.now();
  const traces = files.map(trainingTrace);
  const short = traces.find((t) => t.samples.length < 2);
  if (short)
    throw new UsageError(`trace ${short.name} has ${short.samples.length} sample: training needs at least 2`);
  const report = trainForest(traces, options);
  const text = JSON.stringify(report.model) + '\n';
  writeFileSync(f.out, text);
  const seconds = (performance.now() - t0) / 1000;
  const summary = {
    out: f.out,
    bytes: text.length,
    traces: files,
    pages: traces.reduce((a, t) => a + t.pageCount, 0),
    distinctRows: report.rows,
    horizons,
    pairs: report.pairs,
    positiveShare: report.positiveShare,
    trees: options.trees,
    nodes: report.nodes,
    seconds: Math.round(seconds * 100) / 100,
  };
  emit(target, summary, () =>
    [
      `precog train: forest, window m=${window.m} n=${window.n} l=${window.l}, ${options.trees} trees per horizon, depth <= ${options.depth}`,
      `  traces: ${files.length} (${summary.pages} pages): ${files.map((x) => basename(x)).join(', ')}`,
      `  rows: ${report.rows} distinct windows from ${report.pairs.map((p, i) => `${p} pairs (h=${horizons[i]}, ${(report.positiveShare[i] * 100).toFixed(1)}% dirty)`).join(', ')}`,
      `  nodes: ${report.nodes} in ${horizons.length * options.trees} trees`,
      `wrote ${f.out} (${(text.length / 1024).toFixed(1)} KiB) in ${seconds.toFixed(1)} s`,
      '',
    ].join('\n'),
  );
}

export interface EvalFlags {
  traces?: string[];
  /** The former name of --traces, kept as a hidden alias. */
  trace?: string[];
  predictors: string;
  horizon: string;
  threshold: string;
  warmup: string;
  model?: string;
  format: 'text' | 'markdown';
  json?: JsonFlag;
}

const num = (x: number, digits = 3): string => (Number.isFinite(x) ? x.toFixed(digits) : '-');

type Row = EvalResult & { spec: string };

const COLUMNS: Column<Row>[] = [
  { title: 'predictor', value: (r) => r.spec },
  { title: 'AUC', align: 'right', value: (r) => num(r.auc) },
  { title: 'AUC/round', align: 'right', value: (r) => num(r.aucPerRound) },
  { title: 'precision', align: 'right', value: (r) => num(r.precision) },
  { title: 'recall', align: 'right', value: (r) => num(r.recall) },
  { title: 'F1', align: 'right', value: (r) => num(r.f1) },
  { title: 'accuracy', align: 'right', value: (r) => num(r.accuracy) },
  { title: 'predict ms/100k pages', align: 'right', value: (r) => num(r.predictMsPer100k, 2) },
  { title: 'observe ms/100k pages', align: 'right', value: (r) => num(r.observeMsPer100k, 2) },
  {
    title: 'stable: coverage, accuracy',
    align: 'right',
    value: (r) => (r.stable ? `${num(r.stable.coverage)}, ${num(r.stable.accuracy)}` : ''),
  },
];

/** `precog predict-eval`: replays the traces through the predictors and prints their scores. */
export function predictEval(f: EvalFlags): void {
  const traces = [...(f.traces ?? []), ...(f.trace ?? [])];
  if (traces.length === 0) throw new UsageError('--traces is required: the trace file(s) to replay');
  const target = jsonTarget(f.json);
  const specs = parsePredictorList(f.predictors);
  const horizon = parseCount(f.horizon, '--horizon', 1);
  const warmup = parseCount(f.warmup, '--warmup', 1);
  const threshold = Number(f.threshold);
  if (!(f.threshold.trim() !== '' && threshold >= 0 && threshold <= 1))
    throw new UsageError(`--threshold "${f.threshold}" must be a number between 0 and 1`);
  const needsModel = specs.some((s) => s.split(':')[0].trim().toLowerCase() === 'forest');
  const model = needsModel ? loadForestModel(f.model ?? DEFAULT_FOREST_MODEL) : undefined;
  const all: { trace: string; pages: number; samples: number; results: Row[] }[] = [];
  for (const file of traces) {
    const trace = loadTrace(file);
    if (trace.samples < warmup + horizon)
      throw new UsageError(
        `trace ${file} has ${trace.samples} samples: --warmup ${warmup} and --horizon ${horizon} need at least ${warmup + horizon}`,
      );
    const samples = traceBitmaps(trace);
    const lookahead = traceLookahead(samples);
    const predictors = specs.map((s) => createPredictor(s, trace.pageCount, { model, lookahead }));
    const accessed = trace.accessed ? traceBitmaps(trace, 'accessed') : undefined;
    const results = evaluatePredictors(samples, predictors, { horizon, threshold, warmup }, { accessed }).map(
      (r, i) => ({
        ...r,
        spec: specs[i],
      }),
    );
    all.push({ trace: file, pages: trace.pageCount, samples: trace.samples, results });
  }
  const doc = {
    schema: PREDICT_EVAL_JSON_SCHEMA,
    horizon,
    threshold,
    warmup,
    model: needsModel ? (f.model ?? DEFAULT_FOREST_MODEL) : null,
    traces: all,
  };
  emit(target, doc, () => {
    let out = '';
    for (const t of all) {
      const r0 = t.results[0];
      out += `${t.trace}: ${t.pages} pages x ${t.samples} samples; ${r0.rounds} scored rounds, ${r0.pairs} pairs, ${((r0.positives / r0.pairs) * 100).toFixed(2)}% dirty within ${horizon} round(s); threshold ${threshold}\n\n`;
      out += renderTable(t.results, COLUMNS, f.format) + '\n';
    }
    if (all.length > 1) {
      // One line per trace: each predictor's AUC and F1, to compare across traces at a glance.
      out += `AUC / F1 per trace (horizon ${horizon}, threshold ${threshold}):\n\n`;
      const cols: Column<(typeof all)[number]>[] = [
        { title: 'trace', value: (t) => basename(t.trace) },
        {
          title: 'dirty',
          align: 'right',
          value: (t) => `${((t.results[0].positives / t.results[0].pairs) * 100).toFixed(1)}%`,
        },
        ...specs.map((spec, i): Column<(typeof all)[number]> => ({
          title: spec,
          align: 'right',
          value: (t) => `${num(t.results[i].auc)} / ${num(t.results[i].f1)}`,
        })),
      ];
      out += renderTable(all, cols, f.format) + '\n';
    }
    return out;
  });
}
