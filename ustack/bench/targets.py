"""The servers `ustack bench` compares, and reading what they cost from /proc.

A Target is one line of TARGETS: a name, which side of the topology it
serves from (``ustack``: 198.18.0.2 on the TAP; ``kernel``: 198.19.0.2 in
netns N-k), which apps it has, and how to start it.  Every run gets a
fresh server on a fresh port, pinned (with everything it will ever start)
to the server CPU before exec.

What a server cost is read from /proc over the timed window, for the
server process and its descendants (workers):

    /proc/PID/stat       utime, stime (whole process, threads included)
    /proc/PID/task/*/    voluntary / involuntary context switches, summed
      status             over the threads
    /proc/PID/io         syscr, syscw: read-like and write-like syscalls.
                         Linux counts read/readv/write/writev (uvloop's
                         socket I/O, ustack's TAP reads and writes) but not
                         recv/send/recvfrom/sendto/recvmsg/sendmsg (the
                         default asyncio loop's sock.recv/sock.send) and no
                         epoll_wait.

A server that writes `--stats-json FILE` (the stack's counters, dev_*,
loop_*, app_*) gives its own counts of ring reads, writes and waits and of
its polling loop; if it also catches SIGUSR1 (seen in SigCgt of
/proc/PID/status) the file is asked for at both ends of the window and
the counters are taken as differences, otherwise over its whole life.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import IO, Any

from ustack import netns

APPS = ("echo", "discard", "kv")
_CLK_TCK = os.sysconf("SC_CLK_TCK")
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0


class TargetUnavailable(Exception):
    """The target could not serve (not installed, the app or a flag is missing)."""

    def __init__(self, message: str, output: str = "") -> None:
        super().__init__(message)
        self.output = output  # everything the server said


@dataclass(frozen=True)
class Launch:
    """What a target's command line is made of, for one run."""

    app: str
    topo: str  # topology name (netns N and N-k)
    kernel_ns: str
    addr: str  # the address the server listens on
    port: int
    stats_path: str


@dataclass(frozen=True)
class Target:
    name: str
    side: str  # "ustack" (198.18.0.2 on the TAP) or "kernel" (198.19.0.2 in N-k)
    apps: tuple[str, ...]
    argv: Callable[[Launch], list[str]]
    ready: str = "line"  # "line": prints a line with "ready"; "port": accepts connections
    in_kernel_ns: bool = False  # start it inside N-k (it does not enter a namespace itself)
    stats_json: bool = True  # writes --stats-json FILE
    note: str = ""


def _serve(stack: str, *flags: str) -> Callable[[Launch], list[str]]:
    """`ustack serve APP --stack STACK ... FLAGS`."""

    def argv(ln: Launch) -> list[str]:
        return [
            sys.executable,
            "-m",
            "ustack",
            "serve",
            ln.app,
            "--name",
            ln.topo,
            "--stack",
            stack,
            "--port",
            str(ln.port),
            "--stats-json",
            ln.stats_path,
            *flags,
        ]

    return argv


def _sink(loop: str) -> Callable[[Launch], list[str]]:
    def argv(ln: Launch) -> list[str]:
        return [
            sys.executable,
            "-m",
            "ustack.bench.loadgen",
            "sink",
            ln.app,
            "--ns",
            ln.kernel_ns,
            "--addr",
            ln.addr,
            "--port",
            str(ln.port),
            "--loop",
            loop,
            "--stats-json",
            ln.stats_path,
        ]

    return argv


def _memcached(ln: Launch) -> list[str]:
    # -t 1: one worker thread (the anchor's configuration); -U 0: no UDP.
    argv = ["memcached", "-u", "root", "-U", "0", "-t", "1", "-c", "4096", "-m", "64"]
    return [*argv, "-l", ln.addr, "-p", str(ln.port)]


