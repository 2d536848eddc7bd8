/**
 * The interfaces the engine is written against and the layers below it implement: memory sources (src/memory), links
 * (src/transport) and clocks (src/util/clock.ts). They sit at the bottom so that no layer imports one above it
 * (DESIGN: arrows point down only).
 */
import type { Bitmap } from './bitmap.ts';

export const PAGE_SIZE = 4096;

/** A contiguous run of pages of a process's address space. Page indexes are global across regions. */
export interface Region {
  /** Start virtual address (hex string, so that 64-bit addresses survive JSON). */
  start: string;
  pages: number;
  name?: string;
  /** The process the region belongs to, when the source is a process tree: pages are keyed by (pid, vaddr). */
  pid?: number;
}

export interface Layout {
  pageSize: number;
  pageCount: number;
  regions: Region[];
}

/** Seconds since the migration started: virtual in the emulator, wall time on real hosts. */
export interface Clock {
  now(): number;
}

/**
 * Where the pages come from: a live process, an emulated workload, a trace replay. The engine never knows which.
 */
export interface MemorySource {
  readonly layout: Layout;
  /** Pages written since the previous call. The first call starts tracking and returns everything written so far. */
  collectDirty(): Bitmap | Promise<Bitmap>;
  /** Copies the given pages, in order, into out (ids.length * pageSize bytes). */
  readPages(ids: ArrayLike<number>, out: Uint8Array): void | Promise<void>;
  /** Stops the workload: from here on memory does not change until thaw(). */
  freeze(): void | Promise<void>;
  /** Lets the workload continue at the source (rollback after a failed migration). */
  thaw(): void | Promise<void>;
  /**
   * After freeze(): exactly the pages the destination lacks or holds stale, when the source knows (a CRIU dump
   * compared with what was sent). It replaces the pages the live rounds left pending. Without it the engine
   * sends those plus collectDirty().
   */
  finalDirty?(): Bitmap | Promise<Bitmap>;
}

/** An addressed message that arrives at a given time (the emulator's view of the wire). */
export interface Arrival {
  frame: Buffer;
  at: number;
}

/**
 * An ordered, reliable, duplex byte stream to the peer, carrying whole frames. send() resolves when the link has
 * taken the frame (backpressure) and is done with its buffer, which the sender then reuses; the emulator
 * advances its clock there.
 */
export interface Link {
  readonly clock: Clock;
  /** Bytes put on the wire so far, frame headers and per-frame overhead included. */
  readonly bytesSent: number;
  send(frame: Buffer): void | Promise<void>;
  /** Sends a frame and waits for the peer's reply of the given type; other messages stay queued. */
  request(frame: Buffer, replyType: number): Promise<Buffer>;
  /** Messages from the peer that have arrived by now, without waiting. */
  receive(): Buffer[];
  /**
   * Waits until a message from the peer has arrived (returns at once when one is there), or for a while: an
   * emulated link advances its clock to the next arrival, by at most a millisecond at a time.
   */
  wait(): Promise<void>;
}
