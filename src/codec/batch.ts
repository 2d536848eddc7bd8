import { InputError } from '../util/errors.ts';
import { FRAME_HEADER_BYTES, FrameType, sealFrame } from '../transport/frame.ts';
import { AdaptiveRule, type AdaptiveStats, type PageKind } from './adaptive.ts';
import { LastSentCache, type CacheStats } from './cache.ts';
import { chainOptions, codecByTag, type Codec } from './index.ts';
import { CODEC_TAG } from './types.ts';

/**
 * A batch of pages in one PAGES frame. Payload layout (little endian):
 *   u32 round, u32 count, then per page: u32 page index, u8 codec tag, u32 length, length bytes.
 */
const BATCH_HEAD = 8;
const RECORD_HEAD = 9;

export interface BatchStats {
  pages: number;
  zeroPages: number;
  payloadBytes: number;
}

/** The part of the engine's Link the writer reads to measure the link rate (bandwidth-aware choice). */
export interface LinkMeter {
  readonly clock: { now(): number };
  readonly bytesSent: number;
}

export interface WriterStats {
  cache: CacheStats | null;
  adaptive: AdaptiveStats | null;
}

/**
 * Builds PAGES frames of at most `limit` payload bytes. Reuses one buffer; each sealed frame is a copy. For delta
 * chains it keeps the last-sent copy of pages (LastSentCache, sized by the chain's cache option), and for
 * adaptive chains it measures the link over the frames it hands over (the link, when given) and the CPU over the
 * pages it encodes.
 */
export class BatchWriter {
  private buf: Buffer;
  private used = 0;
  private count = 0;
  private zeros = 0;
  private readonly chain: readonly Codec[];
  private readonly pageSize: number;
  private readonly cache: LastSentCache | null;
  private readonly rule: AdaptiveRule | null;
  private readonly link: LinkMeter | undefined;
  /** Clock and link bytes when the last frame was sealed, until the link has taken it. */
  private sealedAt = -1;
  private sealedBytes = 0;

  constructor(chain: readonly Codec[], pageSize: number, limit: number, env: { link?: LinkMeter } = {}) {
    this.chain = chain;
    this.pageSize = pageSize;
    const options = chainOptions(chain);
    const usesBase = chain.some((c) => c.isDelta);
    this.cache =
      usesBase && options.cacheBytes >= pageSize ? new LastSentCache(options.cacheBytes, pageSize) : null;
    this.rule = options.adaptive ? new AdaptiveRule(pageSize, options.cpuRate) : null;
    this.link = env.link;
    const worst = Math.max(...chain.map((c) => c.maxEncodedSize(pageSize)));
    this.buf = Buffer.allocUnsafe(FRAME_HEADER_BYTES + Math.max(limit, BATCH_HEAD + RECORD_HEAD + worst));
  }

  get pages(): number {
    return this.count;
  }

  get stats(): WriterStats {
    return {
      cache: this.cache ? { ...this.cache.stats } : null,
      adaptive: this.rule ? { ...this.rule.stats } : null,
    };
  }

  /** True when one more page of the worst-case size might not fit. */
  full(): boolean {
    return this.used + RECORD_HEAD + this.pageSize > this.buf.length - FRAME_HEADER_BYTES - BATCH_HEAD;
  }

