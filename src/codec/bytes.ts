/** Byte-level helpers the page codecs share. */

/** Word views of whole ArrayBuffers, made once: a new typed array per page costs as much as a page's XOR. */
const wordViews = new WeakMap<ArrayBufferLike, Int32Array>();

/**
 * An Int32Array over the whole buffer of a (index it from a.byteOffset / 4). Int32, not Uint32: V8 keeps int32
 * loads in registers, while uint32 values above 2^31 become doubles.
 */
export function wordsOf(a: Uint8Array): Int32Array {
  let v = wordViews.get(a.buffer);
  if (!v) {
    v = new Int32Array(a.buffer, 0, a.buffer.byteLength >>> 2);
    wordViews.set(a.buffer, v);
  }
  return v;
}

/** out = a XOR b, a word at a time when all three are 4-byte aligned. out may be a or b. */
export function xorInto(out: Uint8Array, a: Uint8Array, b: Uint8Array): void {
  const n = out.length;
  if ((out.byteOffset | a.byteOffset | b.byteOffset | n) % 4 === 0) {
    const o32 = wordsOf(out);
    const a32 = wordsOf(a);
    const b32 = wordsOf(b);
    const o = out.byteOffset >>> 2;
    const ao = a.byteOffset >>> 2;
    const bo = b.byteOffset >>> 2;
    for (let i = 0; i < n >>> 2; i++) o32[o + i] = a32[ao + i] ^ b32[bo + i];
    return;
  }
  for (let i = 0; i < n; i++) out[i] = a[i] ^ b[i];
}

/** Whether a and b share any byte of memory. */
export function overlaps(a: Uint8Array, b: Uint8Array): boolean {
  return (
    a.buffer === b.buffer && a.byteOffset < b.byteOffset + b.length && b.byteOffset < a.byteOffset + a.length
  );
}

const scratches = new Map<number, Buffer>();

/** A reusable buffer of n bytes (codecs run one page at a time on one thread). Word aligned. */
export function scratch(n: number, slot = 0): Buffer {
  const key = n * 4 + slot;
  let b = scratches.get(key);
  if (!b) {
    b = Buffer.allocUnsafeSlow(n);
    scratches.set(key, b);
  }
  return b;
}

const seen = new Uint8Array(256);
const SAMPLE_RUNS = 8;
const SAMPLE_RUN = 32;
/**
 * Distinct byte values from which 256 sampled bytes look random: uniform random bytes show
 * 256 * (1 - (255/256)^256) = 162 of them on average (standard deviation about 5); text, zeros, pointers and sparse
 * deltas far fewer (test/codec.test.ts).
 */
const RANDOM_DISTINCT = 140;

/**
 * A cheap test (256 byte reads) for pages no LZ4 or zstd will shorten, like the heuristic btrfs runs before
 * compressing: 8 runs of 32 bytes spread over the page, and the number of distinct byte values among them. One
 * lz4-napi call on a random page costs many times a delta (bench/codec.ts, row "lz4-napi"); a page the test wrongly
 * calls random only travels raw. Branch-free counting: on random bytes a branch per byte mispredicts half the time.
 */
export function looksIncompressible(page: Uint8Array): boolean {
  const n = page.length;
  if (n < SAMPLE_RUNS * SAMPLE_RUN * 2) return false;
  seen.fill(0);
  let distinct = 0;
  const step = Math.floor(n / SAMPLE_RUNS);
  for (let r = 0; r < SAMPLE_RUNS; r++) {
    const at = r * step + ((r * 37) % (step - SAMPLE_RUN));
    for (let i = at; i < at + SAMPLE_RUN; i++) {
      const b = page[i];
      distinct += seen[b] ^ 1;
      seen[b] = 1;
    }
  }
  return distinct >= RANDOM_DISTINCT;
}
