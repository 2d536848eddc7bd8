import { ProtocolError } from '../util/errors.ts';
import type { VirtualClock } from '../util/clock.ts';
import type { Arrival, Link } from '../util/interfaces.ts';
import { decodeFrame, FrameType } from './frame.ts';

/** The far end of an emulated link: takes frames at their arrival time and answers with frames of its own. */
export interface FrameHandler {
  handle(frame: Buffer, at: number): Arrival[];
  /** Lets the far end act on its own up to now (post-copy faults); returns what it sends. */
  tick(now: number): Arrival[];
}

export interface EmulatedLinkOptions {
  /** bit/s, each direction. */
  bandwidth: number;
  /** One-way latency in seconds. */
  latency: number;
  /** Bytes added to every frame on the wire (TLS record, TCP/IP headers). */
  frameOverhead: number;
}

/**
 * A full-duplex link on a virtual clock: a frame occupies the line for (size + overhead) * 8 / bandwidth seconds
 * and reaches the other end `latency` later. Sending advances the sender's clock (the line is the bottleneck),
 * so the time the engine measures is the time the bytes take, never wall time.
 */
export class EmulatedLink implements Link {
  readonly clock: VirtualClock;
  private readonly o: EmulatedLinkOptions;
  private readonly peer: FrameHandler;
  private inbox: Arrival[] = [];
  /** When the reverse line is free again. */
  private reverseFree = 0;
  bytesSent = 0;
  framesSent = 0;

  constructor(clock: VirtualClock, options: EmulatedLinkOptions, peer: FrameHandler) {
    if (!(options.bandwidth > 0)) throw new RangeError('bandwidth must be > 0');
    this.clock = clock;
    this.o = options;
    this.peer = peer;
  }

  private wireTime(bytes: number): number {
    return ((bytes + this.o.frameOverhead) * 8) / this.o.bandwidth;
  }

  send(frame: Buffer): void {
    this.clock.advance(this.wireTime(frame.length));
    this.bytesSent += frame.length + this.o.frameOverhead;
    this.framesSent++;
    this.queue(this.peer.handle(frame, this.clock.now() + this.o.latency));
  }

  /** Peer frames travel back on their own line, in order. */
  private queue(replies: Arrival[]): void {
    for (const r of replies) {
      const start = Math.max(r.at, this.reverseFree);
      this.reverseFree = start + this.wireTime(r.frame.length);
      this.inbox.push({ frame: r.frame, at: this.reverseFree + this.o.latency });
    }
  }

  receive(): Buffer[] {
    this.queue(this.peer.tick(this.clock.now()));
    const now = this.clock.now();
    const ready = this.inbox.filter((a) => a.at <= now);
    this.inbox = this.inbox.filter((a) => a.at > now);
    return ready.map((a) => a.frame);
  }

  async wait(): Promise<void> {
    this.queue(this.peer.tick(this.clock.now()));
    // Nothing on its way: the far end answers frames, so nothing ever will be (waiting would spin for ever).
    if (this.inbox.length === 0)
      throw new ProtocolError('waiting for the peer, which has nothing on its way');
    const next = Math.min(...this.inbox.map((a) => a.at));
    // In steps of at most 1 ms, so that the far end's faults in between are not skipped over.
    if (next > this.clock.now()) this.clock.advanceTo(Math.min(next, this.clock.now() + 0.001));
  }

  async request(frame: Buffer, replyType: number): Promise<Buffer> {
    this.send(frame);
    const i = this.inbox.findIndex(
      (a) => a.frame.readUInt8(5) === replyType || a.frame.readUInt8(5) === FrameType.Error,
    );
    if (i < 0) {
      throw new ProtocolError(`the peer did not answer with ${FrameType[replyType]}`);
    }
    const [reply] = this.inbox.splice(i, 1);
    this.clock.advanceTo(reply.at);
    if (reply.frame.readUInt8(5) === FrameType.Error) {
      const f = decodeFrame(reply.frame);
      throw new ProtocolError(`the destination refused: ${f.payload.toString('utf8')}`);
    }
    return reply.frame;
  }
}
