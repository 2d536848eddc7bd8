import { X509Certificate } from 'node:crypto';
import { once } from 'node:events';
import net from 'node:net';
import tls from 'node:tls';
import { WallClock } from '../util/clock.ts';
import type { Link } from '../util/interfaces.ts';
import { ProtocolError, UsageError } from '../util/errors.ts';
import { decodeFrame, FrameType } from './frame.ts';
import type { Identity } from './pki.ts';
import { FrameReader } from './stream.ts';

export interface Endpoint {
  host: string;
  port: number;
}

/** "host:port", "[v6]:port" or ":port" (all interfaces are not allowed by default: give an address). */
export function parseEndpoint(text: string, what = 'address'): Endpoint {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d{1,5})$/.exec(text.trim());
  const port = m ? Number(m[3]) : NaN;
  if (!m || !(port > 0 && port < 65536)) {
    throw new UsageError(`${what} "${text}" must be HOST:PORT, e.g. 10.213.77.2:7070 or 127.0.0.1:7070`);
  }
  return { host: m[1] ?? (m[2] || '127.0.0.1'), port };
}

/**
 * Why a host's own certificate will be refused by its peers now (expired, or not valid yet), with the fix; null when
 * it is within its validity.
 */
export function certificateProblem(id: Identity, now = new Date()): string | null {
  const cert = new X509Certificate(id.cert);
  const fix = `issue a new one: precog pki issue ${id.name} --force (docs/security.md, "Rotating certificates")`;
  if (now > new Date(cert.validTo))
    return `this host's certificate (${id.name}) expired on ${cert.validTo}: peers refuse it; ${fix}`;
  if (now < new Date(cert.validFrom))
    return `this host's certificate (${id.name}) is not valid before ${cert.validFrom} (check the clock); ${fix}`;
  return null;
}

/** How long a client may take to finish the TLS handshake before its connection is closed. */
export const HANDSHAKE_TIMEOUT_MS = 10_000;

export function tlsServerOptions(id: Identity, handshakeTimeoutMs = HANDSHAKE_TIMEOUT_MS): tls.TlsOptions {
  return {
    key: id.key,
    cert: id.cert,
    ca: id.ca,
    requestCert: true,
    rejectUnauthorized: true,
    minVersion: 'TLSv1.3',
    handshakeTimeout: handshakeTimeoutMs,
  };
}

/** Name of the authenticated peer (its certificate's CN). */
export function peerName(socket: net.Socket): string {
  if (socket instanceof tls.TLSSocket) {
    const cn = socket.getPeerCertificate()?.subject?.CN;
    return typeof cn === 'string' ? cn : 'unknown';
  }
  return `plaintext ${socket.remoteAddress}:${socket.remotePort}`;
}

/**
 * The source's link to a destination agent over a socket (TLS, or plaintext in tests). Frames are written with
 * backpressure: send() resolves once the socket accepted the frame without exceeding its buffer.
 */
/** How long a link may carry nothing before it counts as failed. */
export const DEFAULT_IDLE_TIMEOUT_MS = 30_000;

export class SocketLink implements Link {
  readonly clock = new WallClock();
  bytesSent = 0;
  private readonly socket: net.Socket;
  private readonly reader = new FrameReader();
  private inbox: Buffer[] = [];
  private waiter: (() => void) | null = null;
  private failure: Error | null = null;
  /** Whether the destination has sent anything yet. */
  private heard = false;

  /**
   * `idleTimeoutMs`: a connection with no traffic either way for this long has failed (a cut link never tells
   * TCP so; without a limit a migration would wait for minutes). 0: no limit.
   */
  constructor(socket: net.Socket, idleTimeoutMs = DEFAULT_IDLE_TIMEOUT_MS) {
    this.socket = socket;
    if (idleTimeoutMs > 0) {
      socket.setTimeout(idleTimeoutMs, () => {
        this.fail(
          new ProtocolError(
            `no traffic on the link to the destination for ${idleTimeoutMs / 1000} s: the link is cut or the peer hangs`,
          ),
        );
        socket.destroy();
      });
    }
    socket.on('data', (chunk: Buffer) => {
      this.heard = true;
      try {
        // Copied: the reader's frames are views into its buffer, valid only until its next push, and the inbox
        // may hold several (a destination's FAULT frames during post-copy) until the engine reads them.
        for (const f of this.reader.push(chunk)) this.inbox.push(Buffer.from(f));
      } catch (e) {
        this.fail(e as Error);
        socket.destroy();
      }
      this.wake();
    });
    socket.on('error', (e) => this.fail(e));
    socket.on('close', () => this.fail(new ProtocolError('the destination closed the connection')));
  }

  private pool: Buffer[] = [];

  private spare(bytes: number): Buffer {
    const i = this.pool.findIndex((b) => b.length === bytes);
    return i >= 0 ? this.pool.splice(i, 1)[0] : Buffer.allocUnsafeSlow(bytes);
  }

