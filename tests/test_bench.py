"""`ustack bench`: histogram, kv protocol, cases and reports; a --quick run end to end."""

from __future__ import annotations

import itertools
import json
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ustack.bench import report
from ustack.bench.cli import add_bench_parser, config_from, default_targets
from ustack.bench.loadgen import (
    GET,
    SET,
    Histogram,
    ProtocolError,
    Schedule,
    SinkStats,
    Timer,
    _KvProtocol,
    kv_get_request,
    kv_hit_len,
    kv_key,
    kv_parse_one,
    kv_plan,
    kv_set_request,
    kv_value,
)
from ustack.bench.scenarios import (
    SCENARIOS,
    Bench,
    Config,
    RunResult,
    build_cases,
    client_sysctls,
    derived,
    paced_case,
    run_one,
    worker_specs,
)
from ustack.bench.targets import (
    APPS,
    BY_NAME,
    TARGETS,
    Launch,
    Server,
    Target,
    TargetUnavailable,
    Workers,
    parse_counters,
    read_stats,
)
from ustack.topology import Topology

# -- histogram ----------------------------------------------------------------------------


def test_histogram_small_values_exact():
    h = Histogram()
    h.record_many(range(256))
    assert h.count == 256
    assert h.min == 0 and h.max == 255
    assert h.percentile(0.5) == 127.0  # nearest rank 128 of 0..255
    assert h.percentile(1.0) == 255.0
    assert all(h.bounds(h.index(v)) == (v, v + 1) for v in range(256))


def test_histogram_buckets_cover_values_within_precision():
    h = Histogram()
    rnd = random.Random(7)
    for _ in range(5000):
        v = rnd.randrange(1, 10**10)
        low, high = h.bounds(h.index(v))
        assert low <= v < high
        assert (high - low) <= max(1, low / 128)


def test_histogram_merge_equals_recording_everything():
    rnd = random.Random(3)
    a_vals = [rnd.randrange(1000, 200000) for _ in range(3000)]
    b_vals = [rnd.randrange(5000, 5000000) for _ in range(2000)]
    a, b, both = Histogram(), Histogram(), Histogram()
    a.record_many(a_vals)
    b.record_many(b_vals)
    both.record_many(a_vals + b_vals)
    a.merge(b)
    assert a.counts == both.counts
    assert (a.count, a.total, a.min, a.max) == (5000, sum(a_vals + b_vals), both.min, both.max)
    assert a.percentile(0.99) == both.percentile(0.99)


