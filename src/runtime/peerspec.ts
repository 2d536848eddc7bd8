/**
 * What a destination agent lets a peer's container configuration ask for. A migration's state carries the
 * container's configuration as the source wrote it (an OCI bundle's config.json, Podman's config.dump and
 * spec.dump), and the destination runs it as root: any agent holding a certificate of the CA could otherwise make
 * another host run commands (hooks), expose or change host files (bind mounts), join its namespaces, or lift the
 * container's confinement (privileged, capabilities, devices). These checks run at the destination before the
 * restore, and at the source before the container stops (so that a move the destination would refuse does not stop
 * it).
 */
import { lstatSync } from 'node:fs';
import { join, posix } from 'node:path';

/** The parts of an OCI runtime spec the checks read. */
export interface OciSpec {
  process?: { args?: string[]; capabilities?: Record<string, unknown> };
  root?: { path?: string };
  mounts?: { destination?: string; type?: string; source?: string; options?: string[] }[];
  hooks?: Record<string, unknown>;
  annotations?: Record<string, unknown>;
  linux?: {
    namespaces?: { type?: string; path?: string }[];
    devices?: unknown[];
    resources?: { memory?: { limit?: number } };
  };
}

/**
 * Capabilities that amount to the host's root (mount, load modules, raw I/O, trace or read any process, bypass
 * file permission checks for reads, BPF): a container with one of them is refused.
 */
export const HOST_LEVEL_CAPABILITIES = [
  'CAP_SYS_ADMIN',
  'CAP_SYS_MODULE',
  'CAP_SYS_RAWIO',
  'CAP_SYS_PTRACE',
  'CAP_SYS_BOOT',
  'CAP_DAC_READ_SEARCH',
  'CAP_MAC_ADMIN',
  'CAP_MAC_OVERRIDE',
  'CAP_BPF',
  'CAP_PERFMON',
  'CAP_SYSLOG',
];

/** A host path as a peer may name one: absolute, normalized, no NUL. */
export const cleanAbsolute = (p: unknown): p is string =>
  typeof p === 'string' &&
  p.length > 0 &&
  p.length < 4096 &&
  p.startsWith('/') &&
  !p.includes('\0') &&
  posix.normalize(p) === p;

/** Whether P is DIR or inside it (both clean absolute paths). */
export const under = (p: string, dir: string): boolean =>
  p === dir || p.startsWith(dir.endsWith('/') ? dir : `${dir}/`);

export const isBindMount = (m: NonNullable<OciSpec['mounts']>[number]): boolean =>
  m.type === 'bind' || (m.options ?? []).some((o) => o === 'bind' || o === 'rbind');

export interface SpecPolicy {
  /** Host directories read-write bind mounts may come from (the runtime's own storage); none by default. */
  writableUnder?: string[];
  /** Where a network namespace the container joins may be (Podman's /run/netns); none: no namespace paths at all. */
  netnsUnder?: string[];
  /**
   * What the root filesystem must be: inside the bundle (relative), under one of these host directories, or
   * anything ('set-by-runtime': the runtime mounts a root of its own and replaces the path, as Podman's restore).
   */
  root: 'relative' | 'set-by-runtime' | string[];
  /**
   * Where a CRIU configuration file the spec names (annotation org.criu.config) may be: precog's own directory of
   * them on every host (a Podman container precog restored lazily keeps the annotation); none by default.
   */
  criuConfigUnder?: string[];
}

/** The annotation with which runc hands CRIU a configuration file of the container's choosing. */
export const CRIU_CONFIG_ANNOTATION = 'org.criu.config';

/**
 * Annotations that make the runtime or CRIU read or write host files or run host commands: a CRIU configuration
 * file (it can name action scripts, run as root), crun's handler (another executor) and crun's files for hook
 * output.
 */
const HOST_ANNOTATIONS = [
  CRIU_CONFIG_ANNOTATION,
  'run.oci.handler',
  'run.oci.hooks.stdout',
  'run.oci.hooks.stderr',
];

