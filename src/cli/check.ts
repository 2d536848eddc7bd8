import { Command } from 'commander';
import { hostChecks } from '../runtime/check.ts';

/** `precog check`: whether this host can move containers (as `criu check` does for CRIU). */
export function checkCommand(): Command {
  return new Command('check')
    .description(
      'check that this host can move containers: root, CRIU >= 4 and criu check, overlayfs, userfaultfd, cgroup2, ' +
        'the tools precog runs; exit 1 when something required is missing',
    )
    .option('--json', 'print the checks as JSON')
    .exitOverride()
    .action((f: { json?: boolean }) => {
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
    });
}
