"""tools/bench_kv_clients.py: memaslap's output read right; a --quick run against kv servers.

The unit tests feed the parser text in memaslap's format (periodic dumps
with -S 1s, the summary at exit, replies it did not expect).  The end to
end test runs the tool once (module fixture, about 40 s) against the kv
app on ustack (hybrid polling) and on kernel sockets, both in memcached's
key mode, and Debian's memcached, with both clients; memcached and
memaslap come with the Makefile's deps, so their absence fails.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.conftest import require_netns, unique_name
from ustack.bench.loadgen import Histogram
from ustack.bench.targets import BY_NAME, Launch
from ustack.topology import Topology

TOOL = Path(__file__).resolve().parent.parent / "tools" / "bench_kv_clients.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_kv_clients", TOOL)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


kvc = _load()

# memaslap's periodic dump (-S 1s), printed with its own format strings.
_TYPE = (
    "Type     Time(s)  Ops          TPS(ops/s)   Net(M/s)   Get_miss   Min(us)  Max(us)    "
    "Avg(us)    Std_dev    Geo_dist  "
)


def _row(kind: str, t: int, ops: int, mn: int, mx: int, avg: int) -> str:
    return (
        f"{kind:<8} {t:<8d} {ops:<12d} {ops:<12d} {9.8:<10.1f} {0:<10d} {mn:<8d} {mx:<10d}"
        f" {avg:<10d} {90.5:<10.2f} {30.81:.2f}"
    )


def _dump(t: int, blocks: dict[str, tuple[int, int, int, int, int]]) -> str:
    """blocks: name -> (period ops, global ops, min, max, avg)."""
    out = ["\x1b[1;1H\x1b[2J"]
    for name, (ops, total, mn, mx, avg) in blocks.items():
        out += [f"{name} Statistics", _TYPE, _row("Period", 1, ops, mn, mx, avg)]
        out += [_row("Global", t, total, 20, 72060, 34), ""]
    return "\n".join(out) + "\n"


_HEAD = """servers: 198.19.0.2:20004
threads count: 1
concurrency: 1
run time: 2s
windows size: 10k
set proportion: set_prop=0.10
get proportion: get_prop=0.90
"""

_TAIL = """Get Statistics (1800 events)
   Min:        20
   Max:      5000
   Avg:        34
   Geo:     25.71
   Std:    379.05
   Log2 Dist:
       4:        0     1500      200       50
       8:       50

Total Statistics (2000 events)
   Min:        20
   Max:      5000
   Avg:        40
   Geo:     25.92
   Std:   1623.22
   Log2 Dist:
       4:        0     1600      300       50
       8:       49        0        0        0
      12:        1

cmd_get: 1800
cmd_set: 200
get_misses: 0
written_bytes: 9997132
read_bytes: 76193198
object_bytes: 8284640