# One line per target.  The order is the order of the runs and of the table.
TARGETS: tuple[Target, ...] = (
    Target("ustack-busy", "ustack", APPS, _serve("ustack", "--poll", "busy")),
    Target("ustack-interrupt", "ustack", APPS, _serve("ustack", "--poll", "interrupt")),
    Target("ustack-hybrid", "ustack", APPS, _serve("ustack", "--poll", "hybrid")),
    Target(
        "ustack-hybrid-offload",
        "ustack",
        APPS,
        _serve("ustack", "--poll", "hybrid", "--offload"),
        note="checksum offload and TSO/GRO on the TAP",
    ),
    Target("kernel-uvloop", "kernel", APPS, _serve("kernel", "--loop", "uvloop")),
    Target("kernel-asyncio", "kernel", APPS, _serve("kernel", "--loop", "asyncio")),
    Target(
        "memcached",
        "kernel",
        ("kv",),
        _memcached,
        ready="port",
        in_kernel_ns=True,
        stats_json=False,
        note="Debian's memcached -t 1",
    ),
    Target(
        "sink-uvloop",
        "kernel",
        APPS,
        _sink("uvloop"),
        note="the load generator's minimal kernel server (asyncio Protocol, uvloop)",
    ),
    Target(
        "sink-asyncio",
        "kernel",
        APPS,
        _sink("asyncio"),
        note="the same on the default asyncio loop",
    ),
)
BY_NAME: dict[str, Target] = {t.name: t for t in TARGETS}
BASELINES = ("kernel-uvloop", "sink-uvloop")  # the first one with figures is the baseline


def memcached_installed() -> bool:
    return any(
        os.access(os.path.join(d, "memcached"), os.X_OK)
        for d in os.environ.get("PATH", "/usr/bin:/bin").split(":")
    )


# -- /proc ------------------------------------------------------------------------------


@dataclass
class ProcSample:
    """Cumulative costs of a set of processes at one instant."""

    t: float = 0.0  # time.monotonic()
    utime_s: float = 0.0
    stime_s: float = 0.0
    vcsw: int = 0
    ivcsw: int = 0
    syscr: int = 0
    syscw: int = 0

    def minus(self, o: ProcSample) -> ProcSample:
        return ProcSample(
            self.t - o.t,
            self.utime_s - o.utime_s,
            self.stime_s - o.stime_s,
            self.vcsw - o.vcsw,
            self.ivcsw - o.ivcsw,
            self.syscr - o.syscr,
            self.syscw - o.syscw,
        )


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return ""


def children(pid: int) -> list[int]:
    """pid and all its descendants (a snapshot of /proc)."""
    kids: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        stat = _read(f"/proc/{name}/stat")
        if not stat:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(name))
    out = [pid]
    i = 0
    while i < len(out):
        out.extend(kids.get(out[i], []))
        i += 1
    return out


def sample(pids: list[int]) -> ProcSample:
    s = ProcSample(t=time.monotonic())
    for pid in pids:
        stat = _read(f"/proc/{pid}/stat")
        if not stat:
            continue
        f = stat.rsplit(")", 1)[1].split()
        s.utime_s += int(f[11]) / _CLK_TCK
        s.stime_s += int(f[12]) / _CLK_TCK
        for line in _read(f"/proc/{pid}/io").splitlines():
            k, _, v = line.partition(":")
            if k == "syscr":
                s.syscr += int(v)
            elif k == "syscw":
                s.syscw += int(v)
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except FileNotFoundError:
            continue
        for tid in tids:
            for line in _read(f"/proc/{pid}/task/{tid}/status").splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    s.vcsw += int(line.split()[1])
                elif line.startswith("nonvoluntary_ctxt_switches:"):
                    s.ivcsw += int(line.split()[1])
    return s


def catches_signal(pid: int, signum: int) -> bool:
    for line in _read(f"/proc/{pid}/status").splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return False


def cpu_times() -> dict[int, tuple[int, int]]:
    """Per CPU: (busy, total) jiffies from /proc/stat."""
    out = {}
    for line in _read("/proc/stat").splitlines():
        if line.startswith("cpu") and line[3].isdigit():
            name, *vals = line.split()
            v = [int(x) for x in vals[:8]]
            idle = v[3] + v[4]
            out[int(name[3:])] = (sum(v) - idle, sum(v))
    return out


