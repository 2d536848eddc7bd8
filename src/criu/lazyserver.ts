/**
 * CRIU's page server, serving side, for post-copy: `criu lazy-pages --page-server --ps-socket 3` asks this server,
 * on the socket pair precog spawned it with, for the pages of the restored tasks, those they fault on first and then
 * the rest in the background. precog's destination agent runs it and answers from its page store, asking the source
 * over the agents' TLS link for every page that has not arrived yet (src/agent/agent.ts).
 * CRIU's own serving side (`criu page-server --lazy-pages` at the source) does not work on this kernel
 * (this kernel refuses its tee() on the page pipe with EPERM), and it would be a second, unauthenticated channel.
 *
 * The protocol, from CRIU's criu/page-xfer.c and criu/uffd.c (v4.2), facts only:
 * - the daemon sends `page_server_iov` headers (docs/criu-pageserver.md for both layouts): GET (7) with
 *   `nr_pages`, `vaddr` and `dst_id` = the task's PID in the dump (plain, not encoded as a pagemap id);
 * - the reply to a GET is a header with cmd = ADD_F | PE_PRESENT << 16, the same vaddr and dst_id, `nr_pages` at
 *   most the number asked for (the daemon accepts fewer), then nr_pages * 4096 bytes of data;
 * - replies go in the order of the requests: the daemon matches each reply to its oldest outstanding request;
 * - at the end the daemon sends CLOSE (or FORCE_CLOSE) and waits for a 4-byte int32 status (0).
 * Anything else (another command, a run of 0 pages, an unaligned vaddr, a connection that ends without CLOSE) is an
 * error: the server resets the connection and `done` rejects.
 */
import type net from 'node:net';
import {
  commandName,
  encodeIov,
  psCmd,
  PS_IOV_ADD_F,
  PS_IOV_CLOSE,
  PS_IOV_FORCE_CLOSE,
  PS_IOV_GET,
  type IovLayout,
  type PsConnection,
} from './pageserver.ts';
import { PAGE_SIZE, PE_PRESENT } from './pages.ts';
import { ProtocolError } from '../util/errors.ts';

/**
 * Where the pages come from: `nrPages` pages of task `pid` (as the dump names it) from `vaddr`, or fewer (>= 1: the
 * daemon puts the rest of the range back on its list and asks again). Called as each request arrives, several at
 * once.
 */
export type LazyPageSource = (pid: number, vaddr: bigint, nrPages: number) => Promise<Buffer> | Buffer;

export interface LazyServeStats {
  /** GET requests answered, pages and bytes of page data sent. */
  requests: number;
  pages: number;
  bytes: number;
  /** The header layout the daemon used (24: CRIU up to 4.1, 32: 4.2 on). */
  layout: IovLayout;
  /** Milliseconds from each GET's arrival to its reply (in order). */
  latenciesMs: number[];
}

export interface LazyServerOptions {
  source: LazyPageSource;
  layout?: IovLayout | null;
  /** After each reply is written: the request and milliseconds from its arrival (its wait in line included). */
  onReply?: (get: LazyGet, ms: number) => void;
}

/** The most pages one GET may ask for (the daemon asks for a fault's page or a background chunk). */
export const MAX_GET_PAGES = 1 << 18;

export interface LazyGet {
  pid: number;
  vaddr: bigint;
  nrPages: number;
}

/**
 * The protocol without I/O: feed it bytes, get the requests. The first GET tells the header layout (see push).
 */
export class LazyServeSession {
  private buf: Buffer = Buffer.alloc(0);
  private offset = 0;
  layout: IovLayout | null;
  closed = false;

  constructor(layout: IovLayout | null = null) {
    this.layout = layout;
  }

  /** Parses what it can; returns the GETs in order and whether CLOSE came. Throws a ProtocolError on bad input. */
  push(bytes: Buffer): { gets: LazyGet[]; close: boolean } {
    if (this.closed && bytes.length) throw this.error(`${bytes.length} bytes after CLOSE`);
    this.buf = this.buf.length ? Buffer.concat([this.buf, bytes]) : bytes;
    const gets: LazyGet[] = [];
    for (;;) {
      if (this.buf.length < 8) break;
      const cmd = this.buf.readUInt32LE(0);
      const command = cmd & 0xffff;
      if (command === PS_IOV_CLOSE || command === PS_IOV_FORCE_CLOSE) {
        // A CLOSE before any GET does not tell the layout: precog's test hosts run CRIU 4.2 (32 bytes).
        const need = this.layout ?? 32;
        if (this.buf.length < need) break;
        if (this.buf.length > need) throw this.error(`${this.buf.length - need} bytes after CLOSE`);
        this.buf = Buffer.alloc(0);
        this.offset += need;
        this.closed = true;
        return { gets, close: true };
      }
      if (command !== PS_IOV_GET)
        throw this.error(
          `${commandName(cmd)} (0x${cmd.toString(16)}): only GET and CLOSE are served (this is the lazy-pages side)`,
        );
      // The layout from the u64 at offset 8: nr_pages in CRIU 4.2's (small), vaddr in 4.1's (a user address, far
      // above any GET's page count). Not the padding after cmd: CRIU leaves it uninitialised.
      if (this.layout === null && this.buf.length >= 16)
        this.layout = this.buf.readBigUInt64LE(8) <= BigInt(MAX_GET_PAGES) ? 32 : 24;
      if (this.layout === null) break;
      if (this.buf.length < this.layout) break;
      const get =
        this.layout === 24
          ? {
              nrPages: this.buf.readUInt32LE(4),
              vaddr: this.buf.readBigUInt64LE(8),
              dst: this.buf.readBigUInt64LE(16),
            }
          : {
              nrPages: Number(this.buf.readBigUInt64LE(8)),
              vaddr: this.buf.readBigUInt64LE(16),
              dst: this.buf.readBigUInt64LE(24),
            };
      const at = this.offset;
      this.buf = this.buf.subarray(this.layout);
      this.offset += this.layout;
      if (get.nrPages <= 0 || get.nrPages > MAX_GET_PAGES)
        throw this.error(`GET of ${get.nrPages} pages (1 to ${MAX_GET_PAGES})`, at);
      if (get.vaddr % BigInt(PAGE_SIZE) !== 0n)
        throw this.error(`GET at unaligned address 0x${get.vaddr.toString(16)}`, at);
      if (get.dst <= 0n || get.dst > 0x7fffffffn) throw this.error(`GET for task ${get.dst}: not a PID`, at);
      gets.push({ pid: Number(get.dst), vaddr: get.vaddr, nrPages: get.nrPages });
    }
    return { gets, close: false };
  }

