import { hostChecks } from '../../runtime/check.ts';

/** `precog check`: prints each check with its fix; exit code 1 when a required one fails. */
export function check(f: { json?: boolean }): void {
  const checks = hostChecks(true);
  if (f.json) process.stdout.write(JSON.stringify(checks, null, 2) + '\n');
  else
    for (const c of checks)
      process.stdout.write(
        `${c.ok ? 'ok  ' : c.required ? 'FAIL' : 'warn'}  ${c.what.padEnd(11)} ${c.detail}` +
          (c.ok ? '' : `\n      fix: ${c.fix}`) +
          '\n',
      );
  const bad = checks.filter((c) => c.required && !c.ok);
  if (!f.json)
    process.stdout.write(
      bad.length === 0 ? 'this host can move containers\n' : `${bad.length} required check(s) failed\n`,
    );
  if (bad.length > 0) process.exitCode = 1;
}
