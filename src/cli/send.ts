import { Command, Option } from 'commander';
import { CODEC_NAMES } from '../codec/names.ts';
import { lazy } from './lazy.ts';
import { jsonOption } from './json.ts';

/** `precog send-memory` (src/cli/actions/send.ts). */
export function sendMemoryCommand(): Command {
  return new Command('send-memory')
    .exitOverride()
    .description(
      "stream a live process tree's memory to an agent over mutual TLS (pre-copy rounds, then stopped copy)",
    )
    .requiredOption('-p, --pid <pid>', 'the process; its descendants come with it')
    .requiredOption('--to <host:port>', 'the destination agent')
    .requiredOption('--peer <name>', "the destination agent's certificate name")
    .requiredOption('--pki <dir>', "PKI directory with ca.pem and this host's certificate")
    .requiredOption('--name <name>', "this host's certificate name")
    .option('-s, --strategy <spec>', 'strategy (precopy, iterpredict, cold, ...)', 'precopy')
    .option('--codec <name>', `page codec chain: ${CODEC_NAMES.join(', ')}`, 'zero')
    .option('--batch <size>', 'page bytes per frame', '1MiB')
    .addOption(
      new Option('--after <what>', 'the process after the copy: left stopped, or continued')
        .choices(['stop', 'thaw'])
        .default('stop'),
    )
    .option('--id <id>', 'migration id (default: a new UUID)')
    .addOption(jsonOption('the full metrics'))
    .action(lazy(() => import('./actions/send.ts').then((m) => m.sendMemory)));
}
