"""Bulk TCP transfer over one connection: ustack (with and without offloads) vs the kernel.

Two directions, three paths, one run:

    rx   the "server" side receives: a kernel sender in netns N sends
         --bytes to a sink on the server side, which reads to EOF;
    tx   the server side sends --bytes to a kernel sink in netns N.

    kernel    the server side is a kernel socket in netns N-k (198.19.0.2),
              one veth hop from N (198.19.0.1): the baseline;
    ustack    the server side is ustack on the TAP (198.18.0.2), in a
              process of its own (this script's --role), a Ring without
              virtio-net headers: MSS-sized frames, checksums in Python's C
              helper, one frame per segment each way;
    ustack+o  the same with the Ring opened with vnet_hdr=True and
              offloads=OFFLOAD_CSUM|OFFLOAD_TSO4: the kernel hands ustack
              GRO superframes and takes TSO segments and partial checksums.

The server side (ustack, or the N-k kernel process) is pinned to CPU 0
and the kernel peer in N to CPU 1 (`cross-cpu`), or both to CPU 0
(`same-cpu`).  Each process works from one preallocated 1 MB buffer: the
sender sends it again and again (no data generation in the timed path),
the receiver reads into one (no hashing); the byte count is checked.

Figures: Gbit/s is bytes * 8 / the receiver's time from its first byte to
EOF.  "server CPU" is the CPU time (user + system) of the server-side
process over its transfer, in seconds and as a share of the wall time; for
ustack that process runs the whole stack (the kernel's own TAP work done
in its system calls included), for the kernel baseline it is a plain socket
loop and most of the TCP work runs in softirq, charged to no process; the
peer's CPU time is shown too, and the machine's interrupt and softirq
time (with IRQ time accounting, the kernel's network work not charged to
a process).  The machine may be shared: "foreign" is the CPU time of all
other processes during the transfer, and a transfer in which it exceeds
--max-foreign of the wall time is run again.  For ustack: TCP segments
in and out (a TSO segment or a GRO superframe counts as one) and the
frames per receive burst.

Everything runs in a private topology that is removed on exit, also on
Ctrl-C; only child processes started here are ended, by PID.

    sudo .venv/bin/python tools/bench_bulk.py [--bytes 1G] [--quick]
        [--paths kernel,ustack,ustack+o] [--directions rx,tx]
        [--placement cross-cpu|same-cpu] [--poll busy|interrupt|hybrid]
        [--quiet-wait SECONDS] [--repeat N] [--max-foreign 0.1] [--retries 3]
        [--json FILE]
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import IO, Any

from benchlib import (
    machine_info,
    machine_line,
    progress,
    quiet_wait,
    readline,
    spawn,
    stop_child,
    str_list,
    unwind_on_sigterm,
)

from ustack import netns
from ustack.topology import Topology

PORT = 5001
BUF = 1 << 20
PATHS = ("kernel", "ustack", "ustack+o")
DIRECTIONS = ("rx", "tx")
PLACEMENTS = {"same-cpu": (0, 0), "cross-cpu": (0, 1)}  # (server CPU, peer CPU)
READY_TIMEOUT_S = 30.0
PROGRESS_EVERY_S = 2.0
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def parse_size(text: str) -> int:
    """'1G' -> 1_000_000_000, '100M', '64K', or plain bytes (decimal units, as Gbit/s)."""
    units = {"K": 10**3, "M": 10**6, "G": 10**9}
    t = text.strip().upper().rstrip("B")
    if t and t[-1] in units:
        return int(float(t[:-1]) * units[t[-1]])
    return int(t)


def _cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def _emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


class _Progress:
    """A line on stderr every PROGRESS_EVERY_S while bytes move."""

    def __init__(self, label: str, total: int) -> None:
        self.label = label
        self.total = total
        self.t0 = time.monotonic()
        self.next = self.t0 + PROGRESS_EVERY_S

    def tick(self, done: int) -> None:
        now = time.monotonic()
        if now >= self.next:
            self.next = now + PROGRESS_EVERY_S
            rate = done * 8 / (now - self.t0) / 1e9
            progress(
                f"    {self.label}: {done / 1e6:,.0f} of {self.total / 1e6:,.0f} MB,"
                f" {rate:.2f} Gbit/s so far"
            )


# -- kernel roles (child processes in a namespace) ------------------------------------------


def kernel_sink(ns: str, addr: str, port: int, total: int) -> dict[str, Any]:
    netns.enter(ns)
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((addr, port))
    ls.listen(1)
    print("ready", flush=True)
    conn, _ = ls.accept()
    buf = bytearray(BUF)
    got = 0
    pr = _Progress("kernel sink", total)
    n = conn.recv_into(buf)
    t0 = time.monotonic()
    c0 = _cpu_s()
    while n:
        got += n
        pr.tick(got)
        n = conn.recv_into(buf)
    t1 = time.monotonic()
    cpu = _cpu_s() - c0
    conn.close()
    ls.close()
    return {"bytes": got, "seconds": t1 - t0, "cpu_s": cpu}


def kernel_source(ns: str, dst: str, port: int, total: int) -> dict[str, Any]:
    netns.enter(ns)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    print("ready", flush=True)
    s.connect((dst, port))
    view = memoryview(bytes(BUF))
    sent = 0
    t0 = time.monotonic()
    c0 = _cpu_s()
    while sent < total:
        sent += s.send(view[: min(BUF, total - sent)])
    s.shutdown(socket.SHUT_WR)
    while s.recv(65536):
        pass  # until the receiver closes: everything was delivered
    cpu = _cpu_s() - c0
    t1 = time.monotonic()
    s.close()
    return {"bytes": sent, "seconds": t1 - t0, "cpu_s": cpu}


# -- ustack roles (child process; the Ring is opened in the topology's namespace) -------------


def _ustack_context(name: str, offload: bool, poll: str) -> Any:
    from ustack.runtime import open_context

    ctx = open_context(name=name, offload=offload, poll=poll)
    ctx.start()
    return ctx


def _ustack_report(ctx: Any, conn: Any) -> dict[str, Any]:
    st = ctx.stack.stats()
    cs = conn.stats()
    loop = ctx.stats()
    return {
        "tcp_in_segs": st.get("tcp_in_segs", 0),
        "tcp_out_segs": st.get("tcp_out_segs", 0),
        "frames_per_burst": loop["loop_frames_per_burst"],
        "retransmits": cs["retransmits"],
        "smss": cs["smss"],
        "state": cs["state"],
        "drops": {k: v for k, v in st.items() if k.startswith("drop_") and v},
    }


def ustack_sink(name: str, port: int, total: int, offload: bool, poll: str) -> dict[str, Any]:
    ctx = _ustack_context(name, offload, poll)
    listener = ctx.stack.tcp.listen(port)
    print("ready", flush=True)
    if not ctx.wait_until(lambda: listener.ready > 0, 60):
        raise RuntimeError("no connection came")
    conn = listener.accept()
    buf = bytearray(BUF)
    got = 0
    t0 = 0.0
    c0 = 0.0
    pr = _Progress("ustack sink", total)

    def drained() -> bool:
        nonlocal got, t0, c0
        while n := conn.recv_into(buf):
            if not got:
                t0 = time.monotonic()
                c0 = _cpu_s()
            got += n
        pr.tick(got)
        return bool(conn.eof or conn.error is not None)

    ctx.wait_until(drained, None)
    t1 = time.monotonic()
    cpu = _cpu_s() - c0
    if conn.error is not None:
        raise RuntimeError(f"connection failed: {os.strerror(conn.error)}")
    conn.close()
    ctx.wait_until(lambda: conn.state.name == "CLOSED", 10)
    return {"bytes": got, "seconds": t1 - t0, "cpu_s": cpu, **_ustack_report(ctx, conn)}


def ustack_source(
    name: str, dst: str, port: int, total: int, offload: bool, poll: str
) -> dict[str, Any]:
    from ustack.wire.ipv4 import ip_from_str

    ctx = _ustack_context(name, offload, poll)
    print("ready", flush=True)
    # The kernel sink listens already (the parent started it first).
    conn = ctx.stack.tcp.connect(ip_from_str(dst), port)
    if not ctx.wait_until(lambda: conn.state.name != "SYN_SENT", 10):
        raise RuntimeError("connect timed out")
    view = memoryview(bytes(BUF))
    sent = 0
    pr = _Progress("ustack source", total)
    t0 = time.monotonic()
    c0 = _cpu_s()

    def pump() -> bool:
        nonlocal sent
        if conn.error is not None:
            return True
        while sent < total:
            n = conn.send(view[: min(BUF, total - sent)])
            if not n:
                break
            sent += n
        pr.tick(sent)
        return sent >= total

    ctx.wait_until(pump, None)
    conn.close()  # FIN after the data
    ctx.wait_until(lambda: conn.error is not None or conn.state.name in ("TIME_WAIT", "CLOSED"), 60)
    cpu = _cpu_s() - c0
    t1 = time.monotonic()
    if conn.error is not None:
        raise RuntimeError(f"connection failed: {os.strerror(conn.error)}")
    return {"bytes": sent, "seconds": t1 - t0, "cpu_s": cpu, **_ustack_report(ctx, conn)}


def role_main(spec: str) -> int:
    p = json.loads(spec)
    kind = p["kind"]
    if kind == "kernel-sink":
        out = kernel_sink(p["ns"], p["addr"], p["port"], p["bytes"])
    elif kind == "kernel-source":
        out = kernel_source(p["ns"], p["dst"], p["port"], p["bytes"])
    elif kind == "ustack-sink":
        out = ustack_sink(p["name"], p["port"], p["bytes"], p["offload"], p["poll"])
    elif kind == "ustack-source":
        out = ustack_source(p["name"], p["dst"], p["port"], p["bytes"], p["offload"], p["poll"])
    else:
        raise ValueError(f"unknown role {kind!r}")
    _emit(out)
    return 0


# -- processes ---------------------------------------------------------------------------------


def _popen(spec: dict[str, Any], cpu: int) -> subprocess.Popen[str]:
    # Progress goes straight to our stderr.
    argv = [sys.executable, os.path.abspath(__file__), "--role", json.dumps(spec)]
    return spawn(argv, cpu, stderr=False)


def cpu_split_sample() -> tuple[int, int]:
    """Whole machine: (user + nice + system, irq + softirq) jiffies from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return v[0] + v[1] + v[2], v[5] + v[6]


