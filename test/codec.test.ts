import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { compressSync, uncompressSync } from 'lz4-napi';
import { AdaptiveRule, PROBE_EVERY } from '../src/codec/adaptive.ts';
import { BatchWriter, readBatch } from '../src/codec/batch.ts';
import { LastSentCache } from '../src/codec/cache.ts';
import { codecByTag, codecChain, DEFAULT_CACHE_BYTES, type Codec } from '../src/codec/index.ts';
import { looksIncompressible } from '../src/codec/bytes.ts';
import { decodeBlock, pageBlock, xorDeltaBlock } from '../src/codec/lz4.ts';
import { rawCodec } from '../src/codec/raw.ts';
import { CODEC_TAG } from '../src/codec/types.ts';
import { xbzrleCodec } from '../src/codec/xbzrle.ts';
import { xorLz4Codec } from '../src/codec/xor-lz4.ts';
import { zeroCodec } from '../src/codec/zero.ts';
import { zstdCodec } from '../src/codec/zstd.ts';
import { MigrationDestination } from '../src/engine/destination.ts';
import { FileBacking } from '../src/engine/pagestore.ts';
import { simulate, SCENARIO_DEFAULTS } from '../src/sim/run.ts';
import { FrameType, jsonFrame, PROTOCOL_VERSION } from '../src/transport/frame.ts';
import { InputError, InvariantError, UsageError } from '../src/util/errors.ts';
import { Prng } from '../src/util/prng.ts';

const PAGE = 4096;
const prng = new Prng(5);
const randomPage = (): Buffer => {
  const b = Buffer.allocUnsafeSlow(PAGE);
  prng.fill(b);
  return b;
};
/** A copy of base with `runs` runs of `len` random bytes at random places. */
const sparseDelta = (base: Buffer, runs: number, len: number): Buffer => {
  const p = Buffer.from(base);
  const noise = Buffer.alloc(len);
  for (let r = 0; r < runs; r++) {
    prng.fill(noise);
    noise.copy(p, prng.int(PAGE - len + 1));
  }
  return p;
};
/** A page half text-like (compressible), half zeros. */
const compressiblePage = (): Buffer => {
  const p = Buffer.alloc(PAGE);
  p.write('the quick brown fox jumps over the lazy dog '.repeat(50), 0, PAGE / 2);
  return p;
};

interface Case {
  name: string;
  page: Buffer;
  base?: Buffer;
}
function cases(): Case[] {
  const base = randomPage();
  const zero = Buffer.alloc(PAGE);
  const lastByte = Buffer.from(base);
  lastByte[PAGE - 1] ^= 1;
  const firstByte = Buffer.from(base);
  firstByte[0] ^= 0x80;
  const tail = Buffer.from(base);
  tail.fill(7, PAGE - 13);
  const everyOther = Buffer.from(base);
  for (let i = 0; i < PAGE; i += 2) everyOther[i] ^= 0xff;
  return [
    { name: 'random, first send', page: randomPage() },
    { name: 'random, rewritten (incompressible delta)', page: randomPage(), base },
    { name: 'zero, first send', page: zero },
    { name: 'zero over random', page: zero, base },
    { name: 'random over zero', page: randomPage(), base: zero },
    { name: 'sparse delta (5 % in runs of 16)', page: sparseDelta(base, 13, 16), base },
    { name: 'sparse delta (scattered bytes)', page: sparseDelta(base, 40, 1), base },
    { name: 'unchanged', page: Buffer.from(base), base },
    { name: 'last byte changed', page: lastByte, base },
    { name: 'first byte changed', page: firstByte, base },
    { name: 'last 13 bytes changed', page: tail, base },
    { name: 'every other byte changed', page: everyOther, base },
    { name: 'compressible, first send', page: compressiblePage() },
    { name: 'compressible over random', page: compressiblePage(), base },
  ];
}

const CODECS: Codec[] = [rawCodec, zeroCodec, xorLz4Codec, xbzrleCodec, zstdCodec(), zstdCodec(3)];

