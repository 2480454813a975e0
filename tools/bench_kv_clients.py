"""kv with two clients: memaslap and ustack's load generator, against the same servers.

Issue #6: kv throughput and latency under a realistic load (90% get / 10%
set, 1 KB values, 10,000 keys, 1 and 32 connections, one request
outstanding per connection) on ustack, on the same app over kernel
sockets, and on Debian's memcached -t 1, measured by two clients in the
same run so that each checks the other:

    memaslap  Debian's /usr/bin/memcaslap (libmemcached-tools), C and
              libevent, run inside the client namespace, pinned to the
              client CPU, one thread (-T 1), -c connections;
    loadgen   `ustack bench`'s load generator (ustack.bench.loadgen
              worker, stream mode, depth 1), same mix, value size and
              connections, one process unless --processes.

Each (target, connections, client, repetition) gets a fresh server from
ustack.bench.targets (pinned to the server CPU), a warm-up, then a timed
window over which the server's and the client's CPU are read from /proc.
Within a repetition every target runs in turn and the two clients swap
order, so the figures compared were taken close together; the report
gives medians over --repeat runs and, per target and connection count,
the ratio memaslap/ours with a verdict.

How memaslap is driven, and what it can and cannot be asked for:

- The load is a config file (-F): keys of 16 bytes (memaslap's minimum),
  values of --value bytes (also -X), commands "0 <set share>" then
  "1 <get share>" (memaslap indexes commands by line order, so set comes
  first; it prints the proportions it took, which are checked).
- Keys: each connection owns a window (-w) of items, a multiple of 1024,
  so 10,000 keys cannot be asked for exactly: the window is
  round(keys / connections / 1024) * 1024, at least 1024 (1 connection:
  10,240 keys; 32 connections: 32 x 1,024).  memaslap makes its own keys
  (an 8-byte binary counter, then characters of a random table seeded by
  the clock), so nothing outside it can set them first; instead it only
  ever gets keys it has already stored, and a set replaces the oldest
  key of the window with a new one.  Its gets hit (get_misses, reported,
  stays 0) and the warm-up lets the window fill before the timed window.
- Timing: -t takes whole seconds, so --seconds and --warmup are integers.
  With -S 1s memaslap prints, every second, per Get/Set/Total the
  period's ops, min, max and average latency (microseconds, gettimeofday
  from building the request to handling its reply); without -S it
  measures no latency at all.  The timed window is the periods after the
  warm-up; the CPU samples are taken as each period's line arrives
  (stdout is line-buffered through stdbuf).  At exit it prints a log2
  latency histogram (bucket i holds (2^(i-1), 2^i] us) over the whole
  run, warm-up included: its p50/p99 are given as that bucket's range.
- Keys with control characters: memaslap's 8-byte counter holds bytes
  0x10-0x1f, which the protocol forbids in keys.  memcached accepts them;
  ustack's kv app refuses them in its default key mode (strict), so the
  targets that run it (ustack-*, kernel-*) are started with `ustack serve
  kv --keys memcached` (--kv-keys, memcached by default here), which
  takes any byte but a space as memcached does, for both clients alike;
  the report says so, and each run records the server's ready line.
  With --kv-keys strict, a server that refuses memaslap's requests is
  recorded as such, memaslap is stopped, and that target is not tried
  with memaslap again in this run.

Our load generator sets its 10,000 keys (k%09d, 10 bytes) before the
warm-up and replays a seeded 90/10 plan; its latencies are exact
(monotonic_ns, send to last byte) and are also binned like memaslap's.

The verdict: agreement when the two throughputs are within --tolerance
(15%).  Otherwise the gap is explained, where the figures allow, by CPU:
with the clients and the server on one CPU (same-cpu) that CPU does the
client's and the server's work for every op, so the rate follows
1 / (client CPU per op + server CPU per op) and the ratio that predicts
is shown; on separate CPUs (cross-cpu) a client at >= 90% of its CPU is
the limit.  Every run shows how much of its CPU each client used and its
implied ceiling (1 / its CPU per op, the rate it could drive with a CPU
to itself).

    sudo .venv/bin/python tools/bench_kv_clients.py [--targets T,...]
        [--connections 1,32] [--repeat 3] [--seconds 5] [--warmup 1]
        [--placement same-cpu|cross-cpu] [--kv-keys memcached|strict] [--quick]
        [--json FILE] [--name TOPO]

Builds its own topology (ustmc<pid>, removed at the end, also on Ctrl-C
or SIGTERM) unless --name names one that is up.  Needs root.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import select
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from types import FrameType
from typing import IO, Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import int_list, machine_info, progress

from ustack import netns
from ustack.bench.loadgen import Histogram
from ustack.bench.scenarios import PLACEMENTS, Bench, Case, Config, derived, run_one
from ustack.bench.targets import (
    BY_NAME,
    Launch,
    ProcSample,
    Server,
    Target,
    TargetUnavailable,
    children,
    cpu_busy,
    cpu_times,
    sample,
)
from ustack.topology import Topology

MEMASLAP = "/usr/bin/memcaslap"
DEFAULT_TARGETS = ("ustack-hybrid", "kernel-uvloop", "memcached")
CLIENTS = ("memaslap", "loadgen")
KEY_LEN = 16  # memaslap's shortest key
WINDOW_UNIT = 1024  # memaslap's window is a multiple of this
ABORT_AFTER_ERRORS = 1000  # error replies before memaslap is stopped as refused
EXIT_SLACK_S = 15.0  # beyond -t and memaslap's 1 s at exit
QUICK = {"seconds": 1, "warmup": 1, "repeat": 1, "retries": 0}
SATURATED = 0.90  # a CPU this busy is the limit
KV_KEY_MODES = ("memcached", "strict")  # `ustack serve kv --keys`; the first is our default

# -- memaslap: its config and its output -------------------------------------------------


def memaslap_config(get_ratio: float, value: int) -> str:
    """The -F file: key and value lengths, then set before get (line order is the index)."""
    return (
        f"key\n{KEY_LEN} {KEY_LEN} 1\n"
        f"value\n{value} {value} 1\n"
        f"cmd\n0 {1.0 - get_ratio:.4f}\n1 {get_ratio:.4f}\n"
    )


def memaslap_window(keys: int, conns: int) -> int:
    """Items per connection: keys spread over the connections, in whole 1024s."""
    units = max(1, round(keys / conns / WINDOW_UNIT))
    return units * WINDOW_UNIT


def memaslap_argv(
    path: str, server: str, cfg_file: str, value: int, threads: int, conns: int, window: int, t: int
) -> list[str]:
    return [
        "stdbuf",
        "-oL",  # a line per write, so each period's figures arrive when printed
        path,
        "-s",
        server,
        "-F",
        cfg_file,
        "-X",
        str(value),
        "-T",
        str(threads),
        "-c",
        str(conns),
        "-w",
        f"{window // WINDOW_UNIT}k",
        "-t",
        f"{t}s",
        "-S",
        "1s",
    ]


_HEADER = re.compile(r"^(Get|Set|Total) Statistics(?: \((\d+) events\))?$")
_ROW = re.compile(r"^(Period|Global)\s+(\d+)\s+(.*)$")
_DIST = re.compile(r"^\s*(\d+):((?:\s+\d+)+)\s*$")
_STAT = re.compile(r"^\s+(Min|Max|Avg|Geo|Std):\s+(\S+)$")
_COUNTER = re.compile(
    r"^(cmd_get|cmd_set|get_misses|written_bytes|read_bytes|object_bytes): (\d+)$"
)
_RUN = re.compile(r"^Run time: ([\d.]+)s Ops: (\d+) TPS: (\d+)")
_SETTING = re.compile(r"^(servers|threads count|concurrency|run time|windows size): (.*)$")
_PROP = re.compile(r"^(set|get) proportion: \w+=([\d.]+)$")
_REPLY = re.compile(r"^<\d+ (.*)$")  # a reply memaslap did not expect, with its socket


@dataclass
class Period:
    """One block of a periodic dump: the period's figures (Get, Set or Total)."""

    ops: int = 0
    tps: int = 0
    net_mb_s: float = 0.0
    get_miss: int = 0
    min_us: int = 0  # -1 when the period had no events
    max_us: int = 0
    avg_us: int = 0
    std_us: float = 0.0


