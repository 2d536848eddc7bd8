import { Command, Option } from 'commander';
import { CODEC_NAMES } from '../codec/names.ts';
import { lazy } from './lazy.ts';
import { jsonOption } from './json.ts';

/** What --sweep can vary. */
export const SWEEP_KEYS = ['memory', 'bandwidth', 'workload', 'strategy'];

export function simulateCommand(): Command {
  return new Command('simulate')
    .exitOverride()
    .showHelpAfterError('(run precog simulate --help for usage)')
    .description('run migrations in the emulator (same engine, virtual clock) and compare strategies')
    .option(
      '-w, --workload <specs>',
      'workloads, comma-separated: idle, memchange[:low|high][:k=v], hotcold, trace:file=F',
      'memchange:high',
    )
    .option('-m, --memory <sizes>', 'memory of the emulated process, e.g. 512MiB or 256MiB,1GiB', '512MiB')
    .option('-b, --bandwidth <rates>', 'link speed, e.g. 100Mbit, 1Gbit', '100Mbit')
    .option('--latency <duration>', 'one-way link latency', '0.5ms')
    .option('--frame-overhead <bytes>', 'bytes added to every frame on the wire (TLS, TCP/IP)', '64')
    .option(
      '-s, --strategy <specs>',
      'strategies, comma-separated, e.g. precopy:rule=qemu,iterpredict,hybrid:rounds=2',
      'precopy,iterpredict,cold,postcopy,hybrid',
    )
    .option(
      '--codec <name>',
      `page codec chain: auto (the strategy's own: xor-lz4 for mbdpc, else zero), ${CODEC_NAMES.join(', ')}`,
      'auto',
    )
    .option('--batch <size>', 'page bytes per frame', '64KiB')
    .option('--state-size <size>', 'non-memory state sent at the switchover', '256KiB')
    .option('--restore-cost <duration>', 'time the destination needs to resume once it has all state', '0s')
    .option(
      '--switchover <file>',
      'charge the stop what it costs live (dump, commit, restore) by a model fitted to live runs ' +
        '(npm run fit:switchover); "live" for the one fitted to the runs in docs/results.md',
    )
    .option('--seed <n>', 'seed of the first run', '1')
    .option('-r, --repeat <n>', 'runs per point with seeds seed..seed+n-1; the table shows medians', '1')
    .option(
      '--sweep <key=v1,v2>',
      `vary one of ${SWEEP_KEYS.join(', ')} (repeatable)`,
      (v: string, acc: string[]) => [...acc, v],
      [] as string[],
    )
    .addOption(jsonOption('every run with its rounds, and the summary (docs/simulate-json.md),'))
    .addOption(new Option('--format <format>', 'table format').choices(['text', 'markdown']).default('text'))
    .option('-q, --quiet', 'no progress on stderr')
    .action(lazy(() => import('./actions/simulate.ts').then((m) => m.simulate)));
}