Run time: 2.0s Ops: 2000 TPS: 1000 Net_rate: 25.0M/s
"""


def _sample_output() -> str:
    first = _dump(
        1,
        {
            "Get": (900, 900, 20, 500, 30),
            "Set": (100, 100, 25, 900, 50),
            "Total": (1000, 1000, 20, 900, 32),
        },
    )
    second = _dump(
        2,
        {
            "Get": (810, 1710, 20, 700, 40),
            "Set": (90, 190, 21, 600, 60),
            "Total": (900, 1900, 20, 700, 42),
        },
    )
    return _HEAD + first + second + _TAIL


def _parse(text: str) -> tuple[Any, list[int]]:
    out = kvc.MemaslapOutput()
    ends = [s for s in (out.feed(line) for line in text.splitlines()) if s is not None]
    return out, ends


def test_memaslap_output_periods_window_and_summary():
    out, ends = _parse(_sample_output())
    assert ends == [1, 2]  # a period ends with its Total block's Global line
    assert out.settings["concurrency"] == "1" and out.settings["windows size"] == "10k"
    assert out.proportions == {"set": 0.10, "get": 0.90}
    assert out.periods[1]["Get"].ops == 900 and out.periods[2]["Set"].ops == 90
    assert out.periods[2]["Total"].avg_us == 42 and out.periods[2]["Set"].min_us == 21
    w = out.window(1, 2)  # the warm-up (second 1) left out
    assert w["Total"]["ops"] == 900 and w["Total"]["periods"] == 1
    assert w["Get"]["ops"] == 810 and w["Set"]["ops"] == 90
    assert w["Total"]["max_us"] == 700 and w["Total"]["avg_us"] == 42
    both = out.window(0, 2)
    assert both["Total"]["ops"] == 1900
    assert both["Total"]["avg_us"] == pytest.approx((1000 * 32 + 900 * 42) / 1900)
    total = out.final["Total"]
    assert total.events == 2000 and total.avg_us == 40 and total.max_us == 5000
    assert total.log2_dist == {5: 1600, 6: 300, 7: 50, 8: 49, 12: 1}
    assert out.final["Get"].log2_dist == {5: 1500, 6: 200, 7: 50, 8: 50}
    assert out.counters["cmd_get"] == 1800 and out.counters["get_misses"] == 0
    assert out.run == {"seconds": 2.0, "ops": 2000, "tps": 1000}
    assert out.error_replies == 0 and out.other == []


def test_memaslap_unexpected_replies_counted():
    out, ends = _parse(_HEAD + "<6 CLIENT_ERROR bad command line format\n" * 3 + "<6 ERROR\n")
    assert ends == []
    assert out.error_replies == 4
    assert out.first_error == "CLIENT_ERROR bad command line format"
    assert "memaslap's keys begin with an 8-byte binary counter" in kvc._refusal(out)


def test_memaslap_window_config_and_argv():
    assert kvc.memaslap_window(10000, 1) == 10240
    assert kvc.memaslap_window(10000, 32) == 1024  # at least one unit per connection
    assert kvc.memaslap_window(10000, 4) == 2048
    cfg = kvc.memaslap_config(0.9, 1024).splitlines()
    # Commands are indexed by line order: set (0) must come before get (1).
    assert cfg == ["key", "16 16 1", "value", "1024 1024 1", "cmd", "0 0.1000", "1 0.9000"]
    argv = kvc.memaslap_argv("/usr/bin/memcaslap", "198.19.0.2:1", "f", 1024, 1, 32, 1024, 6)
    assert argv[:3] == ["stdbuf", "-oL", "/usr/bin/memcaslap"]
    opts = dict(zip(argv[3::2], argv[4::2], strict=True))
    assert opts == {
        "-s": "198.19.0.2:1",
        "-F": "f",
        "-X": "1024",
        "-T": "1",
        "-c": "32",
        "-w": "1k",
        "-t": "6s",
        "-S": "1s",
    }


def test_log2_buckets_like_memaslap():
    assert [kvc.log2_bucket(v) for v in (0, 1, 2, 3, 4, 5, 16, 17, 32, 33)] == [
        0,
        0,
        1,
        2,
        2,
        3,
        4,
        5,
        5,
        6,
    ]
    assert kvc.log2_range(5) == (16.0, 32.0) and kvc.log2_range(0) == (0.0, 1.0)
    dist = {5: 60, 6: 39, 10: 1}
    assert kvc.log2_percentile(dist, 0.5) == (16.0, 32.0)
    assert kvc.log2_percentile(dist, 0.99) == (32.0, 64.0)
    assert kvc.log2_percentile(dist, 1.0) == (512.0, 1024.0)
    assert kvc.log2_percentile({}, 0.5) is None
    h = Histogram()
    h.record_many([20_000] * 10 + [40_000] * 5 + [1_000_000])  # 20 us, 40 us, 1 ms
    assert kvc.hist_to_log2(h) == {5: 10, 6: 5, 10: 1}


def test_kv_app_targets_started_in_the_key_mode_asked():
    launch = Launch("kv", "t", "t-k", "198.19.0.2", 20001, "/tmp/s.json")
    for name in ("ustack-hybrid", "kernel-uvloop"):
        target = kvc.with_kv_keys(BY_NAME[name], "memcached")
        assert kvc.serves_kv_app(target) and target.name == name
        argv = target.argv(launch)
        assert argv[1:5] == ["-m", "ustack", "serve", "kv"]
        assert argv[-2:] == ["--keys", "memcached"]
        assert BY_NAME[name].argv(launch) == argv[:-2]  # the table's target is left alone
    memcached = BY_NAME["memcached"]
    assert not kvc.serves_kv_app(memcached)
    assert kvc.with_kv_keys(memcached, "memcached") is memcached
    assert kvc.parse_args([]).kv_keys == "memcached"


# -- end to end ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, Any], str]]:
    require_netns()
    for path in ("/usr/bin/memcached", kvc.MEMASLAP):
        if not os.access(path, os.X_OK):
            pytest.fail(f"{path} is missing: `make deps` installs memcached and libmemcached-tools")
    out_json = tmp_path_factory.mktemp("kvc") / "kv.json"
    topo = Topology(unique_name("mc")).up()
    try:
        argv = [
            sys.executable,
            str(TOOL),
            "--quick",
            "--name",
            topo.name,
            "--targets",
            "ustack-hybrid,kernel-uvloop,memcached",
            "--json",
            str(out_json),
        ]
        p = subprocess.run(argv, capture_output=True, text=True, timeout=240)
    finally:
        topo.down()
    assert p.returncode == 0, p.stdout + p.stderr
    with open(out_json) as f:
        yield json.load(f), p.stdout + p.stderr


def _summary(doc: dict[str, Any], target: str, conns: int, client: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [
        s
        for s in doc["summary"]
        if (s["target"], s["conns"], s["client"]) == (target, conns, client)
    ]
    assert len(found) == 1, (target, conns, client)
    return found[0]


def _sane(s: dict[str, Any]) -> None:
    where = (s["target"], s["conns"], s["client"], s["error"])
    assert s["runs"] == 1, where
    m = s["m"]
    assert m["ops_per_s"] > 100, where
    assert s["errors"] == 0 and s["misses"] == 0, where
    assert 0 < m["min_us"] <= m["mean_us"] <= m["max_us"] < 1e6, where
    if m["p50_us"] is not None:
        assert 0 < m["p50_us"] <= m["p90_us"] <= m["p99_us"] <= m["max_us"], where
    lo50, hi50 = s["p50_range_us"]
    lo99, hi99 = s["p99_range_us"]
    assert lo50 < hi50 <= hi99 and lo50 <= lo99, where
    assert m["server_cpu_share"] > 0 and m["server_cpu_us_per_op"] > 0, where
    assert m["client_cpu_share"] > 0 and m["client_cpu_us_per_op"] > 0, where
    assert s["client_ceiling"] > 0, where


@pytest.mark.netns
def test_quick_run_memcached_both_clients(quick_run):
    doc, text = quick_run
    assert doc["config"]["targets"] == ["ustack-hybrid", "kernel-uvloop", "memcached"]
    assert doc["config"]["connections"] == [1, 32]
    assert doc["config"]["kv_keys"] == "memcached"
    assert doc["placement"] == {"name": "same-cpu", "server_cpu": 0, "client_cpu": 0}
    assert "[1/12" in text and "Agreement (memaslap / ours)" in text  # progress, report
    assert (
        "servers: ustack's kv app (ustack-hybrid, kernel-uvloop) runs with"
        " `ustack serve kv --keys memcached` for both clients"
    ) in text
    for conns in (1, 32):
        ms = _summary(doc, "memcached", conns, "memaslap")
        ours = _summary(doc, "memcached", conns, "loadgen")
        _sane(ms)
        _sane(ours)
        # memaslap ran the mix it was given, over the keys it says, and all its gets hit.
        assert ms["m"]["get_share"] == pytest.approx(0.9, abs=0.02)
        assert ms["keys"] == (10240 if conns == 1 else 32 * 1024)
        run = next(
            r
            for r in doc["runs"]
            if (r["target"], r["conns"], r["client"]) == ("memcached", conns, "memaslap")
        )
        assert run["memaslap"]["proportions"] == {"set": 0.1, "get": 0.9}
        assert run["memaslap"]["settings"]["concurrency"] == str(conns)
        assert run["memaslap"]["counters"]["get_misses"] == 0
        assert sum(run["memaslap"]["final"]["Total"]["log2_dist"].values()) > ms["m"]["ops"]
        agree = [a for a in doc["agreement"] if (a["target"], a["conns"]) == ("memcached", conns)]
        assert len(agree) == 1
        a = agree[0]
        assert a["ratio_ops"] == pytest.approx(ms["m"]["ops_per_s"] / ours["m"]["ops_per_s"])
        assert a["verdict"].startswith("agree" if a["agree"] else "differ")


@pytest.mark.netns
def test_quick_run_kernel_kv_our_client(quick_run):
    doc, _ = quick_run
    for conns in (1, 32):
        s = _summary(doc, "kernel-uvloop", conns, "loadgen")
        _sane(s)
        # The server's own count over the window agrees with the client's but for the edges.
        assert s["m"]["server_requests"] == pytest.approx(s["m"]["ops"], rel=0.05)


@pytest.mark.netns
@pytest.mark.parametrize("target", ["kernel-uvloop", "ustack-hybrid"])
def test_quick_run_memaslap_against_kv_app_memcached_keys(quick_run, target: str):
    # memaslap's binary keys (bytes 0x10-0x1f) are taken in memcached's key mode.
    doc, text = quick_run
    for conns in (1, 32):
        ms = _summary(doc, target, conns, "memaslap")
        _sane(ms)
        assert ms["error"] is None and ms["failed"] == 0
        assert ms["m"]["get_share"] == pytest.approx(0.9, abs=0.02)
        assert ms["m"]["server_requests"] == pytest.approx(ms["m"]["ops"], rel=0.05)
        for client in ("memaslap", "loadgen"):
            run = next(
                r
                for r in doc["runs"]
                if (r["target"], r["conns"], r["client"]) == (target, conns, client)
            )
            assert run["server_ready"].endswith(", keys memcached)"), run["server_ready"]
            assert run["errors"] == 0 and run["misses"] == 0
        run = next(
            r
            for r in doc["runs"]
            if (r["target"], r["conns"], r["client"]) == (target, conns, "memaslap")
        )
        assert run["memaslap"]["counters"]["get_misses"] == 0
        assert run["memaslap"]["settings"]["concurrency"] == str(conns)
    assert "Without figures" not in text
