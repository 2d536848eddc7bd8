import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { changedBytes, traceInfo } from '../src/cli/actions/trace.ts';
import { ContentPool } from '../src/memory/content.ts';
import { TraceWorkload, loadTrace, parsePublicTrace, serializeTrace } from '../src/memory/trace.ts';

// The public NPB-CG dirty-page trace, gzipped (see test/data/README.md).
const PUBLIC = new URL('./data/npb-cg-B-dirty.json.gz', import.meta.url).pathname;
const dir = mkdtempSync(join(tmpdir(), 'precog-trace-'));
const write = (name: string, body: string | Buffer): string => {
  const p = join(dir, name);
  writeFileSync(p, body);
  return p;
};
const bit = (bm: Uint8Array, i: number): boolean => (bm[i >>> 3] & (1 << (i & 7))) !== 0;
const popcount = (bm: Uint8Array): number =>
  bm.reduce((a, b) => a + b.toString(2).replaceAll('0', '').length, 0);

test('the public npb-cg-B trace loads: 29,109 pages x 12 samples, pages in address order', () => {
  const t = loadTrace(PUBLIC);
  assert.equal(t.pageCount, 29109);
  assert.equal(t.samples, 12);
  assert.ok(t.accessed, 'the public trace carries accessed bits');
  assert.equal(
    t.regions.reduce((a, r) => a + r.pages, 0),
    29109,
  );
  assert.equal(t.regions[0].start, '0x400000');
  // The trace's first page (0x400000) is dirty in every sample; the next one (0x606000) only in the first.
  for (let s = 0; s < 12; s++) assert.ok(bit(t.dirty[s], 0));
  assert.ok(bit(t.dirty[0], 1));
  for (let s = 1; s < 12; s++) assert.ok(!bit(t.dirty[s], 1));
  // ENVIRONMENT.md: the same ~1.6 % of pages are dirty in every later sample.
  const later = popcount(t.dirty[5]) / t.pageCount;
  assert.ok(later > 0.01 && later < 0.03, `dirty share in sample 5 is ${later}`);
});

test('precog trace format round-trips', () => {
  const t = parsePublicTrace(
    JSON.stringify({
      '1000': { isDirtyList: [1, 0, 1], isAccessed: [1, 1, 0] },
      '2000': { isDirtyList: [0, 1, 1], isAccessed: [0, 1, 1] },
      '9000': { isDirtyList: [0, 0, 1], isAccessed: [1, 0, 1] },
    }),
    'inline',
  );
  assert.deepEqual(
    t.regions.map((r) => [r.start, r.pages]),
    [
      ['0x1000', 2],
      ['0x9000', 1],
    ],
  );
  const back = loadTrace(write('t.trace', serializeTrace({ ...t, intervalMs: 100 })));
  assert.equal(back.intervalMs, 100);
  assert.deepEqual(back.regions, t.regions);
  for (let s = 0; s < 3; s++) {
    assert.deepEqual([...back.dirty[s]], [...t.dirty[s]]);
    assert.deepEqual([...back.accessed![s]], [...t.accessed![s]]);
  }
});

test('change sizes round-trip and replay as writes of that size', () => {
  const t = parsePublicTrace(
    JSON.stringify({
      '1000': { isDirtyList: [1, 0, 1] },
      '2000': { isDirtyList: [0, 1, 1] },
      '3000': { isDirtyList: [1, 1, 1] },
    }),
    'inline',
  );
  const changes = [Uint16Array.of(16, 4096), Uint16Array.of(100, 0), Uint16Array.of(8, 9, 4000)];
  const file = write('c.trace', serializeTrace({ ...t, changes }));
  const back = loadTrace(file);
  assert.deepEqual(
    back.changes!.map((c) => [...c]),
    changes.map((c) => [...c]),
  );
  assert.throws(
    () => serializeTrace({ ...t, changes: [Uint16Array.of(1), ...changes.slice(1)] }),
    /sample 0 has 2 dirty pages but 1 change sizes/,
  );
  // The emulator writes each recorded change as one run of that many bytes (whole pages without sizes).
  const differing = (trace: typeof t): number[] => {
    const w = new TraceWorkload(trace, new ContentPool(1, 4096), 1);
    const mem = Buffer.alloc(3 * 4096);
    const out: number[] = [];
    for (let k = 0; k < 7; k++) {
      const page = w.page;
      const before = Buffer.from(mem.subarray(page * 4096, (page + 1) * 4096));
      w.apply(mem);
      out.push(changedBytes(before, mem.subarray(page * 4096, (page + 1) * 4096)));
    }
    return out;
  };
  const sized = differing(back);
  const whole = differing(t);
  assert.ok(sized[0] <= 16 && sized[0] >= 8, `a 16-byte change writes at most 16 bytes: ${sized[0]}`);
  assert.ok(sized[4] <= 8, `an 8-byte change: ${sized[4]}`);
  assert.ok(sized[1] > 3900 && sized[3] > 3900, `a whole page, and a mapping change (0) as one: ${sized}`);
  assert.ok(
    whole.every((n) => n > 3900),
    `without sizes every write is a whole page: ${whole}`,
  );
});

