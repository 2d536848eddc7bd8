#!/usr/bin/env python3
"""precog redisload: redis-server with SIZE MiB of data, rewritten by a client at RATE MB/s (the redis workload).

    redisload.py --size MIB [--rate MBPS] [--value-size 1000] [--pattern random|hotspot] [--hot-fraction 0.1]
                 [--hot-share 0.9] [--seed N] [--socket /tmp/redis.sock] [--probe-port 7001] [--tcp-port 0]

Starts Debian's redis-server as its child, listening on a unix socket (and, with --tcp-port, on TCP for clients
outside the container: bench:live's redis-lan workload); by default on the unix socket only (no TCP port: the whole service, server
and client, is one process tree that CRIU dumps with its socket queues), fills it with SIZE MiB of values (keys
k:0 .. k:N-1, N = SIZE MiB / (value size + 100)), then keeps SETting keys at RATE MB/s of values (0: as fast as it
can), random keys or a hot spot, pipelined in batches of 1 ms worth of requests.

Every value is a function of its key and of how many times the client wrote that key, and the client keeps those
counts in its own memory, so the data can be checked whole at any time against what the client believes it wrote:
the check reads every key back (MGET) and compares byte for byte.

UDP on --probe-port (0.0.0.0, default 7001), answered only once the fill is done (the downtime probe's question,
src/runtime/probe.ts):
- any datagram: "<requests acknowledged>\\n" (a counter that only grows while the service works);
- "verify": "verify ok <keys> <requests> <failed>\\n" or "verify bad <mismatched keys> first=<key>\\n" after
  reading every key back;
- "stats": "stats <requests> <failed> <reconnects>\\n".
A request that fails (an error reply) is counted in <failed>; after a broken connection the client counts the batch
failed, reconnects and sends it again.
"""
import argparse
import array
import os
import random
import socket
import subprocess
import sys
import time

from udpprobe import Pacer, open_probe, serve