/** Why SPEC must not run here as a peer sent it, or null. */
export function specRefusal(spec: OciSpec, policy: SpecPolicy): string | null {
  if (typeof spec !== 'object' || spec === null) return 'its configuration is not a JSON object';
  const root = spec.root?.path;
  if (policy.root === 'relative') {
    if (
      typeof root !== 'string' ||
      root === '' ||
      root.startsWith('/') ||
      posix.normalize(root).startsWith('..')
    )
      return `its root (root.path ${JSON.stringify(root)}) is not a directory inside the bundle`;
  } else if (policy.root === 'set-by-runtime') {
    // not used as sent
  } else if (!cleanAbsolute(root) || !policy.root.some((d) => under(root, d)))
    return `its root (root.path ${JSON.stringify(root)}) is not in the runtime's storage (${policy.root.join(', ')})`;
  const notes = spec.annotations ?? {};
  if (typeof notes !== 'object' || notes === null || Array.isArray(notes))
    return 'its annotations are not a JSON object';
  for (const key of HOST_ANNOTATIONS) {
    const v = notes[key];
    if (v === undefined || v === '') continue;
    const ours =
      key === CRIU_CONFIG_ANNOTATION &&
      cleanAbsolute(v) &&
      (policy.criuConfigUnder ?? []).some((d) => under(v, d) && v !== d);
    if (!ours)
      return `its annotation ${key} (${JSON.stringify(v)}) makes the runtime use a host file or command: precog does not move such containers`;
  }
  for (const [kind, list] of Object.entries(spec.hooks ?? {}))
    if (Array.isArray(list) && list.length > 0)
      return `it has ${kind} hooks (commands run on the host): precog does not move containers with hooks`;
  for (const m of spec.mounts ?? []) {
    if (!isBindMount(m)) continue;
    if (!cleanAbsolute(m.source))
      return `bind mount ${JSON.stringify(m.source)} -> ${m.destination}: not a clean absolute host path`;
    if (!(m.options ?? []).includes('ro') && !(policy.writableUnder ?? []).some((d) => under(m.source!, d)))
      return (
        `bind mount ${m.source} -> ${m.destination} is read-write: its data stays on the source's disk; ` +
        'make it read-only, or keep the data inside the container (a named volume for Podman)'
      );
  }
  const types = new Set<string | undefined>();
  for (const ns of spec.linux?.namespaces ?? []) {
    types.add(ns.type);
    if (ns.path === undefined || ns.path === '') continue;
    const ok =
      ns.type === 'network' &&
      cleanAbsolute(ns.path) &&
      (policy.netnsUnder ?? []).some((d) => under(ns.path as string, d));
    if (!ok) return `it joins the host's ${ns.type} namespace (${ns.path}), which does not move`;
  }
  for (const need of ['pid', 'mount'])
    if (!types.has(need)) return `it has no ${need} namespace of its own (CRIU moves only whole containers)`;
  if ((spec.linux?.devices ?? []).length > 0)
    return 'it is given host devices (linux.devices): precog does not move containers with devices';
  const caps = new Set<unknown>();
  for (const set of Object.values(spec.process?.capabilities ?? {}))
    if (Array.isArray(set)) for (const c of set) caps.add(c);
  const strong = HOST_LEVEL_CAPABILITIES.filter((c) => caps.has(c));
  if (strong.length)
    return `it has ${strong.join(', ')} (as much as the host's root): precog does not move such containers`;
  return null;
}

/**
 * Why the files of a bundle a peer sent (DIR: its config.json and the root filesystem at ROOT, a relative path) are
 * not what they claim, or null: config.json must be a regular file, and the root and every directory on the way to
 * it real directories. A symlink there (rootfs -> /) would make the runtime use a host directory as the container's
 * root; the symlinks inside the root filesystem are the container's own and stay confined by the runtime.
 */
export function bundleFilesRefusal(dir: string, root: string): string | null {
  try {
    if (!lstatSync(join(dir, 'config.json')).isFile()) return 'its config.json is not a regular file';
    let at = dir;
    for (const part of posix
      .normalize(root)
      .split('/')
      .filter((p) => p && p !== '.')) {
      at = join(at, part);
      if (!lstatSync(at).isDirectory())
        return `its root ${root} is not a directory (${part} is a link or a file)`;
    }
  } catch (err) {
    return `its files are incomplete: ${(err as Error).message}`;
  }
  return null;
}
