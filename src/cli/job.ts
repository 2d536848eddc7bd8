import { Command } from 'commander';
import { lazy } from './lazy.ts';
import { jsonOption } from './json.ts';

function common(c: Command): Command {
  return c
    .requiredOption('--on <host>', "the source host: a test host (a, b) or an agent's HOST[:PORT]")
    .option(
      '--pki <dir>',
      "PKI directory with a client certificate of the agents' CA (default: the testbed's)",
    )
    .option('--name <name>', 'the client certificate in --pki (default: operator)');
}

/** `precog job list|cancel`: the moves an agent runs as their source, queried and cancelled from any shell. */
export function jobCommand(): Command {
  const job = new Command('job').description(
    'the migrations an agent runs as their source: list them (rounds, bytes, phase) or cancel one',
  );
  job.addCommand(
    common(new Command('list').description('list the migrations running on a host'))
      .addOption(jsonOption('the migrations'))
      .exitOverride()
      .action(lazy(() => import('./actions/job.ts').then((m) => m.jobList))),
  );
  job.addCommand(
    common(
      new Command('cancel')
        .description(
          'cancel the migration of container NAME: the source thaws and runs on (after the destination has ' +
            'taken over, the move completes instead)',
        )
        .argument('<name>'),
    )
      .exitOverride()
      .action(lazy(() => import('./actions/job.ts').then((m) => m.jobCancel))),
  );
  return job;
}
