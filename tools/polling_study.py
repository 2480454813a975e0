"""Polling study: ustack's polling modes under rising offered load.

After Cai and Karsten, "Kernel vs. User-Level Networking: Don't Throw Out
the Stack with the Interrupts" (SIGMETRICS 2024): does polling while busy
and sleeping on interrupts only when idle (ustack's `hybrid`, their Kernel
Polling) give most of busy polling's throughput and latency at a fraction
of its cost when there is little or no work?

For each offered rate (open loop: `ustack bench --rate`, requests on a
fixed schedule whatever the replies do; `max` is the closed loop, --depth
requests in flight per connection) and each target (ustack-busy,
ustack-interrupt, ustack-hybrid, and kernel-uvloop as the reference), one
kv (or echo) run through ustack.bench's own machinery: a fresh server
pinned to the server CPU, the load generator's processes on the other,
/proc of the server over the timed window.  Within a repetition every
rate runs every target in turn (the order of the targets rotating from
one repetition to the next); figures are medians over the repetitions.
Then the idle case per target: what the server costs with a connection
open and no traffic.

Per target and rate: offered and achieved requests/s, p50 and p99 latency
(from each request's scheduled send time), server CPU per request (user +
system, us) and its CPU utilisation, and the requests the load generator
could not send (dropped at --max-outstanding in flight per connection, or
late: it fell behind its own schedule).  Written as a text table (stdout,
--text), JSON (--json, every run included) and a PNG (--plot).

    python tools/polling_study.py [--rates 2000,5000,10000,20000,40000,max]
        [--targets ustack-busy,ustack-interrupt,ustack-hybrid,kernel-uvloop]
        [--case kv|echo] [--connections 16] [--processes 2] [--depth 1]
        [--seconds 3] [--warmup 1] [--repeat 3] [--idle-seconds 5]
        [--placement cross-cpu|same-cpu] [--json FILE] [--plot FILE.png]
        [--text FILE] [--quick] [--name TOPO]

Needs root; builds its own topology (removed at the end) unless --name
names one that is up.
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
from dataclasses import asdict, dataclass, field, replace
from types import FrameType
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import machine_info, progress

from ustack.bench import report
from ustack.bench.scenarios import (
    PLACEMENTS,
    Bench,
    Case,
    Config,
    RunResult,
    build_cases,
    client_sysctls,
    paced_case,
    placement_cpus,
    run_logged,
)
from ustack.bench.targets import BY_NAME
from ustack.topology import Topology

DEFAULT_RATES = "2000,5000,10000,20000,40000,max"
DEFAULT_TARGETS = "ustack-busy,ustack-interrupt,ustack-hybrid,kernel-uvloop"
REFERENCE = "kernel-uvloop"
QUICK = {
    "seconds": 0.6,
    "warmup": 0.3,
    "repeat": 1,
    "idle_seconds": 0.6,
    "retries": 0,
    "kv_keys": 1000,
}
QUICK_RATES = "1000,4000,max"
CLOSED = 0.0  # the rate that stands for `max`: the closed loop
RUN_OVERHEAD_S = 2.5  # starting a server and the load generator (kv: setting every key), stopping

# -- rates and cases ----------------------------------------------------------------------


def parse_rates(text: str) -> list[float]:
    """'2000,5k,max' -> [2000.0, 5000.0, 0.0]: ascending, `max` (closed loop) last."""
    rates: list[float] = []
    closed = False
    for item in (x.strip().lower() for x in text.split(",")):
        if not item:
            continue
        if item == "max":
            closed = True
            continue
        scale = 1000.0 if item.endswith("k") else 1.0
        try:
            value = float(item[:-1] if scale > 1 else item) * scale
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a rate: {item!r} (numbers or max)") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"a rate must be above 0: {item!r}")
        rates.append(value)
    if not rates and not closed:
        raise argparse.ArgumentTypeError(f"no rates in {text!r}")
    out = sorted(set(rates))
    return [*out, CLOSED] if closed else out


def rate_label(rate: float) -> str:
    """'2000', or 'max' for the closed loop (JSON, plot ticks)."""
    return "max" if rate == CLOSED else f"{rate:.0f}"


def study_cases(cfg: Config, scenario: str, rates: Sequence[float]) -> list[tuple[float, Case]]:
    """One case per rate: open loop at the rate, or the closed loop for `max`."""
    out: list[tuple[float, Case]] = []
    for rate in rates:
        if rate == CLOSED:
            closed = replace(cfg, scenarios=[scenario], rate=0.0, depths=cfg.depths[:1])
            out.append((rate, build_cases(closed)[0]))
        else:
            out.append((rate, paced_case(scenario, cfg, rate)))
    return out


def idle_case(cfg: Config) -> Case:
    return build_cases(replace(cfg, scenarios=["idle"]))[0]


# -- running ------------------------------------------------------------------------------


def rotated(items: Sequence[str], n: int) -> list[str]:
    k = n % len(items) if items else 0
    return [*items[k:], *items[:k]]


def run_study(b: Bench, cases: Sequence[tuple[float, Case]], idle: Case | None) -> list[RunResult]:
    """Every case (then idle) against every target, repetition by repetition."""
    cfg = b.cfg
    targets = [BY_NAME[t] for t in cfg.targets]
    everything = [c for _, c in cases] + ([idle] if idle is not None else [])
    b.total = len(everything) * len(targets) * cfg.repeat
    results: list[RunResult] = []
    t_start = time.monotonic()
    for rep in range(cfg.repeat):
        order = [BY_NAME[t] for t in rotated([t.name for t in targets], rep)]
        for case in everything:
            what = "idle" if case.scenario == "idle" else case.name
            b.progress(f"repetition {rep + 1}/{cfg.repeat}: {what}")
            for t in order:
                r = run_logged(
                    b, case, t, rep, cfg.server_cpu, cfg.client_cpu, cfg.placement, t_start
                )
                results.append(r)
    return results


# -- figures ------------------------------------------------------------------------------


@dataclass
class Point:
    """The medians of one target at one offered rate."""

    target: str
    rate: float  # offered requests/s; 0 for the closed loop (max)
    case: str
    runs: int
    error: str | None
    offered_per_s: float | None = None  # the schedule's exact rate
    achieved_per_s: float | None = None
    p50_us: float | None = None
    p99_us: float | None = None
    cpu_us_per_req: float | None = None  # server user + system
    cpu_share: float | None = None  # of one CPU
    dropped_share: float | None = None
    late_share: float | None = None
    loadgen_cpu_share: float | None = None
    spread: dict[str, list[float]] = field(default_factory=dict)  # min, max over the runs


@dataclass
class Idle:
    target: str
    runs: int
    error: str | None
    cpu_share: float | None = None
    vcsw_per_s: float | None = None
    wakeups_per_s: float | None = None


def points_of(
    summaries: Sequence[report.Summary], cases: Sequence[tuple[float, Case]]
) -> list[Point]:
    by = {(s.case, s.target): s for s in summaries}
    targets = list(dict.fromkeys(s.target for s in summaries))
    out: list[Point] = []
    for t in targets:
        for rate, case in cases:
            s = by.get((case.name, t))
            if s is None:
                continue
            m = s.m
            p = Point(t, rate, case.name, s.runs, s.error)
            if s.runs:
                u, sy = m.get("server_user_ms_per_1k"), m.get("server_sys_ms_per_1k")
                p.offered_per_s = m.get("offered_per_s")
                p.achieved_per_s = m.get("ops_per_s")
                p.p50_us, p.p99_us = m.get("p50_us"), m.get("p99_us")
                p.cpu_us_per_req = None if u is None or sy is None else u + sy
                p.cpu_share = m.get("server_cpu_share")
                p.dropped_share = m.get("dropped_share")
                p.late_share = m.get("late_share")
                p.loadgen_cpu_share = m.get("loadgen_cpu_share")
                p.spread = {k: list(s.spread[k]) for k in ("ops_per_s", "p99_us") if k in s.spread}
            out.append(p)
    return out


def idle_of(summaries: Sequence[report.Summary]) -> list[Idle]:
    out = []
    for s in summaries:
        if s.scenario != "idle":
            continue
        i = Idle(s.target, s.runs, s.error)
        if s.runs:
            i.cpu_share = s.m.get("server_cpu_share")
            i.vcsw_per_s = s.m.get("server_vcsw_per_op")
            i.wakeups_per_s = s.m.get("loop_wakeups_per_op")
        out.append(i)
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def verdict(points: Sequence[Point], idles: Sequence[Idle]) -> dict[str, Any]:
    """The figures the Kernel Polling claim is about: hybrid (and interrupt) against busy."""
    peak: dict[str, float] = {}
    for p in points:
        if p.achieved_per_s is not None:
            peak[p.target] = max(peak.get(p.target, 0.0), p.achieved_per_s)
    idle = {i.target: i.cpu_share for i in idles if i.cpu_share is not None}
    out: dict[str, Any] = {"peak_per_s": peak, "idle_cpu_share": idle, "against_busy": {}}
    if "ustack-busy" not in peak:
        return out
    at = {(p.target, p.rate): p for p in points}
    for mode in ("ustack-hybrid", "ustack-interrupt"):
        if mode not in peak:
            continue
        per_rate = []
        for p in points:
            if p.target != mode:
                continue
            busy = at.get(("ustack-busy", p.rate))
            if busy is None:
                continue
            per_rate.append(
                {
                    "rate": rate_label(p.rate),
                    "achieved": _ratio(p.achieved_per_s, busy.achieved_per_s),
                    "p99": _ratio(p.p99_us, busy.p99_us),
                    "cpu_per_req": _ratio(p.cpu_us_per_req, busy.cpu_us_per_req),
                }
            )
        out["against_busy"][mode] = {
            "peak": _ratio(peak[mode], peak["ustack-busy"]),
            "idle_cpu": _ratio(idle.get(mode), idle.get("ustack-busy")),
            "per_rate": per_rate,
        }
    return out


# -- text ---------------------------------------------------------------------------------


def _f(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)
    ]

    def line(cells: Sequence[str]) -> str:
        return (
            "| "
            + " | ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            )
            + " |"
        )

    sep = (
        "|"
        + "|".join("-" * (w + 2) if i == 0 else "-" * (w + 1) + ":" for i, w in enumerate(widths))
        + "|"
    )
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


def points_table(points: Sequence[Point]) -> str:
    header = [
        "target", "offered/s", "achieved/s", "p50 us", "p99 us", "CPU us/req",
        "server CPU", "not sent", "loadgen CPU", "runs",
    ]  # fmt: skip
    rows = []
    for p in points:
        if not p.runs:
            why = (p.error or "no figures").splitlines()[0][:60]
            rows.append([p.target, rate_label(p.rate), why, *[""] * 7])
            continue
        not_sent = None
        if p.dropped_share is not None or p.late_share is not None:
            not_sent = (p.dropped_share or 0.0) + (p.late_share or 0.0)
        rows.append(
            [
                p.target,
                "max" if p.offered_per_s is None else f"{p.offered_per_s:,.0f}",
                _f(p.achieved_per_s, ",.0f"),
                _f(p.p50_us, ",.1f"),
                _f(p.p99_us, ",.1f"),
                _f(p.cpu_us_per_req, ",.1f"),
                _f(p.cpu_share, ".0%"),
                _f(not_sent, ".1%"),
                _f(p.loadgen_cpu_share, ".0%"),
                str(p.runs),
            ]
        )
    return _table(header, rows)


def idle_table(idles: Sequence[Idle]) -> str:
    header = ["target", "idle CPU", "vcsw/s", "wakeups/s", "runs"]
    rows = []
    for i in idles:
        if not i.runs:
            rows.append([i.target, (i.error or "no figures").splitlines()[0][:60], "", "", ""])
            continue
        rows.append(
            [
                i.target,
                _f(None if i.cpu_share is None else 100 * i.cpu_share, ".1f") + "%",
                _f(i.vcsw_per_s, ",.0f"),
                _f(i.wakeups_per_s, ",.0f"),
                str(i.runs),
            ]
        )
    return _table(header, rows)


def verdict_lines(v: dict[str, Any]) -> list[str]:
    out = []
    for mode, d in v.get("against_busy", {}).items():
        parts = [f"{mode} against ustack-busy: peak throughput {_f(d['peak'], '.0%')}"]
        if d["idle_cpu"] is not None:
            parts.append(f"idle CPU {_f(d['idle_cpu'], '.2f')}x")
        out.append("; ".join(parts))
        for r in d["per_rate"]:
            out.append(
                f"    at {r['rate']:>8}: achieved {_f(r['achieved'], '.2f')}x,"
                f" p99 {_f(r['p99'], '.2f')}x, CPU per request {_f(r['cpu_per_req'], '.2f')}x"
            )
    return out


NOTES = """\
offered/s: the open-loop schedule's rate (max: the closed loop, --depth in flight per
  connection); achieved/s: replies completed in the timed window.
