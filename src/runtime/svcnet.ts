/**
 * A container's own network on the testbed's service LAN (testbed.ts, SERVICE_NET): a network namespace with one
 * veth pair, `eth0` inside with the container's address, the outer end (`vc<last byte>`) a port of its host's
 * bridge svc0. The address and the MAC belong to the container's network namespace, so CRIU carries them along
 * when the container migrates (`--external veth[eth0]:vcN@svc0` recreates the outer end on the destination's
 * bridge); precog locks the network at the source for the move, and announces the address from its new place with
 * a gratuitous ARP once the restore succeeded (docs/containers.md, "Network").
 *
 * Every function here runs `ip`/`nsenter` on this machine against namespaces precog made; nothing else is touched.
 */
import { mustRun, runTool } from './rootfs.ts';
import { ipIn, type Site } from './site.ts';
import { serviceHostIface } from './testbed.ts';

/** The host a container's network is set up in. */
type NetSite = Pick<Site, 'netns' | 'nsPid'>;

/** What a container's state records about its network (null or absent: the host's network namespace). */
export interface ContainerNetwork {
  /** The container's address on the service LAN and its prefix. */
  address: string;
  prefixLength: number;
  /** Inside the container. */
  iface: string;
  /** The outer end of the veth pair, in the host's network namespace, a port of hostBridge. */
  hostIface: string;
  hostBridge: string;
}

export const CONTAINER_IFACE = 'eth0';

export function serviceNetworkFor(site: Pick<Site, 'serviceNet'>, address: string): ContainerNetwork {
  const service = site.serviceNet;
  if (!service)
    throw new Error(
      'this testbed has no service network (it was started by an older precog); run "precog testbed down", then "up"',
    );
  return {
    address,
    prefixLength: service.prefixLength,
    iface: CONTAINER_IFACE,
    hostIface: serviceHostIface(address),
    hostBridge: service.hostBridge,
  };
}

/**
 * Gives a container (its process `machinePid`, already in a network namespace of its own) its veth pair and address,
 * and plugs the outer end into the host's bridge.
 */
export async function attachNetwork(host: NetSite, machinePid: number, net: ContainerNetwork): Promise<void> {
  const inside = ['nsenter', `--net=/proc/${machinePid}/ns/net`];
  await mustRun(
    'ip',
    ipIn(host, [
      'link',
      'add',
      net.hostIface,
      'type',
      'veth',
      'peer',
      'name',
      net.iface,
      'netns',
      String(machinePid),
    ]),
  );
  await mustRun(inside[0], [...inside.slice(1), 'ip', 'link', 'set', 'lo', 'up']);
  await mustRun(inside[0], [
    ...inside.slice(1),
    'ip',
    'addr',
    'add',
    `${net.address}/${net.prefixLength}`,
    'dev',
    net.iface,
  ]);
  await mustRun(inside[0], [...inside.slice(1), 'ip', 'link', 'set', net.iface, 'up']);
  await mustRun('ip', ipIn(host, ['link', 'set', net.hostIface, 'master', net.hostBridge, 'up']));
}

/**
 * The network lock of a move: the outer end of the container's veth leaves the host's bridge, so nothing reaches
 * the container or leaves it (its TCP peers retransmit into silence) until unlockNetwork() on failure or the end of
 * the source on success. The link stays up: a link that is down marks the container's routes "linkdown", and
 * `ip route restore` refuses those at the destination. Set before `criu dump` and held after it: CRIU's own lock is
 * lifted when a dump with -R ends, and the source's kernel must not answer (ACK) a client while the destination
 * restores the same connections.
 */
export async function lockNetwork(host: NetSite, net: ContainerNetwork): Promise<void> {
  await mustRun('ip', ipIn(host, ['link', 'set', net.hostIface, 'nomaster']));
}

export async function unlockNetwork(host: NetSite, net: ContainerNetwork): Promise<void> {
  await mustRun('ip', ipIn(host, ['link', 'set', net.hostIface, 'master', net.hostBridge, 'up']));
}

/**
 * Removes the outer end of a container's veth pair from its host (and with it the pair). A container's network
 * namespace can outlive its processes: the TCP sockets it had linger as orphans, retransmitting their FIN into the
 * locked link for minutes, and they keep the namespace, its veth and the name vcN alive. Called when a container
 * is removed, and before its address is set up on a host (a leftover of a crash). No error if there is none.
 */
export async function removeHostLink(host: NetSite, net: ContainerNetwork): Promise<void> {
  await runTool('ip', ipIn(host, ['link', 'del', net.hostIface]));
}

/** CRIU's options for a container with its own network: established TCP connections, and where the veth goes. */
export const dumpNetworkArgs = (net: ContainerNetwork | null | undefined): string[] =>
  net ? ['--tcp-established'] : [];

export const restoreNetworkArgs = (net: ContainerNetwork | null | undefined): string[] =>
  net ? ['--tcp-established', '--external', `veth[${net.iface}]:${net.hostIface}@${net.hostBridge}`] : [];

/**
 * After a restore: the outer end up in the bridge (CRIU plugs it in; this makes sure), then a gratuitous ARP from
 * inside the container, so every bridge on the LAN learns the container's MAC on its new port at once instead of
 * at the container's next packet. `arping` comes from the test hosts' image; it runs in the container's network
 * namespace with the host's root.
 */
export async function announceNetwork(
  host: NetSite,
  machinePid: number,
  net: ContainerNetwork,
): Promise<void> {
  await mustRun('ip', ipIn(host, ['link', 'set', net.hostIface, 'master', net.hostBridge, 'up']));
  await mustRun('nsenter', [
    ...(host.nsPid !== null ? ['-t', String(host.nsPid), '-m', '-r'] : []),
    `--net=/proc/${machinePid}/ns/net`,
    'arping',
    '-U',
    '-c',
    '1',
    '-I',
    net.iface,
    net.address,
  ]);
}
