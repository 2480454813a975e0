"""`ustack serve APP`: run a server until a signal.

Two paths.  `udp-echo` is the native one: a Context polled by hand on the
topology's TAP (the stack's own counters at the end).  `echo`, `discard`
and `kv` are asyncio apps run by `ustack.apps.runner` on ustack's asyncio
loop (`--stack ustack`) or on kernel sockets with uvloop in netns NAME-k
(`--stack kernel`).  Each prints one line when ready and its counters
when it stops (SIGINT or SIGTERM).
"""

from __future__ import annotations

import argparse
import signal
import sys
from types import FrameType
from typing import Any

from ustack.errors import UstackError


def serve(args: argparse.Namespace) -> int:
    if args.app == "udp-echo":
        return serve_udp_echo(args)
    if args.memory_limit < 1:
        raise ValueError(f"--memory-limit must be at least 1 (MiB), got {args.memory_limit}")
    from ustack.apps.runner import run_app

    return run_app(
        args.app,
        stack=args.stack,
        name=args.name,
        port=args.port,
        addr=args.addr,
        poll=args.poll,
        pcap=args.pcap,
        fault=args.fault,
        offload=args.offload,
        loop=args.loop,
        workers=args.workers,
        memory_limit=args.memory_limit << 20,
        item_size_max=args.item_size_max,
        stats_json=args.stats_json,
        keys=args.keys,
    )


def print_live_stats(name: str, *, as_json: bool = False) -> int:
    """`ustack stats`: the counters of every running server of topology `name`."""
    import json

    from ustack.apps.runner import read_live_stats
    from ustack.runtime import format_counters

    snaps = read_live_stats(name)
    if not snaps:
        raise UstackError(
            f"no running server of topology {name} answers (ustack serve --name {name})"
        )
    if as_json:
        print(json.dumps(snaps, indent=1, sort_keys=True))
        return 0
    for snap in snaps:
        print(
            f"{snap['app']} pid {snap['pid']} on {snap['host']} port {snap['port']} "
            f"(stack {snap['stack']}, mode {snap['mode']})"
        )
        print(format_counters(snap["counters"]))
        conns = snap["connections"]
        if conns:
            print(f"connections ({len(conns)}):")
        for c in conns:
            print(
                f"    {c['state']:12} {c['local']:>21} {c['remote']:>21}  cwnd:{c['cwnd']}"
                f" ssthresh:{c['ssthresh']} srtt:{c['srtt_us']}us rttvar:{c['rttvar_us']}us"
                f" rto:{c['rto_us']}us retrans:{c['retransmits']} bytes_acked:{c['bytes_acked']}"
                f" bytes_received:{c['bytes_received']} sack_holes:{c['sack_holes']}"
            )
    return 0


def serve_udp_echo(args: argparse.Namespace) -> int:
    """UDP echo on the native datagram socket of one Context."""
    from ustack.apps.udp_echo import serve_udp_echo as echo_loop
    from ustack.runtime import close_context, format_counters, open_context

    if args.stack != "ustack":
        raise UstackError("udp-echo runs on ustack's native API only; `echo` runs on both stacks")
    if args.workers != 1:
        raise UstackError("udp-echo runs one Context; --workers is for the asyncio apps")
    port = 7 if args.port is None else args.port
    if not 1 <= port <= 65535:
        raise ValueError(f"--port must be 1..65535, got {port}")
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    kwargs: dict[str, Any] = {}
    if args.fault is not None:
        kwargs["fault"] = args.fault
    old = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        ctx = open_context(
            name=args.name,
            addr=args.addr,
            gateway=args.gateway,
            poll=args.poll,
            pcap=args.pcap,
            **kwargs,
        )
        try:
            ctx.start()
            iface = ctx.stack.iface
            print(
                f"ustack {args.app} ready on {iface.cidr} port {port} "
                f"(stack ustack, poll {args.poll}, mac {iface.mac_str}, netns {args.name})",
                flush=True,
            )
            echoed = echo_loop(ctx, port, lambda: stopping)
            stats: dict[str, int | float] = {**ctx.stack.stats(), **ctx.stats()}
            print(f"ustack {args.app} stopped after {echoed} datagrams; counters:")
            print(format_counters(stats))
            sys.stdout.flush()
        finally:
            close_context(ctx)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return 0
