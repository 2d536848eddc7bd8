#!/usr/bin/env python3
"""precog memchange: keeps SIZE MiB of anonymous memory and rewrites it at RATE MB/s (the dirty-rate workload).

    memchange.py --size MIB [--rate MBPS] [--pattern sequential|random|hotspot] [--hot-fraction 0.1]
                 [--hot-share 0.9] [--seed N] [--status FILE] [--probe-port 7001]

Every page of the buffer is written once at start (so it is resident), then pages are rewritten in 4 KiB steps:
sequential walks the buffer in order and wraps; random picks pages uniformly; hotspot sends --hot-share of the writes
to the first --hot-fraction of the pages. The rate is kept by waiting between batches of 1 ms worth of pages. Each
write changes 8 bytes of the page (a counter), so every rewrite really changes the page's content. One thread:
CRIU-friendly. Prints progress every 5 s and writes a one-line status to --status (default /tmp/memchange.status)
every second: "<pages written> <elapsed seconds> <MB/s>".

Every UDP datagram to --probe-port (0.0.0.0, default 7001; 0: no socket) is answered with "<pages written>\n", the
downtime probe's question (src/runtime/probe.ts). The waits between batches are select() on that socket, and the
socket is also polled after every batch (and during the first touch), so replies leave within about a millisecond
even at high rates; every queued datagram is answered.
"""
import argparse
import mmap
import random
import struct
import sys
import time

from udpprobe import Pacer, open_probe, serve


def answer(sock, value: int) -> None:
    """Answers every datagram queued on the probe socket with the current value."""
    reply = f"{value}\n".encode()
    serve(sock, lambda _question: reply)


PAGE = 4096


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=float, required=True, help="MiB of memory to keep")
    ap.add_argument("--rate", type=float, default=10.0, help="MB/s of page rewrites (0: as fast as possible)")
    ap.add_argument("--pattern", choices=["sequential", "random", "hotspot"], default="sequential")
    ap.add_argument("--hot-fraction", type=float, default=0.1)
    ap.add_argument("--hot-share", type=float, default=0.9)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--status", default="/tmp/memchange.status")
    ap.add_argument("--probe-port", type=int, default=7001, help="UDP port answered with the pages written (0: none)")
    args = ap.parse_args()
    probe = open_probe(args.probe_port)
    pages = max(1, int(args.size * 1024 * 1024) // PAGE)
    buf = mmap.mmap(-1, pages * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    pack = struct.Struct("<Q").pack_into
    for p in range(pages):
        pack(buf, p * PAGE, p + 1)
        if p & 1023 == 0:
            answer(probe, 0)
    print(f"memchange: {pages} pages ({args.size:g} MiB) resident, rewriting at {args.rate:g} MB/s, "
          f"pattern {args.pattern}{f', answering UDP {args.probe_port}' if probe else ''}", flush=True)
    rng = random.Random(args.seed)
    hot = max(1, int(pages * args.hot_fraction))
    pages_per_s = args.rate * 1e6 / PAGE if args.rate > 0 else float("inf")
    batch = max(1, int(pages_per_s / 1000)) if pages_per_s != float("inf") else 256
    written = 0
    cursor = 0
    tag = 1
    start = time.monotonic()
    pacer = Pacer(pages_per_s)
    last_status = start
    last_print = start
    while True:
        for _ in range(batch):
            if args.pattern == "sequential":
                p = cursor
                cursor += 1
                if cursor == pages:
                    cursor = 0
                    tag += 1
            elif args.pattern == "random":
                p = rng.randrange(pages)
            else:
                p = rng.randrange(hot) if rng.random() < args.hot_share else rng.randrange(pages)
            pack(buf, p * PAGE + 8, written)
            written += 1
        answer(probe, written)
        pacer.wait(written, probe, lambda: answer(probe, written))
        now = time.monotonic()
        if now - last_status >= 1.0:
            last_status = now
            mbps = written * PAGE / 1e6 / (now - start)
            try:
                with open(args.status, "w") as f:
                    f.write(f"{written} {now - start:.1f} {mbps:.2f}\n")
            except OSError:
                pass
            if now - last_print >= 5.0:
                last_print = now
                print(f"memchange: {written} pages rewritten, {mbps:.2f} MB/s", flush=True)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(0)
