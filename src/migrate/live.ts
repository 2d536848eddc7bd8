import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { codecChain } from '../codec/index.ts';
import { FrozenMemoryReader } from '../criu/lazydump.ts';
import { HashPool } from '../criu/hashpool.ts';
import {
  lazyRuns,
  presentRuns,
  receiveFromImages,
  removePageImages,
  runHashes,
  type RunHashes,
} from '../criu/localdump.ts';
import { PageServer, type ReceivedDump } from '../criu/pageserver.ts';
import { MigrationSource } from '../engine/source.ts';
import { ProcessTreeMemory } from '../memory/tree.ts';
import { isPostcopy, type Decision, type Strategy } from '../policy/index.ts';
import type { RoundRecord, RunMetrics } from '../report/metrics.ts';
import { lazyTimeoutMs, type ContainerInfo } from '../runtime/container.ts';
import type { MovableRuntime } from '../runtime/registry.ts';
import { moveContainer, type MoveProgress } from './driver.ts';
import { removeTree } from '../runtime/rootfs.ts';
import type { Identity } from '../transport/pki.ts';
import { connectTls, DEFAULT_IDLE_TIMEOUT_MS, type Endpoint } from '../transport/tls.ts';
import { UsageError } from '../util/errors.ts';
import { ContainerMemory, taskInNamespaceOf } from './memory.ts';
import { refusePostcopyRoute, type DumpVia } from './routes.ts';
import { eagerRuns } from '../criu/lazy.ts';
import type { RestoreReport } from '../engine/messages.ts';
import { PAGE_SIZE } from '../util/interfaces.ts';
import { Bitmap } from '../util/bitmap.ts';
import { encodeState } from './state.ts';

/** The dump route a migration takes (see LiveMigrationOptions.dumpVia); a UsageError for one it cannot take. */
export function dumpRoute(
  via: DumpVia | undefined,
  rt: Pick<MovableRuntime, 'kind' | 'lazyDump'>,
  strategy: Strategy,
): 'lazy' | 'images' | 'page-server' {
  const postcopy = isPostcopy(strategy);
  refusePostcopyRoute(via, postcopy, strategy.name);
  if (via === 'lazy' && !rt.lazyDump)
    throw new UsageError(
      `--dump-via lazy: the ${rt.kind} runtime dumps through its own checkpoint, which writes every page; use --dump-via images`,
    );
  if (via === undefined || via === 'auto') return rt.lazyDump ? 'lazy' : 'images';
  return via;
}

/**
 * How the destination restores (see LiveMigrationOptions.restore): post-copy lazily; otherwise as asked, else lazily
 * where the runtime prefers it whatever the strategy says, else as the strategy prefers (cold: full), else lazily
 * where the runtime can. A UsageError for what the runtime cannot do.
 */
export function restoreModeFor(
  requested: 'lazy' | 'full' | undefined,
  rt: Pick<MovableRuntime, 'kind' | 'lazyRestore' | 'prefersLazyRestore'>,
  strategy: Strategy,
): 'lazy' | 'full' {
  const postcopy = isPostcopy(strategy);
  if (postcopy && !rt.lazyRestore)
    throw new UsageError(
      `${strategy.name} needs a lazy restore at the destination, which the ${rt.kind} runtime cannot do; ` +
        'use a pre-copy strategy (precopy, iterpredict, ...) or cold',
    );
  if (requested === 'lazy' && !rt.lazyRestore)
    throw new UsageError(`--restore lazy: the ${rt.kind} runtime restores in full only; use --restore full`);
  if (postcopy) return 'lazy';
  if (requested) return requested;
  if (!rt.lazyRestore) return 'full';
  return rt.prefersLazyRestore ? 'lazy' : (strategy.restore ?? 'lazy');
}