  /** The reply header for pages of a GET. */
  replyHeader(get: LazyGet, nrPages: number): Buffer {
    return encodeIov(
      { cmd: psCmd(PS_IOV_ADD_F, PE_PRESENT), nrPages, vaddr: get.vaddr, dstId: BigInt(get.pid) },
      this.layout ?? 32,
    );
  }

  private error(msg: string, at = this.offset): ProtocolError {
    return new ProtocolError(`lazy page server: at offset ${at}: ${msg}`);
  }
}

/** The status CLOSE is answered with: 0, all went well. */
const CLOSE_OK = Buffer.alloc(4);

/**
 * The lazy page server of one `criu lazy-pages --page-server --ps-socket 3` daemon: it serves the socket it is given
 * (precog's end of the pair whose other end the daemon got, src/criu/pageserver.ts PS_SOCKET_FD) and never listens,
 * so no other process can ask it for a page. `done` resolves with the statistics when the daemon sends CLOSE, and
 * rejects when the connection ends otherwise or a request cannot be answered (the source's error is kept).
 */
export class LazyPageServer implements PsConnection {
  readonly done: Promise<LazyServeStats>;
  private socket: net.Socket | null = null;
  private closed = false;
  private readonly o: LazyServerOptions;
  private resolveDone!: (s: LazyServeStats) => void;
  private rejectDone!: (e: Error) => void;

  constructor(o: LazyServerOptions) {
    this.o = o;
    this.done = new Promise<LazyServeStats>((res, rej) => {
      this.resolveDone = res;
      this.rejectDone = rej;
    });
    this.done.catch(() => {}); // observed by whoever awaits it; never an unhandled rejection
  }

  attach(socket: net.Socket): void {
    if (this.socket || this.closed) {
      socket.destroy();
      throw new Error('lazy page server: a second connection (one daemon per page server)');
    }
    this.socket = socket;
    const { o } = this;
    const resolveDone = this.resolveDone;
    const rejectDone = this.rejectDone;
    const session = new LazyServeSession(o.layout ?? null);
    const stats: LazyServeStats = { requests: 0, pages: 0, bytes: 0, layout: 32, latenciesMs: [] };
    let chain: Promise<void> = Promise.resolve();
    let failed = false;
    const fail = (err: Error) => {
      if (failed) return;
      failed = true;
      socket.destroy();
      rejectDone(err);
    };
    socket.on('data', (bytes: Buffer) => {
      let parsed: { gets: LazyGet[]; close: boolean };
      try {
        parsed = session.push(bytes);
      } catch (err) {
        fail(err as Error);
        return;
      }
      const arrived = performance.now();
      for (const get of parsed.gets) {
        // Asked at once (a fault's page is on its way from the source while an earlier request still waits), but
        // replied in order: the daemon matches replies to requests by order.
        const asked = (async () => o.source(get.pid, get.vaddr, get.nrPages))();
        asked.catch(() => {}); // its error is taken in turn below
        chain = chain.then(async () => {
          if (failed) return;
          const data = await asked;
          const n = Math.floor(data.length / PAGE_SIZE);
          if (n < 1 || n > get.nrPages || data.length % PAGE_SIZE !== 0)
            throw new Error(
              `the page source answered ${data.length} bytes for ${get.nrPages} page(s) of task ${get.pid} at 0x${get.vaddr.toString(16)}`,
            );
          socket.write(session.replyHeader(get, n));
          socket.write(data);
          stats.requests++;
          stats.pages += n;
          stats.bytes += data.length;
          const ms = performance.now() - arrived;
          stats.latenciesMs.push(ms);
          o.onReply?.(get, ms);
        });
      }
      chain = chain.catch((err: Error) => fail(err));
      if (parsed.close)
        void chain.then(() => {
          if (failed) return;
          stats.layout = session.layout ?? 32;
          socket.end(CLOSE_OK);
          resolveDone(stats);
        });
    });
    socket.on('error', (err) =>
      fail(new Error(`lazy page server: the daemon's connection failed: ${err.message}`)),
    );
    socket.on('close', () => {
      if (!session.closed)
        fail(new Error('lazy page server: the daemon closed the connection without CLOSE'));
    });
  }

  /** Whether the daemon's connection was handed over. */
  get connected(): boolean {
    return this.socket !== null;
  }

  /** Drops the daemon's connection (done rejects if it had not closed, or if it never came). */
  close(): void {
    this.closed = true;
    if (this.socket) this.socket.destroy();
    else this.rejectDone(new Error('lazy page server closed before the daemon came'));
  }
}
