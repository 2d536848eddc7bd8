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
import {
  DEFAULT_SWITCHOVER_MODEL,
  loadSwitchoverModel,
  modelledStopMs,
  type RestoreMode,
  type SwitchoverModel,
} from '../../sim/switchover.ts';
import { agentsFor, clientIdentity, fromProbeNamespace } from './agents.ts';
import { emit, jsonTarget, type JsonFlag, type JsonTarget } from './json.ts';

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
  json?: JsonFlag;
  progress?: boolean;
  quiet?: boolean;
  resume?: boolean;
}

/** The schema of `precog migrate --json`. */
export const MIGRATE_JSON_SCHEMA = 'precog.migrate/v1';

/**
 * What a stop after the latest round would cost, from the emulator's switchover model (fitted to live runs of
 * precog's own runtime: docs/results.md, "switchover-model"): the model's stop beyond the link, plus the changed
 * pages and the state at the latest round's rate. undefined where the model does not apply or cannot be read.
 */
export function predictedStopMs(
  model: SwitchoverModel | undefined,
  o: { memoryBytes: number; leftBytes: number; bytesPerSecond: number; mode: RestoreMode },
): number | undefined {
  if (!model || !(o.bytesPerSecond > 0) || !(o.memoryBytes > 0)) return undefined;
  const link = ((o.leftBytes + model.stateBytes) / o.bytesPerSecond) * 1000;
  return (
    modelledStopMs(model, {
      route: 'lazy',
      mode: o.mode,
      cold: false,
      memoryBytes: o.memoryBytes,
      changedBytes: o.leftBytes,
      bandwidth: o.bytesPerSecond * 8,
    }) + link
  );
}

/**
 * The migration as it goes, like `virsh domjobinfo`: each round's pages, rate, what was rewritten meanwhile (what
 * the next round or the stop has to send) and what a stop then would cost; then each step of the switchover. On a
 * terminal one status line rewritten in place; elsewhere a plain line per round and per step.
 */
class Progress {
  private readonly t0 = performance.now();
  private sent = 0;
  private memoryBytes = 0;
  private plan = '';

  constructor(
    private readonly mode: 'tty' | 'lines' | 'off',
    private readonly model: SwitchoverModel | undefined,
    private readonly restore: RestoreMode,
  ) {}

  private show(text: string, line: boolean): void {
    if (this.mode === 'off' || (this.mode === 'lines' && !line)) return;
    const s = ((performance.now() - this.t0) / 1000).toFixed(1);
    process.stderr.write(this.mode === 'tty' ? `\r\x1b[2K[${s}s] ${text}` : `[${s}s] ${text}\n`);
  }

  /** The strategy's word before each round: shown with the next round's progress. */
  decision(d: Decision, round: number): void {
    this.plan = d.stop ? `stopping: ${d.reason}` : `round ${round}: ${d.reason}`;
    this.show(this.plan, false);
  }

  round(r: RoundRecord): void {
    this.sent += r.bytes;
    // The first round reads all of the memory (what it sends and what it holds back).
    if (r.round === 1) this.memoryBytes = (r.pagesSent + r.pagesSkipped) * 4096;
    const rate = r.duration > 0 ? r.bytes / r.duration : 0;
    const left = r.dirtyPages === null ? null : r.dirtyPages * 4096;
    const stop =
      left === null
        ? undefined
        : predictedStopMs(this.model, {
            memoryBytes: this.memoryBytes,
            leftBytes: left,
            bytesPerSecond: rate,
            mode: this.restore,
          });
    this.show(
      `round ${r.round}: ${formatBytes(r.pagesSent * 4096)} sent at ${formatBytes(rate)}/s` +
        (left === null ? '' : `, ${formatBytes(left)} rewritten meanwhile`) +
        (stop === undefined ? '' : ` (a stop now: ~${(stop / 1000).toFixed(1)} s down)`) +
        `; ${formatBytes(this.sent)} on the link so far` +
        (this.plan ? ` (${this.plan})` : ''),
      true,
    );
  }

  phase(p: string): void {
    const text: Record<string, string> = {
      dump: 'stopping the container: criu dump, pages compared with what the destination holds',
      final: 'sending the changed pages, the images and the writable layer',
      restore: 'criu restore at the destination',
      done: 'running at the destination',
    };
    this.show(text[p] ?? p, true);
  }

  end(): void {
    if (this.mode === 'tty') process.stderr.write('\n');
  }
}

/** The switchover model shipped with precog, or undefined when it cannot be read (no prediction then). */
function shippedModel(): SwitchoverModel | undefined {
  try {
    return loadSwitchoverModel(DEFAULT_SWITCHOVER_MODEL);
  } catch {
    return undefined;
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

async function resumeAction(name: string, f: MigrateFlags, target: JsonTarget): Promise<void> {
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
  emit(
    target,
    r,
    () =>
      `${name}: post-copy ${r.migrationId} taken up again, ${r.from} -> ${r.to}: ${r.pagesMissing} missing page(s) ` +
      `sent (${r.pagesFaulted} asked for by waiting requests) in ${Math.round(r.pushMs)} ms; the copy on ${r.to} ` +
      `runs on (pages copied in within ${Math.round(r.lazyMs)} ms); source removed; pid ${r.pid} on ${r.to}\n`,
  );
}

/** `precog migrate NAME`: asks the source agent to move the container, and prints its report. */
export async function migrate(nameArg: string | undefined, f: MigrateFlags): Promise<void> {
  // --json takes an optional FILE, so `migrate --json NAME` hands it NAME: NAME is required, so that is what it was.
  let name = nameArg;
  if (name === undefined && typeof f.json === 'string' && f.json !== '-') [name, f.json] = [f.json, true];
  if (name === undefined) throw new UsageError("missing required argument 'name': the container to move");
  validateName(name);
  const target = jsonTarget(f.json);
  if (f.from === f.to) throw new UsageError(`--from and --to are both ${f.from}; give two different hosts`);
  if (f.resume) return resumeAction(name, f, target);
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
  const shown = f.progress !== false && !f.quiet && target !== 'stdout';
  const progress = new Progress(
    !shown ? 'off' : process.stderr.isTTY ? 'tty' : 'lines',
    // The model was fitted to precog's own runtime (its lazy dump route); other runtimes stop differently.
    f.runtime === 'precog' && (f.dumpVia === 'auto' || f.dumpVia === 'lazy') ? shippedModel() : undefined,
    isPostcopy(parseStrategy(f.strategy)) ? 'postcopy' : f.restore === 'full' ? 'full' : 'lazy',
  );
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
    // The live report's steps (ms) and, in metrics, the run in the emulator's vocabulary; rounds also at the top.
    emit(target, { schema: MIGRATE_JSON_SCHEMA, ...r, rounds: r.metrics.rounds }, () => summary(r) + '\n');
  } catch (err) {
    progress.end();
    throw err;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}
