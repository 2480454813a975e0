"""`ustack bench`: the comparison of ustack with kernel sockets (one command).

    ustack bench [--scenarios echo-latency,echo-rate,kv,bulk,connect-rate,idle]
                 [--targets NAME,...] [--placement same-cpu|cross-cpu]
                 [--seconds S] [--warmup S] [--repeat N] [--quick]
                 [--sizes 64,1024] [--connections N] [--depth 1,8] [--processes P]
                 [--rate REQ_PER_S] [--max-outstanding N]
                 [--json FILE] [--plot FILE.png] [--no-calibrate] [--name TOPO]

Builds its own topology (removed at the end, also on Ctrl-C or SIGTERM)
unless --name names one that is already up.  Needs root.  `ustack.cli`
hands `ustack bench ...` to `main` here and lists the options in its help
through `add_bench_parser(subparsers)`; `python -m ustack.bench.cli ...`
runs it too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from types import FrameType
from typing import Any

from ustack.bench import report
from ustack.bench.scenarios import (
    PLACEMENTS,
    SCENARIOS,
    Bench,
    Config,
    build_cases,
    client_sysctls,
    placement_cpus,
    run_all,
)
from ustack.bench.targets import BY_NAME, TARGETS, memcached_installed
from ustack.topology import Topology

QUICK = {"seconds": 0.6, "warmup": 0.2, "repeat": 1, "idle_seconds": 0.6, "retries": 0}


def _ints(text: str) -> list[int]:
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from None
    if not out or any(x <= 0 for x in out):
        raise argparse.ArgumentTypeError(f"need positive integers: {text!r}")
    return out


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def default_targets() -> list[str]:
    """Every target but the sinks; memcached only when installed."""
    out = [t.name for t in TARGETS if not t.name.startswith("sink-")]
    if not memcached_installed():
        out.remove("memcached")
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    target_help = ", ".join(f"{t.name}" for t in TARGETS)
    p.add_argument(
        "--scenarios",
        type=_names,
        default=list(SCENARIOS),
        help=f"comma-separated, of: {', '.join(SCENARIOS)} (default: all)",
    )
    p.add_argument(
        "--targets",
        type=_names,
        default=None,
        help=f"comma-separated, of: {target_help} (default: all but the sinks;"
        " memcached when installed)",
    )
    p.add_argument("--placement", choices=sorted(PLACEMENTS), default="same-cpu")
    p.add_argument("--seconds", type=float, default=5.0, help="timed window per run (5)")
    p.add_argument("--warmup", type=float, default=1.0, help="warm-up per run, s (1)")
    p.add_argument("--repeat", type=int, default=3, help="runs per case and target (3)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 0.6 s windows, 0.2 s warm-up, 1 run each, no re-runs",
    )
    p.add_argument("--sizes", type=_ints, default=[64, 1024], help="echo-latency sizes (64,1024)")
    p.add_argument("--connections", type=int, default=16, help="echo-rate and kv connections (16)")
    p.add_argument(
        "--depth", type=_ints, default=[1, 8], help="requests in flight per connection (1,8)"
    )
    p.add_argument("--processes", type=int, default=2, help="load generator processes (2)")
    p.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="echo-rate and kv open loop: offered requests/s in all, on a fixed schedule"
        " split over the processes (default 0: closed loop, --depth in flight)",
    )
    p.add_argument(
        "--max-outstanding",
        type=int,
        default=256,
        help="open loop: requests in flight per connection at most; more are dropped (256)",
    )
    p.add_argument("--kv-keys", type=int, default=10000)
    p.add_argument("--kv-value", type=int, default=1024, help="kv value bytes (1024)")
    p.add_argument("--kv-get-ratio", type=float, default=0.9)
    p.add_argument("--bulk-chunk", type=int, default=65536)
    p.add_argument("--connect-processes", type=int, default=2)
    p.add_argument("--idle-seconds", type=float, default=5.0)
    p.add_argument("--idle-connections", type=int, default=1)
    p.add_argument("--baseline", default=None, help="target the ratios are against (kernel-uvloop)")
    p.add_argument(
        "--no-calibrate",
        action="store_true",
        help="skip the load generator's ceiling runs against the kernel sink",
    )
    p.add_argument(
        "--max-other",
        type=float,
        default=0.25,
        help="run again when other work took this share of the pinned CPUs (0.25)",
    )
    p.add_argument("--retries", type=int, default=2, help="at most this many re-runs (2)")
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=0.0,
        help="before each run wait up to this many seconds for idle CPUs (0)",
    )
    p.add_argument("--json", metavar="FILE", help="write every figure as JSON")
    p.add_argument("--plot", metavar="FILE.png", help="write a PNG of the results")


def add_bench_parser(subparsers: Any) -> argparse.ArgumentParser:
    """`ustack bench` in the main command line (subparsers of ustack.cli)."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "bench", help="compare ustack with kernel sockets (echo, kv, bulk, connects, idle)"
    )
    p.add_argument(
        "--name",
        default=None,
        help="topology to use (default: a private one, built and removed by this run)",
    )
    add_arguments(p)
    p.set_defaults(func=run_bench)
    return p