def split_cpu_s(a: tuple[int, int], b: tuple[int, int]) -> tuple[float, float]:
    """(process CPU s, interrupt CPU s) of the whole machine between two samples."""
    return (b[0] - a[0]) / _CLK_TCK, (b[1] - a[1]) / _CLK_TCK


# -- runs ---------------------------------------------------------------------------------------


@dataclass
class Result:
    direction: str
    path: str
    bytes: int
    seconds: float
    gbit_s: float
    server_cpu_s: float
    peer_cpu_s: float
    wall_s: float
    process_cpu_s: float  # user + system time of every process on the machine
    softirq_s: float  # interrupt and softirq time of the machine (kernel network work)
    tcp_in_segs: int | None = None
    tcp_out_segs: int | None = None
    frames_per_burst: float | None = None
    retransmits: int | None = None
    smss: int | None = None
    drops: dict[str, int] = field(default_factory=dict)
    runs: int = 1
    gbit_s_min: float = 0.0
    gbit_s_max: float = 0.0

    @property
    def server_cpu_share(self) -> float:
        return self.server_cpu_s / self.seconds if self.seconds else 0.0

    @property
    def foreign_cpu_s(self) -> float:
        """Process CPU time that neither transfer process used: other load on the machine."""
        return max(0.0, self.process_cpu_s - self.server_cpu_s - self.peer_cpu_s)


