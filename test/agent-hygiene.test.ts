// An agent's connection hygiene and its own house-keeping (docs/security.md "Connection hygiene"): a flood
// of raw connections beyond the handshake limit closes the oldest and leaves an authenticated session alone; the
// session limit answers with an ERROR; the pages of all migrations at once are bounded; a sender that drips a frame byte by byte is dropped at the frame timeout
// though every byte resets the idle timeout; STATE beyond its limit is refused by name; a bug's raw JS error does
// not reach the peer; what a previous agent run left unfinished is removed at start; an expired certificate of
// its own is named, at the agent and at the client, with the fix.
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import tls from 'node:tls';
import { after, test } from 'node:test';
import { Agent, type AgentOptions } from '../src/agent/agent.ts';
import { decodeFrame, encodeFrame, FrameType, jsonFrame, PROTOCOL_VERSION } from '../src/transport/frame.ts';
import { STATE_MAGIC, STATE_SCHEMA } from '../src/migrate/state.ts';
import { initPki, issueCert, loadIdentity } from '../src/transport/pki.ts';
import { certificateProblem, connectTls, type Endpoint } from '../src/transport/tls.ts';
import { FrameReader } from '../src/transport/stream.ts';
import { createLogger } from '../src/util/log.ts';
import pino from 'pino';

const root = mkdtempSync(join(tmpdir(), 'precog-hygiene-'));
after(() => rmSync(root, { recursive: true, force: true }));
const pki = join(root, 'pki');
await initPki(pki);
await issueCert(pki, 'hosta');
await issueCert(pki, 'hostb');
const client = loadIdentity(pki, 'hosta');

async function agentWith(
  name: string,
  o: Partial<AgentOptions> = {},
): Promise<{ agent: Agent; at: Endpoint }> {
  const agent = new Agent({
    listen: { host: '127.0.0.1', port: 0 },
    stateDir: join(root, name),
    identity: loadIdentity(pki, 'hostb'),
    spillBytes: 4 * 2 ** 20,
    log: createLogger('test-agent', 'silent'),
    ...o,
  });
  return { agent, at: await agent.start() };
}

/** An authenticated session: frames in, frames out, and whether the agent closed it. */
async function session(at: Endpoint) {
  const s = tls.connect({
    host: at.host,
    port: at.port,
    ca: client.ca,
    cert: client.cert,
    key: client.key,
    servername: 'hostb',
    minVersion: 'TLSv1.3',
  });
  await new Promise<void>((resolve, reject) => s.once('secureConnect', resolve).once('error', reject));
  const reader = new FrameReader();
  const frames: { type: FrameType; text: string }[] = [];
  let closed = false;
  s.on('data', (d: Buffer) => {
    for (const f of reader.push(d)) {
      const frame = decodeFrame(f);
      frames.push({ type: frame.type, text: frame.payload.toString('utf8') });
    }
  });
  s.on('error', () => {});
  const closing = new Promise<void>((r) => s.on('close', () => ((closed = true), r())));
  return { s, frames, closing, isClosed: () => closed };
}

const hello = (id: string, extra: object = {}) =>
  jsonFrame(FrameType.Hello, { version: PROTOCOL_VERSION, migrationId: id, strategy: 'precopy', ...extra });
const until = async (cond: () => boolean, ms = 5000) => {
  for (let t = 0; t < ms && !cond(); t += 20) await new Promise((r) => setTimeout(r, 20));
};

test('a flood beyond the handshake limit closes the oldest connections; a live session is left alone', async () => {
  const { agent, at } = await agentWith('flood', { limits: { pendingHandshakes: 4 } });
  try {
    const live = await session(at);
    const raws = Array.from({ length: 20 }, () => {
      const r = net.connect(at.port, at.host);
      const p = { closed: false };
      r.on('error', () => {});
      r.on('close', () => (p.closed = true));
      return p;
    });
    await until(() => raws.filter((r) => !r.closed).length <= 4);
    assert.ok(raws.filter((r) => !r.closed).length <= 4, 'at most 4 connections left in the handshake');
    // The authenticated session, older than all of them, still works.
    live.s.write(hello('after-flood'));
    await until(() => live.frames.length > 0);
    assert.equal(live.frames[0]?.type, FrameType.HelloAck, 'the live session answers after the flood');
    assert.ok(!live.isClosed());
    live.s.destroy();
  } finally {
    await agent.close();
  }
});

