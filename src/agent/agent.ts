import {
  appendFileSync,
  existsSync,
  lstatSync,
  mkdirSync,
  readdirSync,
  renameSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import net from 'node:net';
import { hostname } from 'node:os';
import tls from 'node:tls';
import { join } from 'node:path';
import { WallClock } from '../util/clock.ts';
import { releaseBuffer, takeBuffer } from '../util/arena.ts';
import { MigrationDestination } from '../engine/destination.ts';
import {
  FileBacking,
  MemoryBacking,
  ProcessFilesBacking,
  type PageBacking,
  type PageStore,
} from '../engine/pagestore.ts';
import type { Layout } from '../util/interfaces.ts';
import { decodeFrame, encodeFrame, FrameType, jsonFrame, parseJson } from '../transport/frame.ts';
import type { Identity } from '../transport/pki.ts';
import { FrameReader } from '../transport/stream.ts';
import { certificateProblem, peerName, tlsServerOptions, type Endpoint } from '../transport/tls.ts';
import type { Logger } from '../util/log.ts';
import {
  PARENT_DIR,
  rebuildCheckpoint,
  rebuildForPostcopy,
  rebuildFromFiles,
  StateReceiver,
  type StoredState,
  type FilesRebuildResult,
  type RebuildResult,
} from '../migrate/state.ts';
import { ContainerPostcopy } from './postcopy.ts';
import { ContainerRestorer } from './restore.ts';
import { ControlServer, LIMITS, num } from './control.ts';
import { cannotMove } from '../runtime/check.ts';
import { NETWORK_NAME, type MovableRuntime } from '../runtime/registry.ts';
import { RESTORE_FAILED, type ContainerHello } from '../engine/messages.ts';
import { ProtocolError } from '../util/errors.ts';

export interface AgentOptions {
  listen: Endpoint;
  stateDir: string;
  /** Mutual TLS identity; null only for the explicit insecure test mode. */
  identity: Identity | null;
  /** Migrations larger than this keep their pages in a file under the state directory. */
  spillBytes: number;
  /** How long a client may take to finish the TLS handshake (default HANDSHAKE_TIMEOUT_MS). */
  handshakeTimeoutMs?: number;
  log: Logger;
  /** A session with no traffic for this long is dropped (and an unfinished migration discarded). 0: never. */
  idleTimeoutMs?: number;
  /**
   * The container runtimes this agent restores with, by name (a container's HELLO names one). Absent: the agent
   * refuses containers, and takes plain memory migrations only.
   */
  runtime?: (name: string) => MovableRuntime;
  /** This host's name for the runtime (default: the certificate's name). */
  hostName?: string;
  /** Bounds on connections and sessions (AGENT_LIMITS by default). */
  limits?: Partial<AgentLimits>;
}

/** What one agent takes at once, and how slowly (docs/security.md, "Limits"). */
export interface AgentLimits {
  /** Connections still in the TLS handshake at once; a new one beyond closes the oldest. */
  pendingHandshakes: number;
  /** Authenticated sessions at once; one beyond gets an ERROR and is closed. */
  sessions: number;
  /** Longest a frame may take from its first byte to its last (a slow or stalled sender is dropped); 0: none. */
  frameTimeoutMs: number;
  /** Bytes of non-memory state (STATE frames) one migration may send. */
  stateBytes: number;
  /**
   * Pages of all migrations being received at once: each declared page costs per-page state (about 10 bytes)
   * before anything arrives, so many sessions at the per-migration limit would together exhaust memory.
   */
  pagesInFlight: number;
}

/** Pages of all migrations received at once: PRECOG_MAX_PAGES_IN_FLIGHT, default 2^25 (128 GiB of memory). */
export const maxPagesInFlight = (): number => {
  const v = Number(process.env.PRECOG_MAX_PAGES_IN_FLIGHT);
  return Number.isSafeInteger(v) && v > 0 ? v : 2 ** 25;
};

/** What a source whose state is over the limit is told. */
const STATE_LIMIT =
  "this agent's limit (PRECOG_MAX_STATE_BYTES): the container writes too much outside its memory to move this way";

/** The most STATE bytes one migration may send: PRECOG_MAX_STATE_BYTES, default 2 GiB. */
export const maxStateBytes = (): number => {
  const v = Number(process.env.PRECOG_MAX_STATE_BYTES);
  return Number.isSafeInteger(v) && v > 0 ? v : 2 ** 31;
};

export const AGENT_LIMITS: AgentLimits = {
  pendingHandshakes: 1024,
  sessions: 1024,
  frameTimeoutMs: 120_000,
  stateBytes: 2 ** 31,
  pagesInFlight: 2 ** 25,
};

/** JS's own error classes: a bug here, not something the peer did; the peer gets no internals. */
function isInternal(err: unknown): boolean {
  return (
    err instanceof TypeError ||
    err instanceof RangeError ||
    err instanceof ReferenceError ||
    err instanceof SyntaxError
  );
}

/**
 * Log lines for connections refused before a session (failed or slow TLS handshakes, closed in a flood): the first
 * 20 in 10 s each with its peer and reason, the rest counted by reason in one line at the end of the 10 s.
 */
class RefusalLog {
  private inWindow = 0;
  private readonly counts = new Map<string, number>();
  private timer: NodeJS.Timeout | null = null;
  constructor(private readonly log: Logger) {}

  note(reason: string, remote: string, what: string): void {
    if (++this.inWindow <= 20) this.log.warn({ remote, reason }, what);
    else this.counts.set(reason, (this.counts.get(reason) ?? 0) + 1);
    this.timer ??= setTimeout(() => this.flush(), 10_000).unref();
  }

  flush(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.inWindow = 0;
    if (this.counts.size === 0) return;
    const byReason = Object.fromEntries(this.counts);
    const n = [...this.counts.values()].reduce((a, b) => a + b, 0);
    this.counts.clear();
    this.log.warn({ refused: n, byReason }, `${n} more connections refused in the last 10 s`);
  }
}

/** The message a source gets for a failure here: a full disk says so, and what to do. */
function explain(err: NodeJS.ErrnoException, stateDir: string): string {
  if (err.code === 'ENOSPC' || err.code === 'EDQUOT')
    return `destination out of disk space in ${stateDir} (${err.code}): free space there or give the agent another --state-dir`;
  return err.message;
}

/** Sources send frames continuously and wait at most for a restore; 2 minutes of silence means they are gone. */
export const DEFAULT_SESSION_IDLE_MS = 120_000;

/** What a committed migration leaves in the state directory. */
export const COMMITTED_FILES = {
  layout: 'layout.json',
  pages: 'pages.img',
  /** The STATE bytes of a migration of memory, when its source sent any, as they came. */
  state: 'state.bin',
  /**
   * A container's non-memory state (CRIU images, writable layer): a directory, one file per section
   * (StateReceiver).
   */
  containerState: 'state',
  /** A container's checkpoint rebuilt from the pages and the state (images/, upper/, state.json): no pages.img. */
  checkpoint: 'checkpoint',
  done: 'COMMITTED',
} as const;

/**
 * A precog agent: accepts migration sessions from authenticated peers, keeps each one's pages (in memory, or in
 * a file above the spill size) and persists them when the source commits. A session that breaks (bad frame, lost
 * peer, abort) is dropped and its files removed; other sessions go on.
 */
export class Agent {
  private readonly o: AgentOptions;
  private readonly limits: AgentLimits;
  private server: net.Server | null = null;
  private readonly sockets = new Set<net.Socket>();
  /** Connections in the TLS handshake, oldest first. */
  private readonly pending = new Set<net.Socket>();
  private evicting = 0;
  /** Pages declared by the migrations being received now (their per-page state is allocated). */
  private pagesInFlight = 0;
  private refusals: RefusalLog;
  /**
   * Container post-copies after their switchover, by migration id, with the session that feeds them (null once it
   * is gone): kept (lazy page server, store, waiting requests) until the daemon is done or the lazy timeout closes
   * them, so that a source whose link was lost can take them up again (HELLO of purpose 'postcopy-resume'). A
   * new session takes over from an old one that has not noticed yet that its link is dead.
   */
  private readonly postcopies = new Map<
    string,
    { p: ContainerPostcopy; socket: net.Socket | null; restorer: ContainerRestorer | null }
  >();

  private readonly control: ControlServer;
  /** This host's name for the runtime and the moves it starts (default: the certificate's name). */
  private readonly host: string;

  constructor(options: AgentOptions) {
    this.o = options;
    this.limits = {
      ...AGENT_LIMITS,
      stateBytes: maxStateBytes(),
      pagesInFlight: maxPagesInFlight(),
      ...options.limits,
    };
    this.refusals = new RefusalLog(options.log);
    this.host = options.hostName ?? options.identity?.name ?? hostname();
    this.control = new ControlServer({
      host: this.host,
      identity: options.identity,
      runtime: options.runtime,
      stateDir: options.stateDir,
      log: options.log,
    });
  }

  async start(): Promise<Endpoint> {
    mkdirSync(this.o.stateDir, { recursive: true, mode: 0o700 });
    this.cleanStateDir();
    if (this.o.identity) {
      const own = certificateProblem(this.o.identity);
      if (own) this.o.log.error({ problem: own }, 'this agent will be refused by every peer');
    }
    const onSocket = (s: net.Socket): void => this.serve(s);
    const server = this.o.identity
      ? tls.createServer(tlsServerOptions(this.o.identity, this.o.handshakeTimeoutMs), onSocket)
      : net.createServer(onSocket);
    if (server instanceof tls.Server) {
      // Connections in the handshake are bounded: beyond the limit the oldest goes (a flood of raw connections
      // cannot hold every fd, and a real client's handshake takes milliseconds).
      server.on('connection', (raw: net.Socket) => {
        if (this.pending.size >= this.limits.pendingHandshakes) {
          const oldest = this.pending.values().next().value as net.Socket;
          this.pending.delete(oldest);
          this.evicting++;
          oldest.destroy();
        }
        this.pending.add(raw);
        raw.once('close', () => this.pending.delete(raw));
      });
      server.on('secureConnection', (s: tls.TLSSocket) => {
        const raw = (s as unknown as { _parent?: net.Socket })._parent;
        if (raw) this.pending.delete(raw);
      });
      server.on('tlsClientError', (err, socket) => {
        const remote = `${socket.remoteAddress}:${socket.remotePort}`;
        if (this.evicting > 0 && /hang up|ECONNRESET/.test(err.message)) {
          this.evicting--;
          this.refusals.note(
            `closed in the handshake: more than ${this.limits.pendingHandshakes} connections were in it`,
            remote,
            'refused a connection',
          );
        } else
          this.refusals.note(
            err.message,
            remote,
            'refused a client without a valid certificate from this CA, or that did not finish the TLS handshake',
          );
        // Node leaves the socket of a failed or timed-out handshake open: it goes now (an fd per idle connection).
        socket.destroy();
      });
    }
    this.server = server;
    server.listen(this.o.listen.port, this.o.listen.host);
    await new Promise<void>((resolve, reject) => {
      server.once('listening', resolve);
      server.once('error', reject);
    });
    const addr = server.address() as net.AddressInfo;
    this.o.log.info(
      { address: `${addr.address}:${addr.port}`, tls: this.o.identity !== null, host: this.o.identity?.name },
      'agent listening',
    );
    return { host: addr.address, port: addr.port };
  }

  /** The restorer for a container's HELLO: refuses at once (before the source stops) what cannot be restored. */
  private restorerFor(c: ContainerHello | undefined, log: Logger): ContainerRestorer | null {
    if (!c) return null; // an older source that restores itself: the agent only keeps the checkpoint
    if (!this.o.runtime)
      throw new ProtocolError(
        `this agent restores no containers (it was started without a runtime); start it with --runtime`,
      );
    // What the source asks for is bounded like any peer's input.
    if (c.restore !== 'lazy' && c.restore !== 'full')
      throw new ProtocolError('a container HELLO must ask for a lazy or a full restore');
    if (c.lazyTimeoutMs !== undefined)
      num(c.lazyTimeoutMs, "the source's lazy timeout (ms)", LIMITS.lazyTimeout);
    if (c.linkTimeoutMs !== undefined)
      num(c.linkTimeoutMs, "the source's link timeout (ms)", LIMITS.linkTimeout);
    // Refused now, before the source stops its container, when this host cannot restore one (no CRIU, too old...).
    const why = cannotMove();
    if (why) throw new ProtocolError(`this host cannot restore containers: ${why}`);
    const rt = this.o.runtime(c.runtime);
    const host = this.host;
    const lacks = rt.cannotRun();
    if (lacks) throw new ProtocolError(`this host cannot restore ${c.runtime} containers: ${lacks}`);
    if (rt.has(c.name, host))
      throw new ProtocolError(
        `a container named "${c.name}" already exists on ${host}: remove it there first (or move it away)`,
      );
    if (c.image && !rt.hasImage(c.image))
      throw new ProtocolError(
        `the image container ${c.name} needs (${c.image}) is not on this host: install the same image here ` +
          `(${rt.imageHint})`,
      );
    if (c.networks !== undefined) {
      if (
        !Array.isArray(c.networks) ||
        c.networks.length > 64 ||
        !c.networks.every((n) => typeof n === 'string' && NETWORK_NAME.test(n))
      )
        throw new ProtocolError('a container HELLO names its networks as a list of at most 64 network names');
      const missing = c.networks.filter((n) => !rt.hasNetwork?.(n));
      if (missing.length > 0)
        throw new ProtocolError(
          `the network${missing.length > 1 ? 's' : ''} container ${c.name} is attached to ` +
            `(${missing.join(', ')}) ${missing.length > 1 ? 'are' : 'is'} not on this host: ` +
            (rt.networkHint ?? `the ${c.runtime} runtime has no networks here`),
        );
    }
    log.info(
      { container: c.name, from: c.from, runtime: c.runtime, restore: c.restore },
      'container migration',
    );
    return new ContainerRestorer(rt, c, host, log);
  }

  /**
   * At start: what a previous run of the agent left unfinished goes (a migration directory without COMMITTED, the
   * `.part` files of committed ones: the previous process died mid-session, its sessions are gone).
   */
  private cleanStateDir(): void {
    for (const name of readdirSync(this.o.stateDir)) {
      if (name === 'outgoing' || !/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/.test(name)) continue;
      const dir = join(this.o.stateDir, name);
      try {
        if (!lstatSync(dir).isDirectory()) continue;
        if (!existsSync(join(dir, COMMITTED_FILES.done))) {
          rmSync(dir, { recursive: true, force: true });
          this.o.log.warn({ migration: name }, 'removed an unfinished migration a previous agent run left');
          continue;
        }
        for (const f of readdirSync(dir))
          if (f.endsWith('.part')) {
            rmSync(join(dir, f), { recursive: true, force: true });
            this.o.log.warn({ migration: name, file: f }, 'removed a partial file a previous agent run left');
          }
      } catch (err) {
        this.o.log.warn({ migration: name, reason: (err as Error).message }, 'could not clean up');
      }
    }
  }

  async close(): Promise<void> {
    this.refusals.flush();
    // Moves away from here end first (cancelled: their sources thaw), and their clients hear it.
    await this.control.stop(15_000);
    for (const s of this.pending) s.destroy();
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
  }

  private serve(socket: net.Socket): void {
    if (this.sockets.size >= this.limits.sessions) {
      this.refusals.note(
        `more than ${this.limits.sessions} sessions at once`,
        peerName(socket),
        'refused a session',
      );
      socket.end(
        encodeFrame(
          FrameType.Error,
          Buffer.from(
            `this agent has ${this.sockets.size} sessions open, its limit: try again when fewer migrations run`,
          ),
        ),
      );
      setTimeout(() => socket.destroy(), 1000).unref();
      return;
    }
    this.sockets.add(socket);
    socket.setNoDelay(true);
    // A source that went silent (cut link, dead host) never closes its side: drop the session after a while.
    const idle = this.o.idleTimeoutMs ?? DEFAULT_SESSION_IDLE_MS;
    // A container's post-copy with pages missing: the source pushes all the time, so its own link timeout (told
    // in HELLO) is the limit; the copy here is frozen as soon as the source is found lost.
    let postcopyIdle = 0;
    if (idle > 0) socket.setTimeout(idle);
    socket.on('timeout', () => {
      // Every page here and the lazy copy-in still running: the source is silent by design, waiting for DONE_ACK.
      if (postcopy && postcopy.missing() === 0 && gate) {
        socket.setTimeout(idle);
        return;
      }
      const seconds = (postcopy && postcopyIdle ? postcopyIdle : idle) / 1000;
      log.warn({ seconds }, 'no traffic from the source; dropping the session');
      socket.destroy();
    });
    let log = this.o.log.child({ peer: peerName(socket) });
    log.info('session opened');
    const clock = new WallClock();
    const reader = new FrameReader();
    const dirOf = (id: string): string => join(this.o.stateDir, id);
    let held: Buffer | null = null;
    // A container's post-copy: the lazy page server, started with the migration, used from the switchover on.
    let postcopy: ContainerPostcopy | null = null;
    let postcopyFailed: Error | null = null;
    // A container this agent restores itself (HELLO's container): after COMMIT or SWITCHOVER.
    let restorer: ContainerRestorer | null = null;
    // Replies wait here while the restore runs: RESUMED goes out once the container runs (or an ERROR instead).
    let gate: Promise<unknown> | null = null;
    const queued: Buffer[] = [];
    const send = (frame: Buffer): void => {
      if (gate) queued.push(frame);
      else if (!socket.destroyed) socket.write(frame);
    };
    /** Holds the replies until `work` settles; `ok` then rewrites them (RESUMED with the restore's report). */
    const hold = (
      work: Promise<unknown>,
      ok: (frames: Buffer[]) => Buffer[],
      failed: (err: Error) => void,
    ): void => {
      // The source waits in silence meanwhile, and takes silence longer than its link timeout for a dead link: an
      // EVENT now and then (which it leaves unread) keeps the link alive during a long restore or copy-in.
      const every = Math.max(50, Math.min(1000, (restorer?.linkTimeoutMs || 3000) / 3));
      const alive = setInterval(() => {
        if (!socket.destroyed) socket.write(jsonFrame(FrameType.Event, { event: 'restoring' }));
      }, every);
      work.finally(() => clearInterval(alive)).catch(() => {});
      const g = work.then(
        () => {
          if (gate !== g) return;
          gate = null;
          for (const f of ok(queued.splice(0))) send(f);
        },
        (err: Error) => {
          if (gate !== g) return;
          gate = null;
          queued.length = 0;
          const msg = explain(err as NodeJS.ErrnoException, this.o.stateDir);
          log.warn({ reason: msg }, 'container restore failed');
          failed(err);
          refused = true;
          if (!socket.destroyed) socket.end(encodeFrame(FrameType.Error, Buffer.from(msg)));
        },
      );
      gate = g;
    };
    const release = (): void => {
      if (held) releaseBuffer(held);
      held = null;
    };
    /** Whether this session made its migration's directory (and so may remove it). */
    let ownsDir = false;
    let stateBytes = 0;
    /** A container's state being received (STATE frames), into its own directory. */
    let stateRx: StateReceiver | null = null;
    /** The whole state, once the source commits or switches over (an InputError when the source sent it short). */
    const receivedState = (id: string, step: 'committed' | 'switched over'): StoredState => {
      if (!stateRx)
        throw new Error(`migration ${id} of a container ${step} without its state (CRIU images, layer)`);
      return stateRx.finish();
    };
    /** Pages this session counts in the agent's pages in flight, until it closes. */
    let declared = 0;
    const dest = new MigrationDestination({
      restoreCost: 0,
      backing: (layout: Layout, id: string, hello): PageBacking => {
        log = log.child({ migration: id });
        const bytes = layout.pageCount * layout.pageSize;
        if (this.pagesInFlight + layout.pageCount > this.limits.pagesInFlight)
          throw new ProtocolError(
            `this agent is receiving ${this.pagesInFlight} pages already; ${layout.pageCount} more would pass its ` +
              `limit of ${this.limits.pagesInFlight} (PRECOG_MAX_PAGES_IN_FLIGHT): try again when a migration is done`,
          );
        this.pagesInFlight += layout.pageCount;
        declared = layout.pageCount;
        // One directory per migration id, made by this session alone: an id in use (a session receiving it, or a
        // committed migration) is refused, and this session never removes a directory it did not make.
        try {
          mkdirSync(dirOf(id), { mode: 0o700 });
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code === 'EEXIST')
            throw new ProtocolError(
              `migration id ${id} is in use on this agent (a migration in progress or committed under it); ` +
                'start the migration again: it gets a new id',
            );
          throw err;
        }
        ownsDir = true;
        log.info(
          {
            pages: layout.pageCount,
            bytes,
            spill: bytes > this.o.spillBytes,
            purpose: hello.purpose ?? 'memory',
          },
          'migration started',
        );
        if (hello.purpose === 'criu-images') restorer = this.restorerFor(hello.container, log);
        if (hello.purpose === 'criu-images' && hello.container?.switchover === 'postcopy')
          ContainerPostcopy.prepare(log).then(
            (p) => {
              if (socket.destroyed) p.close();
              else postcopy = p;
            },
            (err: Error) => (postcopyFailed = err),
          );
        if (hello.purpose === 'criu-images') {
          // A container: one file per process, written as pages arrive; at commit they are the parent image of the
          // final dump as they stand (the commit then writes no page of memory).
          const parent = join(dirOf(id), COMMITTED_FILES.checkpoint, 'images', PARENT_DIR);
          mkdirSync(parent, { recursive: true, mode: 0o700 });
          return new ProcessFilesBacking(layout, (k) => join(parent, `pages-${k + 1}.img`));
        }
        if (bytes > this.o.spillBytes)
          return new FileBacking(layout, join(dirOf(id), `${COMMITTED_FILES.pages}.part`));
        // Receive buffers are reused across migrations: fresh memory costs a page fault per 4 KiB on first touch.
        // Their old contents never leak: a migration commits only when every page has arrived.
        held = takeBuffer(bytes);
        return new MemoryBacking(layout, held);
      },
      state: (chunk, id) => {
        stateBytes += chunk.length;
        if (stateBytes > this.limits.stateBytes)
          throw new ProtocolError(
            `the source's state is over ${this.limits.stateBytes} bytes, ${STATE_LIMIT}`,
          );
        if (dest.hello?.purpose !== 'criu-images') {
          appendFileSync(join(dirOf(id), `${COMMITTED_FILES.state}.part`), chunk, { mode: 0o600 });
          return;
        }
        // A container's: each chunk goes to disk as it comes, the header checked as soon as it is whole, and the
        // sizes it declares against the limit.
        stateRx ??= new StateReceiver(
          join(dirOf(id), `${COMMITTED_FILES.containerState}.part`),
          `migration ${id}'s state`,
          { bytes: this.limits.stateBytes, hint: STATE_LIMIT },
        );
        stateRx.push(chunk);
      },
      commit: (store, id) => {
        const t0 = performance.now();
        persist(store, id);
        if (restorer) {
          // The container runs here before RESUMED goes out (a lazy restore: once every page is in); the source
          // removes its copy only on RESUMED, and thaws on the ERROR that replaces it when the restore fails.
          const r = restorer;
          r.commitMs = performance.now() - t0;
          // What is left of the migration here (layout, state) goes once the restore is done either way.
          const restoring = r.restore(join(dirOf(id), COMMITTED_FILES.checkpoint), { lazyWait: true });
          restoring.then(
            () => rmSync(dirOf(id), { recursive: true, force: true }),
            () => rmSync(dirOf(id), { recursive: true, force: true }),
          );
          hold(
            restoring,
            (frames) => frames.map((f) => r.withReport(f)),
            () => r.discard(),
          );
        }
      },
      resume: (store) => {
        // A container's post-copy switchover: the checkpoint for `criu restore --lazy-pages`, then the lazy page
        // server answers from the store and asks the source for what is missing.
        if (!postcopy)
          throw new ProtocolError(
            `post-copy switchover, but the lazy page server is not running${postcopyFailed ? `: ${postcopyFailed.message}` : ''}`,
          );
        const id = dest.migrationId;
        const dir = dirOf(id);
        const state = receivedState(id, 'switched over');
        const t0 = performance.now();
        store.backing.flush();
        const r = rebuildForPostcopy(
          state,
          store.layout,
          (g) => store.present.get(g),
          (first, count) => store.backing.readRun(first, count),
          join(dir, COMMITTED_FILES.checkpoint),
          `migration ${id}'s state`,
        );
        writeFileSync(join(dir, COMMITTED_FILES.layout), JSON.stringify(store.layout));
        renameSync(state.dir, join(dir, COMMITTED_FILES.containerState));
        writeFileSync(join(dir, COMMITTED_FILES.done), new Date().toISOString());
        postcopy.attach(store, r, send);
        const p = postcopy;
        this.postcopies.set(id, { p, socket, restorer });
        if (restorer) {
          // criu restore --lazy-pages here, its daemon asking this agent's page server. RESUMED goes out now, so
          // that the source pushes pages and answers faults while the restore runs (the restorer itself may fault
          // on a page that is not here yet); the restore's report comes with DONE_ACK. A restore that fails
          // says so in an ERROR naming RESTORE_FAILED: the container never ran here, so the source may thaw.
          const rs = restorer;
          rs.commitMs = performance.now() - t0;
          const server = p.server;
          postcopyIdle = rs.linkTimeoutMs;
          if (postcopyIdle > 0) socket.setTimeout(postcopyIdle);
          rs.restore(join(dir, COMMITTED_FILES.checkpoint), { lazyWait: false, pageServer: server }).catch(
            (err: Error) => {
              log.warn({ reason: err.message }, 'post-copy restore failed');
              refused = true;
              if (!socket.destroyed)
                socket.end(encodeFrame(FrameType.Error, Buffer.from(`${RESTORE_FAILED}: ${err.message}`)));
              p.close();
            },
          );
        }
        // Its files go when it closes (the daemon is done, or the lazy timeout).
        p.onClose = () => {
          if (this.postcopies.get(id)?.p === p) this.postcopies.delete(id);
          // Also removed by the source's side once the move is done (the same directory seen through the host's
          // overlay: ESTALE here then); a failure is logged, never fatal to the agent.
          try {
            rmSync(dir, { recursive: true, force: true });
          } catch (e) {
            if (existsSync(dir))
              log.warn({ dir, reason: (e as Error).message }, 'post-copy done; could not remove its files');
          }
        };
        log.info(
          {
            pages: r.pages,
            eager: r.eagerPages,
            lazy: r.lazyPages,
            missing: store.missing(),
            ms: Math.round(performance.now() - t0),
          },
          'post-copy switchover: checkpoint written, serving lazy pages',
        );
        return postcopy;
      },
      adopt: (id) => {
        const entry = this.postcopies.get(id);
        const p = entry?.p;
        const store = p?.pageStore;
        if (!entry || !p || !store)
          throw new ProtocolError(
            `no post-copy of migration ${id} is waiting here: it finished, its lazy timeout ` +
              `(PRECOG_LAZY_TIMEOUT_MS) ran out, or it never switched over`,
          );
        if (entry.socket && entry.socket !== socket) {
          log.warn('post-copy taken over from a session that had not noticed its link was lost');
          entry.socket.destroy();
        }
        entry.socket = socket;
        postcopy = p;
        restorer = entry.restorer;
        // The copy was frozen when its source was lost: it runs on now that its pages can come again.
        restorer?.thaw();
        log = log.child({ migration: id });
        log.info({ missing: p.missing() }, 'post-copy taken up again by its source');
        // After the replies to this HELLO have been written: the faults still waiting are asked again.
        setImmediate(() => p.reattach(send));
        return { store, process: p };
      },
      discard: (id) => {
        release();
        if (!ownsDir) return; // refused before it made a directory: the one of that id is another session's
        try {
          rmSync(dirOf(id), { recursive: true, force: true });
          log.info('migration abandoned; its pages were removed');
        } catch (e) {
          log.warn(
            { dir: dirOf(id), reason: (e as Error).message },
            'migration abandoned; could not remove its files',
          );
        }
      },
    });
    const persist = (store: PageStore, id: string): void => {
      const dir = dirOf(id);
      const statePart = join(dir, `${COMMITTED_FILES.state}.part`);
      writeFileSync(join(dir, COMMITTED_FILES.layout), JSON.stringify(store.layout));
      if (dest.hello?.purpose !== 'criu-images' && existsSync(statePart))
        renameSync(statePart, join(dir, COMMITTED_FILES.state));
      if (dest.hello?.purpose === 'criu-images') {
        // A container: the state says how to lay the pages out as CRIU images, ready for criu restore. The pages
        // go from the store straight into pages-N.img (no copy of the whole store on the way).
        const state = receivedState(id, 'committed');
        const t0 = performance.now();
        const what = `migration ${id}'s state`;
        const out = join(dir, COMMITTED_FILES.checkpoint);
        store.backing.flush();
        const flushMs = performance.now() - t0;
        const r: RebuildResult & Partial<Omit<FilesRebuildResult, keyof RebuildResult>> =
          store.backing instanceof ProcessFilesBacking
            ? rebuildFromFiles(state, store.layout, store.backing.processes, out, what)
            : rebuildCheckpoint(
                state,
                store.layout,
                (first, count) => store.backing.readRun(first, count),
                out,
                what,
              );
        store.backing.close();
        rmSync(join(dir, `${COMMITTED_FILES.pages}.part`), { force: true });
        renameSync(state.dir, join(dir, COMMITTED_FILES.containerState));
        log.info(
          {
            pages: r.pages,
            fromStore: r.fromStore,
            fromState: r.fromState,
            layout: r.layout ?? 'copied',
            ...(r.cuts !== undefined
              ? {
                  cuts: r.cuts,
                  // Where the commit's time goes (ms).
                  steps: {
                    flush: Math.round(flushMs),
                    unpack: Math.round(r.unpackMs!),
                    plan: Math.round(r.planMs!),
                    cut: Math.round(r.cutMs!),
                    write: Math.round(r.writeMs!),
                  },
                }
              : {}),
            ...(r.why ? { why: r.why } : {}),
            ms: Math.round(performance.now() - t0),
          },
          'checkpoint rebuilt from the page store',
        );
      } else if (store.image) writeFileSync(join(dir, COMMITTED_FILES.pages), store.image);
      else {
        store.backing.close();
        renameSync(join(dir, `${COMMITTED_FILES.pages}.part`), join(dir, COMMITTED_FILES.pages));
      }
      writeFileSync(join(dir, COMMITTED_FILES.done), new Date().toISOString());
      release();
      log.info({ dir }, 'migration committed');
    };
    let refused = false;
    let control: AbortController | null = null;
    // A frame must arrive whole within frameTimeoutMs of its first byte: a sender that drips bytes (each one
    // resets the idle timeout) is dropped.
    let frameTimer: NodeJS.Timeout | null = null;
    const watchFrame = (completed: boolean): void => {
      if (frameTimer && (completed || reader.pending === 0)) {
        clearTimeout(frameTimer);
        frameTimer = null;
      }
      if (frameTimer || reader.pending === 0 || this.limits.frameTimeoutMs <= 0 || socket.destroyed) return;
      frameTimer = setTimeout(() => {
        log.warn(
          { seconds: this.limits.frameTimeoutMs / 1000, bytes: reader.pending },
          'a frame did not arrive whole in time: a stalled or slow sender; dropping the session',
        );
        socket.destroy();
      }, this.limits.frameTimeoutMs);
    };
    socket.on('data', (chunk: Buffer) => {
      // After a refusal the rest of what the source had in flight is read and dropped: closing with unread data
      // would reset the connection, and the source might never read why.
      if (refused) return;
      try {
        const frames = reader.push(chunk);
        watchFrame(frames.length > 0);
        for (const frame of frames) {
          if (frame.readUInt8(5) === FrameType.Control) {
            // A client's request (precog migrate, job list/cancel), not a migration coming in.
            if (dest.hello) throw new ProtocolError('CONTROL inside a migration session');
            if (control) {
              control.abort('cancelled by the client'); // a second request cancels the first
              continue;
            }
            control = new AbortController();
            socket.setTimeout(0); // the client waits in silence while its migration runs
            const req = parseJson<unknown>(decodeFrame(frame));
            log.info({ action: (req as { action?: unknown })?.action }, 'control request');
            void this.control
              .handle(req, (e) => send(jsonFrame(FrameType.Event, e)), control.signal)
              .finally(() => socket.end());
            continue;
          }
          const replies = dest.handle(frame, clock.now());
          if (restorer && frame.readUInt8(5) === FrameType.PostcopyDone && replies.length > 0) {
            // A container's post-copy: DONE_ACK once the lazy-pages daemon has copied every page in.
            const r = restorer;
            hold(
              r.lazyFinished(),
              (frames) => frames.map((f) => r.withReport(f)),
              () => r.freeze(),
            );
          }
          for (const reply of replies) send(reply.frame);
        }
      } catch (e) {
        let msg = explain(e as NodeJS.ErrnoException, this.o.stateDir);
        if (isInternal(e)) {
          // A bug of this agent's: logged whole here, the peer learns only that it happened.
          log.error({ err: e }, 'internal error in a session');
          msg = `internal error in the destination agent (${(e as Error).name}); its log has the details`;
        }
        log.warn({ reason: msg }, 'session refused');
        refused = true;
        socket.end(encodeFrame(FrameType.Error, Buffer.from(msg)));
        dest.abandon();
      }
    });
    socket.on('error', (e) => log.warn({ reason: e.message }, 'connection error'));
    socket.on('close', () => {
      this.sockets.delete(socket);
      watchFrame(true);
      this.pagesInFlight -= declared;
      declared = 0;
      control?.abort('the client went away');
      // The lazy-pages daemon may still be copying pages in when the source goes: it is served until it closes
      // (after a lost link, its requests for pages that never came wait: the container stalls, it does not run on
      // with pages missing). A server nobody connected to is closed now.
      const entry = this.postcopies.get(dest.migrationId);
      if (entry?.socket === socket) {
        entry.socket = null;
        // A copy missing pages must not run on by itself: frozen until its source takes the post-copy up again.
        if (entry.p.missing() > 0) entry.restorer?.freeze();
        if (entry.p.missing() > 0)
          log.warn(
            { missing: entry.p.missing() },
            'post-copy source lost with pages missing: kept for "precog migrate --resume" until the lazy timeout',
          );
      }
      postcopy?.release();
      stateRx?.close();
      if (!dest.committed) dest.abandon();
      if (reader.pending > 0 && !refused)
        log.warn({ bytes: reader.pending }, 'connection closed inside a frame');
      log.info('session closed');
    });
  }
}
