"""The downtime probe's UDP side, shared by the workloads (src/runtime/probe.ts asks, the workload answers).

    from udpprobe import open_probe, serve
    sock = open_probe(7001)                      # non-blocking, 0.0.0.0:7001; None for port 0
    serve(sock, lambda question: b"42\\n")        # answers every queued datagram, returns when none is left
"""
import select
import socket
import time


def open_probe(port: int):
    """A non-blocking UDP socket on 0.0.0.0:port, or None for port 0."""
    if port <= 0:
        return None
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0", port))
    sock.setblocking(False)
    return sock


def serve(sock, reply_to) -> None:
    """Answers every datagram queued on sock with reply_to(question bytes, stripped); nothing when sock is None."""
    if sock is None:
        return
    while True:
        try:
            msg, addr = sock.recvfrom(512)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            # e.g. ECONNREFUSED queued by an ICMP error: nothing to answer, keep draining
            continue
        try:
            sock.sendto(reply_to(msg.strip()), addr)
        except OSError:
            pass


class Pacer:
    """Holds a rate of per_s units of work per second (inf: no wait). wait(done, ...) sleeps until `done` units are
    due, answering the probe (answer()) whenever a datagram arrives meanwhile. More than a second behind means the
    process was paused (frozen, checkpointed, migrated): the rate is kept from then on instead of caught up in a
    burst."""

    def __init__(self, per_s: float):
        self.per_s = per_s
        self.start = time.monotonic()
        self.done = 0

    def wait(self, done: int, sock, answer) -> None:
        if self.per_s == float("inf"):
            return
        now = time.monotonic()
        due = self.start + (done - self.done) / self.per_s
        if now - due > 1.0:
            self.start, self.done, due = now, done, now
        while due > now:
            if sock is None:
                time.sleep(due - now)
            else:
                ready, _, _ = select.select([sock], [], [], due - now)
                if ready:
                    answer()
            now = time.monotonic()
