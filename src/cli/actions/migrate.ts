import { DUMP_ROUTES, refusePostcopyRoute, type DumpVia } from '../../migrate/routes.ts';
import { codecChain } from '../../codec/index.ts';
import { controlRequest } from '../../agent/client.ts';
import type { LiveMigrationReport } from '../../migrate/live.ts';
import { isPostcopy, parseStrategy, type Decision } from '../../policy/index.ts';
import type { RoundRecord } from '../../report/metrics.ts';
import { validateName } from '../../runtime/container.ts';
import { runtimeNames } from '../../runtime/index.ts';
import { UsageError } from '../../util/errors.ts';
import { formatBytes, parseDuration, parseSize } from '../../util/units.ts';
import { agentsFor, clientIdentity, fromProbeNamespace } from './agents.ts';

export interface MigrateFlags {
  from: string;
  to: string;
  runtime: string;
  pki?: string;
  name?: string;
  strategy: string;
  codec: string;
  batch: string;
  linkTimeout: string;
  restore?: string;
  dumpVia: string;
  json?: boolean;
  progress?: boolean;
  quiet?: boolean;
  resume?: boolean;
}

/** One status line on a terminal, rewritten in place. */
class Progress {
  private readonly on: boolean;
  private readonly t0 = performance.now();
  private sent = 0;

  constructor(on: boolean) {
    this.on = on;
  }

  private show(text: string): void {
    if (!this.on) return;
    const s = ((performance.now() - this.t0) / 1000).toFixed(1);
    process.stderr.write(`\r\x1b[2K[${s}s] ${text}`);
  }

  private plan = '';

  /** The strategy's word before each round: shown with the next round's progress. */
  decision(d: Decision, round: number): void {
    this.plan = d.stop ? `stopping: ${d.reason}` : `round ${round}: ${d.reason}`;
    this.show(this.plan);
  }

  round(r: RoundRecord): void {
    this.sent += r.bytes;
    const rate = r.duration > 0 ? r.bytes / r.duration : 0;
    const dirty = r.dirtyPages === null ? '' : `, ${formatBytes(r.dirtyPages * 4096)} rewritten meanwhile`;
    this.show(
      `round ${r.round}: ${formatBytes(r.pagesSent * 4096)} sent at ${formatBytes(rate)}/s` +
        `${dirty}; ${formatBytes(this.sent)} on the link so far (${this.plan})`,
    );
  }

  phase(p: string): void {
    const text: Record<string, string> = {
      dump: 'stopping the container: criu dump, pages compared with what the destination holds',
      final: 'sending the changed pages, the images and the writable layer',
      restore: 'criu restore at the destination',
      done: 'running at the destination',
    };
    this.show(text[p] ?? p);
  }

  end(): void {
    if (this.on) process.stderr.write('\n');
  }
}

function summary(r: LiveMigrationReport): string {
  const ms = (x: number) => `${Math.round(x)} ms`;
  return (
    `${r.container}: migrated ${r.from} -> ${r.to} (${r.strategy}) in ${ms(r.totalMs)}; ` +
    `downtime ${ms(r.downtimeMs)} (dump ${ms(r.dumpMs)}, changed pages ${ms(r.finalPagesMs)}, ` +
    `state + commit ${ms(r.stateMs)}, restore ${ms(r.restoreMs)}${r.restoreMode === 'lazy' ? ' lazy' : ''}); ` +
    (r.postcopy
      ? `post-copy: ${r.postcopy.pages} pages after the switchover, ${r.postcopy.faults} remote fault(s)` +
        (r.postcopy.faultLatencyMedianMs !== null
          ? ` (latency median ${r.postcopy.faultLatencyMedianMs.toFixed(1)} ms, p99 ${r.postcopy.faultLatencyP99Ms!.toFixed(1)} ms)`
          : '') +
        `, degraded for ${ms(r.postcopy.degradedMs)}; `
      : r.lazyMs !== null
        ? `${r.lazyPages} pages copied in lazily within ${ms(r.lazyMs)} of running (source removed then); `
        : '') +
    `${r.liveRounds} live round(s), ${formatBytes(r.bytesTotal)} on the link for ${formatBytes(r.memoryBytes)} of memory; ` +
    `stopped: ${r.pagesFinal} pages sent, ${r.pagesUnchanged} already there, state ${formatBytes(r.stateBytes)}; ` +
    `pid ${r.pid} on ${r.to}` +
    (r.dumpFallback ? `\nnote: ${r.dumpFallback}` : '')
  );
}

