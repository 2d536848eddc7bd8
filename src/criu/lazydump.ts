/**
 * The lazy dump route of a switchover (`--dump-via lazy`): `criu dump --lazy-pages` writes every image except the
 * pages of anonymous private mappings (their pagemap entries say PE_LAZY) and then waits, with the tasks still
 * stopped, to serve those pages to a lazy-pages daemon. precog never asks it for a page (CRIU serves them with
 * tee(2), which this kernel refuses with EPERM: docs/migration.md); it reads them itself from the stopped tasks'
 * /proc/PID/mem, compares each with what the destination holds, and then ends CRIU's page server with CLOSE. The
 * dump thus costs CRIU's non-memory state plus a read of the memory, not a copy of it into image files that are then
 * read back.
 *
 * CRIU's page-server end is a socket pair it is spawned with (--ps-socket): nothing listens.
 */
import { spawn, spawnSync } from 'node:child_process';
import { closeSync, openSync, readSync } from 'node:fs';
import type { Socket } from 'node:net';
import { PS_IOV_CLOSE, type PsConnection } from './pageserver.ts';
import { CriuError, type CommandSite, type CriuRunner } from './runner.ts';

/**
 * precog's end of the page-server connection of a `criu dump --lazy-pages --ps-socket`: it only ever closes the
 * session, once precog has read the memory itself.
 */
export class LazyDumpEnd implements PsConnection {
  private socket: Socket | undefined;
  private closed = false;
  private closeOnAttach = false;

  attach(socket: Socket): void {
    this.socket = socket;
    // CRIU's answer to CLOSE (a 4-byte status) is read and dropped; an early end of CRIU shows in its exit status.
    socket.on('data', () => {});
    socket.on('error', () => {});
    if (this.closeOnAttach) this.close();
  }

  /**
   * Ends CRIU's lazy page server: CLOSE in the 32-byte header of CRIU >= 4.2. An older CRIU reads its 24-byte header
   * from the same bytes (the command is the first word in both) and never reads the rest. Before CRIU is spawned:
   * sent as soon as it is (CRIU reads it once its images are written).
   */
  close(): void {
    if (!this.socket) {
      this.closeOnAttach = true;
      return;
    }
    if (this.closed) return;
    this.closed = true;
    const iov = Buffer.alloc(32);
    iov.writeUInt32LE(PS_IOV_CLOSE, 0);
    this.socket.write(iov);
  }

  /** Drops the connection without CLOSE: CRIU's lazy dump fails and lets the tasks go (used on errors). */
  destroy(): void {
    this.closed = true;
    this.socket?.destroy();
  }
}

/**
 * Reads pages of stopped processes through /proc/PID/mem. `pidOf` maps a task as the dump names it to its PID on
 * this machine (undefined: not found, an error naming the task).
 */
export class FrozenMemoryReader {
  private readonly fds = new Map<number, number>();
  private readonly pids = new Map<number, number>();

  constructor(private readonly pidOf: (criuId: number) => number | undefined) {}

  /** Fills out[0, len) with the task's memory from vaddr; throws naming the task and address on a short read. */
  read(criuId: number, vaddr: bigint, out: Buffer, len: number): void {
    const fd = this.fd(criuId);
    let got = 0;
    while (got < len) {
      let n: number;
      try {
        n = readSync(fd, out, got, len - got, Number(vaddr) + got);
      } catch (err) {
        throw new Error(
          `reading the memory of task ${criuId} at 0x${(vaddr + BigInt(got)).toString(16)}: ${(err as Error).message}`,
        );
      }
      if (n === 0)
        throw new Error(
          `reading the memory of task ${criuId} at 0x${(vaddr + BigInt(got)).toString(16)}: end of file`,
        );
      got += n;
    }
  }

  /** The machine PID of a task as the dump names it (looked up once); throws naming a task that is not here. */
  pid(criuId: number): number {
    let pid = this.pids.get(criuId);
    if (pid !== undefined) return pid;
    pid = this.pidOf(criuId);
    if (pid === undefined)
      throw new Error(`task ${criuId} of the dump is not a process of the container on this host`);
    this.pids.set(criuId, pid);
    return pid;
  }

  private fd(criuId: number): number {
    let fd = this.fds.get(criuId);
    if (fd !== undefined) return fd;
    fd = openSync(`/proc/${this.pid(criuId)}/mem`, 'r');
    this.fds.set(criuId, fd);
    return fd;
  }

  close(): void {
    for (const fd of this.fds.values()) closeSync(fd);
    this.fds.clear();
    this.pids.clear();
  }
}

/**
 * Whether `criu dump --lazy-pages` works where RUNNER runs CRIU (SITE: how to start a process there; default here):
 * the lazy dump of a throwaway process started for it (sh, then sleep, its own session, killed afterwards),
 * whose page server is ended at once with CLOSE. null when it works; otherwise CRIU's error. No container is
 * touched, so a refusal found here costs no stop: a migration asks this before it stops its container.
 */
export async function probeLazyDump(runner: CriuRunner, site?: CommandSite): Promise<string | null> {
  // Its own session inside the host (CRIU refuses a task whose session leader is outside its PID namespace); the
  // inner shell says its PID as the host sees it, then becomes sleep with nothing of ours open.
  const argv = ['setsid', 'sh', '-c', 'echo $$; exec sleep 300 </dev/null >/dev/null 2>&1'];
  const run = (a: string[]) => (site ? site.command(a) : { cmd: a[0], args: a.slice(1), env: process.env });
  const c = run(argv);
  const child = spawn(c.cmd, c.args, { env: c.env, stdio: ['ignore', 'pipe', 'ignore'], detached: true });
  let pid = 0;
  try {
    pid = await new Promise<number>((resolve, reject) => {
      let out = '';
      // Its first line (a wrapper such as nsenter may keep the pipe open until the process ends).
      child.stdout!.setEncoding('utf8').on('data', (d: string) => {
        out += d;
        const line = /^(\d+)\n/.exec(out);
        if (line) resolve(Number(line[1]));
      });
      child.stdout!.on('end', () =>
        reject(new Error(`the throwaway process did not start (${c.cmd}: "${out.trim()}")`)),
      );
      child.on('error', (err) => reject(new Error(`cannot start ${c.cmd}: ${err.message}`)));
    });
    const end = new LazyDumpEnd();
    end.close();
    try {
      await runner.dump({
        pid,
        images: runner.path('lazy-probe'),
        lazy: true,
        leaveRunning: true,
        shellJob: true,
        pageServer: end,
        timeoutMs: 60_000,
      });
      return null;
    } catch (err) {
      if (!(err instanceof CriuError)) throw err;
      return err.errors.length ? err.errors.join('; ') : err.message.split('\n')[0];
    } finally {
      end.destroy();
    }
  } finally {
    try {
      if (child.pid) process.kill(-child.pid, 'SIGKILL');
    } catch {
      // already gone
    }
    if (pid > 0) {
      // Its PID as the host sees it: ended there.
      const k = run(['kill', '-KILL', String(pid)]);
      spawnSync(k.cmd, k.args, { env: k.env, stdio: 'ignore', timeout: 10_000 });
    }
  }
}
