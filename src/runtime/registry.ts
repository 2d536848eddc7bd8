/**
 * Container runtimes by name, the way strategies are: what `precog migrate --runtime NAME` and an agent restoring a
 * container look up. A runtime is one file that implements MovableRuntime and one registration line here.
 */
import type { PsConnection } from '../criu/pageserver.ts';
import { UsageError } from '../util/errors.ts';
import type { CheckpointOptions, CheckpointResult, ContainerInfo, LazyResult } from './container.ts';
import type { Site } from './site.ts';

/** A post-copy interrupted after the switchover, as the source records it (for `precog migrate --resume`). */
export interface PostcopyPending {
  migrationId: string;
  from: string;
  to: string;
  failedAt: string;
  reason: string;
}

export interface MoveRestoreOptions {
  /** Let the page files be renamed into the container instead of copied (the directory is the agent's own). */
  move?: boolean;
  /** `criu restore --lazy-pages`: pages copied in by `criu lazy-pages` (from the images, or from pageServer). */
  lazy?: boolean;
  /** Post-copy: the page server `criu lazy-pages` asks for the pages (the agent's own, over a socket pair). */
  lazyPageServer?: PsConnection;
  /** Longest the lazy copy-in may take before it counts as failed. */
  lazyTimeoutMs?: number;
}

/**
 * What a container move needs of a runtime. At the source: locate, dump (freeze and checkpoint, left frozen),
 * thaw on failure, remove on success. At the destination: restore (lazy or full), watch a lazy restore, remove or
 * freeze a copy that must not run on. Every method names the host it acts on, since during a move the container
 * exists on both.
 */
export interface MovableRuntime {
  readonly kind: string;
  /** Whether restore() can run the container before its pages are in (lazy): post-copy and lazy restore need it. */
  readonly lazyRestore: boolean;
  /**
   * Whether a restore is lazy unless the user asks for a full one, whatever the strategy prefers (cold prefers
   * full): a runtime whose full restore costs far more than its lazy one (Podman's re-archives and unpacks the whole
   * memory before CRIU restores it).
   */
  readonly prefersLazyRestore?: boolean;
  /** Whether checkpoint() with keepFrozen leaves the processes (frozen) in place; false: the dump ends them. */
  readonly keepsProcessesAfterDump: boolean;
  /**
   * Whether checkpoint() takes `lazyMemory` (`criu dump --lazy-pages`, the memory read from the stopped tasks: the
   * `lazy` dump route); false: its dump writes every page into the images (runc's and Podman's own checkpoint).
   */
  readonly lazyDump: boolean;
  /**
   * Whether the lazy dump works on HOST (a runtime with lazyDump): null when it does, else why not. Asked before the
   * container stops, so that a refusal costs a fallback to the images route, not a second stop.
   */
  probeLazyDump?(host: string): Promise<string | null>;
  /** The container NAME on HOST, with its status; a UsageError naming the containers there when it is not there. */
  locate(name: string, host: string): Promise<ContainerInfo>;
  /**
   * Freezes and dumps the container into DIR (images/, upper/ = its writable layer, state.json): memory and files
   * from the same instant. With keepFrozen it stays frozen afterwards, its network locked.
   */
  checkpoint(
    name: string,
    dir: string,
    opts?: CheckpointOptions & { host?: string },
  ): Promise<CheckpointResult>;
  /** A failed move: the source thaws and takes its network back. */
  resumeSource(name: string, host: string): Promise<void>;
  freeze(name: string, host?: string): Promise<void>;
  thaw(name: string, host?: string): Promise<void>;
  /** Kills and removes the container on HOST (no grace period: it is a copy that moved, or a failed restore). */
  remove(name: string, host: string): Promise<void>;
  /** Restores the checkpoint in DIR as a container on HOST; on failure nothing of it is left there. */
  restore(dir: string, host: string, opts?: MoveRestoreOptions): Promise<ContainerInfo>;
  /** After a lazy restore: resolves once every page is in, rejects with the daemon's error; undefined otherwise. */
  lazyDone(name: string): Promise<LazyResult> | undefined;
  /** Stops waiting for a lazy restore (its move failed otherwise). */
  forgetLazy(name: string): void;
  /**
   * The image the container needs at the destination, as an identifier the destination can check (null: none is
   * needed). Told in HELLO; a destination without it refuses before the source stops.
   */
  imageOf(info: ContainerInfo): string | null;
  /** Whether HOST has a container named NAME (a destination refuses a second one before the source stops). */
  has(name: string, host: string): boolean;
  /** Whether this host has the image `imageOf` named at the source. */
  hasImage(image: string): boolean;
  /** How to get a missing image onto a host (part of the destination's refusal). */
  readonly imageHint: string;
  /**
   * The named networks the container is attached to, which its restore attaches it to again by name (told in
   * HELLO; a destination without one of them refuses before the source stops). Runtimes without: none.
   */
  networksOf?(info: ContainerInfo): string[];
  /** Whether this host has the network NAME (`networksOf` at the source). */
  hasNetwork?(name: string): boolean;
  /** How to make a missing network (part of the destination's refusal). */
  readonly networkHint?: string;
  /**
   * Runtimes whose dump ends the processes: the command that restores the source from the checkpoint it keeps, for
   * a post-copy that failed after the switchover (the driver's message).
   */
  recoverHint?(name: string): string;
  /** What this host lacks to run this runtime's containers, as a sentence with the fix; null when nothing. */
  cannotRun(): string | null;
  /** The source's record of a post-copy interrupted after the switchover (null: remove it). */
  setPostcopyPending(name: string, host: string, pending: PostcopyPending | null): Promise<void>;
  postcopyPending(name: string, host: string): Promise<PostcopyPending | undefined>;
}

/** A network name as a runtime's networks take it (Podman's pattern); checked on every name a peer sends. */
export const NETWORK_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;

/** Makes a runtime: for the host this process runs in (`site`, an agent), or for the test hosts seen from outside. */
export type RuntimeFactory = (site?: Site) => MovableRuntime;

const runtimes = new Map<string, { factory: RuntimeFactory; describe: string }>();

export function registerRuntime(name: string, describe: string, factory: RuntimeFactory): void {
  runtimes.set(name, { factory, describe });
}

/** The registered runtimes, for help texts and errors. */
export function runtimeNames(): string[] {
  return [...runtimes.keys()];
}

/** The runtime NAME; a UsageError naming the registered ones when there is none. */
export function makeRuntime(name: string, site?: Site): MovableRuntime {
  const r = runtimes.get(name);
  if (!r)
    throw new UsageError(`unknown runtime "${name}"; registered: ${runtimeNames().join(', ') || '(none)'}`);
  return r.factory(site);
}