/** Encodes at an odd offset of a larger buffer (records sit anywhere in a frame); -1 when not applicable. */
function encode(codec: Codec, page: Uint8Array, base?: Uint8Array): Buffer | null {
  const out = Buffer.alloc(2 * PAGE + 7, 0xee);
  const n = codec.encode(page, out, 7, base);
  if (n < 0) return null;
  assert.ok(n <= codec.maxEncodedSize(PAGE), `${codec.name}: ${n} bytes within its bound`);
  assert.equal(out[7 + n], 0xee, `${codec.name} wrote past the length it returned`);
  return out.subarray(7, 7 + n);
}

test('every codec gives back the page byte for byte, or declines it', () => {
  for (const codec of CODECS) {
    let applied = 0;
    for (const c of cases()) {
      const enc = encode(codec, c.page, c.base);
      if (!enc) continue;
      applied++;
      assert.ok(
        codec.tag === CODEC_TAG.raw || enc.length < PAGE,
        `${codec.name} on ${c.name}: shorter than raw`,
      );
      const out = Buffer.alloc(PAGE, 0x55);
      codec.decode(enc, out, c.base);
      assert.ok(out.equals(c.page), `${codec.name} on ${c.name}: decoded page differs`);
      // The destination may decode straight over its copy of the page.
      if (c.base) {
        const inPlace = Buffer.from(c.base);
        codec.decode(enc, inPlace, inPlace);
        assert.ok(inPlace.equals(c.page), `${codec.name} on ${c.name}: decoding in place differs`);
      }
    }
    assert.ok(applied > 0, `${codec.name} applied to some page`);
  }
});

test('what each codec does with each kind of page', () => {
  const base = randomPage();
  const delta = sparseDelta(base, 13, 16);
  const size = (c: Codec, p: Buffer, b?: Buffer) => encode(c, p, b)?.length ?? -1;
  for (const c of [xorLz4Codec, xbzrleCodec, zstdCodec()]) {
    // 13 runs of 16 bytes: about 210 changed bytes; a delta record carries them and little else.
    const n = size(c, delta, base);
    assert.ok(n > 150 && n < 500, `${c.name}: sparse delta in ${n} bytes`);
    assert.equal(size(c, randomPage(), base), -1, `${c.name} declines a rewritten random page`);
    assert.ok(size(c, Buffer.from(base), base) < 40, `${c.name}: an unchanged page is nearly free`);
    assert.equal(c.isDelta!(encode(c, delta, base)!), true, `${c.name}: delta record`);
  }
  assert.equal(size(xbzrleCodec, Buffer.from(base), base), 0, 'xbzrle: unchanged page, empty record');
  assert.equal(size(xbzrleCodec, compressiblePage()), -1, 'xbzrle needs a last-sent copy');
  for (const c of [xorLz4Codec, zstdCodec()]) {
    const n = size(c, compressiblePage());
    assert.ok(n > 0 && n < PAGE / 4, `${c.name}: a compressible first send in ${n} bytes`);
    assert.equal(c.isDelta!(encode(c, compressiblePage())!), false, `${c.name}: first send is not a delta`);
    assert.equal(size(c, randomPage()), -1, `${c.name} declines an incompressible first send`);
  }
  assert.equal(size(zeroCodec, Buffer.alloc(PAGE)), 0);
  assert.equal(size(zeroCodec, delta), -1);
});

test('the incompressibility test tells random pages from pages with structure', () => {
  let random = 0;
  for (let k = 0; k < 100; k++) if (looksIncompressible(randomPage())) random++;
  assert.ok(random >= 99, `${random} of 100 random pages called random`);
  const words = Buffer.alloc(PAGE);
  for (let i = 0; i < PAGE; i += 8)
    words.writeBigUInt64LE(0x7f00_0000_0000n + BigInt(prng.int(1 << 20)) * 8n, i);
  for (const [name, page] of [
    ['text', compressiblePage()],
    ['zeros', Buffer.alloc(PAGE)],
    ['pointers', words],
    ['sparse delta', Buffer.from(sparseDelta(Buffer.alloc(PAGE), 13, 16))],
  ] as const) {
    assert.equal(looksIncompressible(page), false, name);
    assert.ok(encode(xorLz4Codec, page), `${name}: xor-lz4 still compresses it`);
  }
});

