"""Scenarios of `ustack bench` and running them: every target in turn, repeated.

    echo-latency  1 connection, ping-pong, one request outstanding, for
                  each --sizes (64 B and 1 KB)
    echo-rate     --connections connections of 64 B echo, --depth requests
                  outstanding on each (1 = not pipelined), split over
                  --processes load generator processes
    kv            memcached text protocol, 90% get / 10% set of 1 KB values
                  over 10,000 keys (all set first), same connections/depth
    bulk          one connection: bulk-up (64 KB writes to discard; bytes
                  the server acknowledged) and bulk-echo (to echo, both
                  directions at once, 256 KB in flight)
    connect-rate  connect, one 64 B echo, close, in a loop per process
    idle          --idle-connections open connections, no traffic, for
                  --idle-seconds: what the server costs doing nothing

With --rate R, echo-rate and kv are open loop instead: R requests/s in
all, on a fixed schedule (loadgen's paced mode), split over the processes
in proportion to their connections and interleaved, whatever the replies
do; one case each (echo-rate-c16-r20000), --depth unused.  A run records
the offered rate next to the achieved one, and the requests not sent
(dropped: their connection already had --max-outstanding in flight; late:
the load generator fell behind its own schedule).

A run is one case against one target with a fresh server on a fresh port:
start and pin the server, start the load generator processes (they connect
and, for kv, set every key), send them the window, read /proc of the
server and of the load generator at both ends of it, collect the replies'
histograms, stop the server and read its final counters.  Cases run one
after the other; within a case each repetition runs every target in turn,
so the figures compared were taken close together in time, and the report
gives the median over the repetitions.

The load generator's ceiling: before the targets, each throughput case
runs once with the load generator alone on the other CPU (cross-cpu)
against the kernel sink (memcached for kv when installed, else the uvloop
sink); its rate and the share of its CPU it used there say how far it is
from its own limit.  Ping-pong (echo-latency) is not calibrated this way:
across CPUs its rate is set by wake-up latency, not by anyone's CPU; its
table shows instead how much of each round trip the load generator's CPU
time is.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ustack import netns
from ustack.bench.loadgen import Histogram
from ustack.bench.targets import (
    BY_NAME,
    Launch,
    ProcSample,
    Server,
    Target,
    TargetUnavailable,
    Workers,
    cpu_busy,
    cpu_times,
    memcached_installed,
    sample,
)
from ustack.topology import Topology

SCENARIOS = ("echo-latency", "echo-rate", "kv", "bulk", "connect-rate", "idle")
PLACEMENTS = {"same-cpu": (0, 0), "cross-cpu": (0, 1)}  # (server CPU, client CPU)
FIRST_PORT = 20000
PROGRESS_EVERY_S = 5.0


@dataclass
class Config:
    placement: str = "same-cpu"
    server_cpu: int = 0
    client_cpu: int = 0
    seconds: float = 5.0
    warmup: float = 1.0
    repeat: int = 3
    scenarios: list[str] = field(default_factory=lambda: list(SCENARIOS))
    targets: list[str] = field(default_factory=list)
    sizes: list[int] = field(default_factory=lambda: [64, 1024])
    connections: int = 16
    depths: list[int] = field(default_factory=lambda: [1, 8])
    processes: int = 2
    kv_keys: int = 10000
    kv_value: int = 1024
    kv_get_ratio: float = 0.9
    bulk_chunk: int = 65536
    bulk_window: int = 256 * 1024
    connect_processes: int = 2
    idle_seconds: float = 5.0
    idle_connections: int = 1
    rate: float = 0.0  # echo-rate and kv: offered requests/s in all (open loop); 0: closed loop
    max_outstanding: int = 256  # open loop: requests in flight per connection at most
    calibrate: bool = True
    baseline: str | None = None
    max_other: float = 0.25
    retries: int = 2
    quiet_wait: float = 0.0
    cpus_available: int = 1


@dataclass(frozen=True)
class Case:
    scenario: str
    name: str
    app: str  # the server app: echo, discard, kv
    mode: str  # the load generator's loop (loadgen.WorkerSpec.mode)
    unit: str  # what one op is: req, chunk (bulk), conn (connect-rate)
    conns: int = 1  # connections in all
    depth: int = 1
    size: int = 64
    processes: int = 1
    latency: bool = True  # latency percentiles mean something
    cdf: bool = False  # plot its latency CDF
    rate: float = 0.0  # offered requests/s in all (open loop); 0: closed loop


def paced_case(scenario: str, cfg: Config, rate: float) -> Case:
    """echo-rate or kv, open loop at `rate` requests/s in all."""
    if rate <= 0:
        raise ValueError(f"an open-loop case needs a rate above 0, not {rate}")
    kv = scenario == "kv"
    return Case(
        scenario,
        f"{'kv' if kv else 'echo-rate'}-c{cfg.connections}-r{rate:.0f}",
        "kv" if kv else "echo",
        "stream",
        "req",
        conns=cfg.connections,
        size=cfg.kv_value if kv else 64,
        processes=min(cfg.processes, cfg.connections),
        cdf=True,
        rate=rate,
    )


def build_cases(cfg: Config) -> list[Case]:
    cases: list[Case] = []
    for sc in cfg.scenarios:
        if sc in ("echo-rate", "kv") and cfg.rate > 0:
            cases.append(paced_case(sc, cfg, cfg.rate))
        elif sc == "echo-latency":
            cases += [
                Case(sc, f"echo-latency-{s}", "echo", "pingpong", "req", size=s, cdf=True)
                for s in cfg.sizes
            ]
        elif sc == "echo-rate":
            cases += [
                Case(
                    sc,
                    f"echo-rate-c{cfg.connections}-d{d}",
                    "echo",
                    "stream",
                    "req",
                    conns=cfg.connections,
                    depth=d,
                    processes=min(cfg.processes, cfg.connections),
                )
                for d in cfg.depths
            ]
        elif sc == "kv":
            cases += [
                Case(
                    sc,
                    f"kv-c{cfg.connections}-d{d}",
                    "kv",
                    "stream",
                    "req",
                    conns=cfg.connections,
                    depth=d,
                    size=cfg.kv_value,
                    processes=min(cfg.processes, cfg.connections),
                    cdf=d == 1,
                )
                for d in cfg.depths
            ]
        elif sc == "bulk":
            cases += [
                Case(
                    sc, "bulk-up", "discard", "bulk-up", "chunk", size=cfg.bulk_chunk, latency=False
                ),
                Case(sc, "bulk-echo", "echo", "bulk-echo", "chunk", size=cfg.bulk_chunk),
            ]
        elif sc == "connect-rate":
            cases.append(
                Case(
                    sc,
                    "connect-rate",
                    "echo",
                    "connect",
                    "conn",
                    conns=cfg.connect_processes,
                    processes=cfg.connect_processes,
                )
            )
        elif sc == "idle":
            cases.append(
                Case(sc, "idle", "echo", "idle", "s", conns=cfg.idle_connections, latency=False)
            )
        else:
            raise ValueError(f"unknown scenario {sc!r} (have {', '.join(SCENARIOS)})")
    return cases


@dataclass
class RunResult:
    case: str
    scenario: str
    target: str
    rep: int  # 0-based; -1 for the load generator's ceiling run
    placement: str
    error: str | None = None
    seconds: float = 0.0
    ops: int = 0
    ops_per_s: float = 0.0
    bytes_per_s: float = 0.0
    errors: int = 0
    misses: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    p50_us: float | None = None
    p90_us: float | None = None
    p99_us: float | None = None
    p999_us: float | None = None
    mean_us: float | None = None
    max_us: float | None = None
    server: dict[str, float] = field(default_factory=dict)  # /proc deltas over the window
    loadgen: dict[str, float] = field(default_factory=dict)  # /proc deltas over the window
    cpu_busy: dict[int, float] = field(default_factory=dict)
    cpus: list[int] = field(default_factory=list)
    # CPUs the server's and the load generator's processes were allowed, read back
    # from the kernel during the run: the placement as it was, not as it was asked.
    server_affinity: list[int] = field(default_factory=list)
    loadgen_affinity: list[int] = field(default_factory=list)
    counters: dict[str, float] = field(default_factory=dict)  # the server's own
    counters_scope: str = ""  # "window" (SIGUSR1 snapshots), "life" or "" (none)
    counters_ops: int = 0  # requests the counters cover (all the load generator sent if "life")
    server_life_s: float = 0.0  # from start to exit (idle: what 'life' counters cover)
    ready_line: str = ""
    server_output: str = ""  # what a failed server said
    attempts: int = 1  # more than 1: other work took more than --max-other of our CPUs
    hist: dict[str, Any] = field(default_factory=dict)
    # Open loop only: the schedule's rate, and its slots in the window
    # (offered = issued + dropped + late; ops counts the replies).
    offered_per_s: float = 0.0
    offered: int = 0
    issued: int = 0
    dropped: int = 0
    late: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["derived"] = derived(self)
        return d


def _per(x: float, n: float) -> float | None:
    return x / n if n else None


def derived(r: RunResult) -> dict[str, float | None]:
    """Per-op (per-second for idle) figures that explain a result."""
    s, c = r.server, r.counters
    n = float(r.ops) if r.scenario != "idle" else r.seconds
    if r.counters_scope == "life":
        cn = r.server_life_s if r.scenario == "idle" else float(r.counters_ops)
    else:
        cn = n
    out: dict[str, float | None] = {
        "server_cpu_share": _per(s.get("utime_s", 0) + s.get("stime_s", 0), r.seconds),
        "server_user_ms_per_1k": _per(s.get("utime_s", 0) * 1e6, n),
        "server_sys_ms_per_1k": _per(s.get("stime_s", 0) * 1e6, n),
        "server_syscr_per_op": _per(s.get("syscr", 0), n),
        "server_syscw_per_op": _per(s.get("syscw", 0), n),
        "server_vcsw_per_op": _per(s.get("vcsw", 0), n),
        "server_ivcsw_per_op": _per(s.get("ivcsw", 0), n),
        "loadgen_cpu_share": _per(
            r.loadgen.get("utime_s", 0) + r.loadgen.get("stime_s", 0), r.seconds
        ),
        "loadgen_cpu_us_per_op": _per(
            (r.loadgen.get("utime_s", 0) + r.loadgen.get("stime_s", 0)) * 1e6, n
        ),
    }
    mine = sum(r.cpu_busy.get(cpu, 0.0) for cpu in r.cpus)
    used = (out["server_cpu_share"] or 0.0) + (out["loadgen_cpu_share"] or 0.0)
    out["other_cpu_share"] = max(0.0, mine - used) if r.cpu_busy else None
    if "dev_rx_reads" in c or "dev_waits" in c:
        out["dev_reads_per_op"] = _per(c.get("dev_rx_reads", 0), cn)
        out["dev_writes_per_op"] = _per(c.get("dev_tx_writes", 0), cn)
        out["dev_waits_per_op"] = _per(c.get("dev_waits", 0), cn)
    if "loop_polls" in c:
        busy = c.get("loop_polls", 0) - c.get("loop_empty_polls", 0)
        fpb = _per(c.get("loop_frames", 0), busy)
        out["frames_per_burst"] = fpb if fpb is not None else c.get("loop_frames_per_burst")
        out["loop_polls_per_op"] = _per(c.get("loop_polls", 0), cn)
        # A native Context sleeps in the ring's wait (loop_sleeps); the asyncio
        # loop over ustack sleeps in its kernel selector with the TAP fd
        # registered (aio_blocks: epoll_ctl, epoll_wait, epoll_ctl) and is
        # woken by a frame (aio_tap_wakeups).
        sleeps = c.get("loop_sleeps", 0) + c.get("aio_blocks", 0)
        wakeups = c.get("loop_wakeups", 0) + c.get("aio_tap_wakeups", 0)
        out["loop_sleeps_per_op"] = _per(sleeps, cn)
        out["loop_wakeups_per_op"] = _per(wakeups, cn)
    if r.offered_per_s:
        out["offered_per_s"] = r.offered_per_s
        out["achieved_share"] = r.ops_per_s / r.offered_per_s
        out["dropped_share"] = _per(r.dropped, r.offered)
        out["late_share"] = _per(r.late, r.offered)
    if "aio_selects" in c:
        # Calls of the asyncio loop into its selector, and the non-blocking
        # kernel-selector polls made while spinning (busy, hybrid).
        out["aio_selects_per_op"] = _per(c.get("aio_selects", 0), cn)
        out["aio_spins_per_op"] = _per(c.get("aio_spins", 0), cn)
    return out


# -- running ----------------------------------------------------------------------------


Progress = Callable[[str], None]


@dataclass
class Bench:
    """One `ustack bench` invocation's state: topology, config, ports, progress."""

    topo: Topology
    cfg: Config
    workdir: str
    progress: Progress
    port: int = FIRST_PORT
    unavailable: dict[tuple[str, str], str] = field(default_factory=dict)
    done: int = 0
    total: int = 0

    def next_port(self) -> int:
        # A fresh port per run: no 4-tuple of an earlier run is reused.
        self.port += 1
        if self.port > 60000:
            self.port = FIRST_PORT
        return self.port


