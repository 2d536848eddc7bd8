/**
 * Runs precog's command line on ARGV (without node and the script) and returns its exit code: 0, or 2 for a usage
 * error (commander's or a UsageError), or the code a failure names (src/util/errors.ts). Commander's own messages
 * go to IO.err (help to IO.out); an error an action throws is one line `precog: MESSAGE` there. main.ts runs it for
 * the real command; tests run it in-process to check bad flags without a process per case.
 */
import { CommanderError, type Command } from 'commander';
import { exitCodeOf } from '../util/errors.ts';
import { precogProgram } from './program.ts';

export interface CliOutput {
  out: (text: string) => void;
  err: (text: string) => void;
}

const STDIO: CliOutput = {
  out: (t) => process.stdout.write(t),
  err: (t) => process.stderr.write(t),
};

export async function runCli(argv: readonly string[], io: CliOutput = STDIO): Promise<number> {
  const program = precogProgram();
  // Commands added with addCommand do not inherit the root's output: every command is told.
  const tell = (c: Command): void => {
    c.configureOutput({ writeOut: io.out, writeErr: io.err });
    c.commands.forEach(tell);
  };
  tell(program);
  const before = process.exitCode;
  process.exitCode = undefined;
  try {
    await program.parseAsync(['node', 'precog', ...argv]);
    return Number(process.exitCode ?? 0);
  } catch (err) {
    // Help and version exit 0; every other parse error is a usage error.
    if (err instanceof CommanderError) return err.exitCode === 0 ? 0 : 2;
    io.err(`precog: ${(err as Error).message}\n`);
    if (process.env.PRECOG_DEBUG) console.error(err);
    return exitCodeOf(err);
  } finally {
    process.exitCode = before;
  }
}
