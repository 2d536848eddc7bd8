import assert from 'node:assert/strict';
import { existsSync, readdirSync } from 'node:fs';
import { AGENT, hostPath, type TestbedState } from '../../src/runtime/testbed.ts';
import { must, precog, precogAsync, type Ran } from './cli.ts';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export interface MemcheckStatus {
  ok: boolean;
  checks: number;
  rewrites: number;
  line: string;
}

/**
 * Reads workloads/memcheck.py's status file in a container of another runtime: `exec(host, name, argv)` runs a
 * command in container NAME on HOST (podman exec, runc exec...).
 */
export function memcheckOf(exec: (host: string, name: string, argv: string[]) => Ran): {
  memcheck: (host: string, name: string) => MemcheckStatus;
  waitChecks: (host: string, name: string, after: number) => Promise<MemcheckStatus>;
} {
  /** memcheck's status in the container: "ok <checks> <rewrites> <pages>" or "CORRUPT ...". */
  const memcheck = (host: string, name: string): MemcheckStatus => {
    const line = must(exec(host, name, ['cat', '/tmp/memcheck.status']), 'memcheck status').stdout.trim();
    const [word, checks, rewrites] = line.split(' ');
    return { ok: word === 'ok', checks: Number(checks), rewrites: Number(rewrites), line };
  };
  /** The status once the checks went on past AFTER (or went wrong), waiting up to 10 s. */
  const waitChecks = async (host: string, name: string, after: number): Promise<MemcheckStatus> => {
    let s = memcheck(host, name);
    for (let i = 0; i < 50 && s.ok && s.checks <= after + 2; i++) {
      await sleep(200);
      s = memcheck(host, name);
    }
    return s;
  };
  return { memcheck, waitChecks };
}

/** What a host's agent keeps in its state directory (nothing, once every migration is over). */
/** `precog migrate NAME --runtime RUNTIME --from FROM --to TO --strategy STRATEGY --json`, which must succeed: its report. */
export function migrateJson(
  name: string,
  runtime: string,
  from: string,
  to: string,
  strategy: string,
): Record<string, unknown> {
  const args = [
    'migrate',
    name,
    '--runtime',
    runtime,
    '--from',
    from,
    '--to',
    to,
    '--strategy',
    strategy,
    '--json',
  ];
  const j = JSON.parse(must(precog(args), `migrate ${strategy} ${from} -> ${to}`).stdout) as Record<
    string,
    unknown
  > & { metrics: { downtime: number; totalTime: number; liveRounds: number } };
  // One vocabulary: the report's metrics are the emulator's names, in seconds, and agree with its own ms fields.
  assert.equal(j.schema, 'precog.migrate/v1');
  assert.ok(Math.abs(j.metrics.downtime * 1000 - (j.downtimeMs as number)) < 1e-6, 'metrics.downtime');
  assert.ok(Math.abs(j.metrics.totalTime * 1000 - (j.totalMs as number)) < 1e-6, 'metrics.totalTime');
  assert.equal(j.metrics.liveRounds, j.liveRounds);
  return j;
}

export function agentLeftovers(state: TestbedState, host: string): string[] {
  const dir = hostPath(
    state.hosts.find((h) => h.name === host)!,
    AGENT.stateDir,
  );
  return existsSync(dir) ? readdirSync(dir) : [];
}

/**
 * `precog migrate NAME --runtime RUNTIME --from FROM --to TO` over a slow link (40 Mbit/s out of FROM), with
 * `meanwhile` run once the move is past the destination's checks at its start (its live rounds take seconds on that
 * link): what makes the destination's restore, after the source stopped, fail. `undo` runs afterwards in any case.
 */
export async function migrateWhile(
  state: TestbedState,
  move: { name: string; runtime: string; from: string; to: string },
  meanwhile: () => void,
  undo: () => void | Promise<void>,
): Promise<Ran> {
  const tc = (...args: string[]) => precog(['testbed', 'exec', move.from, '--', 'tc', 'qdisc', ...args]);
  must(
    tc('replace', 'dev', 'eth0', 'root', 'tbf', 'rate', '40mbit', 'burst', '32kbit', 'latency', '50ms'),
    'tc',
  );
  try {
    const m = precogAsync([
      'migrate',
      move.name,
      '--runtime',
      move.runtime,
      '--from',
      move.from,
      '--to',
      move.to,
    ]);
    for (let i = 0; i < 150 && agentLeftovers(state, move.to).length === 0; i++) await sleep(100);
    if (agentLeftovers(state, move.to).length === 0)
      throw new Error(`no migration session reached ${move.to}`);
    await sleep(2000);
    meanwhile();
    return await m.done;
  } finally {
    tc('del', 'dev', 'eth0', 'root');
    await undo();
  }
}
