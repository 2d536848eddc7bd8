// Fuzzing of everything precog reads from a peer or a file (docs/security.md "Fuzzing"): the frame
// reader and decoder, the destination's HELLO, LAYOUT and PAGES handling, the state blob decoder and its tar lister,
// the CRIU image reader, both page-server protocol parsers, and the trace loader. Each target gets valid inputs
// mutated (bit flips, byte sets, cuts, insertions, repeated slices; JSON fields replaced by any JSON value) and
// random ones, with fast-check. An input may be accepted or refused; refused means precog's own error classes
// (ProtocolError, InputError, UsageError), whose messages name the problem. A TypeError, RangeError or any other
// raw JS error is a bug: it is what reached peers as "Cannot read properties of null".
//
// PRECOG_FUZZ_RUNS (default 2000) inputs per target; PRECOG_FUZZ_SEED replays a failing run (its seed is printed).
import assert from 'node:assert/strict';
import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test, type TestContext } from 'node:test';
import fc from 'fast-check';
import { BatchWriter } from '../src/codec/batch.ts';
import { codecChain } from '../src/codec/index.ts';
import { readImage, writeImage } from '../src/criu/images.ts';
import { LazyServeSession } from '../src/criu/lazyserver.ts';
import { encodeIov, PageServerSession, PS_IOV_GET, PS_IOV_OPEN2, psCmd } from '../src/criu/pageserver.ts';
import { PE_PRESENT } from '../src/criu/pages.ts';
import { MigrationDestination } from '../src/engine/destination.ts';
import type { HelloMessage } from '../src/engine/messages.ts';
import type { Layout } from '../src/util/interfaces.ts';
import { parsePrecogTrace, parsePublicTrace, serializeTrace, type Trace } from '../src/memory/trace.ts';
import { encodeState, listTar, StateReceiver } from '../src/migrate/state.ts';
import { decodeFrame, encodeFrame, FrameType, jsonFrame, PROTOCOL_VERSION } from '../src/transport/frame.ts';
import { FrameReader } from '../src/transport/stream.ts';
import { InputError, ProtocolError, UsageError } from '../src/util/errors.ts';

const RUNS = Number(process.env.PRECOG_FUZZ_RUNS) || 2000;
const SEED = process.env.PRECOG_FUZZ_SEED ? Number(process.env.PRECOG_FUZZ_SEED) : Date.now() % 2 ** 31;

/** Runs `check` on RUNS inputs; any error but precog's own fails the test with the input and the seed. */
function fuzz<T>(t: TestContext, what: string, arb: fc.Arbitrary<T>, check: (input: T) => void): void {
  const t0 = performance.now();
  let refused = 0;
  const out = fc.check(
    fc.property(arb, (input) => {
      try {
        check(input);
      } catch (err) {
        if (err instanceof ProtocolError || err instanceof InputError || err instanceof UsageError) {
          assert.ok(err.message.length > 0, 'a refusal names its reason');
          refused++;
          return;
        }
        throw err;
      }
    }),
    { numRuns: RUNS, seed: SEED, endOnFailure: true },
  );
  if (out.failed) {
    const err = out.errorInstance as Error | undefined;
    assert.fail(
      `${what}: ${err?.stack?.split('\n').slice(0, 3).join(' | ') ?? 'no error (skips or interrupted)'}\n` +
        `on input ${preview(out.counterexample?.[0])} (PRECOG_FUZZ_SEED=${SEED}, path ${out.counterexamplePath})`,
    );
  }
  t.diagnostic(
    `${what}: ${RUNS} inputs (${refused} refused by name) in ${Math.round(performance.now() - t0)} ms, seed ${SEED}`,
  );
}

/** A short form of a failing input for the message. */
function preview(x: unknown): string {
  const text = Buffer.isBuffer(x)
    ? `${x.length} bytes: ${x.toString('hex')}`
    : typeof x === 'string'
      ? JSON.stringify(x)
      : JSON.stringify(x, (_k, v: unknown) => (Buffer.isBuffer(v) ? `<${v.length} bytes>` : v));
  return text && text.length > 400 ? `${text.slice(0, 400)}...` : String(text);
}

