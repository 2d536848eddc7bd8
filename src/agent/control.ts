/**
 * The agent's control side: `precog migrate` (from any machine holding a certificate of the agents' CA) asks the
 * source host's agent to move one of its containers to another agent, follows it as events, and can cancel it;
 * `precog job list/cancel` asks which moves run and stops one, from another shell. Like `virsh migrate`, the client
 * only talks to the agents: the source agent runs the source half itself (live rounds, dump, the link to the
 * destination agent), and the destination agent restores.
 *
 * Frames: the client sends CONTROL (a JSON ControlRequest), the agent answers with EVENT frames (JSON ControlEvent)
 * and ends a migration's stream with 'report', 'resumed' or 'error'. A second CONTROL on the same connection, or the
 * connection closing, cancels that connection's migration (as Ctrl-C of the old in-process CLI did).
 */
import { DUMP_ROUTES, type DumpVia } from '../migrate/routes.ts';
import { rmdirSync } from 'node:fs';
import { join } from 'node:path';
import { codecChain } from '../codec/index.ts';
import { migrateLive, newMigrationId, type LiveMigrationReport } from '../migrate/live.ts';
import { resumePostcopy, type ResumeReport } from '../migrate/resume.ts';
import { parseStrategy } from '../policy/index.ts';
import type { RoundRecord } from '../report/metrics.ts';
import { validateName } from '../runtime/container.ts';
import type { MovableRuntime } from '../runtime/registry.ts';
import type { Identity } from '../transport/pki.ts';
import { cannotMove } from '../runtime/check.ts';
import { UsageError } from '../util/errors.ts';
import type { Logger } from '../util/log.ts';

/** Where the destination's agent listens, and the name its certificate must carry. */
export interface AgentAddress {
  host: string;
  port: number;
  name: string;
}

export interface MigrateRequest {
  action: 'migrate';
  name: string;
  runtime: string;
  to: AgentAddress;
  strategy: string;
  codec: string;
  batchBytes: number;
  linkTimeoutMs: number;
  restore?: 'lazy' | 'full';
  dumpVia?: DumpVia;
  lazyTimeoutMs?: number;
}

export interface ResumeRequest {
  action: 'resume';
  name: string;
  runtime: string;
  to: AgentAddress;
  batchBytes: number;
  linkTimeoutMs: number;
}

export type ControlRequest =
  MigrateRequest | ResumeRequest | { action: 'list' } | { action: 'cancel'; name: string };

/** A move under way at this agent, as `precog job list` shows it. */
export interface JobInfo {
  migrationId: string;
  container: string;
  to: string;
  strategy: string;
  startedAt: string;
  phase: string;
  /** Live rounds done, bytes sent so far, and the last round's dirty pages (what is left to send). */
  rounds: number;
  bytesSent: number;
  dirtyPages: number | null;
}

export type ControlEvent =
  | { event: 'accepted'; migrationId: string }
  | { event: 'round'; round: RoundRecord }
  | { event: 'decision'; round: number; stop: boolean; reason: string }
  | { event: 'phase'; phase: string }
  | { event: 'report'; report: LiveMigrationReport }
  | { event: 'resumed'; report: ResumeReport }
  | { event: 'jobs'; jobs: JobInfo[] }
  | { event: 'cancelled'; container: string }
  | { event: 'error'; message: string; exitCode: number };

interface Job extends JobInfo {
  abort: AbortController;
  /** Settles when the move has ended either way (the source removed, or thawed). */
  done?: Promise<unknown>;
}

/** Bounds of the numbers a peer may ask for (a client's request, a source's container HELLO). */
export const LIMITS = {
  batch: [4096, 16 << 20],
  linkTimeout: [100, 3_600_000],
  lazyTimeout: [100, 24 * 3_600_000],
};

export function num(v: unknown, what: string, [lo, hi]: readonly number[]): number {
  if (typeof v !== 'number' || !Number.isFinite(v) || v < lo || v > hi)
    throw new UsageError(`${what} must be a number from ${lo} to ${hi}`);
  return v;
}

