import { Command } from 'commander';
import { lazy } from './lazy.ts';

/** What `precog help TOPIC` explains, each generated from precog's own registries. */
export const HELP_TOPICS = ['strategies', 'predictors', 'codecs', 'workloads', 'runtimes'] as const;

/**
 * `precog help [COMMAND [SUBCOMMAND]]` as commander's own help command, and `precog help TOPIC` for what the options
 * name: strategies, predictors, codecs, workloads, runtimes.
 */
export function helpCommand(program: Command): Command {
  return new Command('help')
    .description(`help on a command, or on a topic: ${HELP_TOPICS.join(', ')}`)
    .argument('[name...]', 'a command (and subcommand), or a topic')
    .helpOption(false)
    .action(lazy(() => import('./actions/help.ts').then((m) => (names: string[]) => m.help(program, names))));
}
