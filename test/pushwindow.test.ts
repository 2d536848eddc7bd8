// The post-copy push window (src/engine/pushwindow.ts) against a link with a queue in front of it: the window must
// keep the link busy and the queue short, so that a faulted page sent at any moment waits behind little.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { PushWindow } from '../src/engine/pushwindow.ts';
import { SCENARIO_DEFAULTS, simulate } from '../src/sim/run.ts';

/**
 * A sender that always has pages to push, through a FIFO bottleneck of `rate` bytes/s with one-way delay `delay`
 * (seconds): the queue holds whatever the window lets out. Returns the delivered rate and how long a frame sent at
 * the end waits in the queue (what a fault would wait).
 */
function push(
  w: PushWindow | null,
  rate: number,
  delay: number,
  seconds: number,
): { rate: number; queueDelay: number; window: number } {
  const page = 4096;
  const fixedBatch = 256; // pages: 1 MiB, as without pacing
  let now = 0;
  let lineFree = 0; // when the bottleneck has sent everything queued so far
  let delivered = 0;
  const acks: number[] = []; // times acknowledgements arrive back, in order
  while (now < seconds) {
    while (acks.length > 0 && acks[0] <= now) {
      acks.shift();
      w?.acked(now);
    }
    if (w && !w.room) {
      now = acks[0]; // wait for the next acknowledgement
      continue;
    }
    const bytes = (w ? w.batchPages(page, fixedBatch) : fixedBatch) * page;
    const start = Math.max(now, lineFree);
    lineFree = start + bytes / rate;
    delivered += bytes;
    acks.push(lineFree + 2 * delay);
    w?.sent(bytes, now);
    // Without a window the sender is held only by a (large) socket buffer: 4 MiB queued at most.
    if (!w && (lineFree - now) * rate > 4 << 20) now = lineFree - (4 << 20) / rate;
  }
  return {
    rate: Math.min(delivered, seconds * rate) / seconds,
    queueDelay: Math.max(0, lineFree - now),
    window: w?.window ?? 0,
  };
}

test('the push window fills a 100 Mbit/s link and keeps its queue near 10 ms (a fault waits ~10 ms, not seconds)', () => {
  const rate = 100e6 / 8;
  const paced = push(new PushWindow(), rate, 0.0005, 20);
  assert.ok(paced.rate > 0.9 * rate, `delivered ${paced.rate} of ${rate} bytes/s`);
  assert.ok(paced.queueDelay < 0.03, `a fault would wait ${paced.queueDelay * 1000} ms`);
  const unpaced = push(null, rate, 0.0005, 20);
  assert.ok(unpaced.queueDelay > 0.2, `without pacing it waits ${unpaced.queueDelay * 1000} ms`);
});

test('the push window grows to fill a fast, long link (1 Gbit/s, 20 ms round trip) and still bounds the queue', () => {
  const rate = 1e9 / 8;
  const r = push(new PushWindow(), rate, 0.01, 20);
  assert.ok(r.rate > 0.85 * rate, `delivered ${r.rate} of ${rate} bytes/s`);
  // Its window is about the path's bandwidth x delay, plus the 10 ms target.
  assert.ok(r.window > rate * 0.02 && r.window < rate * 0.06, `window ${r.window}`);
  assert.ok(r.queueDelay < 0.04, `a fault would wait ${r.queueDelay * 1000} ms`);
});

test('the window never drops below its minimum; acknowledgements beyond what is out are ignored', () => {
  const w = new PushWindow({ minWindow: 65536 });
  assert.equal(w.window, 65536);
  assert.ok(w.room);
  w.acked(1); // nothing out
  assert.equal(w.inFlight, 0);
  w.sent(65536, 0);
  assert.ok(!w.room);
  w.acked(0.001);
  for (let i = 1; i <= 10; i++) {
    // A sender with little to send: one page every 10 s, acknowledged within 1 ms (a tiny delivery rate).
    w.sent(4096, i * 10);
    w.acked(i * 10 + 0.001);
  }
  assert.ok(w.minRtt <= 0.001 + 1e-9, String(w.minRtt));
  assert.equal(w.window, 65536);
  assert.equal(w.batchPages(4096, 256), 4);
});

test('the emulator paces post-copy too, every page still verified byte for byte at the destination', async () => {
  const r = await simulate({
    ...SCENARIO_DEFAULTS,
    workload: 'memchange:high',
    memoryBytes: 64 << 20,
    bandwidth: 100e6,
    strategy: 'postcopy',
  });
  assert.equal(r.pagesVerified, (64 << 20) / 4096);
  const w = r.metrics.postcopy?.pushWindow;
  assert.ok(w, 'the push was paced');
  assert.ok(w.bytes >= 65536 && w.minRtt > 0, JSON.stringify(w));
});