@dataclass
class Final:
    """One block of the summary at exit (whole run, warm-up included)."""

    events: int = 0
    min_us: float = 0.0
    max_us: float = 0.0
    avg_us: float = 0.0
    geo_us: float = 0.0
    std_us: float = 0.0
    log2_dist: dict[int, int] = field(default_factory=dict)


@dataclass
class MemaslapOutput:
    """What memaslap printed, parsed line by line as it comes."""

    settings: dict[str, str] = field(default_factory=dict)
    proportions: dict[str, float] = field(default_factory=dict)
    periods: dict[int, dict[str, Period]] = field(default_factory=dict)  # second -> block
    final: dict[str, Final] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    run: dict[str, float] = field(default_factory=dict)  # whole run: seconds, ops, tps
    error_replies: int = 0
    first_error: str = ""
    other: list[str] = field(default_factory=list)  # anything else (kept: the last 20)
    _block: str = ""
    _final_block: str = ""
    _pending: Period | None = None

    def feed(self, raw: str) -> int | None:
        """Parse one line; the second a period ended at when this line completes one."""
        line = raw.replace("\x1b[1;1H\x1b[2J", "").rstrip()
        if not line.strip():
            self._final_block = ""  # a blank line ends a block of the summary
            return None
        m = _HEADER.match(line)
        if m:
            self._block = m.group(1)
            self._final_block = m.group(1) if m.group(2) else ""
            if m.group(2):
                self.final[self._block] = Final(events=int(m.group(2)))
            return None
        m = _ROW.match(line)
        if m:
            return self._row(m.group(1), int(m.group(2)), m.group(3).split())
        if self._final_block:
            f = self.final[self._final_block]
            m = _STAT.match(line)
            if m:
                setattr(f, f"{m.group(1).lower()}_us", float(m.group(2)))
                return None
            m = _DIST.match(line)
            if m:
                first = int(m.group(1))
                for i, n in enumerate(m.group(2).split()):
                    if int(n):
                        f.log2_dist[first + i] = int(n)
                return None
            if line.strip() == "Log2 Dist:":
                return None
        m = _COUNTER.match(line)
        if m:
            self.counters[m.group(1)] = int(m.group(2))
            return None
        m = _RUN.match(line)
        if m:
            self.run = {
                "seconds": float(m.group(1)),
                "ops": int(m.group(2)),
                "tps": int(m.group(3)),
            }
            return None
        m = _PROP.match(line)
        if m:
            self.proportions[m.group(1)] = float(m.group(2))
            return None
        m = _SETTING.match(line)
        if m:
            self.settings[m.group(1)] = m.group(2)
            return None
        m = _REPLY.match(line)
        if m:
            self.error_replies += 1
            if not self.first_error:
                self.first_error = m.group(1)
            return None
        if not line.startswith("Type "):
            self.other = [*self.other[-19:], line]
        return None

    def _row(self, kind: str, second: int, vals: list[str]) -> int | None:
        if len(vals) < 9:
            self.other = [*self.other[-19:], f"{kind} {second} {' '.join(vals)}"]
            return None
        # Ops, TPS, Net(M/s), Get_miss, Min, Max, Avg, Std_dev, Geo_dist
        p = Period(
            int(vals[0]),
            int(vals[1]),
            float(vals[2]),
            int(vals[3]),
            int(vals[4]),
            int(vals[5]),
            int(vals[6]),
            float(vals[7]),
        )
        if kind == "Period":
            self._pending = p
            return None
        # "Global" carries the run's second (its Period line says the period's length).
        if self._pending is not None:
            self.periods.setdefault(second, {})[self._block] = self._pending
            self._pending = None
        return second if self._block == "Total" else None

    def window(self, first: int, last: int) -> dict[str, Any]:
        """Sums over the periods that ended at seconds first+1 .. last."""
        out: dict[str, Any] = {}
        for name in ("Get", "Set", "Total"):
            ps = [
                self.periods[s][name]
                for s in range(first + 1, last + 1)
                if name in self.periods.get(s, {})
            ]
            ops = sum(p.ops for p in ps)
            lived = [p for p in ps if p.ops > 0]
            out[name] = {
                "ops": ops,
                "get_miss": sum(p.get_miss for p in ps),
                "min_us": min((p.min_us for p in lived), default=None),
                "max_us": max((p.max_us for p in lived), default=None),
                "avg_us": sum(p.avg_us * p.ops for p in lived) / ops if ops else None,
                "periods": len(ps),
            }
        return out


