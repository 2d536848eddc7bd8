import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BatchWriter, readBatch } from '../src/codec/batch.ts';
import { codecChain } from '../src/codec/index.ts';
import { FrameReader } from '../src/transport/stream.ts';
import {
  decodeFrame,
  encodeFrame,
  FRAME_HEADER_BYTES,
  FrameType,
  MAX_FRAME_PAYLOAD,
} from '../src/transport/frame.ts';

test('a frame round-trips type and payload', () => {
  const payload = Buffer.from('hello precog');
  const f = decodeFrame(encodeFrame(FrameType.Hello, payload));
  assert.equal(f.type, FrameType.Hello);
  assert.deepEqual(f.payload, payload);
});

test('corrupted, truncated, foreign, future, reserved-bit and oversized frames are refused with what is wrong', () => {
  const good = encodeFrame(FrameType.Pages, Buffer.alloc(100, 7));
  const flipped = Buffer.from(good);
  flipped[FRAME_HEADER_BYTES + 50] ^= 1;
  assert.throws(() => decodeFrame(flipped), /bad checksum on a Pages frame/);
  assert.throws(() => decodeFrame(good.subarray(0, good.length - 1)), /truncated frame/);
  assert.throws(() => decodeFrame(good.subarray(0, 10)), /truncated frame/);
  const foreign = Buffer.from(good);
  foreign.write('HTTP', 0);
  assert.throws(() => decodeFrame(foreign), /bad frame magic/);
  const future = Buffer.from(good);
  future[4] = 9;
  assert.throws(() => decodeFrame(future), /unsupported protocol version 9/);
  const unknown = Buffer.from(good);
  unknown[5] = 200;
  assert.throws(() => decodeFrame(unknown), /unknown frame type 200/);
  const reserved = Buffer.from(good);
  reserved[7] = 1;
  assert.throws(() => decodeFrame(reserved), /bytes 6-7 are reserved and must be zero, not 0x100/);
  const huge = Buffer.from(good);
  huge.writeUInt32LE(MAX_FRAME_PAYLOAD + 1, 8);
  assert.throws(() => decodeFrame(huge), /oversized frame/);
  assert.throws(() => encodeFrame(FrameType.Pages, Buffer.alloc(MAX_FRAME_PAYLOAD + 1)), /exceeds the limit/);
});

test('a page batch carries raw and zero pages and decodes to the same bytes', () => {
  const pages = [Buffer.alloc(4096, 0xab), Buffer.alloc(4096), Buffer.alloc(4096, 0x11)];
  pages[0][17] = 3;
  const w = new BatchWriter(codecChain('zero'), 4096, 64 * 1024);
  pages.forEach((p, i) => w.add(10 + i, p));
  const { frame, stats } = w.seal(4);
  assert.equal(stats.pages, 3);
  assert.equal(stats.zeroPages, 1);
  assert.ok(frame.length < 3 * 4096, 'the zero page travels without its bytes');
  const got = new Map<number, Buffer>();
  const f = decodeFrame(Buffer.from(frame));
  const { round, count } = readBatch(f.payload, 100, (id, decode) => {
    const out = Buffer.alloc(4096, 0xff);
    decode(out);
    got.set(id, out);
  });
  assert.equal(round, 4);
  assert.equal(count, 3);
  pages.forEach((p, i) => assert.ok(got.get(10 + i)!.equals(p), `page ${10 + i}`));
});

test('a batch naming a page outside the layout or cut short is refused', () => {
  const w = new BatchWriter(codecChain('raw'), 4096, 64 * 1024);
  w.add(99, Buffer.alloc(4096, 1));
  const payload = decodeFrame(Buffer.from(w.seal(1).frame)).payload;
  assert.throws(() => readBatch(payload, 50, () => {}), /page index 99 outside the layout of 50 pages/);
  assert.throws(() => readBatch(payload.subarray(0, 100), 100, () => {}), /truncated/);
});

test('a byte stream cut anywhere gives back the same frames', () => {
  const frames = [
    encodeFrame(FrameType.Hello, Buffer.from('{}')),
    encodeFrame(FrameType.Pages, Buffer.alloc(5000, 3)),
    encodeFrame(FrameType.Commit, Buffer.alloc(0)),
  ];
  const stream = Buffer.concat(frames);
  for (const step of [1, 7, 20, 4096, stream.length]) {
    const reader = new FrameReader();
    const got: Buffer[] = [];
    // frames are views into the reader's buffer, valid until the next push: keep copies
    for (let i = 0; i < stream.length; i += step) {
      got.push(...reader.push(stream.subarray(i, i + step)).map((f) => Buffer.from(f)));
    }
    assert.equal(got.length, 3, `step ${step}`);
    got.forEach((f, i) => assert.ok(f.equals(frames[i])));
    assert.equal(reader.pending, 0);
  }
});

test('the stream reader refuses an oversized frame from its header alone', () => {
  const head = encodeFrame(FrameType.Pages, Buffer.alloc(0));
  head.writeUInt32LE(MAX_FRAME_PAYLOAD + 1, 8);
  assert.throws(() => new FrameReader().push(head), /oversized frame/);
  assert.throws(
    () => new FrameReader().push(Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n')),
    /bad frame magic/,
  );
});
