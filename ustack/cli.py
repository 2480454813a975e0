"""The `ustack` command line: topology management and the demo.

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

    return run_demo(args.name)


def _cmd_serve(args: argparse.Namespace) -> int:
    from ustack.serve import serve

    return serve(args)


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
    add("demo", _cmd_demo, "bring a topology up, show the ring at work, tear it down")
    serve = add("serve", _cmd_serve, "run a server on ustack")
    serve.add_argument("app", choices=["udp-echo"], help="which server")
    serve.add_argument("--port", type=int, default=7, help="port (default: %(default)s)")
    serve.add_argument("--addr", default="198.18.0.2/24", help="our address (default: %(default)s)")
    serve.add_argument("--gateway", default=None, help="default gateway")
    serve.add_argument(
        "--poll", choices=["busy", "interrupt", "hybrid"], default="hybrid", help="polling mode"
    )
    serve.add_argument("--pcap", default=None, help="record every frame in and out to FILE")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
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
