import type { Command, OutputConfiguration } from 'commander';
import { CODEC_SYNTAX, describeCodecs } from '../../codec/index.ts';
import { describeWorkloads, RATE_PRESETS } from '../../memory/workloads.ts';
import { describeStrategies } from '../../policy/index.ts';
import { describePredictors } from '../../predict/index.ts';
import { RUNTIME_NAMES } from '../../runtime/names.ts';
import { UsageError } from '../../util/errors.ts';
import { HELP_TOPICS } from '../help.ts';

const list = (lines: readonly string[]) => lines.map((l) => `  ${l}\n`).join('');

/** Each topic's text: a line on what it is and where it is used, then the registry's entries. */
export const TOPIC_TEXT: Record<(typeof HELP_TOPICS)[number], () => string> = {
  strategies: () =>
    'Migration strategies (migrate -s, simulate -s): NAME[:KEY=VALUE...]; docs/strategies.md.\n' +
    list(describeStrategies()),
  predictors: () =>
    'Dirty-page predictors (predict-eval --predictors, the predictive strategies): NAME[:KEY=VALUE...];\n' +
    'docs/predictors.md.\n' +
    list(describePredictors()),
  codecs: () =>
    `Page codecs (--codec NAME[:KEY=VALUE...]): ${CODEC_SYNTAX}; docs/codecs.md.\n` + list(describeCodecs()),
  workloads: () =>
    'Emulated workloads (simulate -w): NAME[:KEY=VALUE...]; memchange presets (MB/s): ' +
    `${Object.entries(RATE_PRESETS)
      .map(([k, [lo, hi]]) => `${k} ${lo / 1e6}-${hi / 1e6}`)
      .join(', ')}; docs/emulator.md.\n` +
    list(describeWorkloads()),
  runtimes: () =>
    'Container runtimes (migrate --runtime); docs/runtimes.md.\n' +
    list(
      RUNTIME_NAMES.map(
        (n) =>
          `${n}: ${
            {
              precog: "precog run's containers (the default)",
              podman: 'Podman containers by name or ID, restored with podman container restore --import',
              runc: 'containers of OCI bundles, run by runc',
              crun: 'containers of OCI bundles, run by crun',
            }[n]
          }`,
      ),
    ),
};

/** `precog help [NAME...]`: a command's help, a topic, or the program's help. */
export function help(program: Command, names: string[]): void {
  const out = (program.configureOutput() as OutputConfiguration).writeOut ?? ((t) => process.stdout.write(t));
  if (names.length === 0) return void program.outputHelp();
  const topic = HELP_TOPICS.find((t) => t === names[0]);
  if (topic && names.length === 1) return void out(TOPIC_TEXT[topic]());
  let cmd = program;
  for (const name of names) {
    const next = cmd.commands.find((c) => c.name() === name || c.aliases().includes(name));
    if (!next)
      throw new UsageError(
        `no command or topic "${names.join(' ')}"; commands: ${program.commands.map((c) => c.name()).join(', ')}; ` +
          `topics: ${HELP_TOPICS.join(', ')}`,
      );
    cmd = next;
  }
  cmd.outputHelp();
}
