"""cProfile of ustack's TCP receive path: a kernel sender streams into a ustack sink.

Usage (as root):  .venv/bin/python tools/profile_tcp_rx.py [--bytes N] [--offload]

Brings up a private topology, listens on port 9 with the Context in busy
mode, lets a kernel socket in the client namespace send N bytes, and
prints the rate, the TCP/ring counters and the 14 functions with the most
own time.  The profiler roughly doubles the per-segment cost; use it for
where the time goes, tools/bench_bulk.py for how fast it is.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import socket
import threading
import time

from ustack import netns
from ustack.runtime import close_context, open_context
from ustack.stack.tcp import TcpConnection
from ustack.topology import Topology


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bytes", type=int, default=200_000_000)
    p.add_argument("--offload", action="store_true")
    args = p.parse_args()
    total: int = args.bytes
    topo = Topology(f"ustprof{os.getpid()}").up()
    try:
        ctx = open_context(name=topo.name, offload=args.offload, poll="busy")
        ctx.start()
        listener = ctx.stack.tcp.listen(9)

        def send() -> None:
            with netns.inside(topo.name), socket.create_connection((topo.ustack_addr, 9)) as s:
                chunk = bytes(1 << 20)
                left = total
                while left > 0:
                    s.sendall(chunk[: min(left, len(chunk))])
                    left -= len(chunk)

        sender = threading.Thread(target=send)
        sender.start()
        buf = bytearray(1 << 20)
        got = 0
        conn: TcpConnection | None = None

        def ready() -> bool:
            if conn is None:
                return listener.ready > 0
            return conn.readable_bytes > 0 or conn.eof

        t0 = time.monotonic()
        prof = cProfile.Profile()
        prof.enable()
        while True:
            ctx.wait_until(ready, 1.0)
            if conn is None:
                conn = listener.accept()
                continue
            got += conn.recv_into(buf)
            if conn.eof:
                break
        prof.disable()
        dt = time.monotonic() - t0
        sender.join()
        print(f"received {got} bytes in {dt:.2f} s = {got * 8 / dt / 1e9:.2f} Gbit/s (profiled)")
        stats = ctx.stack.stats()
        print({k: v for k, v in stats.items() if k.startswith(("tcp_in", "tcp_out", "dev_rx_f"))})
        pstats.Stats(prof).sort_stats("tottime").print_stats(14)
        close_context(ctx)
    finally:
        topo.down()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
