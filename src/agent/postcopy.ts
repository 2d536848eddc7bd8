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
import { LazyPageServer, type LazyServeStats } from '../criu/lazyserver.ts';
import type { PostcopyPages } from '../migrate/state.ts';
import type { Logger } from '../util/log.ts';

/** Whether a HELLO's strategy spec asks for a post-copy switchover (post-copy, or pre-copy rounds then post-copy). */
export function isPostcopySpec(spec: string): boolean {
  return /^(postcopy|hybrid)(:|$)/.test(spec);
}

export class ContainerPostcopy implements ResumedWorkload {
  readonly server: LazyPageServer;
  private store: PageStore | null = null;
  private pages: PostcopyPages | null = null;
  private sendFault: ((frame: Buffer) => void) | null = null;
  private readonly waiting = new Map<number, (() => void)[]>();
  private readonly log: Logger;
  faults = 0;
  /** Seconds from a request for missing pages to their arrival. */
  readonly faultLatencies: number[] = [];
  /** Pages the daemon asked for, and of those, pages that had to come from the source first. */
  pagesRequested = 0;
  faultedPages = 0;

  private constructor(server: LazyPageServer, log: Logger) {
    this.server = server;
    this.log = log;
    server.done.then(
      (s: LazyServeStats) =>
        log.info(
          { requests: s.requests, pages: s.pages, faults: this.faults, faultedPages: this.faultedPages },
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
    this.pagesRequested += n;
    const missing: number[] = [];
    for (let g = where.first; g < where.first + n; g++) if (!store.present.get(g)) missing.push(g);
    if (missing.length) {
      const t0 = performance.now();
      this.faults++;
      this.faultedPages += missing.length;
      const landed = missing.map(
        (g) => new Promise<void>((resolve) => this.waiting.set(g, [...(this.waiting.get(g) ?? []), resolve])),
      );
      const ids = Buffer.allocUnsafe(missing.length * 4);
      missing.forEach((g, k) => ids.writeUInt32LE(g, k * 4));
      this.sendFault!(encodeFrame(FrameType.Fault, ids));
      await Promise.all(landed);
      this.faultLatencies.push((performance.now() - t0) / 1000);
    }
    return Buffer.from(store.backing.readRun(where.first, n));
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
