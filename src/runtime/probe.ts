/**
 * Downtime measured from outside: a probe that asks the workload every few milliseconds, from the testbed's third
 * network namespace (precog-probe, testbed.ts), and records every answer.
 *
 * The probe is a small Node UDP client started with `nsenter --net=/run/netns/precog-probe`. It sends one datagram
 * every `intervalMs` to each host's probe address (the host side of the probe's own veth pair to that host, never
 * the a<->b migration link) at the workload's probe port; memchange.py answers "<pages written>\n", counter.py
 * "<counter>\n". Each reply is recorded as (time, host, value). The downtime is the longest silence between two
 * consecutive replies from any host: from the last reply before the service stopped answering to the first one after
 * it answered again, wherever it then runs. The values tell whether the state went on (a migration) or started
 * over (a restart).
 *
 *   const p = await startProbe(state, { port: 7001, intervalMs: 2 });
 *   ... freeze, migrate ...
 *   const r = await p.stop(); // r.downtimeMs, r.lastBefore, r.firstAfter, r.continued, r.answeredBy
 *
 * Times are milliseconds on the wall clock with sub-millisecond resolution (performance.timeOrigin +
 * performance.now(), in the probe process), comparable with probeNow() in this process.
 *
 * The answers come through a pipe that this process must keep reading: while a probe runs, keep the event loop free
 * (spawn, not spawnSync, for long commands), or the probe process blocks on its output and stops asking, which
 * would read as downtime.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { existsSync } from 'node:fs';
import { UsageError } from '../util/errors.ts';
import type { TestbedState } from './testbed.ts';

/** The UDP port the workloads answer on by default (memchange.py, counter.py --probe-port). */
export const PROBE_PORT = 7001;

export interface ProbeOptions {
  /** The workload's UDP port (default 7001). */
  port?: number;
  /** Milliseconds between two questions to each host (default 2, at least 0.5). */
  intervalMs?: number;
  /** The hosts to ask (default: every host the testbed's probe reaches). */
  hosts?: string[];
  /**
   * startProbe resolves once some host has answered, and rejects if none has within this many milliseconds
   * (default 5000); 0 resolves as soon as the probe runs.
   */
  awaitReplyMs?: number;
}

/** One answer: when it arrived (wall-clock ms), from which host, and the value it carried. */
export interface ProbeSample {
  t: number;
  host: string;
  value: number;
}

export interface ProbeResult {
  /** Every answer, in arrival order. */
  samples: ProbeSample[];
  /** Questions sent (to all hosts together). */
  sent: number;
  intervalMs: number;
  port: number;
  /** The window analysed: from the first answer to the stop (wall-clock ms). */
  startedAt: number;
  stoppedAt: number;
  /**
   * The longest silence in the window: the longest gap between consecutive answers (from any host), or from the
   * last answer to the stop if the service had not answered again by then.
   */
  downtimeMs: number;
  /** The answer before the longest silence, and the first one after it (null: none came before the stop). */
  lastBefore: ProbeSample | null;
  firstAfter: ProbeSample | null;
  /** The state went on across the silence: firstAfter.value >= lastBefore.value (false when firstAfter is null). */
  continued: boolean;
  /** Hosts that answered at least once, in order of their first answer. */
  answeredBy: string[];
}

export interface Probe {
  /** The probe process (on this machine, in the probe namespace). */
  readonly pid: number | undefined;
  /** Answers so far (grows while the probe runs). */
  readonly samples: readonly ProbeSample[];
  /** Resolves with the first answer (from `host`, if given) that arrived after `after`, or null after `timeoutMs`. */
  waitForReply(opts: { host?: string; after?: number }, timeoutMs: number): Promise<ProbeSample | null>;
  /** Stops the probe process and analyses what it recorded. */
  stop(): Promise<ProbeResult>;
}

/** Now, on the probes' time scale (wall-clock ms, sub-millisecond resolution). */
export const probeNow = (): number => performance.timeOrigin + performance.now();

/**
 * The probe process: asks every target every interval, prints "ready", then "<t> <host> <value>" per answer, and
 * "sent <n>" when its stdin closes (its parent stopped it or died), then exits.
 */
