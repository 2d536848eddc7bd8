/**
 * Speed of U2CMigration's predictors: median time per round for 262,144 pages (1 GiB of 4 KiB pages) on one core,
 * after 8 observed rounds (the attention's window), each timed round = observe the new round + predict every page.
 * u2c predicts for its k = 3 rounds (U2C_HORIZON), attention for 1 round. Target: u2c within 50 ms.
 *
 * Rounds come from:
 *   redis        the recorded redis-server trace (traces/redis-benchmark.trace.gz, 48,175 pages) tiled over 1 GiB
 *   hotspot      memchange:high:pattern=hotspot over 1 GiB, 2 s per round (the emulator's workload)
 *   hotcold      hotcold:rate=11MB/s:skew=1 over 1 GiB, 2 s per round
 *   uniform-10%  every page dirty with probability 0.1 in every round, independently (a stress case: no locality)
 *
 *   npm run bench:u2c
 *   npm run bench:u2c -- --rounds 21 --pages 262144
 */
import { createPredictor } from '../src/predict/index.ts';
import { U2C_HORIZON } from '../src/predict/u2c.ts';
import { renderTable } from '../src/report/table.ts';
import { benchScenarios, flag, median } from './scenarios.ts';
import { parseCount } from '../src/util/units.ts';

const PAGES = parseCount(flag('--pages', '262144'), '--pages', 1024);
const TIMED = parseCount(flag('--rounds', '15'), '--rounds', 1);
const WARM = 8;
const ROUNDS = WARM + TIMED;
const TARGET_MS = 50;
const PREDICTORS: [string, number][] = [
  ['datashift', U2C_HORIZON],
  ['attention', 1],
  ['attention', U2C_HORIZON],
  ['u2c', U2C_HORIZON],
  ['u2c:stable=held', U2C_HORIZON],
];

const scenarios = benchScenarios(PAGES, ROUNDS);

interface Row {
  predictor: string;
  horizon: number;
  scenario: string;
  dirtyShare: number;
  totalMs: number;
  predictMs: number;
  observeMs: number;
  totalMsMax: number;
}

const rows: Row[] = [];
const out = new Float32Array(PAGES);
for (const [name, make] of scenarios) {
  const rounds = make();
  const dirtyShare = median(rounds.map((b) => b.count() / PAGES));
  for (const [spec, horizon] of PREDICTORS) {
    const pred = createPredictor(spec, PAGES);
    const predictMs: number[] = [];
    const observeMs: number[] = [];
    const totalMs: number[] = [];
    for (let r = 0; r < ROUNDS; r++) {
      const t0 = performance.now();
      pred.observe({ round: r + 1, dirty: rounds[r] });
      const t1 = performance.now();
      pred.predict(out, horizon);
      const t2 = performance.now();
      if (r < WARM) continue;
      observeMs.push(t1 - t0);
      predictMs.push(t2 - t1);
      totalMs.push(t2 - t0);
    }
    rows.push({
      predictor: spec,
      horizon,
      scenario: name,
      dirtyShare,
      totalMs: median(totalMs),
      predictMs: median(predictMs),
      observeMs: median(observeMs),
      totalMsMax: Math.max(...totalMs),
    });
    process.stderr.write(`${name} ${spec} h${horizon}: ${median(totalMs).toFixed(1)} ms\n`);
  }
}

const f = (x: number) => x.toFixed(1);
console.log(
  `\n${PAGES} pages (${(PAGES * 4096) / 2 ** 30} GiB) per round, median of ${TIMED} rounds after ${WARM} observed; Node ${process.version}, one thread\n`,
);
console.log(
  renderTable(
    rows,
    [
      { title: 'predictor', value: (r) => r.predictor },
      { title: 'horizon', align: 'right', value: (r) => String(r.horizon) },
      { title: 'rounds', value: (r) => r.scenario },
      { title: 'dirty/round', align: 'right', value: (r) => `${(r.dirtyShare * 100).toFixed(1)}%` },
      { title: 'observe + predict ms (median)', align: 'right', value: (r) => f(r.totalMs) },
      { title: 'predict ms (median)', align: 'right', value: (r) => f(r.predictMs) },
      { title: 'observe ms (median)', align: 'right', value: (r) => f(r.observeMs) },
      { title: 'observe + predict ms (max)', align: 'right', value: (r) => f(r.totalMsMax) },
    ],
    'markdown',
  ),
);
const u2c = rows.filter((r) => r.predictor === 'u2c');
const slowest = u2c.reduce((a, b) => (b.totalMs > a.totalMs ? b : a));
const ok = u2c.every((r) => r.totalMs <= TARGET_MS);
console.log(
  `u2c: median observe + predict within ${TARGET_MS} ms in every scenario: ${ok ? 'met' : 'NOT met'}; slowest ${slowest.scenario} ${f(slowest.totalMs)} ms`,
);
