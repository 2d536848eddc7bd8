import { CommanderError } from 'commander';
import { exitCodeOf } from '../util/errors.ts';
import { precogProgram } from './program.ts';

const program = precogProgram();

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
