import { Command } from 'commander';
import { lazy } from './lazy.ts';
import { jsonOption } from './json.ts';

/** `precog check`: whether this host can move containers (as `criu check` does for CRIU). */
export function checkCommand(): Command {
  return new Command('check')
    .description(
      'check that this host can move containers: root, CRIU >= 4 and criu check, overlayfs, userfaultfd, cgroup2, ' +
        'the tools precog runs; exit 1 when something required is missing',
    )
    .addOption(jsonOption('the checks'))
    .exitOverride()
    .action(lazy(() => import('./actions/check.ts').then((m) => m.check)));
}
