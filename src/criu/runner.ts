/**
 * Running CRIU's command line (see docs/criu-pageserver.md, "Running CRIU").
 *
 * A CriuRunner belongs to one migration (or checkpoint): it has a work directory in which every CRIU invocation
 * gets its own log file (`dump.log`, `restore.log`, `dump-2.log` for a second dump, ...), written at -v4 by
 * default, and kept after the run. CRIU runs on this machine or inside a test host (`precog testbed`). When CRIU
 * fails, the CriuError says which command failed, where its log is (inside the host and as seen from this
 * machine), the log's error lines and its last lines, and what CRIU printed on stderr.
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { posix } from 'node:path';
import type { Socket } from 'node:net';
import type { Readable } from 'node:stream';
import { UsageError } from '../util/errors.ts';
import { PS_SOCKET_FD, type PsConnection } from './pageserver.ts';

/** Where CRIU runs, when not as this process (src/runtime/site.ts has the implementations). */
export interface CommandSite {
  readonly name: string;
  command(argv: readonly string[]): { cmd: string; args: string[]; env: NodeJS.ProcessEnv };
  /** A path as CRIU sees it -> the same file for this process. */
  path(inside: string): string;
}

export interface CriuRunnerOptions {
  /** Work directory of this migration, as CRIU sees it (inside the host when `site` is set). Logs go here. */
  dir: string;
  /**
   * Where CRIU runs: how to run a command there and reach its files (a test host seen from the machine, for
   * example). Without it CRIU runs here, as this process.
   */
  site?: CommandSite;
  /** CRIU binary (default "criu", from PATH). */
  criu?: string;
  /** Log level -v0..-v4 (default 4: everything; CRIU's logs are the only account of what it did). */
  verbosity?: number;
  /** Kill CRIU after this long (default 10 minutes). */
  timeoutMs?: number;
}

export interface CriuRun {
  /** The CRIU action: dump, restore, check, page-server, ... */
  action: string;
  /** The command line as run (criu and its arguments). */
  argv: string[];
  /** Exit code (null when killed by a signal). */
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** The log file as CRIU sees it (inside the host), or null for actions run without a log. */
  log: string | null;
  /** The same file as seen from this machine (null without a log). */
  logOnMachine: string | null;
  durationMs: number;
  timedOut: boolean;
}

export interface RunOptions {
  /** Log file name in the work directory (default: `<action>.log`, then `<action>-2.log`, ...); false: no -o. */
  log?: string | false;
  timeoutMs?: number;
  /** Resolve with the failed run instead of throwing a CriuError. */
  allowFailure?: boolean;
  /**
   * A page-server connection: CRIU (or the wrapper that runs it) gets one end of a socket pair as descriptor
   * PS_SOCKET_FD, this the other. The run ends when CRIU exits, not when that connection closes.
   */
  psSocket?: PsConnection;
}

