/**
 * The container-move driver: the switchover, the rollback and the post-copy resume, once, over any runtime
 * (src/runtime/registry.ts). It owns the rule that makes a move safe: until the destination confirms that the
 * container runs there with its pages, the source owns the container; any failure before that thaws the source.
 *
 * The transfer (live rounds, dump, final copy, commit) is given by the caller: it talks to the destination agent
 * over the link, and resolves only once the agent has restored the container and answered (stop-and-copy:
 * RESUMED after the restore, and after a lazy restore's last page; post-copy: DONE_ACK after the lazy-pages daemon
 * has every page). The driver never reads a file of the destination: the link is all that joins the two sides.
 */
import type { CheckpointOptions, CheckpointResult, ContainerInfo } from '../runtime/container.ts';
import type { MovableRuntime, PostcopyPending } from '../runtime/registry.ts';
import { UsageError } from '../util/errors.ts';
import { RESTORE_FAILED } from '../engine/messages.ts';

/** The dump the transfer asks for at its stop: freezes the container and checkpoints it into DIR, left frozen. */
export type DumpFn = (dir: string, opts?: CheckpointOptions) => Promise<CheckpointResult>;

export interface MoveSpec {
  rt: MovableRuntime;
  name: string;
  from: string;
  to: string;
  /** How long the destination keeps an interrupted post-copy (for the message). */
  lazyTimeoutMs?: number;
}

/** What the transfer tells the driver while it runs. */
export interface MoveProgress {
  /** The migration's id at the destination agent. */
  migrationId: string;
  /** True once a post-copy destination has resumed the container: the source is no longer a fallback. */
  resumedThere: boolean;
}

const withExit = (err: unknown, message: string): Error =>
  Object.assign(new Error(message, { cause: err }), {
    exitCode: (err as { exitCode?: number }).exitCode ?? 1,
  });

/**
 * Moves a container: locates it running on `from`, runs the transfer (which dumps through `dump` and resolves once
 * the destination confirmed), then removes the source. A failure before the confirmation thaws the source and says
 * so; a post-copy that fails after the destination resumed keeps the source frozen with every page and records the
 * migration for `precog migrate --resume`.
 */
export async function moveContainer<T>(
  spec: MoveSpec,
  progress: MoveProgress,
  transfer: (info: ContainerInfo, dump: DumpFn) => Promise<T>,
): Promise<T> {
  const { rt, name, from, to } = spec;
  if (from === to) throw new UsageError(`${name} is already on host ${to}`);
  const info = await rt.locate(name, from);
  if (info.status !== 'running')
    throw new UsageError(`container ${name} is ${info.status}; only a running container can be migrated`);
  let result: T;
  try {
    result = await transfer(info, (dir, opts = {}) =>
      rt.checkpoint(name, dir, { ...opts, keepFrozen: true, host: from }),
    );
  } catch (err) {
    const why = (err as Error).message;
    if (progress.resumedThere && !why.includes(RESTORE_FAILED)) {
      // The copy at the destination ran: the source's memory is older than it, so it must not run on either.
      if (!rt.keepsProcessesAfterDump)
        // Its processes ended with the checkpoint: nothing to take up again from (--resume reads them).
        throw withExit(
          err,
          `post-copy failed after the container resumed on ${to}: ${why}\n` +
            `the copy on ${to} is frozen (pages are missing); the ${rt.kind} checkpoint of the source is kept on ` +
            `${from}, and --resume cannot take a ${rt.kind} post-copy up again (the source's processes ended at ` +
            `its checkpoint). To go back to the state at the switchover (what ran on ${to} since is lost): ` +
            `remove the copy on ${to}, then on ${from}: ${rt.recoverHint?.(name) ?? 'restore the kept checkpoint'}`,
        );
      // It stays frozen with every page, for --resume (the destination agent froze its copy).
      const pending: PostcopyPending = {
        migrationId: progress.migrationId,
        from,
        to,
        failedAt: new Date().toISOString(),
        reason: why,
      };
      await rt.setPostcopyPending(name, from, pending);
      const minutes = (spec.lazyTimeoutMs ?? 10 * 60_000) / 60_000;
      throw withExit(
        err,
        `post-copy failed after the container resumed on ${to}: ${why}\n` +
          `the container cannot continue anywhere: the copy on ${to} is frozen (pages are missing), ` +
          `the source on ${from} stays frozen with every page in its memory\n` +
          `once the link is back, take it up again within the lazy timeout (${minutes} min) with: ` +
          `precog migrate ${name} --from ${from} --to ${to} --resume`,
      );
    }
    await rt.resumeSource(name, from).catch(() => {});
    throw withExit(err, `${why}\nthe source keeps running on ${from}`);
  }
  await rt.remove(name, from);
  return result;
}

/**
 * Takes up a post-copy interrupted after the switchover: the source waits frozen on `from` with its record; `push`
 * sends the destination every page it still lacks and resolves once the destination has them all in (its copy
 * runs on). Only then is the source removed; if the push fails both stay as they were.
 */
export async function resumeMove<T>(
  spec: MoveSpec,
  push: (source: ContainerInfo, pending: PostcopyPending) => Promise<T>,
): Promise<{ result: T; pending: PostcopyPending }> {
  const { rt, name, from, to } = spec;
  const pending = await rt.postcopyPending(name, from);
  if (!pending)
    throw new UsageError(
      `container ${name} on host ${from} has no interrupted post-copy to take up (--resume continues a post-copy ` +
        `whose link was lost after the container resumed at the destination)`,
    );
  if (pending.to !== to)
    throw new UsageError(`the interrupted post-copy of ${name} went to host ${pending.to}, not ${to}`);
  const source = await rt.locate(name, from);
  const result = await push(source, pending);
  await rt.remove(name, from);
  return { result, pending };
}
