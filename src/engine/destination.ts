import { Bitmap } from '../util/bitmap.ts';
import { ProtocolError, peerValue } from '../util/errors.ts';
import { readBatch } from '../codec/batch.ts';
import {
  decodeFrame,
  FrameType,
  jsonFrame,
  parseJson,
  encodeFrame,
  PROTOCOL_VERSION,
} from '../transport/frame.ts';
import { PageStore, type PageBacking } from './pagestore.ts';
import { PAGE_SIZE, type Arrival, type Layout } from '../util/interfaces.ts';
import type { CommitMessage, DoneAck, HelloMessage, ResumedMessage, SwitchoverMessage } from './messages.ts';

/** A process resumed at the destination before all its pages are here (post-copy). */
export interface ResumedWorkload {
  runUntil(now: number): { page: number; at: number }[];
  arrived(page: number, at: number): void;
  readonly faults: number;
  readonly faultLatencies: number[];
  /** What the RESUMED reply carries besides the time (a container's post-copy: where its pages are served). */
  readonly resumed?: Partial<ResumedMessage>;
  /** Pages the resumed workload asked for in all (faults are those of them that were not here yet). */
  readonly pagesRequested?: number;
}

/** What the destination half needs from its host: restore cost, integrity checks, a way to resume the workload. */
export interface DestinationEnvironment {
  /** Most pages a LAYOUT may declare (default maxLayoutPages()). */
  maxPages?: number;
  /** Seconds from having all state to running (CRIU restore, in real runs). */
  restoreCost: number;
  /** Checks the given pages of the store against the truth; throws InvariantError on any difference. */
  verifyPages?(store: PageStore, pages: Bitmap): void;
  /** Checks one page as it lands during post-copy. */
  verifyPage?(page: number, bytes: Buffer): void;
  /** Starts the workload at the destination during post-copy. */
  resume?(store: PageStore, at: number): ResumedWorkload;
  /** Where to keep the pages of a migration (default: a new buffer in memory). */
  backing?(layout: Layout, migrationId: string, hello: HelloMessage): PageBacking;
  /** Each piece of the source's non-memory state as it arrives (in order), to keep it. */
  state?(chunk: Buffer, migrationId: string): void;
  /** Called when the source commits, after the checks and before the reply (persist, restore...). */
  commit?(store: PageStore, migrationId: string): void;
  /** Called when the migration is abandoned (abort frame or a lost source) to remove what it kept. */
  discard?(migrationId: string): void;
  /**
   * A HELLO with purpose 'postcopy-resume': the store and the resumed workload of that migration's post-copy,
   * kept since its source was lost; throws (a ProtocolError naming the migration) when there is none.
   */
  adopt?(migrationId: string): { store: PageStore; process: ResumedWorkload };
}

type State = 'hello' | 'layout' | 'receiving' | 'resumed' | 'postcopy' | 'done';

/**
 * The destination half of a migration: keeps the page store, checks that messages come in order, resumes the
 * workload when told to, and reports when it has everything.
 */
/**
 * Most pages one migration may declare (its LAYOUT): what the destination allocates per-page state and a page file
 * for before any page arrives. PRECOG_MAX_PAGES, default 2^24 (64 GiB of 4 KiB pages).
 */
export const maxLayoutPages = (): number => {
  const v = Number(process.env.PRECOG_MAX_PAGES);
  return Number.isSafeInteger(v) && v > 0 ? v : 1 << 24;
};
/** Most regions one LAYOUT may have. */
export const MAX_LAYOUT_REGIONS = 1 << 20;
/**
 * Most processes (distinct pids) one LAYOUT may name: a container's pages are kept in one open file per process.
 * PRECOG_MAX_PROCESSES, default 1024.
 */
export const maxLayoutProcesses = (): number => {
  const v = Number(process.env.PRECOG_MAX_PROCESSES);
  return Number.isSafeInteger(v) && v > 0 ? v : 1024;
};

/**
 * Why a LAYOUT a peer sent must not be taken, or null: the page size this build restores (4 KiB), a whole number of
 * pages within the limit, regions (hex start, whole pages, integer pid) whose pages add up to that number.
 */
