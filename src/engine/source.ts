import { randomUUID } from 'node:crypto';
import { Bitmap } from '../util/bitmap.ts';
import { BatchWriter } from '../codec/batch.ts';
import type { Codec } from '../codec/index.ts';
import type { Strategy, RoundSummary, Decision, Lookahead, PageSelector } from '../policy/index.ts';
import type { RoundObservation } from '../predict/types.ts';
import { median, quantile, type Phase, type RoundRecord, type RunMetrics } from '../report/metrics.ts';
import { FrameType, jsonFrame, decodeFrame, parseJson, encodeFrame } from '../transport/frame.ts';
import { bitmapToBase64 } from './destination.ts';
import type { DoneAck, HelloMessage, ResumedMessage } from './messages.ts';
import { PROTOCOL_VERSION } from '../transport/frame.ts';
import type { Link, MemorySource } from '../util/interfaces.ts';
import { PushWindow, type PushWindowOptions } from './pushwindow.ts';

export interface SourceOptions {
  codec: readonly Codec[];
  /** Target payload bytes per PAGES frame (at least 64 KiB on real links). */
  batchBytes: number;
  /** Size of the non-memory state (CPU registers, files, namespaces) sent at the switchover. */
  stateBytes: number;
  /** The non-memory state itself (real runs: CRIU images, the writable layer); replaces stateBytes zeros. */
  state?: () => Buffer | Promise<Buffer>;
  migrationId?: string;
  /** Called after every round, for progress display. */
  onRound?: (r: RoundRecord) => void;
  /** Called with the strategy's decision before each round (why it goes on, or stops), for progress display. */
  onDecision?: (d: Decision, round: number) => void;
  /** Told to the destination in HELLO (see HelloMessage.purpose). */
  purpose?: HelloMessage['purpose'];
  /** Told to the destination in HELLO: a container it restores itself (see ContainerHello). */
  container?: HelloMessage['container'];
  /** Stop-and-copy: called with the destination's RESUMED reply (the destination has taken over). */
  onResumed?: (resumed: ResumedMessage) => void;
  /** Post-copy: called with the destination's DONE_ACK. */
  onDone?: (ack: DoneAck) => void;
  /**
   * What the source can tell about a live round beyond its dirty pages (accessed pages, system features), read
   * right after each round's dirty pages (given with the round's seconds) for the strategy's page selector.
   */
  observation?: (dirty: Bitmap, seconds: number) => Omit<RoundObservation, 'round' | 'dirty'>;
  /** The workload's future, for strategies that need it (the oracle; emulator only). */
  lookahead?: Lookahead;
  /**
   * Post-copy: the pending pages the destination needs before it can resume (a live container: those CRIU restores
   * eagerly), sent with the source stopped, before the switchover. Default: none.
   */
  beforeSwitchover?: (pending: Bitmap) => Bitmap;
  /** Post-copy: called with the destination's RESUMED reply, before the remaining pages are pushed. */
  onSwitchover?: (resumed: ResumedMessage) => void;
  /**
   * Called once the source is frozen, with the pages the stop must still send and the live rounds before it (the
   * emulator charges the dump's cost here: src/sim/switchover.ts).
   */
  atStop?: (pendingPages: number, liveRounds: number) => void;
  /**
   * Post-copy: pace the background push by the destination's acknowledgements (when it sends them), so that a
   * faulted page waits behind little (src/engine/pushwindow.ts). Default true.
   */
  pacePostcopy?: boolean;
  pushWindow?: PushWindowOptions;
}

/** Bytes of state per STATE frame (below the frame limit). */
const STATE_CHUNK = 8 * 1024 * 1024;

/** Raised when a migration fails before the destination confirmed: the source has been thawed and runs on. */
export class MigrationAborted extends Error {
  override readonly name = 'MigrationAborted';
  readonly exitCode = 1;
}

/**
 * The source half of a migration: live rounds chosen by the strategy, then stop-and-copy or a post-copy
 * switchover. It knows nothing about where memory comes from or where frames go.
 */
export class MigrationSource {
  private readonly mem: MemorySource;
  private readonly link: Link;
  private readonly strategy: Strategy;
  private readonly o: SourceOptions;
  private readonly pageSize: number;
  private readonly pageCount: number;
  private readonly sentOnce: Bitmap;
  private readonly scratch: Buffer;
  private readonly writer: BatchWriter;
  private readonly rounds: RoundRecord[] = [];
  /** Whether the destination acknowledges a post-copy's PAGES (HELLO_ACK said so) and the push is paced by them. */
  private paced = false;
  private pushWindow: { bytes: number; minRtt: number } | undefined;

