"""What `ustack bench` prints and writes: medians, tables, --json, --plot.

Every figure of a table is the median over the repetitions of one case
against one target (each metric on its own); the JSON keeps every run.
Ratios are against the baseline of the case (kernel-uvloop, or the sink
when the kernel target has no figures): throughput target/baseline (above
1 is faster), CPU per op target/baseline (above 1 costs more).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import IO, Any

from ustack.bench.loadgen import Histogram
from ustack.bench.scenarios import Case, Config, RunResult, derived
from ustack.bench.targets import BASELINES, BY_NAME

# Figures the issue quotes for this VM (same CPU, 64 B): a kernel baseline far
# below them means the load generator, not the server, set the pace.
ANCHORS = {
    "echo-latency-64": ("p50_us", 14.0, "kernel TCP over veth round trip p50 ~14 us"),
    "echo-rate-c1-d1": ("ops_per_s", 50000.0, "uvloop echo ~50k req/s with 1 connection"),
    "echo-rate-c16-d1": ("ops_per_s", 66000.0, "uvloop echo 66-73k req/s with 16-64 connections"),
    "echo-rate-c64-d1": ("ops_per_s", 66000.0, "uvloop echo 66-73k req/s with 16-64 connections"),
}
MEMCACHED_ANCHOR = 62000.0  # memcached -t 1 with memcaslap, ops/s


@dataclass
class Summary:
    """The medians of one case against one target."""

    case: str
    scenario: str
    target: str
    runs: int
    failed: int
    error: str | None
    m: dict[str, float | None] = field(default_factory=dict)  # medians
    spread: dict[str, tuple[float, float]] = field(default_factory=dict)  # min, max
    ratio: dict[str, float | None] = field(default_factory=dict)  # against the baseline
    baseline: str | None = None
    counters_scope: str = ""
    retried: int = 0  # runs made again because other work used our CPUs
    hist: Histogram | None = None  # merged over the runs


_METRICS = ("ops_per_s", "bytes_per_s", "p50_us", "p90_us", "p99_us", "p999_us", "mean_us")


def _median(xs: Sequence[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return statistics.median(vals) if vals else None


def summarize(cases: Sequence[Case], results: Sequence[RunResult], cfg: Config) -> list[Summary]:
    out: list[Summary] = []
    for case in cases:
        mine = [r for r in results if r.case == case.name]
        names = [t for t in cfg.targets if any(r.target == t for r in mine)]
        rows: dict[str, Summary] = {}
        for t in names:
            runs = [r for r in mine if r.target == t]
            good = [r for r in runs if r.ok]
            s = Summary(
                case.name,
                case.scenario,
                t,
                len(good),
                len(runs) - len(good),
                None if good else (runs[0].error if runs else "not run"),
            )
            if good:
                values: dict[str, list[float | None]] = {k: [] for k in _METRICS}
                for r in good:
                    for k in _METRICS:
                        values[k].append(getattr(r, k))
                    for k, v in derived(r).items():
                        values.setdefault(k, []).append(v)
                for k, vs in values.items():
                    s.m[k] = _median(vs)
                    present = [v for v in vs if v is not None]
                    if present:
                        s.spread[k] = (min(present), max(present))
                s.m["errors"] = float(sum(r.errors for r in good))
                s.m["misses"] = float(sum(r.misses for r in good))
                s.counters_scope = good[0].counters_scope
                s.retried = sum(r.attempts - 1 for r in good)
                h = Histogram()
                for r in good:
                    if r.hist:
                        h.merge(Histogram.from_json(r.hist))
                s.hist = h
            rows[t] = s
        base = cfg.baseline if cfg.baseline in rows else None
        if base is None:
            base = next((b for b in BASELINES if b in rows and rows[b].runs), None)
        for s in rows.values():
            s.baseline = base
            if base is None or not s.runs:
                continue
            bm = rows[base].m
            s.ratio = {
                "ops_per_s": _ratio(s.m.get("ops_per_s"), bm.get("ops_per_s")),
                "p50_us": _ratio(s.m.get("p50_us"), bm.get("p50_us")),
                "p99_us": _ratio(s.m.get("p99_us"), bm.get("p99_us")),
                "cpu_per_op": _ratio(_cpu_per_op(s.m), _cpu_per_op(bm)),
                "cpu_share": _ratio(s.m.get("server_cpu_share"), bm.get("server_cpu_share")),
            }
        out.extend(rows.values())
    return out


def _cpu_per_op(m: dict[str, float | None]) -> float | None:
    u, s = m.get("server_user_ms_per_1k"), m.get("server_sys_ms_per_1k")
    return None if u is None or s is None else u + s


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


# -- tables --------------------------------------------------------------------------


def _f(x: float | None, spec: str, dash: str = "-") -> str:
    return dash if x is None else format(x, spec)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], right_from: int = 2) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)
    ]

    def line(cells: Sequence[str]) -> str:
        out = []
        for i, c in enumerate(cells):
            out.append(c.rjust(widths[i]) if i >= right_from else c.ljust(widths[i]))
        return "| " + " | ".join(out) + " |"

    sep = (
        "|"
        + "|".join(
            "-" * (w + 1) + ":" if i >= right_from else "-" * (w + 2) for i, w in enumerate(widths)
        )
        + "|"
    )
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


def _scaled(x: float | None, k: float) -> float | None:
    return None if x is None else x * k


def _rate(s: Summary) -> str:
    if s.scenario == "bulk":
        return f"{_f(_scaled(s.m.get('bytes_per_s'), 1e-6), ',.1f')} MB/s"
    return _f(s.m.get("ops_per_s"), ",.0f")


def _x(r: float | None) -> str:
    return _f(r, ".2f") + "x" if r is not None else "-"


def _short(err: str | None) -> str:
    e = (err or "").splitlines()[0] if err else ""
    return e.split(":", 1)[0] if e else "-"


def performance_table(summaries: Sequence[Summary]) -> str:
    header = [
        "case", "target", "ops/s", "vs base", "p50 us", "p90 us", "p99 us", "p99.9 us",
        "p99 vs base", "runs",
    ]  # fmt: skip
    rows = []
    for s in summaries:
        if s.scenario == "idle":
            continue
        if not s.runs:
            rows.append([s.case, s.target, _short(s.error), *[""] * 7])
            continue
        m = s.m
        rows.append(
            [
                s.case,
                s.target,
                _rate(s),
                _x(s.ratio.get("ops_per_s")),
                _f(m.get("p50_us"), ".1f"),
                _f(m.get("p90_us"), ".1f"),
                _f(m.get("p99_us"), ".1f"),
                _f(m.get("p999_us"), ".1f"),
                _x(s.ratio.get("p99_us")),
                f"{s.runs}"
                + (f" ({s.retried} again)" if s.retried else "")
                + (f" +{s.failed} failed" if s.failed else ""),
            ]
        )
    return _table(header, rows)


def open_loop_table(summaries: Sequence[Summary]) -> str:
    """Offered against achieved for the open-loop (--rate) cases."""
    header = [
        "case", "target", "offered/s", "achieved/s", "achieved", "dropped", "late",
        "p50 us", "p99 us", "server CPU", "CPU us/req",
    ]  # fmt: skip
    rows = []
    for s in summaries:
        m = s.m
        if not s.runs or not m.get("offered_per_s"):
            continue
        rows.append(
            [
                s.case,
                s.target,
                _f(m.get("offered_per_s"), ",.0f"),
                _f(m.get("ops_per_s"), ",.0f"),
                _f(m.get("achieved_share"), ".0%"),
                _f(m.get("dropped_share"), ".1%"),
                _f(m.get("late_share"), ".1%"),
                _f(m.get("p50_us"), ".1f"),
                _f(m.get("p99_us"), ".1f"),
                _f(m.get("server_cpu_share"), ".0%"),
                _f(_cpu_per_op(m), ".1f"),
            ]
        )
    return _table(header, rows)


def _of_ceiling(rate: float | None, ceiling: tuple[float, bool] | None) -> str:
    """rate / the load generator's ops/s per CPU; '~' when that was extrapolated
    from a ceiling run the load generator did not saturate."""
    if ceiling is None:
        return "-"
    value, measured = ceiling
    r = _ratio(rate, value)
    return "-" if r is None else ("" if measured else "~") + format(r, ".0%")


def cpu_table(summaries: Sequence[Summary], ceilings: dict[str, tuple[float, bool]]) -> str:
    header = [
        "case", "target", "server CPU", "usr ms/1k", "sys ms/1k", "CPU/op vs base",
        "loadgen CPU", "loadgen us/op", "of lg ceiling", "other CPU",
    ]  # fmt: skip
    rows = []
    for s in summaries:
        if s.scenario == "idle" or not s.runs:
            continue
        m = s.m
        rows.append(
            [
                s.case,
                s.target,
                _f(m.get("server_cpu_share"), ".0%"),
                _f(m.get("server_user_ms_per_1k"), ".2f"),
                _f(m.get("server_sys_ms_per_1k"), ".2f"),
                _x(s.ratio.get("cpu_per_op")),
                _f(m.get("loadgen_cpu_share"), ".0%"),
                _f(m.get("loadgen_cpu_us_per_op"), ".2f"),
                _of_ceiling(m.get("ops_per_s"), ceilings.get(s.case)),
                _f(m.get("other_cpu_share"), ".0%"),
            ]
        )
    return _table(header, rows)


def explain_table(summaries: Sequence[Summary]) -> str:
    header = [
        "case", "target", "syscr/op", "syscw/op", "ring rd/op", "ring wr/op", "ring waits/op",
        "vcsw/op", "ivcsw/op", "frames/burst", "polls/op", "selects/op", "spins/op",
        "sleeps/op", "wakeups/op", "counters",
    ]  # fmt: skip
    rows = []
    for s in summaries:
        if s.scenario == "idle" or not s.runs:
            continue
        m = s.m
        rows.append(
            [
                s.case,
                s.target,
                _f(m.get("server_syscr_per_op"), ".2f"),
                _f(m.get("server_syscw_per_op"), ".2f"),
                _f(m.get("dev_reads_per_op"), ".2f"),
                _f(m.get("dev_writes_per_op"), ".2f"),
                _f(m.get("dev_waits_per_op"), ".2f"),
                _f(m.get("server_vcsw_per_op"), ".3f"),
                _f(m.get("server_ivcsw_per_op"), ".3f"),
                _f(m.get("frames_per_burst"), ".2f"),
                _f(m.get("loop_polls_per_op"), ".2f"),
                _f(m.get("aio_selects_per_op"), ".2f"),
                _f(m.get("aio_spins_per_op"), ".2f"),
                _f(m.get("loop_sleeps_per_op"), ".2f"),
                _f(m.get("loop_wakeups_per_op"), ".2f"),
                s.counters_scope or "-",
            ]
        )
    return _table(header, rows)


def idle_table(summaries: Sequence[Summary]) -> str:
    header = [
        "target", "server CPU", "usr ms/s", "sys ms/s", "vcsw/s", "ivcsw/s", "syscr/s",
        "syscw/s", "ring waits/s", "sleeps/s", "wakeups/s", "runs",
    ]  # fmt: skip
    rows = []
    for s in summaries:
        if s.scenario != "idle":
            continue
        if not s.runs:
            rows.append([s.target, _short(s.error), *[""] * 10])
            continue
        m = s.m
        rows.append(
            [
                s.target,
                _f(m.get("server_cpu_share"), ".1%"),
                _f(_scaled(m.get("server_user_ms_per_1k"), 1e-3), ".2f"),
                _f(_scaled(m.get("server_sys_ms_per_1k"), 1e-3), ".2f"),
                _f(m.get("server_vcsw_per_op"), ",.1f"),
                _f(m.get("server_ivcsw_per_op"), ",.1f"),
                _f(m.get("server_syscr_per_op"), ",.1f"),
                _f(m.get("server_syscw_per_op"), ",.1f"),
                _f(m.get("dev_waits_per_op"), ",.1f"),
                _f(m.get("loop_sleeps_per_op"), ",.1f"),
                _f(m.get("loop_wakeups_per_op"), ",.1f"),
                str(s.runs),
            ]
        )
    return _table(header, rows, right_from=1)


@dataclass
class Ceiling:
    case: str
    sink: str
    ops_per_s: float
    loadgen_cpu: float  # share of one CPU
    sink_cpu: float
    loadgen_us_per_op: float | None
    per_cpu: float | None  # ops/s the load generator would do with a whole CPU
    limited_by: str
    error: str | None = None


def ceilings_of(runs: Sequence[RunResult]) -> list[Ceiling]:
    out = []
    for r in runs:
        if not r.ok:
            out.append(Ceiling(r.case, r.target, 0, 0, 0, None, None, "-", r.error))
            continue
        d = derived(r)
        lg = d["loadgen_cpu_share"] or 0.0
        sink = d["server_cpu_share"] or 0.0
        per_cpu = r.ops_per_s / lg if lg > 0 else None
        limited = (
            "load generator" if lg >= 0.9 else ("sink" if sink >= 0.9 else "neither (latency)")
        )
        out.append(
            Ceiling(
                r.case,
                r.target,
                r.ops_per_s,
                lg,
                sink,
                d["loadgen_cpu_us_per_op"],
                per_cpu,
                limited,
            )
        )
    return out


def ceiling_table(ceils: Sequence[Ceiling]) -> str:
    header = [
        "case", "sink", "ops/s", "loadgen CPU", "sink CPU", "loadgen us/op",
        "loadgen ops/s per CPU", "limited by",
    ]  # fmt: skip
    rows = []
    for c in ceils:
        if c.error:
            rows.append(
                [c.case, c.sink, (c.error.splitlines() or [""])[0][:60], "", "", "", "", ""]
            )
            continue
        rows.append(
            [
                c.case,
                c.sink,
                f"{c.ops_per_s:,.0f}",
                f"{c.loadgen_cpu:.0%}",
                f"{c.sink_cpu:.0%}",
                _f(c.loadgen_us_per_op, ".2f"),
                _f(c.per_cpu, ",.0f"),
                c.limited_by,
            ]
        )
    return _table(header, rows)


def anchor_lines(summaries: Sequence[Summary], placement: str) -> list[str]:
    if placement != "same-cpu":
        return ["(the anchors are same-cpu figures; not compared in this placement)"]
    out = []
    for s in summaries:
        if not s.runs:
            continue
        if s.target == s.baseline and s.case in ANCHORS:
            key, anchor, text = ANCHORS[s.case]
            v = s.m.get(key)
            if v is None:
                continue
            if key == "p50_us":
                verdict = (
                    "ok" if v <= anchor * 1.5 else "SLOW: the load generator may be the bottleneck"
                )
                out.append(f"{s.case} {s.target}: p50 {v:.1f} us; anchor: {text} -> {verdict}")
            else:
                verdict = (
                    "ok" if v >= anchor * 0.8 else "LOW: the load generator may be the bottleneck"
                )
                out.append(f"{s.case} {s.target}: {v:,.0f} req/s; anchor: {text} -> {verdict}")
        if s.target == "memcached" and s.scenario == "kv":
            v = s.m.get("ops_per_s") or 0.0
            verdict = (
                "ok"
                if v >= MEMCACHED_ANCHOR * 0.8
                else "LOW: the load generator may be the bottleneck"
            )
            out.append(
                f"{s.case} memcached: {v:,.0f} ops/s; anchor: memcached -t 1 ~62k ops/s"
                f" with memcaslap -> {verdict}"
            )
    return out


NOTES = """\
ops/s: replies completed in the timed window (bulk: MB/s of payload the server
  acknowledged, bulk-up, or echoed back, bulk-echo; connect-rate: connections).
