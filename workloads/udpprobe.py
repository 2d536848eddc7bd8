"""The downtime probe's UDP side, shared by the workloads (src/runtime/probe.ts asks, the workload answers).

    from udpprobe import open_probe, serve
    sock = open_probe(7001)                      # non-blocking, 0.0.0.0:7001; None for port 0
    serve(sock, lambda question: b"42\\n")        # answers every queued datagram, returns when none is left
"""
import socket


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
