import { Argument, Command } from 'commander';
import { lazy } from './lazy.ts';

/** `precog completion bash|zsh`: a completion script made from the command tree (src/cli/actions/completion.ts). */
export function completionCommand(): Command {
  return new Command('completion')
    .exitOverride()
    .description('print a completion script for bash or zsh: source <(precog completion bash)')
    .addArgument(new Argument('<shell>', 'the shell').choices(['bash', 'zsh']))
    .action(lazy(() => import('./actions/completion.ts').then((m) => m.completion)));
}
