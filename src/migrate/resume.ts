/**
 * `precog migrate NAME --from A --to B --resume`: takes up a post-copy whose link was lost after the switchover.
 *
 * When the link dies during post-copy, the container has already run at B and cannot go back to A (A's copy is
 * older); it cannot run on at B either (pages are missing). `precog migrate` then freezes the copy at B, keeps the
 * source frozen at A with every page in its memory, and records the migration id in the source's directory
 * (src/migrate/driver.ts). B's agent keeps the post-copy (its lazy page server, page store and the requests
 * that were waiting) until the lazy timeout (PRECOG_LAZY_TIMEOUT_MS, default 10 minutes).
 *
 * The resume connects to B's agent again over mutual TLS with a HELLO of purpose 'postcopy-resume'; B answers with
 * the migration's layout and the pages it still lacks, and asks again for the pages its waiting requests need.
 * The pages are read from the frozen source (/proc/PID/mem, the layout's own processes and addresses: frozen
 * since the dump, they hold exactly what was dumped), faulted ones first, then POSTCOPY_DONE. B's agent thaws its
 * copy once the session is taken up and answers DONE_ACK when the lazy-pages daemon has copied every page in; only
 * then is the source removed (src/migrate/driver.ts).
 */
import { closeSync, openSync, readSync } from 'node:fs';
import { BatchWriter } from '../codec/batch.ts';
import { codecChain } from '../codec/index.ts';
import type { DoneAck, HelloMessage, SwitchoverMessage } from '../engine/messages.ts';
import { PAGE_SIZE, type Layout } from '../util/interfaces.ts';
import type { ContainerInfo, PostcopyPending } from '../runtime/container.ts';
import type { MovableRuntime } from '../runtime/registry.ts';
import { resumeMove } from './driver.ts';
import { decodeFrame, FrameType, jsonFrame, parseJson, PROTOCOL_VERSION } from '../transport/frame.ts';
import type { Identity } from '../transport/pki.ts';
import { connectTls, DEFAULT_IDLE_TIMEOUT_MS, type Endpoint } from '../transport/tls.ts';
import { Bitmap } from '../util/bitmap.ts';
import { lastAtOrBelow } from '../util/search.ts';
import { bitmapFromBase64, layoutRefusal, maxLayoutPages } from '../engine/destination.ts';
import { processTree } from '../memory/procfs.ts';
import { PushWindow } from '../engine/pushwindow.ts';
import { pushOrder } from '../engine/source.ts';
import { ProtocolError } from '../util/errors.ts';

export interface ResumeOptions {
  name: string;
  from: string;
  to: string;
  linkTimeoutMs?: number;
  batchBytes?: number;
  /** Where the destination's agent listens, this host's identity, the container's runtime here. */
  dest: Endpoint;
  identity: Identity;
  rt: MovableRuntime;
}

export interface ResumeReport {
  container: string;
  from: string;
  to: string;
  migrationId: string;
  /** Pages the destination still lacked, and of those, pages its waiting requests asked for (sent first). */
  pagesMissing: number;
  pagesFaulted: number;
  bytesSent: number;
  /** From the start of the resume to the destination holding every page. */
  pushMs: number;
  /** From the copy at the destination thawing to `criu lazy-pages` done. */
  lazyMs: number;
  totalMs: number;
  pid: number | null;
}

/** Reads pages of a layout from its processes' memory (zeros where a page is no longer mapped). */
/**
 * Why a LAYOUT the destination sends back for a resume is refused, or null: it is a peer's, so it is checked as any
 * LAYOUT is (layoutRefusal), and every process it names must be one of PROCESSES, the frozen container's here: the
 * resume reads each region's pages from /proc/PID/mem of the PID it names.
 */
export function returnedLayoutRefusal(layout: Layout, processes: ReadonlySet<number>): string | null {
  const why = layoutRefusal(layout, maxLayoutPages());
  if (why) return why;
  for (const r of layout.regions)
    if (r.pid === undefined || !processes.has(r.pid))
      return `region ${r.start} names process ${r.pid ?? '(none)'}, not one of the container's`;
  return null;
}

class LayoutReader {
  private readonly starts: number[] = [];
  private readonly fds = new Map<number, number>();
  constructor(private readonly layout: Layout) {
    let at = 0;
    for (const r of layout.regions) {
      this.starts.push(at);
      at += r.pages;
    }
  }

  read(id: number, out: Buffer): void {
    const k = lastAtOrBelow(this.starts, id);
    const r = this.layout.regions[k];
    if (r.pid === undefined) throw new Error(`the layout's region ${r.start} names no process`);
    let fd = this.fds.get(r.pid);
    if (fd === undefined) {
      try {
        fd = openSync(`/proc/${r.pid}/mem`, 'r');
      } catch (err) {
        throw new Error(
          `the source process ${r.pid} is gone (${(err as Error).message}): its pages cannot be sent`,
        );
      }
      this.fds.set(r.pid, fd);
    }
    const addr =
      BigInt(r.start.startsWith('0x') ? r.start : `0x${r.start}`) + BigInt((id - this.starts[k]) * PAGE_SIZE);
    try {
      const n = readSync(fd, out, 0, PAGE_SIZE, addr);
      if (n < PAGE_SIZE) out.fill(0, n);
    } catch {
      out.fill(0); // unmapped since the layout was taken: the destination's image holds zeros there too
    }
  }

