import { readdirSync, statSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { Command, Option } from 'commander';
import { loadTrace } from '../memory/trace.ts';
import { evaluatePredictors, traceBitmaps, traceLookahead, type EvalResult } from '../predict/evaluate.ts';
import { loadForestModel, DEFAULT_FOREST_MODEL } from '../predict/forest.ts';
import { TRAIN_DEFAULTS, trainForest, type TrainingTrace } from '../predict/forest-train.ts';
import { createPredictor, parsePredictorList } from '../predict/index.ts';
import { checkWindow, WINDOW_DEFAULTS } from '../predict/window.ts';
import { renderTable, type Column } from '../report/table.ts';
import { UsageError } from '../util/errors.ts';
import { checkWritable } from '../util/paths.ts';
import { splitList } from '../util/spec.ts';
import { parseCount } from '../util/units.ts';

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

interface TrainFlags {
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
  json?: boolean;
}

export function trainCommand(): Command {
  return (
    new Command('train')
      .exitOverride()
      .showHelpAfterError('(run precog train --help for usage)')
      .description('train a dirty-page prediction model offline on recorded or emulated traces')
      .option(
        '-t, --traces <paths...>',
        'trace files, or directories of them (*.trace[.gz], public *.json[.gz])',
      )
      // --kind: what to train; --model names a model file everywhere (predict-eval), so here it is only a hidden alias.
      .addOption(new Option('--kind <kind>', 'the model to train').choices(['forest']).default('forest'))
      .addOption(new Option('--model <kind>', 'the same as --kind').choices(['forest']).hideHelp())
      .option('-o, --out <file>', 'the model file to write (JSON)')
      .option('--trees <n>', 'trees per horizon', String(TRAIN_DEFAULTS.trees))
      .option('--depth <n>', 'maximum tree depth', String(TRAIN_DEFAULTS.depth))
      .option('--m <rounds>', 'rounds of history per page in the window', String(WINDOW_DEFAULTS.m))
      .option('--n <pages>', 'pages in the window, centred on the page (odd)', String(WINDOW_DEFAULTS.n))
      .option(
        '--l <rounds>',
        'rounds of the longer history (share of dirty rounds)',
        String(WINDOW_DEFAULTS.l),
      )
      .option(
        '--horizons <list>',
        'horizons (rounds) to train a forest for',
        TRAIN_DEFAULTS.horizons.join(','),
      )
      .option('--min-leaf <rows>', 'minimum weight on each side of a split', String(TRAIN_DEFAULTS.minLeaf))
      .option('--seed <n>', 'seed of the bootstrap and feature sampling', String(TRAIN_DEFAULTS.seed))
      .option('--json', 'print the summary as JSON')
      .action((f: TrainFlags) => {
        if (!f.traces || f.traces.length === 0)
          throw new UsageError('--traces is required: trace files or directories to train on');
        if (!f.out) throw new UsageError('--out is required: the model file to write');
        checkWritable(f.out, '--out');
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
          throw new UsageError(
            `trace ${short.name} has ${short.samples.length} sample: training needs at least 2`,
          );
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
        if (f.json) {
          process.stdout.write(JSON.stringify(summary, null, 2) + '\n');
          return;
        }
        process.stdout.write(
          [
            `precog train: forest, window m=${window.m} n=${window.n} l=${window.l}, ${options.trees} trees per horizon, depth <= ${options.depth}`,
            `  traces: ${files.length} (${summary.pages} pages): ${files.map((x) => basename(x)).join(', ')}`,
            `  rows: ${report.rows} distinct windows from ${report.pairs.map((p, i) => `${p} pairs (h=${horizons[i]}, ${(report.positiveShare[i] * 100).toFixed(1)}% dirty)`).join(', ')}`,
            `  nodes: ${report.nodes} in ${horizons.length * options.trees} trees`,
            `wrote ${f.out} (${(text.length / 1024).toFixed(1)} KiB) in ${seconds.toFixed(1)} s`,
            '',
          ].join('\n'),
        );
      })
  );
}

interface EvalFlags {
  traces?: string[];
  /** The former name of --traces, kept as a hidden alias. */
  trace?: string[];
  predictors: string;
  horizon: string;
  threshold: string;
  warmup: string;
  model?: string;
  format: 'text' | 'markdown';
  json?: boolean;
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

export function predictEvalCommand(): Command {
  return new Command('predict-eval')
    .exitOverride()
    .showHelpAfterError('(run precog predict-eval --help for usage)')
    .description(
      'replay traces through dirty-page predictors: observe sample t, predict t+1..t+horizon; AUC, precision, recall, F1, speed',
    )
    .option('-t, --traces <files...>', 'trace files (precog format or the public JSON, gzipped or not)')
    .addOption(new Option('--trace <files...>', 'the same as --traces').hideHelp())
    .option(
      '-p, --predictors <list>',
      'comma-separated predictor specs: markov[:prior=1], pr[:p=0.5:r=0.5:half-life=1], forest[:model=FILE], datashift[:window=2:p=0.5], tempo[:decay=0.5:min-run=64:margin=0.25], recent[:window=5] (the baseline), oracle',
      'markov,pr,forest,datashift,oracle',
    )
    .option('--horizon <rounds>', 'a page is positive when dirty within this many samples', '1')
    .option('--threshold <p>', 'scores at or above it count as predicted dirty', '0.5')
    .option('--warmup <samples>', 'samples observed before the first scored prediction', '1')
    .option('--model <file>', 'forest model file (default: models/forest.json, shipped with precog)')
    .addOption(new Option('--format <f>', 'table format').choices(['text', 'markdown']).default('text'))
    .option('--json', 'print the results as JSON')
    .action((f: EvalFlags) => {
      const traces = [...(f.traces ?? []), ...(f.trace ?? [])];
      if (traces.length === 0) throw new UsageError('--traces is required: the trace file(s) to replay');
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
        const results = evaluatePredictors(
          samples,
          predictors,
          { horizon, threshold, warmup },
          { accessed },
        ).map((r, i) => ({
          ...r,
          spec: specs[i],
        }));
        all.push({ trace: file, pages: trace.pageCount, samples: trace.samples, results });
      }
      if (f.json) {
        process.stdout.write(
          JSON.stringify(
            {
              schema: PREDICT_EVAL_JSON_SCHEMA,
              horizon,
              threshold,
              warmup,
              model: needsModel ? (f.model ?? DEFAULT_FOREST_MODEL) : null,
              traces: all,
            },
            null,
            2,
          ) + '\n',
        );
        return;
      }
      for (const t of all) {
        const r0 = t.results[0];
        process.stdout.write(
          `${t.trace}: ${t.pages} pages x ${t.samples} samples; ${r0.rounds} scored rounds, ${r0.pairs} pairs, ${((r0.positives / r0.pairs) * 100).toFixed(2)}% dirty within ${horizon} round(s); threshold ${threshold}\n\n`,
        );
        process.stdout.write(renderTable(t.results, COLUMNS, f.format) + '\n');
      }
      if (all.length > 1) {
        // One line per trace: each predictor's AUC and F1, to compare across traces at a glance.
        process.stdout.write(`AUC / F1 per trace (horizon ${horizon}, threshold ${threshold}):\n\n`);
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
        process.stdout.write(renderTable(all, cols, f.format) + '\n');
      }
    });
}