test('pages that are not word aligned encode as aligned ones do', () => {
  const base = randomPage();
  const page = sparseDelta(base, 9, 20);
  const shifted = (b: Buffer): Buffer => {
    const s = Buffer.alloc(PAGE + 3);
    b.copy(s, 3);
    return s.subarray(3);
  };
  for (const c of [xorLz4Codec, xbzrleCodec, zstdCodec()]) {
    const aligned = encode(c, page, base)!;
    const odd = encode(c, shifted(page), shifted(base))!;
    assert.ok(aligned.equals(odd), `${c.name}: same record from unaligned pages`);
    const out = shifted(Buffer.alloc(PAGE));
    c.decode(odd, out, shifted(base));
    assert.ok(out.equals(page), `${c.name}: decoded into an unaligned page`);
  }
});

test('xor-lz4 records are standard LZ4 blocks, both ways', () => {
  const base = randomPage();
  for (const page of [sparseDelta(base, 13, 16), Buffer.from(base), sparseDelta(base, 200, 3)]) {
    const block = Buffer.alloc(2 * PAGE);
    const n = xorDeltaBlock(page, base, block, 0, block.length);
    assert.ok(n > 0);
    // lz4-napi reads blocks with their size in front (u32 little endian).
    const framed = Buffer.alloc(4 + n);
    framed.writeUInt32LE(PAGE, 0);
    block.copy(framed, 4, 0, n);
    const xor = Buffer.alloc(PAGE);
    for (let i = 0; i < PAGE; i++) xor[i] = page[i] ^ base[i];
    assert.ok(uncompressSync(framed).equals(xor), 'lz4-napi decodes the fused XOR encoder');
  }
  // A delta with repeats and runs of one non-zero byte, compressed by lz4-napi (matches of every kind), decoded
  // straight against the base.
  const page = Buffer.from(base);
  for (let i = 0; i < PAGE; i += 512) {
    for (let k = 0; k < 40; k++) page[i + k] ^= 0xaa;
    for (let k = 100; k < 140; k++) page[i + k] ^= k % 7;
  }
  const xor = Buffer.alloc(PAGE);
  for (let i = 0; i < PAGE; i++) xor[i] = page[i] ^ base[i];
  const framed = compressSync(xor);
  const decoded = Buffer.alloc(PAGE);
  decodeBlock(framed.subarray(4), decoded, 'test', base);
  assert.ok(decoded.equals(page), 'a general LZ4 delta decodes against its base');
  const text = compressiblePage();
  const out = Buffer.alloc(PAGE);
  const n = pageBlock(text, out, 0, out.length);
  const back = Buffer.alloc(PAGE);
  decodeBlock(out.subarray(0, n), back, 'test');
  assert.ok(back.equals(text), 'our decoder reads lz4-napi blocks');
});

/** Calls fn and returns the InputError it throws; fails on anything else. */
function inputError(fn: () => void, what: string): InputError {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof InputError, `${what}: ${(e as Error).name}: ${(e as Error).message}`);
    return e;
  }
  assert.fail(`${what}: accepted`);
}

