/**
 * Predictor speed: median time to predict every page of 1 GiB (262,144 pages of 4 KiB) for one round, on one core,
 * after 5 observed rounds. Each timed prediction follows a new observed round, as in a migration (the forest's
 * cache of predictions by feature words carries over between rounds, as it does in a migration). Target:
 * the forest within 50 ms.
 *
 * Rounds come from:
 *   redis        the recorded redis-server trace (traces/redis-benchmark.trace.gz, 48,175 pages) tiled over 1 GiB
 *   hotspot      memchange:high:pattern=hotspot over 1 GiB, 2 s per round (the emulator's workload)
 *   hotcold      hotcold:rate=11MB/s:skew=1 over 1 GiB, 2 s per round
 *   uniform-10%  every page dirty with probability 0.1 in every round, independently: no locality, the most distinct
 *                forest windows (a stress case, not a workload)
 *
 *   npm run bench:predict
 *   npm run bench:predict -- --rounds 21 --predictors markov,forest --pages 262144 --json
 */
import { loadavg } from 'node:os';
import { traceLookahead } from '../src/predict/evaluate.ts';
import { createPredictor, parsePredictorList } from '../src/predict/index.ts';
import { renderTable } from '../src/report/table.ts';
import { benchScenarios, flag, median } from './scenarios.ts';
import { parseCount } from '../src/util/units.ts';

const PAGES = parseCount(flag('--pages', '262144'), '--pages', 1024);
const TIMED = parseCount(flag('--rounds', '15'), '--rounds', 1);
const WARM = 5;
const specs = parsePredictorList(flag('--predictors', 'markov,pr,forest,datashift,oracle'));
const json = process.argv.includes('--json');
const TARGET_MS = 50;
const ROUNDS = WARM + TIMED + 1;

const scenarios = benchScenarios(PAGES, ROUNDS);

interface Row {
  predictor: string;
  scenario: string;
  dirtyShare: number;
  predictMs: number;
  observeMs: number;
  predictMsMax: number;
}

const rows: Row[] = [];
const out = new Float32Array(PAGES);
for (const [name, make] of scenarios) {
  const rounds = make();
  const dirtyShare = median(rounds.map((b) => b.count() / PAGES));
  for (const spec of specs) {
    const pred = createPredictor(spec, PAGES, { lookahead: traceLookahead(rounds) });
    const predictMs: number[] = [];
    const observeMs: number[] = [];
    for (let r = 0; r < WARM + TIMED; r++) {
      const t0 = performance.now();
      pred.observe({ round: r + 1, dirty: rounds[r] });
      const t1 = performance.now();
      if (r < WARM) continue;
      pred.predict(out, 1);
      const t2 = performance.now();
      observeMs.push(t1 - t0);
      predictMs.push(t2 - t1);
    }
    rows.push({
      predictor: spec,
      scenario: name,
      dirtyShare,
      predictMs: median(predictMs),
      observeMs: median(observeMs),
      predictMsMax: Math.max(...predictMs),
    });
    if (!json) process.stderr.write(`${name} ${spec}: ${median(predictMs).toFixed(1)} ms\n`);
  }
}

if (json) {
  process.stdout.write(
    JSON.stringify({ pages: PAGES, warmRounds: WARM, timedRounds: TIMED, rows }, null, 2) + '\n',
  );
} else {
  const f = (x: number) => x.toFixed(1);
  console.log(
    `\n${PAGES} pages (${(PAGES * 4096) / 2 ** 30} GiB) per round, median of ${TIMED} rounds after ${WARM} observed; Node ${process.version}, one thread; load average ${loadavg()[0].toFixed(1)}\n`,
  );
  console.log(
    renderTable(
      rows,
      [
        { title: 'predictor', value: (r) => r.predictor },
        { title: 'rounds', value: (r) => r.scenario },
        { title: 'dirty/round', align: 'right', value: (r) => `${(r.dirtyShare * 100).toFixed(1)}%` },
        { title: 'predict ms (median)', align: 'right', value: (r) => f(r.predictMs) },
        { title: 'predict ms (max)', align: 'right', value: (r) => f(r.predictMsMax) },
        { title: 'observe ms (median)', align: 'right', value: (r) => f(r.observeMs) },
      ],
      'markdown',
    ),
  );
  const forest = rows.filter((r) => r.predictor.startsWith('forest'));
  if (forest.length > 0) {
    const worst = forest.reduce((a, b) => (b.predictMs > a.predictMs ? b : a));
    const workloads = forest.filter((r) => r.scenario !== 'uniform-10%');
    const ok = workloads.every((r) => r.predictMs <= TARGET_MS);
    console.log(
      `forest: median predict time within ${TARGET_MS} ms on the workloads: ${ok ? 'met' : 'NOT met'}; slowest ${worst.scenario} ${f(worst.predictMs)} ms`,
    );
  }
}
