import { Bitmap } from '../util/bitmap.ts';
import type { Layout, MemorySource } from '../util/interfaces.ts';
import { LiveProcessMemory, type LiveOptions } from './live.ts';
import { processTree, readStat } from './procfs.ts';

/**
 * The memory of a process tree: one LiveProcessMemory per process (threads share their process's memory), laid
 * end to end. Every region carries its process's PID, so the destination keys pages by (pid, vaddr). The tree is
 * taken when the source opens; processes forked later are not tracked (the final CRIU dump carries them).
 */
export class ProcessTreeMemory implements MemorySource {
  readonly layout: Layout;
  readonly processes: LiveProcessMemory[];
  /** First global page index of each process. */
  private readonly firsts: number[];

  constructor(root: number, options: LiveOptions = {}) {
    const pids = processTree(root).filter((p) => p === root || isUserProcess(p));
    this.processes = [];
    try {
      for (const pid of pids) this.processes.push(new LiveProcessMemory(pid, options));
    } catch (e) {
      this.processes.forEach((p) => p.close());
      throw e;
    }
    this.firsts = [];
    let pageCount = 0;
    const regions = [];
    for (const p of this.processes) {
      this.firsts.push(pageCount);
      for (const r of p.layout.regions) regions.push({ ...r, pid: p.pid });
      pageCount += p.layout.pageCount;
    }
    this.layout = { pageSize: this.processes[0].layout.pageSize, pageCount, regions };
  }

  /** The global index of the first page of process i (of `processes`). */
  firstPage(i: number): number {
    return this.firsts[i];
  }

  /** Whether a page of the tree's layout is in an anonymous mapping of its process. */
  isAnonymousPage(page: number): boolean {
    const i = this.owner(page);
    return this.processes[i].isAnonymousPage(page - this.firsts[i]);
  }

  get root(): LiveProcessMemory {
    return this.processes[0];
  }

  async collectDirty(): Promise<Bitmap> {
    const out = new Bitmap(this.layout.pageCount);
    for (let i = 0; i < this.processes.length; i++) {
      const d = await this.processes[i].collectDirty();
      const base = this.firsts[i];
      d.forEach((p) => out.set(base + p));
    }
    return out;
  }

  readPages(ids: ArrayLike<number>, out: Uint8Array): void {
    const size = this.layout.pageSize;
    for (let k = 0; k < ids.length;) {
      const i = this.owner(ids[k]);
      const base = this.firsts[i];
      const end = base + this.processes[i].layout.pageCount;
      let n = 1;
      while (k + n < ids.length && ids[k + n] >= base && ids[k + n] < end) n++;
      const local = new Uint32Array(n);
      for (let j = 0; j < n; j++) local[j] = ids[k + j] - base;
      this.processes[i].readPages(local, out.subarray(k * size, (k + n) * size));
      k += n;
    }
  }

  /** Stopping the root stops the whole tree (LiveProcessMemory.freeze walks the descendants). */
  async freeze(): Promise<void> {
    await this.root.freeze();
  }

  thaw(): void {
    this.root.thaw();
  }

  close(opts: { leaveStopped?: boolean } = {}): void {
    for (const p of this.processes.slice(1)) p.close({ leaveStopped: true });
    this.root.close(opts);
  }

  private owner(page: number): number {
    if (!Number.isInteger(page) || page < 0 || page >= this.layout.pageCount) {
      throw new RangeError(`readPages: page ${page} is outside the layout (0..${this.layout.pageCount - 1})`);
    }
    let lo = 0;
    let hi = this.firsts.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.firsts[mid] <= page) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }
}

/** Kernel threads and zombies have no memory to move. */
function isUserProcess(pid: number): boolean {
  const s = readStat(pid);
  return !!s && s.state !== 'Z' && s.state !== 'X';
}
