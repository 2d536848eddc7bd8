import { Command } from 'commander';
import { lazy } from './lazy.ts';

/** Where the agent looks for its configuration when no --config is given. */
export const DEFAULT_AGENT_CONFIG = '/etc/precog/agent.yaml';

export function agentCommand(): Command {
  return new Command('agent')
    .exitOverride()
    .description(
      'run a precog agent: receives migrations from authenticated peers over mutual TLS, restores containers, ' +
        'and moves its own containers away when a client asks (docs/deploy.md)',
    )
    .option(
      '--config <file>',
      `YAML configuration with the keys listen, state-dir, pki, name, spill-size, idle-timeout, handshake-timeout, frame-timeout (default: ${DEFAULT_AGENT_CONFIG} when it exists); flags override it`,
    )
    .option(
      '--listen <host:port>',
      'address to listen on (default: every address, port 7070)',
      '0.0.0.0:7070',
    )
    .option('--state-dir <dir>', 'where migrations keep their pages and images', '/var/lib/precog/agent')
    .option('--pki <dir>', 'PKI directory with ca.pem, NAME.pem and NAME-key.pem (precog pki)')
    .option('--name <name>', "this host's certificate name in --pki (required with it, or name: in --config)")
    .option('--spill-size <size>', 'keep pages of larger migrations in a file', '1GiB')
    .option(
      '--idle-timeout <duration>',
      'drop a session whose source sent nothing this long (0: never)',
      '120s',
    )
    .option(
      '--handshake-timeout <duration>',
      'close a connection that has not finished its TLS handshake by then',
      '10s',
    )
    .option(
      '--frame-timeout <duration>',
      'drop a session whose frame has not arrived whole this long after its first byte (0: never)',
      '120s',
    )
    .option('--insecure-plaintext', 'no TLS and no authentication: for tests on loopback only')
    .action(lazy(() => import('./actions/agent.ts').then((m) => m.agent)));
}