def value_of(key: int, version: int, size: int) -> bytes:
    """The value the client writes the version-th time it writes key (version 0: the fill)."""
    seed = f"{key}:{version};".encode()
    return (seed * (size // len(seed) + 1))[:size]


def command(*parts: bytes) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for p in parts:
        out.append(b"$%d\r\n" % len(p))
        out.append(p)
        out.append(b"\r\n")
    return b"".join(out)


class RespError(Exception):
    pass


class Client:
    """A minimal RESP2 client over the unix socket: pipelined commands, replies parsed from a buffer."""

    def __init__(self, path: str):
        self.path = path
        self.sock = None
        self.buf = b""

    def connect(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(self.path)
                self.sock, self.buf = s, b""
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
        self.sock = None

    def _fill(self) -> None:
        data = self.sock.recv(1 << 20)
        if not data:
            raise ConnectionError("redis closed the connection")
        self.buf += data

    def _line(self) -> bytes:
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line, self.buf = self.buf[:i], self.buf[i + 2:]
                return line
            self._fill()

    def reply(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest
        if kind == b"-":
            raise RespError(rest.decode(errors="replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            while len(self.buf) < n + 2:
                self._fill()
            data, self.buf = self.buf[:n], self.buf[n + 2:]
            return data
        if kind == b"*":
            return [self.reply() for _ in range(int(rest))]
        raise RespError(f"unexpected reply {line[:40]!r}")

    def pipeline(self, payload: bytes, count: int) -> list:
        self.sock.sendall(payload)
        out = []
        err = None
        for _ in range(count):
            try:
                out.append(self.reply())
            except RespError as e:  # keep reading the other replies, report the first error
                out.append(e)
                err = err or e
        return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=float, required=True, help="MiB of values to keep in redis")
    ap.add_argument("--rate", type=float, default=5.0, help="MB/s of values written (0: as fast as possible)")
    ap.add_argument("--value-size", type=int, default=1000)
    ap.add_argument("--pattern", choices=["random", "hotspot"], default="random")
    ap.add_argument("--hot-fraction", type=float, default=0.1)
    ap.add_argument("--hot-share", type=float, default=0.9)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--socket", default="/tmp/redis.sock")
    ap.add_argument("--probe-port", type=int, default=7001)
    ap.add_argument("--tcp-port", type=int, default=0,
                    help="also serve TCP clients on this port, all addresses (0: unix socket only)")
    args = ap.parse_args()

    try:
        os.unlink(args.socket)
    except FileNotFoundError:
        pass
    server = subprocess.Popen(
        ["redis-server", "--port", str(args.tcp_port), "--bind", "0.0.0.0", "--unixsocket", args.socket, "--unixsocketperm", "700", "--save", "",
         "--appendonly", "no", "--protected-mode", "no", "--loglevel", "warning"],
        stdin=subprocess.DEVNULL,
    )
    client = Client(args.socket)
    client.connect()

    keys = max(1, int(args.size * 1024 * 1024) // (args.value_size + 100))
    versions = array.array("I", bytes(4 * keys))
    vsize = args.value_size
    batch_fill = 500
    for start in range(0, keys, batch_fill):
        end = min(keys, start + batch_fill)
        payload = b"".join(command(b"SET", b"k:%d" % k, value_of(k, 0, vsize)) for k in range(start, end))
        for r in client.pipeline(payload, end - start):
            if isinstance(r, Exception):
                sys.exit(f"redisload: the fill failed: {r}")
    probe = open_probe(args.probe_port)
    print(f"redisload: {keys} keys of {vsize} bytes ({args.size:g} MiB) in redis-server (pid {server.pid}), "
          f"rewriting at {args.rate:g} MB/s, pattern {args.pattern}"
          f"{f', answering UDP {args.probe_port}' if probe else ''}", flush=True)

    acked = 0
    failed = 0
    reconnects = 0

    def verify() -> bytes:
        bad = 0
        first = None
        step = 1000
        for start in range(0, keys, step):
            end = min(keys, start + step)
            got = client.pipeline(command(b"MGET", *[b"k:%d" % k for k in range(start, end)]), 1)[0]
            if isinstance(got, Exception):
                raise got
            for k, v in zip(range(start, end), got):
                if v != value_of(k, versions[k], vsize):
                    bad += 1
                    first = first if first is not None else k
        if bad:
            return f"verify bad {bad} first=k:{first}\n".encode()
        return f"verify ok {keys} {acked} {failed}\n".encode()

    def reply_to(question: bytes) -> bytes:
        if question == b"verify":
            try:
                return verify()
            except Exception as e:  # noqa: BLE001 - the check's own failure is the answer
                return f"verify error {e}\n".encode()
        if question == b"stats":
            return f"stats {acked} {failed} {reconnects}\n".encode()
        return f"{acked}\n".encode()

    def answer() -> None:
        serve(probe, reply_to)

    rng = random.Random(args.seed)
    hot = max(1, int(keys * args.hot_fraction))
    per_s = args.rate * 1e6 / vsize if args.rate > 0 else float("inf")
    batch = max(1, int(per_s / 1000)) if per_s != float("inf") else 100
    start_t = time.monotonic()
    pacer = Pacer(per_s)
    last_print = start_t
    while True:
        if args.pattern == "random":
            ks = [rng.randrange(keys) for _ in range(batch)]
        else:
            ks = [rng.randrange(hot) if rng.random() < args.hot_share else rng.randrange(keys) for _ in range(batch)]
        parts = []
        for k in ks:  # a key can come twice in a batch: each SET carries the next version
            versions[k] += 1
            parts.append(command(b"SET", b"k:%d" % k, value_of(k, versions[k], vsize)))
        payload = b"".join(parts)
        while True:
            try:
                replies = client.pipeline(payload, len(ks))
                break
            except OSError as e:
                # The batch's fate is unknown: count it failed, reconnect and send it again (SET is idempotent).
                failed += len(ks)
                reconnects += 1
                print(f"redisload: connection lost ({e}); reconnecting", flush=True)
                client.close()
                client.connect()
        for r in replies:
            if isinstance(r, Exception):
                failed += 1
            else:
                acked += 1
        answer()
        pacer.wait(acked + failed, probe, answer)
        now = time.monotonic()
        if now - last_print >= 5.0:
            last_print = now
            print(f"redisload: {acked} requests, {failed} failed, "
                  f"{acked * vsize / 1e6 / (now - start_t):.2f} MB/s", flush=True)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(0)
