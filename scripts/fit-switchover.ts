// Fits the emulator's switchover cost model (src/sim/switchover.ts) to live runs: bench:live's step records (its
// --json files), memchange on precog's runtime. Writes the model where the emulator reads it (--out), and prints,
// per grid cell, the stop's cost beyond the link as the live runs measured it (medians), as the model gives it,
// and as a model fitted without that cell predicts it (leave one cell out: how well it generalises).
//
//   npm run fit:switchover -- --from-json FILE,... [--out docs/data/switchover-model.json] [--results FILE]
import { writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import {
  cellMedians,
  fitSwitchover,
  measuredStopMs,
  modelledStopMs,
  DUMP_ROUTES,
  RESTORE_MODES,
  type DumpRoute,
  type SwitchoverModel,
  type SwitchoverSample,
} from '../src/sim/switchover.ts';
import { parseBandwidth } from '../src/util/units.ts';
import { replaceSection, SWITCHOVER_SECTION } from './sections.ts';
import { latestRuns } from './live-runs.ts';

const { values: flags } = parseArgs({
  options: {
    'from-json': { type: 'string' },
    out: { type: 'string', default: 'docs/data/switchover-model.json' },
    results: { type: 'string' },
    help: { type: 'boolean', short: 'h', default: false },
  },
  strict: true,
});
if (flags.help) {
  console.log(`usage: npm run fit:switchover -- --from-json FILE,... [--out FILE] [--results FILE]
  --from-json FILE,...  bench:live --json files (memchange runs of the precog runtime; others are left out)
  --out FILE            where the model goes (default docs/data/switchover-model.json; the emulator's --switchover)
  --results FILE        also rewrite the "${SWITCHOVER_SECTION}" section of FILE (docs/results.md) with the report`);
  process.exit(0);
}
if (!flags['from-json']) {
  console.error('fit:switchover: --from-json FILE,... is required (the --json files of bench:live runs)');
  process.exit(2);
}

/** The fields of a bench:live run that the fit reads. */
interface Run {
  workload?: string;
  link: string;
  sizeMiB: number;
  rate: number;
  strategy: string;
  ok: boolean;
  probe?: { downtimeMs: number };
  report?: {
    strategy: string;
    memoryBytes: number;
    pagesFinal: number;
    stateBytes: number;
    downtimeMs: number;
    dumpMs: number;
    finalPagesMs: number;
    stateMs: number;
    restoreMs: number;
    restoreMode?: 'lazy' | 'full';
    dumpVia?: string;
    postcopy?: unknown;
    liveRounds: number;
    rounds?: { phase: string; bytes: number }[];
  };
}

const files = flags['from-json'].split(',');
const samples: SwitchoverSample[] = [];
let skipped = 0;
// As bench:live --from-json reads them: a cell's runs come from the last file that has it.
for (const r of latestRuns<Run>(files)) {
  const x = r.report;
  const route = x?.dumpVia;
  if (
    !r.ok ||
    !x ||
    !r.probe ||
    (r.workload ?? 'memchange') !== 'memchange' ||
    (route !== 'lazy' && route !== 'images') ||
    !x.restoreMode
  ) {
    skipped++;
    continue;
  }
  const bitsPerMs = parseBandwidth(r.link, 'link') / 1000;
  const stop = x.rounds?.filter((q) => q.phase === 'stop') ?? [];
  const stopBytes = stop.length ? stop.reduce((a, q) => a + q.bytes, 0) : x.pagesFinal * 4096;
  samples.push({
    cell: `${r.link} ${r.sizeMiB} MiB ${r.rate} MB/s ${r.strategy}`,
    route: route === 'lazy' && x.postcopy && x.liveRounds === 0 ? 'postcopy' : route,
    mode: x.postcopy ? 'postcopy' : x.restoreMode,
    cold: x.liveRounds === 0,
    memoryBytes: x.memoryBytes,
    changedBytes: x.pagesFinal * 4096,
    bandwidth: bitsPerMs * 1000,
    stateBytes: x.stateBytes,
    dumpMs: x.dumpMs,
    sendMs: x.finalPagesMs - (stopBytes * 8) / bitsPerMs,
    restoreMs: x.stateMs - (x.stateBytes * 8) / bitsPerMs + x.restoreMs,
    answerMs: r.probe.downtimeMs - x.downtimeMs,
  });
}

const model = fitSwitchover(
  samples,
  `${files.join(', ')}: ${samples.length} runs (${new Date().toISOString()})`,
);
writeFileSync(flags.out!, JSON.stringify(model, null, 2) + '\n');

const fmt = (x: number) => x.toFixed(0);
const ROUTE_NAMES: Record<DumpRoute, string> = {
  lazy: 'lazy route (pre-copy, cold, hybrid: all memory hashed, what changed read)',
  postcopy: 'lazy route of a post-copy (nothing read: the pages follow from the frozen tasks)',
  images: 'images route (a full local dump read back)',
};
const pct = (a: number, b: number) => `${(((a - b) / b) * 100).toFixed(0)} %`;
const cells = cellMedians(samples);
const rows = cells.map((c) => {
  const loo: SwitchoverModel = fitSwitchover(
    samples.filter((s) => s.cell !== c.cell),
    'leave one out',
  );
  const live = measuredStopMs(c);
  const fitted = modelledStopMs(model, c);
  const held = modelledStopMs(loo, c);
  return [
    c.cell,
    c.route,
    c.mode,
    fmt(c.dumpMs),
    fmt(c.sendMs),
    fmt(c.restoreMs),
    fmt(c.answerMs),
    fmt(live),
    fmt(fitted),
    pct(fitted, live),
    fmt(held),
    pct(held, live),
  ];
});
const d = model.dump;
const out = [
  `## The emulator's switchover model, fitted to live runs`,
  '',
  `\`npm run fit:switchover -- --from-json ${files.join(',')}\`: ${samples.length} live runs in ${cells.length} cells ` +
    `(${skipped} left out: failed, not memchange, or from before the step records), fitted on each cell's medians, ` +
    "every coefficient but the answer's at least 0, the dump and restore to relative errors. The model " +
    '(src/sim/switchover.ts), in ms:',
  '',
  ...DUMP_ROUTES.filter((r) => d[r]).map(
    (r) =>
      `- dump, ${ROUTE_NAMES[r]}: ${fmt(d[r]!.fixedMs)} + ${fmt(d[r]!.perGiBMs)} per GiB of memory + ` +
      `${d[r]!.perChangedMiBMs.toFixed(1)} per MiB sent at the stop, + ${fmt(d[r]!.coldStartMs)} with no live round before`,
  ),
  `- pages sent at the stop, beyond their time on the link: ${model.send.perMiBMs.toFixed(1)} per MiB`,
  `- commit and restore (from the state's arrival): lazy ${fmt(model.restore.lazy.fixedMs)} + ` +
    `${fmt(model.restore.lazy.perGiBMs)} per GiB; in full ${fmt(model.restore.full.fixedMs)} + ` +
    `${fmt(model.restore.full.perGiBMs)} per GiB; post-copy ${fmt(model.restore.postcopy.fixedMs)} + ` +
    `${fmt(model.restore.postcopy.perGiBMs)} per GiB`,
  `- the service's first answer after precog reports it running (may be below 0: precog's downtime starts when ` +
    `it asks CRIU to dump), fixed + per GiB + per second the memory takes on the link: ` +
    RESTORE_MODES.map(
      (r) =>
        `${r} ${fmt(model.answer[r].fixedMs)} + ${fmt(model.answer[r].perGiBMs)} + ${fmt(model.answer[r].perLinkSecondMs)}`,
    ).join('; ') +
    ' (post-copy: the process faults its pages in before it answers)',
  '',
  'Per cell, medians: the stop beyond its pages and state on the link (dump + send + commit and restore + answer), measured ' +
    'live, given by the model, and given by a model fitted without that cell (leave one out).',
  '',
  table(
    [
      'cell',
      'route',
      'restore',
      'dump',
      'send',
      'commit + restore',
      'answer',
      'live',
      'model',
      'error',
      'left out',
      'error',
    ],
    rows,
  ),
];
console.log(out.join('\n'));
console.log(`\nmodel written to ${flags.out}`);
if (flags.results) replaceSection(flags.results, SWITCHOVER_SECTION, out.join('\n'));

function table(head: string[], body: string[][]): string {
  const line = (r: string[]) => `| ${r.join(' | ')} |`;
  return [line(head), line(head.map((_, i) => (i < 3 ? '---' : '---:'))), ...body.map(line)].join('\n');
}