export function layoutRefusal(
  layout: Layout,
  maxPages: number,
  maxProcesses = maxLayoutProcesses(),
): string | null {
  if (typeof layout !== 'object' || layout === null) return 'not a JSON object';
  if (layout.pageSize !== PAGE_SIZE) return `page size ${peerValue(layout.pageSize)}, expected ${PAGE_SIZE}`;
  const n = layout.pageCount;
  if (!Number.isSafeInteger(n) || n < 1) return `page count ${peerValue(n)} is not a positive whole number`;
  if (n > maxPages) return `${n} pages is more than this destination takes (${maxPages}: PRECOG_MAX_PAGES)`;
  if (
    !Array.isArray(layout.regions) ||
    layout.regions.length < 1 ||
    layout.regions.length > MAX_LAYOUT_REGIONS
  )
    return `regions must be a list of 1 to ${MAX_LAYOUT_REGIONS}`;
  let sum = 0;
  const pids = new Set<number>();
  let lastPid: number | undefined;
  for (const r of layout.regions) {
    if (
      typeof r !== 'object' ||
      r === null ||
      typeof r.start !== 'string' ||
      !/^(0x)?[0-9a-f]{1,16}$/i.test(r.start)
    )
      return `region start ${peerValue((r as { start?: unknown })?.start)} is not a hex address`;
    if (!Number.isSafeInteger(r.pages) || r.pages < 1)
      return `region ${r.start} has ${peerValue(r.pages)} pages`;
    if (r.pid !== undefined && (!Number.isSafeInteger(r.pid) || r.pid < 0))
      return `region ${r.start} has pid ${peerValue(r.pid)}`;
    const pid = r.pid ?? 0;
    if (pid !== lastPid) {
      if (pids.has(pid)) return `the regions of process ${pid} are not consecutive`;
      pids.add(pid);
      if (pids.size > maxProcesses)
        return `more than ${maxProcesses} processes, more than this destination takes (PRECOG_MAX_PROCESSES)`;
      lastPid = pid;
    }
    sum += r.pages;
  }
  if (sum !== n) return `regions hold ${sum} pages, the layout says ${n}`;
  return null;
}

export class MigrationDestination {
  private state: State = 'hello';
  private readonly env: DestinationEnvironment;
  store: PageStore | null = null;
  migrationId = '';
  hello: HelloMessage | null = null;
  stateBytes = 0;
  private process: ResumedWorkload | null = null;
  private lastArrival = 0;
  private resumedAt = 0;
  private handedOver = false;
  private abandoned = false;

  constructor(env: DestinationEnvironment) {
    this.env = env;
  }

  private expect(...states: State[]): void {
    if (!states.includes(this.state)) {
      throw new ProtocolError(`out-of-order message: the destination is in state "${this.state}"`);
    }
  }