  close(): void {
    for (const fd of this.fds.values()) closeSync(fd);
    this.fds.clear();
  }
}

export async function resumePostcopy(o: ResumeOptions): Promise<ResumeReport> {
  const t0 = performance.now();
  const rt = o.rt;
  let pushMs = 0;
  let counts = { missing: 0, faulted: 0, bytes: 0 };
  const done = await resumeMove(
    { rt, name: o.name, from: o.from, to: o.to },
    async (source: ContainerInfo, pending: PostcopyPending) => {
      const link = await connectTls(o.dest, o.identity, o.to, {
        idleTimeoutMs: o.linkTimeoutMs ?? DEFAULT_IDLE_TIMEOUT_MS,
      });
      let reader: LayoutReader | null = null;
      try {
        const hello: HelloMessage = {
          version: PROTOCOL_VERSION,
          migrationId: pending.migrationId,
          strategy: 'postcopy',
          purpose: 'postcopy-resume',
        };
        const swFrame = decodeFrame(
          await link.request(jsonFrame(FrameType.Hello, hello), FrameType.Switchover),
        );
        let layout: Layout | null = null;
        const urgent: number[] = [];
        // Paced by the destination's PAGES_ACK when its HELLO_ACK offers them (as the first push: pushwindow.ts).
        let pace: PushWindow | null = null;
        const takeFaults = (frames: Buffer[]) => {
          for (const raw of frames) {
            const f = decodeFrame(raw);
            if (f.type === FrameType.HelloAck && parseJson<{ acks?: boolean }>(f).acks === true)
              pace = new PushWindow();
            else if (f.type === FrameType.PagesAck) pace?.acked(performance.now() / 1000);
            else if (f.type === FrameType.Layout) layout = parseJson<Layout>(f);
            else if (f.type === FrameType.Fault)
              for (let at = 0; at + 4 <= f.payload.length; at += 4) urgent.push(f.payload.readUInt32LE(at));
          }
        };
        takeFaults(link.receive());
        if (!layout) throw new ProtocolError('the destination took the post-copy up but sent no LAYOUT');
        const lay: Layout = layout;
        if (source.machinePid === null) throw new Error(`the source of ${o.name} has no process`);
        const refused = returnedLayoutRefusal(lay, new Set(processTree(source.machinePid.pid)));
        if (refused) throw new ProtocolError(`the destination's LAYOUT: ${refused}`);
        const sw = parseJson<SwitchoverMessage>(swFrame);
        const missing = bitmapFromBase64(sw.missing, lay.pageCount);
        const order = pushOrder(missing, lay.regions);
        counts.missing = order.length;
        reader = new LayoutReader(lay);
        const per = Math.max(1, Math.floor((o.batchBytes ?? 1 << 20) / PAGE_SIZE));
        const writer = new BatchWriter(codecChain('zero'), PAGE_SIZE, per * (PAGE_SIZE + 16));
        const sent = new Bitmap(lay.pageCount);
        const page = Buffer.alloc(PAGE_SIZE);
        let cursor = 0;
        let left = order.length;
        const faulted = new Set<number>();
        while (left > 0) {
          takeFaults(link.receive());
          let n = 0;
          // Pages a waiting request needs travel alone, ahead of the rest.
          while (n < per && urgent.length > 0) {
            const id = urgent.shift()!;
            if (id >= lay.pageCount || !missing.get(id) || sent.get(id)) continue;
            sent.set(id);
            faulted.add(id);
            reader.read(id, page);
            writer.add(id, page);
            n++;
          }
          const window = pace as PushWindow | null;
          if (n === 0 && window && !window.room) {
            await link.wait(); // an acknowledgement or a fault
            continue;
          }
          const most = window ? window.batchPages(PAGE_SIZE, per) : per;
          if (n === 0)
            for (; n < most && cursor < order.length; cursor++) {
              const id = order[cursor];
              if (sent.get(id)) continue;
              sent.set(id);
              reader.read(id, page);
              writer.add(id, page);
              n++;
            }
          if (n === 0) break;
          const { frame } = writer.seal(1);
          await link.send(frame);
          window?.sent(frame.length, performance.now() / 1000);
          left -= n;
        }
        const ack = parseJson<DoneAck>(
          decodeFrame(await link.request(jsonFrame(FrameType.PostcopyDone, {}), FrameType.DoneAck)),
        );
        counts = { ...counts, faulted: faulted.size, bytes: link.bytesSent };
        pushMs = performance.now() - t0;
        return ack;
      } finally {
        reader?.close();
        link.close();
      }
    },
  );
  return {
    container: o.name,
    from: o.from,
    to: o.to,
    migrationId: done.pending.migrationId,
    pagesMissing: counts.missing,
    pagesFaulted: counts.faulted,
    bytesSent: counts.bytes,
    pushMs,
    lazyMs: done.result.restore?.lazyMs ?? 0,
    totalMs: performance.now() - t0,
    pid: done.result.restore?.pid ?? null,
  };
}
