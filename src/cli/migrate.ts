import { Command } from 'commander';
import { CODEC_NAMES } from '../codec/names.ts';
import { RUNTIME_NAMES } from '../runtime/names.ts';
import { lazy } from './lazy.ts';
import { jsonOption } from './json.ts';

export function migrateCommand(): Command {
  return new Command('migrate')
    .description(
      'move a running container to another test host: live rounds over the agents’ TLS link, then criu dump, ' +
        'the changed pages, criu restore; the source is removed only once the destination runs it',
    )
    .argument('[name]', 'the container to move (required)')
    .requiredOption(
      '--from <host>',
      "source: a test host (a, b) or an agent's HOST[:PORT] (where the container runs)",
    )
    .requiredOption(
      '--to <host>',
      "destination: a test host or an agent's HOST[:PORT], as the source agent reaches it",
    )
    .option('--runtime <name>', `the container's runtime (${RUNTIME_NAMES.join(', ')})`, 'precog')
    .option(
      '--pki <dir>',
      "PKI directory with a client certificate of the agents' CA (default: the testbed's)",
    )
    .option('--name <name>', 'the client certificate in --pki (default: operator)')
    .option(
      '-s, --strategy <spec>',
      'cold, precopy, precopy:rule=qemu, iterpredict, markov, pr, mbdp, mbdpc, u2c, postcopy, hybrid (docs/strategies.md)',
      'precopy',
    )
    .option(
      '--codec <name>',
      `page codec chain: auto (the strategy's own: xor-lz4 for mbdpc, else zero), ${CODEC_NAMES.join(', ')}`,
      'auto',
    )
    .option('--batch <size>', 'page bytes per frame', '1MiB')
    .option('--link-timeout <duration>', 'a link that carries nothing this long has failed', '30s')
    .option(
      '--restore <mode>',
      'lazy: run as soon as the state is back, pages copied in from local images by criu lazy-pages; ' +
        'full: copy every page before running (default: lazy, full for cold)',
    )
    .option(
      '--dump-via <how>',
      'lazy: criu dumps all but the anonymous memory, which precog reads from the stopped tasks; images: full local ' +
        'criu dump, pages compared as read back; page-server: streamed to precog (not with post-copy); auto: ' +
        'lazy where the runtime can (post-copy: the pages then follow from the frozen tasks), images otherwise',
      'auto',
    )
    .addOption(jsonOption('the report'))
    .option('-q, --quiet', 'no progress on stderr (as simulate -q)')
    .option('--no-progress', 'the same as --quiet')
    .option(
      '--resume',
      'take up a post-copy whose link was lost after the switchover: send the destination the pages it still lacks ' +
        'from the frozen source, then let the copy there run on',
    )
    .action(lazy(() => import('./actions/migrate.ts').then((m) => m.migrate)));
}