  /**
   * Adds page `id`. The writer assumes every page it is given reaches the destination (every sealed frame is sent):
   * the bytes become the page's last-sent copy. `lastSent` overrides the cache (tests, benchmarks).
   */
  add(id: number, page: Uint8Array, lastSent?: Uint8Array): void {
    if (this.link && this.sealedAt >= 0) this.measureLink();
    const at = FRAME_HEADER_BYTES + BATCH_HEAD + this.used;
    const base = lastSent ?? this.cache?.get(id);
    const kind: PageKind = base ? 'delta' : 'whole';
    const compress = this.rule ? this.rule.shouldCompress(kind) : true;
    let tried = false;
    let t0 = 0;
    for (const codec of this.chain) {
      if (codec.compresses) {
        if (!compress) continue;
        if (!tried && this.rule?.timed) t0 = performance.now();
        tried = true;
      }
      const n = codec.encode(page, this.buf, at + RECORD_HEAD, base);
      if (n < 0) continue;
      if (tried && this.rule) {
        const seconds = this.rule.timed ? (performance.now() - t0) / 1000 : 0;
        this.rule.record(kind, seconds, this.pageSize - n);
      }
      this.buf.writeUInt32LE(id, at);
      this.buf.writeUInt8(codec.tag, at + 4);
      this.buf.writeUInt32LE(n, at + 5);
      this.used += RECORD_HEAD + n;
      this.count++;
      if (codec.tag === CODEC_TAG.zero) this.zeros++;
      this.cache?.put(id, page);
      return;
    }
    throw new Error(`codec chain ${this.chain.map((c) => c.name).join('+')} did not encode page ${id}`);
  }

  /**
   * Seals the pending pages into a frame and starts a new batch. The frame is a view of the writer's buffer:
   * valid until the next seal, so the link must be done with it when its send() resolves.
   */
  seal(round: number): { frame: Buffer; stats: BatchStats } {
    if (this.link && this.sealedAt >= 0) this.measureLink();
    this.buf.writeUInt32LE(round, FRAME_HEADER_BYTES);
    this.buf.writeUInt32LE(this.count, FRAME_HEADER_BYTES + 4);
    const frame = sealFrame(
      this.buf.subarray(0, FRAME_HEADER_BYTES + BATCH_HEAD + this.used),
      FrameType.Pages,
    );
    const stats = { pages: this.count, zeroPages: this.zeros, payloadBytes: BATCH_HEAD + this.used };
    this.used = 0;
    this.count = 0;
    this.zeros = 0;
    if (this.link && this.rule) {
      this.sealedAt = this.link.clock.now();
      this.sealedBytes = this.link.bytesSent;
    }
    return { frame, stats };
  }

  /** The first call after a seal: the link has taken the frame since (the engine awaits its send). */
  private measureLink(): void {
    const link = this.link!;
    this.rule!.observeLink(link.bytesSent - this.sealedBytes, link.clock.now() - this.sealedAt);
    this.sealedAt = -1;
  }
}

/**
 * Decodes a PAGES payload, calling sink with each page's index, a function that decodes it, and whether the
 * record is a delta (decoding it needs the destination's current copy of the page, passed as lastSent).
 */
export function readBatch(
  payload: Buffer,
  pageCount: number,
  sink: (id: number, decodeInto: (out: Uint8Array, lastSent?: Uint8Array) => void, delta: boolean) => void,
): { round: number; count: number } {
  if (payload.length < BATCH_HEAD)
    throw new InputError(`PAGES frame of ${payload.length} bytes has no batch header`);
  const round = payload.readUInt32LE(0);
  const count = payload.readUInt32LE(4);
  let at = BATCH_HEAD;
  for (let k = 0; k < count; k++) {
    if (at + RECORD_HEAD > payload.length)
      throw new InputError(`PAGES frame truncated in record ${k} of ${count}`);
    const id = payload.readUInt32LE(at);
    const codec = codecByTag(payload.readUInt8(at + 4));
    const len = payload.readUInt32LE(at + 5);
    const start = at + RECORD_HEAD;
    if (start + len > payload.length) throw new InputError(`PAGES frame truncated in page ${id}`);
    if (id >= pageCount) throw new InputError(`page index ${id} outside the layout of ${pageCount} pages`);
    const encoded = payload.subarray(start, start + len);
    const decodeInto = (out: Uint8Array, lastSent?: Uint8Array): void => {
      try {
        codec.decode(encoded, out, lastSent);
      } catch (e) {
        if (e instanceof InputError) throw new InputError(`page ${id}: ${e.message}`, { cause: e });
        throw e;
      }
    };
    sink(id, decodeInto, codec.isDelta?.(encoded) ?? false);
    at = start + len;
  }
  if (at !== payload.length) throw new InputError(`PAGES frame has ${payload.length - at} trailing bytes`);
  return { round, count };
}
