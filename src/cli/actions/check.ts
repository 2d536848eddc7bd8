import { hostChecks } from '../../runtime/check.ts';
import { emit, jsonTarget, type JsonFlag } from './json.ts';

/** `precog check`: prints each check with its fix; exit code 1 when a required one fails. */
export function check(f: { json?: JsonFlag }): void {
  const target = jsonTarget(f.json);
  const checks = hostChecks(true);
  const bad = checks.filter((c) => c.required && !c.ok);
  emit(
    target,
    checks,
    () =>
      checks
        .map(
          (c) =>
            `${c.ok ? 'ok  ' : c.required ? 'FAIL' : 'warn'}  ${c.what.padEnd(11)} ${c.detail}` +
            (c.ok ? '' : `\n      fix: ${c.fix}`) +
            '\n',
        )
        .join('') +
      (bad.length === 0 ? 'this host can move containers\n' : `${bad.length} required check(s) failed\n`),
  );
  if (bad.length > 0) process.exitCode = 1;
}