const CLIENT = `
const dgram = require('node:dgram');
const [port, interval, ...targets] = process.argv.slice(1);
const hosts = targets.map((t) => t.split('='));
const byAddr = new Map(hosts.map(([h, a]) => [a, h]));
const now = () => performance.timeOrigin + performance.now();
const sock = dgram.createSocket('udp4');
let sent = 0;
let out = '';
const flush = () => { if (out) { process.stdout.write(out); out = ''; } };
sock.on('error', () => {});
sock.on('message', (msg, rinfo) => {
  const t = now();
  const host = byAddr.get(rinfo.address);
  const value = Number.parseInt(msg.toString('latin1'), 10);
  if (host !== undefined && Number.isFinite(value)) out += t.toFixed(3) + ' ' + host + ' ' + value + '\\n';
});
const q = Buffer.from('?\\n');
let next = performance.now();
function tick() {
  for (const [, a] of hosts) { sock.send(q, Number(port), a, () => {}); sent++; }
  flush();
  next += Number(interval);
  const wait = next - performance.now();
  if (wait < -50 * Number(interval)) next = performance.now();
  timer = setTimeout(tick, Math.max(0, wait));
}
let timer;
sock.bind(0, () => { process.stdout.write('ready\\n'); tick(); });
const end = () => { clearTimeout(timer); flush(); process.stdout.write('sent ' + sent + '\\n', () => process.exit(0)); };
process.stdin.on('end', end).on('error', end).resume();
process.on('SIGTERM', end);
`;

/** The addresses the probe sends to, by host. */
function probeTargets(state: TestbedState, hosts: string[] | undefined): [string, string][] {
  if (!state.probe)
    throw new UsageError(
      'this testbed has no probe namespace (it was started by an older precog): run "precog testbed down", then "up"',
    );
  const all = Object.entries(state.probe.addresses);
  if (!hosts) return all;
  return hosts.map((h) => {
    const hit = all.find(([name]) => name === h);
    if (!hit)
      throw new UsageError(
        `the probe does not reach host "${h}"; it reaches ${all.map((x) => x[0]).join(', ')}`,
      );
    return hit;
  });
}

/**
 * Starts the probe in the testbed's probe namespace. Resolves once a host answered (see awaitReplyMs). The probe
 * process is killed by stop(), and when this process exits.
 */