/** One change to a byte string. */
type Mutation = { op: 'flip' | 'set' | 'cut' | 'insert' | 'repeat'; at: number; value: number; len: number };
const mutation: fc.Arbitrary<Mutation> = fc.record({
  op: fc.constantFrom('flip', 'set', 'cut', 'insert', 'repeat'),
  at: fc.nat(),
  value: fc.nat(255),
  len: fc.integer({ min: 1, max: 64 }),
});

function mutate(base: Buffer, ms: Mutation[]): Buffer {
  let b = Buffer.from(base);
  for (const m of ms) {
    const at = b.length ? m.at % b.length : 0;
    switch (m.op) {
      case 'flip':
        if (b.length) b[at] ^= 1 << (m.value & 7);
        break;
      case 'set':
        if (b.length) b[at] = m.value;
        break;
      case 'cut':
        b = b.subarray(0, at);
        break;
      case 'insert':
        b = Buffer.concat([b.subarray(0, at), Buffer.alloc(m.len, m.value), b.subarray(at)]);
        break;
      case 'repeat':
        b = Buffer.concat([b.subarray(0, at + m.len), b.subarray(at)]);
        break;
    }
  }
  return b;
}

/** Valid bases, mutated, or plain random bytes. */
function mutatedFrom(bases: Buffer[]): fc.Arbitrary<Buffer> {
  return fc.oneof(
    fc
      .tuple(fc.constantFrom(...bases), fc.array(mutation, { minLength: 1, maxLength: 6 }))
      .map(([b, ms]) => mutate(b, ms)),
    fc.uint8Array({ maxLength: 512 }).map((u) => Buffer.from(u)),
  );
}

/** A JSON value with some of its fields (at any depth) replaced by arbitrary JSON, deleted, or the whole replaced. */
function mutatedJson(base: unknown): fc.Arbitrary<unknown> {
  const paths: string[][] = [];
  const walk = (v: unknown, p: string[]): void => {
    paths.push(p);
    if (v && typeof v === 'object') for (const [k, x] of Object.entries(v)) walk(x, [...p, k]);
  };
  walk(base, []);
  const edit = fc.record({
    path: fc.constantFrom(...paths),
    value: fc.oneof(
      fc.jsonValue(),
      fc.constantFrom(null, -1, 0, 1e300, 2 ** 53, 0.5, '', '../../x', [], {}, true),
    ),
    remove: fc.boolean(),
  });
  return fc.array(edit, { minLength: 1, maxLength: 3 }).map((edits) => {
    let doc = structuredClone(base) as unknown;
    for (const e of edits) {
      if (e.path.length === 0) {
        doc = structuredClone(e.value);
        continue;
      }
      let parent = doc as Record<string, unknown> | null;
      for (const k of e.path.slice(0, -1)) {
        if (!parent || typeof parent !== 'object') break;
        parent = parent[k] as Record<string, unknown> | null;
      }
      if (!parent || typeof parent !== 'object') continue;
      const last = e.path[e.path.length - 1];
      if (e.remove) delete parent[last];
      else parent[last] = structuredClone(e.value);
    }
    return doc;
  });
}

const work = mkdtempSync(join(tmpdir(), 'precog-fuzz-'));
after(() => rmSync(work, { recursive: true, force: true }));

const HELLO: HelloMessage = {
  version: PROTOCOL_VERSION,
  migrationId: 'm-1',
  strategy: 'precopy',
  purpose: 'criu-images',
  container: { runtime: 'precog', name: 'web', from: 'a', restore: 'lazy', lazyTimeoutMs: 1000 },
};
const LAYOUT: Layout = {
  pageSize: 4096,
  pageCount: 24,
  regions: [
    { start: '7f0000000000', pages: 16, pid: 1 },
    { start: '0x1000', pages: 8, pid: 2 },
  ],
};