async function resumeAction(name: string, f: MigrateFlags): Promise<void> {
  const batchBytes = parseSize(f.batch, '--batch');
  const linkTimeoutMs = parseDuration(f.linkTimeout, '--link-timeout') * 1000;
  const agents = agentsFor(f.from, f.to);
  const identity = clientIdentity(f, !!agents.testbed, f.from);
  if (await fromProbeNamespace(agents.testbed, 'migrate')) return;
  const end = await controlRequest(agents.from.endpoint, identity, agents.from.name, {
    action: 'resume',
    name,
    runtime: f.runtime,
    to: { ...agents.to.endpoint, name: agents.to.name },
    batchBytes,
    linkTimeoutMs,
  });
  if (end.event === 'error') throw Object.assign(new Error(end.message), { exitCode: end.exitCode });
  if (end.event !== 'resumed') throw new Error(`the agent answered ${end.event}`);
  const r = end.report;
  if (f.json) process.stdout.write(JSON.stringify(r, null, 2) + '\n');
  else
    process.stdout.write(
      `${name}: post-copy ${r.migrationId} taken up again, ${r.from} -> ${r.to}: ${r.pagesMissing} missing page(s) ` +
        `sent (${r.pagesFaulted} asked for by waiting requests) in ${Math.round(r.pushMs)} ms; the copy on ${r.to} ` +
        `runs on (pages copied in within ${Math.round(r.lazyMs)} ms); source removed; pid ${r.pid} on ${r.to}\n`,
    );
}

/** `precog migrate NAME`: asks the source agent to move the container, and prints its report. */
export async function migrate(name: string, f: MigrateFlags): Promise<void> {
  validateName(name);
  if (f.from === f.to) throw new UsageError(`--from and --to are both ${f.from}; give two different hosts`);
  if (f.resume) return resumeAction(name, f);
  const strategy = parseStrategy(f.strategy);
  if (f.restore !== undefined && f.restore !== 'lazy' && f.restore !== 'full')
    throw new UsageError(`--restore ${f.restore}: accepted: lazy, full`);
  const postcopy = isPostcopy(strategy);
  if (postcopy && f.restore === 'full')
    throw new UsageError(
      `--restore full: ${strategy.name} restores lazily (its pages arrive after the switchover); leave --restore out`,
    );
  if (!DUMP_ROUTES.includes(f.dumpVia as DumpVia))
    throw new UsageError(`--dump-via ${f.dumpVia}: accepted: ${DUMP_ROUTES.join(', ')}`);
  refusePostcopyRoute(f.dumpVia, postcopy, strategy.name);
  const batchBytes = parseSize(f.batch, '--batch');
  const linkTimeoutMs = parseDuration(f.linkTimeout, '--link-timeout') * 1000;
  if (f.codec !== 'auto')
    try {
      codecChain(f.codec);
    } catch (err) {
      throw new UsageError(`--codec ${f.codec}: ${(err as Error).message}`);
    }
  if (!runtimeNames().includes(f.runtime))
    throw new UsageError(`--runtime ${f.runtime}: unknown; registered: ${runtimeNames().join(', ')}`);
  const agents = agentsFor(f.from, f.to);
  const identity = clientIdentity(f, !!agents.testbed, f.from);
  if (await fromProbeNamespace(agents.testbed, 'migrate')) return;
  const progress = new Progress(f.progress !== false && !f.quiet && !f.json && process.stderr.isTTY === true);
  // Ctrl-C or SIGTERM: the source agent gives up cleanly (the source thaws) unless the restore has begun.
  const interrupt = new AbortController();
  const onSignal = (sig: NodeJS.Signals) => {
    if (interrupt.signal.aborted) return;
    process.stderr.write(
      `\nprecog: ${sig}: stopping the migration; the source keeps running unless the restore has begun\n`,
    );
    interrupt.abort(sig);
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    const lazy = Number(process.env.PRECOG_LAZY_TIMEOUT_MS);
    const end = await controlRequest(
      agents.from.endpoint,
      identity,
      agents.from.name,
      {
        action: 'migrate',
        name,
        runtime: f.runtime,
        to: { ...agents.to.endpoint, name: agents.to.name },
        strategy: f.strategy,
        codec: f.codec,
        batchBytes,
        linkTimeoutMs,
        ...(f.restore ? { restore: f.restore as 'lazy' | 'full' } : {}),
        dumpVia: f.dumpVia as DumpVia,
        ...(lazy > 0 ? { lazyTimeoutMs: lazy } : {}),
      },
      (e) => {
        if (e.event === 'round') progress.round(e.round);
        else if (e.event === 'decision')
          progress.decision({ stop: e.stop, reason: e.reason } as Decision, e.round);
        else if (e.event === 'phase') progress.phase(e.phase);
      },
      interrupt.signal,
    );
    progress.end();
    if (end.event === 'error') throw Object.assign(new Error(end.message), { exitCode: end.exitCode });
    if (end.event !== 'report') throw new Error(`the agent answered ${end.event}`);
    const r = end.report;
    if (f.json) {
      const { metrics, ...rest } = r;
      process.stdout.write(JSON.stringify({ ...rest, rounds: metrics.rounds }, null, 2) + '\n');
    } else process.stdout.write(summary(r) + '\n');
  } catch (err) {
    progress.end();
    throw err;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}
