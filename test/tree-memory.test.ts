import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { ProcessTreeMemory } from '../src/memory/tree.ts';
import { processTree } from '../src/memory/procfs.ts';

// A child that holds 4 MiB of its letter and rewrites them with the next letter on SIGUSR1.
const CHILD = `
import signal, sys
buf = bytearray(sys.argv[1].encode() * (4 << 20))
def bump(*_):
    global buf
    buf[:] = bytes([buf[0] + 1]) * len(buf)
signal.signal(signal.SIGUSR1, bump)
print("ready", flush=True)
while True:
    signal.pause()
`;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const count = (hay: Buffer, letter: string): number => {
  let n = 0;
  for (let at = hay.indexOf(letter.repeat(4096)); at >= 0; at = hay.indexOf(letter.repeat(4096), at + 4096))
    n++;
  return n;
};

test("a process tree is one layout of regions keyed by pid; writes land in the writer's range only", async () => {
  const root = spawn('sh', ['-c', `python3 -c '${CHILD}' A & python3 -c '${CHILD}' B & wait`], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  try {
    let ready = 0;
    root.stdout.on('data', (d: Buffer) => (ready += d.toString().split('ready').length - 1));
    for (let i = 0; i < 100 && ready < 2; i++) await sleep(50);
    assert.equal(ready, 2, 'both children are ready');
    const pids = processTree(root.pid!);
    assert.equal(pids.length, 3);
    const mem = new ProcessTreeMemory(root.pid!);
    try {
      const byPid = new Set(mem.layout.regions.map((r) => r.pid));
      assert.deepEqual([...byPid].sort(), [...pids].sort(), 'every process of the tree, each region tagged');
      assert.equal(
        mem.layout.pageCount,
        mem.processes.reduce((a, p) => a + p.layout.pageCount, 0),
      );
      const all = Uint32Array.from({ length: mem.layout.pageCount }, (_, i) => i);
      const image = Buffer.alloc(mem.layout.pageCount * 4096);
      await mem.collectDirty();
      mem.readPages(all, image);
      assert.ok(count(image, 'A') >= 1000 && count(image, 'B') >= 1000, 'both buffers are in the image');

      // The child holding B rewrites its buffer with C.
      const childB = mem.processes.find((p) =>
        readFileSync(`/proc/${p.pid}/cmdline`, 'utf8').endsWith('B\0'),
      )!;
      process.kill(childB.pid, 'SIGUSR1');
      await sleep(300);
      const dirty = await mem.collectDirty();
      const i = mem.processes.indexOf(childB);
      const first = mem.processes.slice(0, i).reduce((a, p) => a + p.layout.pageCount, 0);
      const last = first + childB.layout.pageCount;
      const inB = dirty.toArray().filter((p) => p >= first && p < last).length;
      assert.ok(inB >= 1024, `the 4 MiB rewritten in B's range (${inB} pages)`);
      assert.equal(dirty.count() - inB, 0, 'nothing elsewhere in the tree changed');
      await mem.freeze();
      mem.readPages(all, image);
      assert.ok(count(image, 'C') >= 1024 && count(image, 'B') === 0, 'the image now holds C where B was');
      mem.thaw();
    } finally {
      mem.close();
    }
  } finally {
    for (const p of processTree(root.pid!).reverse()) {
      try {
        process.kill(p, 'SIGKILL');
      } catch {
        // gone
      }
    }
  }
});
