import { writeFileSync } from 'node:fs';
import { checkWritable } from '../../util/paths.ts';

/** What `--json [file]` parsed to: absent, bare (true), - or a file. */
export type JsonFlag = string | boolean | undefined;

/** Where the JSON goes: nowhere (text only), stdout (instead of the text), or a file (beside the text). */
export type JsonTarget = null | 'stdout' | { file: string };

/** The target of a --json flag; a file is checked writable now, before any work (a UsageError naming it). */
export function jsonTarget(flag: JsonFlag): JsonTarget {
  if (flag === undefined || flag === false) return null;
  if (flag === true || flag === '-') return 'stdout';
  checkWritable(flag, '--json');
  return { file: flag };
}

/** Writes VALUE as JSON where TARGET says, and TEXT to stdout unless the JSON took its place. */
export function emit(target: JsonTarget, value: unknown, text: () => string): void {
  const json = () => JSON.stringify(value, null, 2) + '\n';
  if (target === 'stdout') {
    process.stdout.write(json());
    return;
  }
  if (target) writeFileSync(target.file, json());
  process.stdout.write(text());
}
