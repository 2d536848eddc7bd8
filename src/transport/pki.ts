import 'reflect-metadata';
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { webcrypto, X509Certificate, createPrivateKey } from 'node:crypto';
import { isIP } from 'node:net';
import { join } from 'node:path';
import * as x509 from '@peculiar/x509';
import { UsageError } from '../util/errors.ts';

/**
 * precog's own small certificate authority: agents accept only peers whose certificates it signed.
 * Layout of a PKI directory: ca.pem, ca-key.pem, and per host HOST.pem + HOST-key.pem (keys mode 0600).
 */
x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);

const ALG = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' };
const DAY = 864e5;

export interface Identity {
  name: string;
  ca: string;
  cert: string;
  key: string;
}

const HOST_NAME = /^[a-zA-Z0-9][a-zA-Z0-9._-]{0,62}$/;

function pem(label: string, der: ArrayBuffer): string {
  const b64 = Buffer.from(der)
    .toString('base64')
    .replace(/(.{64})/g, '$1\n');
  return `-----BEGIN ${label}-----\n${b64.trimEnd()}\n-----END ${label}-----\n`;
}

function serial(): string {
  return Buffer.from(webcrypto.getRandomValues(new Uint8Array(16)))
    .toString('hex')
    .replace(/^[89a-f]/, '1');
}

export async function initPki(dir: string, opts: { force?: boolean; days?: number } = {}): Promise<string> {
  const caPath = join(dir, 'ca.pem');
  if (existsSync(caPath) && !opts.force) {
    throw new UsageError(
      `${caPath} exists already; use --force to replace the CA (every host certificate then needs reissuing)`,
    );
  }
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const keys = await webcrypto.subtle.generateKey(ALG, true, ['sign', 'verify']);
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: serial(),
    name: 'CN=precog CA',
    notBefore: new Date(Date.now() - DAY),
    notAfter: new Date(Date.now() + (opts.days ?? 3650) * DAY),
    keys,
    signingAlgorithm: ALG,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  writeFileSync(
    join(dir, 'ca-key.pem'),
    pem('PRIVATE KEY', await webcrypto.subtle.exportKey('pkcs8', keys.privateKey)),
    {
      mode: 0o600,
    },
  );
  writeFileSync(caPath, cert.toString('pem') + '\n');
  return caPath;
}

/** Issues a certificate for a host, usable both as TLS server and as client; names and IPs go into its SAN. */
export async function issueCert(
  dir: string,
  name: string,
  opts: { ips?: string[]; dns?: string[]; days?: number; force?: boolean } = {},
): Promise<string> {
  if (!HOST_NAME.test(name)) {
    throw new UsageError(`host name "${name}" must be letters, digits, dot, dash or underscore (at most 63)`);
  }
  const keyPath = join(dir, `${name}-key.pem`);
  if (!opts.force && (existsSync(keyPath) || existsSync(join(dir, `${name}.pem`))))
    throw new UsageError(
      `${name} has a certificate in ${dir} already; reissue it with --force (the old key then stops being the ` +
        `host's: copy the new ${name}.pem and ${name}-key.pem to it)`,
    );
  for (const ip of opts.ips ?? []) if (!isIP(ip)) throw new UsageError(`"${ip}" is not an IP address`);
  const caPath = join(dir, 'ca.pem');
  if (!existsSync(caPath)) throw new UsageError(`no CA in ${dir}: run precog pki init --dir ${dir} first`);
  const caCert = new x509.X509Certificate(readFileSync(caPath, 'utf8'));
  const caKeyDer = createPrivateKey(readFileSync(join(dir, 'ca-key.pem'))).export({
    type: 'pkcs8',
    format: 'der',
  });
  const caKey = await webcrypto.subtle.importKey('pkcs8', caKeyDer, ALG, false, ['sign']);
  const keys = await webcrypto.subtle.generateKey(ALG, true, ['sign', 'verify']);
  const names = [
    { type: 'dns' as const, value: name },
    { type: 'dns' as const, value: 'localhost' },
    ...(opts.dns ?? []).map((value) => ({ type: 'dns' as const, value })),
    ...['127.0.0.1', ...(opts.ips ?? [])].map((value) => ({ type: 'ip' as const, value })),
  ];
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: serial(),
    subject: `CN=${name}`,
    issuer: caCert.subject,
    notBefore: new Date(Date.now() - DAY),
    notAfter: new Date(Date.now() + (opts.days ?? 825) * DAY),
    signingKey: caKey,
    publicKey: keys.publicKey,
    signingAlgorithm: ALG,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension([
        x509.ExtendedKeyUsage.serverAuth,
        x509.ExtendedKeyUsage.clientAuth,
      ]),
      new x509.SubjectAlternativeNameExtension(names),
    ],
  });
  // A new file, owner-only from its creation, renamed over the old key: writeFileSync's mode applies only to a file
  // it creates, so an old key's 0644 used to survive a reissue.
  const tmp = `${keyPath}.${process.pid}.tmp`;
  rmSync(tmp, { force: true });
  writeFileSync(tmp, pem('PRIVATE KEY', await webcrypto.subtle.exportKey('pkcs8', keys.privateKey)), {
    mode: 0o600,
    flag: 'wx',
  });
  renameSync(tmp, keyPath);
  const path = join(dir, `${name}.pem`);
  writeFileSync(path, cert.toString('pem') + '\n');
  return path;
}

/** Loads a host's identity for TLS; says which file is missing and how to make it. */
export function loadIdentity(dir: string, name: string): Identity {
  const read = (file: string, fix: string): string => {
    const p = join(dir, file);
    if (!existsSync(p)) throw new UsageError(`${p} is missing: ${fix}`);
    return readFileSync(p, 'utf8');
  };
  const ca = read('ca.pem', `run precog pki init --dir ${dir}`);
  const cert = read(`${name}.pem`, `run precog pki issue ${name} --dir ${dir}`);
  const key = read(`${name}-key.pem`, `run precog pki issue ${name} --dir ${dir}`);
  if (!new X509Certificate(cert).verify(new X509Certificate(ca).publicKey)) {
    throw new UsageError(`${join(dir, `${name}.pem`)} was not signed by ${join(dir, 'ca.pem')}: reissue it`);
  }
  return { name, ca, cert, key };
}
