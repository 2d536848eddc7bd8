import { Command } from 'commander';
import { initPki, issueCert } from '../transport/pki.ts';

export function pkiCommand(): Command {
  const pki = new Command('pki')
    .exitOverride()
    .description('create the certificate authority and host certificates agents use for mutual TLS');
  pki
    .command('init')
    .description('create a certificate authority (ca.pem, ca-key.pem) in --dir')
    .requiredOption('--dir <dir>', 'PKI directory')
    .option('--force', 'replace an existing CA')
    .action(async (o: { dir: string; force?: boolean }) => {
      const path = await initPki(o.dir, { force: o.force });
      process.stdout.write(`created ${path}\n`);
    });
  pki
    .command('issue')
    .description('issue a certificate for host NAME signed by the CA (NAME.pem, NAME-key.pem)')
    .argument('<name>', 'host name, also the name peers must expect')
    .requiredOption('--dir <dir>', 'PKI directory')
    .option('--ip <ip...>', 'IP addresses to put in the certificate (127.0.0.1 always is)')
    .option('--dns <name...>', 'more DNS names')
    .option('--force', 'replace the certificate and key NAME has already')
    .action(async (name: string, o: { dir: string; ip?: string[]; dns?: string[]; force?: boolean }) => {
      const path = await issueCert(o.dir, name, { ips: o.ip, dns: o.dns, force: o.force });
      process.stdout.write(`issued ${path}\n`);
    });
  pki.commands.forEach((c) => c.exitOverride());
  return pki;
}