test('corrupt records are refused with an error that names the problem', () => {
  const base = randomPage();
  const delta = sparseDelta(base, 13, 16);
  const text = compressiblePage();
  const out = Buffer.alloc(PAGE);
  /** base null: the destination has no copy of the page. */
  const refuse = (c: Codec, enc: Uint8Array, pattern: RegExp, b: Buffer | null = base) => {
    const e = inputError(() => c.decode(enc, Buffer.alloc(PAGE), b ?? undefined), `${c.name} ${pattern}`);
    assert.match(e.message, pattern);
  };
  const zstd = zstdCodec();
  for (const c of [xorLz4Codec, xbzrleCodec, zstd]) {
    const d = encode(c, delta, base)!;
    refuse(c, d, /never received/, null);
    for (const cut of [1, 2, Math.floor(d.length / 2), d.length - 1]) {
      const e = inputError(() => c.decode(d.subarray(0, cut), out, base), `${c.name} cut at ${cut}`);
      assert.match(e.message, new RegExp(`${c.name}`));
    }
  }
  // xor-lz4: modes, lengths, offsets, output size.
  const x = encode(xorLz4Codec, text)!;
  refuse(xorLz4Codec, Buffer.from([9, 0x10, 0]), /unknown mode 9/);
  refuse(xorLz4Codec, Buffer.from([0]), /too short/);
  refuse(xorLz4Codec, Buffer.concat([x, Buffer.from([0x10, 1])]), /more than 4096 bytes/);
  refuse(xorLz4Codec, Buffer.from([0, 0x40, 1, 2, 3, 4]), /decodes to 4 bytes, expected 4096/);
  refuse(xorLz4Codec, Buffer.from([0, 0x1f, 9, 5, 0, 0xff]), /match offset 5 at output byte 1/);
  refuse(xorLz4Codec, Buffer.from([0, 0xf0, 0xff, 0xff]), /truncated in a literal length/);
  refuse(xorLz4Codec, Buffer.from([0, 0x50, 1, 2]), /truncated: 5 literals announced, 2 bytes left/);
  refuse(xorLz4Codec, Buffer.from([0, 0x14, 0, 1, 0]), /ends with a match/);
  // xbzrle: varints, runs, page size.
  refuse(xbzrleCodec, Buffer.from([0x80, 0x80, 0x80, 0x01]), /longer than 3 bytes/);
  refuse(xbzrleCodec, Buffer.from([0x00, 0x00]), /empty changed run/);
  refuse(xbzrleCodec, Buffer.from([0x00, 0x05, 1, 2]), /truncated: a changed run of 5 bytes, 2 left/);
  refuse(xbzrleCodec, Buffer.from([0xff, 0x1f, 0x02, 1, 2]), /more than 4096 bytes/);
  refuse(xbzrleCodec, Buffer.from([0x05]), /truncated in the changed run length/);
  // zstd: modes, frame header, declared size, body.
  const z = encode(zstd, text)!;
  refuse(zstd, Buffer.from([7, 1, 2]), /unknown mode 7/);
  refuse(zstd, Buffer.concat([Buffer.from([0]), Buffer.from('not a zstd frame')]), /bad magic/);
  const small = Buffer.from(z);
  small[6] = 1; // the declared content size (2 bytes, plus 256) no longer says 4096
  refuse(zstd, small, /expected a frame of one 4096-byte page/);
  const body = Buffer.from(z);
  body.fill(0xa5, 9);
  refuse(zstd, body, /corrupt frame/);
  // raw and zero.
  refuse(rawCodec, Buffer.alloc(PAGE - 1), /raw page of 4095 bytes, expected 4096/);
  refuse(zeroCodec, Buffer.alloc(1), /zero page record carries 1 bytes/);
});

test('random damage to records gives an InputError or some page, never a crash', () => {
  const base = randomPage();
  const zstd = zstdCodec();
  const pages = [sparseDelta(base, 13, 16), compressiblePage(), sparseDelta(base, 60, 4)];
  let refused = 0;
  for (const c of [xorLz4Codec, xbzrleCodec, zstd]) {
    for (const page of pages) {
      const enc = encode(c, page, base);
      if (!enc) continue;
      for (let k = 0; k < 300; k++) {
        const bad = Buffer.from(enc);
        const flips = 1 + prng.int(3);
        for (let f = 0; f < flips; f++) bad[prng.int(bad.length)] ^= 1 << prng.int(8);
        const out = Buffer.alloc(PAGE);
        try {
          c.decode(bad, out, base);
        } catch (e) {
          assert.ok(e instanceof InputError, `${c.name}: ${(e as Error).name}: ${(e as Error).message}`);
          refused++;
        }
      }
    }
  }
  assert.ok(refused > 300, `${refused} damaged records refused`);
});

test('a PAGES frame names the page whose record is corrupt', () => {
  const w = new BatchWriter(codecChain('xor-lz4'), PAGE, 64 * 1024);
  const base = randomPage();
  w.add(3, compressiblePage());
  w.add(4, sparseDelta(base, 5, 8), base);
  const { frame } = w.seal(1);
  const payload = Buffer.from(frame.subarray(20));
  // Second record: 8 bytes batch head, first record's 9-byte head and body, then 9 bytes of head.
  const first = payload.readUInt32LE(8 + 5);
  const second = 8 + 9 + first;
  assert.equal(payload.readUInt32LE(second), 4);
  payload[second + 9 + 1] = 0xff; // a literal length far past the page
  const seen: boolean[] = [];
  const e = inputError(
    () =>
      readBatch(payload, 8, (id, decodeInto, delta) => {
        seen.push(delta);
        decodeInto(Buffer.alloc(PAGE), id === 4 ? base : undefined);
      }),
    'damaged frame',
  );
  assert.match(e.message, /^page 4: xor-lz4 delta record: corrupt LZ4 block/);
  assert.deepEqual(seen, [false, true], 'the sink is told which record is a delta');
});

