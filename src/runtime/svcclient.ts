/**
 * A client of a containerized redis on the service LAN, run from the LAN's own namespace (precog-lan, testbed.ts):
 * the user's view of a migration. It keeps ONE TCP connection and issues `INCR key` back to back (the next request
 * leaves when the reply to the last came, plus `intervalMs`), and records what a user would notice:
 *
 * - failed requests (an error reply, or the connection closed or reset with a request outstanding); after a failure
 *   it reconnects (counted) and goes on, so a broken move shows up as failures, not as a hang;
 * - the longest pause: the longest time between two consecutive replies (or from the last reply to the stop);
 * - whether the state went on: every reply must be the previous one plus one (redis continued, nothing lost or
 *   applied twice);
 * - the connection itself: its local port and how many connections were opened (1 when it survived the move).
 *
 *   const c = await startServiceClient(state, { address: '10.213.80.10', port: 6379 });
 *   ... migrate ...
 *   const r = await c.stop(); // r.failed, r.maxPauseMs, r.connections, r.sequential, r.last
 */
import { spawn } from 'node:child_process';
import type { TestbedState } from './testbed.ts';

export interface ServiceClientOptions {
  address: string;
  port: number;
  /** The counter it increments (default "precog:client"). */
  key?: string;
  /** Milliseconds between a reply and the next request (default 2). */
  intervalMs?: number;
}

export interface ServiceClientResult {
  requests: number;
  replies: number;
  failed: number;
  /** The first few errors, as the client saw them. */
  errors: string[];
  /** TCP connections opened (1: the first one lasted the whole run). */
  connections: number;
  /** Local port of the first connection, and of the last one. */
  firstPort: number;
  lastPort: number;
  /** Longest time between two replies (ms), and the wall-clock time (ms) it ended. */
  maxPauseMs: number;
  maxPauseEndedAt: number;
  /** The first and last values the counter returned; every reply was the one before it + 1. */
  first: number;
  last: number;
  sequential: boolean;
}

export interface ServiceClient {
  readonly pid: number | undefined;
  /** The local port of its (first) connection. */
  readonly port: number;
  /** Replies so far (from the progress lines the client prints every 100 ms). */
  replies(): number;
  stop(): Promise<ServiceClientResult>;
}

const CLIENT = `
const net = require('node:net');
const [address, port, key, interval] = process.argv.slice(1);
const now = () => performance.timeOrigin + performance.now();
const r = { requests: 0, replies: 0, failed: 0, errors: [], connections: 0, firstPort: 0, lastPort: 0,
  maxPauseMs: 0, maxPauseEndedAt: 0, first: 0, last: 0, sequential: true };
const cmd = Buffer.from('*2\\r\\n$4\\r\\nINCR\\r\\n$' + Buffer.byteLength(key) + '\\r\\n' + key + '\\r\\n');
let sock = null, buf = '', outstanding = false, lastReply = 0, stopping = false, timer = null;
function fail(why) {
  if (outstanding) { r.failed++; outstanding = false; }
  if (r.errors.length < 10) r.errors.push(new Date().toISOString() + ' ' + why);
}
function send() {
  timer = null;
  if (stopping || !sock || outstanding) return;
  outstanding = true; r.requests++;
  sock.write(cmd);
}
function connect() {
  r.connections++;
  buf = '';
  const s = net.connect({ host: address, port: Number(port) });
  sock = s;
  s.setNoDelay(true);
  s.on('connect', () => {
    r.lastPort = s.localPort;
    if (!r.firstPort) { r.firstPort = s.localPort; process.stdout.write('ready ' + s.localPort + '\\n'); }
    send();
  });
  s.on('data', (d) => {
    buf += d.toString('latin1');
    let i;
    while ((i = buf.indexOf('\\r\\n')) >= 0) {
      const line = buf.slice(0, i); buf = buf.slice(i + 2);
      const t = now();
      if (line[0] === ':') {
        const v = Number(line.slice(1));
        if (r.replies === 0) r.first = v; else if (v !== r.last + 1) r.sequential = false;
        r.last = v; r.replies++;
        if (lastReply && t - lastReply > r.maxPauseMs) { r.maxPauseMs = t - lastReply; r.maxPauseEndedAt = t; }
        lastReply = t;
      } else fail('reply ' + JSON.stringify(line.slice(0, 100)));
      outstanding = false;
      if (!timer) timer = setTimeout(send, Number(interval));
    }
  });
  s.on('error', (e) => fail('connection: ' + e.message));
  s.on('close', () => {
    if (stopping || sock !== s) return;
    fail('connection closed');
    sock = null;
    setTimeout(connect, 100);
  });
}
connect();
const progress = setInterval(() => process.stdout.write('n ' + r.replies + '\\n'), 100);
process.stdin.resume();
process.stdin.on('end', () => {
  stopping = true;
  clearInterval(progress);
  const t = now();
  if (lastReply && t - lastReply > r.maxPauseMs) { r.maxPauseMs = t - lastReply; r.maxPauseEndedAt = t; }
  if (outstanding) r.requests--;
  process.stdout.write('result ' + JSON.stringify(r) + '\\n', () => process.exit(0));
});
`;

/** Starts the client in the LAN namespace; resolves once its connection is up (rejects after 5 s without). */
export async function startServiceClient(
  state: TestbedState,
  opts: ServiceClientOptions,
): Promise<ServiceClient> {
  if (!state.service)
    throw new Error('this testbed has no service network; run "precog testbed down", then "up"');
  const child = spawn(
    'nsenter',
    [
      `--net=/run/netns/${state.service.netns}`,
      process.execPath,
      '-e',
      CLIENT,
      opts.address,
      String(opts.port),
      opts.key ?? 'precog:client',
      String(opts.intervalMs ?? 2),
    ],
    { stdio: ['pipe', 'pipe', 'pipe'] },
  );
  let out = '';
  let err = '';
  let replies = 0;
  let result: ServiceClientResult | null = null;
  let port = 0;
  let readyResolve: () => void = () => {};
  const ready = new Promise<void>((res) => (readyResolve = res));
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  child.stdout.on('data', (d: Buffer) => {
    out += d.toString();
    let i;
    while ((i = out.indexOf('\n')) >= 0) {
      const line = out.slice(0, i);
      out = out.slice(i + 1);
      if (line.startsWith('ready ')) {
        port = Number(line.slice(6));
        readyResolve();
      } else if (line.startsWith('n ')) replies = Number(line.slice(2));
      else if (line.startsWith('result ')) result = JSON.parse(line.slice(7)) as ServiceClientResult;
    }
  });
  const exited = new Promise<number | null>((res) => child.on('exit', (code) => res(code)));
  const timeout = new Promise<'timeout'>((res) => setTimeout(() => res('timeout'), 5000).unref());
  const first = await Promise.race([ready.then(() => 'ready' as const), exited, timeout]);
  if (first !== 'ready') {
    child.kill('SIGKILL');
    throw new Error(
      `the service client could not connect to ${opts.address}:${opts.port} from ${state.service.netns}` +
        (err.trim() ? `: ${err.trim().split('\n').slice(-2).join(' ')}` : ' within 5 s'),
    );
  }
  return {
    pid: child.pid,
    port,
    replies: () => replies,
    async stop() {
      child.stdin.end();
      const kill = setTimeout(() => child.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(kill);
      if (!result) throw new Error(`the service client ended without a result: ${err.trim()}`);
      return result;
    },
  };
}
