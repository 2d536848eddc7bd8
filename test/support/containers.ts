import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import type { ContainerInfo } from '../../src/runtime/container.ts';
import { must, precog } from './cli.ts';

/** `precog ps --json`. */
export function ps(): ContainerInfo[] {
  return JSON.parse(must(precog(['ps', '--json']), 'ps').stdout) as ContainerInfo[];
}

export function find(name: string): ContainerInfo | undefined {
  return ps().find((c) => c.name === name);
}

/** Runs a shell command inside a container's mount namespace (from this machine); fails the test if it fails. */
export function inContainer(c: ContainerInfo, script: string): string {
  const r = spawnSync('nsenter', ['-t', String(c.machinePid!.pid), '-m', '--', '/bin/sh', '-c', script], {
    encoding: 'utf8',
  });
  assert.equal(r.status, 0, `in container ${c.name}: ${script}: ${r.stderr}`);
  return r.stdout;
}