  constructor(mem: MemorySource, link: Link, strategy: Strategy, options: SourceOptions) {
    this.mem = mem;
    this.link = link;
    this.strategy = strategy;
    this.o = options;
    this.pageSize = mem.layout.pageSize;
    this.pageCount = mem.layout.pageCount;
    this.sentOnce = new Bitmap(this.pageCount);
    const perBatch = Math.max(1, Math.floor(options.batchBytes / this.pageSize));
    this.scratch = Buffer.allocUnsafe(perBatch * this.pageSize);
    this.writer = new BatchWriter(options.codec, this.pageSize, options.batchBytes + perBatch * 16, {
      link,
    });
  }

  private get perBatch(): number {
    return this.scratch.length / this.pageSize;
  }

  async run(): Promise<RunMetrics> {
    const clock = this.link.clock;
    // Made before anything is sent: a strategy that cannot run here (the oracle outside the emulator) fails first.
    const selector: PageSelector | undefined = this.strategy.selector?.({
      pageCount: this.pageCount,
      pageSize: this.pageSize,
      ...(this.o.lookahead ? { lookahead: this.o.lookahead } : {}),
    });
    const migrationId = this.o.migrationId ?? randomUUID();
    const t0 = clock.now();
    let frozenAt = -1;
    let committed = false;
    try {
      const hello: HelloMessage = {
        version: PROTOCOL_VERSION,
        migrationId,
        strategy: this.strategy.spec,
        ...(this.o.purpose ? { purpose: this.o.purpose } : {}),
        ...(this.o.container ? { container: this.o.container } : {}),
      };
      const ack = parseJson<{ acks?: boolean }>(
        decodeFrame(await this.link.request(jsonFrame(FrameType.Hello, hello), FrameType.HelloAck)),
      );
      this.paced = ack.acks === true && this.o.pacePostcopy !== false;
      await this.link.send(jsonFrame(FrameType.Layout, this.mem.layout));
      const preparationTime = clock.now() - t0;

      await this.mem.collectDirty(); // starts tracking; round 1 sends everything anyway
      const pending = Bitmap.full(this.pageCount);
      const history: RoundSummary[] = [];
      let liveBytes = 0;
      let liveTime = 0;
      let decision: Decision;
      for (;;) {
        const round = history.length + 1;
        const linkRate = liveTime > 0 ? liveBytes / liveTime : 0;
        // A predictive strategy's selector names the pending pages to hold back; its forecast may decide the stop.
        let held: Bitmap | null = null;
        let forecast: readonly number[] | undefined;
        if (selector) {
          const at = {
            round,
            pageSize: this.pageSize,
            linkRate,
            lastDuration: history.at(-1)?.duration ?? 0,
          };
          held = selector.hold(pending, at).clone().and(pending);
          forecast = selector.forecast?.(pending, held, at);
        }
        const heldPages = held ? held.count() : 0;
        decision = this.strategy.decide({
          round,
          history,
          pageSize: this.pageSize,
          totalPages: this.pageCount,
          pendingPages: pending.count(),
          bytesSent: this.link.bytesSent,
          linkRate,
          ...(held ? { heldPages } : {}),
          ...(forecast ? { forecast } : {}),
        });
        this.o.onDecision?.(decision, round);
        if (decision.stop) break;
        let ids: Uint32Array;
        if (held) {
          ids = pending.andNot(held).toArray();
          pending.clearAll();
          pending.or(held); // held pages stay pending: offered again next round, or sent at the stop
        } else {
          ids = pending.toArray();
          pending.clearAll();
        }
        const rec = await this.sendPages(ids, round, 'live');
        rec.pagesSkipped = heldPages;
        await this.link.send(jsonFrame(FrameType.RoundEnd, { round, pages: ids.length }));
        const dirty = await this.mem.collectDirty();
        pending.or(dirty);
        rec.duration = clock.now() - rec.start;
        rec.bytes = this.link.bytesSent - rec.bytes;
        rec.dirtyPages = dirty.count();
        liveBytes += rec.bytes;
        liveTime += rec.duration;
        history.push({
          round,
          duration: rec.duration,
          pagesSent: rec.pagesSent,
          bytes: rec.bytes,
          dirtyPages: rec.dirtyPages,
          ...(held ? { pagesHeld: heldPages } : {}),
        });
        selector?.observe({
          ...this.o.observation?.(dirty, rec.duration),
          round,
          dirty,
          seconds: rec.duration,
        });
        this.o.onRound?.(rec);
      }

      frozenAt = clock.now();
      await this.mem.freeze();
      if (this.mem.finalDirty) {
        pending.clearAll();
        pending.or(await this.mem.finalDirty());
      } else pending.or(await this.mem.collectDirty());
      this.o.atStop?.(pending.count(), history.length);
      const base = {
        migrationId,
        strategy: this.strategy.spec,
        preparationTime,
        memoryBytes: this.pageCount * this.pageSize,
        pagesTotal: this.pageCount,
        liveRounds: history.length,
        converged: decision.converged,
        stopReason: decision.reason,
      };

      if (decision.switchover === 'stop-and-copy') {
        const rec = await this.sendPages(pending.toArray(), history.length + 1, 'stop');
        await this.sendState();
        this.finishRecord(rec);
        const commitSent = clock.now();
        const reply = await this.link.request(
          jsonFrame(FrameType.Commit, { rounds: history.length }),
          FrameType.Resumed,
        );
        committed = true;
        const resumed = parseJson<ResumedMessage>(decodeFrame(reply));
        const { resumedAt } = resumed;
        this.o.onResumed?.(resumed);
        return {
          ...base,
          totalTime: resumedAt - t0,
          downtime: resumedAt - frozenAt,
          resumeTime: resumedAt - commitSent,
          bytesTotal: this.link.bytesSent,
          pagesSent: this.totalPagesSent(),
          postcopy: null,
          rounds: this.rounds,
        };
      }

      // Post-copy switchover: the destination resumes now and fetches what it lacks.
      const first = this.o.beforeSwitchover?.(pending);
      let stopRec: RoundRecord | undefined;
      if (first) {
        first.and(pending);
        stopRec = await this.sendPages(first.toArray(), history.length + 1, 'stop');
        pending.andNot(first);
      }
      await this.sendState();
      const switchSent = clock.now();
      const reply = await this.link.request(
        jsonFrame(FrameType.Switchover, { missing: bitmapToBase64(pending) }),
        FrameType.Resumed,
      );
      if (stopRec) this.finishRecord(stopRec);
      committed = true;
      const resumed = parseJson<ResumedMessage>(decodeFrame(reply));
      const { resumedAt } = resumed;
      this.o.onSwitchover?.(resumed);
      const rec = await this.pushPostcopy(pending, history.length + 1 + (stopRec ? 1 : 0));
      this.finishRecord(rec);
      const doneFrame = await this.link.request(jsonFrame(FrameType.PostcopyDone, {}), FrameType.DoneAck);
      const done = parseJson<DoneAck>(decodeFrame(doneFrame));
      this.o.onDone?.(done);
      const end = Math.max(done.lastArrival, resumedAt);
      return {
        ...base,
        totalTime: end - t0,
        downtime: resumedAt - frozenAt,
        resumeTime: resumedAt - switchSent,
        bytesTotal: this.link.bytesSent,
        pagesSent: this.totalPagesSent(),
        postcopy: {
          faults: done.faults,
          faultLatencyMedian: median(done.faultLatencies),
          faultLatencyP99: quantile(done.faultLatencies, 0.99),
          degradedTime: end - resumedAt,
          ...(this.pushWindow ? { pushWindow: this.pushWindow } : {}),
        },
        rounds: this.rounds,
      };
    } catch (err) {
      if (!committed) {
        // Until the destination confirms, the source owns the workload: let it run on.
        if (frozenAt >= 0) await this.mem.thaw();
        throw new MigrationAborted(
          `migration ${migrationId} failed before the destination confirmed; the source keeps running: ${(err as Error).message}`,
          { cause: err },
        );
      }
      throw err;
    }
  }