test('sessions beyond the limit get an ERROR naming it', async () => {
  const { agent, at } = await agentWith('sessions', { limits: { sessions: 2 } });
  try {
    const a = await session(at);
    const b = await session(at);
    await until(() => false, 100);
    const c = await session(at);
    await c.closing;
    assert.match(c.frames[0]?.text ?? '', /this agent has 2 sessions open, its limit/);
    a.s.destroy();
    b.s.destroy();
  } finally {
    await agent.close();
  }
});

test('a sender that drips a frame byte by byte is dropped at the frame timeout, not kept by the idle timeout', async () => {
  const { agent, at } = await agentWith('slow', { idleTimeoutMs: 5000, limits: { frameTimeoutMs: 400 } });
  try {
    const slow = await session(at);
    const bytes = hello('slow-1');
    let i = 0;
    const t0 = performance.now();
    const drip = setInterval(() => {
      if (!slow.isClosed() && i < bytes.length) slow.s.write(bytes.subarray(i, ++i));
    }, 50);
    await slow.closing;
    clearInterval(drip);
    const ms = performance.now() - t0;
    assert.ok(i < bytes.length, 'dropped before the frame was complete');
    assert.ok(ms >= 350 && ms < 3000, `dropped after ${Math.round(ms)} ms`);
  } finally {
    await agent.close();
  }
});

