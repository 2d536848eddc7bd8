import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, readFileSync } from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Agent, COMMITTED_FILES } from '../src/agent/agent.ts';
import { codecChain } from '../src/codec/index.ts';
import { WallClock } from '../src/util/clock.ts';
import { MigrationSource } from '../src/engine/source.ts';
import { ContentPool } from '../src/memory/content.ts';
import { EmulatedMemory } from '../src/memory/emulated.ts';
import { parseWorkload } from '../src/memory/workloads.ts';
import { parseStrategy } from '../src/policy/index.ts';
import { encodeFrame, FrameType, jsonFrame } from '../src/transport/frame.ts';
import { initPki, issueCert, loadIdentity } from '../src/transport/pki.ts';
import { connectTls, type Endpoint } from '../src/transport/tls.ts';
import { createLogger } from '../src/util/log.ts';

const root = mkdtempSync(join(tmpdir(), 'precog-agent-'));
const pki = join(root, 'pki');
const otherPki = join(root, 'other-pki');
await initPki(pki);
await issueCert(pki, 'hosta');
await issueCert(pki, 'hostb');
await initPki(otherPki);
await issueCert(otherPki, 'mallory');
const stateDir = join(root, 'state');
const agent = new Agent({
  listen: { host: '127.0.0.1', port: 0 },
  stateDir,
  identity: loadIdentity(pki, 'hostb'),
  spillBytes: 4 * 2 ** 20,
  log: createLogger('test-agent', 'silent'),
});
const at: Endpoint = await agent.start();
after(() => agent.close());

function memory(workload: string, bytes: number): EmulatedMemory {
  const plan = parseWorkload(workload, bytes);
  const pool = new ContentPool(5, 4096);
  return new EmulatedMemory(plan.layout, pool, plan.create(pool, 6), new WallClock(), 0.2, 7);
}

async function migrate(mem: EmulatedMemory, id: string): Promise<void> {
  const link = await connectTls(at, loadIdentity(pki, 'hosta'), 'hostb');
  try {
    await new MigrationSource(mem, link, parseStrategy('precopy'), {
      codec: codecChain('zero'),
      batchBytes: 256 * 1024,
      stateBytes: 4096,
      migrationId: id,
    }).run();
  } finally {
    link.close();
  }
}

for (const [label, size] of [
  ['in memory', 2 * 2 ** 20],
  ['spilled to a file', 8 * 2 ** 20],
] as const) {
  test(`a migration over mutual TLS lands byte for byte (${label})`, async () => {
    const mem = memory('idle', size);
    await migrate(mem, `m-${size}`);
    const dir = join(stateDir, `m-${size}`);
    assert.ok(existsSync(join(dir, COMMITTED_FILES.done)));
    assert.ok(readFileSync(join(dir, COMMITTED_FILES.pages)).equals(mem.bytes));
    assert.deepEqual(JSON.parse(readFileSync(join(dir, COMMITTED_FILES.layout), 'utf8')), mem.layout);
  });
}

async function refused(connect: () => tls.TLSSocket): Promise<string> {
  const s = connect();
  return new Promise((resolve) => {
    s.on('error', (e) => resolve(e.message));
    s.on('data', () => resolve('got data'));
    s.on('secureConnect', () => s.write(jsonFrame(FrameType.Hello, {})));
    s.on('close', () => resolve('closed'));
  });
}

test('clients without a certificate from the agent CA are refused', async () => {
  const ca = loadIdentity(pki, 'hosta').ca;
  const noCert = await refused(() => tls.connect({ ...at, ca, servername: 'hostb' }));
  assert.match(noCert, /certificate required|closed|ECONNRESET/);
  const m = loadIdentity(otherPki, 'mallory');
  const foreign = await refused(() =>
    tls.connect({ ...at, ca, key: m.key, cert: m.cert, servername: 'hostb' }),
  );
  assert.match(foreign, /unknown ca|closed|ECONNRESET|decrypt/i);
  // plaintext to a TLS agent: no precog frame ever comes back
  const plain = await new Promise<string>((resolve) => {
    const s = net.connect(at, () => s.write(jsonFrame(FrameType.Hello, { version: 1, migrationId: 'x' })));
    s.on('data', (d) => resolve(d.includes(Buffer.from('PRCG')) ? 'precog answered' : 'tls alert'));
    s.on('close', () => resolve('closed'));
    s.on('error', () => resolve('closed'));
  });
  assert.notEqual(plain, 'precog answered');
  // the client side refuses an agent whose certificate does not carry the expected name
  await assert.rejects(connectTls(at, loadIdentity(pki, 'hosta'), 'hostc'), /hostc/);
});

