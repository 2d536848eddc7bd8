#!/usr/bin/env python3
"""precog memcheck: memory that checks itself, to prove a migration moved every page intact.

    memcheck.py --size MIB [--rate MBPS] [--status FILE] [--seed N]

Keeps SIZE MiB of anonymous memory. Page p holds, at offset 0, the 8-byte value p + 1 and, at offset 8, the
version last written into it; the process also keeps every page's version in a separate array (its own memory,
migrated with it) and a running count of rewrites. It rewrites random pages at RATE MB/s and, every 0.5 s,
checks every page against the array. Any difference means memory was lost or is stale (a page the migration
did not carry, or carried an old copy of): it writes "CORRUPT page P: has V1, expected V2" to the status file and
exits with code 3. Otherwise the status file says "ok <checks> <rewrites> <pages>"; the two counters only grow,
so a reader can tell that the process went on from its state rather than started again.
"""
import argparse
import array
import mmap
import os
import random
import struct
import sys
import time

PAGE = 4096


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=float, required=True)
    ap.add_argument("--rate", type=float, default=5.0, help="MB/s of page rewrites")
    ap.add_argument("--status", default="/tmp/memcheck.status")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    pages = max(1, int(args.size * 1024 * 1024) // PAGE)
    buf = mmap.mmap(-1, pages * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    versions = array.array("Q", [0]) * pages
    pair = struct.Struct("<QQ")
    for p in range(pages):
        pair.pack_into(buf, p * PAGE, p + 1, 0)
    print(f"memcheck: {pages} pages ({args.size:g} MiB), rewriting at {args.rate:g} MB/s", flush=True)
    rng = random.Random(args.seed)
    per_s = args.rate * 1e6 / PAGE
    rewrites = 0
    checks = 0
    start = time.monotonic()
    next_check = start
    while True:
        now = time.monotonic()
        due = int((now - start) * per_s)
        while rewrites < due:
            p = rng.randrange(pages)
            rewrites += 1
            versions[p] = rewrites
            pair.pack_into(buf, p * PAGE, p + 1, rewrites)
        if now >= next_check:
            next_check = now + 0.5
            for p in range(pages):
                tag, version = pair.unpack_from(buf, p * PAGE)
                if tag != p + 1 or version != versions[p]:
                    msg = f"CORRUPT page {p}: has ({tag}, {version}), expected ({p + 1}, {versions[p]})"
                    write_status(args.status, msg)
                    print(f"memcheck: {msg}", flush=True)
                    sys.exit(3)
            checks += 1
            write_status(args.status, f"ok {checks} {rewrites} {pages}")
        time.sleep(0.002)


def write_status(path: str, line: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(line + "\n")
    os.replace(tmp, path)


if __name__ == "__main__":
    main()
