#!/usr/bin/env python3
"""precog replay: rewrites its memory following a recorded dirty-page trace, with the recorded change sizes.

    replay.py --trace FILE [--loops N] [--interval 100ms] [--max-mib 4096] [--max-lag 1s] [--seed N]
              [--probe-port 7001] [--check]

FILE is a trace in precog's format (PRECOG-TRACE 1, plain or gzip: what `precog trace record` writes; see
docs/trace-format.md), checked as src/memory/trace.ts checks it. The trace's pages are laid out consecutively, in
trace index order, in one anonymous mmap; every page is first filled with pseudo-random bytes (--seed), so that all
are resident and distinct, and then the program prints "ready <hex address of the buffer> <pages>" and flushes.

Then it plays the samples in order, forever or --loops N times: the dirty pages of sample s are written during
[s, s+1) x interval (the trace's, or --interval), each at its page's own moment of the interval (a fixed fraction,
the page index times the golden ratio modulo 1: the writes of a sample are spread evenly over it, and a page dirty
in consecutive samples is written once per interval, whatever the phase of a recorder's samples), and each write
changes exactly the recorded number of bytes of its page: one run of that many bytes at an offset that varies from
write to write, XORed with a non-zero byte that differs from the page's previous write (so every byte of the run
really changes). A recorded 0, or a trace without change sizes, rewrites the whole page. Pages only accessed in a
sample are read (one byte) at its start. The schedule follows the monotonic clock: a write that is late is made at
once, so being slow does not accumulate drift; after a pause longer than --max-lag (frozen, checkpointed, migrated)
the schedule restarts from the write it had reached instead of catching up in a burst, as memchange.py does.

Every UDP datagram to --probe-port (0.0.0.0, default 7001; 0: no socket) is answered with "<pages written>\n", as
memchange.py answers (src/runtime/probe.ts). One thread: CRIU-friendly. --check reads and checks the trace, prints
what it holds and exits. Exit status 2 for a usage error or a trace it refuses, with a message on stderr.
"""
import argparse
import ctypes
import hashlib
import json
import mmap
import os
import re
import select
import sys
import time
import zlib
from array import array
from bisect import bisect_right

from udpprobe import open_probe, serve

MAGIC = b"PRECOG-TRACE 1\n"
MIN_INTERVAL_MS = 1
MAX_TRACE_PAGES = 2 ** 31
MAX_SAFE_INTEGER = 2 ** 53 - 1
# The 256 XOR tables: XOR[k] maps every byte x to x ^ k (bytes.translate runs it at C speed).
XOR = [bytes(x ^ k for x in range(256)) for k in range(256)]
# Bit positions set in each byte value, least significant first (bit j of byte i is page 8i + j).
BITS = [tuple(j for j in range(8) if b >> j & 1) for b in range(256)]
GOLDEN = (5 ** 0.5 - 1) / 2
NONZERO = re.compile(b"[^\x00]")


class Refused(Exception):
    """A trace (or a flag) this program does not replay: the message says why; exit status 2."""


def popcount(b) -> int:
    x = int.from_bytes(b, "little")
    return x.bit_count() if hasattr(x, "bit_count") else bin(x).count("1")


def max_trace_bytes() -> int:
    """Most bytes a gzip trace may expand to: PRECOG_MAX_TRACE_BYTES, default 4 GiB (as src/memory/trace.ts)."""
    try:
        v = int(os.environ.get("PRECOG_MAX_TRACE_BYTES", ""))
    except ValueError:
        v = 0
    return v if 0 < v <= MAX_SAFE_INTEGER else 4 * 2 ** 30


def gunzip(data: bytes, source: str) -> bytes:
    """Decompresses every gzip member (as Node's gunzipSync), refusing more than max_trace_bytes() of output."""
    cap = max_trace_bytes()
    out = bytearray()
    rest = data
    try:
        while rest[:2] == b"\x1f\x8b":
            d = zlib.decompressobj(31)
            tail = rest
            while not d.eof:
                chunk = d.decompress(tail, cap - len(out) + 1)
                out += chunk
                if len(out) > cap:
                    raise Refused(f"trace file {source} expands to more than {cap} bytes (PRECOG_MAX_TRACE_BYTES)")
                tail = d.unconsumed_tail
                if not chunk and not tail:
                    raise zlib.error("unexpected end of file")
            rest = d.unused_data
    except zlib.error as e:
        raise Refused(f"trace file {source} looks gzip-compressed but does not decompress: {e}") from None
    return bytes(out)


def is_int(v) -> bool:
    """JavaScript's Number.isInteger of a JSON value (1e3 and 4096.0 are integers, true is not)."""
    return (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer())


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


