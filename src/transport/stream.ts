import { checkHeader, decodeFrame, FRAME_HEADER_BYTES } from './frame.ts';

/**
 * Cuts a byte stream into whole frames. The header is checked as soon as it is complete, so a peer announcing an
 * oversized or foreign frame is refused before any of its payload is buffered; at most one frame is held.
 */
export class FrameReader {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private need = FRAME_HEADER_BYTES;
  private headerChecked = false;

  /** Adds bytes from the stream; returns the whole frames they complete (raw, checksum verified). */
  push(chunk: Buffer): Buffer[] {
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    const out: Buffer[] = [];
    while (this.buffered >= this.need) {
      if (!this.headerChecked) {
        const head = this.peek(FRAME_HEADER_BYTES);
        this.need = FRAME_HEADER_BYTES + checkHeader(head);
        this.headerChecked = true;
        continue;
      }
      const frame = this.take(this.need);
      decodeFrame(frame); // verifies the checksum
      out.push(frame);
      this.need = FRAME_HEADER_BYTES;
      this.headerChecked = false;
    }
    return out;
  }

  /** Bytes of an unfinished frame; non-zero at the end of a stream means it was cut. */
  get pending(): number {
    return this.buffered;
  }

  private peek(n: number): Buffer {
    if (this.chunks[0].length < n) this.chunks = [Buffer.concat(this.chunks)];
    return this.chunks[0].subarray(0, n);
  }

  private take(n: number): Buffer {
    const all = this.chunks.length === 1 ? this.chunks[0] : Buffer.concat(this.chunks);
    const frame = all.subarray(0, n);
    const rest = all.subarray(n);
    this.chunks = rest.length > 0 ? [rest] : [];
    this.buffered = rest.length;
    return frame;
  }
}
