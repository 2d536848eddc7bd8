import { existsSync } from 'node:fs';
import type { Command } from 'commander';
import { loadAgentConfig } from '../agent-config.ts';
import { Agent } from '../../agent/agent.ts';
import { makeRuntime, type MovableRuntime } from '../../runtime/index.ts';
import { localSite } from '../../runtime/site.ts';
import { loadIdentity } from '../../transport/pki.ts';
import { parseEndpoint } from '../../transport/tls.ts';
import { UsageError } from '../../util/errors.ts';
import { createLogger } from '../../util/log.ts';
import { parseDuration, parseSize } from '../../util/units.ts';
import { DEFAULT_AGENT_CONFIG } from '../agent.ts';

export interface AgentFlags {
  config?: string;
  listen: string;
  stateDir: string;
  pki?: string;
  name?: string;
  spillSize: string;
  idleTimeout: string;
  handshakeTimeout: string;
  frameTimeout: string;
  insecurePlaintext?: boolean;
}

/** Flag name -> the configuration file's key. */
const CONFIG_KEY: Record<string, string> = {
  listen: 'listen',
  stateDir: 'state-dir',
  pki: 'pki',
  name: 'name',
  spillSize: 'spill-size',
  idleTimeout: 'idle-timeout',
  handshakeTimeout: 'handshake-timeout',
  frameTimeout: 'frame-timeout',
};

function positive(seconds: number, flag: string): number {
  if (!(seconds > 0)) throw new UsageError(`${flag} must be more than 0 (a handshake must end some time)`);
  return seconds;
}

/** `precog agent`: runs an agent until SIGTERM or SIGINT; CMD tells which flags were given on the command line. */
export async function agent(f: AgentFlags, cmd: Command): Promise<void> {
  // The file's settings where no flag was given on the command line.
  const file = f.config ?? (existsSync(DEFAULT_AGENT_CONFIG) ? DEFAULT_AGENT_CONFIG : undefined);
  if (file) {
    const conf = loadAgentConfig(file);
    const flags = f as unknown as Record<string, string>;
    for (const [flag, key] of Object.entries(CONFIG_KEY))
      if (conf[key] !== undefined && cmd.getOptionValueSource(flag) !== 'cli') flags[flag] = conf[key];
  }
  const log = createLogger('precog-agent');
  const listen = parseEndpoint(f.listen, '--listen');
  let identity = null;
  if (f.insecurePlaintext) {
    if (f.pki) throw new UsageError('--insecure-plaintext and --pki exclude each other');
    if (!/^(127\.\d+\.\d+\.\d+|::1|localhost)$/.test(listen.host))
      throw new UsageError(
        `--insecure-plaintext listens on loopback only (127.0.0.1, ::1), not ${listen.host}: ` +
          'anyone who reaches it could send migrations; use --pki for anything else',
      );
    log.warn(
      'INSECURE: plaintext listener without authentication; anyone who reaches it can send migrations',
    );
  } else {
    if (!f.pki || !f.name) {
      throw new UsageError(
        'the agent needs --pki DIR and --name NAME for mutual TLS (or pki: and name: in its --config file; create them with precog pki init / precog pki issue NAME)',
      );
    }
    identity = loadIdentity(f.pki, f.name);
  }
  // Containers are restored here, in this host, by the runtime their source names (made on first use).
  const runtimes = new Map<string, MovableRuntime>();
  const hostName = f.name ?? identity?.name;
  const runtime = (name: string): MovableRuntime => {
    let rt = runtimes.get(name);
    if (!rt) {
      rt = makeRuntime(name, localSite(hostName ? { name: hostName } : {}));
      runtimes.set(name, rt);
    }
    return rt;
  };
  const agent = new Agent({
    runtime,
    ...(hostName ? { hostName } : {}),
    listen,
    stateDir: f.stateDir,
    identity,
    spillBytes: parseSize(f.spillSize),
    idleTimeoutMs: parseDuration(f.idleTimeout, '--idle-timeout') * 1000,
    handshakeTimeoutMs:
      positive(parseDuration(f.handshakeTimeout, '--handshake-timeout'), '--handshake-timeout') * 1000,
    limits: { frameTimeoutMs: parseDuration(f.frameTimeout, '--frame-timeout') * 1000 },
    log,
  });
  await agent.start();
  await new Promise<void>((resolve) => {
    const stop = (sig: string): void => {
      log.info({ signal: sig }, 'stopping');
      void agent.close().then(resolve);
    };
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
  });
}