/** CRIU's lazy dump does not work on the source host (its probe, before the container stopped). */
export class LazyDumpRefused extends Error {
  override readonly name = 'LazyDumpRefused';
  readonly exitCode = 1;
  constructor(host: string, why: string, asked: boolean) {
    super(
      asked
        ? `--dump-via lazy: CRIU cannot dump lazily on ${host} (${why}); nothing was stopped. Use --dump-via images, ` +
            'or auto (it falls back by itself)'
        : `the lazy dump is refused on ${host} (${why}): dumped via images instead`,
    );
  }
}

export interface LiveMigrationOptions {
  name: string;
  /** This host's name (the source: where the container runs). */
  from: string;
  /** The destination's name (its certificate's) and where its agent listens. */
  to: string;
  dest: Endpoint;
  /** This host's identity for the mutual TLS link to the destination agent. */
  identity: Identity;
  /** The runtime the container belongs to, acting on this host. */
  rt: MovableRuntime;
  /** The runtime's registered name, told to the destination (default precog). */
  runtimeName?: string;
  /** The migration's id (default: NAME-<random>). */
  migrationId?: string;
  strategy: Strategy;
  codec?: string;
  batchBytes?: number;
  /** Work directory on this machine (source checkpoint, rebuilt destination checkpoint). */
  workDir: string;
  /** A link carrying nothing for this long has failed (ms). */
  linkTimeoutMs?: number;
  /**
   * Aborts the migration while the destination has not committed (the source thaws and runs on); after the commit
   * the restore is allowed to finish (the source is no longer the one that matters).
   */
  signal?: AbortSignal;
  onRound?: (r: RoundRecord) => void;
  /** The strategy's decision before each round: why it goes on (e.g. its predicted rounds) or stops. */
  onDecision?: (d: Decision, round: number) => void;
  /**
   * How the destination restores: 'lazy' runs the container once its non-memory state is back and lets
   * `criu lazy-pages` copy the pages in from the local images (the source stays until it is done); 'full' has
   * criu restore copy every page first. Default: lazy, except full for cold (the classic dump/copy/restore).
   */
  restore?: 'lazy' | 'full';
  /**
   * Where CRIU's dump goes at the stop: 'lazy' (`criu dump --lazy-pages`: CRIU writes all but the anonymous memory,
   * which precog reads from the stopped tasks and compares; src/criu/lazydump.ts); 'images' writes a full local
   * dump and compares its pages as they are read back; 'page-server' streams them to precog's page server, which
   * compares them as they arrive (slower here: docs/migration.md). 'auto' (default): lazy where the runtime can
   * dump lazily and the strategy is not post-copy, else images.
   */
  dumpVia?: DumpVia;
  /** Called once the container is frozen for the final copy, and when it runs at the destination. */
  onPhase?: (phase: 'dump' | 'final' | 'restore' | 'done') => void;
  /** Told once when the stop takes another route than the one chosen (LiveMigrationReport.dumpFallback). */
  onFallback?: (why: string) => void;
  /** Longest the destination's lazy copy-in may take (default PRECOG_LAZY_TIMEOUT_MS or 10 min). */
  lazyTimeoutMs?: number;
}

