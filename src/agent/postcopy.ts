/**
 * The destination agent's half of a container's post-copy: a lazy page server for `criu lazy-pages --page-server`
 * over a socket pair (src/criu/lazyserver.ts), answered from the migration's page store. A page that has
 * not arrived is a remote fault: its id goes to the source in a FAULT frame over the agents' TLS session, the
 * source sends it ahead of its background push, and the request is answered when it lands. The engine's
 * destination half sees this object as the resumed workload (arrivals, faults, fault latencies for DONE_ACK).
 */
import { encodeFrame, FrameType } from '../transport/frame.ts';
import type { ResumedWorkload } from '../engine/destination.ts';
import type { ResumedMessage } from '../engine/messages.ts';
import type { PageStore } from '../engine/pagestore.ts';
import { LazyPageServer, type LazyGet, type LazyServeStats } from '../criu/lazyserver.ts';
import type { PostcopyPages } from '../migrate/state.ts';
import type { Logger } from '../util/log.ts';

/** Whether a HELLO's strategy spec asks for a post-copy switchover (post-copy, or pre-copy rounds then post-copy). */
export function isPostcopySpec(spec: string): boolean {
  return /^(postcopy|hybrid)(:|$)/.test(spec);
}

/** Most pages one FAULT asks for: a run that starts with a missing page (64 KiB, CRIU's first background chunk). */
const FAULT_RUN = 16;

export class ContainerPostcopy implements ResumedWorkload {
  readonly server: LazyPageServer;
  private store: PageStore | null = null;
  private pages: PostcopyPages | null = null;
  private sendFault: ((frame: Buffer) => void) | null = null;
  private readonly waiting = new Map<number, (() => void)[]>();
  private readonly log: Logger;
  /** The workload's faults on pages not here yet (the daemon's one-page requests for a missing page). */
  faults = 0;
  /** Seconds from each such request to its reply (its wait behind earlier requests included). */
  readonly faultLatencies: number[] = [];
  /** The daemon's background requests that began with a missing page (answered once that page landed). */
  backgroundWaits = 0;
  /** Faults (task:vaddr) not replied to yet, whose wait goes into faultLatencies. */
  private readonly faulting = new Set<string>();
  /** Pages the daemon asked for, and of those, pages that had to come from the source first. */
  pagesRequested = 0;
  faultedPages = 0;

  private constructor(server: LazyPageServer, log: Logger) {
    this.server = server;
    this.log = log;
    server.done.then(
      (s: LazyServeStats) =>
        log.info(
          {
            requests: s.requests,
            pages: s.pages,
            faults: this.faults,
            backgroundWaits: this.backgroundWaits,
            faultedPages: this.faultedPages,
          },
          'lazy-pages daemon done',
        ),
      (err: Error) => log.warn({ reason: err.message }, 'lazy page server failed'),
    );
  }

  /**
   * Ready for the switchover. The page server listens nowhere: the restore spawns `criu lazy-pages` with its end
   * of a socket pair (src/criu/pageserver.ts, PS_SOCKET_FD), so only that daemon can ask for a page.
   */
  static prepare(log: Logger): Promise<ContainerPostcopy> {
    let self: ContainerPostcopy | null = null;
    const server = new LazyPageServer({
      source: (task, vaddr, nrPages) => {
        if (!self) throw new Error('no post-copy in progress');
        return self.serve(task, vaddr, nrPages);
      },
      onReply: (get, ms) => self?.replied(get, ms),
    });
    self = new ContainerPostcopy(server, log);
    return Promise.resolve(self);
  }

  /** The switchover: the store as it stands, where each page lives, and how FAULT frames reach the source. */
  attach(store: PageStore, pages: PostcopyPages, write: (frame: Buffer) => void): void {
    this.store = store;
    this.pages = pages;
    this.sendFault = write;
  }

  /** The migration's page store, from the switchover until close(). */
  get pageStore(): PageStore | null {
    return this.store;
  }

  /** Pages still missing here after the switchover (0 before it). */
  missing(): number {
    return this.store && this.pages ? this.store.missing() : 0;
  }

  /**
   * A new session of the source took this post-copy up again (its first was lost): FAULT frames go there now, and
   * the requests that were waiting when the link died are asked again.
   */
  reattach(write: (frame: Buffer) => void): void {
    this.sendFault = write;
    const ids = [...this.waiting.keys()];
    if (ids.length === 0) return;
    const buf = Buffer.allocUnsafe(ids.length * 4);
    ids.forEach((g, k) => buf.writeUInt32LE(g, k * 4));
    write(encodeFrame(FrameType.Fault, buf));
    this.log.info({ pages: ids.length }, 'post-copy taken up again: outstanding faults asked again');
  }