def log2_bucket(us: float) -> int:
    """memaslap's bucket of a latency in us: the smallest i with 2**i >= us."""
    i = 0
    while i <= 63 and (1 << i) < us:
        i += 1
    return i


def log2_range(i: int) -> tuple[float, float]:
    """The latencies (us) memaslap's bucket i holds: (2**(i-1), 2**i], bucket 0 is [0, 1]."""
    return (0.0, 1.0) if i == 0 else (float(1 << (i - 1)), float(1 << i))


def log2_percentile(dist: dict[int, int], q: float) -> tuple[float, float] | None:
    """The range of the bucket holding the nearest-rank q-quantile."""
    total = sum(dist.values())
    if total == 0:
        return None
    rank = max(1, min(total, -int(-q * total // 1)))
    seen = 0
    for i in sorted(dist):
        seen += dist[i]
        if seen >= rank:
            return log2_range(i)
    return None


def hist_to_log2(h: Histogram) -> dict[int, int]:
    """Our histogram (ns) binned like memaslap's (whole microseconds, log2 buckets)."""
    out: dict[int, int] = {}
    for idx, n in h.counts.items():
        low, high = h.bounds(idx)
        b = log2_bucket(round((low + high - 1) / 2000))  # memaslap counts whole us

        out[b] = out.get(b, 0) + n
    return out


def serves_kv_app(target: Target) -> bool:
    """Whether `target` runs ustack's kv app (`ustack serve`), which has key modes."""
    probe = target.argv(Launch("kv", "t", "t-k", "198.18.0.2", 1, "/dev/null"))
    return probe[1:4] == ["-m", "ustack", "serve"]


def with_kv_keys(target: Target, keys: str) -> Target:
    """`target` with its kv server in key mode `keys`; other servers unchanged."""
    if not serves_kv_app(target):
        return target
    base = target.argv
    return replace(target, argv=lambda ln: [*base(ln), "--keys", keys])


# -- one run ------------------------------------------------------------------------------


@dataclass
class ClientRun:
    target: str
    conns: int
    client: str  # memaslap or loadgen
    rep: int
    placement: str
    error: str | None = None
    seconds: float = 0.0  # the timed window as this process saw it (CPU shares are over it)
    ops: int = 0
    ops_per_s: float = 0.0
    get_share: float | None = None  # memaslap: gets / ops in the window
    errors: int = 0
    misses: int = 0
    mean_us: float | None = None
    min_us: float | None = None
    max_us: float | None = None
    p50_us: float | None = None  # ours (memaslap: see log2_dist)
    p90_us: float | None = None
    p99_us: float | None = None
    log2_dist: dict[int, int] = field(default_factory=dict)  # memaslap: whole run
    server_cpu_share: float | None = None
    server_cpu_us_per_op: float | None = None
    client_cpu_share: float | None = None
    client_cpu_us_per_op: float | None = None
    other_cpu_share: float | None = None  # other work on the pinned CPUs
    pinned_busy: float | None = None  # busy share of the pinned CPUs (mean), anyone's work
    cpu_busy: dict[int, float] = field(default_factory=dict)
    server_requests: float | None = None  # the server's own count over the window
    server_ready: str = ""  # the server's ready line (ours name their key mode)
    keys: int = 0
    attempts: int = 1
    hist: dict[str, Any] = field(default_factory=dict)  # ours, ns
    memaslap: dict[str, Any] = field(default_factory=dict)  # settings, periods, totals

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class KvConfig:
    targets: list[str]
    connections: list[int]
    repeat: int
    seconds: int
    warmup: int
    placement: str
    server_cpu: int
    client_cpu: int
    keys: int
    value: int
    get_ratio: float
    threads: int
    processes: int
    memaslap: str
    tolerance: float
    max_other: float
    retries: int
    kv_keys: str = "memcached"  # the key mode of ustack's kv app (ustack serve kv --keys)


@dataclass
class Ctx:
    topo: Topology
    cfg: KvConfig
    workdir: str
    bench: Bench
    refused: dict[str, str] = field(default_factory=dict)  # target -> why memaslap cannot run
    done: int = 0
    total: int = 0
    t_start: float = 0.0


def _pin(cpu: int) -> Callable[[], None]:
    return lambda: os.sched_setaffinity(0, {cpu})


def _cpu_s(p: ProcSample) -> float:
    return p.utime_s + p.stime_s


def _per(x: float | None, n: float) -> float | None:
    return x / n if x is not None and n else None


def _lines(proc: subprocess.Popen[bytes], deadline: float, buf: bytearray) -> list[str] | None:
    """Complete lines available now (waiting up to 0.2 s); None at end of output."""
    out = proc.stdout
    assert out is not None
    left = max(0.0, min(0.2, deadline - time.monotonic()))
    r, _, _ = select.select([out], [], [], left)
    if not r:
        return []
    chunk = os.read(out.fileno(), 65536)
    if not chunk:
        return None
    buf += chunk
    cut = buf.rfind(b"\n")
    if cut < 0:
        return []
    text = buf[: cut + 1].decode("utf-8", "replace")
    del buf[: cut + 1]
    return text.splitlines()


def _refusal(out: MemaslapOutput) -> str:
    why = (
        f"the server answered {out.first_error!r} to memaslap's requests"
        f" ({out.error_replies} times)"
    )
    if "CLIENT_ERROR" in out.first_error:
        why += (
            "; memaslap's keys begin with an 8-byte binary counter (bytes 0x10-0x1f,"
            " control characters that the text protocol forbids in keys: memcached"
            " accepts them, ustack's kv app refuses them unless started with --keys memcached)"
        )
    return why


def run_memaslap(ctx: Ctx, target: Target, conns: int, rep: int) -> ClientRun:
    """One memaslap run against a fresh server; a failure is recorded, never raised."""
    cfg, topo = ctx.cfg, ctx.topo
    window = memaslap_window(cfg.keys, conns)
    res = ClientRun(target.name, conns, "memaslap", rep, cfg.placement, keys=window * conns)
    if target.name in ctx.refused:
        res.error = ctx.refused[target.name]
        return res
    port = ctx.bench.next_port()
    addr = topo.ustack_addr if target.side == "ustack" else topo.kernel_addr
    stats_path = os.path.join(ctx.workdir, f"stats-{port}.json")
    cfg_file = os.path.join(ctx.workdir, "memaslap.cnf")
    with open(cfg_file, "w") as f:
        f.write(memaslap_config(cfg.get_ratio, cfg.value))
    run_s = cfg.warmup + cfg.seconds
    argv = [
        "nsenter",
        f"--net={netns.netns_path(topo.client_ns)}",
        "--",
        *memaslap_argv(
            cfg.memaslap, f"{addr}:{port}", cfg_file, cfg.value, cfg.threads, conns, window, run_s
        ),
    ]
    launch = Launch("kv", topo.name, topo.kernel_ns, addr, port, stats_path)
    out = MemaslapOutput()
    server: Server | None = None
    proc: subprocess.Popen[bytes] | None = None
    marks: dict[str, Any] = {}
    try:
        server = Server(target, launch, cfg.server_cpu, topo.client_ns, stats_path)
        server.wait_ready()
        res.server_ready = server.ready_line
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=_pin(cfg.client_cpu),  # one CPU: memaslap then pins no thread itself
        )
        pids = [proc.pid]
        deadline = time.monotonic() + run_s + EXIT_SLACK_S
        buf = bytearray()
        while time.monotonic() < deadline:
            lines = _lines(proc, deadline, buf)
            if lines is None:
                break
            for line in lines:
                second = out.feed(line)
                if second == cfg.warmup or second == run_s:
                    edge = "start" if second == cfg.warmup else "end"
                    if edge == "start":
                        pids = children(proc.pid)
                    marks[edge] = (
                        time.monotonic(),
                        server.sample(),
                        sample(pids),
                        cpu_times(),
                        server.stats_now(),
                    )
            if out.error_replies >= ABORT_AFTER_ERRORS:
                ctx.refused[target.name] = f"refused: {_refusal(out)}"
                break
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    except TargetUnavailable as exc:
        res.error = f"unavailable: {exc}"
        return res
    except OSError as exc:
        res.error = f"failed: {exc}"
        return res
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        stopped = server.stop() if server is not None else None
    res.memaslap = {
        "argv": argv[3:],
        "config": memaslap_config(cfg.get_ratio, cfg.value),
        "window_per_conn": window,
        "settings": out.settings,
        "proportions": out.proportions,
        "counters": out.counters,
        "run": out.run,
        "periods": {
            s: {k: asdict(p) for k, p in b.items()} for s, b in sorted(out.periods.items())
        },
        "final": {k: asdict(f) for k, f in out.final.items()},
        "exit": proc.returncode if proc is not None else None,
        "other_output": out.other,
    }
    if target.name in ctx.refused:
        res.error = ctx.refused[target.name]
        return res
    if (
        stopped is not None
        and stopped.returncode not in (0, None)
        and "Traceback" in stopped.output
    ):
        last = stopped.output.strip().splitlines()[-1]
        res.error = f"server exited {stopped.returncode}: {last}"
        return res
    want_set = round(1.0 - cfg.get_ratio, 2)
    if "set" in out.proportions and abs(out.proportions["set"] - want_set) > 0.005:
        res.error = f"memaslap took set proportion {out.proportions['set']} (asked {want_set})"
        return res
    if "start" not in marks or "end" not in marks:
        tail = "; ".join(out.other[-3:]) or "(nothing)"
        res.error = (
            f"memaslap printed no figures for seconds {cfg.warmup} and {run_s}"
            f" (exit {proc.returncode if proc else None}): {tail}"
        )
        return res
    t0, s0, m0, c0, snap0 = marks["start"]
    t1, s1, m1, c1, snap1 = marks["end"]
    w = out.window(cfg.warmup, run_s)
    tot = w["Total"]
    res.seconds = t1 - t0
    res.ops = int(tot["ops"])
    # memaslap's own rate: its periods are its 1 s sleeps, which a busy CPU delays for
    # this process's reads of them as much as for memaslap.
    res.ops_per_s = res.ops / cfg.seconds
    res.get_share = _per(float(w["Get"]["ops"]), res.ops)
    res.misses = int(tot["get_miss"])
    res.errors = out.error_replies
    res.mean_us, res.min_us, res.max_us = tot["avg_us"], tot["min_us"], tot["max_us"]
    final = out.final.get("Total")
    if final is not None:
        res.log2_dist = dict(final.log2_dist)
    _cpu(res, s1.minus(s0), m1.minus(m0), cpu_busy(c0, c1))
    if snap0 is not None and snap1 is not None and "app_requests" in snap1:
        res.server_requests = snap1["app_requests"] - snap0.get("app_requests", 0.0)
    res.memaslap["window"] = w
    if res.ops == 0:
        res.error = "memaslap completed no request in the timed window"
    elif res.errors > res.ops / 100:
        res.error = f"refused: {_refusal(out)}"
    return res


def _cpu(res: ClientRun, server: ProcSample, client: ProcSample, busy: dict[int, float]) -> None:
    n = float(res.ops)
    res.server_cpu_share = _per(_cpu_s(server), res.seconds)
    res.server_cpu_us_per_op = _per(_cpu_s(server) * 1e6, n)
    res.client_cpu_share = _per(_cpu_s(client), res.seconds)
    res.client_cpu_us_per_op = _per(_cpu_s(client) * 1e6, n)
    _busy(res, busy)
    used = (res.server_cpu_share or 0.0) + (res.client_cpu_share or 0.0)
    cpus = set(PLACEMENTS[res.placement])
    res.other_cpu_share = max(0.0, sum(busy.get(c, 0.0) for c in cpus) - used)


def _busy(res: ClientRun, busy: dict[int, float]) -> None:
    res.cpu_busy = busy
    cpus = set(PLACEMENTS[res.placement])
    if busy:
        res.pinned_busy = sum(busy.get(c, 0.0) for c in cpus) / len(cpus)


def run_loadgen(ctx: Ctx, target: Target, conns: int, rep: int) -> ClientRun:
    """One run of our load generator, through `ustack bench`'s own run_one."""
    cfg = ctx.cfg
    res = ClientRun(target.name, conns, "loadgen", rep, cfg.placement, keys=cfg.keys)
    case = Case(
        "kv",
        f"kv-c{conns}-d1",
        "kv",
        "stream",
        "req",
        conns=conns,
        depth=1,
        size=cfg.value,
        processes=min(cfg.processes, conns),
    )
    r = run_one(ctx.bench, case, target, rep, cfg.server_cpu, cfg.client_cpu, cfg.placement)
    res.error = r.error
    res.server_ready = r.ready_line
    if not r.ok:
        return res
    d = derived(r)
    res.seconds = r.seconds
    res.ops = r.ops
    res.ops_per_s = r.ops_per_s
    res.errors, res.misses = r.errors, r.misses
    res.mean_us, res.max_us = r.mean_us, r.max_us
    res.p50_us, res.p90_us, res.p99_us = r.p50_us, r.p90_us, r.p99_us
    res.hist = r.hist
    h = Histogram.from_json(r.hist) if r.hist else Histogram()
    if h.count:
        res.min_us = h.min / 1e3
        res.log2_dist = hist_to_log2(h)
    res.server_cpu_share = d["server_cpu_share"]
    res.server_cpu_us_per_op = _per(r.server.get("utime_s", 0) + r.server.get("stime_s", 0), r.ops)
    if res.server_cpu_us_per_op is not None:
        res.server_cpu_us_per_op *= 1e6
    res.client_cpu_share = d["loadgen_cpu_share"]
    res.client_cpu_us_per_op = d["loadgen_cpu_us_per_op"]
    res.other_cpu_share = d["other_cpu_share"]
    _busy(res, r.cpu_busy)
    if r.counters_scope == "window" and "app_requests" in r.counters:
        res.server_requests = r.counters["app_requests"]
    if res.errors or res.misses:
        res.error = f"{res.errors} error replies and {res.misses} misses in the window"
    return res


def _headline(r: ClientRun) -> str:
    if not r.ok:
        return (r.error or "").splitlines()[0][:160]
    lat = f"avg {r.mean_us:7.1f} us" if r.mean_us is not None else ""
    if r.p50_us is not None:
        lat += f"  p50 {r.p50_us:7.1f} us  p99 {r.p99_us or 0:7.1f} us"
    else:
        p50 = log2_percentile(r.log2_dist, 0.5)
        if p50:
            lat += f"  p50 {p50[0]:.0f}-{p50[1]:.0f} us (whole run)"
    return (
        f"{r.ops_per_s:>9,.0f}/s  {lat}  server CPU {r.server_cpu_share or 0:.0%}"
        f"  {r.client} CPU {r.client_cpu_share or 0:.0%}"
    )


def run_logged(ctx: Ctx, client: str, target: Target, conns: int, rep: int) -> ClientRun:
    cfg = ctx.cfg
    ctx.done += 1
    for attempt in range(1, cfg.retries + 2):
        if client == "memaslap":
            r = run_memaslap(ctx, target, conns, rep)
        else:
            r = run_loadgen(ctx, target, conns, rep)
        r.attempts = attempt
        elapsed = time.monotonic() - ctx.t_start
        eta = elapsed / ctx.done * (ctx.total - ctx.done)
        progress(
            f"  [{ctx.done}/{ctx.total}, {elapsed:.0f} s, ~{eta:.0f} s left] run {rep + 1}/"
            f"{cfg.repeat} {target.name} c{conns} {client:8}: {_headline(r)}"
        )
        other = r.other_cpu_share if r.ok else None
        if other is None or other <= cfg.max_other:
            break
        progress(
            f"    other work took {other:.0%} of the pinned CPUs (> {cfg.max_other:.0%})"
            + ("; again" if attempt <= cfg.retries else "; keeping this run")
        )
    return r


def run_all(ctx: Ctx) -> list[ClientRun]:
    cfg = ctx.cfg
    targets = [with_kv_keys(BY_NAME[t], cfg.kv_keys) for t in cfg.targets]
    ctx.total = cfg.repeat * len(cfg.connections) * len(targets) * len(CLIENTS)
    ctx.t_start = time.monotonic()
    runs: list[ClientRun] = []
    for rep in range(cfg.repeat):
        for conns in cfg.connections:
            for ti, target in enumerate(targets):
                order = CLIENTS if (rep + ti) % 2 == 0 else CLIENTS[::-1]
                for client in order:
                    runs.append(run_logged(ctx, client, target, conns, rep))
    return runs


# -- summary and verdict --------------------------------------------------------------------

_MEDIANS = (
    "ops_per_s",
    "mean_us",
    "min_us",
    "max_us",
    "p50_us",
    "p90_us",
    "p99_us",
    "get_share",
    "server_cpu_share",
    "server_cpu_us_per_op",
    "client_cpu_share",
    "client_cpu_us_per_op",
    "other_cpu_share",
    "pinned_busy",
    "server_requests",
    "seconds",
    "ops",
)


@dataclass
class Summary:
    target: str
    conns: int
    client: str
    runs: int
    failed: int
    error: str | None
    m: dict[str, float | None] = field(default_factory=dict)
    spread: dict[str, tuple[float, float]] = field(default_factory=dict)
    log2_dist: dict[int, int] = field(default_factory=dict)  # summed over the runs
    p50_range_us: tuple[float, float] | None = None  # from log2_dist
    p99_range_us: tuple[float, float] | None = None
    client_ceiling: float | None = None  # 1e6 / client CPU per op
    errors: int = 0
    misses: int = 0
    keys: int = 0


def _median(xs: Sequence[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return statistics.median(vals) if vals else None


def summarize(cfg: KvConfig, runs: Sequence[ClientRun]) -> list[Summary]:
    out = []
    for conns in cfg.connections:
        for t in cfg.targets:
            for client in CLIENTS:
                mine = [r for r in runs if (r.target, r.conns, r.client) == (t, conns, client)]
                if not mine:
                    continue
                good = [r for r in mine if r.ok]
                s = Summary(
                    t,
                    conns,
                    client,
                    len(good),
                    len(mine) - len(good),
                    None if good else mine[0].error,
                    keys=mine[0].keys,
                )
                for k in _MEDIANS:
                    vals = [getattr(r, k) for r in good]
                    s.m[k] = _median(vals)
                    present = [float(v) for v in vals if v is not None]
                    if present:
                        s.spread[k] = (min(present), max(present))
                for r in good:
                    for b, n in r.log2_dist.items():
                        s.log2_dist[b] = s.log2_dist.get(b, 0) + n
                s.p50_range_us = log2_percentile(s.log2_dist, 0.5)
                s.p99_range_us = log2_percentile(s.log2_dist, 0.99)
                cpo = s.m.get("client_cpu_us_per_op")
                s.client_ceiling = 1e6 / cpo if cpo else None
                s.errors = sum(r.errors for r in good)
                s.misses = sum(r.misses for r in good)
                out.append(s)
    return out


@dataclass
class Agreement:
    target: str
    conns: int
    ratio_ops: float | None  # memaslap / ours
    ratio_mean_latency: float | None
    predicted_ratio: float | None  # from CPU per op, when one CPU did all the work
    agree: bool
    verdict: str


def agreement(cfg: KvConfig, summaries: Sequence[Summary]) -> list[Agreement]:
    by = {(s.target, s.conns, s.client): s for s in summaries}
    out = []
    same_cpu = cfg.server_cpu == cfg.client_cpu
    tol = cfg.tolerance
    for conns in cfg.connections:
        for t in cfg.targets:
            ms, lg = by.get((t, conns, "memaslap")), by.get((t, conns, "loadgen"))
            if ms is None or lg is None:
                continue
            if not ms.runs or not lg.runs:
                missing = [s for s in (ms, lg) if not s.runs]
                why = "; ".join(f"{s.client}: {s.error}" for s in missing)
                out.append(Agreement(t, conns, None, None, None, False, f"no comparison ({why})"))
                continue
            a, b = ms.m, lg.m
            ratio = (a["ops_per_s"] or 0.0) / (b["ops_per_s"] or 1.0)
            lat = _ratio(a.get("mean_us"), b.get("mean_us"))
            pred = None
            cost_a = _sum(a.get("client_cpu_us_per_op"), a.get("server_cpu_us_per_op"))
            cost_b = _sum(b.get("client_cpu_us_per_op"), b.get("server_cpu_us_per_op"))
            if same_cpu and cost_a and cost_b:
                pred = cost_b / cost_a
            if abs(ratio - 1.0) <= tol:
                verdict = f"agree: memaslap/ours {ratio:.2f}, within {tol:.0%}"
                other = max(a.get("other_cpu_share") or 0.0, b.get("other_cpu_share") or 0.0)
                if other > cfg.max_other:
                    verdict += f" (noisy: other work took up to {other:.0%} of the pinned CPUs)"
                out.append(Agreement(t, conns, ratio, lat, pred, True, verdict))
                continue
            verdict = f"differ: memaslap/ours {ratio:.2f} (beyond {tol:.0%}); " + _explain(
                cfg, a, b, ratio, pred, same_cpu
            )
            out.append(Agreement(t, conns, ratio, lat, pred, False, verdict))
    return out


def _sum(x: float | None, y: float | None) -> float | None:
    return x + y if x is not None and y is not None else None


def _ratio(x: float | None, y: float | None) -> float | None:
    return x / y if x is not None and y else None


def _explain(
    cfg: KvConfig,
    a: dict[str, float | None],
    b: dict[str, float | None],
    ratio: float,
    pred: float | None,
    same_cpu: bool,
) -> str:
    """Why the two clients' rates differ, as far as their CPU figures tell."""
    ca, cb = a.get("client_cpu_share") or 0.0, b.get("client_cpu_share") or 0.0
    sa, sb = a.get("server_cpu_share") or 0.0, b.get("server_cpu_share") or 0.0
    ua, ub = a.get("client_cpu_us_per_op"), b.get("client_cpu_us_per_op")
    oa, ob = a.get("other_cpu_share") or 0.0, b.get("other_cpu_share") or 0.0
    costs = (
        f"client CPU per op memaslap {_f(ua, '.1f')} us, ours {_f(ub, '.1f')} us;"
        f" server CPU per op {_f(a.get('server_cpu_us_per_op'), '.1f')} us under memaslap,"
        f" {_f(b.get('server_cpu_us_per_op'), '.1f')} us under ours"
    )
    noise = ""
    if max(oa, ob) > cfg.max_other:
        noise = (
            f"NOT CONCLUSIVE, other work took {oa:.0%} (memaslap's runs) and {ob:.0%} (ours)"
            " of the pinned CPUs; "
        )
    if same_cpu:
        pa, pb = a.get("pinned_busy") or 0.0, b.get("pinned_busy") or 0.0
        if pred is not None and min(pa, pb) >= SATURATED:
            fits = abs(pred / ratio - 1.0) <= cfg.tolerance
            return noise + (
                f"the one CPU was {pa:.0%} busy under memaslap and {pb:.0%} under ours"
                f" (client and server {ca + sa:.0%} and {cb + sb:.0%} of it), so the rate"
                f" follows 1 / (client + server CPU per op), which predicts {pred:.2f}"
                + (": explained by the clients' CPU cost" if fits else ": not the whole gap")
                + f"; {costs}"
            )
        return noise + (
            f"the one CPU was not saturated ({pa:.0%} busy under memaslap, {pb:.0%} under"
            f" ours): the rate is set by round trips, in which client and server take turns"
            + (f" (their CPU per op predicts {pred:.2f})" if pred is not None else "")
            + f"; {costs}"
        )
    slower, share = ("memaslap", ca) if ratio < 1.0 else ("ours", cb)
    if share >= SATURATED:
        return noise + f"{slower} saturates its CPU ({share:.0%}): the client is the limit; {costs}"
    if min(sa, sb) >= SATURATED:
        return noise + (
            f"the server is CPU-bound under both ({sa:.0%}, {sb:.0%}) and neither client is:"
            f" the gap is in what the server does per request; {costs}"
        )
    return noise + (
        f"neither client saturates its CPU (memaslap {ca:.0%}, ours {cb:.0%}; server"
        f" {sa:.0%} / {sb:.0%}): the rate is set by round trips; {costs}"
    )


# -- report -------------------------------------------------------------------------------


def _f(x: float | None, spec: str, dash: str = "-") -> str:
    return dash if x is None else format(x, spec)


def _range(r: tuple[float, float] | None) -> str:
    return "-" if r is None else f"{r[0]:.0f}-{r[1]:.0f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], right_from: int = 2) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)
    ]

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if i >= right_from else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *(fmt(r) for r in rows)])


def perf_table(summaries: Sequence[Summary], conns: int) -> str:
    header = [
        "target",
        "client",
        "ops/s",
        "avg us",
        "min us",
        "max us",
        "p50 us",
        "p99 us",
        "p50 log2",
        "p99 log2",
        "srv CPU",
        "srv us/op",
        "cli CPU",
        "cli us/op",
        "cli ceiling/s",
    ]
    rows = []
    for s in summaries:
        if s.conns != conns:
            continue
        if not s.runs:
            rows.append([s.target, s.client] + ["-"] * (len(header) - 2))
            continue
        m = s.m
        rows.append(
            [
                s.target,
                s.client,
                _f(m["ops_per_s"], ",.0f"),
                _f(m["mean_us"], ".1f"),
                _f(m["min_us"], ".0f"),
                _f(m["max_us"], ",.0f"),
                _f(m["p50_us"], ".1f"),
                _f(m["p99_us"], ".1f"),
                _range(s.p50_range_us),
                _range(s.p99_range_us),
                _f(m["server_cpu_share"], ".0%"),
                _f(m["server_cpu_us_per_op"], ".1f"),
                _f(m["client_cpu_share"], ".0%"),
                _f(m["client_cpu_us_per_op"], ".1f"),
                _f(s.client_ceiling, ",.0f"),
            ]
        )
    return _table(header, rows)


def write_report(
    w: IO[str], header: Sequence[str], summaries: Sequence[Summary], agree: Sequence[Agreement]
) -> None:
    for line in header:
        w.write(line + "\n")
    for conns in sorted({s.conns for s in summaries}):
        w.write(f"\n{conns} connection{'s' if conns > 1 else ''} (medians over the runs)\n\n")
        w.write(perf_table(summaries, conns) + "\n")
    w.write(
        "\nlatency: avg/min/max over the timed window from both clients; p50/p99 exact from"
        " ours only;\n'log2' columns: the range (us) of the log2 bucket holding p50/p99, from"
        " memaslap's histogram\n(whole run, warm-up included) and from ours binned the same"
        " way.  srv/cli CPU: share of one\nCPU over the window; us/op: CPU time per op;"
        " cli ceiling: 1e6 / cli us/op.\n"
    )
    w.write("\nAgreement (memaslap / ours)\n\n")
    rows = [
        [
            a.target,
            str(a.conns),
            _f(a.ratio_ops, ".2f"),
            _f(a.ratio_mean_latency, ".2f"),
            _f(a.predicted_ratio, ".2f"),
            "yes" if a.agree else "no",
        ]
        for a in agree
    ]
    w.write(_table(["target", "conns", "ops/s", "avg lat", "CPU predicts", "agree"], rows) + "\n\n")
    for a in agree:
        w.write(f"  {a.target} c{a.conns}: {a.verdict}\n")
    refused = sorted({(s.target, s.error) for s in summaries if not s.runs and s.error})
    if refused:
        w.write("\nWithout figures\n\n")
        for t, e in refused:
            w.write(f"  {t}: {e}\n")


def to_json(
    header: dict[str, Any],
    runs: Sequence[ClientRun],
    summaries: Sequence[Summary],
    agree: Sequence[Agreement],
) -> dict[str, Any]:
    def summ(s: Summary) -> dict[str, Any]:
        d = asdict(s)
        d["spread"] = {k: list(v) for k, v in s.spread.items()}
        d["log2_dist"] = {str(k): v for k, v in sorted(s.log2_dist.items())}
        return d

    def run(r: ClientRun) -> dict[str, Any]:
        d = asdict(r)
        d["log2_dist"] = {str(k): v for k, v in sorted(r.log2_dist.items())}
        return d

    return {
        **header,
        "summary": [summ(s) for s in summaries],
        "agreement": [asdict(a) for a in agree],
        "runs": [run(r) for r in runs],
    }


# -- command line -------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench_kv_clients.py",
        description="kv throughput and latency from memaslap and ustack's load generator",
    )
    p.add_argument(
        "--targets",
        type=lambda s: [x.strip() for x in s.split(",") if x.strip()],
        default=list(DEFAULT_TARGETS),
        help=f"kv targets of ustack bench (default: {','.join(DEFAULT_TARGETS)})",
    )
    p.add_argument("--connections", type=int_list, default=[1, 32], help="(1,32)")
    p.add_argument("--repeat", type=int, default=3, help="runs per target, connections, client (3)")
    p.add_argument("--seconds", type=int, default=5, help="timed window, whole seconds (5)")
    p.add_argument("--warmup", type=int, default=1, help="warm-up, whole seconds >= 1 (1)")
    p.add_argument("--placement", choices=sorted(PLACEMENTS), default="same-cpu")
    p.add_argument(
        "--kv-keys",
        choices=KV_KEY_MODES,
        default=KV_KEY_MODES[0],
        help="key mode of ustack's kv app (ustack serve kv --keys): memcached takes"
        " memaslap's binary keys, strict refuses them (memcached)",
    )
    p.add_argument("--quick", action="store_true", help="smoke run: 1 s + 1 s, one run each")
    p.add_argument("--keys", type=int, default=10000)
    p.add_argument("--value", type=int, default=1024, help="value bytes (1024)")
    p.add_argument("--get-ratio", type=float, default=0.9)
    p.add_argument("--threads", type=int, default=1, help="memaslap threads, -T (1)")
    p.add_argument("--processes", type=int, default=1, help="our load generator processes (1)")
    p.add_argument("--memaslap", default=MEMASLAP, help=f"memaslap binary ({MEMASLAP})")
    p.add_argument("--tolerance", type=float, default=0.15, help="agreement within (0.15)")
    p.add_argument("--max-other", type=float, default=0.25, help="re-run above this other work")
    p.add_argument("--retries", type=int, default=2, help="at most this many re-runs (2)")
    p.add_argument("--json", metavar="FILE", help="write every figure as JSON")
    p.add_argument("--name", default=None, help="topology to use (default: a private one)")
    return p.parse_args(argv)


