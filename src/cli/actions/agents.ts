/**
 * How the client commands (`precog migrate`, `precog job`) find and reach agents: a test host's name while the
 * testbed is up, or HOST[:PORT] of an agent anywhere, with a client certificate of the agents' CA.
 */
import { spawn } from 'node:child_process';
import { AGENT, OPERATOR_CERT, PKI_DIR, readState, type TestbedState } from '../../runtime/testbed.ts';
import { loadIdentity, type Identity } from '../../transport/pki.ts';
import { parseEndpoint, type Endpoint } from '../../transport/tls.ts';
import { UsageError } from '../../util/errors.ts';
import { needRoot } from './container.ts';

/** The agents' port when none is given. */
export const DEFAULT_AGENT_PORT = AGENT.port;

/** Where an agent is: its address, and the name its certificate carries. */
export interface AgentAt {
  endpoint: Endpoint;
  name: string;
}

/** The options every client command takes for its certificate. */
export interface ClientFlags {
  pki?: string;
  name?: string;
}

function testbedHosts(): { state: TestbedState | null; names: string[] } {
  const state = readState();
  return {
    state: state?.complete ? state : null,
    names: state?.complete ? state.hosts.map((h) => h.name) : [],
  };
}

/** HOST[:PORT] of an agent (its certificate must name HOST). */
function anyAgent(spec: string, what: string): AgentAt {
  const endpoint = /:\d+$/.test(spec) ? parseEndpoint(spec, what) : { host: spec, port: DEFAULT_AGENT_PORT };
  if (!endpoint.host || !/^[A-Za-z0-9._:-]{1,253}$/.test(endpoint.host))
    throw new UsageError(`${what} "${spec}" must be a test host (a, b) or an agent's HOST[:PORT]`);
  return { endpoint, name: endpoint.host };
}

/**
 * A client's view of one agent. Test hosts are reached from the probe namespace (a third network namespace with a
 * link of its own to each host: the client shares nothing with the hosts but the agents' TLS port).
 */
export function agentFor(spec: string, what: string): { at: AgentAt; testbed: TestbedState | null } {
  const { state, names } = testbedHosts();
  if (state && names.includes(spec)) {
    const probe = state.probe;
    if (!probe)
      throw new UsageError(
        'this testbed has no probe namespace (an older precog made it); run "precog testbed down", then "up"',
      );
    return {
      at: { endpoint: { host: probe.addresses[spec], port: AGENT.port }, name: spec },
      testbed: state,
    };
  }
  return { at: anyAgent(spec, what), testbed: null };
}

/**
 * A move's two agents: the source as the client reaches it, the destination as the source agent reaches it (test
 * hosts by their names, which each host's /etc/hosts resolves to the migration link).
 */
export function agentsFor(
  from: string,
  to: string,
): { from: AgentAt; to: AgentAt; testbed: TestbedState | null } {
  const { names } = testbedHosts();
  if (names.includes(from) || names.includes(to)) {
    if (!names.includes(from) || !names.includes(to))
      throw new UsageError(
        `--from ${from} --to ${to}: name two test hosts (${names.join(', ')}), or two agents' HOST[:PORT]`,
      );
    const src = agentFor(from, '--from');
    return { from: src.at, to: { endpoint: { host: to, port: AGENT.port }, name: to }, testbed: src.testbed };
  }
  return { from: anyAgent(from, '--from'), to: anyAgent(to, '--to'), testbed: null };
}

/** The client's certificate: --pki/--name, or the testbed's operator certificate. */
export function clientIdentity(f: ClientFlags, testbed: boolean, host: string): Identity {
  if (f.pki) return loadIdentity(f.pki, f.name ?? OPERATOR_CERT);
  if (testbed) return loadIdentity(PKI_DIR, OPERATOR_CERT);
  throw new UsageError(
    `a client certificate of the agents' CA is needed to reach the agent on host ${host}: ` +
      '--pki DIR --name NAME (see docs/deploy.md)',
  );
}

/**
 * Runs this same command again inside network namespace NETNS with the same stdio (signals passed on); resolves
 * with its exit code.
 */
export function reexecIn(netns: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const child = spawn(
      'nsenter',
      [`--net=/run/netns/${netns}`, '--', process.execPath, ...process.execArgv, ...process.argv.slice(1)],
      { stdio: 'inherit', env: { ...process.env, PRECOG_IN_NETNS: netns } },
    );
    const forward = (sig: NodeJS.Signals) => () => child.kill(sig);
    const onInt = forward('SIGINT');
    const onTerm = forward('SIGTERM');
    process.on('SIGINT', onInt);
    process.on('SIGTERM', onTerm);
    child.on('error', reject);
    child.on('exit', (code, signal) => {
      process.off('SIGINT', onInt);
      process.off('SIGTERM', onTerm);
      resolve(code ?? (signal ? 128 + 15 : 1));
    });
  });
}

/**
 * For test hosts: runs the command again from the probe namespace (needs root, as the testbed does) and returns
 * true once it is done there; false when this process is to go on (already there, or not a testbed request).
 */
export async function fromProbeNamespace(testbed: TestbedState | null, what: string): Promise<boolean> {
  if (!testbed) return false;
  needRoot(what);
  const netns = testbed.probe!.netns;
  if (process.env.PRECOG_IN_NETNS === netns) return false;
  process.exitCode = await reexecIn(netns);
  return true;
}