export async function startProbe(state: TestbedState, opts: ProbeOptions = {}): Promise<Probe> {
  const port = opts.port ?? PROBE_PORT;
  const intervalMs = opts.intervalMs ?? 2;
  if (!Number.isInteger(port) || port < 1 || port > 65535)
    throw new UsageError(`probe port ${port} must be a whole number between 1 and 65535`);
  if (!(intervalMs >= 0.5)) throw new UsageError(`probe interval ${intervalMs} ms must be at least 0.5 ms`);
  const targets = probeTargets(state, opts.hosts);
  const nsFile = `/run/netns/${state.probe!.netns}`;
  if (!existsSync(nsFile))
    throw new UsageError(`the probe namespace ${state.probe!.netns} does not exist; is the testbed up?`);

  const child: ChildProcessWithoutNullStreams = spawn(
    'nsenter',
    [
      `--net=${nsFile}`,
      '--',
      process.execPath,
      '-e',
      CLIENT,
      String(port),
      String(intervalMs),
      ...targets.map(([h, a]) => `${h}=${a}`),
    ],
    { stdio: ['pipe', 'pipe', 'pipe'], env: { PATH: process.env.PATH ?? '/usr/bin:/bin', LANG: 'C.UTF-8' } },
  );
  const killOnExit = () => child.kill('SIGKILL');
  process.on('exit', killOnExit);

  const samples: ProbeSample[] = [];
  let sent = 0;
  let stderr = '';
  let rest = '';
  let ready = false;
  let exited = false;
  const waiters = new Set<() => void>();
  const notify = () => waiters.forEach((w) => w());
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  child.stdout.setEncoding('utf8').on('data', (d: string) => {
    const lines = (rest + d).split('\n');
    rest = lines.pop() ?? '';
    for (const line of lines) {
      if (line === 'ready') ready = true;
      else if (line.startsWith('sent ')) sent = Number(line.slice(5));
      else {
        const [t, host, value] = line.split(' ');
        samples.push({ t: Number(t), host, value: Number(value) });
      }
    }
    notify();
  });
  const closed = new Promise<void>((resolve) =>
    child.on('close', () => {
      exited = true;
      process.off('exit', killOnExit);
      notify();
      resolve();
    }),
  );
  child.on('error', (err) => (stderr += String(err)));

  const waitFor = async (cond: () => boolean, timeoutMs: number): Promise<boolean> => {
    if (cond()) return true;
    return new Promise<boolean>((resolve) => {
      const check = () => {
        if (cond() || exited) finish(cond());
      };
      const timer = setTimeout(() => finish(cond()), timeoutMs);
      const finish = (ok: boolean) => {
        clearTimeout(timer);
        waiters.delete(check);
        resolve(ok);
      };
      waiters.add(check);
    });
  };

  let stopped: Promise<ProbeResult> | undefined;
  const stop = (): Promise<ProbeResult> =>
    (stopped ??= (async () => {
      const stoppedAt = probeNow();
      if (!exited) {
        child.stdin.on('error', () => {}); // the probe may have gone already (EPIPE): it is being stopped anyway
        child.stdin.end();
        const hard = setTimeout(() => child.kill('SIGKILL'), 2000);
        await closed;
        clearTimeout(hard);
      }
      const window = samples.filter((s) => s.t <= stoppedAt);
      return {
        ...analyzeProbe(window, stoppedAt),
        samples: [...samples],
        sent,
        intervalMs,
        port,
      };
    })());

  const probe: Probe = {
    pid: child.pid,
    samples,
    async waitForReply({ host, after = -Infinity }, timeoutMs) {
      const match = () => samples.find((s) => s.t > after && (host === undefined || s.host === host));
      await waitFor(() => match() !== undefined, timeoutMs);
      return match() ?? null;
    },
    stop,
  };

  const started = await waitFor(() => ready, 10_000);
  if (!started) {
    await stop();
    throw new Error(`the probe did not start in ${state.probe!.netns}${stderr ? `: ${stderr.trim()}` : ''}`);
  }
  const awaitReplyMs = opts.awaitReplyMs ?? 5000;
  if (awaitReplyMs > 0 && !(await waitFor(() => samples.length > 0, awaitReplyMs))) {
    await stop();
    throw new Error(
      `no answer on UDP port ${port} from ${targets.map(([h, a]) => `${h} (${a})`).join(' or ')} within ${awaitReplyMs} ms; ` +
        'is a workload with --probe-port running?',
    );
  }
  return probe;
}

/**
 * The longest silence in a list of answers (any order) up to `stoppedAt`: see ProbeResult. Pure, for tests and
 * for analysing recorded samples again.
 */
export function analyzeProbe(
  samples: readonly ProbeSample[],
  stoppedAt: number,
): Omit<ProbeResult, 'samples' | 'sent' | 'intervalMs' | 'port'> {
  const s = [...samples].sort((x, y) => x.t - y.t);
  const answeredBy: string[] = [];
  for (const x of s) if (!answeredBy.includes(x.host)) answeredBy.push(x.host);
  if (s.length === 0)
    return {
      startedAt: stoppedAt,
      stoppedAt,
      downtimeMs: 0,
      lastBefore: null,
      firstAfter: null,
      continued: false,
      answeredBy,
    };
  let best = 0;
  let at = -1;
  for (let i = 1; i < s.length; i++) {
    const gap = s[i].t - s[i - 1].t;
    if (gap > best) {
      best = gap;
      at = i;
    }
  }
  const tail = stoppedAt - s[s.length - 1].t;
  if (tail > best) {
    return {
      startedAt: s[0].t,
      stoppedAt,
      downtimeMs: tail,
      lastBefore: s[s.length - 1],
      firstAfter: null,
      continued: false,
      answeredBy,
    };
  }
  const lastBefore = at > 0 ? s[at - 1] : s[0];
  const firstAfter = at > 0 ? s[at] : s[0];
  return {
    startedAt: s[0].t,
    stoppedAt,
    downtimeMs: best,
    lastBefore,
    firstAfter,
    continued: firstAfter.value >= lastBefore.value,
    answeredBy,
  };
}
