/**
 * Page hashes of stopped processes or of a dump's pages files, on worker threads (one per core, at most 4): the stop
 * reads and hashes every page of a container's anonymous memory (the lazy dump route from the stopped tasks,
 * src/criu/lazydump.ts; the images route from the pages files), and that read is the stop's largest cost; split
 * over the cores it takes about half the time of one thread here. Start the pool
 * before the stop (a worker takes tens of milliseconds to start).
 */
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import { PAGE_SIZE } from './pages.ts';

/**
 * A range of a process's memory (its machine PID, the first page's address) or of a file (a dump's pages image, the
 * first page's offset), and the number of pages.
 */
export type MemoryRange =
  { pid: number; vaddr: number; pages: number } | { file: string; offset: number; pages: number };

/** Pages per job: small enough to balance the workers, large enough that messages cost nothing. */
const JOB_PAGES = 2048;

export class HashPool {
  private readonly workers: Worker[];
  private failed: Error | undefined;

  constructor(size = Math.min(4, Math.max(1, availableParallelism()))) {
    this.workers = Array.from(
      { length: size },
      () => new Worker(new URL('./hashworker.mjs', import.meta.url)),
    );
    for (const w of this.workers) {
      w.unref();
      w.on('error', (err) => (this.failed = err));
    }
  }

  /** The xxh64 of every page of every range, in order (one array per range). */
  async hash(ranges: readonly MemoryRange[]): Promise<BigUint64Array[]> {
    if (this.failed) throw this.failed;
    const out = ranges.map((r) => new BigUint64Array(r.pages));
    const jobs: { range: number; first: number; pages: number }[] = [];
    ranges.forEach((r, i) => {
      for (let first = 0; first < r.pages; first += JOB_PAGES)
        jobs.push({ range: i, first, pages: Math.min(JOB_PAGES, r.pages - first) });
    });
    let next = 0;
    await Promise.all(
      this.workers.map(
        (w) =>
          new Promise<void>((resolve, reject) => {
            let seq = -1;
            const give = () => {
              if (next >= jobs.length) {
                w.off('message', onMessage);
                w.off('error', reject);
                return resolve();
              }
              seq = next++;
              const j = jobs[seq];
              const r = ranges[j.range];
              const skip = j.first * PAGE_SIZE;
              w.postMessage(
                'file' in r
                  ? { seq, file: r.file, offset: r.offset + skip, pages: j.pages }
                  : { seq, pid: r.pid, vaddr: r.vaddr + skip, pages: j.pages },
              );
            };
            const onMessage = (m: { seq: number; hashes?: BigUint64Array; error?: string }) => {
              if (m.seq !== seq) return;
              if (m.error) {
                w.off('message', onMessage);
                w.off('error', reject);
                next = jobs.length;
                return reject(new Error(m.error));
              }
              const j = jobs[seq];
              out[j.range].set(m.hashes!, j.first);
              give();
            };
            w.on('message', onMessage);
            w.on('error', reject);
            give();
          }),
      ),
    );
    for (const w of this.workers) w.postMessage({ close: true });
    return out;
  }

  async close(): Promise<void> {
    await Promise.all(this.workers.map((w) => w.terminate()));
  }
}