export interface LiveMigrationReport {
  container: string;
  from: string;
  to: string;
  strategy: string;
  migrationId: string;
  /** Start of the migration to the container running at the destination with all its pages in place. */
  totalMs: number;
  /** The container frozen at the source to running at the destination (precog's own measure). */
  downtimeMs: number;
  /**
   * The downtime, step by step: CRIU dump (pages streamed to precog's page server and compared), the changed pages
   * on the link, the state (images, layer) on the link and the destination agent's commit (it rebuilds the CRIU
   * image directory from its page store), criu restore (with the container around it).
   */
  dumpMs: number;
  finalPagesMs: number;
  stateMs: number;
  restoreMs: number;
  restoreMode: 'lazy' | 'full';
  /** How the stop dumped the container (lazy: CRIU's non-memory state, the memory read by precog; see dumpRoute). */
  dumpVia: 'lazy' | 'images' | 'page-server';
  /**
   * Why the stop did not take the lazy route it would have (the runtime's probe found CRIU's lazy dump refused on
   * this host, before the container stopped): said once, here; null when it took the route it chose.
   */
  dumpFallback: string | null;
  /** The lazy route's dump, step by step (ms; CheckpointResult.lazySteps); null for the other routes. */
  lazyDumpSteps: {
    criuMs: number;
    layerMs: number;
    /**
     * The memory read and comparison, of which hashMs the worker threads' read and hash of every page, and
     * compareMs the comparison of the hashes with what was sent and the read of the pages that differ.
     */
    memoryMs: number;
    hashMs: number;
    compareMs: number;
    endMs: number;
  } | null;
  /**
   * Lazy restore: pages left to the lazy-pages daemon, and the time from the container running until the daemon had
   * copied them all in (the source is removed only then). Null for a full restore.
   */
  lazyPages: number | null;
  lazyMs: number | null;
  /**
   * Post-copy (postcopy, hybrid): pages left to the destination at the switchover, requests of the lazy-pages daemon
   * that had to wait for pages from the source (remote faults) and their latency (ms), and the degraded time: from
   * the container running at the destination until its last page was in. Null otherwise.
   */
  postcopy: {
    pages: number;
    faults: number;
    faultLatencyMedianMs: number | null;
    faultLatencyP99Ms: number | null;
    degradedMs: number;
  } | null;
  /** Bytes on the link to the destination agent (frames, TLS excluded). */
  bytesTotal: number;
  stateBytes: number;
  liveRounds: number;
  memoryBytes: number;
  /** Pages sent with the container stopped, and pages CRIU dumped that the destination already held. */
  pagesFinal: number;
  pagesUnchanged: number;
  /** Pages of mappings made after the migration started (sent with the state). */
  pagesExtra: number;
  pid: number | null;
  /**
   * The run in the emulator's vocabulary (docs/metrics.md: seconds, as simulate --json's runs[].metrics), its
   * totalTime and downtime the same as totalMs and downtimeMs.
   */
  metrics: RunMetrics;
}

/**
 * Live migration of a container between test hosts over the agents' mutual-TLS link: the engine's live rounds read
 * the container's memory through /proc while it runs; the switchover is `criu dump` with its pages streamed to
 * precog's page server, which keeps only the pages the destination does not already hold; those, the images and
 * the writable layer go over the link; the destination agent commits them, the checkpoint directory is rebuilt
 * from its page store and the container restored in the destination host. The source is removed only after
 * that restore has succeeded; any failure before thaws it.
 *
 * Runs in the source host's network namespace (the CLI enters it), so that the link is the hosts' own.
 */
const ms = (seconds: number | null | undefined): number | null =>
  seconds === null || seconds === undefined || !Number.isFinite(seconds) ? null : seconds * 1000;

/** The layout pages of the pending set that a lazy restore of the dump in DIR copies eagerly (eagerRuns). */
function eagerPagesOf(dir: string, dump: ReceivedDump, mem: ContainerMemory, size: number): Bitmap {
  // The dump's pagemap images are gone once read back (src/criu/localdump.ts): its runs stand in for them.
  const runs = eagerRuns(dir, (pid) => dump.tasks.get(pid)?.runs ?? []);
  if (!runs)
    throw new UsageError(
      'post-copy needs a lazy restore, and precog cannot tell the stack pages of this architecture',
    );
  const out = new Bitmap(size);
  for (const [task, list] of runs)
    for (const r of list)
      for (let k = 0; k < r.nrPages; k++) {
        const g = mem.pageOf(task, r.vaddr + BigInt(k * PAGE_SIZE));
        if (g >= 0) out.set(g); // pages outside the layout travel with the state
      }
  return out;
}

/** A new migration's id: the container's name and a random suffix (what agents and logs show). */
export const newMigrationId = (name: string): string => `${name}-${randomUUID().slice(0, 8)}`;

