/**
 * Records a per-page dirty trace of a real program, redis-server (Debian's) under redis-benchmark, inside test host
 * a, with `precog trace record`, then replays it in the emulator with `precog simulate --workload trace:file=...`.
 * Needs root; brings the testbed up if it is down (and takes it down again).
 *
 *   sudo npm run trace:redis                 # 20 s at 100 ms, writes traces/redis-benchmark.trace.gz
 *   sudo npm run trace:redis -- --seconds 10
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { HOSTS_DIR } from '../src/runtime/testbed.ts';
import { inHost, precog, requireRootOrExit, withTestbed } from './testbed-run.ts';

const flag = process.argv.indexOf('--seconds');
const seconds = flag > 0 ? Number(process.argv[flag + 1]) : 20;
if (!(seconds > 0)) {
  console.error('--seconds needs a number > 0');
  process.exit(2);
}
const OUT = new URL('../traces/redis-benchmark.trace.gz', import.meta.url).pathname;
const IN_HOST = '/var/lib/precog/redis.trace';

requireRootOrExit('trace:redis');
const inA = (script: string): string => inHost('a', script);

await withTestbed(() => {
  inA('redis-server --port 6379 --save "" --appendonly no --daemonize yes --logfile /var/log/redis.log');
  inA('for i in $(seq 50); do redis-cli ping >/dev/null 2>&1 && break; sleep 0.1; done');
  const pid = Number(inA('pgrep -x redis-server').trim());
  // Load first (the initial fill is not what a migration sees), then record under a steady mixed load.
  inA('redis-benchmark -q -t set -n 200000 -r 200000 -d 512 -P 16 >/dev/null');
  const load = `(redis-benchmark -q -t set,get,incr,lpush,lpop -n 100000000 -r 200000 -d 512 -c 20 >/dev/null 2>&1 &)`;
  inA(load);
  const summary = inA(
    `/opt/precog/bin/precog trace record --pid ${pid} --interval 100ms --duration ${seconds}s --out ${IN_HOST} --json`,
  );
  inA('pkill -x redis-benchmark; redis-cli shutdown nosave >/dev/null 2>&1 || true');
  const trace = readFileSync(join(HOSTS_DIR, 'a', 'data', 'redis.trace'));
  mkdirSync(new URL('../traces', import.meta.url).pathname, { recursive: true });
  writeFileSync(OUT, gzipSync(trace, { level: 9 }));
  console.log(`recorded redis-server (pid ${pid} in host a) for ${seconds} s: ${summary.trim()}`);
  console.log(`wrote ${OUT} (${trace.length} bytes, ${readFileSync(OUT).length} gzipped)\n`);
});
console.log(
  precog(
    'simulate',
    '--workload',
    `trace:file=${OUT}`,
    '--bandwidth',
    '1Gbit',
    '--strategy',
    'precopy,iterpredict,cold,postcopy,hybrid',
  ),
);
