import { Command } from 'commander';
import { lazy } from './lazy.ts';

export function pkiCommand(): Command {
  const pki = new Command('pki')
    .exitOverride()
    .description('create the certificate authority and host certificates agents use for mutual TLS');
  pki
    .command('init')
    .description('create a certificate authority (ca.pem, ca-key.pem) in --dir')
    .requiredOption('--dir <dir>', 'PKI directory')
    .option('--force', 'replace an existing CA')
    .action(lazy(() => import('./actions/pki.ts').then((m) => m.pkiInit)));
  pki
    .command('issue')
    .description('issue a certificate for host NAME signed by the CA (NAME.pem, NAME-key.pem)')
    .argument('<name>', 'host name, also the name peers must expect')
    .requiredOption('--dir <dir>', 'PKI directory')
    .option('--ip <ip...>', 'IP addresses to put in the certificate (127.0.0.1 always is)')
    .option('--dns <name...>', 'more DNS names')
    .option('--force', 'replace the certificate and key NAME has already')
    .action(lazy(() => import('./actions/pki.ts').then((m) => m.pkiIssue)));
  pki.commands.forEach((c) => c.exitOverride());
  return pki;
}