class Trace:
    """A checked trace: the header's fields and, per sample, where its bitmaps and change sizes are in the body."""

    def __init__(self, data: bytes, source: str):
        nl = data.find(b"\n", len(MAGIC))
        if nl < 0:
            raise Refused(f"trace {source}: header line is missing")
        try:
            h = json.loads(data[len(MAGIC):nl].decode("utf-8", "replace"), parse_constant=no_constant)
        except ValueError as e:
            raise Refused(f"trace {source}: header is not valid JSON: {e}") from None
        ok = (
            isinstance(h, dict)
            and is_int(h.get("pageSize"))
            and h["pageSize"] > 0
            and is_number(h.get("intervalMs"))
            and h["intervalMs"] >= MIN_INTERVAL_MS
            and isinstance(h.get("regions"), list)
            and all(
                isinstance(r, dict)
                and isinstance(r.get("start"), str)
                and is_int(r.get("pages"))
                and 0 < r["pages"] <= MAX_SAFE_INTEGER
                for r in h["regions"]
            )
            and is_int(h.get("samples"))
            and h["samples"] > 0
            and isinstance(h.get("accessed"), bool)
            and ("changes" not in h or isinstance(h["changes"], bool))
        )
        if not ok:
            raise Refused(
                f"trace {source}: header needs pageSize, intervalMs >= {MIN_INTERVAL_MS}, regions [{{start, pages}}], "
                "samples > 0, accessed and optionally changes (see docs/trace-format.md)"
            )
        self.page_size = int(h["pageSize"])
        self.interval_ms = float(h["intervalMs"])
        self.regions = len(h["regions"])
        self.samples = int(h["samples"])
        self.page_count = sum(int(r["pages"]) for r in h["regions"])
        if self.page_count > MAX_TRACE_PAGES:
            raise Refused(f"trace {source}: {self.page_count} pages, more than precog replays ({MAX_TRACE_PAGES})")
        self.has_accessed = h["accessed"]
        self.has_changes = bool(h.get("changes"))
        nbytes = (self.page_count + 7) // 8
        per = nbytes * (2 if self.has_accessed else 1)
        body = memoryview(data)[nl + 1:]
        self.body = body
        self.nbytes = nbytes
        if not self.has_changes and len(body) != per * self.samples:
            raise Refused(
                f"trace {source}: body has {len(body)} bytes, the header announces {self.samples} samples of {per} "
                f"bytes ({per * self.samples}); the file is truncated or corrupt"
            )
        # Per sample: offset of its dirty bitmap, its number of dirty pages, offset of its change sizes (or -1).
        self.at = []
        self.dirty_count = []
        self.changes_at = []
        at = 0
        for s in range(self.samples):
            if len(body) - at < per:
                more = " and 2 per dirty page" if self.has_changes else ""
                raise Refused(
                    f"trace {source}: body ends in sample {s} of {self.samples} ({len(body)} bytes, each sample has "
                    f"{per} bytes of bitmaps{more}); the file is truncated or corrupt"
                )
            n = popcount(body[at:at + nbytes])
            self.at.append(at)
            self.dirty_count.append(n)
            at += per
            self.changes_at.append(at if self.has_changes else -1)
            if self.has_changes:
                if len(body) - at < 2 * n:
                    raise Refused(
                        f"trace {source}: sample {s} has {n} dirty pages but only {len(body) - at} bytes of change "
                        f"sizes follow ({2 * n} needed); the file is truncated or corrupt"
                    )
                sizes = self.sizes(s)
                if n and max(sizes) > self.page_size:
                    raise Refused(
                        f"trace {source}: sample {s} gives a change of {max(sizes)} bytes, more than a page "
                        f"({self.page_size})"
                    )
                at += 2 * n
        if at != len(body):
            raise Refused(
                f"trace {source}: body has {len(body)} bytes, the header announces {self.samples} samples that take "
                f"{at}; the file is truncated or corrupt"
            )

    def pages(self, bitmap) -> array:
        """The pages set in a bitmap, ascending."""
        out = array("I")
        for m in NONZERO.finditer(bitmap):
            i = m.start()
            base = i * 8
            out.extend(base + j for j in BITS[bitmap[i]])
        return out

    def dirty(self, s: int) -> array:
        at = self.at[s]
        return self.pages(bytes(self.body[at:at + self.nbytes]))

    def accessed_only(self, s: int) -> array:
        """Pages accessed but not written in sample s (empty without accessed bitmaps)."""
        if not self.has_accessed:
            return array("I")
        at = self.at[s]
        d = int.from_bytes(self.body[at:at + self.nbytes], "little")
        a = int.from_bytes(self.body[at + self.nbytes:at + 2 * self.nbytes], "little")
        return self.pages((a & ~d).to_bytes(self.nbytes, "little"))

    def sizes(self, s: int):
        """The change sizes of sample s's dirty pages (ascending page order), or None without change sizes."""
        at = self.changes_at[s]
        if at < 0:
            return None
        c = array("H")
        c.frombytes(self.body[at:at + 2 * self.dirty_count[s]])
        if sys.byteorder == "big":
            c.byteswap()
        return c


