// What a destination lets a peer's container configuration ask for (src/runtime/peerspec.ts): runc bundles and
// Podman's config.dump/spec.dump, as the source wrote them, refused where they would reach beyond the container.
// No root needed: the checks read JSON.
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { bundleRefusal } from '../src/runtime/oci.ts';
import { bundleFilesRefusal, specRefusal, type OciSpec } from '../src/runtime/peerspec.ts';
import { ipnetsOf, podmanImportRefusal, podmanPolicy } from '../src/runtime/podman.ts';

const ROOTS = ['/var/lib/containers/storage', '/run/containers/storage'];
const UD = '/var/lib/containers/storage/overlay-containers/c85f/userdata';
const RUD = '/run/containers/storage/overlay-containers/c85f/userdata';

/** A spec shaped like the one Podman 5.4 wrote for `podman run --network none -v /opt/w:/w:ro` here. */
const podmanSpec = (): OciSpec => ({
  process: {
    args: ['sleep', '600'],
    capabilities: { bounding: ['CAP_CHOWN', 'CAP_KILL', 'CAP_NET_BIND_SERVICE'], effective: ['CAP_CHOWN'] },
  },
  root: { path: '/var/lib/containers/storage/overlay/7c0d/merged' },
  mounts: [
    { destination: '/w', type: 'bind', source: '/opt/w', options: ['ro', 'rprivate', 'rbind'] },
    { destination: '/proc', type: 'proc', source: 'proc' },
    { destination: '/etc/hosts', type: 'bind', source: `${RUD}/hosts`, options: ['bind', 'rprivate'] },
    { destination: '/dev/shm', type: 'bind', source: `${UD}/shm`, options: ['bind', 'rprivate'] },
  ],
  linux: { namespaces: [{ type: 'pid' }, { type: 'network' }, { type: 'ipc' }, { type: 'mount' }] },
});

/** A runc bundle's config.json as the tests make them (runc spec, then edited). */
const bundle = (): OciSpec => ({
  process: { args: ['python3', 'x.py'], capabilities: { bounding: ['CAP_KILL'] } },
  root: { path: 'rootfs' },
  mounts: [{ destination: '/usr', type: 'bind', source: '/usr', options: ['rbind', 'ro'] }],
  linux: { namespaces: [{ type: 'pid' }, { type: 'network' }, { type: 'mount' }] },
});

test('what a plain runc bundle or Podman container asks for passes', () => {
  assert.equal(bundleRefusal(bundle()), null);
  assert.equal(specRefusal(podmanSpec(), podmanPolicy(ROOTS)), null);
  // A Podman network: the namespace Podman made under /run/netns.
  const s = podmanSpec();
  s.linux!.namespaces![1] = { type: 'network', path: '/run/netns/netns-1234' };
  assert.equal(specRefusal(s, podmanPolicy(ROOTS)), null);
});