def placement_cpus(placement: str) -> tuple[int, int]:
    """(server CPU, client CPU) of a placement; ValueError if this process may not use them."""
    server_cpu, client_cpu = PLACEMENTS[placement]
    allowed = os.sched_getaffinity(0)
    for cpu in (server_cpu, client_cpu):
        if cpu not in allowed:
            raise ValueError(f"placement {placement} needs CPU {cpu} (have {sorted(allowed)})")
    return server_cpu, client_cpu


def client_sysctls(topo: Topology) -> None:
    """In the client netns: a wide port range and no TIME-WAIT state.

    connect-rate opens thousands of connections a second; with TIME-WAIT
    kept, the kernel's search for a free ephemeral port became the client's
    main cost (1k connections/s at 82% of its CPU instead of 15k at 30%).
    tcp_max_tw_buckets=0 makes the client's kernel drop a socket after the
    last ACK instead of holding it in TIME-WAIT; the packets on the wire are
    the same.  These settings belong to the client namespace only.
    """
    settings = {"ip_local_port_range": "1024 65535", "tcp_max_tw_buckets": "0"}
    with netns.inside(topo.client_ns):
        for key, value in settings.items():
            with open(f"/proc/sys/net/ipv4/{key}", "w") as f:
                f.write(value)


def worker_specs(b: Bench, case: Case, target: Target, port: int, cpu: int) -> list[dict[str, Any]]:
    cfg = b.cfg
    dst = b.topo.ustack_addr if target.side == "ustack" else b.topo.kernel_addr
    n = max(1, case.processes)
    specs = []
    for i in range(n):
        conns = case.conns // n + (1 if i < case.conns % n else 0)
        spec: dict[str, Any] = {
            "mode": case.mode,
            "proto": case.app if case.app != "discard" else "discard",
            "ns": b.topo.client_ns,
            "cpu": cpu,
            "dst": dst,
            "port": port,
            "conns": max(1, conns),
            "depth": case.depth,
            "size": case.size,
            "keys": cfg.kv_keys,
            "value_size": cfg.kv_value,
            "get_ratio": cfg.kv_get_ratio,
            "window": cfg.bulk_window,
            "seed": i + 1,
            "prefill": [i, cfg.kv_keys, n] if case.app == "kv" else [],
        }
        if case.rate > 0:
            # Every connection offers the same rate; the processes' schedules interleave.
            spec["rate"] = case.rate * max(1, conns) / max(case.conns, n)
            spec["phase"] = i / n
            spec["max_outstanding"] = cfg.max_outstanding
        specs.append(spec)
    return specs


