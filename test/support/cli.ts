import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { hostCommand, type TestbedState } from '../../src/runtime/testbed.ts';

const BIN = new URL('../../bin/precog', import.meta.url).pathname;

export interface Ran {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs bin/precog as a user would (optionally as another uid, to check the root-only errors). */
export function precog(args: string[], opts: { uid?: number; showStderr?: boolean } = {}): Ran {
  const r = spawnSync(process.execPath, [BIN, ...args], {
    encoding: 'utf8',
    ...(opts.uid !== undefined ? { uid: opts.uid, gid: opts.uid, env: { PATH: process.env.PATH } } : {}),
    stdio: ['ignore', 'pipe', opts.showStderr ? 'inherit' : 'pipe'],
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr ?? '' };
}

export function must(r: Ran, what: string): Ran {
  assert.equal(r.code, 0, `${what} failed (exit ${r.code}): ${r.stderr}${r.stdout}`);
  return r;
}

/** Runs a command in a test host and collects its output (the library route of `exec`). */
export function inHost(state: TestbedState, host: string, argv: string[]): Promise<Ran> {
  const c = hostCommand(state, host, argv);
  return new Promise((resolve, reject) => {
    const child = spawn(c.cmd, c.args, { env: c.env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

/** Starts bin/precog without waiting (for things to do while it runs); `done` resolves when it exits. */
export function precogAsync(
  args: string[],
  env: Record<string, string> = {},
): { pid: number; done: Promise<Ran> } {
  const child = spawn(process.execPath, [BIN, ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, ...env },
  });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const done = new Promise<Ran>((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
  return { pid: child.pid!, done };
}
