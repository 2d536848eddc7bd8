import { Command } from 'commander';
import { lazy } from './lazy.ts';

/** `precog check`: whether this host can move containers (as `criu check` does for CRIU). */
export function checkCommand(): Command {
  return new Command('check')
    .description(
      'check that this host can move containers: root, CRIU >= 4 and criu check, overlayfs, userfaultfd, cgroup2, ' +
        'the tools precog runs; exit 1 when something required is missing',
    )
    .option('--json', 'print the checks as JSON')
    .exitOverride()
    .action(lazy(() => import('./actions/check.ts').then((m) => m.check)));
}
