import { controlRequest } from '../../agent/client.ts';
import type { JobInfo } from '../../agent/control.ts';
import { validateName } from '../../runtime/container.ts';
import { formatBytes } from '../../util/units.ts';
import { agentFor, clientIdentity, fromProbeNamespace, type ClientFlags } from './agents.ts';
import { emit, jsonTarget, type JsonFlag } from './json.ts';

export interface JobFlags extends ClientFlags {
  on: string;
  json?: JsonFlag;
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

/** `precog job list --on HOST`. */
export async function jobList(f: JobFlags): Promise<void> {
  const { at, testbed } = agentFor(f.on, '--on');
  const target = jsonTarget(f.json);
  const id = clientIdentity(f, !!testbed, f.on);
  if (await fromProbeNamespace(testbed, 'job list')) return;
  const end = await controlRequest(at.endpoint, id, at.name, { action: 'list' });
  if (end.event === 'error') throw Object.assign(new Error(end.message), { exitCode: end.exitCode });
  if (end.event !== 'jobs') throw new Error(`the agent answered ${end.event}`);
  emit(target, end.jobs, () => table(end.jobs));
}

/** `precog job cancel NAME --on HOST`. */
export async function jobCancel(name: string, f: JobFlags): Promise<void> {
  validateName(name);
  const { at, testbed } = agentFor(f.on, '--on');
  const id = clientIdentity(f, !!testbed, f.on);
  if (await fromProbeNamespace(testbed, 'job cancel')) return;
  const end = await controlRequest(at.endpoint, id, at.name, { action: 'cancel', name });
  if (end.event === 'error') throw Object.assign(new Error(end.message), { exitCode: end.exitCode });
  process.stdout.write(`${name}: migration cancelled on ${f.on}\n`);
}