/** PAGES frames of the layout above in every codec, some pages deltas of others. */
function pagesFrames(): Buffer[] {
  const out: Buffer[] = [];
  const page = (seed: number) => {
    const b = Buffer.alloc(4096);
    for (let i = 0; i < 4096; i += 64) b.writeUInt32LE((seed * 2654435761 + i) >>> 0, i);
    return b;
  };
  for (const codec of ['raw', 'zero', 'xor-lz4', 'zstd', 'xbzrle']) {
    const w = new BatchWriter(codecChain(codec), 4096, 64 * 1024);
    w.add(0, page(1));
    w.add(1, Buffer.alloc(4096));
    const base = page(2);
    const changed = Buffer.from(base);
    changed.writeUInt32LE(7, 100);
    w.add(17, changed, base);
    out.push(Buffer.from(w.seal(1).frame));
  }
  return out;
}

describe('fuzzing what precog reads from peers and files', () => {
  test('frame reader and decoder: mutated frame streams in random chunks', (t) => {
    const stream = Buffer.concat([
      jsonFrame(FrameType.Hello, HELLO),
      jsonFrame(FrameType.Layout, LAYOUT),
      ...pagesFrames(),
      encodeFrame(FrameType.Commit, Buffer.from('{"rounds":1}')),
    ]);
    const arb = fc.tuple(
      mutatedFrom([stream]),
      fc.array(fc.integer({ min: 1, max: 300 }), { maxLength: 20 }),
    );
    fuzz(t, 'frames', arb, ([bytes, cuts]) => {
      const reader = new FrameReader();
      let at = 0;
      for (const n of [...cuts, bytes.length]) {
        for (const f of reader.push(bytes.subarray(at, at + n))) {
          const frame = decodeFrame(f);
          assert.ok(frame.type in FrameType);
        }
        at += n;
        if (at >= bytes.length) break;
      }
    });
  });

  test('destination: mutated HELLO, LAYOUT and PAGES (every codec) in a session', (t) => {
    const pages = pagesFrames();
    // One of the three mutated at a time, so that the later ones are reached.
    const arb = fc.oneof(
      fc.tuple(mutatedJson(HELLO), fc.constant<unknown>(LAYOUT), fc.constant(undefined)),
      fc.tuple(fc.constant<unknown>(HELLO), mutatedJson(LAYOUT), fc.constant(undefined)),
      fc.tuple(fc.constant<unknown>(HELLO), fc.constant<unknown>(LAYOUT), mutatedFrom(pages)),
    );
    fuzz(t, 'HELLO/LAYOUT/PAGES', arb, ([hello, layout, frame]) => {
      const dest = new MigrationDestination({ restoreCost: 0, maxPages: 1 << 12 });
      dest.handle(jsonFrame(FrameType.Hello, hello), 0);
      dest.handle(jsonFrame(FrameType.Layout, layout), 0);
      if (frame) dest.handle(frame, 0);
    });
  });

  test('state blob decoder and tar lister: mutated states of a container', (t) => {
    const images = join(work, 'images');
    const upper = join(work, 'upper');
    mkdirSync(images, { recursive: true });
    mkdirSync(join(upper, 'etc'), { recursive: true });
    writeFileSync(join(images, 'core-1.img'), Buffer.alloc(300, 1));
    writeFileSync(join(images, 'inventory.img'), Buffer.alloc(40, 2));
    writeFileSync(join(upper, 'etc', 'motd'), 'hello\n');
    const dump = {
      tasks: new Map(),
      shmem: new Map(),
    } as unknown as Parameters<typeof encodeState>[0]['dump'];
    const blob = encodeState({
      container: { name: 'web' },
      pids: [[1, 1]],
      dump,
      extras: [],
      imagesDir: images,
      upperDir: upper,
    });
    const header = JSON.parse(blob.toString('utf8', 12, 12 + blob.readUInt32LE(8))) as unknown;
    const withHeader = (h: unknown): Buffer => {
      const json = Buffer.from(JSON.stringify(h) ?? 'null');
      const head = Buffer.alloc(12);
      head.write('PRCGST01', 0, 'latin1');
      head.writeUInt32LE(json.length, 8);
      return Buffer.concat([head, json, blob.subarray(12 + blob.readUInt32LE(8))]);
    };
    // Each state arrives in two chunks cut anywhere (as STATE frames may cut it) and is stored as the agent does.
    const arb = fc.tuple(fc.oneof(mutatedFrom([blob]), mutatedJson(header).map(withHeader)), fc.nat());
    let k = 0;
    fuzz(t, 'state', arb, ([b, cut]) => {
      const at = cut % (b.length + 1);
      const rx = new StateReceiver(join(work, `rx-${k++}`), 'state', { bytes: 1 << 20, hint: 'limit' });
      try {
        rx.push(b.subarray(0, at));
        rx.push(b.subarray(at));
        const { dir } = rx.finish();
        for (const name of ['images.tar', 'upper.tar']) listTar(join(dir, name), name);
      } finally {
        rx.close();
        rmSync(join(work, `rx-${k - 1}`), { recursive: true, force: true });
      }
    });
  });

  test('CRIU image reader: mutated images', (t) => {
    const core = writeImage('CORE', [Buffer.from([0x08, 0x01, 0x10, 0x02])]);
    const inventory = writeImage('INVENTORY', [Buffer.from([0x08, 0x02, 0x20, 0x01])]);
    const pagemap = writeImage('PAGEMAP', [
      Buffer.from([0x08, 0x01]),
      Buffer.from([0x08, 0x80, 0x20, 0x10, 0x02, 0x18, 0x04]),
    ]);
    fuzz(t, 'CRIU images', mutatedFrom([core, inventory, pagemap]), (b) => {
      readImage(b, { label: 'fuzz.img' });
    });
  });

  test('page-server parsers: mutated dump streams (receiving) and lazy-pages requests (serving)', (t) => {
    const dump = Buffer.concat([
      encodeIov({ cmd: PS_IOV_OPEN2, nrPages: 0, vaddr: 0n, dstId: (1n << 8n) | 1n }, 32),
      encodeIov({ cmd: psCmd(6, PE_PRESENT), nrPages: 1, vaddr: 0x1000n, dstId: (1n << 8n) | 1n }, 32),
      Buffer.alloc(4096, 3),
      encodeIov({ cmd: 0x1023, nrPages: 0, vaddr: 0n, dstId: 0n }, 32),
    ]);
    const gets = Buffer.concat([
      encodeIov({ cmd: PS_IOV_GET, nrPages: 2, vaddr: 0x7f0000001000n, dstId: 7n }, 32),
      encodeIov({ cmd: 0x1023, nrPages: 0, vaddr: 0n, dstId: 0n }, 32),
    ]);
    fuzz(t, 'page-server dump streams', mutatedFrom([dump]), (b) => {
      const s = new PageServerSession({ maxBytes: 1 << 20 });
      s.push(b);
      s.finish();
    });
    fuzz(t, 'lazy-pages requests', mutatedFrom([gets]), (b) => {
      new LazyServeSession().push(b);
    });
  });

  test('trace loader: mutated precog traces and public traces', (t) => {
    const trace: Trace = {
      pageSize: 4096,
      intervalMs: 100,
      regions: [{ start: '0x1000', pages: 20 }],
      pageCount: 20,
      samples: 3,
      dirty: [Uint8Array.of(1, 2, 3), Uint8Array.of(4, 5, 6), Uint8Array.of(7, 8, 9)],
      accessed: null,
      source: 'fuzz',
    };
    const bin = serializeTrace(trace);
    const header = JSON.parse(bin.toString('utf8', 15, bin.indexOf(10, 15))) as unknown;
    const withHeader = (h: unknown): Buffer =>
      Buffer.concat([
        Buffer.from(`PRECOG-TRACE 1\n${JSON.stringify(h) ?? 'null'}\n`),
        bin.subarray(bin.indexOf(10, 15) + 1),
      ]);
    fuzz(t, 'precog traces', fc.oneof(mutatedFrom([bin]), mutatedJson(header).map(withHeader)), (b) => {
      parsePrecogTrace(b, 'fuzz');
    });
    const pub = {
      '1000': { isDirtyList: [0, 1, 1], isAccessed: [1, 1, 1] },
      '2000': { isDirtyList: [1, 0, 0], isAccessed: [1, 0, 1] },
    };
    const text = Buffer.from(JSON.stringify(pub));
    const arb = fc.oneof(
      mutatedFrom([text]).map((b) => b.toString('latin1')),
      mutatedJson(pub).map((v) => JSON.stringify(v) ?? 'null'),
    );
    fuzz(t, 'public traces', arb, (text) => {
      parsePublicTrace(text, 'fuzz');
    });
  });
});