test('a bad frame ends that session with an error; the agent serves the next one', async () => {
  const id = loadIdentity(pki, 'hosta');
  const s = tls.connect({ ...at, ca: id.ca, key: id.key, cert: id.cert, servername: 'hostb' });
  await new Promise((r) => s.once('secureConnect', r));
  const bad = encodeFrame(FrameType.Pages, Buffer.alloc(64));
  bad[30] ^= 0xff;
  const reply = new Promise<Buffer>((resolve) => {
    const got: Buffer[] = [];
    s.on('data', (d) => got.push(d));
    s.on('close', () => resolve(Buffer.concat(got)));
  });
  s.write(jsonFrame(FrameType.Hello, { version: 1, migrationId: 'badframe', strategy: 'x' }));
  s.write(bad);
  const text = (await reply).toString('latin1');
  assert.match(text, /bad checksum on a Pages frame/);
  const mem = memory('idle', 1 * 2 ** 20);
  await migrate(mem, 'after-bad');
  assert.ok(readFileSync(join(stateDir, 'after-bad', COMMITTED_FILES.pages)).equals(mem.bytes));
});

test('a source that disappears mid-migration leaves nothing behind at the agent', async () => {
  const id = loadIdentity(pki, 'hosta');
  const s = tls.connect({ ...at, ca: id.ca, key: id.key, cert: id.cert, servername: 'hostb' });
  await new Promise((r) => s.once('secureConnect', r));
  s.write(jsonFrame(FrameType.Hello, { version: 1, migrationId: 'cut', strategy: 'x' }));
  s.write(
    jsonFrame(FrameType.Layout, {
      pageSize: 4096,
      pageCount: 4096,
      regions: [{ start: '0x1000', pages: 4096 }],
    }),
  );
  await new Promise((r) => setTimeout(r, 100));
  assert.ok(existsSync(join(stateDir, 'cut')), 'the migration started');
  s.destroy();
  await new Promise((r) => setTimeout(r, 200));
  assert.ok(!readdirSync(stateDir).includes('cut'), 'its directory is gone');
});

/** Sends raw bytes over an authenticated session; returns everything the agent answered before it closed. */
async function exchange(...chunks: Buffer[]): Promise<string> {
  const id = loadIdentity(pki, 'hosta');
  const s = tls.connect({ ...at, ca: id.ca, key: id.key, cert: id.cert, servername: 'hostb' });
  await new Promise((r) => s.once('secureConnect', r));
  const got: Buffer[] = [];
  const closed = new Promise<void>((resolve) => {
    s.on('data', (d) => got.push(d));
    s.on('close', () => resolve());
  });
  for (const c of chunks) s.write(c);
  setTimeout(() => s.end(), 300);
  await closed;
  return Buffer.concat(got).toString('latin1');
}

const hello = (migrationId = 'p1') => jsonFrame(FrameType.Hello, { version: 1, migrationId, strategy: 'x' });

