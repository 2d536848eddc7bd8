import { Command } from 'commander';
import { Agent } from '../agent/agent.ts';
import { makeRuntime, type MovableRuntime } from '../runtime/index.ts';
import { localSite } from '../runtime/site.ts';
import { loadIdentity } from '../transport/pki.ts';
import { parseEndpoint } from '../transport/tls.ts';
import { UsageError } from '../util/errors.ts';
import { createLogger } from '../util/log.ts';
import { parseDuration, parseSize } from '../util/units.ts';

interface AgentFlags {
  listen: string;
  stateDir: string;
  pki?: string;
  name?: string;
  spillSize: string;
  idleTimeout: string;
  insecurePlaintext?: boolean;
}

export function agentCommand(): Command {
  return new Command('agent')
    .exitOverride()
    .description('run a precog agent: receives migrations from authenticated peers over mutual TLS')
    .option(
      '--listen <host:port>',
      'address to listen on (default: every address, port 7070)',
      '0.0.0.0:7070',
    )
    .requiredOption('--state-dir <dir>', 'where migrations keep their pages and images')
    .option('--pki <dir>', 'PKI directory with ca.pem, NAME.pem and NAME-key.pem (precog pki)')
    .option('--name <name>', "this host's certificate name (default: the host name in the PKI)")
    .option('--spill-size <size>', 'keep pages of larger migrations in a file', '1GiB')
    .option(
      '--idle-timeout <duration>',
      'drop a session whose source sent nothing this long (0: never)',
      '120s',
    )
    .option('--insecure-plaintext', 'no TLS and no authentication: for tests on loopback only')
    .action(async (f: AgentFlags) => {
      const log = createLogger('precog-agent');
      const listen = parseEndpoint(f.listen, '--listen');
      let identity = null;
      if (f.insecurePlaintext) {
        if (f.pki) throw new UsageError('--insecure-plaintext and --pki exclude each other');
        log.warn(
          'INSECURE: plaintext listener without authentication; anyone who reaches it can send migrations',
        );
      } else {
        if (!f.pki || !f.name) {
          throw new UsageError(
            'the agent needs --pki DIR and --name NAME for mutual TLS (create them with precog pki init / precog pki issue NAME)',
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
    });
}
