import { checkHeader, FRAME_HEADER_BYTES } from './frame.ts';

/**
 * Cuts a byte stream into whole frames. The header is checked as soon as it is complete, so a peer announcing an
 * oversized or foreign frame is refused before any of its payload is buffered; at most one frame is held.
 */
export class FrameReader {
  /** Assembly buffer, reused: frames are views into it, valid until the next push(). */
  private buf = Buffer.alloc(0);
  private start = 0;
  private end = 0;

  /**
   * Adds bytes from the stream; returns the whole frames they complete (raw: decodeFrame checks the checksum).
   * The frames are views valid until the next call: handle them before reading more.
   */
  push(chunk: Buffer): Buffer[] {
    this.append(chunk);
    const out: Buffer[] = [];
    for (;;) {
      const avail = this.end - this.start;
      if (avail < FRAME_HEADER_BYTES) break;
      const need =
        FRAME_HEADER_BYTES + checkHeader(this.buf.subarray(this.start, this.start + FRAME_HEADER_BYTES));
      if (avail < need) {
        this.reserve(need);
        break;
      }
      out.push(this.buf.subarray(this.start, this.start + need));
      this.start += need;
    }
    return out;
  }

  /** Bytes of an unfinished frame; non-zero at the end of a stream means it was cut. */
  get pending(): number {
    return this.end - this.start;
  }

  private append(chunk: Buffer): void {
    if (this.start === this.end) this.start = this.end = 0;
    this.reserve(this.end - this.start + chunk.length);
    chunk.copy(this.buf, this.end);
    this.end += chunk.length;
  }

  /** Makes room for `bytes` from start, moving what is pending to the front (frames handed out are done by now). */
  private reserve(bytes: number): void {
    if (this.start + bytes <= this.buf.length) return;
    if (bytes <= this.buf.length) {
      this.buf.copy(this.buf, 0, this.start, this.end);
    } else {
      const next = Buffer.allocUnsafe(Math.max(bytes, 2 * this.buf.length, 64 * 1024));
      this.buf.copy(next, 0, this.start, this.end);
      this.buf = next;
    }
    this.end -= this.start;
    this.start = 0;
  }
}
