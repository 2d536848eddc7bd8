/**
 * precog's command tree: every command's name, options and help, and none of their code (each action is imported
 * when its command runs, src/cli/lazy.ts). `precog --help` and `precog completion` read it as it is.
 */
import { Command } from 'commander';
import { agentCommand } from './agent.ts';
import { checkCommand } from './check.ts';
import { completionCommand } from './completion.ts';
import { helpCommand } from './help.ts';
import { jobCommand } from './job.ts';
import { containerCommands } from './container.ts';
import { pkiCommand } from './pki.ts';
import { predictEvalCommand, trainCommand } from './predict.ts';
import { sendMemoryCommand } from './send.ts';
import { simulateCommand } from './simulate.ts';
import { testbedCommand } from './testbed.ts';
import { traceCommand } from './trace.ts';

export function precogProgram(): Command {
  const program = new Command();
  program
    .name('precog')
    .description(
      'Live migration of Linux containers with predictive pre-copy, and an emulator that runs the same engine.',
    )
    .version(process.env.npm_package_version ?? '0.1.0')
    .showHelpAfterError('(run with --help for usage)')
    .exitOverride()
    .enablePositionalOptions()
    // precog's own help command: commands, and topics (help.ts).
    .helpCommand(false);

  program.addCommand(simulateCommand());
  program.addCommand(pkiCommand());
  program.addCommand(agentCommand());
  program.addCommand(checkCommand());
  program.addCommand(jobCommand());
  program.addCommand(traceCommand());
  program.addCommand(sendMemoryCommand());
  program.addCommand(testbedCommand());
  program.addCommand(trainCommand());
  program.addCommand(predictEvalCommand());
  for (const c of containerCommands()) program.addCommand(c.exitOverride());
  program.addCommand(completionCommand());
  program.addCommand(helpCommand(program));
  return program;
}
