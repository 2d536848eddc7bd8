import { initPki, issueCert } from '../../transport/pki.ts';

/** `precog pki init`. */
export async function pkiInit(o: { dir: string; force?: boolean }): Promise<void> {
  const path = await initPki(o.dir, { force: o.force });
  process.stdout.write(`created ${path}\n`);
}

/** `precog pki issue NAME`. */
export async function pkiIssue(
  name: string,
  o: { dir: string; ip?: string[]; dns?: string[]; force?: boolean },
): Promise<void> {
  const path = await issueCert(o.dir, name, { ips: o.ip, dns: o.dns, force: o.force });
  process.stdout.write(`issued ${path}\n`);
}
