import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadTrace, parsePublicTrace, serializeTrace } from '../src/memory/trace.ts';

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