function address(v: unknown): AgentAddress {
  const a = v as Partial<AgentAddress> | null;
  if (!a || typeof a.host !== 'string' || !/^[A-Za-z0-9._:-]{1,253}$/.test(a.host))
    throw new UsageError('the destination host must be a host name or address');
  if (typeof a.name !== 'string' || !/^[A-Za-z0-9._-]{1,63}$/.test(a.name))
    throw new UsageError(
      "the destination's certificate name must be letters, digits, dot, dash or underscore",
    );
  return { host: a.host, port: num(a.port, 'the destination port', [1, 65535]), name: a.name };
}

/** The moves this agent runs as a source, and what it answers to CONTROL requests. */
export class ControlServer {
  private readonly jobs = new Map<string, Job>();

  constructor(
    private readonly o: {
      /** This host's name and identity (the source side of the link). */
      host: string;
      identity: Identity | null;
      runtime: ((name: string) => MovableRuntime) | undefined;
      stateDir: string;
      log: Logger;
    },
  ) {}

  list(): JobInfo[] {
    return [...this.jobs.values()].map(({ abort: _abort, done: _done, ...info }) => info);
  }

  /**
   * The agent is stopping: every move it runs as a source is cancelled (before the destination took over, the
   * source thaws and runs on) and waited for, at most `ms`, so that each client hears how its move ended.
   */
  async stop(ms: number): Promise<void> {
    const running = [...this.jobs.values()];
    for (const j of running) j.abort.abort('the source agent is stopping');
    await Promise.race([
      Promise.allSettled(running.map((j) => j.done)),
      new Promise((resolve) => setTimeout(resolve, ms).unref()),
    ]);
  }

  /**
   * Serves one request; `send` writes an event to the client. Resolves once the request is answered. `cancelled`
   * is how the connection cancels what it started (its close, or a second request).
   */
  async handle(raw: unknown, send: (e: ControlEvent) => void, cancelled: AbortSignal): Promise<void> {
    try {
      const req = raw as ControlRequest;
      switch (req?.action) {
        case 'list':
          send({ event: 'jobs', jobs: this.list() });
          return;
        case 'cancel': {
          const job = this.jobs.get(validateName(String(req.name)));
          if (!job) throw new UsageError(`no migration of a container named "${req.name}" runs on this host`);
          job.abort.abort('cancelled by precog job cancel');
          send({ event: 'cancelled', container: job.container });
          return;
        }
        case 'migrate':
          return await this.migrate(req, send, cancelled);
        case 'resume':
          return await this.resume(req, send);
        default:
          throw new UsageError(`unknown control action "${String((raw as { action?: unknown })?.action)}"`);
      }
    } catch (err) {
      const e = err as Error & { exitCode?: number };
      const exitCode = err instanceof UsageError ? 2 : (e.exitCode ?? 1);
      send({ event: 'error', message: e.message, exitCode });
    }
  }

  private need(): { identity: Identity; runtime: (name: string) => MovableRuntime } {
    if (!this.o.identity || !this.o.runtime)
      throw new UsageError('this agent moves no containers (it runs without TLS identity or runtime)');
    return { identity: this.o.identity, runtime: this.o.runtime };
  }