def _sleep_until(t: float, b: Bench, label: str, start: float, length: float) -> None:
    """Sleep to monotonic time t; a progress line every PROGRESS_EVERY_S."""
    while True:
        left = t - time.monotonic()
        if left <= 0:
            return
        step = min(left, PROGRESS_EVERY_S)
        time.sleep(step)
        if left > step:
            b.progress(f"      {label} {time.monotonic() - start:4.0f}/{length:g} s")


def _delta_counters(a: dict[str, float], z: dict[str, float]) -> dict[str, float]:
    return {k: z[k] - a.get(k, 0.0) for k in z}


def run_one(
    b: Bench, case: Case, target: Target, rep: int, server_cpu: int, client_cpu: int, placement: str
) -> RunResult:
    """One case against one target with a fresh server; never raises for a server's failure."""
    cfg = b.cfg
    res = RunResult(case.name, case.scenario, target.name, rep, placement)
    res.cpus = sorted({server_cpu, client_cpu})
    known = b.unavailable.get((target.name, case.app))
    if known:
        res.error = known
        return res
    port = b.next_port()
    addr = b.topo.ustack_addr if target.side == "ustack" else b.topo.kernel_addr
    stats_path = os.path.join(b.workdir, f"stats-{port}.json")
    launch = Launch(case.app, b.topo.name, b.topo.kernel_ns, addr, port, stats_path)
    server: Server | None = None
    workers: Workers | None = None
    try:
        server = Server(target, launch, server_cpu, b.topo.client_ns, stats_path)
        server.wait_ready()
        res.ready_line = server.ready_line
        workers = Workers(worker_specs(b, case, target, port, client_cpu), client_cpu)
        workers.wait_ready(timeout=60.0)
        res.server_affinity = _affinity(server.pids)
        res.loadgen_affinity = _affinity(workers.pids)
        length = cfg.idle_seconds if case.scenario == "idle" else cfg.seconds
        now_ns = time.monotonic_ns()
        t_timed_ns = now_ns + int(cfg.warmup * 1e9)
        t_end_ns = t_timed_ns + int(length * 1e9)
        workers.go(t_timed_ns, t_end_ns)
        _sleep_until(t_timed_ns / 1e9, b, "warm-up", now_ns / 1e9, cfg.warmup)
        # /proc first at both ends, then the server's own counters (a few ms later
        # at both ends alike).
        s0, w0, c0 = server.sample(), sample(workers.pids), cpu_times()
        snap0 = server.stats_now()
        _sleep_until(t_end_ns / 1e9, b, "timed", t_timed_ns / 1e9, length)
        s1, w1, c1 = server.sample(), sample(workers.pids), cpu_times()
        snap1 = server.stats_now()
        docs = workers.results(timeout=60.0)
    except TargetUnavailable as exc:
        res.error = f"unavailable: {exc}"
        res.server_output = exc.output
        b.unavailable[(target.name, case.app)] = res.error
        return res
    except (RuntimeError, OSError) as exc:
        res.error = f"failed: {exc}"
        return res
    finally:
        if workers is not None:
            workers.end()
        stopped = server.stop() if server is not None else None
    assert stopped is not None and server is not None
    res.server_life_s = server.life_s
    if stopped.returncode not in (0, None) and "Traceback" in stopped.output:
        res.error = (
            f"server exited {stopped.returncode}: " + stopped.output.strip().splitlines()[-1]
        )
        res.server_output = stopped.output
    fill(res, docs, s1.minus(s0), w1.minus(w0), cpu_busy(c0, c1), length)
    if snap0 is not None and snap1 is not None:
        res.counters = _delta_counters(snap0, snap1)
        res.counters_scope = "window"
        res.counters_ops = res.ops
    elif stopped.counters:
        res.counters = stopped.counters
        res.counters_scope = "life"
        res.counters_ops = sum(int(d.get("ops_total", 0)) for d in docs)
    return res


