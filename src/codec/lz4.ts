import { compressSync } from 'lz4-napi';
import { InputError } from '../util/errors.ts';
import { looksIncompressible, wordsOf } from './bytes.ts';

/**
 * LZ4 block format (no frame, no size prefix) for single pages.
 *
 * Whole pages go through lz4-napi (lz4_flex, a full LZ4 match finder). XOR deltas do not: the XOR in JavaScript and
 * a native call per 4 KiB page run at well under half the 1 GB/s goal (bench/codec.ts, row "xor + lz4-napi"). A
 * delta is mostly zero bytes, so xorDeltaBlock fuses the XOR with an LZ4 encoder that knows only one kind of match,
 * a run of zeros (a zero literal, then a match at offset 1): it compares the page with its base four 32-bit words
 * at a time and touches output only where they differ. Its output is an ordinary LZ4 block (test/codec.test.ts
 * decodes it with lz4-napi too), and decodeBlock reads any LZ4 block, checking every length against the page.
 */
const MIN_MATCH = 4;
/** The last 5 bytes of a block are literals, and the last match starts at least 12 bytes before its end. */
const LAST_LITERALS = 5;
const MATCH_SAFE = 12;
/** A zero run shorter than this stays in the literals: a match costs a token, an offset and a zero literal. */
const MIN_RUN = 12;

/** Worst-case size of an LZ4 block of n bytes (incompressible input). */
export function lz4Bound(n: number): number {
  return n + Math.ceil(n / 255) + 16;
}

function lengthBytes(len: number): number {
  return len >= 15 ? Math.floor((len - 15) / 255) + 1 : 0;
}

function writeLength(out: Uint8Array, o: number, len: number): number {
  let rest = len - 15;
  while (rest >= 255) {
    out[o++] = 255;
    rest -= 255;
  }
  out[o++] = rest;
  return o;
}

const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

let alignedPage = new Uint8Array(0);
let alignedBase = new Uint8Array(0);

/**
 * LZ4 of page XOR base, written at out[at..limit). Returns the block's length, or -1 when it would not fit before
 * limit (the caller then sends the page another way).
 */
export function xorDeltaBlock(
  page: Uint8Array,
  base: Uint8Array,
  out: Uint8Array,
  at: number,
  limit: number,
): number {
  const size = page.length;
  if ((page.byteOffset | base.byteOffset | size) % 4 !== 0) {
    // Pages straight from memory are aligned; anything else is copied to aligned buffers first.
    if (alignedPage.length !== size) {
      alignedPage = new Uint8Array(size + (size % 4 === 0 ? 0 : 4 - (size % 4))).subarray(0, size);
      alignedBase = new Uint8Array(alignedPage.buffer.byteLength).subarray(0, size);
    }
    alignedPage.set(page);
    alignedBase.set(base);
    page = alignedPage;
    base = alignedBase;
  }
  const p32 = wordsOf(page);
  const b32 = wordsOf(base);
  const pw = page.byteOffset >>> 2;
  const bw = base.byteOffset >>> 2;
  const n = size >>> 2;
  const shift = bw - pw;
  const end = pw + n;
  const last4 = end - 4;
  let o = at;
  let lit = 0;
  let w = 0;
  for (;;) {
    let mStart = size;
    let mEnd = size;
    // The next run of equal words long enough to pay for a match.
    while (w < n) {
      if (p32[pw + w] !== b32[bw + w]) {
        w++;
        continue;
      }
      // Four words per test, one branch per 16 bytes: twice the speed of a word at a time.
      let i = pw + w + 1;
      while (
        i <= last4 &&
        ((p32[i] ^ b32[i + shift]) |
          (p32[i + 1] ^ b32[i + 1 + shift]) |
          (p32[i + 2] ^ b32[i + 2 + shift]) |
          (p32[i + 3] ^ b32[i + 3 + shift])) ===
          0
      )
        i += 4;
      while (i < end && p32[i] === b32[i + shift]) i++;
      const e = i - pw;
      // Zero delta over [4w, 4e): its first byte stays a literal zero, a match at offset 1 repeats it.
      const s = 4 * w + 1;
      const t = Math.min(4 * e, size - LAST_LITERALS);
      w = e;
      if (t - s >= MIN_RUN - 1 && s <= size - MATCH_SAFE) {
        mStart = s;
        mEnd = t;
        break;
      }
    }
    // One sequence: literals page^base over [lit, mStart), then the match when there is one.
    const litLen = mStart - lit;
    const matchLen = mEnd - mStart;
    const need =
      1 + lengthBytes(litLen) + litLen + (matchLen > 0 ? 2 + lengthBytes(matchLen - MIN_MATCH) : 0);
    if (o + need > limit) return -1;
    const token = o++;
    out[token] = (Math.min(litLen, 15) << 4) | (matchLen > 0 ? Math.min(matchLen - MIN_MATCH, 15) : 0);
    if (litLen >= 15) o = writeLength(out, o, litLen);
    let i = lit;
    if (LITTLE_ENDIAN && (i & 3) === 0) {
      // Whole words of literals, byte by byte as they lie in memory.
      for (; i + 4 <= mStart; i += 4) {
        const x = p32[pw + (i >>> 2)] ^ b32[bw + (i >>> 2)];
        out[o] = x;
        out[o + 1] = x >>> 8;
        out[o + 2] = x >>> 16;
        out[o + 3] = x >>> 24;
        o += 4;
      }
    }
    for (; i < mStart; i++) out[o++] = page[i] ^ base[i];
    if (matchLen === 0) return o - at;
    out[o++] = 1;
    out[o++] = 0;
    if (matchLen - MIN_MATCH >= 15) o = writeLength(out, o, matchLen - MIN_MATCH);
    lit = mEnd;
  }
}