def config_from(args: argparse.Namespace) -> KvConfig:
    if args.quick:
        for k, v in QUICK.items():
            setattr(args, k, v)
    bad = [t for t in args.targets if t not in BY_NAME or "kv" not in BY_NAME[t].apps]
    if bad:
        kv = [t.name for t in BY_NAME.values() if "kv" in t.apps]
        raise ValueError(f"not a kv target: {', '.join(bad)} (have {', '.join(kv)})")
    if args.seconds < 1 or args.warmup < 1 or args.repeat < 1:
        raise ValueError("--seconds and --warmup must be whole seconds >= 1, --repeat >= 1")
    if any(c < 1 or c % args.threads for c in args.connections):
        raise ValueError("every --connections must be >= 1 and a multiple of --threads")
    if not 0.0 < args.get_ratio < 1.0 or args.keys < 1 or not 1 <= args.value <= 1 << 20:
        raise ValueError("--get-ratio must be in (0, 1), --keys >= 1, --value 1..1048576")
    if not os.access(args.memaslap, os.X_OK):
        raise ValueError(f"{args.memaslap} is not installed (Debian: libmemcached-tools)")
    server_cpu, client_cpu = PLACEMENTS[args.placement]
    allowed = os.sched_getaffinity(0)
    for cpu in (server_cpu, client_cpu):
        if cpu not in allowed:
            raise ValueError(f"placement {args.placement} needs CPU {cpu} (have {sorted(allowed)})")
    return KvConfig(
        targets=list(args.targets),
        connections=list(args.connections),
        repeat=args.repeat,
        seconds=args.seconds,
        warmup=args.warmup,
        placement=args.placement,
        server_cpu=server_cpu,
        client_cpu=client_cpu,
        keys=args.keys,
        value=args.value,
        get_ratio=args.get_ratio,
        threads=args.threads,
        processes=args.processes,
        memaslap=args.memaslap,
        tolerance=args.tolerance,
        max_other=args.max_other,
        retries=args.retries,
        kv_keys=args.kv_keys,
    )