def _affinity(pids: Sequence[int]) -> list[int]:
    """The CPUs any of `pids` may run on (processes that are gone are skipped)."""
    cpus: set[int] = set()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            cpus |= os.sched_getaffinity(pid)
    return sorted(cpus)


def fill(
    res: RunResult,
    docs: Sequence[dict[str, Any]],
    server: ProcSample,
    loadgen: ProcSample,
    busy: dict[int, float],
    length: float,
) -> None:
    h = Histogram()
    for d in docs:
        h.merge(Histogram.from_json(d["hist"]))
        res.ops += int(d["ops"])
        res.errors += int(d["errors"])
        res.misses += int(d["misses"])
        res.offered_per_s += float(d.get("rate", 0.0))
        for k in ("offered", "issued", "dropped", "late"):
            setattr(res, k, getattr(res, k) + int(d.get(k, 0)))
        for k, v in d.get("error_kinds", {}).items():
            res.error_kinds[k] = res.error_kinds.get(k, 0) + int(v)
    res.seconds = length
    # Each worker measured over its own window (bulk-up: between its own reads
    # of the send queue), so rates are summed per worker.
    res.ops_per_s = sum(int(d["ops"]) / (d["window_s"] or length) for d in docs)
    res.bytes_per_s = sum(int(d["bytes"]) / (d["window_s"] or length) for d in docs)
    res.hist = h.to_json()
    if h.count:
        pct = h.percentile
        res.p50_us, res.p90_us = pct(0.5) / 1e3, pct(0.9) / 1e3  # type: ignore[operator]
        res.p99_us, res.p999_us = pct(0.99) / 1e3, pct(0.999) / 1e3  # type: ignore[operator]
        res.mean_us = (h.mean() or 0.0) / 1e3
        res.max_us = h.max / 1e3
    res.server = asdict(server)
    res.loadgen = asdict(loadgen)
    res.cpu_busy = busy


