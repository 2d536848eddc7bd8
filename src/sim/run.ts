import { Bitmap } from '../util/bitmap.ts';
import { releaseBuffer, takeBuffer } from '../util/arena.ts';
import { InvariantError } from '../util/errors.ts';
import { deriveSeed } from '../util/prng.ts';
import { codecChain } from '../codec/index.ts';
import { VirtualClock } from '../util/clock.ts';
import { MigrationDestination, type DestinationEnvironment } from '../engine/destination.ts';
import { MemoryBacking, type PageStore } from '../engine/pagestore.ts';
import { MigrationSource } from '../engine/source.ts';
import { ContentPool } from '../memory/content.ts';
import { EmulatedMemory, ResumedProcess } from '../memory/emulated.ts';
import { parseWorkload } from '../memory/workloads.ts';
import { isPostcopy, parseStrategy, type Strategy } from '../policy/index.ts';
import type { RunMetrics } from '../report/metrics.ts';
import { EmulatedLink, type FrameHandler } from '../transport/emulated.ts';
import { emulatedSystemFeatures } from '../predict/features.ts';
import { AccessRecorder, WorkloadLookahead } from './lookahead.ts';
import {
  defaultRoute,
  dumpSeconds,
  restoreModeOf,
  resumeSeconds,
  sendSeconds,
  type SwitchoverModel,
} from './switchover.ts';

/** Everything that defines one emulated migration. Same scenario, same seed: the same run, bit for bit. */
export interface Scenario {
  workload: string;
  memoryBytes: number;
  /** bit/s */
  bandwidth: number;
  /** one-way, seconds */
  latency: number;
  frameOverhead: number;
  strategy: string;
  /** A codec chain (codecChain), or 'auto': the strategy's own (xor-lz4 for mbdpc), else zero. */
  codec: string;
  batchBytes: number;
  stateBytes: number;
  restoreCost: number;
  seed: number;
  /**
   * What the live switchover costs beyond the link (src/sim/switchover.ts): the dump at the stop, the commit and the
   * restore. Without it the stop costs only its pages and state on the link, and restoreCost.
   */
  switchover?: SwitchoverModel;
}

export const SCENARIO_DEFAULTS: Scenario = {
  workload: 'memchange:high',
  memoryBytes: 512 * 1024 ** 2,
  bandwidth: 100e6,
  latency: 0.0005,
  frameOverhead: 64,
  strategy: 'precopy',
  codec: 'auto',
  batchBytes: 64 * 1024,
  stateBytes: 256 * 1024,
  restoreCost: 0,
  seed: 1,
};

export interface SimResult {
  scenario: Scenario;
  /** The workload and strategy with every parameter spelled out. */
  workloadSpec: string;
  /** The codec chain used (the strategy's own when the scenario says auto). */
  codec: string;
  metrics: RunMetrics;
  /** Pages compared byte for byte against the source's stop-time memory (every page, at least once). */
  pagesVerified: number;
  wallTime: number;
}

/**
 * Tamper hook for tests: lets a test corrupt what the destination holds, to prove that the check catches it.
 */
export interface SimHooks {
  /** Called with the store before it is checked at resume or at the post-copy switchover. */
  corrupt?: (store: PageStore) => void;
  /** Called with each page arriving after a post-copy switchover, before it is checked. */
  corruptArrival?: (page: number, bytes: Buffer) => void;
  /** A strategy object to run instead of the scenario's spec (tests: strategies over hand-made predictors). */
  strategy?: Strategy;
}