test('bad traces are refused with what is wrong', () => {
  const cases: [string, string | Buffer, RegExp][] = [
    ['notjson.json', '{"1000": {"isDirtyList": [1, 0]', /not valid JSON/],
    ['list.json', '[1, 2]', /neither precog's trace format/],
    ['null.json', '{"1000": null}', /has no isDirtyList/],
    ['empty.json', '{}', /has no pages/],
    ['key.json', '{"zz": {"isDirtyList": [1]}}', /"zz" is not a hex address/],
    ['unaligned.json', '{"1001": {"isDirtyList": [1]}}', /not aligned to 4096/],
    ['values.json', '{"1000": {"isDirtyList": [1, 2]}}', /must be a list of 0\/1/],
    ['missing.json', '{"1000": {"isAccessed": [1]}}', /has no isDirtyList/],
    [
      'ragged.json',
      '{"1000": {"isDirtyList": [1, 0]}, "2000": {"isDirtyList": [1]}}',
      /has 1 samples, the first page has 2/,
    ],
    [
      'changes-short.trace',
      'PRECOG-TRACE 1\n{"pageSize":4096,"intervalMs":100,"regions":[{"start":"0x1000","pages":16}],"samples":1,"accessed":false,"changes":true}\n\x03\x00\x10\x00',
      /sample 0 has 2 dirty pages but only 2 bytes of change sizes follow \(4 needed\)/,
    ],
    [
      'changes-big.trace',
      'PRECOG-TRACE 1\n{"pageSize":4096,"intervalMs":100,"regions":[{"start":"0x1000","pages":16}],"samples":1,"accessed":false,"changes":true}\n\x01\x00\x01\x10',
      /change of 4097 bytes, more than a page/,
    ],
    [
      'changes-long.trace',
      'PRECOG-TRACE 1\n{"pageSize":4096,"intervalMs":100,"regions":[{"start":"0x1000","pages":16}],"samples":1,"accessed":false,"changes":true}\n\x01\x00\x10\x00\x00',
      /body has 5 bytes, the header announces 1 samples that take 4/,
    ],
    ['binary.bin', Buffer.from([0, 1, 2, 3]), /neither precog's trace format .* nor the public JSON format/],
    ['header.trace', 'PRECOG-TRACE 1\n{"pageSize": 4096}\n', /header needs pageSize/],
    [
      'short.trace',
      'PRECOG-TRACE 1\n{"pageSize":4096,"intervalMs":100,"regions":[{"start":"0x1000","pages":16}],"samples":3,"accessed":false}\n\x01\x02',
      /body has 2 bytes, .* 3 samples of 2 bytes .*truncated or corrupt/,
    ],
  ];
  for (const [name, body, re] of cases) assert.throws(() => loadTrace(write(name, body)), re, name);
  assert.throws(() => loadTrace(join(dir, 'nope.json')), /cannot read trace file .*ENOENT/);
});

test('trace info reports what a trace holds', () => {
  const t = parsePublicTrace(
    JSON.stringify({
      '1000': { isDirtyList: [1, 0, 1, 1] },
      '2000': { isDirtyList: [0, 1, 1, 0] },
      '3000': { isDirtyList: [0, 0, 0, 0] },
      '4000': { isDirtyList: [1, 1, 1, 0] },
    }),
    'inline',
  );
  const changes = [
    Uint16Array.of(16, 4096),
    Uint16Array.of(100, 0),
    Uint16Array.of(8, 8, 8),
    Uint16Array.of(32),
  ];
  const file = write('info.trace', serializeTrace({ ...t, intervalMs: 500, changes }));
  const i = traceInfo(file);
  assert.equal(i.pages, 4);
  assert.equal(i.samples, 4);
  assert.equal(i.dirtyPerSample, 2); // 2, 2, 3, 1
  assert.equal(i.dirtyShare, 8 / 16);
  assert.ok(Math.abs(i.pageMBps - (8 * 4096) / 2 / 1e6) < 1e-9, `pages: ${i.pageMBps}`);
  // A recorded 0 counts as a whole page, as the emulator replays it.
  const bytes = 16 + 4096 + 100 + 4096 + 8 * 3 + 32;
  assert.ok(Math.abs(i.changedMBps! - bytes / 2 / 1e6) < 1e-9, `changed: ${i.changedMBps}`);
  assert.equal(i.changeBytesMedian, 32);
  assert.equal(traceInfo(write('plain.trace', serializeTrace(t))).changedMBps, null);
});