test('hooks, read-write host binds, host namespaces, devices and host-level capabilities are refused', () => {
  const cases: [string, (s: OciSpec) => void, RegExp][] = [
    [
      'hooks',
      (s) => (s.hooks = { createRuntime: [{ path: '/bin/sh', args: ['sh', '-c', 'id'] }] }),
      /createRuntime hooks/,
    ],
    [
      'rw bind',
      (s) => s.mounts!.push({ destination: '/host', type: 'bind', source: '/', options: ['rbind'] }),
      /bind mount \/ -> \/host is read-write/,
    ],
    [
      'bind by option',
      (s) => s.mounts!.push({ destination: '/e', source: '/etc', options: ['rbind', 'rw'] }),
      /\/etc -> \/e is read-write/,
    ],
    [
      'unclean source',
      (s) => s.mounts!.push({ destination: '/x', type: 'bind', source: '/usr/../etc', options: ['ro'] }),
      /not a clean absolute host path/,
    ],
    [
      'host pid ns',
      (s) => (s.linux!.namespaces![0] = { type: 'pid', path: '/proc/1/ns/pid' }),
      /joins the host's pid namespace/,
    ],
    [
      'netns elsewhere',
      (s) => (s.linux!.namespaces![1] = { type: 'network', path: '/proc/1/ns/net' }),
      /joins the host's network namespace/,
    ],
    ['no pid ns', (s) => s.linux!.namespaces!.shift(), /no pid namespace of its own/],
    [
      'devices',
      (s) => (s.linux!.devices = [{ path: '/dev/sda', type: 'b', major: 8, minor: 0 }]),
      /host devices/,
    ],
    [
      // runc hands CRIU this file: its action-script lines run as root on the destination.
      'CRIU config',
      (s) => (s.annotations = { 'org.criu.config': '/var/lib/precog/oci/x/bundle/rootfs/evil.conf' }),
      /annotation org\.criu\.config .*host file or command/,
    ],
    [
      'crun handler',
      (s) => (s.annotations = { 'io.container.manager': 'libpod', 'run.oci.handler': 'krun' }),
      /annotation run\.oci\.handler/,
    ],
    ['annotations not an object', (s) => (s.annotations = [] as never), /annotations are not a JSON object/],
    [
      'CAP_SYS_ADMIN',
      (s) => (s.process!.capabilities = { effective: ['CAP_CHOWN', 'CAP_SYS_ADMIN'] }),
      /CAP_SYS_ADMIN/,
    ],
  ];
  for (const [what, change, why] of cases) {
    const b = bundle();
    change(b);
    assert.match(bundleRefusal(b) ?? 'passed', why, `runc bundle, ${what}`);
    const p = podmanSpec();
    change(p);
    assert.match(specRefusal(p, podmanPolicy(ROOTS)) ?? 'passed', why, `podman spec, ${what}`);
  }
});

test("a CRIU configuration file is allowed only inside precog's own directory of them, never the directory itself", () => {
  const policy = podmanPolicy(ROOTS);
  assert.deepEqual(policy.criuConfigUnder, ['/var/lib/precog/podman-lazy']);
  const withConfig = (v: string) => ({ ...podmanSpec(), annotations: { 'org.criu.config': v } });
  assert.equal(specRefusal(withConfig('/var/lib/precog/podman-lazy/pm/criu.conf'), policy), null);
  assert.equal(specRefusal(withConfig(''), podmanPolicy(ROOTS)), null);
  for (const v of [
    '/var/lib/precog/podman-lazy',
    '/var/lib/precog/podman-lazy/../x.conf',
    '/etc/criu/x.conf',
  ])
    assert.match(specRefusal(withConfig(v), policy) ?? 'passed', /org\.criu\.config/, v);
  // Only a policy that names the directory allows it: a runc bundle's never does.
  assert.match(
    bundleRefusal({
      ...bundle(),
      annotations: { 'org.criu.config': '/var/lib/precog/podman-lazy/pm/criu.conf' },
    }) ?? 'passed',
    /org\.criu\.config/,
  );
});

test('a root outside the bundle, or outside the storage a policy names, is refused', () => {
  for (const root of ['/', '../other', 'a/../../b', ''])
    assert.match(
      bundleRefusal({ ...bundle(), root: { path: root } }) ?? 'passed',
      /not a directory inside the bundle/,
      root,
    );
  assert.match(
    specRefusal({ ...podmanSpec(), root: { path: '/home/user/rootfs' } }, { root: ROOTS }) ?? 'passed',
    /not in the runtime's storage/,
  );
  // Podman mounts a root of its own at the restore: the path as sent does not matter.
  assert.equal(specRefusal({ ...podmanSpec(), root: { path: 'rootfs' } }, podmanPolicy(ROOTS)), null);
  // Podman's own read-write binds are fine under its storage, not elsewhere.
  const s = podmanSpec();
  s.mounts!.push({
    destination: '/etc/resolv.conf',
    type: 'bind',
    source: '/etc/resolv.conf',
    options: ['bind'],
  });
  assert.match(specRefusal(s, podmanPolicy(ROOTS)) ?? 'passed', /\/etc\/resolv.conf .* is read-write/);
});