/** Runs one migration in the emulator and checks the destination's memory against the source's. */
export async function simulate(s: Scenario, hooks: SimHooks = {}): Promise<SimResult> {
  const started = performance.now();
  const plan = parseWorkload(s.workload, s.memoryBytes);
  const strategy = hooks.strategy ?? parseStrategy(s.strategy);
  const codecName = s.codec === 'auto' ? (strategy.codec ?? 'zero') : s.codec;
  const codec = codecChain(codecName);
  const layout = plan.layout;
  const pool = new ContentPool(deriveSeed(s.seed, 'content'), layout.pageSize);
  const clock = new VirtualClock();
  const workloadSeed = deriveSeed(s.seed, 'workload');
  // Every access is recorded, for predictors that read accessed bits; a clone from the same seed is the oracle's.
  const workload = new AccessRecorder(plan.create(pool, workloadSeed), layout.pageCount);
  const lookahead = new WorkloadLookahead(plan, workloadSeed, clock, s.bandwidth / 8);
  const memoryBytes = layout.pageCount * layout.pageSize;
  const sourceBytes = takeBuffer(memoryBytes);
  const owned = [sourceBytes];
  try {
    return await run();
  } finally {
    owned.forEach(releaseBuffer);
  }

  async function run(): Promise<SimResult> {
    const mem = new EmulatedMemory(
      layout,
      pool,
      workload,
      clock,
      plan.zeroFraction,
      deriveSeed(s.seed, 'memory'),
      sourceBytes,
    );
    const truth = mem.bytes; // frozen from the switchover on: the stop-time memory
    const size = layout.pageSize;
    const verified = new Bitmap(layout.pageCount);

    const mismatch = (page: number, when: string): InvariantError =>
      new InvariantError(
        `destination memory differs from the source's stop-time memory at page ${page} (${when}); strategy ${strategy.spec}, workload ${plan.spec}, seed ${s.seed}`,
      );

    const model = s.switchover;
    const mode = restoreModeOf(isPostcopy(strategy), strategy.restore);
    const env: DestinationEnvironment = {
      restoreCost: s.restoreCost + (model ? resumeSeconds(model, mode, memoryBytes, s.bandwidth) : 0),
      backing(l) {
        const b = takeBuffer(l.pageCount * l.pageSize);
        owned.push(b);
        return new MemoryBacking(l, b);
      },
      verifyPages(store, pages) {
        hooks.corrupt?.(store);
        const all = pages.count() === layout.pageCount;
        const image = store.image!;
        if (all && image.equals(truth)) {
          verified.or(pages);
          return;
        }
        pages.forEach((p) => {
          if (truth.compare(image, p * size, (p + 1) * size, p * size, (p + 1) * size) !== 0) {
            throw mismatch(p, all ? 'at resume' : 'present at the post-copy switchover');
          }
          verified.set(p);
        });
      },
      verifyPage(page, bytes) {
        hooks.corruptArrival?.(page, bytes);
        if (truth.compare(bytes, 0, size, page * size, (page + 1) * size) !== 0)
          throw mismatch(page, 'post-copy arrival');
        verified.set(page);
      },
      resume(store, at) {
        const { workload: w, lag } = mem.handOver(at);
        return new ResumedProcess(w, store.image!, store.arrival, lag);
      },
    };
    const dest: FrameHandler = new MigrationDestination(env);
    const link = new EmulatedLink(
      clock,
      { bandwidth: s.bandwidth, latency: s.latency, frameOverhead: s.frameOverhead },
      dest,
    );
    const source = new MigrationSource(mem, link, strategy, {
      codec,
      batchBytes: s.batchBytes,
      stateBytes: s.stateBytes,
      migrationId: `sim-${s.seed}`,
      observation: (dirty, seconds) => ({
        accessed: workload.take(),
        system: emulatedSystemFeatures(dirty.count(), layout.pageCount, seconds),
      }),
      lookahead,
      ...(model
        ? {
            // Post-copy sends nothing while stopped here (live: the few pages criu restore copies itself).
            atStop: (pages: number, liveRounds: number) => {
              const route = defaultRoute(isPostcopy(strategy), liveRounds);
              const stopped = isPostcopy(strategy) ? 0 : pages * size;
              clock.advance(
                dumpSeconds(model, route, memoryBytes, stopped, liveRounds === 0) +
                  sendSeconds(model, stopped),
              );
            },
          }
        : {}),
    });
    const metrics = await source.run();
    const pagesVerified = verified.count();
    if (pagesVerified !== layout.pageCount) {
      throw new InvariantError(
        `only ${pagesVerified} of ${layout.pageCount} pages were verified at the destination; strategy ${strategy.spec}`,
      );
    }
    return {
      scenario: s,
      workloadSpec: plan.spec,
      codec: codecName,
      metrics,
      pagesVerified,
      wallTime: (performance.now() - started) / 1000,
    };
  }
}