def load(path: str) -> Trace:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise Refused(f"cannot read trace file {path}: {e.strerror or e}") from None
    if data[:2] == b"\x1f\x8b":
        data = gunzip(data, path)
    if data[:len(MAGIC)] != MAGIC:
        what = "public JSON format (not replayed: convert it with precog)" if data[:64].lstrip()[:1] == b"{" else \
            "not a precog trace"
        raise Refused(f"trace file {path} does not start with \"PRECOG-TRACE 1\": {what}; replay.py reads only "
                      "precog's own format (docs/trace-format.md), as written by `precog trace record`")
    return Trace(data, path)


def parse_duration_ms(text: str, flag: str) -> float:
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s)?\s*", text)
    if not m:
        raise Refused(f"{flag} \"{text}\" must be a duration such as 100ms or 0.5s (a bare number is milliseconds)")
    v = float(m.group(1)) * (1000 if m.group(2) == "s" else 1)
    if v < MIN_INTERVAL_MS and flag == "--interval":
        raise Refused(f"{flag} \"{text}\" must be at least {MIN_INTERVAL_MS}ms")
    return v


def buffer_address(buf: mmap.mmap) -> int:
    """Start address of an mmap object (what /proc/PID/maps shows)."""
    return ctypes.addressof(ctypes.c_char.from_buffer(buf))


class Replayer:
    def __init__(self, trace: Trace, buf: mmap.mmap, interval: float, max_lag: float, probe):
        self.trace = trace
        self.buf = buf
        self.interval = interval
        self.max_lag = max_lag
        self.probe = probe
        self.page = trace.page_size
        # Per page, the key (1..255) of its last write: the next one uses another, so runs never cancel out.
        self.key = bytearray(trace.page_count)
        self.written = 0
        # Each page's moment within an interval, a fraction in [0, 1): the fractional part of page x the golden
        # ratio. Fixed per page, so a page written in consecutive samples is written once per interval wherever
        # its sample boundaries are seen from; spread evenly over the interval whatever pages a sample writes.
        self.phase = array("d", (p * GOLDEN % 1.0 for p in range(trace.page_count)))
        self.late = 0.0
        self.restarts = 0
        # The bytes read from accessed-only pages, XORed together (the reads are what matters).
        self.sink = 0

    def answer(self) -> None:
        if self.probe is not None:
            reply = f"{self.written}\n".encode()
            serve(self.probe, lambda _question: reply)

    def wait_until(self, when: float) -> None:
        """Sleeps until `when` (monotonic), answering the probe meanwhile."""
        while True:
            now = time.monotonic()
            if now >= when:
                return
            if self.probe is None:
                time.sleep(when - now)
            elif select.select([self.probe], [], [], when - now)[0]:
                self.answer()

    def write(self, pages: array, sizes, first: int, end: int) -> None:
        """Writes pages[first:end], each with its change size (0 or no sizes: the whole page)."""
        buf, key, page = self.buf, self.key, self.page
        for j in range(first, end):
            p = pages[j]
            n = sizes[j] if sizes is not None else 0
            k = key[p] + 1
            if k == 256:
                k = 1
            key[p] = k
            a = p * page
            if 0 < n < page:
                # An offset that moves from write to write (and from page to page) within the page.
                a += (p * 2654435761 + k * 40503) % (page - n + 1)
            else:
                n = page
            buf[a:a + n] = buf[a:a + n].translate(XOR[k])
        self.written += end - first

    def play_sample(self, s: int, start: float) -> float:
        """Plays sample s, whose interval starts at `start`; returns the start of the next one."""
        t = self.trace
        buf, page = self.buf, self.page
        for p in t.accessed_only(s):
            self.sink ^= buf[p * page]
        pages = t.dirty(s)
        sizes = t.sizes(s)
        total = len(pages)
        # In the order of their moments within the interval (fractions of it, ascending).
        if sizes is None:
            moments, pages = zip(*sorted(zip(map(self.phase.__getitem__, pages), pages))) if total else ((), ())
        else:
            moments, pages, sizes = zip(*sorted(zip(map(self.phase.__getitem__, pages), pages, sizes))) \
                if total else ((), (), ())
        interval = self.interval
        k = 0
        while k < total:
            now = time.monotonic()
            due = start + moments[k] * interval
            if now - due > self.max_lag:
                # Paused (frozen, checkpointed, migrated): the schedule goes on from here, not in a burst.
                start += now - due
                self.restarts += 1
                continue
            if now < due:
                self.wait_until(due)
                continue
            self.late = max(self.late, now - due)
            # Every write due by now, at most 256 between two looks at the probe.
            end = min(max(bisect_right(moments, (now - start) / interval, k), k + 1), k + 256)
            self.write(pages, sizes, k, end)
            k = end
            self.answer()
        end = start + interval
        self.wait_until(end)
        if time.monotonic() - end > self.max_lag:
            self.restarts += 1
            return time.monotonic()
        return end