def cpu_busy(
    a: Mapping[int, tuple[int, int]], b: Mapping[int, tuple[int, int]]
) -> dict[int, float]:
    """Busy share of each CPU between two cpu_times() samples."""
    return {c: (b[c][0] - a[c][0]) / max(1, b[c][1] - a[c][1]) for c in sorted(a) if c in b}


# -- a running server ---------------------------------------------------------------------


def _pin(cpu: int) -> Callable[[], None]:
    # Pinned before exec: every thread and process the server ever starts inherits it.
    return lambda: os.sched_setaffinity(0, {cpu})


def parse_counters(text: str) -> dict[str, float]:
    """The "    name    value" lines a server prints when it stops."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("    "):
            continue
        parts = line.split()
        if len(parts) == 2:
            with contextlib.suppress(ValueError):
                out[parts[0]] = float(parts[1])
    return out


@dataclass
class Stopped:
    output: str  # stdout + stderr
    returncode: int | None
    counters: dict[str, float] = field(default_factory=dict)  # whole life


class Server:
    """One target serving one app on one port, pinned to `cpu`."""

    def __init__(
        self, target: Target, launch: Launch, cpu: int, client_ns: str, stats_path: str
    ) -> None:
        self.target = target
        self.launch = launch
        self.client_ns = client_ns
        self.stats_path = stats_path
        argv = target.argv(launch)
        if target.in_kernel_ns:
            argv = ["nsenter", f"--net={netns.netns_path(launch.kernel_ns)}", "--", *argv]
        self.argv = argv
        with contextlib.suppress(FileNotFoundError):
            os.unlink(stats_path)
        try:
            self.proc: subprocess.Popen[str] = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                bufsize=1,
                preexec_fn=_pin(cpu),
            )
        except FileNotFoundError as exc:
            raise TargetUnavailable(f"{argv[0]}: not installed") from exc
        self.t_start = time.monotonic()
        self.life_s = 0.0
        self.pids: list[int] = [self.proc.pid]
        self.ready_line = ""
        self.said = ""  # stdout read while waiting for the ready line
        self.stopped: Stopped | None = None
        self.snapshots = False

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        try:
            if self.target.ready == "line":
                self._wait_line(timeout)
            else:
                self._wait_port(timeout)
        except TargetUnavailable:
            self.stop()
            raise
        self.pids = children(self.proc.pid)
        self.snapshots = self.target.stats_json and catches_signal(self.proc.pid, signal.SIGUSR1)

    def _fail(self, why: str) -> TargetUnavailable:
        st = self.stop()
        lines = [ln.strip() for ln in st.output.strip().splitlines() if ln.strip()]
        last = lines[-1] if lines else "(nothing)"
        return TargetUnavailable(f"{why} (exit {st.returncode}): {last}", st.output)

    def _wait_line(self, timeout: float) -> None:
        out = self.proc.stdout
        assert out is not None
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._fail(f"no ready line within {timeout:g} s")
            r, _, _ = select.select([out], [], [], min(left, 0.5))
            if not r:
                continue
            line = out.readline()
            if not line:
                raise self._fail("exited before it was ready")
            self.said += line
            if "ready" in line:
                self.ready_line = line.strip()
                return

    def _wait_port(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        addr = (self.launch.addr, self.launch.port)
        while True:
            if self.proc.poll() is not None:
                raise self._fail("exited before it was ready")
            with netns.inside(self.client_ns):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                s.settimeout(0.5)
                s.connect(addr)
                self.ready_line = f"accepting on {addr[0]} port {addr[1]}"
                return
            except OSError as exc:
                if time.monotonic() > deadline:
                    why = f"not accepting on port {addr[1]} within {timeout:g} s"
                    raise self._fail(why) from exc
                time.sleep(0.05)
            finally:
                s.close()

    def sample(self) -> ProcSample:
        return sample(self.pids)

    def stats_now(self, timeout: float = 2.0) -> dict[str, float] | None:
        """Ask for the counters file now (SIGUSR1); None if it does not come."""
        if not self.snapshots:
            return None
        try:
            before = os.stat(self.stats_path).st_mtime_ns
        except FileNotFoundError:
            before = 0
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if os.stat(self.stats_path).st_mtime_ns != before:
                    return read_stats(self.stats_path)
            except (FileNotFoundError, ValueError):
                pass
            time.sleep(0.002)
        return None

    def stop(self) -> Stopped:
        """SIGTERM (by PID), SIGKILL after STOP_TIMEOUT_S; output and final counters."""
        if self.stopped is not None:
            return self.stopped
        p = self.proc
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
        try:
            out, err = p.communicate(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
        self.life_s = time.monotonic() - self.t_start
        counters = parse_counters(out)
        if self.target.stats_json:
            with contextlib.suppress(FileNotFoundError, ValueError):
                counters.update(read_stats(self.stats_path))
        self.stopped = Stopped(self.said + out + err, p.returncode, counters)
        return self.stopped


def read_stats(path: str) -> dict[str, float]:
    with open(path) as f:
        doc = json.load(f)
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: not a JSON object")
    # `ustack serve` writes {"pid", "app", ..., "counters": {...}} (with
    # --workers the total under "counters"); a flat object is taken as is.
    counters = doc.get("counters")
    if isinstance(counters, dict):
        doc = counters
    out: dict[str, float] = {}
    for k, v in _flatten(doc).items():
        if isinstance(v, int | float) and not isinstance(v, bool):
            out[k] = float(v)
    return out


def _flatten(d: Mapping[str, object], prefix: str = "") -> dict[str, object]:
    """{"a": {"b": 1}} -> {"a_b": 1}; counters may come grouped or flat."""
    out: dict[str, object] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}_"))
        else:
            out[f"{prefix}{k}"] = v
    return out


# -- load generator processes ------------------------------------------------------------


class Workers:
    """The load generator's processes for one run (python -m ustack.bench.loadgen worker)."""

    def __init__(self, specs: list[dict[str, object]], cpu: int) -> None:
        self.procs: list[subprocess.Popen[str]] = []
        try:
            for spec in specs:
                self.procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "ustack.bench.loadgen", "worker", json.dumps(spec)],
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE,
                        text=True,
                        bufsize=1,
                        preexec_fn=_pin(cpu),
                    )
                )
        except BaseException:
            self.end()
            raise

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def _line(self, p: subprocess.Popen[str], deadline: float) -> str:
        out: IO[str] | None = p.stdout
        assert out is not None
        while True:
            left = deadline - time.monotonic()
            r, _, _ = select.select([out], [], [], max(0.0, min(left, 0.5)))
            if r:
                line = out.readline()
                if line:
                    return line.strip()
                p.wait(timeout=5)
                err = p.stderr.read() if p.stderr else ""
                tail = "\n".join(err.strip().splitlines()[-8:])
                raise RuntimeError(f"load generator {p.pid} exited {p.returncode}: {tail}")
            if left <= 0:
                raise RuntimeError(f"load generator {p.pid} said nothing in time")

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for p in self.procs:
            line = self._line(p, deadline)
            if line != "ready":
                raise RuntimeError(f"load generator {p.pid}: {line}")

    def go(self, t_timed_ns: int, t_end_ns: int) -> None:
        for p in self.procs:
            assert p.stdin is not None
            p.stdin.write(f"{t_timed_ns} {t_end_ns}\n")
            p.stdin.flush()

    def results(self, timeout: float) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        out = []
        for p in self.procs:
            doc = json.loads(self._line(p, deadline))
            if "fatal" in doc:
                raise RuntimeError(f"load generator {p.pid}: {doc['fatal']}")
            out.append(doc)
        return out

    def end(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.communicate()