@dataclass
class Config:
    bytes: int
    paths: list[str]
    directions: list[str]
    placement: str
    server_cpu: int
    peer_cpu: int
    poll: str
    quiet_wait: float
    repeat: int
    max_foreign: float
    retries: int


def specs(
    topo: Topology, cfg: Config, direction: str, path: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(receiver's role spec, sender's role spec) of one transfer."""
    n = cfg.bytes
    recv: dict[str, Any]
    send: dict[str, Any]
    if path == "kernel":
        server_ns, server_addr = topo.kernel_ns, topo.kernel_addr
        peer_addr = topo.veth_client_addr
        if direction == "rx":
            recv = {"kind": "kernel-sink", "ns": server_ns, "addr": server_addr}
            send = {"kind": "kernel-source", "ns": topo.client_ns, "dst": server_addr}
        else:
            recv = {"kind": "kernel-sink", "ns": topo.client_ns, "addr": peer_addr}
            send = {"kind": "kernel-source", "ns": server_ns, "dst": peer_addr}
    else:
        offload = path == "ustack+o"
        us: dict[str, Any] = {"name": topo.name, "offload": offload, "poll": cfg.poll}
        if direction == "rx":
            recv = {"kind": "ustack-sink", **us}
            send = {"kind": "kernel-source", "ns": topo.client_ns, "dst": topo.ustack_addr}
        else:
            recv = {"kind": "kernel-sink", "ns": topo.client_ns, "addr": topo.client_addr}
            send = {"kind": "ustack-source", "dst": topo.client_addr, **us}
    for s in (recv, send):
        s.update(port=PORT, bytes=n)
    return recv, send


def run_one(topo: Topology, cfg: Config, direction: str, path: str) -> Result:
    recv_spec, send_spec = specs(topo, cfg, direction, path)
    # The receiver is the server side in rx, the sender in tx.
    recv_cpu, send_cpu = (
        (cfg.server_cpu, cfg.peer_cpu) if direction == "rx" else (cfg.peer_cpu, cfg.server_cpu)
    )
    limit = 60 + cfg.bytes / 5e6  # slower than 40 Mbit/s is a failure
    procs: list[subprocess.Popen[str]] = []
    try:
        recv = _popen(recv_spec, recv_cpu)
        procs.append(recv)
        if readline(recv, READY_TIMEOUT_S, "receiver") != "ready":
            raise RuntimeError("receiver did not get ready")
        send = _popen(send_spec, send_cpu)
        procs.append(send)
        if readline(send, READY_TIMEOUT_S, "sender") != "ready":
            raise RuntimeError("sender did not get ready")
        # From here on both processes only transfer (and connect).
        b0 = cpu_split_sample()
        t0 = time.monotonic()
        r = json.loads(readline(recv, limit, "receiver"))
        s = json.loads(readline(send, 60, "sender"))
        wall = time.monotonic() - t0
        b1 = cpu_split_sample()
        for p in procs:
            p.wait(timeout=20)
    finally:
        for p in procs:
            stop_child(p)
    if r["bytes"] != cfg.bytes or s["bytes"] != cfg.bytes:
        raise RuntimeError(f"{direction} {path}: sent {s['bytes']}, received {r['bytes']}")
    server, peer = (r, s) if direction == "rx" else (s, r)
    us = server if path != "kernel" else {}
    return Result(
        direction=direction,
        path=path,
        bytes=r["bytes"],
        seconds=r["seconds"],
        gbit_s=r["bytes"] * 8 / r["seconds"] / 1e9,
        server_cpu_s=server["cpu_s"],
        peer_cpu_s=peer["cpu_s"],
        wall_s=wall,
        process_cpu_s=split_cpu_s(b0, b1)[0],
        softirq_s=split_cpu_s(b0, b1)[1],
        tcp_in_segs=us.get("tcp_in_segs"),
        tcp_out_segs=us.get("tcp_out_segs"),
        frames_per_burst=us.get("frames_per_burst"),
        retransmits=us.get("retransmits"),
        smss=us.get("smss"),
        drops=us.get("drops", {}),
    )


def run_all(topo: Topology, cfg: Config) -> tuple[list[Result], list[Result]]:
    """(the median run of each transfer, every run); transfers interleave across repeats."""
    every: list[Result] = []
    for k in range(cfg.repeat):
        for direction in cfg.directions:
            for path in cfg.paths:
                if cfg.quiet_wait > 0:
                    busiest = max(quiet_wait(cfg.quiet_wait).values())
                    if busiest >= 0.10:
                        progress(f"  warning: the machine is not idle (a CPU {busiest:.0%} busy)")
                label = f"{direction} {path}" + (f" (run {k + 1})" if cfg.repeat > 1 else "")
                progress(f"  {label}: {cfg.bytes / 1e6:,.0f} MB")
                for attempt in range(cfg.retries + 1):
                    res = run_one(topo, cfg, direction, path)
                    limit = cfg.max_foreign * res.wall_s
                    if res.foreign_cpu_s <= limit:
                        break
                    progress(
                        f"  {label}: {res.foreign_cpu_s:.2f} CPU s went to other processes"
                        f" (> {limit:.2f})"
                        + ("; again" if attempt < cfg.retries else "; keeping it")
                    )
                segs = ""
                if res.tcp_in_segs is not None:
                    segs = f"  segs in {res.tcp_in_segs:,} out {res.tcp_out_segs:,}"
                progress(
                    f"  {label}: {res.gbit_s:.2f} Gbit/s in {res.seconds:.2f} s,"
                    f" server CPU {res.server_cpu_s:.2f} s ({res.server_cpu_share:.0%}){segs}"
                )
                every.append(res)
    medians = []
    for direction in cfg.directions:
        for path in cfg.paths:
            runs = sorted(
                (r for r in every if (r.direction, r.path) == (direction, path)),
                key=lambda r: r.gbit_s,
            )
            m = replace(runs[(len(runs) - 1) // 2])
            m.runs = len(runs)
            m.gbit_s_min = runs[0].gbit_s
            m.gbit_s_max = runs[-1].gbit_s
            medians.append(m)
    return medians, every


# -- reporting -----------------------------------------------------------------------------------


def _f(x: float | int | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def format_table(results: Sequence[Result]) -> str:
    lines = [
        "| dir | server   | Gbit/s |    range    |  seconds | server CPU s | server CPU "
        "| peer CPU s | softirq s | foreign s |  segs in | segs out | bytes/seg "
        "| frames/burst | retrans |",
        "|-----|----------|-------:|:-----------:|---------:|-------------:|-----------:"
        "|-----------:|----------:|----------:|---------:|---------:|----------:"
        "|-------------:|--------:|",
    ]
    for r in results:
        data_segs = r.tcp_in_segs if r.direction == "rx" else r.tcp_out_segs
        per_seg = r.bytes / data_segs if data_segs else None
        spread = f"{r.gbit_s_min:.2f}-{r.gbit_s_max:.2f}" if r.runs > 1 else "-"
        lines.append(
            f"| {r.direction:<3} | {r.path:<8} | {r.gbit_s:>6.2f} | {spread:^11} "
            f"| {r.seconds:>8.2f} | {r.server_cpu_s:>12.2f} | {r.server_cpu_share:>10.0%} "
            f"| {r.peer_cpu_s:>10.2f} | {r.softirq_s:>9.2f} | {r.foreign_cpu_s:>9.2f} "
            f"| {_f(r.tcp_in_segs, ',d'):>8} "
            f"| {_f(r.tcp_out_segs, ',d'):>8} | {_f(per_seg, ',.0f'):>9} "
            f"| {_f(r.frames_per_burst, '.2f'):>12} | {_f(r.retransmits, 'd'):>7} |"
        )
    return "\n".join(lines)


def ratios(results: Sequence[Result]) -> list[str]:
    by = {(r.direction, r.path): r for r in results}
    out = []
    for r in results:
        k = by.get((r.direction, "kernel"))
        if r.path == "kernel" or k is None:
            continue
        out.append(
            f"{r.direction} {r.path:<8} {r.gbit_s / k.gbit_s:.2f}x the kernel's throughput;"
            f" {r.server_cpu_s / (r.bytes / 1e9):.2f} CPU s per GB in the ustack process"
        )
    return out


def report(
    out: IO[str], command: str, machine: dict[str, Any], cfg: Config, results: Sequence[Result]
) -> None:
    w = out.write
    w(f"command: {command}\n")
    w(machine_line(machine) + "\n")
    w(
        f"placement: {cfg.placement}: server side on CPU {cfg.server_cpu}, kernel peer on CPU"
        f" {cfg.peer_cpu}; ustack poll mode {cfg.poll}; {cfg.bytes:,} bytes per transfer\n\n"
    )
    w(format_table(results) + "\n\n")
    w(
        "dir rx: the server side receives from a kernel sender in N; tx: it sends to a kernel\n"
        "sink in N.  server: kernel = a kernel socket in N-k over the veth; ustack = the TAP\n"
        "without offloads; ustack+o = with checksum offload and TSO/GRO.  Gbit/s: the\n"
        "receiver's first byte to EOF.  server CPU: CPU time of the server-side process over\n"
        "its transfer (ustack: the whole stack; kernel: only the socket loop, the TCP work\n"
        "runs in softirq).  softirq s: the machine's interrupt and softirq time (the kernel's\n"
        "network work not charged to a process).  foreign s: CPU time of other processes\n"
        f"(a transfer is run again, up to {cfg.retries} times, when it exceeds"
        f" {cfg.max_foreign:.0%} of the\n"
        "wall time).  segs in/out: ustack's TCP segments (a TSO segment or GRO superframe\n"
        "counts once); bytes/seg: payload bytes per data segment.  With --repeat, each row\n"
        "is the median run by Gbit/s (the lower middle one for an even count), and range\n"
        "gives the slowest and fastest run.\n\n"
    )
    for line in ratios(results):
        w(line + "\n")


# -- main ----------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="Bulk TCP transfer: ustack vs the kernel.")
    ap.add_argument("--bytes", type=parse_size, default=10**9, help="per transfer (1G)")
    ap.add_argument("--quick", action="store_true", help="100 MB per transfer")
    ap.add_argument("--paths", type=str_list, default=list(PATHS), help="kernel,ustack,ustack+o")
    ap.add_argument("--directions", type=str_list, default=list(DIRECTIONS), help="rx,tx")
    ap.add_argument("--placement", choices=sorted(PLACEMENTS), default="cross-cpu")
    ap.add_argument("--poll", choices=("busy", "interrupt", "hybrid"), default="hybrid")
    ap.add_argument(
        "--quiet-wait",
        type=float,
        default=0.0,
        help="before each transfer, wait up to this many seconds for an idle machine (0)",
    )
    ap.add_argument("--repeat", type=int, default=1, help="run every transfer this many times (1)")
    ap.add_argument(
        "--max-foreign",
        type=float,
        default=0.1,
        help="run a transfer again when other processes used more than this share of a"
        " CPU during it (0.1)",
    )
    ap.add_argument("--retries", type=int, default=3, help="at most this many re-runs (3)")
    ap.add_argument("--json", metavar="FILE", help="also write every figure as JSON")
    ap.add_argument("--role", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.role:
        return role_main(args.role)
    if args.quick:
        args.bytes = 100 * 10**6
    for name, got, allowed in (
        ("path", args.paths, PATHS),
        ("direction", args.directions, DIRECTIONS),
    ):
        for x in got:
            if x not in allowed:
                print(f"error: unknown {name} {x!r} (have {', '.join(allowed)})", file=sys.stderr)
                return 2
    if args.repeat < 1:
        print("error: --repeat must be at least 1", file=sys.stderr)
        return 2
    if args.bytes < 1:
        print("error: --bytes must be positive", file=sys.stderr)
        return 2
    server_cpu, peer_cpu = PLACEMENTS[args.placement]
    for cpu in (server_cpu, peer_cpu):
        if cpu not in os.sched_getaffinity(0):
            print(f"error: CPU {cpu} is not available", file=sys.stderr)
            return 2
    cfg = Config(
        args.bytes,
        args.paths,
        args.directions,
        args.placement,
        server_cpu,
        peer_cpu,
        args.poll,
        args.quiet_wait,
        args.repeat,
        args.max_foreign,
        args.retries,
    )
    command = " ".join(["python", *sys.argv])
    unwind_on_sigterm()
    topo = Topology(f"ustbb{os.getpid()}")
    try:
        topo.up()
        progress(f"topology {topo.name} up; placement {cfg.placement}")
        results, every = run_all(topo, cfg)
    except KeyboardInterrupt:
        progress("interrupted")
        return 130
    finally:
        topo.down()
    machine = machine_info()
    print()
    report(sys.stdout, command, machine, cfg, results)
    if args.json:
        doc = {
            "command": command,
            "machine": machine,
            "config": asdict(cfg),
            "results": [
                {
                    **asdict(r),
                    "server_cpu_share": r.server_cpu_share,
                    "foreign_cpu_s": r.foreign_cpu_s,
                }
                for r in results
            ],
            "every_run": [asdict(r) for r in every],
        }
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:
        sys.exit(errno.EPIPE)
