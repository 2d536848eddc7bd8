import { Command, Option } from 'commander';
import { TRACKER_CHOICES } from '../memory/tracker-choices.ts';
import { lazy } from './lazy.ts';
import { jsonOption } from './json.ts';

/** What --accessed accepts. */
const ACCESSED_CHOICES = ['auto', 'on', 'off'] as const;
export type AccessedChoice = (typeof ACCESSED_CHOICES)[number];

export function traceCommand(): Command {
  const trace = new Command('trace')
    .exitOverride()
    .showHelpAfterError('(run precog trace --help for usage)')
    .description(
      'record per-page memory access histories of live processes (for predictors and the emulator)',
    );
  trace
    .command('record')
    .exitOverride()
    .showHelpAfterError('(run precog trace record --help for usage)')
    .description('sample which pages of a running process change, every interval, into a trace file')
    .option('-p, --pid <pid>', 'the process to record')
    .option('-i, --interval <duration>', 'time between samples', '100ms')
    .option('-d, --duration <duration>', 'how long to record', '30s')
    .option('-o, --out <file>', "the trace file to write (precog's trace format)")
    .addOption(
      new Option(
        '--tracker <kind>',
        'dirty tracking: soft-dirty if the kernel tracks it, else content hashing',
      )
        .choices([...TRACKER_CHOICES])
        .default('auto'),
    )
    .addOption(
      new Option(
        '--accessed <when>',
        "record accessed bits (root): auto = when the kernel reports the process's own accesses",
      )
        .choices([...ACCESSED_CHOICES])
        .default('auto'),
    )
    .addOption(
      new Option(
        '--changes <when>',
        'record how many bytes of each dirty page changed (keeps a copy of the memory, up to 2 GiB)',
      )
        .choices(['on', 'off'])
        .default('on'),
    )
    .addOption(jsonOption('the summary'))
    .action(lazy(() => import('./actions/trace.ts').then((m) => m.record)));
  trace
    .command('info')
    .exitOverride()
    .showHelpAfterError('(run precog trace info --help for usage)')
    .description(
      'what traces hold: size, samples, dirty pages per sample, and the rate of pages and of changed bytes',
    )
    .argument('<file...>', "trace files (precog's format or the public JSON, .gz or not)")
    .addOption(jsonOption('the figures'))
    .action(lazy(() => import('./actions/trace.ts').then((m) => m.info)));
  return trace;
}
