/**
 * The destination agent's restore of a container: after COMMIT (pre-copy family) or SWITCHOVER (post-copy) the
 * agent restores the checkpoint it rebuilt from its page store with the container's runtime, in its own host, and
 * only then answers. Its RESUMED (and a post-copy's DONE_ACK) carry a RestoreReport: how long the restore took,
 * the lazy copy-in, and how long ago the container started running, so that the source can date the resume on its
 * own clock without reading anything of this host.
 */
import { decodeFrame, FrameType, jsonFrame, parseJson } from '../transport/frame.ts';
import type { ContainerHello, RestoreReport } from '../engine/messages.ts';
import type { PsConnection } from '../criu/pageserver.ts';
import type { MovableRuntime } from '../runtime/registry.ts';
import type { Logger } from '../util/log.ts';

interface RestoreHow {
  lazyWait: boolean;
  pageServer?: PsConnection;
}

export class ContainerRestorer {
  /** The agent's commit (rebuilding the image directory), set by the agent before the restore. */
  commitMs = 0;
  private name: string | null = null;
  private runningAt = 0;
  private report: Omit<RestoreReport, 'sinceRunningMs'> | null = null;
  private restoring: Promise<void> | null = null;

  constructor(
    private readonly rt: MovableRuntime,
    private readonly c: ContainerHello,
    /** The host this agent runs in (the runtime's site). */
    private readonly host: string,
    private readonly log: Logger,
  ) {}

  /**
   * Restores the checkpoint in DIR (moved, not copied, into the container). `lazyWait`: a lazy restore resolves
   * only once every page is in (pre-copy: the source stays until then). `pageServer`: post-copy, the daemon asks
   * this agent's lazy page server. Rejects with the runtime's error; nothing of the container is left then.
   */
  restore(dir: string, o: RestoreHow): Promise<void> {
    this.restoring = this.run(dir, o);
    return this.restoring;
  }

  private async run(dir: string, o: RestoreHow): Promise<void> {
    const lazy = this.c.restore === 'lazy' || o.pageServer !== undefined;
    const t0 = performance.now();
    const info = await this.rt.restore(dir, this.host, {
      move: true,
      lazy,
      ...(o.pageServer ? { lazyPageServer: o.pageServer } : {}),
      ...(this.c.lazyTimeoutMs ? { lazyTimeoutMs: this.c.lazyTimeoutMs } : {}),
    });
    this.name = info.name;
    this.runningAt = performance.now();
    this.report = {
      pid: info.pid,
      restoreMs: this.runningAt - t0,
      commitMs: this.commitMs,
      mode: lazy ? 'lazy' : 'full',
      lazyPages: null,
      lazyMs: null,
    };
    this.log.info(
      { container: info.name, pid: info.pid, mode: this.report.mode, ms: Math.round(this.report.restoreMs) },
      'container restored and running',
    );
    if (o.lazyWait) {
      try {
        await this.lazyFinished();
      } catch (err) {
        // The copy cannot get its pages: it goes, and the source (frozen until now) takes over again.
        await this.discard();
        throw err;
      }
    }
  }

  /** A lazy restore's copy-in: resolves when the daemon has copied every page in (at once when not lazy). */
  async lazyFinished(): Promise<void> {
    if (this.restoring && !this.name) await this.restoring.catch(() => {});
    if (!this.name) throw new Error('no container was restored in this migration');
    const done = this.rt.lazyDone(this.name);
    if (!done) return;
    try {
      const r = await done;
      if (this.report) {
        this.report.lazyPages = r.lazyPages;
        this.report.lazyMs = r.ms;
      }
      this.log.info({ container: this.name, pages: r.lazyPages, ms: Math.round(r.ms) }, 'lazy copy-in done');
    } finally {
      this.rt.forgetLazy(this.name);
    }
  }

  /** RESUMED and DONE_ACK frames with the restore's report added; other frames as they are. */
  withReport(frame: Buffer): Buffer {
    const type = frame.readUInt8(5);
    if (!this.report || (type !== FrameType.Resumed && type !== FrameType.DoneAck)) return frame;
    const body = parseJson<Record<string, unknown>>(decodeFrame(frame));
    const restore: RestoreReport = { ...this.report, sinceRunningMs: performance.now() - this.runningAt };
    return jsonFrame(type, { ...body, restore });
  }

  /** Removes the restored copy (its move failed before the source handed over). */
  async discard(): Promise<void> {
    if (!this.name) return;
    await this.rt
      .remove(this.name, this.host)
      .catch((err: Error) =>
        this.log.warn({ container: this.name, reason: err.message }, 'could not remove the restored copy'),
      );
  }

  /** The source's link timeout (its HELLO): silence that long during post-copy means the source is lost. */
  get linkTimeoutMs(): number {
    return this.c.linkTimeoutMs ?? 0;
  }

  /** Post-copy with its source lost: the copy must not run on with pages missing. */
  freeze(): void {
    if (!this.name) return;
    this.rt
      .freeze(this.name, this.host)
      .then(() => this.log.warn({ container: this.name }, 'restored copy frozen until its source is back'))
      .catch((err: Error) => this.log.warn({ reason: err.message }, 'could not freeze the restored copy'));
  }

  /** Its source is back (post-copy taken up again): the copy runs on. */
  thaw(): void {
    if (!this.name) return;
    this.rt
      .thaw(this.name, this.host)
      .catch((err: Error) => this.log.warn({ reason: err.message }, 'could not thaw the restored copy'));
  }
}
