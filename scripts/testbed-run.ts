/** Shared by the scripts that drive the test hosts from outside (benchmarks, trace recording). Root only. */
import { spawnSync } from 'node:child_process';
import { readState } from '../src/runtime/testbed.ts';

const BIN = new URL('../bin/precog', import.meta.url).pathname;

export function requireRootOrExit(what: string): void {
  if (process.getuid?.() !== 0) {
    console.error(`${what} needs root (the test hosts); run it as root`);
    process.exit(2);
  }
}

/** Runs bin/precog; throws with its stderr when it fails. */
export function precog(...args: string[]): string {
  const r = spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8', timeout: 900_000 });
  if (r.status !== 0) throw new Error(`precog ${args.join(' ')} failed: ${r.stderr}`);
  return r.stdout;
}

/** Runs a shell line inside a test host. */
export const inHost = (host: string, script: string): string =>
  precog('testbed', 'exec', host, '--', 'sh', '-c', script);

/** Runs fn with the testbed up: uses one that is up already, or brings one up and takes it down afterwards. */
export async function withTestbed<T>(fn: () => Promise<T> | T): Promise<T> {
  const own = !readState()?.complete;
  if (own) precog('testbed', 'up');
  try {
    return await fn();
  } finally {
    if (own) precog('testbed', 'down');
  }
}
