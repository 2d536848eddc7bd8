/**
 * Starting `criu lazy-pages` for a lazy restore, the same way for every runtime that restores through CRIU with
 * userfaultfd (runc's `restore --lazy-pages`, and Podman's restore made lazy by a CRIU configuration file).
 *
 * The daemon reads the images in IMAGES, listens on lazy-pages.socket in its work directory (where the restoring
 * CRIU looks for it: its own work directory), and copies every page in. For post-copy it asks precog's page server
 * for them over a socket pair it is spawned with (descriptor PS_SOCKET_FD): nothing listens. Its exit status lands
 * in lazy-pages.rc beside IMAGES (LAZY_STATUS), which lazyFinished waits for.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import type { Socket } from 'node:net';
import { join } from 'node:path';
import { PS_SOCKET_FD, type PsConnection } from '../criu/pageserver.ts';
import { LAZY_STATUS } from './container.ts';
import type { CommandSite } from './site.ts';

export interface LazyPagesStart {
  /** The images the restore reads (a path inside the host). */
  images: string;
  /** The daemon's work directory: the restoring CRIU's own (a path inside the host); its log goes there. */
  workDir: string;
  /** Post-copy: where the pages come from instead of the local images. */
  pageServer?: PsConnection;
}

/**
 * Spawns the daemon (in its own process group) and resolves with its PID once its socket exists; rejects when it
 * ended first or did not listen within 10 s (the caller kills nothing then: it is gone or never started).
 */
export async function startLazyPages(site: CommandSite, o: LazyPagesStart): Promise<number> {
  const ps = o.pageServer ? `--page-server --ps-socket ${PS_SOCKET_FD}` : '';
  const c = site.command([
    'sh',
    '-c',
    `criu lazy-pages -D "$1" -W "$2" -o lazy-pages.log -v4 ${ps} </dev/null >/dev/null 2>&1; ${LAZY_STATUS}`,
    'precog-lazy',
    o.images,
    o.workDir,
  ]);
  const child = spawn(c.cmd, c.args, {
    env: c.env,
    stdio: o.pageServer ? ['ignore', 'ignore', 'ignore', 'pipe'] : 'ignore',
    detached: true,
  });
  if (o.pageServer) o.pageServer.attach(child.stdio[PS_SOCKET_FD] as Socket);
  child.unref();
  const pid = child.pid;
  if (pid === undefined) throw new Error('cannot start criu lazy-pages');
  const socket = site.path(join(o.workDir, 'lazy-pages.socket'));
  const rc = site.path(join(o.images, '..', 'lazy-pages.rc'));
  for (let i = 0; !existsSync(socket); i++) {
    if (i >= 1000 || existsSync(rc)) {
      killGroup(pid);
      throw new Error(`criu lazy-pages did not start (log: ${o.workDir}/lazy-pages.log)`);
    }
    await new Promise((r) => setTimeout(r, 10));
  }
  return pid;
}

/** Ends a daemon startLazyPages started, and its process group. */
export function killGroup(pid: number): void {
  try {
    process.kill(-pid, 'SIGKILL');
  } catch {
    // gone already
  }
}