def test_histogram_percentiles_near_exact_nearest_rank():
    rnd = random.Random(11)
    vals = sorted(rnd.randrange(8000, 400000) for _ in range(10000))
    h = Histogram()
    h.record_many(vals)
    for q in (0.5, 0.9, 0.99, 0.999):
        exact = vals[-int(-q * len(vals) // 1) - 1]
        got = h.percentile(q)
        assert got is not None
        assert abs(got - exact) <= exact / 128


def test_histogram_json_round_trip_and_cdf():
    h = Histogram()
    h.record_many([10, 20, 20, 30000, 40000])
    g = Histogram.from_json(json.loads(json.dumps(h.to_json())))
    assert g.counts == h.counts and g.count == 5 and g.total == h.total
    cdf = g.cdf()
    assert [round(f, 2) for _, f in cdf] == [0.2, 0.6, 0.8, 1.0]
    assert [v for v, _ in cdf] == sorted(v for v, _ in cdf)


def test_histogram_empty():
    h = Histogram()
    assert h.percentile(0.5) is None and h.mean() is None and h.cdf() == []
    h.merge(Histogram())
    assert h.count == 0


# -- the memcached text protocol ----------------------------------------------------------


def _hit(i: int, value: bytes, flags: int = 0) -> bytes:
    return b"VALUE %s %d %d\r\n%s\r\nEND\r\n" % (kv_key(i), flags, len(value), value)


def test_kv_parse_hit_miss_stored():
    value = kv_value(1024)
    hl = kv_hit_len(1024)
    assert len(_hit(5, value)) == hl
    buf = _hit(5, value) + b"END\r\n" + b"STORED\r\n"
    pos, st = kv_parse_one(buf, 0, GET, hl)
    assert (pos, st) == (hl, 0)
    pos, st = kv_parse_one(buf, pos, GET, hl)
    assert (pos, st) == (hl + 5, 1)
    pos, st = kv_parse_one(buf, pos, SET, hl)
    assert (pos, st) == (len(buf), 0)


def test_kv_parse_other_flags_and_sizes_take_the_slow_path():
    hl = kv_hit_len(1024)
    reply = _hit(7, b"abc", flags=42)
    assert kv_parse_one(reply, 0, GET, hl) == (len(reply), 0)


def test_kv_parse_incomplete_replies_wait_for_more():
    value = kv_value(1024)
    hl = kv_hit_len(1024)
    full = _hit(1, value)
    for cut in (0, 3, 10, 30, hl - 1):
        assert kv_parse_one(full[:cut], 0, GET, hl) == (-1, 0)
    assert kv_parse_one(b"STORE", 0, SET, hl) == (-1, 0)
    assert kv_parse_one(b"EN", 0, GET, hl) == (-1, 0)


def test_kv_parse_error_replies_counted_and_garbage_raises():
    hl = kv_hit_len(1024)
    assert kv_parse_one(b"SERVER_ERROR out of memory\r\n", 0, SET, hl) == (28, 2)
    assert kv_parse_one(b"NOT_STORED\r\n", 0, SET, hl) == (12, 2)
    assert kv_parse_one(b"ERROR\r\n", 0, GET, hl) == (7, 2)
    with pytest.raises(ProtocolError):
        kv_parse_one(b"HELLO\r\n", 0, GET, hl)
    with pytest.raises(ProtocolError):
        kv_parse_one(b"VALUE k 0 3\r\nabc\r\nXXX\r\n", 0, GET, hl)


def test_kv_plan_mix_and_requests():
    value = kv_value(100)
    kinds, reqs = kv_plan(20000, 10000, 0.9, value, seed=1)
    sets = kinds.count(SET)
    assert 1800 <= sets <= 2200
    for k, r in zip(kinds[:50], reqs[:50], strict=True):
        if k == GET:
            assert r.startswith(b"get k") and r.endswith(b"\r\n") and len(r) == 16
        else:
            assert r.startswith(b"set k") and r.endswith(value + b"\r\n")
    assert kv_plan(100, 10, 0.5, value, seed=2) == kv_plan(100, 10, 0.5, value, seed=2)


class _Transport:
    def __init__(self) -> None:
        self.out = bytearray()

    def write(self, data: bytes) -> None:
        self.out += data


def test_sink_kv_protocol_byte_by_byte():
    st = SinkStats()
    proto = _KvProtocol(st, {})
    t = _Transport()
    proto.connection_made(t)  # type: ignore[arg-type]
    value = kv_value(1024)
    stream = kv_set_request(3, value) + kv_get_request(3) + kv_get_request(4) + b"bogus\r\n"
    for i in range(len(stream)):
        proto.data_received(stream[i : i + 1])
    assert bytes(t.out) == b"STORED\r\n" + _hit(3, value) + b"END\r\nERROR\r\n"
    assert st.c["app_requests"] == 3 and st.c["app_kv_hits"] == 1
    assert st.c["app_protocol_errors"] == 1


# -- cases, targets, derived figures ------------------------------------------------------


def test_build_cases_every_scenario():
    cases = build_cases(Config(sizes=[64, 1024], depths=[1, 8], connections=16))
    names = [c.name for c in cases]
    assert names == [
        "echo-latency-64",
        "echo-latency-1024",
        "echo-rate-c16-d1",
        "echo-rate-c16-d8",
        "kv-c16-d1",
        "kv-c16-d8",
        "bulk-up",
        "bulk-echo",
        "connect-rate",
        "idle",
    ]
    assert {c.scenario for c in cases} == set(SCENARIOS)
    kv = cases[4]
    assert (kv.app, kv.mode, kv.conns, kv.depth, kv.processes) == ("kv", "stream", 16, 1, 2)
    with pytest.raises(ValueError):
        build_cases(Config(scenarios=["nope"]))


def test_target_table():
    names = [t.name for t in TARGETS]
    assert len(names) == len(set(names))
    for mode in ("busy", "interrupt", "hybrid"):
        t = BY_NAME[f"ustack-{mode}"]
        assert t.side == "ustack" and set(t.apps) == set(APPS)
        ln = Launch("echo", "topo", "topo-k", "198.18.0.2", 20001, "/tmp/s.json")
        argv = t.argv(ln)
        assert argv[2:6] == ["ustack", "serve", "echo", "--name"]
        assert argv[argv.index("--poll") + 1] == mode
        assert argv[argv.index("--stack") + 1] == "ustack"
        assert argv[argv.index("--stats-json") + 1] == "/tmp/s.json"
    off = BY_NAME["ustack-hybrid-offload"].argv(Launch("echo", "t", "t-k", "a", 7, "/s"))
    assert "--offload" in off and off[off.index("--poll") + 1] == "hybrid"
    for loop in ("uvloop", "asyncio"):
        argv = BY_NAME[f"kernel-{loop}"].argv(Launch("kv", "t", "t-k", "198.19.0.2", 9, "/s"))
        assert argv[argv.index("--loop") + 1] == loop
        assert argv[argv.index("--stack") + 1] == "kernel"
    mc = BY_NAME["memcached"]
    assert mc.apps == ("kv",) and mc.in_kernel_ns and not mc.stats_json
    assert ("memcached" in default_targets()) == (shutil.which("memcached") is not None)
    assert not any(t.startswith("sink-") for t in default_targets())


def test_parse_counters():
    text = "stopped; counters:\n  loop\n    loop_polls        12\n    x 1.5\nnot    3\n"
    assert parse_counters(text) == {"loop_polls": 12.0, "x": 1.5}


def test_read_stats_serve_layout_and_flat(tmp_path):
    p = tmp_path / "s.json"
    p.write_text(
        json.dumps(
            {
                "pid": 12,
                "app": "echo",
                "port": 7,
                "counters": {"dev_rx_reads": 5, "loop_frames_per_burst": 1.5, "ok": True},
                "connections": [{"state": "ESTABLISHED"}],
            }
        )
    )
    assert read_stats(str(p)) == {"dev_rx_reads": 5.0, "loop_frames_per_burst": 1.5}
    p.write_text(json.dumps({"app_requests": 3, "nested": {"x": 1}}))
    assert read_stats(str(p)) == {"app_requests": 3.0, "nested_x": 1.0}


def test_derived_per_op_figures():
    r = RunResult("kv-c16-d1", "kv", "ustack-hybrid", 0, "same-cpu")
    r.ops, r.seconds = 10000, 2.0
    r.server = {"utime_s": 0.5, "stime_s": 0.25, "vcsw": 200, "ivcsw": 10, "syscr": 3000}
    r.loadgen = {"utime_s": 0.2, "stime_s": 0.2}
    r.cpus, r.cpu_busy = [0], {0: 0.7, 1: 0.1}
    r.counters_scope, r.counters_ops = "life", 20000
    r.counters = {
        "dev_rx_reads": 40000,
        "dev_tx_writes": 20000,
        "dev_waits": 2000,
        "loop_polls": 50000,
        "loop_empty_polls": 30000,
        "loop_frames": 60000,
        "loop_sleeps": 2000,
        "loop_wakeups": 1800,
    }
    d = derived(r)
    assert d["server_cpu_share"] == pytest.approx(0.375)
    assert d["server_user_ms_per_1k"] == pytest.approx(50.0)
    assert d["server_sys_ms_per_1k"] == pytest.approx(25.0)
    assert d["server_vcsw_per_op"] == pytest.approx(0.02)
    assert d["server_syscr_per_op"] == pytest.approx(0.3)
    assert d["loadgen_cpu_share"] == pytest.approx(0.2)
    assert d["loadgen_cpu_us_per_op"] == pytest.approx(40.0)
    assert d["other_cpu_share"] == pytest.approx(0.125)
    # 'life' counters are per request the server ever saw (20,000), not per window op.
    assert d["dev_reads_per_op"] == pytest.approx(2.0)
    assert d["dev_waits_per_op"] == pytest.approx(0.1)
    assert d["frames_per_burst"] == pytest.approx(3.0)
    assert d["loop_wakeups_per_op"] == pytest.approx(0.09)


def test_derived_asyncio_loop_counters_and_idle_per_second():
    r = RunResult("echo-rate-c16-d1", "echo-rate", "ustack-interrupt", 0, "same-cpu")
    r.ops, r.seconds = 1000, 1.0
    r.counters_scope, r.counters_ops = "window", 1000
    r.counters = {
        "loop_polls": 800,
        "loop_empty_polls": 100,
        "loop_frames": 2100,
        "aio_selects": 700,
        "aio_spins": 0,
        "aio_blocks": 80,
        "aio_tap_wakeups": 75,
    }
    d = derived(r)
    assert d["frames_per_burst"] == pytest.approx(3.0)
    assert d["loop_sleeps_per_op"] == pytest.approx(0.08)
    assert d["loop_wakeups_per_op"] == pytest.approx(0.075)
    assert d["aio_selects_per_op"] == pytest.approx(0.7)
    idle = RunResult("idle", "idle", "ustack-hybrid", 0, "same-cpu")
    idle.seconds, idle.server_life_s = 5.0, 8.0
    idle.counters_scope = "life"
    idle.counters = {"loop_polls": 16, "loop_empty_polls": 16, "aio_blocks": 40}
    idle.server = {"utime_s": 0.05, "stime_s": 0.0, "vcsw": 10}
    d = derived(idle)
    assert d["loop_sleeps_per_op"] == pytest.approx(5.0)  # per second of the server's life
    assert d["server_vcsw_per_op"] == pytest.approx(2.0)  # per second of the window
    assert d["server_cpu_share"] == pytest.approx(0.01)


def _fake_run(target: str, rep: int, ops_s: float, p99: float, cpu: float) -> RunResult:
    r = RunResult("echo-rate-c16-d1", "echo-rate", target, rep, "same-cpu")
    r.ops, r.seconds, r.ops_per_s = int(ops_s), 1.0, ops_s
    r.p50_us, r.p99_us = p99 / 2, p99
    r.server = {"utime_s": cpu, "stime_s": 0.0}
    r.loadgen = {"utime_s": 0.1, "stime_s": 0.0}
    return r


def test_summary_medians_and_ratios():
    cfg = Config(targets=["ustack-busy", "kernel-uvloop"], repeat=3)
    runs = [
        _fake_run("kernel-uvloop", 0, 100000, 50, 0.5),
        _fake_run("ustack-busy", 0, 30000, 300, 1.0),
        _fake_run("kernel-uvloop", 1, 120000, 40, 0.5),
        _fake_run("ustack-busy", 1, 20000, 500, 1.0),
        _fake_run("kernel-uvloop", 2, 90000, 60, 0.5),
        _fake_run("ustack-busy", 2, 25000, 400, 1.0),
    ]
    cases = build_cases(Config(scenarios=["echo-rate"], depths=[1]))
    [k, u] = sorted(report.summarize(cases, runs, cfg), key=lambda s: s.target)
    assert (k.target, k.runs, k.m["ops_per_s"], k.m["p99_us"]) == ("kernel-uvloop", 3, 100000, 50)
    assert (u.m["ops_per_s"], u.m["p99_us"]) == (25000, 400)
    assert u.baseline == "kernel-uvloop"
    assert u.ratio["ops_per_s"] == pytest.approx(0.25)
    assert u.ratio["p99_us"] == pytest.approx(8.0)
    # CPU per op: 1.0 s / 25,000 vs 0.5 s / 100,000.
    assert u.ratio["cpu_per_op"] == pytest.approx(8.0)
    assert u.spread["ops_per_s"] == (20000, 30000)
    text = report.performance_table([k, u])
    assert "| echo-rate-c16-d1 | ustack-busy   |" in text and "0.25x" in text


def test_server_that_exits_is_unavailable_with_its_words(tmp_path):
    t = Target(
        "broken",
        "kernel",
        APPS,
        lambda ln: [sys.executable, "-c", "import sys; print('no such app'); sys.exit(3)"],
    )
    ln = Launch("echo", "x", "x-k", "198.19.0.2", 1, str(tmp_path / "s.json"))
    srv = Server(t, ln, 0, "x", str(tmp_path / "s.json"))
    with pytest.raises(TargetUnavailable, match=r"exit 3\): no such app"):
        srv.wait_ready(timeout=20)
    assert srv.stopped is not None and srv.stopped.returncode == 3


# -- end to end ---------------------------------------------------------------------------


def _run_quick(
    topology: Any, tmp_path: Any, targets: list[str], *extra: str
) -> tuple[dict[str, Any], str]:
    out_json = tmp_path / "bench.json"
    out_png = tmp_path / "bench.png"
    argv = [
        sys.executable,
        "-m",
        "ustack",  # the `ustack bench` entry point
        "bench",
        "--quick",
        "--name",
        topology.name,
        "--targets",
        ",".join(targets),
        "--json",
        str(out_json),
        "--plot",
        str(out_png),
        # Every scenario, one size and one depth each: the suite's time is shared.
        "--sizes",
        "64",
        "--depth",
        "1",
        *extra,
    ]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    with open(out_json) as f:
        doc = json.load(f)
    png = out_png.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    img = matplotlib.image.imread(str(out_png))
    assert img.shape[0] > 500 and img.shape[1] > 500
    return doc, p.stdout + p.stderr


@pytest.mark.netns
def test_quick_run_every_scenario_well_formed(topology, tmp_path):
    targets = default_targets()  # every ustack mode, offload, both kernel loops, memcached
    assert {"ustack-busy", "ustack-interrupt", "ustack-hybrid", "kernel-uvloop"} <= set(targets)
    doc, text = _run_quick(topology, tmp_path, targets)

    assert doc["config"]["targets"] == targets
    assert {c["scenario"] for c in doc["cases"]} == set(SCENARIOS)
    assert "Throughput and latency" in text and "Idle: server cost" in text
    assert "[1/" in text  # progress while it runs
    summary = {(s["case"], s["target"]): s for s in doc["summary"]}
    runs = {(r["case"], r["target"]): r for r in doc["runs"]}
    for case in doc["cases"]:
        serving = [t for t in targets if case["app"] in BY_NAME[t].apps]
        assert serving, case
        # The baseline first: every other target's ratio depends on its run.
        serving.sort(key=lambda t: t != "kernel-uvloop")
        for t in serving:
            s = summary[(case["name"], t)]
            assert s["runs"] == 1, (case["name"], t, s["error"])
            m = s["m"]
            run = runs[(case["name"], t)]
            assert m["server_cpu_share"] is not None
            if BY_NAME[t].stats_json:
                # `ustack serve` answers SIGUSR1: its counters cover the window.
                assert run["counters_scope"] == "window", (case["name"], t)
            if case["scenario"] == "idle":
                if t == "ustack-busy":
                    assert m["server_cpu_share"] > 0.5  # spins by design
                else:
                    assert m["server_cpu_share"] < 0.2
                continue
            assert m["ops_per_s"] > 0, (case["name"], t)
            assert m["errors"] == 0 and m["misses"] == 0, (case["name"], t)
            if case["latency"]:
                assert 0 < m["p50_us"] <= m["p90_us"] <= m["p99_us"] <= m["p999_us"]
                assert m["p50_us"] < 1e6
            if case["cdf"]:
                assert s["cdf"][-1][1] == pytest.approx(1.0)
            if case["scenario"] == "bulk":
                assert m["bytes_per_s"] > 1e6
            assert m["server_user_ms_per_1k"] + m["server_sys_ms_per_1k"] > 0
            assert s["baseline"] == "kernel-uvloop"
            assert s["ratio"]["ops_per_s"] > 0, (case["name"], t, s["ratio"], s["error"])
            if BY_NAME[t].side == "ustack":
                # The ring's and the polling loop's own counts explain the cost.
                assert m["dev_reads_per_op"] > 0 and m["dev_writes_per_op"] > 0
                assert m["frames_per_burst"] >= 1.0
                assert m["aio_selects_per_op"] > 0
    # The window's counters agree with the client's count but for the edges.
    kv = [r for r in doc["runs"] if r["scenario"] == "kv" and r["target"] == "kernel-uvloop"]
    assert kv and all(abs(r["counters"]["app_requests"] - r["ops"]) < r["ops"] / 50 for r in kv)
    # The load generator's ceiling: every throughput case once against a kernel sink.
    ceil = {c["case"]: c for c in doc["loadgen_ceiling"]}
    throughput_cases = [c["name"] for c in doc["cases"] if c["mode"] not in ("pingpong", "idle")]
    assert sorted(ceil) == sorted(throughput_cases)
    for c in ceil.values():
        assert c["error"] is None and c["ops_per_s"] > 0 and c["loadgen_cpu"] > 0


@pytest.mark.netns
def test_quick_run_sinks(topology, tmp_path):
    """The load generator's own servers, which the ceiling runs rely on."""
    doc, _ = _run_quick(
        topology,
        tmp_path,
        ["sink-uvloop", "sink-asyncio"],
        "--scenarios",
        "echo-rate,kv,idle",
        "--no-calibrate",
        "--placement",
        "cross-cpu",
    )
    assert doc["loadgen_ceiling"] == []
    # Pinned as asked, read back from the kernel: server on CPU 0, load generator on 1.
    for r in doc["runs"]:
        assert (r["server_affinity"], r["loadgen_affinity"]) == ([0], [1]), r["case"]
    for s in doc["summary"]:
        assert s["runs"] == 1, (s["case"], s["target"], s["error"])
        if s["scenario"] != "idle":
            assert s["m"]["ops_per_s"] > 0 and s["m"]["errors"] == 0
    assert all(r["counters_scope"] == "window" for r in doc["runs"])


# -- open loop: the schedule ---------------------------------------------------------------

MS = 1_000_000
S = 1_000_000_000


def _taken(sched: Schedule, times: list[int]) -> list[int]:
    out: list[int] = []
    for t in times:
        out.extend(sched.take(t))
    return out


def test_schedule_slot_times_exact_and_window_counted():
    # 1000/s, half an interval of phase: slot k at 1.0005 s + k ms.
    sched = Schedule(1000, t_start=0, t_timed=S, t_end=2 * S, phase=0.5)
    assert (sched.interval_ns, sched.rate, sched.n_window) == (MS, 1000.0, 1000)
    assert sched.at(0) == S + MS // 2 and sched.at(-1) < S
    # Warm-up slots are negative; a first take 950 ms late gets the last 100 ms
    # of them (849.5 .. 949.5 ms) and counts none as late: they are not the window's.
    assert sched.at(-1000) == MS // 2
    warm = list(sched.take(S - 50 * MS))
    assert warm == list(range(-150, -50)) and sched.late == 0
    # Then one slot per wake-up at each slot time, and nothing in between.
    ks = _taken(sched, [sched.at(k) for k in range(-50, 1000)])
    assert ks == list(range(-50, 1000))
    assert list(sched.take(sched.at(999) + MS // 2)) == []
    sched.finish()
    assert sched.late == 0


def test_schedule_due_slots_come_together_after_a_late_wake_up():
    sched = Schedule(10000, t_start=0, t_timed=0, t_end=S)
    assert list(sched.take(0)) == [0]
    # Woken 1 ms late: the ten slots due meanwhile, at once; their send times stay theirs.
    due = sched.take(MS + 50_000)
    assert list(due) == list(range(1, 11))
    assert [sched.at(k) for k in due] == [k * 100_000 for k in range(1, 11)]


def test_schedule_gives_up_slots_more_than_max_lag_behind_as_late():
    sched = Schedule(1000, t_start=0, t_timed=0, t_end=S, max_lag_ns=100 * MS)
    assert list(sched.take(10 * MS)) == list(range(11))
    # Away 300 ms: slots older than 100 ms are late, the last 100 ms worth still go.
    ks = list(sched.take(310 * MS))
    assert ks == list(range(210, 311))
    assert sched.late == 199  # slots 11 .. 209
    # The window ends with the worker away: what it still had is late too.
    sched.finish()
    assert sched.late == 199 + (1000 - 311)


def test_schedule_late_counts_only_window_slots():
    # Away through the end of the warm-up: warm-up slots given up are not counted.
    sched = Schedule(1000, t_start=0, t_timed=500 * MS, t_end=S, max_lag_ns=100 * MS)
    sched.take(0)
    sched.take(700 * MS)
    assert sched.late == 100  # 500 .. 599 ms; 0 .. 499 ms were warm-up
    sched.finish()
    assert sched.late == 100 + (500 - 201)


def test_schedule_phases_interleave_workers_and_rate_is_exact():
    a = Schedule(500, t_start=0, t_timed=S, t_end=2 * S, phase=0.0)
    b = Schedule(500, t_start=0, t_timed=S, t_end=2 * S, phase=0.5)
    both = sorted([a.at(k) for k in range(500)] + [b.at(k) for k in range(500)])
    assert {y - x for x, y in itertools.pairwise(both)} == {MS}
    odd = Schedule(3, t_start=0, t_timed=0, t_end=S)
    assert odd.interval_ns == 333_333_333 and odd.rate == pytest.approx(3.0, rel=1e-8)
    # Slots at 0, 1/3, 2/3 s and 999,999,999 ns: four start inside [0, 1 s).
    assert odd.n_window == 4 and odd.at(3) == S - 1
    with pytest.raises(ValueError):
        Schedule(0, t_start=0, t_timed=0, t_end=S)


def test_timer_expires_periodically_at_sub_millisecond_times():
    timer = Timer()
    ep = select.epoll()
    ep.register(timer.fd, select.EPOLLIN)
    try:
        first = time.monotonic_ns() + 5 * MS
        timer.start(first, 2 * MS)
        assert ep.poll(1.0)
        woke = time.monotonic_ns()
        assert woke >= first
        time.sleep(0.021)  # ~10 more expiries, counted by the fd, not lost
        count = int.from_bytes(os.read(timer.fd, 8), "little")
        assert 9 <= count <= 13
        assert ep.poll(0) == []  # read: not readable until the next expiry
        # One-shot waits 200 us ahead: epoll alone would round each up to 1 ms.
        late = []
        for _ in range(21):
            due = time.monotonic_ns() + 200_000
            timer.start(due, 10 * S)
            ep.poll(1.0)
            late.append(time.monotonic_ns() - due)
            timer.clear()
        assert min(late) >= 0
        assert sorted(late)[10] < 700_000, late
    finally:
        ep.close()
        timer.close()


# -- open loop: cases, specs, report -----------------------------------------------------


def test_rate_makes_echo_rate_and_kv_open_loop():
    cfg = Config(scenarios=["echo-rate", "kv", "idle"], connections=5, processes=2, rate=3000.0)
    cases = build_cases(cfg)
    assert [c.name for c in cases] == ["echo-rate-c5-r3000", "kv-c5-r3000", "idle"]
    echo, kv = cases[0], cases[1]
    assert (echo.rate, echo.mode, echo.app, kv.app, kv.rate) == (
        3000.0,
        "stream",
        "echo",
        "kv",
        3000.0,
    )
    # A Topology is only names until up(): nothing is created here.
    b = Bench(Topology("ustpsunit"), cfg, "/nonexistent", print)
    kernel = BY_NAME["kernel-uvloop"]
    specs = worker_specs(b, kv, kernel, 7, 1)
    assert {(s["dst"], s["ns"]) for s in specs} == {("198.19.0.2", "ustpsunit")}
    # Connections 3 + 2: the rate follows them, the schedules interleave.
    assert [s["conns"] for s in specs] == [3, 2]
    assert [s["rate"] for s in specs] == [pytest.approx(1800.0), pytest.approx(1200.0)]
    assert [s["phase"] for s in specs] == [0.0, 0.5]
    assert all(s["max_outstanding"] == 256 for s in specs)
    closed = worker_specs(b, build_cases(Config(scenarios=["kv"]))[0], kernel, 7, 1)
    assert all("rate" not in s for s in closed)
    with pytest.raises(ValueError):
        paced_case("kv", cfg, 0.0)


def test_cli_rate_option():
    import argparse

    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers()
    add_bench_parser(sub)
    args = ap.parse_args(
        ["bench", "--rate", "5000", "--max-outstanding", "32", "--targets", "kernel-uvloop"]
    )
    cfg = config_from(args)
    assert (cfg.rate, cfg.max_outstanding) == (5000.0, 32)
    args = ap.parse_args(["bench", "--rate", "-1", "--targets", "kernel-uvloop"])
    with pytest.raises(ValueError, match="--rate"):
        config_from(args)


def _paced_run(target: str, ops_s: float, offered: float, dropped: int, late: int) -> RunResult:
    r = RunResult("kv-c16-r20000", "kv", target, 0, "cross-cpu")
    r.seconds, r.ops_per_s, r.ops = 1.0, ops_s, int(ops_s)
    r.offered_per_s, r.offered = offered, int(offered)
    r.dropped, r.late, r.issued = dropped, late, int(offered) - dropped - late
    r.p50_us, r.p99_us = 100.0, 900.0
    r.server = {"utime_s": 0.4, "stime_s": 0.1}
    return r


def test_open_loop_derived_and_report_table():
    r = _paced_run("ustack-hybrid", 15000.0, 20000.0, 4000, 1000)
    d = derived(r)
    assert d["offered_per_s"] == 20000.0
    assert d["achieved_share"] == pytest.approx(0.75)
    assert d["dropped_share"] == pytest.approx(0.2) and d["late_share"] == pytest.approx(0.05)
    assert "offered_per_s" not in derived(_fake_run("kernel-uvloop", 0, 100, 50, 0.5))
    cfg = Config(scenarios=["kv"], targets=["ustack-hybrid"], rate=20000.0, connections=16)
    [s] = report.summarize(build_cases(cfg), [r], cfg)
    text = report.open_loop_table([s])
    row = next(line for line in text.splitlines() if "ustack-hybrid" in line)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:7] == [
        "kv-c16-r20000",
        "ustack-hybrid",
        "20,000",
        "15,000",
        "75%",
        "20.0%",
        "5.0%",
    ]
    assert cells[-1] == "33.3"  # 0.5 s of CPU over 15,000 replies, in us


# -- open loop against real servers ------------------------------------------------------


def _bench(topology: Any, tmp_path: Any, **kw: Any) -> Bench:
    cfg = Config(seconds=1.0, warmup=0.3, retries=0, kv_keys=500, **kw)
    if len(os.sched_getaffinity(0)) >= 2:
        cfg.placement, cfg.server_cpu, cfg.client_cpu = "cross-cpu", 0, 1
    client_sysctls(topology)
    return Bench(topology, cfg, str(tmp_path), lambda msg: None)


def _run(
    b: Bench, case: Any, target: Target, settled: Callable[[RunResult], bool] = lambda r: True
) -> RunResult:
    """One run; up to twice again while it is not `settled` and other work took
    over a quarter of the pinned CPUs (as `ustack bench` does), so that a busy
    machine's stalls do not pass for a result.  On a quiet machine, one run."""
    cfg = b.cfg
    for _ in range(3):
        r = run_one(b, case, target, 0, cfg.server_cpu, cfg.client_cpu, cfg.placement)
        assert r.ok, (r.error, r.server_output)
        if settled(r) or (derived(r)["other_cpu_share"] or 0.0) <= 0.25:
            break
    return r


@pytest.mark.netns
def test_paced_load_hits_offered_rate_against_kernel_sink(topology, tmp_path):
    b = _bench(topology, tmp_path, connections=4, processes=2)

    def settled(r: RunResult) -> bool:
        return r.dropped == 0 and r.late <= 20 and abs(r.ops_per_s - 2000.0) <= 100.0

    for scenario in ("echo-rate", "kv"):
        r = _run(b, paced_case(scenario, b.cfg, 2000.0), BY_NAME["sink-uvloop"], settled)
        assert r.offered_per_s == pytest.approx(2000.0, rel=1e-6)
        assert r.offered == pytest.approx(2000, abs=2)  # 1 s window
        assert r.offered == r.issued + r.dropped + r.late
        assert r.dropped == 0 and r.late <= r.offered // 100, (scenario, r.dropped, r.late)
        assert r.ops_per_s == pytest.approx(2000.0, rel=0.05), scenario
        assert r.errors == 0 and r.misses == 0
        assert r.p50_us is not None and 0 < r.p50_us < 50_000
        if scenario == "kv":  # the sink counts kv requests one by one (echo: reads)
            assert r.counters["app_requests"] == pytest.approx(r.ops, rel=0.05)


SLOW_ECHO = """
import socket, sys, threading, time
ls = socket.socket()
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind((sys.argv[1], int(sys.argv[2])))
ls.listen(64)
def serve(c):
    try:
        while True:
            d = c.recv(64)  # at most one 64 B request per read, each 5 ms late
            if not d:
                return
            time.sleep(0.005)
            c.sendall(d)
    except OSError:
        return
while True:
    c, _ = ls.accept()
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""

SLOW_TARGET = Target(
    "slow-echo",
    "kernel",
    ("echo",),
    lambda ln: [sys.executable, "-c", SLOW_ECHO, ln.addr, str(ln.port)],
    ready="port",
    in_kernel_ns=True,
    stats_json=False,
)


@pytest.mark.netns
def test_paced_load_above_what_a_slow_server_does_queues_and_drops(topology, tmp_path):
    """A server of at most 200 req/s (one 5 ms request at a time, one connection)."""
    b = _bench(topology, tmp_path, connections=1, processes=1, max_outstanding=32)
    low = _run(
        b,
        paced_case("echo-rate", b.cfg, 40.0),
        SLOW_TARGET,
        lambda r: abs(r.ops_per_s - 40.0) <= 4.0 and (r.p50_us or 0.0) < 30_000,
    )
    high = _run(b, paced_case("echo-rate", b.cfg, 2000.0), SLOW_TARGET)
    assert low.ops_per_s == pytest.approx(40.0, rel=0.1) and low.dropped == 0
    assert low.p50_us is not None and low.p50_us < 30_000
    # Offered 2000/s: at most 200/s come back, the connection fills up to its 32
    # in flight and the rest are dropped; latency is the queue, 32 x 5 ms or more.
    assert high.ops_per_s < 0.1 * high.offered_per_s
    assert high.dropped > 0.8 * high.offered
    assert high.offered == high.issued + high.dropped + high.late
    assert high.p50_us is not None and high.p50_us > 5 * low.p50_us and high.p50_us > 100_000


@pytest.mark.netns
def test_paced_latency_counts_from_scheduled_time(topology, tmp_path):
    """Stop the load generator for 300 ms: the requests it then sends late carry the delay."""
    b = _bench(topology, tmp_path, connections=2, processes=1)
    target = BY_NAME["sink-uvloop"]
    case = paced_case("echo-rate", b.cfg, 1000.0)
    port = b.next_port()
    stats = str(tmp_path / "sink.json")
    cpu_s, cpu_c = b.cfg.server_cpu, b.cfg.client_cpu
    launch = Launch("echo", topology.name, topology.kernel_ns, topology.kernel_addr, port, stats)
    server = Server(target, launch, cpu_s, topology.client_ns, stats)
    workers = None
    try:
        server.wait_ready()
        workers = Workers(worker_specs(b, case, target, port, cpu_c), cpu_c)
        workers.wait_ready(timeout=60)
        t_timed = time.monotonic_ns() + 200 * MS
        t_end = t_timed + 1200 * MS
        workers.go(t_timed, t_end)
        time.sleep((t_timed - time.monotonic_ns()) / 1e9 + 0.4)
        [pid] = workers.pids
        t_stop = time.monotonic_ns()
        os.kill(pid, signal.SIGSTOP)
        time.sleep(0.3)
        os.kill(pid, signal.SIGCONT)
        stopped_ms = (time.monotonic_ns() - t_stop) / MS
        [doc] = workers.results(timeout=30)
    finally:
        if workers is not None:
            workers.end()
        server.stop()
    assert doc["offered"] == 1200 and doc["dropped"] == 0
    assert doc["offered"] == doc["issued"] + doc["dropped"] + doc["late"]
    # Slots over 100 ms old when it came back were given up (about 200; more
    # when it was stopped longer or took a while to run again)...
    assert stopped_ms - 130 <= doc["late"] <= stopped_ms + 100, (doc["late"], stopped_ms)
    # ...and the last 100 ms worth went at once, each timed from its own slot:
    # about 60 of them 40 ms or more.  Timed from the send, none would be.
    h = Histogram.from_json(doc["hist"])
    slow = sum(c for idx, c in h.counts.items() if h.bounds(idx)[0] >= 40 * MS)
    assert slow >= 30, slow
    assert h.max >= 80 * MS


# -- the polling study ---------------------------------------------------------------------


@pytest.mark.netns
def test_polling_study_quick(topology, tmp_path):
    tool = Path(__file__).resolve().parent.parent / "tools" / "polling_study.py"
    out_json, out_png, out_txt = tmp_path / "s.json", tmp_path / "s.png", tmp_path / "s.txt"
    argv = [
        sys.executable, str(tool), "--quick", "--rates", "2000,max", "--name", topology.name,
        "--json", str(out_json), "--plot", str(out_png), "--text", str(out_txt),
    ]  # fmt: skip
    p = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "repetition 1/1" in p.stderr and "[1/12" in p.stderr  # progress while it runs
    doc = json.loads(out_json.read_text())
    targets = ["ustack-busy", "ustack-interrupt", "ustack-hybrid", "kernel-uvloop"]
    assert doc["targets"] == targets and doc["rates"] == ["2000", "max"]
    points = {(q["target"], q["rate"]): q for q in doc["points"]}
    assert sorted(points) == sorted((t, r) for t in targets for r in ("2000", "max"))
    for (t, rate), q in points.items():
        assert q["runs"] == 1, (t, rate, q["error"])
        assert q["achieved_per_s"] > 0 and 0 < q["p50_us"] <= q["p99_us"]
        assert q["cpu_us_per_req"] > 0 and q["cpu_share"] > 0
        if rate == "max":
            assert q["offered_per_s"] is None and q["dropped_share"] is None
        else:
            assert q["offered_per_s"] == pytest.approx(2000.0)
            assert q["achieved_per_s"] <= 1.05 * q["offered_per_s"]
    idle = {i["target"]: i for i in doc["idle"]}
    assert sorted(idle) == sorted(targets)
    assert all(i["runs"] == 1 and i["cpu_share"] is not None for i in idle.values())
    # Busy polling spins with nothing to do; the other modes sleep.
    assert idle["ustack-busy"]["cpu_share"] > 5 * max(idle["ustack-hybrid"]["cpu_share"], 0.01)
    assert set(doc["verdict"]["against_busy"]) == {"ustack-hybrid", "ustack-interrupt"}
    assert len(doc["runs"]) == 12 and all(r["error"] is None for r in doc["runs"])
    text = out_txt.read_text()
    assert "Offered load against achieved" in text and "Idle: server CPU" in text
    assert all(t in text for t in targets)
    png = out_png.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    img = matplotlib.image.imread(str(out_png))
    assert img.shape[0] > 500 and img.shape[1] > 1000
