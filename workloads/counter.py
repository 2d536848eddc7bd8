#!/usr/bin/env python3
"""precog counter service: a counter kept in memory, visible from outside the container.

Every TCP connection to PORT (default 7000) gets one line "<counter>\n" and the counter then goes up by one; the
counter also goes up by one every 100 ms and is written to FILE (default /var/lib/counter/value) each time. One
thread, one process, no timers outside the process: its state survives a CRIU checkpoint/restore or migration.

    counter.py [--port 7000] [--file /var/lib/counter/value]

--port 0: no TCP socket, the file only (CRIU 4.1.1 cannot dump TCP sockets on Linux 6.16 and later, see
docs/containers.md).
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
    args = ap.parse_args()
    os.makedirs(os.path.dirname(args.file), exist_ok=True)
    srv = None
    if args.port > 0:
        srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("0.0.0.0", args.port))
        srv.listen(64)
    counter = 0
    print(f"counter: {f'listening on port {args.port}, ' if srv else ''}writing {args.file}", flush=True)
    next_tick = time.monotonic()
    while True:
        timeout = max(0.0, next_tick - time.monotonic())
        ready, _, _ = select.select([srv] if srv else [], [], [], timeout)
        if srv and ready:
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