test('the last-sent cache stays within its size and keeps the pages that are resent', () => {
  const pages = 64;
  const cache = new LastSentCache(pages * PAGE, PAGE);
  assert.equal(cache.capacity, pages);
  const page = (id: number, v: number) => Buffer.alloc(PAGE, (id * 7 + v) & 0xff);
  // A working set of 40 pages, each sent twice.
  for (let v = 0; v < 2; v++) for (let id = 0; id < 40; id++) cache.put(id, page(id, v));
  // A flood of 10,000 pages sent once (round 1 of a large memory).
  for (let id = 1000; id < 11000; id++) cache.put(id, page(id, 0));
  assert.ok(cache.size <= pages, `${cache.size} pages held`);
  assert.ok(cache.allocatedBytes <= pages * PAGE, `${cache.allocatedBytes} bytes allocated`);
  let kept = 0;
  for (let id = 0; id < 40; id++) {
    const got = cache.get(id);
    if (got) {
      kept++;
      assert.ok(Buffer.from(got).equals(page(id, 1)), `page ${id}: the last sent copy`);
    }
  }
  assert.equal(kept, 40, 'every resent page survived the flood');
  assert.ok(cache.get(10999), 'the newest once-sent page is there');
  assert.equal(cache.get(1000), undefined, 'the oldest once-sent page was evicted');
  assert.ok(cache.stats.evictions >= 10000 - 24);
  assert.ok(cache.resent(5) && !cache.resent(1000));

  // Plain LRU within a segment: of pages sent once, the least recently sent goes first.
  const lru = new LastSentCache(4 * PAGE, PAGE);
  for (const id of [1, 2, 3, 4]) lru.put(id, page(id, 0));
  lru.put(5, page(5, 0));
  assert.deepEqual(
    [1, 2, 3, 4, 5].map((id) => lru.get(id) !== undefined),
    [false, true, true, true, true],
  );
  // Protected pages may fill at most 80 %: a new page still gets in when everything was resent.
  const full = new LastSentCache(10 * PAGE, PAGE);
  for (let v = 0; v < 2; v++) for (let id = 0; id < 10; id++) full.put(id, page(id, v));
  full.put(99, page(99, 0));
  assert.ok(full.get(99) && full.size === 10);
  assert.equal(new LastSentCache(PAGE - 1, PAGE).capacity, 0);
});

test('a cache miss sends the whole page, a hit a delta, and the destination follows', () => {
  // A cache of 2 pages: page 0 is evicted by pages 1 and 2 before it comes again.
  const chain = codecChain('xor-lz4:cache=8KiB');
  const w = new BatchWriter(chain, PAGE, 64 * 1024);
  const dest = Buffer.alloc(4 * PAGE);
  const received = new Set<number>();
  const v1 = [compressiblePage(), randomPage(), randomPage()];
  const v2 = v1.map((p) => sparseDelta(p, 4, 8));
  const send = (ids: number[], versions: Buffer[]) => {
    for (const id of ids) w.add(id, versions[id]);
    const { frame } = w.seal(1);
    const kinds: boolean[] = [];
    readBatch(frame.subarray(20), 4, (id, decodeInto, delta) => {
      kinds.push(delta);
      const slot = dest.subarray(id * PAGE, (id + 1) * PAGE);
      decodeInto(slot, delta ? Buffer.from(slot) : undefined);
      received.add(id);
    });
    return kinds;
  };
  assert.deepEqual(send([0, 1, 2], v1), [false, false, false]);
  assert.deepEqual(send([2, 0], v2), [true, false], 'page 2 hits, page 0 was evicted');
  for (const id of [0, 2]) assert.ok(dest.subarray(id * PAGE, (id + 1) * PAGE).equals(v2[id]));
  assert.deepEqual(w.stats.cache, { hits: 1, misses: 4, evictions: 2 });
  assert.equal(codecChain('xor-lz4').options.cacheBytes, DEFAULT_CACHE_BYTES);
});

