import { defaultRuntime, type ContainerInfo } from '../../runtime/container.ts';
import { parseHost, parseServiceAddress, requireRoot } from '../../runtime/testbed.ts';
import { UsageError } from '../../util/errors.ts';
import { checkWritable } from '../../util/paths.ts';
import { parseSize } from '../../util/units.ts';
import { emit, jsonTarget, type JsonFlag } from './json.ts';

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

/** `precog run --host H --name N -- COMMAND`. */
export async function run(
  command: string[],
  flags: { host: string; name: string; memory?: string; ip?: string },
): Promise<void> {
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
}

/** `precog ps`. */
export async function ps(flags: { host?: string; json?: JsonFlag }): Promise<void> {
  if (flags.host) parseHost(flags.host);
  const target = jsonTarget(flags.json);
  needRoot('ps');
  const list = await defaultRuntime().list(flags.host);
  emit(target, list, () => formatPs(list));
}

/** `precog stop NAME`. */
export async function stop(name: string, flags: { timeout: string; keepLayer?: boolean }): Promise<void> {
  const t = Number(flags.timeout);
  if (!Number.isFinite(t) || t < 0) throw new UsageError(`--timeout "${flags.timeout}" must be seconds`);
  needRoot('stop');
  await defaultRuntime().stop(name, { timeoutMs: t * 1000, keepLayer: flags.keepLayer });
  say(`${name}: stopped${flags.keepLayer ? ' (writable layer kept)' : ' and removed'}`);
}

/** `precog logs NAME`. */
export async function logs(name: string): Promise<void> {
  needRoot('logs');
  process.stdout.write(await defaultRuntime().logs(name));
}

/** `precog checkpoint NAME --out DIR`. */
export async function checkpoint(
  name: string,
  flags: { out: string; leaveRunning?: boolean; leaveStopped?: boolean },
): Promise<void> {
  if (flags.leaveRunning && flags.leaveStopped)
    throw new UsageError('--leave-running and --leave-stopped exclude each other');
  needRoot('checkpoint');
  const r = await defaultRuntime().checkpoint(name, flags.out, { leaveStopped: flags.leaveStopped });
  say(
    `${name}: checkpoint in ${r.dir} (images ${r.imageBytes} B, writable layer ${r.layerBytes} B; ` +
      `dump ${Math.round(r.dumpMs)} ms, frozen ${Math.round(r.frozenMs)} ms); ` +
      (flags.leaveStopped ? 'container stopped' : 'container running'),
  );
}

/** `precog restore DIR --host H`. */
export async function restore(dir: string, flags: { host: string; name?: string }): Promise<void> {
  parseHost(flags.host);
  needRoot('restore');
  const c = await defaultRuntime().restore(dir, flags.host, { name: flags.name });
  say(`${c.name}: restored on host ${c.host}, pid ${c.pid} (in the host)`);
}

/** `precog export NAME --out FILE`. */
export async function exportLayer(name: string, flags: { out: string }): Promise<void> {
  needRoot('export');
  checkWritable(flags.out, '--out');
  await defaultRuntime().exportLayer(name, flags.out);
  say(`${name}: writable layer exported to ${flags.out}`);
}