def _headline(r: RunResult) -> str:
    if not r.ok:
        return (r.error or "").splitlines()[0][:150]
    d = derived(r)
    if r.scenario == "idle":
        return (
            f"server CPU {d['server_cpu_share'] or 0:.1%}"
            f"  vcsw/s {d['server_vcsw_per_op'] or 0:,.0f}"
        )
    lat = f"  p50 {r.p50_us:8.1f} us  p99 {r.p99_us:8.1f} us" if r.p50_us is not None else ""
    rate = f"{r.ops_per_s:>11,.0f}/s"
    if r.scenario == "bulk":
        rate += f" {r.bytes_per_s / 1e6:8.1f} MB/s"
    if r.offered_per_s:
        rate += f" of {r.offered_per_s:,.0f}/s offered"
        if r.dropped or r.late:
            rate += f" ({r.dropped} dropped, {r.late} late)"
    return (
        f"{rate}{lat}  server CPU {d['server_cpu_share'] or 0:.0%}"
        f"  loadgen CPU {d['loadgen_cpu_share'] or 0:.0%}"
        + (f"  errors {r.errors}" if r.errors else "")
    )


def sink_for(case: Case, available: Sequence[str]) -> str | None:
    """The kernel sink for the load generator's ceiling run of this case."""
    if case.app == "kv" and memcached_installed():
        return "memcached"
    return "sink-uvloop" if "sink-uvloop" in available else None


