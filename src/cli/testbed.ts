import { Command } from 'commander';
import { HOSTS, TBF_BURST, TBF_LATENCY } from '../runtime/testbed-hosts.ts';
import { lazy } from './lazy.ts';
import { jsonOption } from './json.ts';

export function testbedCommand(): Command {
  const testbed = new Command('testbed')
    .exitOverride()
    .showHelpAfterError('(run precog testbed --help for usage)')
    .enablePositionalOptions()
    .description(
      `local test hosts ${HOSTS.map((h) => h.name).join(' and ')}: namespaces over a cached Debian trixie rootfs ` +
        'with CRIU 4, joined by a rate-limited veth link (root only; docs/testbed.md)',
    );

  testbed
    .command('up')
    .description('build the root filesystem once (cached), then start both hosts and their link')
    .option(
      '--rate <rate>',
      `link rate on both ends (tc tbf, burst ${TBF_BURST} or 0.25ms of traffic if more, latency ${TBF_LATENCY}): ` +
        'e.g. 100mbit, 1gbit, or none',
      'none',
    )
    .option('--rebuild-rootfs', 'build the cached root filesystem again (it is otherwise built only once)')
    .action(lazy(() => import('./actions/testbed.ts').then((m) => m.up)));

  testbed
    .command('down')
    .description('stop both hosts and remove every namespace, link, cgroup and directory the testbed made')
    .action(lazy(() => import('./actions/testbed.ts').then((m) => m.down)));

  testbed
    .command('status')
    .description('show the hosts, their PIDs and addresses, the link rate and the rootfs cache')
    .addOption(jsonOption('the status (schema precog.testbed.status/v1)'))
    .action(lazy(() => import('./actions/testbed.ts').then((m) => m.status)));

  testbed
    .command('exec')
    .description(
      'run a command inside a host (as root, in its namespaces and root filesystem); exits with its code',
    )
    .usage('[options] <host> -- <command> [args...]')
    .argument('<host>', `${HOSTS.map((h) => h.name).join(' or ')}`)
    .argument('<command...>', 'the command and its arguments (after --)')
    .option(
      '-e, --env <KEY=VALUE>',
      'set an environment variable for the command (repeatable; the environment starts clean)',
      (v: string, acc: string[] | undefined) => [...(acc ?? []), v],
    )
    .passThroughOptions()
    .action(lazy(() => import('./actions/testbed.ts').then((m) => m.exec)));

  return testbed;
}
