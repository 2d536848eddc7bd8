/**
 * Starts the test writer (writer.c compiled with cc/gcc, else writer.py with python3) and talks to it line by
 * line. Shared by test/live-memory.test.ts and bench/hash-scan.ts.
 */
import { spawn, spawnSync, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));

/** The content of every 8-byte word w of page i written with tag t: (t << 48) | (i << 16) | w. */
export function expectedPage(page: number, tag: number): Buffer {
  const b = Buffer.allocUnsafe(4096);
  const base = (BigInt(tag) << 48n) | (BigInt(page) << 16n);
  for (let w = 0; w < 512; w++) b.writeBigUInt64LE(base | BigInt(w), w * 8);
  return b;
}

export type WriterKind = 'c' | 'python';

export interface WriterProgram {
  kind: WriterKind;
  command: string;
  args: string[];
  /** e.g. "C (cc)", "python3" */
  label: string;
}

const programs = new Map<WriterKind, WriterProgram | null>();

/** The writer as a C program compiled with cc or gcc into a temporary directory, or null without a compiler. */
function buildC(): WriterProgram | null {
  for (const cc of ['cc', 'gcc']) {
    const dir = mkdtempSync(join(tmpdir(), 'precog-writer-'));
    const exe = join(dir, 'writer');
    const r = spawnSync(cc, ['-O2', '-o', exe, join(here, 'writer.c')], { encoding: 'utf8' });
    if (r.status === 0) {
      process.once('exit', () => rmSync(dir, { recursive: true, force: true }));
      return { kind: 'c', command: exe, args: [], label: `C (${cc})` };
    }
    rmSync(dir, { recursive: true, force: true });
  }
  return null;
}

function findPython(): WriterProgram | null {
  const r = spawnSync('python3', ['-c', 'import ctypes'], { encoding: 'utf8' });
  return r.status === 0
    ? { kind: 'python', command: 'python3', args: [join(here, 'writer.py')], label: 'python3' }
    : null;
}

/** How to run the writer of the given kind here, or null. */
export function writerProgram(kind: WriterKind): WriterProgram | null {
  if (!programs.has(kind)) programs.set(kind, kind === 'c' ? buildC() : findPython());
  return programs.get(kind)!;
}

/** The preferred writer: C when a compiler exists (PRECOG_TEST_WRITER=python forces Python), else Python. */
export function defaultWriter(): WriterProgram | null {
  if (process.env.PRECOG_TEST_WRITER === 'python') return writerProgram('python');
  return writerProgram('c') ?? writerProgram('python');
}

export interface Writer {
  readonly pid: number;
  /** Start address of the buffer and its size in pages. */
  readonly addr: number;
  readonly pages: number;
  /** e.g. "C (cc)", "python3" */
  readonly label: string;
  /** Sends one command line and resolves with the writer's one-line answer. */
  command(line: string): Promise<string>;
  /** Sends quit, waits for the exit (kills after 2 s). */
  stop(): Promise<void>;
}

/** `prefix`: a command the writer runs under (e.g. unshare into a PID namespace); `pid` is then the prefix's. */
export async function startWriter(
  mib: number,
  prog = defaultWriter(),
  prefix: readonly string[] = [],
): Promise<Writer> {
  if (!prog) throw new Error('no C compiler and no python3: cannot run the test writer');
  const argv = [...prefix, prog.command, ...prog.args, String(mib)];
  const child: ChildProcessWithoutNullStreams = spawn(argv[0], argv.slice(1), {
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]();
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const next = async (): Promise<string> => {
    const r = await lines.next();
    if (r.done) throw new Error(`writer exited: ${stderr.trim()}`);
    return r.value;
  };
  const ready = (await next()).split(' ');
  if (ready[0] !== 'ready') throw new Error(`writer said "${ready.join(' ')}"`);
  return {
    pid: child.pid!,
    addr: parseInt(ready[1], 16),
    pages: Number(ready[2]),
    label: prog.label,
    async command(line: string) {
      child.stdin.write(line + '\n');
      return next();
    },
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill('SIGCONT');
      child.stdin.end('quit\n');
      const timer = setTimeout(() => child.kill('SIGKILL'), 2000);
      await exited;
      clearTimeout(timer);
    },
  };
}