class _Terminated(Exception):
    pass


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = config_from(args)
    except ValueError as exc:
        print(f"bench_kv_clients: error: {exc}", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("bench_kv_clients: needs root (namespaces, TAP, pinning)", file=sys.stderr)
        return 1
    own = args.name is None
    topo = Topology(args.name or f"ustmc{os.getpid()}")
    if not own and not topo.exists():
        print(f"bench_kv_clients: topology {topo.name} is not up", file=sys.stderr)
        return 1
    command = "tools/bench_kv_clients.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)
    )
    main_pid = os.getpid()

    def on_term(signum: int, frame: FrameType | None) -> None:
        if os.getpid() != main_pid:  # a helper forked by pyroute2
            os._exit(128 + signum)
        raise _Terminated

    old = signal.signal(signal.SIGTERM, on_term)
    os.sched_setaffinity(0, {cfg.client_cpu})  # this process mostly waits
    bench_cfg = Config(
        placement=cfg.placement,
        server_cpu=cfg.server_cpu,
        client_cpu=cfg.client_cpu,
        seconds=float(cfg.seconds),
        warmup=float(cfg.warmup),
        repeat=cfg.repeat,
        scenarios=["kv"],
        targets=cfg.targets,
        connections=max(cfg.connections),
        depths=[1],
        processes=cfg.processes,
        kv_keys=cfg.keys,
        kv_value=cfg.value,
        kv_get_ratio=cfg.get_ratio,
        calibrate=False,
        retries=cfg.retries,
        max_other=cfg.max_other,
        cpus_available=len(os.sched_getaffinity(0)),
    )
    t0 = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="ustmc-") as workdir:
            if own:
                topo.up()
            try:
                progress(
                    f"bench_kv_clients: topology {topo.name}; placement {cfg.placement} (servers"
                    f" on CPU {cfg.server_cpu}, clients on CPU {cfg.client_cpu}); targets"
                    f" {', '.join(cfg.targets)}; connections"
                    f" {','.join(map(str, cfg.connections))}; {cfg.repeat} runs of"
                    f" {cfg.warmup} s warm-up + {cfg.seconds} s"
                )
                ctx = Ctx(topo, cfg, workdir, Bench(topo, bench_cfg, workdir, progress))
                runs = run_all(ctx)
            finally:
                if own:
                    topo.down()
    except (KeyboardInterrupt, _Terminated):
        progress("bench_kv_clients: interrupted; servers and clients stopped")
        return 130
    finally:
        signal.signal(signal.SIGTERM, old)
    elapsed = time.monotonic() - t0
    machine = machine_info()
    summaries = summarize(cfg, runs)
    agree = agreement(cfg, summaries)
    windows = ", ".join(
        f"{c} conn: {memaslap_window(cfg.keys, c) * c:,} keys" for c in cfg.connections
    )
    ours = [t for t in cfg.targets if serves_kv_app(BY_NAME[t])]
    header = [
        f"command: {command}",
        f"machine: {machine['cpus']} CPUs ({machine['cpu_model']}), kernel {machine['kernel']},"
        f" Python {machine['python']}",
        f"placement: {cfg.placement}: server on CPU {cfg.server_cpu}, client (memaslap or ours)"
        f" on CPU {cfg.client_cpu}",
        f"servers: ustack's kv app ({', '.join(ours) or 'none here'}) runs with"
        f" `ustack serve kv --keys {cfg.kv_keys}` for both clients"
        + (
            " (any byte but a space in a key, as memcached: memaslap's keys hold bytes 0x10-0x1f)"
            if cfg.kv_keys == "memcached"
            else " (control characters in keys refused: memaslap cannot run against it)"
        ),
        f"load: {cfg.get_ratio:.0%} get / {1 - cfg.get_ratio:.0%} set, {cfg.value} B values,"
        f" one request outstanding per connection; ours: {cfg.keys:,} keys of 10 B, all set"
        f" first; memaslap ({cfg.threads} thread): {KEY_LEN} B keys, its own windows ({windows})",
        f"runs: {cfg.repeat} per target, connections and client, alternating, {cfg.warmup} s"
        f" warm-up + {cfg.seconds} s timed, a fresh server each; {elapsed:.0f} s in all",
    ]
    print()
    write_report(sys.stdout, header, summaries, agree)
    if args.json:
        doc = to_json(
            {
                "command": command,
                "machine": machine,
                "config": asdict(cfg),
                "placement": {
                    "name": cfg.placement,
                    "server_cpu": cfg.server_cpu,
                    "client_cpu": cfg.client_cpu,
                },
                "seconds": elapsed,
            },
            runs,
            summaries,
            agree,
        )
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
