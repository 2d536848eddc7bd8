import { InputError } from '../util/errors.ts';
import { CODEC_TAG, noBase, type Codec } from './types.ts';

/**
 * XBZRLE, as QEMU's: the page against the copy the destination holds, as pairs of (unchanged run, changed run),
 * each length an unsigned LEB128 varint, each changed run followed by its new bytes. Unchanged bytes after the
 * last changed run are implied; an unchanged page is an empty record. Applies only with a last-sent copy and when
 * the record is shorter than the page (QEMU falls back to the raw page the same way). Unlike QEMU, unchanged gaps
 * of 1-2 bytes inside a changed run stay in it: two varints would cost as much as the bytes.
 */
const MIN_GAP = 3;
/** Varints of a run within a page: 3 bytes cover runs up to 2 MiB. */
const MAX_VARINT_BYTES = 3;

function varint(out: Uint8Array, o: number, v: number): number {
  while (v >= 0x80) {
    out[o++] = (v & 0x7f) | 0x80;
    v >>>= 7;
  }
  out[o++] = v;
  return o;
}

/** First index >= i where a and b differ (n when none). */
function sameUntil(
  a: Uint8Array,
  b: Uint8Array,
  a32: Uint32Array | null,
  b32: Uint32Array | null,
  i: number,
): number {
  const n = a.length;
  if (a32 && b32) {
    while (i < n && (i & 3) !== 0 && a[i] === b[i]) i++;
    if (i < n && (i & 3) === 0) {
      let w = i >>> 2;
      const words = n >>> 2;
      while (w < words && a32[w] === b32[w]) w++;
      i = w << 2;
    }
  }
  while (i < n && a[i] === b[i]) i++;
  return i;
}

function words(a: Uint8Array): Uint32Array | null {
  return a.byteOffset % 4 === 0 ? new Uint32Array(a.buffer, a.byteOffset, a.length >>> 2) : null;
}

export const xbzrleCodec: Codec = {
  name: 'xbzrle',
  tag: CODEC_TAG.xbzrle,
  compresses: true,
  encode(page, out, offset, lastSent) {
    if (!lastSent) return -1;
    const n = page.length;
    const limit = offset + n - 1;
    const p32 = words(page);
    const b32 = words(lastSent);
    let o = offset;
    let i = 0;
    for (;;) {
      const start = sameUntil(page, lastSent, p32, b32, i);
      if (start === n) break;
      let end = start + 1;
      for (;;) {
        while (end < n && page[end] !== lastSent[end]) end++;
        let gap = 0;
        while (gap < MIN_GAP && end + gap < n && page[end + gap] === lastSent[end + gap]) gap++;
        if (gap < MIN_GAP && end + gap < n) end += gap;
        else break;
      }
      if (o + 2 * MAX_VARINT_BYTES + (end - start) > limit) return -1;
      o = varint(out, o, start - i);
      o = varint(out, o, end - start);
      out.set(page.subarray(start, end), o);
      o += end - start;
      i = end;
    }
    return o - offset;
  },
  decode(encoded, out, lastSent) {
    if (!lastSent) throw noBase('xbzrle');
    const size = out.length;
    const len = encoded.length;
    let ip = 0;
    const readVarint = (what: string): number => {
      let v = 0;
      for (let k = 0; k < MAX_VARINT_BYTES; k++) {
        if (ip >= len) throw new InputError(`xbzrle record truncated in the ${what} length at byte ${ip}`);
        const b = encoded[ip++];
        v |= (b & 0x7f) << (7 * k);
        if ((b & 0x80) === 0) return v;
      }
      throw new InputError(
        `xbzrle record has a ${what} length longer than ${MAX_VARINT_BYTES} bytes at byte ${ip}`,
      );
    };
    // Checked whole before anything is written: out may be the destination's copy of the page itself.
    let op = 0;
    while (ip < len) {
      op += readVarint('unchanged run');
      const changed = readVarint('changed run');
      if (changed === 0) throw new InputError(`xbzrle record has an empty changed run at byte ${ip}`);
      if (ip + changed > len)
        throw new InputError(`xbzrle record truncated: a changed run of ${changed} bytes, ${len - ip} left`);
      op += changed;
      if (op > size)
        throw new InputError(`xbzrle record decodes to more than ${size} bytes (runs reach ${op})`);
      ip += changed;
    }
    if (out !== lastSent) out.set(lastSent);
    ip = 0;
    op = 0;
    while (ip < len) {
      op += readVarint('unchanged run');
      const changed = readVarint('changed run');
      out.set(encoded.subarray(ip, ip + changed), op);
      ip += changed;
      op += changed;
    }
  },
  isDelta: () => true,
  maxEncodedSize: (pageSize) => pageSize - 1,
};
