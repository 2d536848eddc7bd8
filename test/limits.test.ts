// Small inputs that asked for huge allocations or endless loops: a 190-byte LAYOUT that
// declared 2^26 pages, fractional page sizes, regions that do not add up; a 1 MiB gzip trace that expanded to
// gigabytes, a trace of 2^35 pages, a sampling interval of a nanosecond. Each is now refused by name, before anything
// is allocated. No root needed.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { after, test } from 'node:test';
import { layoutRefusal, MigrationDestination } from '../src/engine/destination.ts';
import { FrameType, jsonFrame, PROTOCOL_VERSION } from '../src/transport/frame.ts';
import { loadTrace, TRACE_MAGIC } from '../src/memory/trace.ts';
import { ProtocolError } from '../src/util/errors.ts';

const dir = mkdtempSync(join(tmpdir(), 'precog-limits-'));
after(() => rmSync(dir, { recursive: true, force: true }));

const layout = (pageCount: number, regions = [{ start: '0x10000', pages: pageCount }]) => ({
  pageSize: 4096,
  pageCount,
  regions,
});

test('a LAYOUT beyond the page limit is refused before the destination allocates its store', () => {
  const dest = new MigrationDestination({ restoreCost: 0 });
  dest.handle(
    jsonFrame(FrameType.Hello, { version: PROTOCOL_VERSION, migrationId: 'big-1', purpose: 'memory' }),
    0,
  );
  const frame = jsonFrame(FrameType.Layout, layout(2 ** 26));
  assert.ok(frame.length < 200, `a ${frame.length}-byte frame`);
  const rss = process.memoryUsage().rss;
  assert.throws(
    () => dest.handle(frame, 0),
    (err: Error) =>
      err instanceof ProtocolError &&
      /LAYOUT refused: 67108864 pages is more than this destination takes \(16777216/.test(err.message),
  );
  assert.ok(process.memoryUsage().rss - rss < 64 << 20, 'nothing of the declared size was allocated');
});

test('malformed layouts are refused by name', () => {
  const cases: [unknown, RegExp][] = [
    [{ ...layout(4), pageSize: 4096.5 }, /page size 4096.5/],
    [{ ...layout(4), pageSize: '4096' }, /page size "4096"/],
    [{ ...layout(4), pageCount: 1.5 }, /page count 1.5/],
    [layout(4, [{ start: '0x10000', pages: 3 }]), /regions hold 3 pages, the layout says 4/],
    [layout(4, [{ start: 'zz', pages: 4 }]), /region start "zz" is not a hex address/],
    [layout(4, [{ start: '0x10000', pages: -4 }]), /has -4 pages/],
    [{ ...layout(4), regions: [] }, /regions must be a list/],
    [null, /not a JSON object/],
    [
      layout(3, [
        { start: '0x10000', pages: 1, pid: 1 },
        { start: '0x20000', pages: 1, pid: 2 },
        { start: '0x30000', pages: 1, pid: 1 },
      ] as never),
      /the regions of process 1 are not consecutive/,
    ],
    // 3000 one-page processes: 3000 open files (and write buffers) at the destination.
    [
      layout(
        3000,
        Array.from({ length: 3000 }, (_, k) => ({ start: '0x10000', pages: 1, pid: k + 1 })) as never,
      ),
      /more than 1024 processes, more than this destination takes \(PRECOG_MAX_PROCESSES\)/,
    ],
  ];
  for (const [l, why] of cases)
    assert.match(layoutRefusal(l as never, 1 << 24) ?? 'passed', why, JSON.stringify(l));
  assert.equal(layoutRefusal(layout(4) as never, 1 << 24), null);
});

test('a gzip trace that expands beyond PRECOG_MAX_TRACE_BYTES is refused, not decompressed', () => {
  const file = join(dir, 'bomb.trace.gz');
  writeFileSync(file, gzipSync(Buffer.alloc(8 << 20)));
  const was = process.env.PRECOG_MAX_TRACE_BYTES;
  process.env.PRECOG_MAX_TRACE_BYTES = String(1 << 20);
  try {
    assert.throws(() => loadTrace(file), /expands to more than 1048576 bytes \(PRECOG_MAX_TRACE_BYTES\)/);
  } finally {
    if (was === undefined) delete process.env.PRECOG_MAX_TRACE_BYTES;
    else process.env.PRECOG_MAX_TRACE_BYTES = was;
  }
});

test('a trace of 2^35 pages or with a nanosecond interval is refused', () => {
  const header = (h: object) => Buffer.from(`${TRACE_MAGIC}${JSON.stringify(h)}\n`);
  const big = join(dir, 'big.trace');
  writeFileSync(
    big,
    header({
      pageSize: 4096,
      intervalMs: 100,
      regions: [{ start: '0x0', pages: 2 ** 35 }],
      samples: 1,
      accessed: false,
    }),
  );
  assert.throws(() => loadTrace(big), /34359738368 pages, more than precog replays/);
  const fast = join(dir, 'fast.trace');
  writeFileSync(
    fast,
    Buffer.concat([
      header({
        pageSize: 4096,
        intervalMs: 1e-6,
        regions: [{ start: '0x0', pages: 8 }],
        samples: 1,
        accessed: false,
      }),
      Buffer.alloc(1),
    ]),
  );
  assert.throws(() => loadTrace(fast), /intervalMs >= 1/);
});
