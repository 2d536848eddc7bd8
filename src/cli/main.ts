import { Command, CommanderError } from 'commander';
import { exitCodeOf } from '../util/errors.ts';
import { agentCommand } from './agent.ts';
import { checkCommand } from './check.ts';
import { jobCommand } from './job.ts';
import { containerCommands } from './container.ts';
import { pkiCommand } from './pki.ts';
import { predictEvalCommand, trainCommand } from './predict.ts';
import { sendMemoryCommand } from './send.ts';
import { simulateCommand } from './simulate.ts';
import { testbedCommand } from './testbed.ts';
import { traceCommand } from './trace.ts';

const program = new Command();
program
  .name('precog')
  .description(
    'Live migration of Linux containers with predictive pre-copy, and an emulator that runs the same engine.',
  )
  .version(process.env.npm_package_version ?? '0.1.0')
  .showHelpAfterError('(run with --help for usage)')
  .exitOverride()
  .enablePositionalOptions();

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

// A reader that stops early (`precog simulate | head -1`) closes the pipe: the output ends there, quietly.
for (const stream of [process.stdout, process.stderr])
  stream.on('error', (e: NodeJS.ErrnoException) => {
    if (e.code === 'EPIPE') process.exit(0);
    throw e;
  });

try {
  await program.parseAsync(process.argv);
} catch (err) {
  if (err instanceof CommanderError) {
    // Help and version exit 0; every other parse error is a usage error.
    process.exitCode = err.exitCode === 0 ? 0 : 2;
  } else {
    process.stderr.write(`precog: ${(err as Error).message}\n`);
    if (process.env.PRECOG_DEBUG) console.error(err);
    process.exitCode = exitCodeOf(err);
  }
}
