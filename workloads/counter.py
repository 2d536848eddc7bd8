#!/usr/bin/env python3
"""precog counter service: a counter kept in memory, visible from outside the container.

Every TCP connection to PORT (default 7000) gets one line "<counter>\n" and the counter then goes up by one; the
counter also goes up by one every 100 ms and is written to FILE (default /var/lib/counter/value) each time. One
thread, one process, no timers outside the process: its state survives a CRIU checkpoint/restore or migration.

    counter.py [--port 7000] [--file /var/lib/counter/value] [--probe-port 7001]

--port 0: no TCP socket, the file only (CRIU 4.1.1 cannot dump TCP sockets on Linux 6.16 and later, see
docs/containers.md). Every UDP datagram to --probe-port (default 7001; 0: no socket) is answered with
"<counter>\n" without changing the counter: the downtime probe's question (src/runtime/probe.ts).
"""
import argparse
import os
import select
import socket
import sys
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=7000)
    ap.add_argument("--file", default="/var/lib/counter/value")
    ap.add_argument("--probe-port", type=int, default=7001)
    args = ap.parse_args()
    os.makedirs(os.path.dirname(args.file), exist_ok=True)
    srv = None
    if args.port > 0:
        srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("0.0.0.0", args.port))
        srv.listen(64)
    probe = None
    if args.probe_port > 0:
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("0.0.0.0", args.probe_port))
        probe.setblocking(False)
    counter = 0
    print(f"counter: {f'listening on port {args.port}, ' if srv else ''}"
          f"{f'answering UDP {args.probe_port}, ' if probe else ''}writing {args.file}", flush=True)
    watched = [s for s in (srv, probe) if s is not None]
    next_tick = time.monotonic()
    while True:
        timeout = max(0.0, next_tick - time.monotonic())
        ready, _, _ = select.select(watched, [], [], timeout)
        if probe in ready:
            # Every queued datagram gets the current value.
            reply = f"{counter}\n".encode()
            while True:
                try:
                    _, addr = probe.recvfrom(512)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    continue
                try:
                    probe.sendto(reply, addr)
                except OSError:
                    pass
        if srv in ready:
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            try:
                conn.sendall(f"{counter}\n".encode())
            except OSError:
                pass
            finally:
                conn.close()
            counter += 1
        now = time.monotonic()
        if now >= next_tick:
            counter += 1
            tmp = args.file + ".tmp"
            with open(tmp, "w") as f:
                f.write(f"{counter}\n")
            os.replace(tmp, args.file)
            if counter % 100 == 0:
                print(f"counter: {counter}", flush=True)
            # After a restore (a pause of any length) the ticks resume from now instead of catching up.
            next_tick = max(next_tick + 0.1, now)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(0)
