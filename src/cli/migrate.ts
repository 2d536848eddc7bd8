import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { Command } from 'commander';
import { CODEC_NAMES, codecChain } from '../codec/index.ts';
import { migrateLive, type LiveMigrationReport } from '../migrate/live.ts';
import { resumePostcopy } from '../migrate/resume.ts';
import { isPostcopy, parseStrategy, type Decision } from '../policy/index.ts';
import type { RoundRecord } from '../report/metrics.ts';
import { defaultRuntime } from '../runtime/container.ts';
import { parseHost } from '../runtime/testbed.ts';
import { UsageError } from '../util/errors.ts';
import { formatBytes, parseDuration, parseSize } from '../util/units.ts';
import { needRoot } from './container.ts';

interface MigrateFlags {
  from: string;
  to: string;
  strategy: string;
  codec: string;
  batch: string;
  linkTimeout: string;
  work?: string;
  restore?: string;
  dumpVia: string;
  json?: boolean;
  progress?: boolean;
  resume?: boolean;
}

/**
 * Runs this same command again inside the source host's network namespace (the link to the destination and the
 * local page server must be the host's own), with the same stdio; resolves with its exit code.
 */
function reexecIn(netns: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const child = spawn(
      'nsenter',
      [`--net=/run/netns/${netns}`, '--', process.execPath, ...process.execArgv, ...process.argv.slice(1)],
      { stdio: 'inherit', env: { ...process.env, PRECOG_IN_NETNS: netns } },
    );
    const forward = (sig: NodeJS.Signals) => () => child.kill(sig);
    const onInt = forward('SIGINT');
    const onTerm = forward('SIGTERM');
    process.on('SIGINT', onInt);
    process.on('SIGTERM', onTerm);
    child.on('error', reject);
    child.on('exit', (code, signal) => {
      process.off('SIGINT', onInt);
      process.off('SIGTERM', onTerm);
      resolve(code ?? (signal ? 128 + 15 : 1));
    });
  });
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
    `pid ${r.pid} on ${r.to}`
  );
}

async function resumeAction(name: string, from: string, to: string, f: MigrateFlags): Promise<void> {
  const batchBytes = parseSize(f.batch, '--batch');
  const linkTimeoutMs = parseDuration(f.linkTimeout, '--link-timeout') * 1000;
  needRoot('migrate');
  const netns = `precog-${from}`;
  if (process.env.PRECOG_IN_NETNS !== netns) {
    process.exitCode = await reexecIn(netns);
    return;
  }
  const r = await resumePostcopy({ name, from, to, batchBytes, linkTimeoutMs });
  if (f.json) process.stdout.write(JSON.stringify(r, null, 2) + '\n');
  else
    process.stdout.write(
      `${name}: post-copy ${r.migrationId} taken up again, ${r.from} -> ${r.to}: ${r.pagesMissing} missing page(s) ` +
        `sent (${r.pagesFaulted} asked for by waiting requests) in ${Math.round(r.pushMs)} ms; the copy on ${r.to} ` +
        `runs on (pages copied in within ${Math.round(r.lazyMs)} ms); source removed; pid ${r.pid} on ${r.to}\n`,
    );
}

export function migrateCommand(): Command {
  return new Command('migrate')
    .description(
      'move a running container to another test host: live rounds over the agents’ TLS link, then criu dump, ' +
        'the changed pages, criu restore; the source is removed only once the destination runs it',
    )
    .argument('<name>')
    .requiredOption('--from <host>', 'source host (where the container runs)')
    .requiredOption('--to <host>', 'destination host')
    .option(
      '-s, --strategy <spec>',
      'cold, precopy, precopy:qemu, iterpredict, markov, pr, mbdp, mbdpc, u2c, postcopy, hybrid (docs/strategies.md)',
      'precopy',
    )
    .option(
      '--codec <name>',
      `page codec chain: auto (the strategy's own: xor-lz4 for mbdpc, else zero), ${CODEC_NAMES.join(', ')}`,
      'auto',
    )
    .option('--batch <size>', 'page bytes per frame', '1MiB')
    .option('--link-timeout <duration>', 'a link that carries nothing this long has failed', '30s')
    .option(
      '--restore <mode>',
      'lazy: run as soon as the state is back, pages copied in from local images by criu lazy-pages; ' +
        'full: copy every page before running (default: lazy, full for cold)',
    )
    .option(
      '--dump-via <how>',
      'images: local criu dump, pages compared as read back (default); page-server: streamed to precog',
      'images',
    )
    .option('--work <dir>', 'work directory on this machine (default: /var/lib/precog/migrations/ID)')
    .option('--json', 'print the report as JSON')
    .option('--no-progress', 'no progress line on a terminal')
    .option(
      '--resume',
      'take up a post-copy whose link was lost after the switchover: send the destination the pages it still lacks ' +
        'from the frozen source, then let the copy there run on',
    )
    .action(async (name: string, f: MigrateFlags) => {
      const from = parseHost(f.from).name;
      const to = parseHost(f.to).name;
      if (from === to) throw new UsageError(`--from and --to are both ${from}; give two different hosts`);
      if (f.resume) return resumeAction(name, from, to, f);
      const strategy = parseStrategy(f.strategy);
      if (f.restore !== undefined && f.restore !== 'lazy' && f.restore !== 'full')
        throw new UsageError(`--restore ${f.restore}: accepted: lazy, full`);
      const postcopy = isPostcopy(strategy);
      if (postcopy && f.restore === 'full')
        throw new UsageError(
          `--restore full: ${strategy.name} restores lazily (its pages arrive after the switchover); leave --restore out`,
        );
      if (postcopy && f.dumpVia === 'page-server')
        throw new UsageError(
          `--dump-via page-server: ${strategy.name} needs the local dump (its pagemaps say which pages restore eagerly); leave --dump-via out`,
        );
      if (f.dumpVia !== 'images' && f.dumpVia !== 'page-server')
        throw new UsageError(`--dump-via ${f.dumpVia}: accepted: images, page-server`);
      const batchBytes = parseSize(f.batch, '--batch');
      const linkTimeoutMs = parseDuration(f.linkTimeout, '--link-timeout') * 1000;
      if (f.codec !== 'auto')
        try {
          codecChain(f.codec);
        } catch (err) {
          throw new UsageError(`--codec ${f.codec}: ${(err as Error).message}`);
        }
      needRoot('migrate');
      const netns = `precog-${from}`;
      if (process.env.PRECOG_IN_NETNS !== netns) {
        const rt = defaultRuntime();
        const c = await rt.inspect(name);
        if (!c) throw new UsageError(`no container named "${name}"; "precog ps" lists them`);
        if (c.host !== from) throw new UsageError(`container ${name} runs on host ${c.host}, not ${from}`);
        process.exitCode = await reexecIn(netns);
        return;
      }
      const progress = new Progress(f.progress !== false && !f.json && process.stderr.isTTY === true);
      // Ctrl-C or SIGTERM: give up cleanly (the source thaws) instead of dying with the container frozen.
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
        const r = await migrateLive({
          name,
          from,
          to,
          strategy,
          codec: f.codec,
          batchBytes,
          linkTimeoutMs,
          ...(f.restore ? { restore: f.restore as 'lazy' | 'full' } : {}),
          dumpVia: f.dumpVia as 'images' | 'page-server',
          workDir: f.work ?? join('/var/lib/precog/migrations', `${name}-${Date.now()}`),
          onRound: (rec) => progress.round(rec),
          onDecision: (d, round) => progress.decision(d, round),
          signal: interrupt.signal,
          onPhase: (p) => progress.phase(p),
        });
        progress.end();
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
    });
}
