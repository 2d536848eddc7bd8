import { runCli } from './run.ts';

// A reader that stops early (`precog simulate | head -1`) closes the pipe: the output ends there, quietly.
for (const stream of [process.stdout, process.stderr])
  stream.on('error', (e: NodeJS.ErrnoException) => {
    if (e.code === 'EPIPE') process.exit(0);
    throw e;
  });

process.exitCode = await runCli(process.argv.slice(2));