export async function migrateLive(o: LiveMigrationOptions): Promise<LiveMigrationReport> {
  const t0 = performance.now();
  const rt = o.rt;
  const migrationId = o.migrationId ?? newMigrationId(o.name);
  const identity = o.identity;
  let report:
    | Omit<
        LiveMigrationReport,
        'restoreMs' | 'downtimeMs' | 'totalMs' | 'pid' | 'lazyPages' | 'lazyMs' | 'postcopy'
      >
    | undefined;
  const postcopy = isPostcopy(o.strategy);
  if (postcopy && o.restore === 'full')
    throw new UsageError(
      `--restore full: ${o.strategy.name} restores lazily (its pages come after the switchover)`,
    );
  let via = dumpRoute(o.dumpVia, rt, o.strategy);
  let dumpFallback: string | null = null;
  // Asked now, while the live rounds run; awaited before the stop (an explicit --dump-via lazy: before anything).
  const lazyRefused =
    via === 'lazy' && rt.probeLazyDump
      ? rt.probeLazyDump(o.from).catch((err: Error) => `the probe failed: ${err.message}`)
      : undefined;
  if (lazyRefused && o.dumpVia === 'lazy') {
    const why = await lazyRefused;
    if (why) throw new LazyDumpRefused(o.from, why, true);
  }
  const restoreMode = restoreModeFor(o.restore, rt, o.strategy);
  let postcopyReport = null as LiveMigrationReport['postcopy'];
  let frozenAt = -1;
  /** performance.now() at each step of the switchover. */
  const marks = { dumped: 0, pagesSent: 0, committed: 0, running: 0 };
  /** What the destination agent said of its restore (RESUMED, and DONE_ACK after a post-copy). */
  let restored: RestoreReport | undefined;
  let stateBytes = 0;
  let lazySteps: LiveMigrationReport['lazyDumpSteps'] = null;
  const progress: MoveProgress = { migrationId, resumedThere: false };
  // Started now, not at the stop: a worker takes tens of milliseconds to start.
  const hashPool = via === 'lazy' || via === 'images' ? new HashPool() : undefined;
  try {
    await moveContainer(
      { rt, name: o.name, from: o.from, to: o.to, lazyTimeoutMs: o.lazyTimeoutMs ?? lazyTimeoutMs() },
      progress,
      async (info: ContainerInfo, checkpoint) => {
        if (!info.machinePid) throw new UsageError(`container ${o.name} has no running process`);
        const tree = new ProcessTreeMemory(info.machinePid.pid, { onUnmapped: 'zero' });
        const image = rt.imageOf(info);
        const networks = rt.networksOf?.(info) ?? [];
        let received: ReceivedDump | undefined;
        const srcDir = join(o.workDir, 'source');
        const mem = new ContainerMemory(
          tree,
          async () => {
            o.onPhase?.('dump');
            if (via === 'lazy') {
              // CRIU writes all but the anonymous memory; precog reads that from the stopped tasks and compares it.
              const root = info.machinePid!.pid;
              const reader = new FrozenMemoryReader(
                (id) => mem.machinePid(id) ?? taskInNamespaceOf(root, id),
              );
              let hashMs = 0;
              let compareMs = 0;
              try {
                const ck = await checkpoint(srcDir, {
                  lazyMemory: async (images) => {
                    // A post-copy that sent nothing yet reads nothing now (every page is deferred): no hashes.
                    let lazyHashes: RunHashes | undefined;
                    if (mem.anySent || !postcopy) {
                      const runs = lazyRuns(images);
                      const ranges = runs.map((r) => ({
                        pid: reader.pid(r.id),
                        vaddr: Number(r.vaddr),
                        pages: r.nrPages,
                      }));
                      const h0 = performance.now();
                      const hashes = await hashPool!.hash(ranges);
                      hashMs = performance.now() - h0;
                      lazyHashes = runHashes(runs, hashes, mem.holdsRun);
                    }
                    const c0 = performance.now();
                    received = receiveFromImages(images, (...a) => mem.holds(...a), {
                      keep: true,
                      readLazy: (...a) => reader.read(...a),
                      ...(lazyHashes ? { lazyHashes } : {}),
                      // Post-copy: what the destination never had is read from the frozen tasks as it is sent.
                      ...(postcopy ? { deferLazy: mem.neverSent } : {}),
                    });
                    compareMs = performance.now() - c0;
                  },
                });
                lazySteps = ck.lazySteps ? { ...ck.lazySteps, hashMs, compareMs } : null;
              } finally {
                reader.close();
              }
              removePageImages(join(srcDir, 'images'));
              marks.dumped = performance.now();
              o.onPhase?.('final');
              return received!;
            }
            if (via === 'images') {
              // A local dump, its pages compared as they are read back (src/criu/localdump.ts: faster here).
              const ck = await checkpoint(srcDir);
              const pagesDir = ck.pagesDir ?? join(srcDir, 'images');
              // The pages sent before are hashed from the pages files on every core; only those whose hash
              // differs are read.
              let presentHashes: RunHashes | undefined;
              if (mem.anySent && hashPool) {
                const runs = presentRuns(pagesDir);
                const hashes = await hashPool.hash(
                  runs.map((r) => ({ file: r.file, offset: r.offset, pages: r.nrPages })),
                );
                presentHashes = runHashes(runs, hashes, mem.holdsRun);
              }
              // Pages the destination never had are read from the runtime's kept images as they are sent (they
              // stay until the move ends), not at the stop: a cold move's or a post-copy's stop reads no memory.
              received = receiveFromImages(pagesDir, (...a) => mem.holds(...a), {
                keep: ck.pagesDir !== undefined,
                ...(ck.pagesDir !== undefined ? { deferPresent: mem.neverSent } : {}),
                ...(presentHashes ? { presentHashes } : {}),
              });
              marks.dumped = performance.now();
              o.onPhase?.('final');
              return received;
            }
            // CRIU's page-server connection is a socket pair it is spawned with: nothing listens.
            const server: PageServer = new PageServer({
              have: (pid, vaddr, bytes, kind) => mem.holds(pid, vaddr, bytes, kind),
              keepOnlyChanged: true,
            });
            try {
              await checkpoint(srcDir, { pageServer: server });
              received = await server.done;
              marks.dumped = performance.now();
            } finally {
              await server.close();
            }
            o.onPhase?.('final');
            return received;
          },
          async () => {
            // The driver thaws a frozen source when the migration fails; nothing else is held here.
          },
          {
            readBeforeDump: !rt.keepsProcessesAfterDump,
            deferUnsent: postcopy && via === 'lazy',
            // The probe's answer (asked when the migration started), before the container stops: a refusal takes
            // the images route instead, and the container stops once.
            beforeFreeze: async () => {
              const why = await lazyRefused;
              if (!why || via !== 'lazy') return;
              via = 'images';
              dumpFallback = new LazyDumpRefused(o.from, why, false).message;
              o.onFallback?.(dumpFallback);
            },
          },
        );
        const link = await connectTls(o.dest, identity, o.to, {
          idleTimeoutMs: o.linkTimeoutMs ?? DEFAULT_IDLE_TIMEOUT_MS,
        });
        // Interrupted before the destination committed: the link breaks, the engine gives up, the source thaws.
        const onAbort = () => link.abort(new Error(`interrupted (${String(o.signal?.reason ?? 'signal')})`));
        o.signal?.addEventListener('abort', onAbort, { once: true });
        if (o.signal?.aborted) onAbort();
        const engine = new MigrationSource(mem, link, o.strategy, {
          codec: codecChain(!o.codec || o.codec === 'auto' ? (o.strategy.codec ?? 'zero') : o.codec),
          batchBytes: o.batchBytes ?? 1 << 20,
          stateBytes: 0,
          migrationId,
          purpose: 'criu-images',
          container: {
            runtime: o.runtimeName ?? 'precog',
            name: o.name,
            from: o.from,
            ...(image ? { image } : {}),
            ...(networks.length > 0 ? { networks } : {}),
            restore: restoreMode,
            lazyTimeoutMs: o.lazyTimeoutMs ?? lazyTimeoutMs(),
            linkTimeoutMs: o.linkTimeoutMs ?? DEFAULT_IDLE_TIMEOUT_MS,
            ...(postcopy ? { switchover: 'postcopy' as const } : {}),
          },
          onRound: o.onRound,
          onDecision: o.onDecision,
          state: () => {
            marks.pagesSent = performance.now();
            const pids: [number, number][] = [];
            for (const id of received!.tasks.keys()) {
              const pid = mem.machinePid(id);
              if (pid !== undefined) pids.push([id, pid]);
            }
            const blob = encodeState({
              container: info,
              pids,
              dump: received!,
              extras: mem.extras,
              imagesDir: join(srcDir, 'images'),
              upperDir: join(srcDir, 'upper'),
            });
            stateBytes = blob.length;
            o.onPhase?.('restore');
            return blob;
          },
          // Post-copy: the pages criu restore copies itself (not left to the lazy-pages daemon) go before the switch.
          beforeSwitchover: (pending) => eagerPagesOf(join(srcDir, 'images'), received!, mem, pending.size),
          onResumed: (r) => {
            // The agent answers once the container runs with every page in: it says how long ago it started running.
            const now = performance.now();
            restored = r.restore;
            marks.committed = now;
            marks.running = now - (r.restore?.sinceRunningMs ?? 0);
          },
          onSwitchover: () => {
            // Post-copy: the agent restores now while the pages follow; from here the copy there may run.
            marks.committed = marks.running = performance.now();
            progress.resumedThere = true;
          },
          onDone: (ack) => {
            // Once every page is in, the agent says how long ago its copy started running.
            if (ack.restore) {
              restored = ack.restore;
              marks.running = performance.now() - ack.restore.sinceRunningMs;
            }
          },
        });
        try {
          const metrics = await engine.run();
          frozenAt = mem.freezeStartedAt;
          report = {
            container: o.name,
            from: o.from,
            to: o.to,
            strategy: o.strategy.spec,
            migrationId,
            restoreMode,
            dumpVia: via,
            dumpFallback,
            lazyDumpSteps: lazySteps,
            dumpMs: marks.dumped - frozenAt,
            finalPagesMs: marks.pagesSent - marks.dumped,
            // The state on the link and the agent's commit: up to the restore's start (it reports the restore's time).
            stateMs: marks.running - (restored?.restoreMs ?? 0) - marks.pagesSent,
            bytesTotal: metrics.bytesTotal,
            stateBytes,
            liveRounds: metrics.liveRounds,
            memoryBytes: metrics.memoryBytes,
            pagesFinal: metrics.rounds.filter((r) => r.phase === 'stop').reduce((a, r) => a + r.pagesSent, 0),
            pagesUnchanged: mem.unchanged,
            pagesExtra: mem.extras.length,
            metrics,
          };
          if (metrics.postcopy)
            postcopyReport = {
              pages: metrics.rounds
                .filter((r) => r.phase === 'postcopy')
                .reduce((a, r) => a + r.pagesSent, 0),
              faults: metrics.postcopy.faults,
              faultLatencyMedianMs: ms(metrics.postcopy.faultLatencyMedian),
              faultLatencyP99Ms: ms(metrics.postcopy.faultLatencyP99),
              degradedMs: performance.now() - marks.running,
            };
          return metrics;
        } finally {
          o.signal?.removeEventListener('abort', onAbort);
          link.close();
          mem.close();
        }
      },
    );
    o.onPhase?.('done');
    const totalMs = performance.now() - t0;
    const downtimeMs = marks.running - frozenAt;
    return {
      ...report!,
      // The emulator's vocabulary (seconds, docs/metrics.md), its times as this run measured them end to end.
      metrics: { ...report!.metrics, totalTime: totalMs / 1000, downtime: downtimeMs / 1000 },
      postcopy: postcopyReport,
      totalMs,
      downtimeMs,
      restoreMs: restored?.restoreMs ?? 0,
      lazyPages: restored?.lazyPages ?? null,
      lazyMs: restored?.lazyMs ?? null,
      pid: restored?.pid ?? null,
    };
  } finally {
    await hashPool?.close();
    if (!process.env.PRECOG_KEEP_FAILED) await removeTree(o.workDir).catch(() => {});
  }
}