test('protocol errors end the session with an error naming the problem; the agent goes on', async () => {
  const future = hello();
  future[4] = 9;
  assert.match(await exchange(future), /unsupported protocol version 9; this precog speaks version 1/);
  const huge = encodeFrame(FrameType.Pages, Buffer.alloc(0));
  huge.writeUInt32LE(64 * 2 ** 20, 8);
  assert.match(await exchange(hello(), huge), /oversized frame: payload of 67108864 bytes/);
  assert.match(await exchange(encodeFrame(FrameType.Pages, Buffer.alloc(8))), /out-of-order message/);
  assert.match(
    await exchange(hello(), jsonFrame(FrameType.Commit, { rounds: 0 })),
    /out-of-order message: the destination is in state "layout"/,
  );
  assert.match(
    await exchange(jsonFrame(FrameType.Hello, { version: 2, migrationId: 'v2' })),
    /peer speaks protocol 2/,
  );
  assert.match(await exchange(Buffer.from('GET / HTTP/1.1\r\nHost: agent\r\n\r\n')), /bad frame magic/);
  // cut inside a frame: nothing is kept
  const layout = jsonFrame(FrameType.Layout, {
    pageSize: 4096,
    pageCount: 256,
    regions: [{ start: '0x1000', pages: 256 }],
  });
  const pages = encodeFrame(FrameType.Pages, Buffer.alloc(4096 + 17));
  await exchange(hello('cutframe'), layout, pages.subarray(0, 1000));
  await new Promise((r) => setTimeout(r, 100));
  assert.ok(!readdirSync(stateDir).includes('cutframe'));
  // and the agent still serves a whole migration
  const mem = memory('idle', 2 ** 20);
  await migrate(mem, 'after-errors');
  assert.ok(readFileSync(join(stateDir, 'after-errors', COMMITTED_FILES.pages)).equals(mem.bytes));
});

test('the source sees the destination refusal as a clear error and keeps its process', async () => {
  const mem = memory('memchange:rate=1MB/s', 2 ** 20);
  await assert.rejects(
    migrate(mem, '../escape'),
    /failed before the destination confirmed; the source keeps running: the destination refused: HELLO carries an invalid migration id/,
  );
});

test('a second session with the id of a committed or running migration is refused and removes nothing of it', async () => {
  const mem = memory('idle', 2 ** 20);
  await migrate(mem, 'dup-1');
  const committed = join(stateDir, 'dup-1', COMMITTED_FILES.pages);
  assert.ok(readFileSync(committed).equals(mem.bytes));
  // The same id again: refused by name; the committed migration stays whole.
  await assert.rejects(
    migrate(memory('idle', 2 ** 20), 'dup-1'),
    /migration id dup-1 is in use on this agent/,
  );
  await new Promise((r) => setTimeout(r, 100));
  assert.ok(readFileSync(committed).equals(mem.bytes), 'the committed pages are intact');
  // Two sessions at once under one id: the second is refused, the first's directory is its own until it ends.
  const layout = jsonFrame(FrameType.Layout, {
    pageSize: 4096,
    pageCount: 4,
    regions: [{ start: '0x1000', pages: 4 }],
  });
  const first = exchange(hello('dup-2'), layout);
  // Its directory appears once the agent took its HELLO (a TLS handshake first: up to seconds on 2 loaded cores).
  for (let i = 0; i < 200 && !existsSync(join(stateDir, 'dup-2')); i++)
    await new Promise((r) => setTimeout(r, 10));
  assert.ok(existsSync(join(stateDir, 'dup-2')));
  assert.match(await exchange(hello('dup-2'), layout), /migration id dup-2 is in use on this agent/);
  assert.ok(existsSync(join(stateDir, 'dup-2')), "the refused session left the first one's directory alone");
  await first;
  await new Promise((r) => setTimeout(r, 100));
  assert.ok(
    !existsSync(join(stateDir, 'dup-2')),
    'the first session removed its own directory when it was cut',
  );
});

test('a connection that never finishes the TLS handshake is closed after the handshake timeout', async () => {
  const quick = new Agent({
    listen: { host: '127.0.0.1', port: 0 },
    stateDir: join(root, 'state-handshake'),
    identity: loadIdentity(pki, 'hostb'),
    spillBytes: 4 * 2 ** 20,
    handshakeTimeoutMs: 300,
    log: createLogger('test-agent', 'silent'),
  });
  const q = await quick.start();
  try {
    const t0 = performance.now();
    const closedAfter = await new Promise<number>((resolve, reject) => {
      const s = net.connect(q); // raw TCP: no ClientHello ever
      s.on('error', () => {});
      s.on('close', () => resolve(performance.now() - t0));
      setTimeout(() => {
        s.destroy();
        reject(new Error('the agent kept an idle pre-handshake connection for 5 s'));
      }, 5000);
    });
    assert.ok(closedAfter >= 250, `closed after ${closedAfter} ms`);
  } finally {
    await quick.close();
  }
});