/** LZ4 of the page itself (lz4-napi), written at out[at..limit); -1 when it would not fit or looks random. */
export function pageBlock(page: Uint8Array, out: Uint8Array, at: number, limit: number): number {
  if (looksIncompressible(page)) return -1;
  const input = Buffer.isBuffer(page) ? page : Buffer.from(page.buffer, page.byteOffset, page.length);
  // lz4-napi prefixes the block with its uncompressed size (u32 little endian); the record does not need it.
  const framed = compressSync(input);
  const n = framed.length - 4;
  if (at + n > limit) return -1;
  out.set(framed.subarray(4), at);
  return n;
}

/**
 * Decodes an LZ4 block into out, which it must fill exactly; with base, out receives base XOR the block's content
 * (base must not share memory with out). `what` names the record in errors ("xor-lz4 record of page 12"). Every
 * length is checked before it is used: a corrupt block raises InputError, never a write outside out.
 */
export function decodeBlock(block: Uint8Array, out: Uint8Array, what: string, base?: Uint8Array): void {
  const n = block.length;
  const size = out.length;
  let ip = 0;
  let op = 0;
  const bad = (why: string): InputError =>
    new InputError(`${what}: corrupt LZ4 block (${why}); the sender's data is damaged, resend it`);
  if (n === 0) throw bad('empty');
  for (;;) {
    const token = block[ip++];
    let litLen = token >>> 4;
    if (litLen === 15) {
      let b: number;
      do {
        if (ip >= n) throw bad('truncated in a literal length');
        b = block[ip++];
        litLen += b;
      } while (b === 255);
    }
    if (ip + litLen > n) throw bad(`truncated: ${litLen} literals announced, ${n - ip} bytes left`);
    if (op + litLen > size) throw bad(`decodes to more than ${size} bytes`);
    if (base) for (let k = 0; k < litLen; k++) out[op + k] = block[ip + k] ^ base[op + k];
    // Short runs byte by byte: a subarray per sequence costs more than the copy.
    else if (litLen < 64) for (let k = 0; k < litLen; k++) out[op + k] = block[ip + k];
    else out.set(block.subarray(ip, ip + litLen), op);
    ip += litLen;
    op += litLen;
    if (ip === n) break;
    if (ip + 2 > n) throw bad('truncated in a match offset');
    const offset = block[ip] | (block[ip + 1] << 8);
    ip += 2;
    if (offset === 0 || offset > op) throw bad(`match offset ${offset} at output byte ${op}`);
    let matchLen = (token & 15) + MIN_MATCH;
    if ((token & 15) === 15) {
      let b: number;
      do {
        if (ip >= n) throw bad('truncated in a match length');
        b = block[ip++];
        matchLen += b;
      } while (b === 255);
    }
    if (op + matchLen > size) throw bad(`decodes to more than ${size} bytes`);
    if (!base) {
      if (offset === 1) out.fill(out[op - 1], op, op + matchLen);
      else if (offset >= matchLen) out.copyWithin(op, op - offset, op - offset + matchLen);
      else for (let i = 0; i < matchLen; i++) out[op + i] = out[op + i - offset];
    } else if (offset === 1 && out[op - 1] === base[op - 1]) {
      // A run of zero delta bytes (what xorDeltaBlock writes): the base's bytes as they are.
      if (matchLen < 64) for (let i = 0; i < matchLen; i++) out[op + i] = base[op + i];
      else out.set(base.subarray(op, op + matchLen), op);
    } else {
      // Any other match repeats delta bytes, which are out XOR base where out is already written.
      for (let i = op; i < op + matchLen; i++) out[i] = base[i] ^ out[i - offset] ^ base[i - offset];
    }
    op += matchLen;
    if (ip >= n) throw bad('ends with a match, not with literals');
  }
  if (op !== size) throw bad(`decodes to ${op} bytes, expected ${size}`);
}