  private async migrate(
    req: MigrateRequest,
    send: (e: ControlEvent) => void,
    cancelled: AbortSignal,
  ): Promise<void> {
    const { identity, runtime } = this.need();
    const name = validateName(String(req.name));
    const to = address(req.to);
    const strategy = parseStrategy(String(req.strategy));
    const codec = String(req.codec ?? 'auto');
    if (codec !== 'auto')
      try {
        codecChain(codec);
      } catch (err) {
        throw new UsageError(`--codec ${codec}: ${(err as Error).message}`);
      }
    if (req.restore !== undefined && req.restore !== 'lazy' && req.restore !== 'full')
      throw new UsageError('--restore: accepted: lazy, full');
    if (req.dumpVia !== undefined && !DUMP_ROUTES.includes(req.dumpVia))
      throw new UsageError(`--dump-via: accepted: ${DUMP_ROUTES.join(', ')}`);
    if (this.jobs.has(name)) throw new UsageError(`container ${name} is being migrated already`);
    // Before anything stops: a host that cannot dump refuses with the fix.
    const why = cannotMove();
    if (why)
      throw Object.assign(
        new Error(`host ${this.o.host} cannot move containers: ${why}; ${name} keeps running`),
        {
          exitCode: 1,
        },
      );
    const rt = runtime(String(req.runtime));
    const lacks = rt.cannotRun();
    if (lacks)
      throw Object.assign(
        new Error(`host ${this.o.host} cannot move ${String(req.runtime)} containers: ${lacks}`),
        {
          exitCode: 1,
        },
      );
    const migrationId = newMigrationId(name);
    const abort = new AbortController();
    const onCancel = () => abort.abort(String(cancelled.reason ?? 'the client went away'));
    cancelled.addEventListener('abort', onCancel, { once: true });
    const job: Job = {
      migrationId,
      container: name,
      to: to.name,
      strategy: strategy.spec,
      startedAt: new Date().toISOString(),
      phase: 'live',
      rounds: 0,
      bytesSent: 0,
      dirtyPages: null,
      abort,
    };
    this.jobs.set(name, job);
    send({ event: 'accepted', migrationId });
    const log = this.o.log.child({ migration: migrationId, container: name, to: to.name });
    log.info({ strategy: strategy.spec }, 'moving a container away');
    try {
      const moving = migrateLive({
        name,
        from: this.o.host,
        to: to.name,
        dest: { host: to.host, port: to.port },
        identity,
        rt,
        runtimeName: String(req.runtime),
        migrationId,
        strategy,
        codec,
        batchBytes: num(req.batchBytes, '--batch', LIMITS.batch),
        linkTimeoutMs: num(req.linkTimeoutMs, '--link-timeout', LIMITS.linkTimeout),
        ...(req.lazyTimeoutMs !== undefined
          ? { lazyTimeoutMs: num(req.lazyTimeoutMs, 'the lazy timeout', LIMITS.lazyTimeout) }
          : {}),
        ...(req.restore ? { restore: req.restore } : {}),
        ...(req.dumpVia ? { dumpVia: req.dumpVia } : {}),
        workDir: join(this.o.stateDir, 'outgoing', migrationId),
        signal: abort.signal,
        onRound: (round) => {
          job.rounds = round.round;
          job.bytesSent += round.bytes;
          job.dirtyPages = round.dirtyPages;
          send({ event: 'round', round });
        },
        onDecision: (d, round) =>
          send({ event: 'decision', round, stop: d.stop, reason: d.reason ?? (d.stop ? 'stop' : 'go on') }),
        onPhase: (phase) => {
          job.phase = phase;
          send({ event: 'phase', phase });
        },
        onFallback: (why) => log.warn({ reason: why }, 'dump route fallback'),
      });
      job.done = moving;
      const report = await moving;
      log.info({ downtimeMs: Math.round(report.downtimeMs), totalMs: Math.round(report.totalMs) }, 'moved');
      send({ event: 'report', report });
    } catch (err) {
      log.warn({ reason: (err as Error).message }, 'move failed');
      throw err;
    } finally {
      cancelled.removeEventListener('abort', onCancel);
      this.jobs.delete(name);
      try {
        rmdirSync(join(this.o.stateDir, 'outgoing')); // once the last outgoing move is done
      } catch {
        // another one runs, or it is gone
      }
    }
  }

  private async resume(req: ResumeRequest, send: (e: ControlEvent) => void): Promise<void> {
    const { identity, runtime } = this.need();
    const name = validateName(String(req.name));
    const to = address(req.to);
    const report = await resumePostcopy({
      name,
      from: this.o.host,
      to: to.name,
      dest: { host: to.host, port: to.port },
      identity,
      rt: runtime(String(req.runtime)),
      batchBytes: num(req.batchBytes, '--batch', LIMITS.batch),
      linkTimeoutMs: num(req.linkTimeoutMs, '--link-timeout', LIMITS.linkTimeout),
    });
    send({ event: 'resumed', report });
  }
}