p50..p99.9: request to last byte of the reply, taken by the client
  (time.monotonic_ns around its send and receive), log-bucket histogram (<1%).
open loop (--rate): requests sent on a fixed schedule whatever the replies do;
  latency from each request's scheduled send time (so it includes any wait of
  the load generator, its timer wake-up too); dropped: not sent, their
  connection had --max-outstanding in flight; late: not sent, the load
  generator was over 100 ms behind its schedule.  CPU us/req: usr + sys.
usr/sys ms/1k: server CPU (user, system) per 1,000 ops from /proc/PID/stat over the
  window, server process and its children.  System time includes kernel network
  work done in the server's syscalls, such as delivering its writes to the peer.
server/loadgen CPU: share of one CPU over the window; other CPU: busy time of the
  pinned CPUs that neither used (softirq charged to nobody, other work).
loadgen us/op: the load generator's CPU per op (its processes, user + system).
of lg ceiling: this rate over the load generator's own ops/s per CPU against the
  kernel sink (the ceiling table); '~' where the ceiling run did not saturate the
  load generator, so its ops/s per CPU is extrapolated (ops/s / its CPU share)
  and may be low (over 100% then only says the estimate was).
syscr/syscw: /proc/PID/io read-like and write-like syscalls; they count read,
  write, readv, writev, not recv/send/recvmsg/sendmsg (the default asyncio loop
  uses those) nor epoll_wait.  ring rd/wr/waits: ustack's own counts of TAP
  reads, writes and waits (dev_rx_reads, dev_tx_writes, dev_waits).
