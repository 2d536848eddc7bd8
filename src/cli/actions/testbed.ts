import {
  parseHost,
  parseLinkRate,
  requireRoot,
  testbedDown,
  testbedExec,
  testbedStatus,
  testbedUp,
  type TestbedStatus,
} from '../../runtime/testbed.ts';
import { UsageError } from '../../util/errors.ts';
import { emit, jsonTarget, type JsonFlag } from './json.ts';

const say = (line: string) => process.stdout.write(line + '\n');
const note = (line: string) => process.stderr.write(`precog testbed: ${line}\n`);

export function formatStatus(s: TestbedStatus): string {
  const out: string[] = [];
  const rootfs = s.rootfs.ready
    ? `${s.rootfs.dir} (criu ${s.rootfs.criu}, node ${s.rootfs.node}, built ${s.rootfs.builtAt} in ${s.rootfs.buildSeconds}s)`
    : `${s.rootfs.dir} not built yet ("precog testbed up" builds it once, about a minute)`;
  out.push(`testbed: ${s.state}${s.createdAt ? ` (since ${s.createdAt})` : ''}`);
  out.push(`rootfs:  ${rootfs}`);
  if (s.hosts.length > 0) {
    out.push(`link:    veth on ${s.subnet}, rate ${s.rate ?? 'none (unlimited)'}`);
    out.push('');
    const rows = [
      ['host', 'hostname', 'address', 'netns', 'init pid', 'alive'],
      ...s.hosts.map((h) => [
        h.name,
        h.hostname,
        `${h.address} (${h.iface})`,
        h.netnsExists ? h.netns : `${h.netns} (missing)`,
        h.initPid === null ? '-' : String(h.initPid),
        h.alive ? 'yes' : 'no',
      ]),
    ];
    const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
    for (const r of rows)
      out.push(
        r
          .map((c, i) => c.padEnd(widths[i]))
          .join('  ')
          .trimEnd(),
      );
  }
  if (s.probe) {
    const to = Object.entries(s.probe.addresses)
      .map(([host, addr]) => `${host} at ${addr}`)
      .join(', ');
    out.push('', `probe:   netns ${s.probe.netns}${s.probe.netnsExists ? '' : ' (missing)'}; reaches ${to}`);
  }
  if (s.service)
    out.push(
      `service: netns ${s.service.netns}${s.service.netnsExists ? '' : ' (missing)'}; LAN ${s.service.subnet}, ` +
        `client at ${s.service.client} (containers: precog run --ip)`,
    );
  if (s.leftovers.length > 0)
    out.push('', `leftovers (removed by "precog testbed down"): ${s.leftovers.join(', ')}`);
  if (s.state === 'degraded')
    out.push('', 'the testbed is not fully up: run "precog testbed down", then "up" again');
  return out.join('\n') + '\n';
}

/** `precog testbed up`. */
export async function up(flags: { rate: string; rebuildRootfs?: boolean }): Promise<void> {
  parseLinkRate(flags.rate);
  requireRoot('up');
  const { state, rootfs, seconds } = await testbedUp({
    rate: flags.rate,
    rebuildRootfs: flags.rebuildRootfs,
    log: note,
  });
  say(
    `rootfs ${rootfs.dir}: ${rootfs.built ? `built in ${rootfs.stamp.buildSeconds}s` : 'cached'}, ` +
      `criu ${rootfs.stamp.criuVersion}, node ${rootfs.stamp.nodeVersion}`,
  );
  for (const h of state.hosts)
    say(
      `host ${h.name}: ${h.address}/${h.prefixLength} on ${h.iface} (netns ${h.netns}), init pid ${h.init?.pid}`,
    );
  say(`link: rate ${state.rate ?? 'none (unlimited)'}`);
  if (state.probe)
    say(
      `probe: netns ${state.probe.netns}, reaches ${Object.entries(state.probe.addresses)
        .map(([host, addr]) => `${host} at ${addr}`)
        .join(', ')} (own links, no rate limit)`,
    );
  if (state.service)
    say(
      `service LAN: ${state.service.subnet} on bridge ${state.service.bridge} (netns ${state.service.netns}, ` +
        `client ${state.service.client}), joined to ${state.service.hostBridge} in each host`,
    );
  say(
    `testbed up in ${seconds.toFixed(1)}s; try: precog testbed exec ${state.hosts[0].name} -- ping -c1 ${state.hosts[1].address}`,
  );
}

/** `precog testbed down`. */
export async function down(): Promise<void> {
  requireRoot('down');
  const removed = await testbedDown();
  say(
    removed.length > 0 ? `testbed down; removed: ${removed.join(', ')}` : 'testbed down; nothing was running',
  );
}

/** `precog testbed status`. */
export async function status(flags: { json?: JsonFlag }): Promise<void> {
  const target = jsonTarget(flags.json);
  const s = await testbedStatus();
  emit(target, s, () => formatStatus(s));
}

/** `precog testbed exec HOST -- COMMAND`. */
export async function exec(host: string, command: string[], flags: { env?: string[] }): Promise<void> {
  parseHost(host);
  const argv = command[0] === '--' ? command.slice(1) : command;
  if (argv.length === 0)
    throw new UsageError('nothing to run: give a command, e.g. precog testbed exec a -- uname -n');
  const env: Record<string, string> = {};
  for (const kv of flags.env ?? []) {
    const eq = kv.indexOf('=');
    if (eq <= 0) throw new UsageError(`--env "${kv}" must be KEY=VALUE`);
    env[kv.slice(0, eq)] = kv.slice(eq + 1);
  }
  requireRoot('exec');
  process.exitCode = await testbedExec(host, argv, env);
}