test('the bandwidth-aware rule compresses on slow links and sends raw on fast ones', () => {
  const rule = new AdaptiveRule(PAGE, 1e9); // encode at 1 GB/s: 4.1 us per page
  assert.equal(rule.shouldCompress('delta'), true, 'nothing known yet: compress');
  for (let k = 0; k < 20; k++) rule.record('delta', 0, 3000);
  rule.observeLink(1e6, 0.08); // 12.5 MB/s: 3000 bytes take 240 us
  assert.equal(rule.shouldCompress('delta'), true);
  const fast = new AdaptiveRule(PAGE, 1e9);
  for (let k = 0; k < 20; k++) fast.record('delta', 0, 3000);
  fast.observeLink(1e9, 0.25); // 4 GB/s: 3000 bytes take 0.75 us, less than the encoding
  let compressed = 0;
  for (let k = 0; k < 10 * PROBE_EVERY; k++) if (fast.shouldCompress('delta')) compressed++;
  assert.equal(compressed, 10, 'only the probes, one page in PROBE_EVERY');
  assert.equal(fast.stats.skipped, 10 * PROBE_EVERY - 10);
  // Saving nothing never pays, whatever the link.
  const nothing = new AdaptiveRule(PAGE, 1e9);
  for (let k = 0; k < 20; k++) nothing.record('whole', 0, 0);
  nothing.observeLink(1e6, 1);
  nothing.shouldCompress('whole');
  assert.equal(nothing.stats.skipped, 1);
});

test('an adaptive writer measures the link over the frames it hands over', () => {
  const base = Array.from({ length: 64 }, randomPage);
  const run = (bytesPerSecond: number) => {
    const link = { clock: { now: () => time }, bytesSent: 0 };
    let time = 0;
    const w = new BatchWriter(codecChain('xor-lz4:cpu=1GB/s'), PAGE, 16 * PAGE, { link });
    const tags: number[] = [];
    for (let round = 0; round < 4; round++) {
      for (let id = 0; id < 64; id++) {
        w.add(id, round === 0 ? base[id] : sparseDelta(base[id], 4, 16));
        if (w.full() || id === 63) {
          const { frame } = w.seal(round);
          readBatch(frame.subarray(20), 64, (_id, decodeInto, delta) => {
            decodeInto(Buffer.alloc(PAGE), delta ? base[_id] : undefined);
          });
          for (let at = 20 + 8; at < frame.length; at += 9 + frame.readUInt32LE(at + 5))
            if (round === 3) tags.push(frame[at + 4]);
          link.bytesSent += frame.length; // the link takes the frame...
          time += frame.length / bytesPerSecond; // ...in this long
        }
      }
    }
    return { tags, stats: w.stats.adaptive! };
  };
  const slow = run(12.5e6);
  assert.ok(
    slow.tags.every((t) => t === CODEC_TAG.xorLz4),
    '100 Mbit/s: every delta compressed',
  );
  const fast = run(10e9);
  const raw = fast.tags.filter((t) => t === CODEC_TAG.raw).length;
  assert.ok(raw >= 60, `80 Gbit/s: ${raw} of 64 pages raw`);
  assert.ok(fast.stats.skipped > 100);
});

test('--codec specs: chains, options and clear refusals', () => {
  const c = codecChain('xor-lz4:cache=1MiB:adaptive');
  assert.deepEqual(
    c.map((x) => x.name),
    ['zero', 'xor-lz4', 'raw'],
  );
  assert.deepEqual(c.options, { cacheBytes: 1024 ** 2, adaptive: true });
  assert.deepEqual(codecChain('zstd:cpu=2GB/s:level=3').options, {
    cacheBytes: DEFAULT_CACHE_BYTES,
    adaptive: true,
    cpuRate: 2e9,
  });
  assert.deepEqual(codecChain('zero').options, { cacheBytes: 0, adaptive: false });
  assert.equal(codecByTag(CODEC_TAG.xbzrle), xbzrleCodec);
  for (const [spec, pattern] of [
    ['lz5', /unknown codec "lz5"; accepted: raw, zero, xor-lz4, xbzrle, zstd/],
    ['raw:adaptive', /does not compress/],
    ['zero:cache=1MiB', /unknown codec parameter "cache" for zero; accepted: none/],
    ['xor-lz4:level=3', /unknown codec parameter "level" for xor-lz4/],
    ['xor-lz4:fast', /not "fast"/],
    ['xor-lz4:cache=lots', /not a number with a unit/],
    ['zstd:level=40', /from -7 to 19/],
  ] as const) {
    assert.throws(
      () => codecChain(spec),
      (e: Error) => e instanceof UsageError && pattern.test(e.message),
      spec,
    );
  }
  assert.throws(() => codecByTag(77), /unknown codec tag 77/);
});