  /** Called once when the server closes (the daemon is done, or the lazy timeout). */
  onClose: (() => void) | null = null;

  get resumed(): Partial<ResumedMessage> {
    return {};
  }

  runUntil(): { page: number; at: number }[] {
    return []; // real faults come from the lazy-pages daemon, asynchronously
  }

  arrived(page: number): void {
    const w = this.waiting.get(page);
    if (!w) return;
    this.waiting.delete(page);
    for (const wake of w) wake();
  }

  private async serve(task: number, vaddr: bigint, nrPages: number): Promise<Buffer> {
    const store = this.store;
    const pages = this.pages;
    if (!store || !pages) throw new Error('the lazy-pages daemon asked for pages before the switchover');
    const where = pages.lookup(task, vaddr);
    if (!where)
      throw new Error(
        `the lazy-pages daemon asked for page 0x${vaddr.toString(16)} of task ${task}, which the dump does not hold`,
      );
    if ('extras' in where) {
      const data = Buffer.concat(where.extras.slice(0, nrPages));
      this.pagesRequested += data.length / 4096;
      return data;
    }
    const n = Math.min(nrPages, where.left);
    const { first } = where;
    if (!store.present.get(first)) {
      // Missing here: a FAULT for the run of missing pages it starts (at most FAULT_RUN), answered as soon as its
      // first page lands. The daemon asks for one page when the workload faults, and for growing chunks in the
      // background: a chunk is answered with what is here, so a fault asked after it does not wait for all of it.
      const run: number[] = [];
      for (let g = first; g < first + n && run.length < FAULT_RUN && !store.present.get(g); g++) run.push(g);
      if (nrPages === 1) {
        this.faults++;
        this.faulting.add(`${task}:${vaddr}`);
      } else this.backgroundWaits++;
      this.faultedPages += run.length;
      const landed = new Promise<void>((resolve) =>
        this.waiting.set(first, [...(this.waiting.get(first) ?? []), resolve]),
      );
      const ids = Buffer.allocUnsafe(run.length * 4);
      run.forEach((g, k) => ids.writeUInt32LE(g, k * 4));
      this.sendFault!(encodeFrame(FrameType.Fault, ids));
      await landed;
    }
    let k = 1;
    while (k < n && store.present.get(first + k)) k++;
    this.pagesRequested += k;
    return Buffer.from(store.backing.readRun(first, k));
  }

  /** The lazy server wrote a reply: a workload fault's wait, from its request to its page, goes in the latencies. */
  private replied(get: LazyGet, ms: number): void {
    if (this.faulting.delete(`${get.pid}:${get.vaddr}`)) this.faultLatencies.push(ms / 1000);
  }

  /**
   * The source's session ended. Before the switchover the server closes now. After it, the server is kept until the
   * daemon closes it: all pages here, it copies the rest in; pages missing (the link was lost), its requests for them
   * wait (the container stalls, it does not run on with pages it lacks) until the source takes the post-copy up
   * again (`precog migrate --resume`: reattach()) or the lazy timeout (env PRECOG_LAZY_TIMEOUT_MS, default 10
   * minutes) closes it. Called again by a resumed session that ends: the timer restarts.
   */
  private timer: NodeJS.Timeout | null = null;

  release(): void {
    if (!this.pages) {
      // No switchover: no daemon will come.
      this.close();
      return;
    }
    // After the switchover the daemon may not have connected yet (the push can end before the restore does).
    if (this.timer) clearTimeout(this.timer);
    const timer = setTimeout(
      () => {
        this.log.warn(
          'post-copy: the lazy-pages daemon did not finish within the lazy timeout; closing its server',
        );
        this.close();
      },
      Number(process.env.PRECOG_LAZY_TIMEOUT_MS) || 10 * 60_000,
    );
    timer.unref();
    this.timer = timer;
    const end = () => {
      clearTimeout(timer);
      this.close();
    };
    this.server.done.then(end, end);
  }

  close(): void {
    this.server.close();
    this.waiting.clear();
    const cb = this.onClose;
    this.onClose = null;
    cb?.();
    // The store's page files (the migration's directory is removed by the source once the container runs).
    try {
      this.store?.backing.close();
    } catch {
      // already closed
    }
    this.store = null;
  }
}