def run_all(b: Bench, cases: Sequence[Case]) -> tuple[list[RunResult], list[RunResult]]:
    """(ceiling runs, target runs) of every case."""
    cfg = b.cfg
    targets = [BY_NAME[t] for t in cfg.targets]
    plan: list[tuple[Case, list[Target]]] = []
    for case in cases:
        ts = [t for t in targets if case.app in t.apps]
        plan.append((case, ts))
    calibrate = cfg.calibrate and cfg.cpus_available >= 2
    b.total = sum(len(ts) * cfg.repeat for _, ts in plan) + (
        sum(1 for c, _ in plan if c.mode not in ("pingpong", "idle")) if calibrate else 0
    )
    ceilings: list[RunResult] = []
    results: list[RunResult] = []
    t_start = time.monotonic()
    for case, ts in plan:
        b.progress(f"{case.name}: {', '.join(t.name for t in ts) or 'no target serves it'}")
        if calibrate and case.mode not in ("pingpong", "idle"):
            sink = sink_for(case, list(BY_NAME))
            if sink is not None:
                r = run_logged(b, case, BY_NAME[sink], -1, 0, 1, "cross-cpu", t_start)
                ceilings.append(r)
        for rep in range(cfg.repeat):
            for t in ts:
                r = run_logged(
                    b, case, t, rep, cfg.server_cpu, cfg.client_cpu, cfg.placement, t_start
                )
                results.append(r)
    return ceilings, results


def quiet_wait(cpus: Sequence[int], limit: float) -> float:
    """Wait up to `limit` s until these CPUs are under 10% busy (0.5 s samples)."""
    deadline = time.monotonic() + limit
    while True:
        a = cpu_times()
        time.sleep(0.5)
        busy = cpu_busy(a, cpu_times())
        worst = max(busy.get(c, 0.0) for c in cpus)
        if worst < 0.10 or time.monotonic() >= deadline:
            return worst


def run_logged(
    b: Bench,
    case: Case,
    target: Target,
    rep: int,
    server_cpu: int,
    client_cpu: int,
    placement: str,
    t_start: float,
) -> RunResult:
    """run_one with a progress line, again (up to cfg.retries) when other work took our CPUs."""
    cfg = b.cfg
    b.done += 1
    what = "loadgen ceiling vs" if rep < 0 else f"run {rep + 1}/{cfg.repeat}"
    for attempt in range(1, cfg.retries + 2):
        if cfg.quiet_wait > 0:
            quiet_wait(sorted({server_cpu, client_cpu}), cfg.quiet_wait)
        r = run_one(b, case, target, rep, server_cpu, client_cpu, placement)
        r.attempts = attempt
        elapsed = time.monotonic() - t_start
        eta = elapsed / b.done * (b.total - b.done)
        b.progress(
            f"  [{b.done}/{b.total}, {elapsed:.0f} s, ~{eta:.0f} s left] {case.name} {what}"
            f" {target.name}: {_headline(r)}"
        )
        other = derived(r)["other_cpu_share"] if r.ok else None
        if other is None or other <= cfg.max_other:
            break
        b.progress(
            f"    other work took {other:.0%} of the pinned CPUs (> {cfg.max_other:.0%})"
            + ("; again" if attempt <= cfg.retries else "; keeping this run")
        )
    return r