vcsw/ivcsw: voluntary / involuntary context switches of the server's threads.
frames/burst, polls/op: ustack's receive bursts (loop_frames, loop_polls).
selects/op, spins/op: the asyncio loop over ustack calling its selector
  (aio_selects) and polling the kernel selector while spinning (aio_spins).
sleeps/op, wakeups/op: blocking waits (loop_sleeps, or aio_blocks: epoll_ctl +
  epoll_wait + epoll_ctl) and the ones a frame ended (loop_wakeups,
  aio_tap_wakeups).
counters: 'window' = differences of snapshots taken at both ends of the window
  (SIGUSR1), 'life' = over the server's whole life divided by every request the
  load generator sent it (warm-up and kv prefill included)."""


def write_report(
    out: IO[str],
    header: Sequence[str],
    summaries: Sequence[Summary],
    ceils: Sequence[Ceiling],
    placement: str,
) -> None:
    w = out.write
    for line in header:
        w(line + "\n")
    w("\n")
    ceil_map = {
        c.case: (c.per_cpu or c.ops_per_s, c.limited_by == "load generator")
        for c in ceils
        if not c.error
    }
    if any(s.scenario != "idle" for s in summaries):
        w("Throughput and latency (medians over the runs)\n\n")
        w(performance_table(summaries) + "\n\n")
        if any(s.runs and s.m.get("offered_per_s") for s in summaries):
            w("Open loop (--rate): offered against achieved\n\n")
            w(open_loop_table(summaries) + "\n\n")
        w("CPU: the server's per 1,000 ops, and the load generator's\n\n")
        w(cpu_table(summaries, ceil_map) + "\n\n")
        w("Per op: server syscalls, context switches, ustack's ring and polling loop\n\n")
        w(explain_table(summaries) + "\n\n")
    if any(s.scenario == "idle" for s in summaries):
        w("Idle: server cost per second with no traffic\n\n")
        w(idle_table(summaries) + "\n\n")
    if ceils:
        w(
            "The load generator's ceiling: each case once against the kernel sink, cross-cpu\n"
            "(sink on CPU 0, load generator alone on CPU 1); 'limited by' says which side\n"
            "ran out of CPU (>= 90%); 'ops/s per CPU' = ops/s / loadgen CPU.\n\n"
        )
        w(ceiling_table(ceils) + "\n\n")
    anchors = anchor_lines(summaries, placement)
    if anchors:
        w("Anchors\n\n")
        for line in anchors:
            w(f"  {line}\n")
        w("\n")
    failed = [s for s in summaries if not s.runs]
    if failed:
        w("Without figures\n\n")
        seen: set[tuple[str, str]] = set()
        for s in failed:
            key = (s.target, s.error or "")
            if key in seen:
                continue
            seen.add(key)
            w(f"  {s.target} ({s.case}): {s.error}\n")
        w("\n")
    bases = sorted({s.baseline for s in summaries if s.baseline})
    w(f"baseline for 'vs base': {', '.join(bases) or 'none'}\n")
    w(NOTES + "\n")


# -- JSON and plot ----------------------------------------------------------------------


def to_json(
    header: dict[str, Any],
    cases: Sequence[Case],
    summaries: Sequence[Summary],
    ceilings: Sequence[RunResult],
    ceils: Sequence[Ceiling],
    results: Sequence[RunResult],
) -> dict[str, Any]:
    def summ(s: Summary) -> dict[str, Any]:
        d = {k: v for k, v in asdict(s).items() if k not in ("hist", "spread")}
        d["spread"] = {k: list(v) for k, v in s.spread.items()}
        d["cdf"] = s.hist.cdf() if s.hist is not None and s.hist.count else []
        return d

    return {
        **header,
        "targets": {
            t: {"side": BY_NAME[t].side, "note": BY_NAME[t].note}
            for t in header["config"]["targets"]
        },
        "cases": [asdict(c) for c in cases],
        "summary": [summ(s) for s in summaries],
        "loadgen_ceiling": [asdict(c) for c in ceils],
        "ceiling_runs": [r.to_json() for r in ceilings],
        "runs": [r.to_json() for r in results],
    }


def plot(path: str, cases: Sequence[Case], summaries: Sequence[Summary], title: str) -> None:
    """Throughput and p99 per target for every case, latency CDFs where asked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    def _si(x: float, _pos: int) -> str:
        for div, suffix in ((1e6, "M"), (1e3, "k")):
            if abs(x) >= div:
                return f"{x / div:g}{suffix}"
        return f"{x:g}"

    si = FuncFormatter(_si)

    shown = [c for c in cases if any(s.case == c.name and s.runs for s in summaries)]
    if not shown:
        shown = list(cases[:1])
    fig, axes = plt.subplots(len(shown), 3, figsize=(16, 3.2 * max(1, len(shown))), squeeze=False)
    for row, case in enumerate(shown):
        ss = [s for s in summaries if s.case == case.name and s.runs]
        names = [s.target for s in ss]
        ax_t, ax_p, ax_c = axes[row]
        if case.scenario == "idle":
            vals = [100 * (s.m.get("server_cpu_share") or 0.0) for s in ss]
            ax_t.barh(names, vals, color="tab:gray")
            ax_t.set_xlabel("server CPU % with no traffic")
        elif case.scenario == "bulk":
            vals = [(s.m.get("bytes_per_s") or 0.0) / 1e6 for s in ss]
            ax_t.barh(names, vals, color="tab:blue")
            ax_t.set_xlabel("MB/s")
        else:
            vals = [s.m.get("ops_per_s") or 0.0 for s in ss]
            ax_t.barh(names, vals, color="tab:blue")
            ax_t.set_xlabel(f"{case.unit}/s")
        ax_t.xaxis.set_major_formatter(si)
        ax_t.set_title(f"{case.name}: throughput", fontsize=10)
        ax_t.invert_yaxis()
        if case.latency:
            p99 = [s.m.get("p99_us") or 0.0 for s in ss]
            p50 = [s.m.get("p50_us") or 0.0 for s in ss]
            ax_p.barh(names, p99, color="tab:red", label="p99")
            ax_p.barh(names, p50, color="tab:orange", label="p50")
            ax_p.set_xlabel("us")
            ax_p.legend(fontsize=8, loc="lower right")
            ax_p.set_title(f"{case.name}: latency", fontsize=10)
            ax_p.invert_yaxis()
        else:
            ax_p.axis("off")
        if case.cdf:
            for s in ss:
                if s.hist is None or not s.hist.count:
                    continue
                pts = s.hist.cdf()
                ax_c.plot([v / 1e3 for v, _ in pts], [f for _, f in pts], label=s.target)
            ax_c.set_xscale("log")
            ax_c.set_xlabel("latency, us (log)")
            ax_c.set_ylabel("share of requests")
            ax_c.set_title(f"{case.name}: latency CDF", fontsize=10)
            ax_c.grid(True, alpha=0.3)
            ax_c.legend(fontsize=8)
        else:
            ax_c.axis("off")
    height = 3.2 * max(1, len(shown))
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0.0, 0.0, 1.0, 1.0 - 0.45 / height))
    fig.savefig(path, dpi=90)
    plt.close(fig)
