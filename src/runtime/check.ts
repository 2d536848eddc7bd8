/**
 * What a host needs to move containers with precog, checked on the host itself (`precog check`, and each agent
 * before a move starts, so that a host that cannot dump or restore refuses before the container stops).
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { release } from 'node:os';
import { cgroup2Mount, hasTool } from './site.ts';

/** The oldest CRIU precog works with (4.x: TCP sockets on Linux >= 6.16, lazy pages with userfaultfd). */
export const MIN_CRIU = [4, 0] as const;

export interface CheckResult {
  what: string;
  ok: boolean;
  /** What was found. */
  detail: string;
  /** What to do when it is not ok. */
  fix?: string;
  /** A failure that stops moves (false: worth knowing, not needed). */
  required: boolean;
}

function run(cmd: string, args: string[]): { code: number | null; out: string } {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 30_000 });
  if (r.error) return { code: null, out: r.error.message };
  return { code: r.status, out: `${r.stdout ?? ''}${r.stderr ?? ''}` };
}

/** `criu --version` -> [major, minor], or null when there is no criu. */
export function criuVersion(): { version: [number, number]; text: string } | null {
  const r = run('criu', ['--version']);
  const m = /Version:\s*(\d+)\.(\d+)(\S*)/.exec(r.out);
  if (r.code !== 0 || !m) return null;
  return { version: [Number(m[1]), Number(m[2])], text: `${m[1]}.${m[2]}${m[3]}` };
}

/** Every check; `full` also runs `criu check` (a second or so). */
export function hostChecks(full = true): CheckResult[] {
  const out: CheckResult[] = [];
  const root = process.getuid?.() === 0;
  out.push({
    what: 'root',
    ok: root,
    detail: root ? 'running as root' : `running as uid ${process.getuid?.()}`,
    fix: 'CRIU and the containers need root: run precog (and its agent) as root',
    required: true,
  });
  out.push({ what: 'kernel', ok: true, detail: release(), required: false });
  const criu = criuVersion();
  const newEnough =
    !!criu &&
    (criu.version[0] > MIN_CRIU[0] || (criu.version[0] === MIN_CRIU[0] && criu.version[1] >= MIN_CRIU[1]));
  out.push({
    what: 'criu',
    ok: newEnough,
    detail: criu ? `criu ${criu.text}` : 'no criu on PATH',
    fix: `install CRIU >= ${MIN_CRIU.join('.')} (Debian trixie or later: apt-get install criu; docs/deploy.md)`,
    required: true,
  });
  if (full && criu) {
    const c = run('criu', ['check']);
    out.push({
      what: 'criu check',
      ok: c.code === 0,
      detail: c.code === 0 ? 'Looks good.' : c.out.trim().split('\n').slice(-3).join(' | '),
      fix: 'fix what criu check reports (a kernel without CONFIG_CHECKPOINT_RESTORE cannot move containers)',
      required: true,
    });
  }
  const fs = existsSync('/proc/filesystems') ? readFileSync('/proc/filesystems', 'utf8') : '';
  out.push({
    what: 'overlayfs',
    ok: /\toverlay$/m.test(fs) || run('modprobe', ['-n', 'overlay']).code === 0,
    detail: /\toverlay$/m.test(fs) ? 'overlay in /proc/filesystems' : 'not loaded',
    fix: 'load the overlay module: modprobe overlay',
    required: true,
  });
  const uffd = existsSync('/proc/sys/vm/unprivileged_userfaultfd');
  out.push({
    what: 'userfaultfd',
    ok: uffd,
    detail: uffd ? 'present (lazy restore, post-copy)' : 'absent',
    fix: 'a kernel with CONFIG_USERFAULTFD: without it only --restore full and pre-copy work',
    required: false,
  });
  const cg = cgroup2Mount();
  out.push({
    what: 'cgroup2',
    ok: cg !== null,
    detail: cg ? `mounted at ${cg}` : 'not mounted',
    fix: 'mount the cgroup2 hierarchy (mount -t cgroup2 none /sys/fs/cgroup): containers are frozen with it',
    required: true,
  });
  for (const tool of ['nsenter', 'unshare', 'ip', 'tar']) {
    const there = hasTool(tool);
    out.push({
      what: tool,
      ok: there,
      detail: there ? 'present' : 'missing',
      fix: `install ${tool === 'ip' ? 'iproute2' : tool === 'tar' ? 'tar' : 'util-linux'}`,
      required: true,
    });
  }
  return out;
}

let cached: CheckResult[] | null = null;

/**
 * The first required check that fails on this host, as a sentence naming the fix; null when the host can move
 * containers. Cached: a host does not change between two moves.
 */
export function cannotMove(): string | null {
  cached ??= hostChecks(false);
  const bad = cached.find((c) => c.required && !c.ok);
  return bad ? `${bad.what}: ${bad.detail}; ${bad.fix}` : null;
}
