import { Command } from 'commander';
import { defaultRuntime, type ContainerInfo } from '../runtime/container.ts';
import { parseHost, parseServiceAddress, requireRoot } from '../runtime/testbed.ts';
import { UsageError } from '../util/errors.ts';
import { checkWritable } from '../util/paths.ts';
import { parseSize } from '../util/units.ts';
import { migrateCommand } from './migrate.ts';

const say = (line: string) => process.stdout.write(line + '\n');

export function needRoot(what: string): void {
  if (process.getuid?.() !== 0)
    throw new UsageError(
      `${what} needs root (containers live in the test hosts); run it as root, e.g. with sudo`,
    );
  requireRoot(what);
}

export function formatPs(list: ContainerInfo[]): string {
  const rows = [
    ['name', 'host', 'pid', 'status', 'memory', 'created', 'command'],
    ...list.map((c) => [
      c.name,
      c.host,
      c.pid === null ? '-' : String(c.pid),
      c.status,
      c.memoryBytes === null ? '-' : `${Math.round(c.memoryBytes / 1048576)}MiB`,
      c.created,
      c.command.join(' '),
    ]),
  ];
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
  return (
    rows
      .map((r) =>
        r
          .map((c, i) => c.padEnd(widths[i]))
          .join('  ')
          .trimEnd(),
      )
      .join('\n') + '\n'
  );
}

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
    .action(
      async (command: string[], flags: { host: string; name: string; memory?: string; ip?: string }) => {
        parseHost(flags.host);
        const address = flags.ip !== undefined ? parseServiceAddress(flags.ip) : undefined;
        const argv = command[0] === '--' ? command.slice(1) : command;
        if (argv.length === 0) throw new UsageError('nothing to run: give a command after --');
        const memoryBytes = flags.memory ? parseSize(flags.memory, '--memory') : null;
        if (memoryBytes !== null && memoryBytes < 4 * 1048576)
          throw new UsageError(`--memory ${flags.memory} is too small (at least 4MiB)`);
        needRoot('run');
        const c = await defaultRuntime().run({
          name: flags.name,
          host: flags.host,
          command: argv,
          memoryBytes,
          address,
        });
        say(
          `${c.name}: running on host ${c.host}, pid ${c.pid} (in the host)` +
            (c.network ? `, address ${c.network.address}` : '') +
            `, logs: precog logs ${c.name}`,
        );
      },
    );

  const ps = new Command('ps')
    .description('list the containers of the test hosts')
    .option('--host <host>', 'only this host')
    .option('--json', 'print JSON (an array of precog.container/v1)')
    .action(async (flags: { host?: string; json?: boolean }) => {
      if (flags.host) parseHost(flags.host);
      needRoot('ps');
      const list = await defaultRuntime().list(flags.host);
      process.stdout.write(flags.json ? JSON.stringify(list, null, 2) + '\n' : formatPs(list));
    });

  const stop = new Command('stop')
    .description(
      'stop a container (SIGTERM, then SIGKILL) and remove its cgroups, overlay and writable layer',
    )
    .argument('<name>')
    .option('--timeout <seconds>', 'seconds between SIGTERM and SIGKILL', '3')
    .option('--keep-layer', 'keep the writable layer and the state (the name stays taken)')
    .action(async (name: string, flags: { timeout: string; keepLayer?: boolean }) => {
      const t = Number(flags.timeout);
      if (!Number.isFinite(t) || t < 0) throw new UsageError(`--timeout "${flags.timeout}" must be seconds`);
      needRoot('stop');
      await defaultRuntime().stop(name, { timeoutMs: t * 1000, keepLayer: flags.keepLayer });
      say(`${name}: stopped${flags.keepLayer ? ' (writable layer kept)' : ' and removed'}`);
    });

  const logs = new Command('logs')
    .description("print a container's stdout and stderr")
    .argument('<name>')
    .action(async (name: string) => {
      needRoot('logs');
      process.stdout.write(await defaultRuntime().logs(name));
    });

  const checkpoint = new Command('checkpoint')
    .description(
      'checkpoint a container into a directory: CRIU images, writable layer, state (the container keeps running)',
    )
    .argument('<name>')
    .requiredOption('--out <dir>', 'new (or empty) directory on this machine')
    .option('--leave-running', 'keep the container running after the checkpoint (the default)')
    .option('--leave-stopped', 'stop and remove the container after a successful checkpoint')
    .action(async (name: string, flags: { out: string; leaveRunning?: boolean; leaveStopped?: boolean }) => {
      if (flags.leaveRunning && flags.leaveStopped)
        throw new UsageError('--leave-running and --leave-stopped exclude each other');
      needRoot('checkpoint');
      const r = await defaultRuntime().checkpoint(name, flags.out, { leaveStopped: flags.leaveStopped });
      say(
        `${name}: checkpoint in ${r.dir} (images ${r.imageBytes} B, writable layer ${r.layerBytes} B; ` +
          `dump ${Math.round(r.dumpMs)} ms, frozen ${Math.round(r.frozenMs)} ms); ` +
          (flags.leaveStopped ? 'container stopped' : 'container running'),
      );
    });

  const restore = new Command('restore')
    .description('start a container from a checkpoint directory in a test host (criu restore)')
    .argument('<dir>')
    .requiredOption('--host <host>', 'test host: a or b')
    .option('--name <name>', 'name of the restored container (default: the checkpointed name)')
    .action(async (dir: string, flags: { host: string; name?: string }) => {
      parseHost(flags.host);
      needRoot('restore');
      const c = await defaultRuntime().restore(dir, flags.host, { name: flags.name });
      say(`${c.name}: restored on host ${c.host}, pid ${c.pid} (in the host)`);
    });

  const exportCmd = new Command('export')
    .description("write a container's writable layer as a tar compressed with zstd")
    .argument('<name>')
    .requiredOption('--out <file>', 'output file, e.g. layer.tar.zst')
    .action(async (name: string, flags: { out: string }) => {
      needRoot('export');
      checkWritable(flags.out, '--out');
      await defaultRuntime().exportLayer(name, flags.out);
      say(`${name}: writable layer exported to ${flags.out}`);
    });

  return [run, ps, stop, logs, checkpoint, restore, exportCmd, migrateCommand()];
}