const MiB = 2 ** 20;
const sim = (codec: string, strategy = 'precopy') =>
  simulate({
    ...SCENARIO_DEFAULTS,
    memoryBytes: 16 * MiB,
    bandwidth: 50e6,
    workload: 'memchange:rate=2MB/s:touch=256:pattern=hotspot',
    strategy,
    codec,
  });

test('emulated migrations with every codec deliver the memory byte for byte', async () => {
  const bytes: Record<string, number> = {};
  for (const codec of ['raw', 'zero', 'xor-lz4', 'xbzrle', 'zstd', 'xor-lz4:adaptive', 'zstd:cache=256KiB']) {
    for (const strategy of ['precopy', 'hybrid', 'postcopy']) {
      const r = await sim(codec, strategy);
      assert.equal(r.pagesVerified, 4096, `${codec} ${strategy}`);
      if (strategy === 'precopy') bytes[codec] = r.metrics.bytesTotal;
    }
  }
  // Rounds after the first resend pages changed in 256-byte writes: deltas must carry far fewer bytes.
  for (const codec of ['xor-lz4', 'xbzrle', 'zstd']) {
    assert.ok(
      bytes[codec] < 0.85 * bytes.zero,
      `${codec}: ${bytes[codec]} bytes against ${bytes.zero} for zero`,
    );
  }
});

test('a codec that decodes one delta wrongly fails the emulated migration', async () => {
  const original = xorLz4Codec.decode;
  let damaged = 0;
  xorLz4Codec.decode = (encoded, out, lastSent) => {
    original(encoded, out, lastSent);
    if (lastSent && damaged++ === 3) out[100] ^= 1;
  };
  try {
    await assert.rejects(
      sim('xor-lz4'),
      (e: Error) => e instanceof InvariantError || e.cause instanceof InvariantError,
    );
    assert.ok(damaged > 3, 'deltas were decoded');
  } finally {
    xorLz4Codec.decode = original;
  }
});

test('the destination decodes deltas against its copy, also from a page file, and refuses one without it', () => {
  const dir = mkdtempSync(join(tmpdir(), 'precog-codec-'));
  try {
    const pages = 16;
    const start = () => {
      const d = new MigrationDestination({
        restoreCost: 0,
        backing: (layout) => new FileBacking(layout, join(dir, 'pages')),
      });
      d.handle(
        jsonFrame(FrameType.Hello, { version: PROTOCOL_VERSION, migrationId: 'codec-test', strategy: 't' }),
        0,
      );
      d.handle(
        jsonFrame(FrameType.Layout, { pageSize: PAGE, pageCount: pages, regions: [{ start: '0x0', pages }] }),
        0,
      );
      return d;
    };
    const dest = start();
    const w = new BatchWriter(codecChain('xor-lz4'), PAGE, 17 * PAGE);
    let v = Array.from({ length: pages }, randomPage);
    for (let round = 1; round <= 3; round++) {
      // Pages in and out of order, so that the file backing flushes its gathered runs between deltas.
      for (const id of [5, 6, 7, 0, 1, 9, 2, 15, 3, 4, 8, 10, 11, 12, 13, 14]) w.add(id, v[id]);
      dest.handle(w.seal(round).frame, round);
      for (let id = 0; id < pages; id++)
        assert.ok(dest.store!.page(id).equals(v[id]), `round ${round} page ${id}`);
      v = v.map((p) => sparseDelta(p, 6, 16));
    }
    assert.equal(w.stats.cache!.hits, 2 * pages);
    dest.abandon();

    const fresh = start();
    const lone = new BatchWriter(codecChain('xor-lz4'), PAGE, 64 * 1024);
    const base = randomPage();
    lone.add(2, sparseDelta(base, 3, 8), base);
    assert.throws(
      () => fresh.handle(lone.seal(1).frame, 1),
      /page 2: xor-lz4 delta record for a page the destination has never received/,
    );
    fresh.abandon();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