  handle(raw: Buffer, at: number): Arrival[] {
    const frame = decodeFrame(raw);
    switch (frame.type) {
      case FrameType.Hello: {
        this.expect('hello');
        const hello = parseJson<HelloMessage>(frame);
        if (typeof hello !== 'object' || hello === null || Array.isArray(hello))
          throw new ProtocolError('HELLO is not a JSON object');
        if (hello.version !== PROTOCOL_VERSION) {
          throw new ProtocolError(
            `peer speaks protocol ${hello.version}, this destination ${PROTOCOL_VERSION}`,
          );
        }
        if (
          typeof hello.migrationId !== 'string' ||
          !/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/.test(hello.migrationId)
        ) {
          throw new ProtocolError(
            'HELLO carries an invalid migration id (letters, digits, . _ - only, at most 64)',
          );
        }
        this.migrationId = hello.migrationId;
        this.hello = hello;
        if (hello.purpose === 'postcopy-resume') {
          if (!this.env.adopt)
            throw new ProtocolError('this destination cannot take up a post-copy again (postcopy-resume)');
          const { store, process } = this.env.adopt(hello.migrationId);
          this.store = store;
          this.process = process;
          this.handedOver = true;
          this.state = 'postcopy';
          const missing = new Bitmap(store.layout.pageCount);
          for (let g = 0; g < store.layout.pageCount; g++) if (!store.present.get(g)) missing.set(g);
          const sw: SwitchoverMessage = { missing: bitmapToBase64(missing) };
          return [
            { frame: jsonFrame(FrameType.HelloAck, { version: PROTOCOL_VERSION, acks: true }), at },
            { frame: jsonFrame(FrameType.Layout, store.layout), at },
            { frame: jsonFrame(FrameType.Switchover, sw), at },
          ];
        }
        this.state = 'layout';
        return [{ frame: jsonFrame(FrameType.HelloAck, { version: PROTOCOL_VERSION, acks: true }), at }];
      }
      case FrameType.Layout: {
        this.expect('layout');
        const layout = parseJson<Layout>(frame);
        const bad = layoutRefusal(layout, this.env.maxPages ?? maxLayoutPages());
        if (bad) throw new ProtocolError(`LAYOUT refused: ${bad}`);
        this.store = new PageStore(layout, this.env.backing?.(layout, this.migrationId, this.hello!));
        this.state = 'receiving';
        return [];
      }
      case FrameType.Pages: {
        this.expect('receiving', 'postcopy');
        const store = this.store!;
        const postcopy = this.state === 'postcopy';
        readBatch(frame.payload, store.layout.pageCount, (id, decodeInto, delta) => {
          const base = delta ? store.base(id) : undefined;
          const page = store.backing.slot(id);
          decodeInto(page, base);
          store.backing.settle(id);
          store.present.set(id);
          store.received.set(id);
          store.arrival[id] = at;
          if (postcopy) {
            this.env.verifyPage?.(id, page);
            this.process?.arrived(id, at);
          }
        });
        store.backing.flush();
        this.lastArrival = at;
        // During a post-copy each batch is acknowledged once stored: the source paces its push by these.
        return postcopy ? [{ frame: encodeFrame(FrameType.PagesAck, EMPTY), at }] : [];
      }
      case FrameType.RoundEnd:
        this.expect('receiving');
        this.store?.backing.writeBack?.();
        return [];
      case FrameType.State:
        this.expect('receiving');
        this.stateBytes += frame.payload.length;
        if (frame.payload.length > 0) this.env.state?.(frame.payload, this.migrationId);
        return [];
      case FrameType.Commit: {
        this.expect('receiving');
        const store = this.store!;
        parseJson<CommitMessage>(frame);
        const missing = store.missing();
        if (missing > 0) throw new ProtocolError(`COMMIT with ${missing} pages never received`);
        this.env.verifyPages?.(store, store.present);
        this.env.commit?.(store, this.migrationId);
        this.handedOver = true;
        this.resumedAt = at + this.env.restoreCost;
        this.state = 'resumed';
        const msg: ResumedMessage = { resumedAt: this.resumedAt };
        return [{ frame: jsonFrame(FrameType.Resumed, msg), at: this.resumedAt }];
      }
      case FrameType.Switchover: {
        this.expect('receiving');
        const store = this.store!;
        const msg = parseJson<SwitchoverMessage>(frame);
        const stale = bitmapFromBase64(msg.missing, store.layout.pageCount);
        store.invalidate(stale);
        this.env.verifyPages?.(store, store.present);
        this.resumedAt = at + this.env.restoreCost;
        this.process = this.env.resume?.(store, this.resumedAt) ?? null;
        this.handedOver = true;
        this.state = 'postcopy';
        const reply: ResumedMessage = { ...this.process?.resumed, resumedAt: this.resumedAt };
        return [{ frame: jsonFrame(FrameType.Resumed, reply), at: this.resumedAt }];
      }
      case FrameType.PostcopyDone: {
        this.expect('postcopy');
        const store = this.store!;
        const missing = store.missing();
        if (missing > 0) throw new ProtocolError(`post-copy finished with ${missing} pages never received`);
        this.process?.runUntil(at);
        this.state = 'done';
        const ack: DoneAck = {
          lastArrival: this.lastArrival,
          faults: this.process?.faults ?? 0,
          faultLatencies: this.process?.faultLatencies ?? [],
          ...(this.process?.pagesRequested !== undefined ? { requested: this.process.pagesRequested } : {}),
        };
        return [{ frame: jsonFrame(FrameType.DoneAck, ack), at }];
      }
      case FrameType.Abort:
        this.abandon();
        return [];
      default:
        throw new ProtocolError(`unexpected ${FrameType[frame.type]} frame at the destination`);
    }
  }

  /** True once the source has handed over (commit or post-copy switchover): the copy here is the live one. */
  get committed(): boolean {
    return this.handedOver;
  }

  /** Drops an unfinished migration: frees the store and lets the host remove what it kept. */
  abandon(): void {
    if (this.handedOver || this.abandoned) return;
    this.abandoned = true;
    try {
      this.store?.backing.close();
    } catch {
      // Writing out what was buffered failed (a full disk, say): it is being thrown away anyway.
    }
    this.store = null;
    if (this.migrationId) this.env.discard?.(this.migrationId);
    this.state = 'done';
  }

  tick(now: number): Arrival[] {
    if (this.state !== 'postcopy' || !this.process) return [];
    return this.process.runUntil(now).map((f) => {
      const ids = Buffer.allocUnsafe(4);
      ids.writeUInt32LE(f.page, 0);
      return { frame: encodeFrame(FrameType.Fault, ids), at: f.at };
    });
  }
}

const EMPTY = Buffer.alloc(0);

export function bitmapToBase64(b: Bitmap): string {
  return Buffer.from(b.words.buffer, b.words.byteOffset, b.words.byteLength).toString('base64');
}

/** The bitmap bitmapToBase64 encoded, for `size` pages; a payload of another length is refused. */
export function bitmapFromBase64(base64: string, size: number): Bitmap {
  const bytes = Buffer.from(base64, 'base64');
  const words = new Uint32Array((size + 31) >>> 5);
  if (bytes.length !== words.byteLength) {
    throw new ProtocolError(`SWITCHOVER bitmap of ${bytes.length} bytes, expected ${words.byteLength}`);
  }
  new Uint8Array(words.buffer).set(bytes);
  return new Bitmap(size, words);
}
