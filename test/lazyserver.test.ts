// CRIU's page server, serving side for post-copy (src/criu/lazyserver.ts): a client that talks like
// `criu lazy-pages --page-server` (GET headers in CRIU 4.2's 32-byte layout or 4.1's 24-byte one, replies read in
// order, CLOSE and its status) gets exactly the pages its source holds, in the order it asked, even when the source
// answers out of order or with fewer pages; bad requests reset the connection with an error naming the offset; the
// server listens nowhere (its daemon gets a socket pair) and a second connection is refused. The round trip against
// real CRIU is in test/migrate.test.ts and test/runc.test.ts (post-copy).
import assert from 'node:assert/strict';
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import type { Socket } from 'node:net';
import { describe, test } from 'node:test';
import { LazyPageServer, LazyServeSession } from '../src/criu/lazyserver.ts';
import {
  encodeIov,
  psCmd,
  PS_IOV_ADD_F,
  PS_IOV_CLOSE,
  PS_IOV_GET,
  PS_IOV_ADD,
} from '../src/criu/pageserver.ts';
import { PAGE_SIZE, PE_PRESENT } from '../src/criu/pages.ts';
import { ContainerPostcopy } from '../src/agent/postcopy.ts';
import { createLogger } from '../src/util/log.ts';
import { socketPair } from './support/socketpair.ts';