def config_from(args: argparse.Namespace) -> Config:
    if args.quick:
        for k, v in QUICK.items():
            setattr(args, k, v)
    targets = args.targets if args.targets is not None else default_targets()
    unknown = [t for t in targets if t not in BY_NAME]
    if unknown:
        raise ValueError(f"unknown target(s) {', '.join(unknown)} (have {', '.join(BY_NAME)})")
    bad = [s for s in args.scenarios if s not in SCENARIOS]
    if bad:
        raise ValueError(f"unknown scenario(s) {', '.join(bad)} (have {', '.join(SCENARIOS)})")
    if args.seconds <= 0 or args.warmup < 0 or args.repeat < 1:
        raise ValueError("--seconds must be > 0, --warmup >= 0, --repeat >= 1")
    if args.connections < 1 or args.processes < 1 or args.connect_processes < 1:
        raise ValueError("--connections, --processes and --connect-processes must be >= 1")
    if args.rate < 0 or args.max_outstanding < 1:
        raise ValueError("--rate must be >= 0 (0: closed loop), --max-outstanding >= 1")
    if not 0.0 <= args.kv_get_ratio <= 1.0 or args.kv_keys < 1 or args.kv_value < 1:
        raise ValueError("--kv-get-ratio must be 0..1, --kv-keys and --kv-value >= 1")
    server_cpu, client_cpu = placement_cpus(args.placement)
    return Config(
        placement=args.placement,
        server_cpu=server_cpu,
        client_cpu=client_cpu,
        seconds=args.seconds,
        warmup=args.warmup,
        repeat=args.repeat,
        scenarios=list(args.scenarios),
        targets=targets,
        sizes=args.sizes,
        connections=args.connections,
        depths=args.depth,
        processes=args.processes,
        kv_keys=args.kv_keys,
        kv_value=args.kv_value,
        kv_get_ratio=args.kv_get_ratio,
        bulk_chunk=args.bulk_chunk,
        connect_processes=args.connect_processes,
        idle_seconds=args.idle_seconds,
        idle_connections=args.idle_connections,
        rate=args.rate,
        max_outstanding=args.max_outstanding,
        calibrate=not args.no_calibrate,
        baseline=args.baseline,
        max_other=args.max_other,
        retries=args.retries,
        quiet_wait=args.quiet_wait,
        cpus_available=len(os.sched_getaffinity(0)),
    )


def machine_info() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    import platform

    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class _Terminated(Exception):
    pass


