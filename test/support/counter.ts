import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Polls the `counter` and `check` files a restored test workload writes into `run`, until the counter is more than
 * 10 past `dumpedCounter` and a check was made after the restore, or `tries` x 100 ms have passed.
 */
export async function waitForCounter(
  run: string,
  dumpedCounter: number,
  tries: number,
): Promise<{ counter: number; check: string }> {
  let counter = 0;
  let check = '';
  for (let i = 0; i < tries; i++) {
    await sleep(100);
    counter = existsSync(join(run, 'counter')) ? Number(readFileSync(join(run, 'counter'), 'utf8')) : 0;
    check = existsSync(join(run, 'check')) ? readFileSync(join(run, 'check'), 'utf8') : '';
    if (counter > dumpedCounter + 10 && Number(check.split(' ')[0]) > dumpedCounter) break;
  }
  return { counter, check };
}
