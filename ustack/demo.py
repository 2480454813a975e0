"""`make demo` / `ustack demo`: the kv server on ustack and on kernel sockets, side by side.

Runs `ustack bench` with a short kv scenario (memcached text protocol,
90% get / 10% set of 1 KB values over 10,000 keys) against three
targets: the kv app on ustack (hybrid polling), the same app on kernel
sockets with uvloop, and Debian's memcached when it is installed.  The
bench brings up its own topology, starts each server, drives them with
the same load generator, prints the table, writes the plot and tears
everything down.
"""

from __future__ import annotations

import argparse
import os
import shutil

from ustack.topology import Topology

DEMO_PLOT = "ustack-demo.png"


def run_demo(name: str, plot: str = DEMO_PLOT, *, quick: bool = False) -> int:
    """The comparison on topology `name` (made and removed here); the plot goes to `plot`."""
    from ustack.bench.cli import add_bench_parser, run_bench

    targets = ["ustack-hybrid", "kernel-uvloop"]
    if shutil.which("memcached"):
        targets.append("memcached")
    parser = argparse.ArgumentParser(prog="ustack")
    add_bench_parser(parser.add_subparsers(dest="command"))
    plot_path = os.path.abspath(plot)
    timing = ["--quick"] if quick else ["--seconds", "3", "--warmup", "1", "--repeat", "2"]
    args = parser.parse_args(
        [
            "bench",
            "--name",
            name,
            "--scenarios",
            "kv,echo-latency",
            "--targets",
            ",".join(targets),
            "--sizes",
            "64",
            "--depth",
            "1",
            *timing,
            "--no-calibrate",
            "--plot",
            plot_path,
        ]
    )
    print(
        f"ustack demo: the kv server on ustack and on kernel sockets ({', '.join(targets)}), "
        "same client, same machine; about a minute",
        flush=True,
    )
    topo = Topology(name).up()
    try:
        rc = run_bench(args)
    finally:
        topo.down()
    if rc == 0:
        print(f"\nplot written to {plot_path}")
    return rc