  /** The non-memory state, in STATE frames of at most STATE_CHUNK bytes (one empty frame when there is none). */
  private async sendState(): Promise<void> {
    const state = this.o.state ? await this.o.state() : Buffer.alloc(this.o.stateBytes);
    let at = 0;
    do {
      const end = Math.min(state.length, at + STATE_CHUNK);
      await this.link.send(encodeFrame(FrameType.State, state.subarray(at, end)));
      at = end;
    } while (at < state.length);
  }

  private finishRecord(rec: RoundRecord): void {
    rec.duration = this.link.clock.now() - rec.start;
    rec.bytes = this.link.bytesSent - rec.bytes;
  }

  private totalPagesSent(): number {
    return this.rounds.reduce((a, r) => a + r.pagesSent, 0);
  }

  /** Starts a round record; `bytes` holds the link's byte count at the start until the round is finished. */
  private startRecord(round: number, phase: Phase): RoundRecord {
    const rec: RoundRecord = {
      round,
      phase,
      start: this.link.clock.now(),
      duration: 0,
      pagesSent: 0,
      pagesSkipped: 0,
      pagesResent: 0,
      zeroPages: 0,
      bytes: this.link.bytesSent,
      dirtyPages: null,
    };
    this.rounds.push(rec);
    return rec;
  }

