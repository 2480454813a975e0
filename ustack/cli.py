"""The `ustack` command line: topology management, the demo and the servers.

Errors a user can cause (no root, no /dev/net/tun, a bad name, a missing
topology) print one line on stderr and exit with status 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from ustack.errors import UstackError
from ustack.topology import DEFAULT_NAME, Topology


def _cmd_up(args: argparse.Namespace) -> int:
    topo = Topology(args.name).up()
    print(
        f"topology {topo.name} up: netns {topo.client_ns} ({topo.tap} {topo.client_addr}/24, "
        f"ustack answers as {topo.ustack_addr}), netns {topo.kernel_ns} "
        f"(veth {topo.kernel_addr}/24 <-> {topo.veth_client_addr}/24)"
    )
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    topo = Topology(args.name)
    existed = topo.exists()
    topo.down()
    print(f"topology {topo.name} {'removed' if existed else 'was not up'}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from ustack.demo import run_demo

    return run_demo(args.name, args.plot, quick=args.quick)


SERVE_APPS = ["udp-echo", "echo", "discard", "kv"]


def _size(text: str) -> int:
    """A size in bytes, with an optional k or m suffix (as memcached's -I)."""
    units = {"k": 1 << 10, "m": 1 << 20}
    t = text.strip().lower()
    scale = units.get(t[-1:], 1)
    digits = t[:-1] if scale != 1 else t
    if not digits.isdigit():
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (bytes, or with k or m)")
    return int(digits) * scale


def _cmd_serve(args: argparse.Namespace) -> int:
    from ustack.serve import serve

    return serve(args)


def _cmd_stats(args: argparse.Namespace) -> int:
    from ustack.serve import print_live_stats

    return print_live_stats(args.name, as_json=args.json)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ustack", description="userspace TCP/IP stack over TAP")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(
        name: str, fn: Callable[[argparse.Namespace], int], help_: str
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_)
        p.add_argument("--name", default=DEFAULT_NAME, help="topology name (default: %(default)s)")
        p.set_defaults(func=fn)
        return p

    add("up", _cmd_up, "create the namespaces, TAP and veth of a topology")
    add("down", _cmd_down, "remove a topology")
    demo = add("demo", _cmd_demo, "the kv server on ustack and on kernel sockets, side by side")
    demo.add_argument("--plot", default="ustack-demo.png", help="where to write the plot")
    demo.add_argument("--quick", action="store_true", help="a few seconds per target")
    serve = add("serve", _cmd_serve, "run a server (on ustack, or on kernel sockets)")
    serve.add_argument("app", choices=SERVE_APPS, help="which server")
    serve.add_argument(
        "--stack",
        choices=["ustack", "kernel"],
        default="ustack",
        help="ustack (198.18.0.2 on the TAP) or kernel sockets "
        "(198.19.0.2 in netns NAME-k) (default: %(default)s)",
    )
    serve.add_argument(
        "--loop",
        choices=["uvloop", "asyncio"],
        default="uvloop",
        help="event loop of --stack kernel (default: %(default)s)",
    )
    serve.add_argument(
        "--offload",
        action="store_true",
        help="ustack: virtio-net headers, checksum offload and TSO/GRO",
    )
    serve.add_argument(
        "--stats-json",
        default=None,
        metavar="FILE",
        help="write the counters to FILE at exit and on SIGUSR1",
    )
    serve.add_argument(
        "--port", type=int, default=None, help="port (default: echo 7, discard 9, kv 11211)"
    )
    serve.add_argument("--addr", default="198.18.0.2/24", help="our address (default: %(default)s)")
    serve.add_argument("--gateway", default=None, help="default gateway")
    serve.add_argument(
        "--poll", choices=["busy", "interrupt", "hybrid"], default="hybrid", help="polling mode"
    )
    serve.add_argument("--workers", type=int, default=1, help="worker processes (ustack only)")
    serve.add_argument("--pcap", default=None, help="record every frame in and out to FILE")
    serve.add_argument(
        "--fault", default=None, help="inject faults, e.g. loss=0.05,delay=20ms (ustack only)"
    )
    serve.add_argument(
        "--memory-limit",
        type=int,
        default=64,
        metavar="MB",
        help="kv: memory for items, in MiB, LRU eviction beyond (default: %(default)s)",
    )
    serve.add_argument(
        "--item-size-max",
        type=_size,
        default=1 << 20,
        metavar="SIZE",
        help="kv: largest item, bytes or with k/m (default: 1m)",
    )
    serve.add_argument(
        "--keys",
        choices=["strict", "memcached"],
        default="strict",
        help="kv: strict refuses control characters in keys (the protocol's rule); "
        "memcached takes any byte but a space, as memcached does (default: strict)",
    )
    stats = add("stats", _cmd_stats, "print the live counters of the running servers")
    stats.add_argument("--json", action="store_true", help="print JSON instead of a table")
    # Parsed by ustack.bench.cli (see main): listed here for --help only, so
    # that other commands do not import the benchmark and its dependencies.
    sub.add_parser(
        "bench",
        help="compare ustack with kernel sockets (echo, kv, bulk, connects, idle)",
        add_help=False,
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:
        from ustack.bench.cli import main as bench_main

        return bench_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        rc: int = args.func(args)
    except (UstackError, OSError, ValueError) as exc:
        print(f"ustack {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return rc


if __name__ == "__main__":
    sys.exit(main())
