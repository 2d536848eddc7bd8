import { InputError } from '../util/errors.ts';
import { FRAME_HEADER_BYTES, FrameType, sealFrame } from '../transport/frame.ts';
import { codecByTag, type Codec } from './index.ts';

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

/** Builds PAGES frames of at most `limit` payload bytes. Reuses one buffer; each sealed frame is a copy. */
export class BatchWriter {
  private buf: Buffer;
  private used = 0;
  private count = 0;
  private zeros = 0;
  private readonly chain: readonly Codec[];
  private readonly pageSize: number;

  constructor(chain: readonly Codec[], pageSize: number, limit: number) {
    this.chain = chain;
    this.pageSize = pageSize;
    const worst = Math.max(...chain.map((c) => c.maxEncodedSize(pageSize)));
    this.buf = Buffer.allocUnsafe(FRAME_HEADER_BYTES + Math.max(limit, BATCH_HEAD + RECORD_HEAD + worst));
  }

  get pages(): number {
    return this.count;
  }

  /** True when one more page of the worst-case size might not fit. */
  full(): boolean {
    return this.used + RECORD_HEAD + this.pageSize > this.buf.length - FRAME_HEADER_BYTES - BATCH_HEAD;
  }

  add(id: number, page: Uint8Array, lastSent?: Uint8Array): void {
    const at = FRAME_HEADER_BYTES + BATCH_HEAD + this.used;
    for (const codec of this.chain) {
      const n = codec.encode(page, this.buf, at + RECORD_HEAD, lastSent);
      if (n < 0) continue;
      this.buf.writeUInt32LE(id, at);
      this.buf.writeUInt8(codec.tag, at + 4);
      this.buf.writeUInt32LE(n, at + 5);
      this.used += RECORD_HEAD + n;
      this.count++;
      if (n === 0) this.zeros++;
      return;
    }
    throw new Error(`codec chain ${this.chain.map((c) => c.name).join('+')} did not encode page ${id}`);
  }

  /**
   * Seals the pending pages into a frame and starts a new batch. The frame is a view of the writer's buffer:
   * valid until the next seal, so the link must be done with it when its send() resolves.
   */
  seal(round: number): { frame: Buffer; stats: BatchStats } {
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
    return { frame, stats };
  }
}

/** Decodes a PAGES payload, calling sink with each page's index and its decoded bytes. */
export function readBatch(
  payload: Buffer,
  pageCount: number,
  sink: (id: number, decodeInto: (out: Uint8Array, lastSent?: Uint8Array) => void) => void,
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
    sink(id, (out, lastSent) => codec.decode(encoded, out, lastSent));
    at = start + len;
  }
  if (at !== payload.length) throw new InputError(`PAGES frame has ${payload.length - at} trailing bytes`);
  return { round, count };
}
