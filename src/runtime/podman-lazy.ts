/**
 * A lazy restore (post-copy, or a pre-copy's lazy restore) through Podman, whose own restore has no lazy mode.
 *
 * Podman restores through runc, and runc hands CRIU the configuration file that the container's annotation
 * org.criu.config names; options in that file override what runc asked for. For one restore, precog writes such a
 * file in a directory of its own on the destination (PODMAN_LAZY_DIR/NAME, root only) and names it in the
 * checkpoint's spec.dump:
 * - `lazy-pages`: CRIU restores everything but the memory, and `criu lazy-pages` copies the pages in through
 *   userfaultfd while the container runs;
 * - `images-dir` and `work-dir`: CRIU reads the images precog holds (marked lazy) and finds the daemon's socket in a
 *   directory precog made, so the daemon listens before Podman even starts (CRIU connects to it before any action
 *   script would run). Podman's archive then carries only the images without the memory.
 *
 * The file is removed once the restore returned: the annotation stays in the restored container's runtime
 * configuration and names a file that no longer exists, which CRIU ignores (a later checkpoint works as usual; the
 * next move's destination rewrites the annotation). The images and the daemon's log go once every page is in.
 */
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join, posix } from 'node:path';
import type { PsConnection } from '../criu/pageserver.ts';
import { validateName, type LazyFiles } from './container.ts';
import { killGroup, startLazyPages } from './lazypages.ts';
import { moveTree } from './rootfs.ts';
import { CRIU_CONFIG_ANNOTATION } from './peerspec.ts';
import { HOST_DATA_DIR, type Site } from './site.ts';

/** Where a host keeps the CRIU configuration files and images of Podman's lazy restores (a path inside the host). */
export const PODMAN_LAZY_DIR = posix.join(HOST_DATA_DIR, 'podman-lazy');

/**
 * Sets the CRIU configuration file of the checkpoint's spec (SPEC_FILE: spec.dump, already checked by
 * podmanImportRefusal) to CONF, or removes precog's (CONF null) so that a full restore is not made lazy.
 */
export function setCriuConfig(specFile: string, conf: string | null): void {
  const spec = JSON.parse(readFileSync(specFile, 'utf8')) as { annotations?: Record<string, string> };
  const notes = { ...(spec.annotations ?? {}) };
  if (conf === null && notes[CRIU_CONFIG_ANNOTATION] === undefined) return;
  if (conf === null) delete notes[CRIU_CONFIG_ANNOTATION];
  else notes[CRIU_CONFIG_ANNOTATION] = conf;
  spec.annotations = notes;
  writeFileSync(specFile, JSON.stringify(spec));
}

export interface PodmanLazy {
  /** The configuration file (a path inside the host) the spec must name. */
  readonly conf: string;
  /** The images without the memory (this process's path): what Podman's archive carries as checkpoint/. */
  readonly images: string;
  /** The lazy-pages daemon. */
  readonly pid: number;
  /** For LazyWatches: the directory lazy-pages.rc lands in, and what goes once every page is in. */
  readonly watchDir: string;
  readonly files: LazyFiles;
  /** After the restore returned (OK: with success): removes the configuration file; ends the daemon if it failed. */
  finish(ok: boolean): void;
}

/**
 * Takes the images in IMAGES (this process's path; their pages already marked lazy) for the lazy restore of
 * container NAME, writes the configuration file and starts `criu lazy-pages` on them (asking PAGE_SERVER for the
 * pages in post-copy).
 */
export async function prepareLazy(
  site: Site,
  name: string,
  images: string,
  pageServer?: PsConnection,
): Promise<PodmanLazy> {
  const inHost = posix.join(PODMAN_LAZY_DIR, validateName(name));
  const dir = site.fsPath(inHost);
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(join(dir, 'work'), { recursive: true, mode: 0o700 });
  moveTree(images, join(dir, 'images'));
  const conf = posix.join(inHost, 'criu.conf');
  const imagesIn = posix.join(inHost, 'images');
  const work = posix.join(inHost, 'work');
  writeFileSync(join(dir, 'criu.conf'), `lazy-pages\nimages-dir ${imagesIn}\nwork-dir ${work}\n`, {
    mode: 0o600,
  });
  let pid: number;
  try {
    pid = await startLazyPages(site, {
      images: imagesIn,
      workDir: work,
      ...(pageServer ? { pageServer } : {}),
    });
  } catch (err) {
    rmSync(join(dir, 'criu.conf'), { force: true });
    throw err;
  }
  return {
    conf,
    images: join(dir, 'images'),
    pid,
    watchDir: dir,
    files: { images: dir, log: join(dir, 'work', 'lazy-pages.log') },
    finish(ok: boolean): void {
      rmSync(join(dir, 'criu.conf'), { force: true });
      if (!ok) killGroup(pid);
    },
  };
}
