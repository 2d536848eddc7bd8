/**
 * Emulator speed: wall time of a 1 GiB idle-workload pre-copy migration (target: at most 5 s), median of
 * several runs, against a baseline measured in the same run: copying the same GiB twice with Buffer.copy, the
 * least any emulated migration of it must do (source -> frame -> destination).
 *
 *   npm run bench            # 5 runs
 *   npm run bench -- 9       # 9 runs
 */
import { simulate, SCENARIO_DEFAULTS } from '../src/sim/run.ts';
import { median } from '../src/report/metrics.ts';

const runs = Number(process.argv[2] ?? 5);
const GiB = 1024 ** 3;
const TARGET = 5;

function baseline(): number {
  const a = Buffer.allocUnsafeSlow(GiB).fill(1);
  const b = Buffer.allocUnsafeSlow(GiB).fill(2);
  const t = performance.now();
  a.copy(b);
  b.copy(a);
  return (performance.now() - t) / 1000;
}

const walls: number[] = [];
for (let i = 0; i < runs; i++) {
  const r = await simulate({
    ...SCENARIO_DEFAULTS,
    workload: 'idle',
    strategy: 'precopy',
    memoryBytes: GiB,
    seed: i + 1,
  });
  walls.push(r.wallTime);
  console.log(
    `run ${i + 1}: ${r.wallTime.toFixed(2)} s wall (${r.metrics.liveRounds} live round, ${r.metrics.totalTime.toFixed(1)} s virtual, ${r.pagesVerified} pages verified)`,
  );
}
const copies = Array.from({ length: 3 }, baseline);
const m = median(walls);
const base = median(copies);
console.log('');
console.log(
  `1 GiB idle precopy, median of ${runs}: ${m.toFixed(2)} s wall (target <= ${TARGET} s: ${m <= TARGET ? 'met' : 'NOT met'})`,
);
console.log(`first run (fresh memory, page faults on first touch): ${walls[0].toFixed(2)} s`);
console.log(
  `baseline, two 1 GiB memory copies, median of 3: ${base.toFixed(3)} s; emulator / baseline = ${(m / base).toFixed(1)}x`,
);