p50/p99: from each request's scheduled send time to the last byte of its reply,
  as the client saw it (its timer wake-up included).
CPU us/req: the server's user + system CPU over the window per reply (/proc).
server CPU: its share of one CPU over the window; idle CPU likewise, no traffic.
not sent: share of the window's scheduled requests the load generator did not send
  (dropped at --max-outstanding in flight per connection, or late: over 100 ms
  behind its schedule); late with low server CPU means the load generator, not
  the server, was the limit.
medians over the repetitions, each metric on its own."""


def write_text(
    out: Any,
    header: Sequence[str],
    points: Sequence[Point],
    idles: Sequence[Idle],
    v: dict[str, Any],
) -> None:
    w = out.write
    for line in header:
        w(line + "\n")
    w("\nOffered load against achieved, latency and server CPU (medians)\n\n")
    w(points_table(points) + "\n\n")
    if idles:
        w("Idle: server CPU with one connection open and no traffic\n\n")
        w(idle_table(idles) + "\n\n")
    lines = verdict_lines(v)
    if lines:
        w("Kernel Polling check (ratios to ustack-busy)\n\n")
        for line in lines:
            w(f"  {line}\n")
        w("\n")
    w(NOTES + "\n")


# -- plot ---------------------------------------------------------------------------------


def plot(
    path: str, points: Sequence[Point], idles: Sequence[Idle], rates: Sequence[float], title: str
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = list(range(len(rates)))
    labels = [rate_label(r) for r in rates]
    targets = list(dict.fromkeys(p.target for p in points))
    styles = {
        "ustack-busy": ("tab:red", "o"),
        "ustack-interrupt": ("tab:blue", "s"),
        "ustack-hybrid": ("tab:green", "^"),
        REFERENCE: ("black", "x"),
    }
    fig, axes = plt.subplots(2, 3, figsize=(17, 9.5))
    ax_ach, ax_lat, ax_cpr = axes[0]
    ax_util, ax_idle, ax_lost = axes[1]

    def series(t: str, attr: str, scale: float = 1.0) -> tuple[list[int], list[float]]:
        px, py = [], []
        for i, r in enumerate(rates):
            p = next((p for p in points if p.target == t and p.rate == r), None)
            v = getattr(p, attr) if p is not None else None
            if v is not None:
                px.append(i)
                py.append(v * scale)
        return px, py

    lost_top = 1.0
    for t in targets:
        color, marker = styles.get(t, ("tab:gray", "."))
        ls = "--" if t == REFERENCE else "-"
        kw: dict[str, Any] = {"color": color, "marker": marker, "linestyle": ls, "label": t}
        ax_ach.plot(*series(t, "achieved_per_s"), **kw)
        ax_lat.plot(*series(t, "p99_us"), **kw)
        px, py = series(t, "p50_us")
        ax_lat.plot(px, py, color=color, marker=marker, linestyle=":", alpha=0.5)
        ax_cpr.plot(*series(t, "cpu_us_per_req"), **kw)
        ax_util.plot(*series(t, "cpu_share", 100.0), **kw)
        lost_x, lost_y = [], []
        for i, r in enumerate(rates):
            p = next((p for p in points if p.target == t and p.rate == r), None)
            if p is not None and p.dropped_share is not None:
                lost_x.append(i)
                lost_y.append(100 * ((p.dropped_share or 0.0) + (p.late_share or 0.0)))
        ax_lost.plot(lost_x, lost_y, **kw)
        lost_top = max([lost_top, *lost_y])
    offered = [(i, r) for i, r in enumerate(rates) if r != CLOSED]
    if offered:
        ax_ach.plot(
            [i for i, _ in offered],
            [r for _, r in offered],
            color="gray",
            linestyle=":",
            label="offered",
        )
    for ax, ylabel, name, log in (
        (ax_ach, "requests/s", "achieved throughput", False),
        (ax_lat, "us (log); solid p99, dotted p50", "latency from scheduled send", True),
        (ax_cpr, "us per request (log)", "server CPU per request", True),
        (ax_util, "% of one CPU", "server CPU utilisation", False),
        (ax_lost, "% of scheduled requests", "not sent (dropped + late)", False),
    ):
        ax.set_xticks(xs, labels)
        ax.set_xlabel("offered requests/s (max: closed loop)")
        ax.set_ylabel(ylabel)
        ax.set_title(name, fontsize=10)
        if log:
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
    ax_ach.legend(fontsize=8)
    ax_ach.set_ylim(bottom=0)
    ax_util.set_ylim(bottom=0)
    ax_lost.set_ylim(0, lost_top * 1.1)
    names = [i.target for i in idles if i.cpu_share is not None]
    vals = [100 * (i.cpu_share or 0.0) for i in idles if i.cpu_share is not None]
    ax_idle.barh(names, vals, color=[styles.get(n, ("tab:gray", ""))[0] for n in names])
    for y, v in enumerate(vals):
        ax_idle.text(v, y, f" {v:.1f}%", va="center", fontsize=8)
    ax_idle.set_xlim(0, max([1.0, *vals]) * 1.25)
    ax_idle.invert_yaxis()
    ax_idle.set_xlabel("% of one CPU, no traffic")
    ax_idle.set_title("idle server CPU", fontsize=10)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0.0, 0.0, 1.0, 0.96))
    fig.savefig(path, dpi=90)
    plt.close(fig)


# -- command line -------------------------------------------------------------------------


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="polling_study.py",
        description="ustack's polling modes (busy, interrupt, hybrid) under rising offered load",
    )
    ap.add_argument(
        "--rates",
        default=None,
        help=f"offered requests/s in all; max = closed loop ({DEFAULT_RATES})",
    )
    ap.add_argument(
        "--targets", type=_names, default=_names(DEFAULT_TARGETS), help=f"({DEFAULT_TARGETS})"
    )
    ap.add_argument(
        "--case",
        choices=["kv", "echo"],
        default="kv",
        help="kv (memcached text, 90%% get) or 64 B echo",
    )
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--processes", type=int, default=2, help="load generator processes (2)")
    ap.add_argument(
        "--depth", type=int, default=1, help="requests in flight per connection for max (1)"
    )
    ap.add_argument(
        "--max-outstanding",
        type=int,
        default=256,
        help="open loop: in flight per connection at most (256)",
    )
    ap.add_argument("--seconds", type=float, default=3.0, help="timed window per run (3)")
    ap.add_argument("--warmup", type=float, default=1.0, help="warm-up per run (1)")
    ap.add_argument("--repeat", type=int, default=3, help="repetitions, medians over them (3)")
    ap.add_argument("--idle-seconds", type=float, default=5.0, help="idle window; 0 skips idle (5)")
    ap.add_argument("--kv-keys", type=int, default=10000)
    ap.add_argument(
        "--placement",
        choices=sorted(PLACEMENTS),
        default="cross-cpu",
        help="cross-cpu (default): server alone on CPU 0, load generator on CPU 1",
    )
    ap.add_argument(
        "--retries", type=int, default=1, help="re-runs when other work took the pinned CPUs (1)"
    )
    ap.add_argument("--max-other", type=float, default=0.25)
    ap.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke run: rates {QUICK_RATES} unless given, 0.6 s windows, 1 repetition",
    )
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--plot", metavar="FILE.png")
    ap.add_argument("--text", metavar="FILE", help="also write the tables here")
    ap.add_argument("--name", default=None, help="topology to use (default: a private one)")
    args = ap.parse_args(argv)
    if args.quick:
        for k, v in QUICK.items():
            setattr(args, k, v)
    try:
        args.rates = parse_rates(args.rates or (QUICK_RATES if args.quick else DEFAULT_RATES))
    except argparse.ArgumentTypeError as exc:
        ap.error(str(exc))
    unknown = [t for t in args.targets if t not in BY_NAME]
    if unknown:
        ap.error(f"unknown target(s) {', '.join(unknown)} (have {', '.join(BY_NAME)})")
    if args.seconds <= 0 or args.warmup < 0 or args.repeat < 1 or args.idle_seconds < 0:
        ap.error("--seconds must be > 0, --warmup and --idle-seconds >= 0, --repeat >= 1")
    if args.connections < 1 or args.processes < 1 or args.depth < 1 or args.max_outstanding < 1:
        ap.error("--connections, --processes, --depth and --max-outstanding must be >= 1")
    return args


def config_of(args: argparse.Namespace) -> Config:
    server_cpu, client_cpu = placement_cpus(args.placement)
    return Config(
        placement=args.placement,
        server_cpu=server_cpu,
        client_cpu=client_cpu,
        seconds=args.seconds,
        warmup=args.warmup,
        repeat=args.repeat,
        scenarios=["kv" if args.case == "kv" else "echo-rate"],
        targets=list(args.targets),
        connections=args.connections,
        depths=[args.depth],
        processes=args.processes,
        kv_keys=args.kv_keys,
        idle_seconds=args.idle_seconds,
        max_outstanding=args.max_outstanding,
        calibrate=False,
        baseline=REFERENCE if REFERENCE in args.targets else None,
        max_other=args.max_other,
        retries=args.retries,
        cpus_available=len(os.sched_getaffinity(0)),
    )


class _Terminated(Exception):
    pass


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = config_of(args)
    except ValueError as exc:
        print(f"polling_study: error: {exc}", file=sys.stderr)
        return 1
    if os.geteuid() != 0:
        print("polling_study: needs root (namespaces, TAP, pinning servers)", file=sys.stderr)
        return 1
    rates: list[float] = args.rates
    cases = study_cases(cfg, cfg.scenarios[0], rates)
    idle = idle_case(cfg) if args.idle_seconds > 0 else None
    own = args.name is None
    topo = Topology(args.name or f"ustps{os.getpid()}")
    if not own and not topo.exists():
        print(f"polling_study: topology {topo.name} is not up", file=sys.stderr)
        return 1
    command = "python tools/polling_study.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)
    )
    main_pid = os.getpid()

    def on_term(signum: int, frame: FrameType | None) -> None:
        if os.getpid() != main_pid:  # a forked helper inherited this handler
            os._exit(128 + signum)
        raise _Terminated

    old = signal.signal(signal.SIGTERM, on_term)
    os.sched_setaffinity(0, {cfg.client_cpu})  # this process only waits
    per_target = len(cases) * (cfg.warmup + cfg.seconds + RUN_OVERHEAD_S)
    if idle is not None:
        per_target += cfg.warmup + cfg.idle_seconds + RUN_OVERHEAD_S
    progress(
        f"polling study: {args.case}, rates {', '.join(rate_label(r) for r in rates)}; targets"
        f" {', '.join(cfg.targets)}; {cfg.repeat} repetitions; about"
        f" {per_target * len(cfg.targets) * cfg.repeat / 60:.0f} min"
    )
    t0 = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="ustack-polling-") as workdir:
            if own:
                topo.up()
            try:
                client_sysctls(topo)
                b = Bench(topo, cfg, workdir, progress)
                results = run_study(b, cases, idle)
            finally:
                if own:
                    topo.down()
    except (KeyboardInterrupt, _Terminated):
        progress("polling study: interrupted; servers and load generators stopped")
        return 130
    finally:
        signal.signal(signal.SIGTERM, old)
    elapsed = time.monotonic() - t0
    all_cases = [c for _, c in cases] + ([idle] if idle is not None else [])
    summaries = report.summarize(all_cases, results, cfg)
    points = points_of(summaries, cases)
    idles = idle_of(summaries)
    v = verdict(points, idles)
    machine = machine_info()
    header = [
        f"command: {command}",
        f"machine: {machine['cpus']} CPUs ({machine['cpu_model']}), kernel {machine['kernel']},"
        f" Python {machine['python']}",
        f"placement: {cfg.placement}: server on CPU {cfg.server_cpu}, load generator on CPU"
        f" {cfg.client_cpu}",
        f"load: {args.case}, {cfg.connections} connections over {cfg.processes} processes;"
        f" open loop at most {cfg.max_outstanding} in flight per connection; max = closed loop,"
        f" depth {args.depth}",
        f"runs: {cfg.repeat} per rate and target, targets alternating, {cfg.warmup:g} s warm-up +"
        f" {cfg.seconds:g} s timed (idle {cfg.idle_seconds:g} s); {elapsed:.0f} s in all",
    ]
    print()
    write_text(sys.stdout, header, points, idles, v)
    if args.text:
        with open(args.text, "w") as f:
            write_text(f, header, points, idles, v)
    if args.json:
        doc = {
            "command": command,
            "machine": machine,
            "config": {**asdict(cfg), "case": args.case, "depth": args.depth},
            "seconds": elapsed,
            "rates": [rate_label(r) for r in rates],
            "targets": list(cfg.targets),
            "points": [{**asdict(p), "rate": rate_label(p.rate)} for p in points],
            "idle": [asdict(i) for i in idles],
            "verdict": v,
            "runs": [r.to_json() for r in results],
        }
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
    if args.plot:
        plot(
            args.plot,
            points,
            idles,
            rates,
            f"ustack polling modes under offered load: {args.case}, {cfg.placement},"
            f" {machine['cpus']} CPUs; medians of {cfg.repeat}",
        )
    failed = [p for p in points if not p.runs] + [i for i in idles if not i.runs]
    if failed:
        progress(f"polling study: {len(failed)} point(s) without figures")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
