import { Command } from 'commander';
import { controlRequest } from '../agent/client.ts';
import type { JobInfo } from '../agent/control.ts';
import { validateName } from '../runtime/container.ts';
import { formatBytes } from '../util/units.ts';
import { agentFor, clientIdentity, fromProbeNamespace, type ClientFlags } from './agents.ts';

interface JobFlags extends ClientFlags {
  on: string;
  json?: boolean;
}

function table(jobs: JobInfo[]): string {
  if (jobs.length === 0) return 'no migration runs there\n';
  const rows = jobs.map((j) => [
    j.container,
    j.migrationId,
    j.to,
    j.phase,
    String(j.rounds),
    formatBytes(j.bytesSent),
    j.dirtyPages === null ? '-' : formatBytes(j.dirtyPages * 4096),
    `${Math.round((Date.now() - Date.parse(j.startedAt)) / 1000)}s`,
    j.strategy,
  ]);
  const head = [
    'container',
    'migration',
    'to',
    'phase',
    'rounds',
    'sent',
    'rewritten',
    'running',
    'strategy',
  ];
  const w = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  return (
    [head, ...rows]
      .map((r) =>
        r
          .map((c, i) => c.padEnd(w[i]))
          .join('  ')
          .trimEnd(),
      )
      .join('\n') + '\n'
  );
}

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
      .option('--json', 'print them as JSON')
      .exitOverride()
      .action(async (f: JobFlags) => {
        const { at, testbed } = agentFor(f.on, '--on');
        const id = clientIdentity(f, !!testbed, f.on);
        if (await fromProbeNamespace(testbed, 'job list')) return;
        const end = await controlRequest(at.endpoint, id, at.name, { action: 'list' });
        if (end.event === 'error') throw Object.assign(new Error(end.message), { exitCode: end.exitCode });
        if (end.event !== 'jobs') throw new Error(`the agent answered ${end.event}`);
        process.stdout.write(f.json ? JSON.stringify(end.jobs, null, 2) + '\n' : table(end.jobs));
      }),
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
      .action(async (name: string, f: JobFlags) => {
        validateName(name);
        const { at, testbed } = agentFor(f.on, '--on');
        const id = clientIdentity(f, !!testbed, f.on);
        if (await fromProbeNamespace(testbed, 'job cancel')) return;
        const end = await controlRequest(at.endpoint, id, at.name, { action: 'cancel', name });
        if (end.event === 'error') throw Object.assign(new Error(end.message), { exitCode: end.exitCode });
        process.stdout.write(`${name}: migration cancelled on ${f.on}\n`);
      }),
  );
  return job;
}
