"""`ustack serve APP`: run a server on the topology's TAP until a signal.

Prints one line when ready and the stack's counters when it stops
(SIGINT or SIGTERM).
"""

from __future__ import annotations

import argparse
import signal
import sys
from types import FrameType

from ustack.apps.udp_echo import serve_udp_echo
from ustack.runtime import close_context, format_counters, open_context


def serve(args: argparse.Namespace) -> int:
    if not 1 <= args.port <= 65535:
        raise ValueError(f"--port must be 1..65535, got {args.port}")
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    old = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    ctx = open_context(
        name=args.name, addr=args.addr, gateway=args.gateway, poll=args.poll, pcap=args.pcap
    )
    try:
        ctx.start()
        iface = ctx.stack.iface
        print(
            f"ustack {args.app} ready on {iface.cidr} port {args.port} "
            f"(stack ustack, poll {args.poll}, mac {iface.mac_str}, netns {args.name})",
            flush=True,
        )
        echoed = serve_udp_echo(ctx, args.port, lambda: stopping)
        stats: dict[str, int | float] = {**ctx.stack.stats(), **ctx.stats()}
        print(f"ustack {args.app} stopped after {echoed} datagrams; counters:")
        print(format_counters(stats))
        sys.stdout.flush()
    finally:
        close_context(ctx)
        for s, h in old.items():
            signal.signal(s, h)
    return 0