test('STATE beyond the limit is refused by name, and the refused migration leaves no file', async () => {
  const { agent, at } = await agentWith('state-limit', { limits: { stateBytes: 1000 } });
  try {
    const s = await session(at);
    s.s.write(hello('big-state'));
    s.s.write(
      jsonFrame(FrameType.Layout, { pageSize: 4096, pageCount: 1, regions: [{ start: '0x1000', pages: 1 }] }),
    );
    s.s.write(jsonFrame(FrameType.State, { blob: 'x'.repeat(2000) }));
    await s.closing;
    assert.match(s.frames.map((f) => f.text).join('\n'), /state is over 1000 bytes, this agent's limit/);
    await until(() => readdirSync(join(root, 'state-limit')).length === 0);
    assert.deepEqual(readdirSync(join(root, 'state-limit')), []);
    // A container's state is refused at its header, by the size it declares, before its sections come.
    const c = await session(at);
    c.s.write(hello('big-box', { purpose: 'criu-images' }));
    c.s.write(
      jsonFrame(FrameType.Layout, { pageSize: 4096, pageCount: 1, regions: [{ start: '0x1000', pages: 1 }] }),
    );
    const header = Buffer.from(
      JSON.stringify({
        schema: STATE_SCHEMA,
        container: {},
        pids: [],
        tasks: [],
        shmem: [],
        extras: [],
        sections: ['images.tar', 'upper.tar', 'extras', 'shmem'].map((name, i) => ({
          name,
          bytes: i === 1 ? 1e9 : 0,
        })),
      }),
    );
    const head = Buffer.alloc(12);
    head.write(STATE_MAGIC, 0, 'latin1');
    head.writeUInt32LE(header.length, 8);
    assert.ok(12 + header.length < 1000, 'the header alone is within the limit');
    c.s.write(encodeFrame(FrameType.State, Buffer.concat([head, header])));
    await Promise.race([c.closing, new Promise((r) => setTimeout(r, 3000))]);
    assert.match(
      c.frames.map((f) => f.text).join('\n'),
      /declares 1000000\d{3} bytes, over the limit of 1000 bytes: this agent's limit \(PRECOG_MAX_STATE_BYTES\)/,
    );
    await until(() => readdirSync(join(root, 'state-limit')).length === 0);
    assert.deepEqual(readdirSync(join(root, 'state-limit')), []);
  } finally {
    await agent.close();
  }
});

test('pages declared by all sessions at once are bounded: one more LAYOUT is refused until a session ends', async () => {
  const { agent, at } = await agentWith('in-flight', { limits: { pagesInFlight: 100 } });
  const layout = (pages: number) =>
    jsonFrame(FrameType.Layout, { pageSize: 4096, pageCount: pages, regions: [{ start: '0x1000', pages }] });
  try {
    const a = await session(at);
    a.s.write(hello('flight-a'));
    a.s.write(layout(80));
    await until(() => existsSync(join(root, 'in-flight', 'flight-a')));
    const b = await session(at);
    b.s.write(hello('flight-b'));
    b.s.write(layout(30));
    await b.closing;
    assert.match(
      b.frames.map((f) => f.text).join('\n'),
      /receiving 80 pages already; 30 more would pass its limit of 100 \(PRECOG_MAX_PAGES_IN_FLIGHT\)/,
    );
    a.s.destroy();
    await a.closing;
    await until(() => !existsSync(join(root, 'in-flight', 'flight-a')));
    const c = await session(at);
    c.s.write(hello('flight-c'));
    c.s.write(layout(30));
    await until(() => existsSync(join(root, 'in-flight', 'flight-c')));
    assert.ok(existsSync(join(root, 'in-flight', 'flight-c')), 'taken once the first session ended');
    assert.ok(!c.isClosed());
    c.s.destroy();
  } finally {
    await agent.close();
  }
});

test('a bug in the agent (a raw TypeError) reaches the peer as "internal error", not its message', async () => {
  // The bug: the session's logger throws when the migration starts (an injected fault, not a peer's doing).
  const log = createLogger('test-agent', 'silent');
  const child = log.child.bind(log);
  log.child = ((b: object) => {
    const c = child(b);
    const grandchild = c.child.bind(c);
    c.child = ((b2: object) => {
      if ('migration' in b2) throw new TypeError("Cannot read properties of null (reading 'secret')");
      return grandchild(b2);
    }) as unknown as typeof c.child;
    return c;
  }) as unknown as typeof log.child;
  const { agent, at } = await agentWith('internal', { log });
  try {
    const s = await session(at);
    s.s.write(hello('bug-1'));
    s.s.write(
      jsonFrame(FrameType.Layout, { pageSize: 4096, pageCount: 1, regions: [{ start: '0x1000', pages: 1 }] }),
    );
    await s.closing;
    const said = s.frames.map((f) => f.text).join('\n');
    assert.match(said, /internal error in the destination agent \(TypeError\)/);
    assert.doesNotMatch(said, /secret|properties of null/);
  } finally {
    await agent.close();
  }
});

test('at start the agent removes what a previous run left unfinished, and keeps committed migrations', async () => {
  const dir = join(root, 'leftovers');
  mkdirSync(join(dir, 'crashed'), { recursive: true });
  writeFileSync(join(dir, 'crashed', 'pages.img.part'), Buffer.alloc(4096));
  mkdirSync(join(dir, 'done-1'), { recursive: true });
  for (const f of ['COMMITTED', 'layout.json', 'pages.img']) writeFileSync(join(dir, 'done-1', f), 'x');
  // A state directory half received (StateReceiver's), with a section in it.
  mkdirSync(join(dir, 'done-1', 'state.part'));
  writeFileSync(join(dir, 'done-1', 'state.part', 'images.tar'), 'x');
  mkdirSync(join(dir, 'outgoing'), { recursive: true });
  const { agent } = await agentWith('leftovers');
  try {
    assert.ok(!existsSync(join(dir, 'crashed')), 'the unfinished migration is gone');
    assert.deepEqual(readdirSync(join(dir, 'done-1')).sort(), ['COMMITTED', 'layout.json', 'pages.img']);
    assert.ok(existsSync(join(dir, 'outgoing')), "the agent's outgoing moves are not touched");
  } finally {
    await agent.close();
  }
});

test('an expired certificate of this host is named with the fix: at the client before connecting, at the agent when it starts', async () => {
  const id = loadIdentity(pki, 'hosta');
  assert.equal(certificateProblem(id), null);
  assert.match(
    certificateProblem(id, new Date(Date.now() + 900 * 86400_000)) ?? '',
    /this host's certificate \(hosta\) expired on .*: peers refuse it; issue a new one: precog pki issue hosta --force/,
  );
  assert.match(certificateProblem(id, new Date(0)) ?? '', /is not valid before .* \(check the clock\)/);
  // A certificate that ended half a day ago.
  await issueCert(pki, 'old', { days: -0.5 });
  const old = loadIdentity(pki, 'old');
  await assert.rejects(connectTls({ host: '127.0.0.1', port: 9 }, old, 'hostb'), /\(old\) expired on/);
  const lines: string[] = [];
  const log = pino({ level: 'info' }, { write: (l: string) => lines.push(l) });
  const agent = new Agent({
    listen: { host: '127.0.0.1', port: 0 },
    stateDir: join(root, 'old-agent'),
    identity: old,
    spillBytes: 4 * 2 ** 20,
    log,
  });
  await agent.start();
  await agent.close();
  assert.ok(
    lines.some((l) => /"level":50/.test(l) && /\(old\) expired on/.test(l)),
    `an error line names the expired certificate: ${lines.join('')}`,
  );
});