def main() -> int:
    ap = argparse.ArgumentParser(description="Rewrites memory following a precog trace (docs/containers.md).")
    ap.add_argument("--trace", required=True, help="precog trace file (PRECOG-TRACE 1, plain or gzip)")
    ap.add_argument("--loops", type=int, default=0, help="times to play the trace (0: forever)")
    ap.add_argument("--interval", help="sample length, e.g. 100ms (default: the trace's)")
    ap.add_argument("--max-mib", type=float, default=4096, help="refuse traces of more memory than this (MiB)")
    ap.add_argument("--max-lag", default="1s", help="a pause longer than this restarts the schedule (default 1s)")
    ap.add_argument("--seed", type=int, default=1, help="seed of the pages' initial content")
    ap.add_argument("--probe-port", type=int, default=7001, help="UDP port answered with the pages written (0: none)")
    ap.add_argument("--check", action="store_true", help="check the trace, print what it holds and exit")
    args = ap.parse_args()
    try:
        if args.loops < 0:
            raise Refused(f"--loops {args.loops} must be 0 (forever) or more")
        if not args.max_mib > 0:
            raise Refused(f"--max-mib {args.max_mib:g} must be more than 0")
        if not 0 <= args.probe_port <= 65535:
            raise Refused(f"--probe-port {args.probe_port} must be a UDP port (1-65535) or 0 for none")
        interval_ms = parse_duration_ms(args.interval, "--interval") if args.interval is not None else None
        max_lag = parse_duration_ms(args.max_lag, "--max-lag") / 1000
        t = load(args.trace)
        if interval_ms is None:
            interval_ms = t.interval_ms
        if t.page_size != mmap.PAGESIZE:
            raise Refused(f"trace {args.trace}: pages of {t.page_size} bytes, this machine's are {mmap.PAGESIZE}")
        mib = t.page_count * t.page_size / 2 ** 20
        if t.page_count == 0 and not args.check:
            raise Refused(f"trace {args.trace} has no pages: nothing to replay")
        if mib > args.max_mib:
            raise Refused(f"trace {args.trace}: {t.page_count} pages ({mib:.1f} MiB), more than --max-mib "
                          f"{args.max_mib:g}; raise --max-mib to replay it")
    except Refused as e:
        print(f"replay: error: {e}", file=sys.stderr)
        return 2
    dirty = sum(t.dirty_count)
    what = (f"{t.page_count} pages ({mib:.1f} MiB), {t.samples} samples every {interval_ms:g}ms, "
            f"{dirty / t.samples:.1f} dirty pages per sample, change sizes {'recorded' if t.has_changes else 'none'}"
            f"{', accessed bits' if t.has_accessed else ''}")
    if args.check:
        print(f"replay: {args.trace}: {what}", flush=True)
        return 0
    try:
        probe = open_probe(args.probe_port)
    except OSError as e:
        print(f"replay: error: cannot answer UDP port {args.probe_port}: {e.strerror or e}", file=sys.stderr)
        return 2
    page = t.page_size
    buf = mmap.mmap(-1, t.page_count * page, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    chunk = 256
    for first in range(0, t.page_count, chunk):
        n = min(chunk, t.page_count - first) * page
        # Pseudo-random bytes from the seed and the chunk's place (shake_128 fills ~500 MB/s; random's ~50 MB/s).
        buf[first * page:first * page + n] = hashlib.shake_128(f"{args.seed}:{first}".encode()).digest(n)
        serve(probe, lambda _question: b"0\n")
    r = Replayer(t, buf, interval_ms / 1000, max_lag, probe)
    print(f"ready {buffer_address(buf):x} {t.page_count}", flush=True)
    print(f"replay: {args.trace}: {what}; {'forever' if args.loops == 0 else f'{args.loops} times'}"
          f"{f', answering UDP {args.probe_port}' if probe else ''}", flush=True)
    started = time.monotonic()
    start = started
    last_print = started
    loop = 0
    while args.loops == 0 or loop < args.loops:
        for s in range(t.samples):
            start = r.play_sample(s, start)
        loop += 1
        now = time.monotonic()
        if now - last_print >= 5 or loop == args.loops:
            last_print = now
            print(f"replay: {loop} loops, {r.written} pages written in {now - started:.1f}s "
                  f"({r.written / max(now - started, 1e-9):.0f}/s), writes at most {r.late * 1000:.1f}ms late, "
                  f"{r.restarts} pauses longer than --max-lag", flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(0)