  private fail(e: Error): void {
    // The destination's own words, when it said why before the connection broke.
    const said = this.inbox.find((f) => f.readUInt8(5) === FrameType.Error);
    this.failure ??= said
      ? new ProtocolError(`the destination refused: ${decodeFrame(said).payload.toString('utf8')}`)
      : !this.heard &&
          /hang up|ECONNRESET|EPIPE|alert|closed the connection/i.test(
            `${e.message} ${(e as NodeJS.ErrnoException).code}`,
          )
        ? new ProtocolError(
            `the destination closed the connection before answering (${e.message}): it most likely refused ` +
              "this host's certificate (expired, not yet valid, or from another CA); its log names the reason",
          )
        : e;
    this.wake();
  }

  private wake(): void {
    const w = this.waiter;
    this.waiter = null;
    w?.();
  }

  async send(frame: Buffer): Promise<void> {
    if (this.failure) throw this.failure;
    this.bytesSent += frame.length;
    // The sender reuses its buffer once send() resolves: hand the socket a copy, from buffers recycled once
    // written (fresh memory costs a page fault per 4 KiB on first touch).
    const copy = this.spare(frame.length);
    frame.copy(copy);
    const ok = this.socket.write(copy, () => {
      if (this.pool.length < 8) this.pool.push(copy);
    });
    if (!ok) {
      await new Promise<void>((resolve) => {
        const done = (): void => {
          this.socket.off('drain', done);
          this.socket.off('close', done);
          resolve();
        };
        this.socket.on('drain', done);
        this.socket.on('close', done);
      });
      if (this.failure) throw this.failure;
    }
  }

  /** The next frame that arrives; throws when the connection fails or closes first. */
  async next(): Promise<Buffer> {
    for (;;) {
      const f = this.inbox.shift();
      if (f) return f;
      if (this.failure) throw this.failure;
      await new Promise<void>((resolve) => (this.waiter = resolve));
    }
  }

  async wait(): Promise<void> {
    if (this.inbox.length > 0) return;
    if (this.failure) throw this.failure;
    await new Promise<void>((resolve) => (this.waiter = resolve));
  }

  receive(): Buffer[] {
    const out = this.inbox;
    this.inbox = [];
    return out;
  }

  async request(frame: Buffer, replyType: number): Promise<Buffer> {
    await this.send(frame);
    for (;;) {
      const i = this.inbox.findIndex(
        (f) => f.readUInt8(5) === replyType || f.readUInt8(5) === FrameType.Error,
      );
      if (i >= 0) {
        const [reply] = this.inbox.splice(i, 1);
        if (reply.readUInt8(5) === FrameType.Error) {
          throw new ProtocolError(`the destination refused: ${decodeFrame(reply).payload.toString('utf8')}`);
        }
        return reply;
      }
      if (this.failure) throw this.failure;
      await new Promise<void>((resolve) => (this.waiter = resolve));
    }
  }

  close(): void {
    this.socket.end();
  }

  /** Breaks the connection now: whatever waits on the link fails with `reason`. */
  abort(reason: Error): void {
    this.failure ??= reason;
    this.socket.destroy();
    this.wake();
  }
}

/** Connects to an agent with mutual TLS; the agent's certificate must carry `serverName`. */
export async function connectTls(
  to: Endpoint,
  id: Identity,
  serverName: string,
  opts: { idleTimeoutMs?: number } = {},
): Promise<SocketLink> {
  // An expired certificate of our own is refused by every agent after the handshake, with no word on the wire.
  const own = certificateProblem(id);
  if (own) throw new UsageError(own);
  const socket = tls.connect({
    host: to.host,
    port: to.port,
    key: id.key,
    cert: id.cert,
    ca: id.ca,
    // SNI carries names only (RFC 6066); an address is checked against the certificate's IP entries instead.
    ...(net.isIP(serverName)
      ? {
          checkServerIdentity: (_host: string, cert: tls.PeerCertificate) =>
            tls.checkServerIdentity(serverName, cert),
        }
      : { servername: serverName }),
    minVersion: 'TLSv1.3',
  });
  await connected(socket, 'secureConnect', to);
  return new SocketLink(socket, opts.idleTimeoutMs);
}

/** Plaintext, for tests only (the agent must have been started with --insecure-plaintext). */
export async function connectPlain(to: Endpoint): Promise<SocketLink> {
  const socket = net.connect({ host: to.host, port: to.port });
  await connected(socket, 'connect', to);
  return new SocketLink(socket);
}

async function connected(socket: net.Socket, event: string, to: Endpoint): Promise<void> {
  try {
    await once(socket, event);
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    const why =
      err.code === 'ECONNREFUSED'
        ? 'nothing listens there: is the agent running (precog agent --listen ...)?'
        : err.code === 'EHOSTUNREACH' || err.code === 'ENETUNREACH'
          ? 'no route to the host: check the address and the test hosts (precog testbed status)'
          : err.message;
    throw new UsageError(`cannot reach the agent at ${to.host}:${to.port}: ${why}`);
  }
  socket.setNoDelay(true);
}