test("Podman's config.dump: paths where Podman and conmon write must be in its storage; privileged is refused", () => {
  const dir = mkdtempSync(join(tmpdir(), 'precog-peerspec-'));
  try {
    const config = {
      logPath: `${UD}/ctr.log`,
      conmonPidFile: `${RUD}/conmon.pid`,
      staticDir: UD,
      pid_file: `${RUD}/pidfile`,
      ShmDir: `${UD}/shm`,
      mounts: [`${UD}/shm`],
      privileged: false,
      spec: podmanSpec(),
    };
    const write = (c: unknown, s: unknown = podmanSpec()) => {
      writeFileSync(join(dir, 'config.dump'), JSON.stringify(c));
      writeFileSync(join(dir, 'spec.dump'), JSON.stringify(s));
    };
    write(config);
    assert.equal(podmanImportRefusal(dir, ROOTS), null);
    write({ ...config, logPath: '/etc/cron.d/precog' });
    assert.match(
      podmanImportRefusal(dir, ROOTS) ?? 'passed',
      /logPath \("\/etc\/cron.d\/precog"\) is outside/,
    );
    write({ ...config, staticDir: `${UD}/../../../../../../root` });
    assert.match(podmanImportRefusal(dir, ROOTS) ?? 'passed', /staticDir .* is outside/);
    write({ ...config, privileged: true });
    assert.match(podmanImportRefusal(dir, ROOTS) ?? 'passed', /privileged/);
    // The spec inside config.dump is checked as well as spec.dump.
    const bad = podmanSpec();
    bad.hooks = { prestart: [{ path: '/tmp/x' }] };
    write({ ...config, spec: bad });
    assert.match(podmanImportRefusal(dir, ROOTS) ?? 'passed', /prestart hooks/);
    write(config, bad);
    assert.match(podmanImportRefusal(dir, ROOTS) ?? 'passed', /prestart hooks/);
    writeFileSync(join(dir, 'spec.dump'), '{not json');
    assert.match(podmanImportRefusal(dir, ROOTS) ?? 'passed', /no readable config.dump and spec.dump/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("a bundle's root or config.json that is a symlink is refused (rootfs -> / would hand the host to the container)", () => {
  const dir = mkdtempSync(join(tmpdir(), 'precog-bundle-'));
  try {
    writeFileSync(join(dir, 'config.json'), '{}');
    mkdirSync(join(dir, 'rootfs', 'usr'), { recursive: true });
    symlinkSync('usr/bin', join(dir, 'rootfs', 'bin')); // the container's own links are its business
    assert.equal(bundleFilesRefusal(dir, 'rootfs'), null);
    assert.equal(bundleFilesRefusal(dir, './rootfs/usr'), null);
    symlinkSync('/', join(dir, 'evil'));
    assert.match(bundleFilesRefusal(dir, 'evil') ?? 'passed', /not a directory \(evil is a link/);
    mkdirSync(join(dir, 'a'));
    symlinkSync('/etc', join(dir, 'a', 'b'));
    assert.match(bundleFilesRefusal(dir, 'a/b') ?? 'passed', /b is a link/);
    assert.match(bundleFilesRefusal(dir, 'missing') ?? 'passed', /incomplete/);
    rmSync(join(dir, 'config.json'));
    symlinkSync('/etc/passwd', join(dir, 'config.json'));
    assert.match(bundleFilesRefusal(dir, 'rootfs') ?? 'passed', /config.json is not a regular file/);
    // Podman's config.dump as a link to a host file: refused before it is read.
    writeFileSync(join(dir, 'spec.dump'), '{}');
    symlinkSync('/etc/passwd', join(dir, 'config.dump'));
    assert.match(podmanImportRefusal(dir, ROOTS) ?? 'passed', /config.dump is not a regular file/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("the addresses a destination holds while Podman restores come only from IP literals in the peer's network.status", () => {
  const status = {
    svcnet: {
      interfaces: {
        eth0: {
          subnets: [{ ipnet: '10.213.80.60/24', gateway: '10.213.80.254' }, { ipnet: 'fd00::3c/64' }],
          mac_address: '8a:1c:00:00:00:01',
        },
      },
    },
    other: { interfaces: { eth1: { subnets: [{ ipnet: '10.0.0.1; flush ruleset' }, { ipnet: 42 }] } } },
  };
  assert.deepEqual(ipnetsOf(status), ['10.213.80.60', 'fd00::3c']);
  assert.deepEqual(ipnetsOf(null), []);
  assert.deepEqual(ipnetsOf('10.0.0.1/8'), []);
});
