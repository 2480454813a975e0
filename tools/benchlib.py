"""Small helpers shared by the benchmark scripts in tools/.

The /proc readings (per-process CPU, per-CPU busy time) and the server
process wrapper are `ustack.bench.targets`'; this module adds what the
scripts need around them: pinned child processes that talk in lines,
waiting for an idle machine, and unwinding on SIGTERM.
"""

from __future__ import annotations

import os
import platform
import select
import signal
import subprocess
import sys
import time
from types import FrameType
from typing import Any

from ustack.bench.targets import Launch, ProcSample, Server, Target, cpu_busy, cpu_times

CHILD_STOP_TIMEOUT_S = 20.0  # SIGTERM, then SIGKILL


def progress(msg: str) -> None:
    """A progress line on stderr, so that long runs never look hung."""
    print(msg, file=sys.stderr, flush=True)


def int_list(text: str) -> list[int]:
    """'1,8,32' -> [1, 8, 32] (for argparse)."""
    return [int(x) for x in text.split(",") if x.strip()]


def str_list(text: str) -> list[str]:
    """'a, b,,c' -> ['a', 'b', 'c'] (for argparse)."""
    return [x.strip() for x in text.split(",") if x.strip()]


def machine_info() -> dict[str, Any]:
    """What a reader needs to know about the machine a figure came from."""
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def machine_line(machine: dict[str, Any]) -> str:
    """machine_info() as the one line a report starts with."""
    return (
        f"machine: {machine['cpus']} CPUs ({machine['cpu_model']}), kernel {machine['kernel']},"
        f" Python {machine['python']}"
    )


# -- child processes -------------------------------------------------------------------


def pin(cpu: int) -> None:
    """Pin the calling process (and all it will start) to one CPU."""
    os.sched_setaffinity(0, {cpu})


def spawn(
    argv: list[str], cpu: int, *, stdin: bool = False, stderr: bool = True
) -> subprocess.Popen[str]:
    """A child that talks in lines on stdout, pinned to `cpu` before exec.

    With `stdin` its standard input is a pipe (else /dev/null); without
    `stderr` what it says there goes straight to ours (else into a pipe).
    """
    return subprocess.Popen(
        argv,
        stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE if stderr else None,
        text=True,
        bufsize=1,
        preexec_fn=lambda: pin(cpu),
    )


def readline(proc: subprocess.Popen[str], timeout: float, what: str) -> str:
    """The child's next line on stdout, stripped; RuntimeError if none comes in time."""
    assert proc.stdout is not None
    r, _, _ = select.select([proc.stdout], [], [], max(0.0, timeout))
    line = proc.stdout.readline() if r else ""
    if not line:
        err = ""
        if proc.poll() is not None and proc.stderr is not None:
            err = proc.stderr.read()
        raise RuntimeError(f"{what} (pid {proc.pid}) said nothing; exit {proc.poll()}: {err}")
    return line.strip()


def stop_child(proc: subprocess.Popen[str]) -> tuple[str, str]:
    """SIGTERM this child (by PID) if it still runs, SIGKILL if it hangs; its last output."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        out, err = proc.communicate(timeout=CHILD_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return out or "", err or ""


def start_server(
    name: str, argv: list[str], cpu: int, *, topo: str, addr: str, port: int, client_ns: str
) -> Server:
    """A server process of the script's own, pinned to `cpu`, once it printed its ready line.

    `argv` must print a line with "ready" when it serves; it writes no
    stats file (the counters it prints when it stops are in `stop().counters`).
    """
    target = Target(name, "ustack", (), lambda _ln: argv, stats_json=False)
    # No stats file: the empty path is never opened, and unlinking it fails quietly.
    launch = Launch("", topo, f"{topo}-k", addr, port, stats_path="")
    server = Server(target, launch, cpu, client_ns, stats_path="")
    server.wait_ready()
    return server


def cpu_used(a: ProcSample, b: ProcSample) -> float:
    """CPU time (user + system, s) used between two samples of the same processes."""
    return (b.utime_s - a.utime_s) + (b.stime_s - a.stime_s)


# -- the machine -----------------------------------------------------------------------


def quiet_wait(limit: float) -> dict[int, float]:
    """Per-CPU busy share over one second, waiting up to `limit` s for one under 10% on all."""
    deadline = time.monotonic() + limit
    while True:
        b0 = cpu_times()
        time.sleep(1.0)
        busy = cpu_busy(b0, cpu_times())
        if all(b < 0.10 for b in busy.values()) or time.monotonic() >= deadline:
            return busy


_MAIN_PID = os.getpid()


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    # pyroute2 forks helpers that inherit this handler; only the benchmark
    # process itself unwinds (and so removes its topology).
    if os.getpid() != _MAIN_PID:
        os._exit(128 + signum)
    raise KeyboardInterrupt


def unwind_on_sigterm() -> None:
    """Make SIGTERM unwind this process like Ctrl-C, so children stop and topologies go."""
    signal.signal(signal.SIGTERM, _on_sigterm)
