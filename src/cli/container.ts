import { Command } from 'commander';
import { lazy } from './lazy.ts';
import { migrateCommand } from './migrate.ts';
import { jsonOption } from './json.ts';

/** `precog run`, `ps`, `stop`, `logs`: containers in the test hosts (docs/containers.md). */
export function containerCommands(): Command[] {
  const run = new Command('run')
    .description(
      'start a container in a test host (own PID, mount, UTS, IPC namespaces; overlay root; cgroup)',
    )
    .usage('--host <host> --name <name> [--memory <size>] [--ip <address>] -- <command> [args...]')
    .requiredOption('--host <host>', 'test host: a or b')
    .requiredOption('--name <name>', 'container name (unique across the hosts)')
    .option('--memory <size>', 'memory limit, e.g. 512M, 1GiB (cgroup memory controller)')
    .option(
      '--ip <address>',
      "own network namespace with this address on the testbed's service LAN (10.213.80.1-253); it moves with the container",
    )
    .argument('<command...>', 'the command (after --); it runs as PID 1 of the container')
    .passThroughOptions()
    .action(lazy(() => import('./actions/container.ts').then((m) => m.run)));

  const ps = new Command('ps')
    .description('list the containers of the test hosts')
    .option('--host <host>', 'only this host')
    .addOption(jsonOption('the containers (an array of precog.container/v1)'))
    .action(lazy(() => import('./actions/container.ts').then((m) => m.ps)));

  const stop = new Command('stop')
    .description(
      'stop a container (SIGTERM, then SIGKILL) and remove its cgroups, overlay and writable layer',
    )
    .argument('<name>')
    .option('--timeout <seconds>', 'seconds between SIGTERM and SIGKILL', '3')
    .option('--keep-layer', 'keep the writable layer and the state (the name stays taken)')
    .action(lazy(() => import('./actions/container.ts').then((m) => m.stop)));

  const logs = new Command('logs')
    .description("print a container's stdout and stderr")
    .argument('<name>')
    .action(lazy(() => import('./actions/container.ts').then((m) => m.logs)));

  const checkpoint = new Command('checkpoint')
    .description(
      'checkpoint a container into a directory: CRIU images, writable layer, state (the container keeps running)',
    )
    .argument('<name>')
    .requiredOption('--out <dir>', 'new (or empty) directory on this machine')
    .option('--leave-running', 'keep the container running after the checkpoint (the default)')
    .option('--leave-stopped', 'stop and remove the container after a successful checkpoint')
    .action(lazy(() => import('./actions/container.ts').then((m) => m.checkpoint)));

  const restore = new Command('restore')
    .description('start a container from a checkpoint directory in a test host (criu restore)')
    .argument('<dir>')
    .requiredOption('--host <host>', 'test host: a or b')
    .option('--name <name>', 'name of the restored container (default: the checkpointed name)')
    .action(lazy(() => import('./actions/container.ts').then((m) => m.restore)));

  const exportCmd = new Command('export')
    .description("write a container's writable layer as a tar compressed with zstd")
    .argument('<name>')
    .requiredOption('--out <file>', 'output file, e.g. layer.tar.zst')
    .action(lazy(() => import('./actions/container.ts').then((m) => m.exportLayer)));

  return [run, ps, stop, logs, checkpoint, restore, exportCmd, migrateCommand()];
}
