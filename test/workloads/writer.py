#!/usr/bin/env python3
"""The writer of writer.c for hosts without a C compiler: same commands, same page contents.

Every 8-byte word w of page i written with tag t holds (t << 48) | (i << 16) | w.
"""
import ctypes
import select
import struct
import sys

PAGE = 4096
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
PROT_RW, MAP_PRIVATE_ANON = 3, 0x22


def mmap(n):
    addr = libc.mmap(None, n * PAGE, PROT_RW, MAP_PRIVATE_ANON, -1, 0)
    if addr in (None, ctypes.c_void_p(-1).value):
        sys.exit("mmap failed")
    return addr


def main():
    pages = int(sys.argv[1]) * 256
    buf = mmap(pages)

    def fill(i, tag):
        base = (tag << 48) | (i << 16)
        ctypes.memmove(buf + i * PAGE, struct.pack("<512Q", *range(base, base + 512)), PAGE)

    for i in range(pages):
        fill(i, 1)
    out = sys.stdout
    out.write("ready %x %d\n" % (buf, pages))
    out.flush()
    for line in sys.stdin:
        f = line.split()
        if not f:
            continue
        cmd, args = f[0], [int(x) for x in f[1:]]
        if cmd == "quit":
            return
        if cmd == "write":
            idx = [i for i in args[1:] if i < pages]
            for i in idx:
                fill(i, args[0])
            out.write("done %d\n" % len(idx))
        elif cmd == "read":
            idx = [i for i in args if i < pages]
            for i in idx:
                ctypes.c_uint64.from_address(buf + i * PAGE).value
            out.write("done %d\n" % len(idx))
        elif cmd == "every":
            idx = range(args[2] if len(args) > 2 else 0, pages, args[1])
            for i in idx:
                fill(i, args[0])
            out.write("done %d\n" % len(idx))
        elif cmd == "unmap":
            libc.munmap(buf + args[0] * PAGE, args[1] * PAGE)
            out.write("done %d\n" % args[1])
        elif cmd == "map":
            m = mmap(args[0])
            for i in range(args[0]):
                ctypes.c_uint8.from_address(m + i * PAGE).value = 1
            out.write("done %x\n" % m)
        elif cmd == "spin":
            out.write("spinning\n")
            out.flush()
            tag, i, n = 2, 0, 1
            while True:
                if i >= pages:
                    i, tag = 0, tag + 1
                fill(i, tag)
                if n % 64 == 0 and select.select([sys.stdin], [], [], 0)[0]:
                    break
                i, n = i + args[0], n + 1
            continue
        else:
            out.write("error unknown command %s\n" % cmd)
        out.flush()


main()