/** Log lines CRIU marks as errors that are harmless on precog's machines (ENVIRONMENT.md). */
const HARMLESS = [/rlimit: Can't setup RLIMIT_NOFILE for self/];

/**
 * The lines of a CRIU log that tell why it failed: its "Error" lines (CRIU writes `(00.012345) Error (file:line):
 * ...`; the first ones are usually the cause, so up to `maxErrors` from the start), known-harmless errors left
 * out, and the last `tail` lines.
 */
export function relevantLogLines(
  text: string,
  opts: { tail?: number; maxErrors?: number } = {},
): { errors: string[]; tail: string[]; harmless: number; moreErrors: number } {
  const lines = text.split('\n').filter((l) => l.trim() !== '');
  const errorLines = lines.filter((l) => /\bError\b/.test(l));
  const real = errorLines.filter((l) => !HARMLESS.some((h) => h.test(l)));
  const maxErrors = opts.maxErrors ?? 20;
  return {
    errors: real.slice(0, maxErrors),
    moreErrors: Math.max(0, real.length - maxErrors),
    harmless: errorLines.length - real.length,
    tail: lines.slice(-(opts.tail ?? 20)),
  };
}

/** CRIU exited with an error, or could not be run. The message carries the log's relevant lines and its path. */
export class CriuError extends Error {
  override readonly name = 'CriuError';
  readonly exitCode = 1;
  constructor(
    message: string,
    readonly run: CriuRun,
    readonly errors: string[],
  ) {
    super(message);
  }
}

function indent(lines: string[]): string {
  return lines.map((l) => `  ${l}`).join('\n');
}

/** Quotes an argument for display when it needs it. */
function shellWord(s: string): string {
  return /^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}

export function describeCriuFailure(run: CriuRun, where: string): { message: string; errors: string[] } {
  const cmd = run.argv.map(shellWord).join(' ');
  const how = run.timedOut
    ? `timed out and was killed`
    : run.code === null
      ? `was killed by ${run.signal}`
      : `failed (exit code ${run.code})`;
  const parts = [`criu ${run.action} ${how}${where}: ${cmd}`];
  let errors: string[] = [];
  if (run.log && run.logOnMachine) {
    const seen = run.logOnMachine === run.log ? '' : ` (on this machine: ${run.logOnMachine})`;
    if (existsSync(run.logOnMachine)) {
      const rel = relevantLogLines(readFileSync(run.logOnMachine, 'utf8'));
      errors = rel.errors;
      parts.push(`log: ${run.log}${seen}`);
      if (rel.errors.length)
        parts.push(
          `errors in the log${rel.moreErrors ? ` (first ${rel.errors.length} of ${rel.errors.length + rel.moreErrors})` : ''}:\n` +
            indent(rel.errors),
        );
      else
        parts.push(
          'no "Error" lines in the log' + (rel.harmless ? ` (besides ${rel.harmless} harmless)` : ''),
        );
      parts.push(`last ${rel.tail.length} lines of the log:\n${indent(rel.tail)}`);
    } else {
      parts.push(`log: ${run.log}${seen} was not written (CRIU failed before opening it)`);
    }
  }
  const stderr = run.stderr.trim();
  if (stderr) {
    const lines = stderr.split('\n');
    if (!errors.length) errors = lines.filter((l) => /error/i.test(l)).slice(0, 20);
    parts.push(`stderr:\n${indent(lines.slice(-20))}`);
  }
  return { message: parts.join('\n'), errors };
}

/** Runs CRIU for one migration, on this machine or in a test host, keeping a log per invocation. */
export class CriuRunner {
  readonly dir: string;
  readonly host: string | undefined;
  /** Every invocation so far, in order. */
  readonly runs: CriuRun[] = [];
  private readonly criu: string;
  private readonly verbosity: number;
  private readonly timeoutMs: number;
  private readonly site: CommandSite | undefined;
  private readonly logNames = new Map<string, number>();

  constructor(opts: CriuRunnerOptions) {
    if (!posix.isAbsolute(opts.dir))
      throw new UsageError(`CRIU work directory must be absolute: ${opts.dir}`);
    this.dir = posix.normalize(opts.dir).replace(/(.)\/$/, '$1');
    this.site = opts.site;
    this.host = opts.site?.name;
    this.criu = opts.criu ?? 'criu';
    this.verbosity = opts.verbosity ?? 4;
    this.timeoutMs = opts.timeoutMs ?? 600_000;
  }

  /** A runner whose work directory is `<base>/<migrationId>` (created). */
  static forMigration(
    base: string,
    migrationId: string,
    opts: Omit<CriuRunnerOptions, 'dir'> = {},
  ): CriuRunner {
    if (!/^[\w.-]+$/.test(migrationId) || migrationId === '.' || migrationId === '..')
      throw new UsageError(`bad migration id "${migrationId}": use letters, digits, ".", "_" and "-"`);
    const r = new CriuRunner({ ...opts, dir: posix.join(base, migrationId) });
    r.prepare();
    return r;
  }

  /** A path as CRIU sees it -> the same file as seen from this machine (through the host init's root). */
  onMachine(path: string): string {
    return this.site ? this.site.path(path) : path;
  }

  /** A path in the work directory (as CRIU sees it). */
  path(...parts: string[]): string {
    return posix.join(this.dir, ...parts);
  }

  /** Creates the work directory (and `sub` directories in it). */
  prepare(...sub: string[]): void {
    mkdirSync(this.onMachine(this.dir), { recursive: true, mode: 0o700 });
    for (const s of sub) mkdirSync(this.onMachine(this.path(s)), { recursive: true, mode: 0o700 });
  }

  private nextLog(action: string): string {
    const n = (this.logNames.get(action) ?? 0) + 1;
    this.logNames.set(action, n);
    return n === 1 ? `${action}.log` : `${action}-${n}.log`;
  }

  private where(): string {
    return this.host ? ` in host ${this.host}` : '';
  }

  /**
   * Runs `criu ACTION [-o LOG -vN] ARGS...`; resolves with the run when CRIU exits 0, throws a CriuError with
   * the log's relevant lines otherwise.
   */
  async run(action: string, args: readonly string[], opts: RunOptions = {}): Promise<CriuRun> {
    const logName = opts.log === false ? null : (opts.log ?? this.nextLog(action));
    const log = logName === null ? null : posix.isAbsolute(logName) ? logName : this.path(logName);
    if (log) mkdirSync(this.onMachine(posix.dirname(log)), { recursive: true, mode: 0o700 });
    const argv = [this.criu, action, ...(log ? ['-o', log, `-v${this.verbosity}`] : []), ...args];
    const run = await this.spawn(action, argv, log, opts.timeoutMs ?? this.timeoutMs, opts.psSocket);
    this.runs.push(run);
    if (run.code !== 0 && !opts.allowFailure) {
      const { message, errors } = describeCriuFailure(run, this.where());
      throw new CriuError(message, run, errors);
    }
    return run;
  }

  private spawn(
    action: string,
    argv: string[],
    log: string | null,
    timeoutMs: number,
    psSocket?: PsConnection,
  ): Promise<CriuRun> {
    let cmd: string;
    let args: string[];
    let env: NodeJS.ProcessEnv;
    if (this.site) {
      const c = this.site.command(argv);
      cmd = c.cmd;
      args = c.args;
      env = c.env;
    } else {
      cmd = argv[0];
      args = argv.slice(1);
      env = process.env;
    }
    const started = performance.now();
    return new Promise((resolve) => {
      // Its own process group, so that a timeout ends CRIU too, not only nsenter.
      const child = spawn(cmd, args, {
        env,
        stdio: psSocket ? ['ignore', 'pipe', 'pipe', 'pipe'] : ['ignore', 'pipe', 'pipe'],
        detached: true,
      });
      let stdout = '';
      let stderr = '';
      let timedOut = false;
      if (psSocket) {
        const end = child.stdio[PS_SOCKET_FD] as Socket | null;
        if (end) psSocket.attach(end);
      }
      const out = child.stdout as Readable;
      const err = child.stderr as Readable;
      out.on('data', (d: Buffer) => (stdout += d));
      err.on('data', (d: Buffer) => (stderr += d));
      const timer = setTimeout(() => {
        timedOut = true;
        try {
          if (child.pid) process.kill(-child.pid, 'SIGKILL');
        } catch {
          child.kill('SIGKILL');
        }
      }, timeoutMs);
      const done = (code: number | null, signal: NodeJS.Signals | null, extra = '') => {
        clearTimeout(timer);
        resolve({
          action,
          argv,
          code,
          signal,
          stdout,
          stderr: stderr + extra,
          log,
          logOnMachine: log ? this.onMachine(log) : null,
          durationMs: performance.now() - started,
          timedOut,
        });
      };
      child.on('error', (err) => done(127, null, `cannot run ${cmd}: ${err.message}\n`));
      if (!psSocket) child.on('close', (code, signal) => done(code, signal));
      else {
        // 'close' would wait for the page-server end too, which a lazy-pages daemon keeps after CRIU exits.
        let exited: [number | null, NodeJS.Signals | null] | null = null;
        let open = 2;
        const maybe = () => {
          if (exited && open === 0) done(...exited);
        };
        child.on('exit', (code, signal) => {
          exited = [code, signal];
          maybe();
        });
        for (const s of [out, err])
          s.on('close', () => {
            open--;
            maybe();
          });
      }
    });
  }

  /** `criu --version`: "4.1.1". */
  async version(): Promise<string> {
    const r = await this.run('--version', [], { log: false });
    const m = /Version:\s*(\S+)/.exec(r.stdout);
    if (!m) throw new CriuError(`criu --version printed no version${this.where()}: ${r.stdout}`, r, []);
    return m[1];
  }

  /** `criu check`. */
  check(): Promise<CriuRun> {
    return this.run('check', []);
  }

  /**
   * `criu dump -t PID -D IMAGES`; with `pageServer` the memory goes to that page server instead of the images
   * directory (--page-server --ps-socket: a socket pair, nothing listens). `leaveRunning` keeps the process
   * running (-R).
   */
  dump(opts: {
    pid: number;
    images: string;
    pageServer?: PsConnection;
    /**
     * `--lazy-pages`: the pages of anonymous private mappings stay in the stopped tasks, and CRIU serves them on
     * `pageServer`'s socket (src/criu/lazydump.ts) instead of streaming the dump to it.
     */
    lazy?: boolean;
    leaveRunning?: boolean;
    shellJob?: boolean;
    extra?: string[];
    timeoutMs?: number;
  }): Promise<CriuRun> {
    const args = ['-t', String(opts.pid), '-D', opts.images];
    if (opts.lazy) args.push('--lazy-pages');
    if (opts.pageServer)
      args.push(...(opts.lazy ? [] : ['--page-server']), '--ps-socket', String(PS_SOCKET_FD));
    if (opts.leaveRunning) args.push('-R');
    if (opts.shellJob) args.push('--shell-job');
    args.push(...(opts.extra ?? []));
    this.prepare();
    mkdirSync(this.onMachine(opts.images), { recursive: true, mode: 0o700 });
    return this.run('dump', args, {
      timeoutMs: opts.timeoutMs,
      ...(opts.pageServer ? { psSocket: opts.pageServer } : {}),
    });
  }

  /** `criu restore -D IMAGES`, detached (-d) unless `detach` is false. */
  restore(opts: {
    images: string;
    detach?: boolean;
    pidfile?: string;
    shellJob?: boolean;
    extra?: string[];
    timeoutMs?: number;
    /** Handed to the wrapper that runs CRIU (a lazy restore's `criu lazy-pages` asks it for the pages). */
    psSocket?: PsConnection;
  }): Promise<CriuRun> {
    const args = ['-D', opts.images];
    if (opts.detach ?? true) args.push('-d');
    if (opts.pidfile) args.push('--pidfile', opts.pidfile);
    if (opts.shellJob) args.push('--shell-job');
    args.push(...(opts.extra ?? []));
    this.prepare();
    return this.run('restore', args, {
      timeoutMs: opts.timeoutMs,
      ...(opts.psSocket ? { psSocket: opts.psSocket } : {}),
    });
  }
}