/** Inodes of the TCP and Unix sockets this process listens on (state 0A in /proc/net/tcp*, 01 + ACC in unix). */
function listeningInodes(): string[] {
  const mine = new Set<string>();
  for (const fd of readdirSync('/proc/self/fd')) {
    try {
      const m = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/self/fd/${fd}`));
      if (m) mine.add(m[1]);
    } catch {
      // closed meanwhile
    }
  }
  const listening: string[] = [];
  for (const f of ['tcp', 'tcp6']) {
    for (const line of readFileSync(`/proc/self/net/${f}`, 'utf8').split('\n').slice(1)) {
      const cols = line.trim().split(/\s+/);
      if (cols[3] === '0A' && mine.has(cols[9])) listening.push(`${f}:${cols[9]}`);
    }
  }
  for (const line of readFileSync('/proc/self/net/unix', 'utf8').split('\n').slice(1)) {
    const cols = line.trim().split(/\s+/);
    // Flags 00010000: __SO_ACCEPTCON, a listening socket.
    if (cols[3] === '00010000' && mine.has(cols[6])) listening.push(`unix:${cols[6]}`);
  }
  return listening.sort();
}

/** The page of task pid at vaddr as the test's source holds it: recognisable bytes. */
function pageOf(pid: number, vaddr: bigint): Buffer {
  const b = Buffer.alloc(PAGE_SIZE);
  for (let i = 0; i < PAGE_SIZE; i += 16) {
    b.writeUInt32LE(pid, i);
    b.writeBigUInt64LE(vaddr, i + 4);
    b.writeUInt32LE(i, i + 12);
  }
  return b;
}

function get(pid: number, vaddr: bigint, nrPages: number, layout: 24 | 32 = 32): Buffer {
  return encodeIov({ cmd: PS_IOV_GET, nrPages, vaddr, dstId: BigInt(pid) }, layout);
}

/** Reads exactly n bytes from the socket. */
function reader(sock: Socket) {
  let buf = Buffer.alloc(0);
  let want: { n: number; resolve: (b: Buffer) => void } | null = null;
  let ended: Error | null = null;
  const pump = () => {
    if (want && buf.length >= want.n) {
      const out = buf.subarray(0, want.n);
      buf = buf.subarray(want.n);
      const w = want;
      want = null;
      w.resolve(out);
    }
  };
  sock.on('data', (d: Buffer) => {
    buf = Buffer.concat([buf, d]);
    pump();
  });
  const fail = (e: Error) => (ended = e);
  sock.on('error', fail);
  sock.on('close', () => fail(new Error('closed')));
  return {
    read: (n: number) =>
      new Promise<Buffer>((resolve, reject) => {
        if (ended && buf.length < n) return reject(ended);
        want = { n, resolve };
        pump();
        sock.once('close', () => want && reject(new Error(`closed with ${buf.length} of ${n} bytes`)));
      }),
  };
}

/** A fake `criu lazy-pages` on the far end of a socket pair whose near end the server serves. */
async function daemon(
  server: LazyPageServer,
): Promise<{ sock: Socket; read: (n: number) => Promise<Buffer> }> {
  const [sock, near] = await socketPair();
  server.attach(near);
  return { sock, ...reader(sock) };
}

describe('lazy page server (post-copy, serving side)', () => {
  test('asks the source for each GET as it arrives, answers in order with its pages, fewer when it has fewer, then CLOSE', async () => {
    const asked: string[] = [];
    let askedBeforeFirstAnswer = 0;
    const replied: string[] = [];
    const server = new LazyPageServer({
      source: async (pid, vaddr, nr) => {
        asked.push(`${pid}:${vaddr.toString(16)}:${nr}`);
        // The first request is answered last: replies must still go out in request order.
        if (vaddr === 0x10000n) {
          await new Promise((r) => setTimeout(r, 50));
          askedBeforeFirstAnswer = asked.length;
        }
        const n = vaddr === 0x40000n ? 1 : nr; // a source that holds only one page there
        return Buffer.concat(Array.from({ length: n }, (_, k) => pageOf(pid, vaddr + BigInt(k * PAGE_SIZE))));
      },
      onReply: (g) => replied.push(g.vaddr.toString(16)),
    });
    const d = await daemon(server);
    // CRIU 4.2 leaves the 4 bytes of padding after cmd uninitialised: garbage there must not matter.
    const dirty = (b: Buffer) => (b.writeUInt32LE(0xdeadbeef, 4), b);
    d.sock.write(
      Buffer.concat([dirty(get(7, 0x10000n, 2)), get(8, 0x20000n, 1), dirty(get(7, 0x40000n, 3))]),
    );
    const expect = [
      { pid: 7, vaddr: 0x10000n, n: 2 },
      { pid: 8, vaddr: 0x20000n, n: 1 },
      { pid: 7, vaddr: 0x40000n, n: 1 },
    ];
    for (const e of expect) {
      const head = await d.read(32);
      assert.equal(
        head.readUInt32LE(0),
        psCmd(PS_IOV_ADD_F, PE_PRESENT),
        'reply command: ADD_F with PE_PRESENT',
      );
      assert.equal(Number(head.readBigUInt64LE(8)), e.n, 'pages in the reply');
      assert.equal(head.readBigUInt64LE(16), e.vaddr, 'reply in request order');
      assert.equal(head.readBigUInt64LE(24), BigInt(e.pid));
      const data = await d.read(e.n * PAGE_SIZE);
      for (let k = 0; k < e.n; k++)
        assert.ok(
          data
            .subarray(k * PAGE_SIZE, (k + 1) * PAGE_SIZE)
            .equals(pageOf(e.pid, e.vaddr + BigInt(k * PAGE_SIZE))),
        );
    }
    d.sock.write(encodeIov({ cmd: PS_IOV_CLOSE, nrPages: 0, vaddr: 0n, dstId: 0n }, 32));
    assert.equal((await d.read(4)).readInt32LE(0), 0, 'CLOSE answered with status 0');
    const stats = await server.done;
    assert.deepEqual([stats.requests, stats.pages, stats.layout], [3, 4, 32]);
    assert.deepEqual(asked, ['7:10000:2', '8:20000:1', '7:40000:3']);
    // Each request goes to the source as it arrives (a fault behind a slow request is already on its way).
    assert.equal(askedBeforeFirstAnswer, 3);
    assert.deepEqual(replied, ['10000', '20000', '40000']);
    assert.equal(stats.latenciesMs.length, 3);
    server.close();
  });

  test('reads CRIU 4.1’s 24-byte headers, fed byte by byte', async () => {
    const server = new LazyPageServer({ source: (pid, vaddr) => pageOf(pid, vaddr) });
    const d = await daemon(server);
    const req = get(3, 0x7f0000007000n, 1, 24);
    for (const b of req) d.sock.write(Buffer.from([b]));
    const head = await d.read(24);
    assert.equal(head.readUInt32LE(4), 1);
    assert.equal(head.readBigUInt64LE(8), 0x7f0000007000n);
    assert.ok((await d.read(PAGE_SIZE)).equals(pageOf(3, 0x7f0000007000n)));
    d.sock.write(encodeIov({ cmd: PS_IOV_CLOSE, nrPages: 0, vaddr: 0n, dstId: 0n }, 24));
    assert.equal((await d.read(4)).readInt32LE(0), 0);
    assert.equal((await server.done).layout, 24);
  });

  test('it listens nowhere: a second connection is refused, and a server closed before its daemon came fails', async () => {
    const before = listeningInodes();
    const server = new LazyPageServer({ source: (pid, vaddr) => pageOf(pid, vaddr) });
    assert.deepEqual(listeningInodes(), before, 'no listening socket appeared');
    const first = await daemon(server);
    const [, other] = await socketPair();
    assert.throws(() => server.attach(other), /a second connection/);
    assert.ok(other.destroyed, 'the second connection is closed');
    first.sock.write(get(1, 0x1000n, 1));
    await first.read(32 + PAGE_SIZE);
    first.sock.end(encodeIov({ cmd: PS_IOV_CLOSE, nrPages: 0, vaddr: 0n, dstId: 0n }, 32));
    await server.done;
    const never = new LazyPageServer({ source: (pid, vaddr) => pageOf(pid, vaddr) });
    never.close();
    await assert.rejects(never.done, /closed before the daemon came/);
  });

  test('the agent’s post-copy half opens no listening socket', async () => {
    const before = listeningInodes();
    const p = await ContainerPostcopy.prepare(createLogger('test', 'silent'));
    assert.deepEqual(listeningInodes(), before, 'ContainerPostcopy.prepare() listened somewhere');
    assert.deepEqual(p.resumed, {}, 'RESUMED names no address for the daemon');
    p.close();
  });

  test('bad requests end the session with an error naming the offset', async () => {
    const cases: [Buffer, RegExp][] = [
      [encodeIov({ cmd: PS_IOV_ADD, nrPages: 1, vaddr: 0x1000n, dstId: 0x101n }, 32), /only GET and CLOSE/],
      [get(1, 0x1001n, 1), /unaligned/],
      [get(1, 0x1000n, 0, 32), /GET of 0 pages/],
      [Buffer.concat([get(1, 0x1000n, 1), get(0, 0x2000n, 1)]), /at offset 32: GET for task 0/],
    ];
    for (const [bytes, re] of cases) {
      const s = new LazyServeSession();
      assert.throws(() => s.push(bytes), re);
    }
    // Over TCP: the connection is reset and done rejects with the reason.
    const server = new LazyPageServer({ source: (pid, vaddr) => pageOf(pid, vaddr) });
    const d = await daemon(server);
    d.sock.on('error', () => {});
    d.sock.write(cases[0][0]);
    await assert.rejects(server.done, /only GET and CLOSE/);
    // A source that cannot answer fails the session too (the daemon must not get made-up pages).
    const failing = new LazyPageServer({
      source: () => {
        throw new Error('link to the source lost');
      },
    });
    const d2 = await daemon(failing);
    d2.sock.on('error', () => {});
    d2.sock.write(get(1, 0x1000n, 1));
    await assert.rejects(failing.done, /link to the source lost/);
    // A daemon that goes away without CLOSE.
    const quiet = new LazyPageServer({ source: (pid, vaddr) => pageOf(pid, vaddr) });
    const d3 = await daemon(quiet);
    d3.sock.destroy();
    await assert.rejects(quiet.done, /without CLOSE/);
  });
});