  /** Sends one batch of page ids (read, encode, frame, send). */
  private async sendBatch(ids: ArrayLike<number>, round: number, rec: RoundRecord): Promise<void> {
    const size = this.pageSize;
    await this.mem.readPages(ids, this.scratch);
    for (let k = 0; k < ids.length; k++) {
      const id = ids[k];
      if (this.sentOnce.get(id)) rec.pagesResent++;
      else this.sentOnce.set(id);
      this.writer.add(id, this.scratch.subarray(k * size, (k + 1) * size));
    }
    const { frame, stats } = this.writer.seal(round);
    rec.pagesSent += stats.pages;
    rec.zeroPages += stats.zeroPages;
    await this.link.send(frame);
  }

  private async sendPages(ids: Uint32Array, round: number, phase: Phase): Promise<RoundRecord> {
    const rec = this.startRecord(round, phase);
    const per = this.perBatch;
    for (let i = 0; i < ids.length; i += per) {
      await this.sendBatch(ids.subarray(i, Math.min(ids.length, i + per)), round, rec);
    }
    return rec;
  }

  /**
   * Pushes every missing page, serving the destination's faults first. With a destination that acknowledges the
   * push (PAGES_ACK), the background pages go paced by a PushWindow, so that a faulted page does not queue behind
   * more than ~10 ms of them; without, in full batches.
   */
  private async pushPostcopy(missing: Bitmap, round: number): Promise<RoundRecord> {
    const rec = this.startRecord(round, 'postcopy');
    const order = pushOrder(missing, this.mem.layout.regions);
    const sent = new Bitmap(this.pageCount);
    const urgent: number[] = [];
    const per = this.perBatch;
    const batch = new Uint32Array(per);
    const clock = this.link.clock;
    const pace = this.paced ? new PushWindow(this.o.pushWindow) : null;
    let cursor = 0;
    let left = order.length;
    while (left > 0) {
      for (const raw of this.link.receive()) {
        const f = decodeFrame(raw);
        if (f.type === FrameType.PagesAck) pace?.acked(clock.now());
        if (f.type !== FrameType.Fault) continue;
        for (let at = 0; at + 4 <= f.payload.length; at += 4) {
          const id = f.payload.readUInt32LE(at);
          if (id < this.pageCount && missing.get(id) && !sent.get(id)) urgent.push(id);
        }
      }
      let n = 0;
      while (n < per && urgent.length > 0) {
        const id = urgent.shift()!;
        if (sent.get(id)) continue;
        sent.set(id);
        batch[n++] = id;
      }
      // Faulted pages travel alone, so that they do not wait behind a full batch of background pages.
      if (n === 0) {
        if (pace && !pace.room) {
          await this.link.wait(); // an acknowledgement or a fault
          continue;
        }
        const most = pace ? pace.batchPages(this.pageSize, per) : per;
        for (; n < most && cursor < order.length; cursor++) {
          const id = order[cursor];
          if (sent.get(id)) continue;
          sent.set(id);
          batch[n++] = id;
        }
      }
      const before = this.link.bytesSent;
      await this.sendBatch(batch.subarray(0, n), round, rec);
      pace?.sent(this.link.bytesSent - before, clock.now());
      left -= n;
    }
    if (pace) this.pushWindow = { bytes: Math.round(pace.window), minRtt: pace.minRtt };
    return rec;
  }
}

/**
 * The order of post-copy's background push: the missing pages of the smallest regions first (a process's stack,
 * heap and libraries' data, which it touches as soon as it runs again), those of its large buffers last; within a
 * region, in address order. In address order alone, a process whose large buffer lies below its stack faults on
 * every page it needs to answer, each a round trip behind pages pushed before it.
 */
export function pushOrder(missing: Bitmap, regions: readonly { pages: number }[]): Uint32Array {
  const firsts: number[] = [];
  let g = 0;
  for (const r of regions) {
    firsts.push(g);
    g += r.pages;
  }
  const bySize = regions.map((_, i) => i).sort((a, b) => regions[a].pages - regions[b].pages || a - b);
  const out = new Uint32Array(missing.count());
  let n = 0;
  for (const i of bySize)
    for (let p = firsts[i], end = firsts[i] + regions[i].pages; p < end; p++)
      if (missing.get(p)) out[n++] = p;
  // Pages beyond the regions (a layout that does not cover its page count): last, in order.
  for (let p = g; n < out.length && p < missing.size; p++) if (missing.get(p)) out[n++] = p;
  return out;
}