def run_bench(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    cases = build_cases(cfg)
    if os.geteuid() != 0:
        print("ustack bench: needs root (namespaces, TAP, pinning servers)", file=sys.stderr)
        return 1
    own = args.name is None
    topo = Topology(args.name or f"ustbench{os.getpid()}")
    if not own and not topo.exists():
        print(
            f"ustack bench: topology {topo.name} is not up (ustack up --name ...)", file=sys.stderr
        )
        return 1
    argv = sys.argv[1:]
    if argv[:1] == ["bench"]:  # run as `ustack bench ...`, not `python -m ustack.bench.cli`
        argv = argv[1:]
    command = "ustack bench " + " ".join(shlex.quote(a) for a in argv)
    main_pid = os.getpid()

    def on_term(signum: int, frame: FrameType | None) -> None:
        # pyroute2 may fork helpers that inherit this handler; only we unwind.
        if os.getpid() != main_pid:
            os._exit(128 + signum)
        raise _Terminated

    old = signal.signal(signal.SIGTERM, on_term)
    # This process only waits for its children; keep it on the client's CPU.
    os.sched_setaffinity(0, {cfg.client_cpu})
    t0 = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="ustack-bench-") as workdir:
            if own:
                topo.up()
            try:
                client_sysctls(topo)
                _progress(
                    f"ustack bench: topology {topo.name}; placement {cfg.placement} (server CPU"
                    f" {cfg.server_cpu}, load generator CPU {cfg.client_cpu}); targets"
                    f" {', '.join(cfg.targets)}; {len(cases)} cases x {cfg.repeat} runs,"
                    f" {cfg.warmup:g} s warm-up + {cfg.seconds:g} s each"
                )
                bench = Bench(topo, cfg, workdir, _progress)
                ceiling_runs, results = run_all(bench, cases)
            finally:
                if own:
                    topo.down()
    except (KeyboardInterrupt, _Terminated):
        _progress("ustack bench: interrupted; servers and load generators stopped")
        return 130
    finally:
        signal.signal(signal.SIGTERM, old)
    elapsed = time.monotonic() - t0
    machine = machine_info()
    summaries = report.summarize(cases, results, cfg)
    ceils = report.ceilings_of(ceiling_runs)
    header = [
        f"command: {command}",
        f"machine: {machine['cpus']} CPUs ({machine['cpu_model']}), kernel {machine['kernel']},"
        f" Python {machine['python']}",
        f"placement: {cfg.placement}: server (and its stack) on CPU {cfg.server_cpu},"
        f" load generator on CPU {cfg.client_cpu}",
        f"runs: {cfg.repeat} per case and target, targets alternating, {cfg.warmup:g} s warm-up"
        f" + {cfg.seconds:g} s timed, a fresh server each; {elapsed:.0f} s in all",
        f"load: echo-rate/kv {cfg.connections} connections over {cfg.processes} processes,"
        + (
            f" open loop at {cfg.rate:,.0f} req/s offered (at most {cfg.max_outstanding} in"
            " flight per connection)"
            if cfg.rate > 0
            else f" depth {','.join(map(str, cfg.depths))}"
        )
        + f"; kv {cfg.kv_keys} keys of {cfg.kv_value} B, {cfg.kv_get_ratio:.0%} get",
    ]
    print()
    report.write_report(sys.stdout, header, summaries, ceils, cfg.placement)
    failed = [s for s in summaries if not s.runs]
    if args.json:
        doc = report.to_json(
            {"command": command, "machine": machine, "config": asdict(cfg), "seconds": elapsed},
            cases,
            summaries,
            ceiling_runs,
            ceils,
            results,
        )
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
    if args.plot:
        report.plot(
            args.plot,
            cases,
            summaries,
            f"ustack bench, {cfg.placement}, {machine['cpus']} CPUs; medians of {cfg.repeat} runs",
        )
    if failed:
        print(
            f"\n{len(failed)} case/target pair(s) without figures: "
            + "; ".join(f"{s.case} {s.target}" for s in failed),
            file=sys.stderr,
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ustack", description="compare ustack with kernel sockets"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    add_bench_parser(sub)
    args = parser.parse_args(["bench", *(sys.argv[1:] if argv is None else argv)])
    try:
        rc: int = args.func(args)
    except (ValueError, OSError) as exc:
        print(f"ustack bench: error: {exc}", file=sys.stderr)
        return 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
