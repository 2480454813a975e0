"""Echo of 64-byte messages over TCP on the native API: ustack poll modes vs the kernel.

One server program, two socket layers.  The server is an epoll loop
written once against a socket module and an epoll object:

    ustack   ustack.socket + ustack.api.epoll.Epoll, on the TAP of netns N
             (198.18.0.2), once per poll mode (busy, interrupt, hybrid);
    kernel   Python's socket + select.epoll in netns N-k (198.19.0.2),
             the baseline.

The client (a kernel program in netns N, one hop from either server) opens
C connections, sets TCP_NODELAY, and keeps one 64-byte message in flight
per connection: the echo of a message releases the next.  Every round
trip is timed (time.perf_counter_ns from the send to the recv that
completes the echo; with C > 1 that includes waiting in the client's epoll
loop, as an application's latency would), so p50/p99 are latencies at
every C.  Each (target, C) runs in a fresh server process, with a warm-up
before the timed window.  The server's CPU (user + system, from /proc)
over the window is reported per 1,000 echoed messages and as a share of
one CPU.  `--idle S` adds one more run per target: one connection open
and no traffic for S seconds, and the server's CPU over them.

CPU placement is explicit: `cross-cpu` (default) pins the server to CPU 0
and the client to CPU 1, `same-cpu` pins both to CPU 0.  The server's CPU
time over the timed window is shown as a share of one CPU.

Everything runs in a private topology that is removed on exit; only the
child processes started here are ended, by PID.

    sudo .venv/bin/python tools/bench_echo_native.py [--conns 1,64] [--seconds 3]
        [--warmup 0.5] [--targets kernel,busy,interrupt,hybrid]
        [--placement cross-cpu|same-cpu] [--idle 10] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from types import FrameType, ModuleType
from typing import Any

from benchlib import (
    cpu_used,
    int_list,
    machine_info,
    pin,
    progress,
    readline,
    spawn,
    start_server,
    stop_child,
    unwind_on_sigterm,
)

from ustack import netns
from ustack.bench.targets import Server
from ustack.topology import Topology

PORT = 5300
SIZE = 64
TARGETS = ("kernel", "busy", "interrupt", "hybrid")
PLACEMENTS = {"cross-cpu": (0, 1), "same-cpu": (0, 0)}


# -- the server (child process) ------------------------------------------------


class KernelEpoll:
    """select.epoll speaking in socket objects, like ustack's Epoll."""

    def __init__(self) -> None:
        self.ep = select.epoll()
        self.socks: dict[int, socket.socket] = {}

    def register(self, sock: socket.socket, mask: int) -> None:
        self.socks[sock.fileno()] = sock
        self.ep.register(sock.fileno(), mask)

    def unregister(self, sock: socket.socket) -> None:
        self.ep.unregister(sock.fileno())
        del self.socks[sock.fileno()]

    def poll(self, timeout: float) -> list[tuple[socket.socket, int]]:
        return [(self.socks[fd], m) for fd, m in self.ep.poll(timeout)]


def echo_server(mod: ModuleType, ep: Any, addr: str, stopping: list[bool]) -> int:
    """The server: accept, then echo whatever arrives; the same code for both stacks."""
    srv = mod.create_server((addr, PORT), backlog=256)
    srv.setblocking(False)
    ep.register(srv, select.EPOLLIN)
    print("ready", flush=True)
    echoed = 0
    while not stopping[0]:
        for sock, _mask in ep.poll(0.2):
            if sock is srv:
                while True:
                    try:
                        conn, _ = srv.accept()
                    except BlockingIOError:
                        break
                    conn.setblocking(False)
                    conn.setsockopt(mod.IPPROTO_TCP, mod.TCP_NODELAY, 1)
                    ep.register(conn, select.EPOLLIN)
                continue
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if data:
                sock.send(data)  # 64 bytes always fit the send buffer
                echoed += 1
            else:
                ep.unregister(sock)
                sock.close()
    return echoed


def server_main(target: str, topo_name: str, cpu: int) -> int:
    pin(cpu)
    stopping = [False]

    def stop(signum: int, frame: FrameType | None) -> None:
        stopping[0] = True

    signal.signal(signal.SIGTERM, stop)
    topo = Topology(topo_name)
    if target == "kernel":
        netns.enter(topo.kernel_ns)
        echoed = echo_server(socket, KernelEpoll(), topo.kernel_addr, stopping)
        print(json.dumps({"echoed": echoed}), flush=True)
        return 0
    import ustack
    import ustack.socket as usock
    from ustack.api.context import close_current, current
    from ustack.api.epoll import Epoll

    ustack.configure(name=topo_name, poll=target)
    echoed = echo_server(usock, Epoll(), "", stopping)
    stats = {**current().stats(), "echoed": echoed}
    close_current(drain_timeout=0)
    print(json.dumps(stats), flush=True)
    return 0


# -- the client (child process in netns N) --------------------------------------


def client_main(spec_text: str) -> int:
    spec = json.loads(spec_text)
    pin(spec["cpu"])
    netns.enter(spec["ns"])
    conns = []
    for _ in range(spec["conns"]):
        s = socket.create_connection((spec["dst"], PORT), timeout=10)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conns.append(s)
    msg = bytes(SIZE)
    perf = time.perf_counter_ns
    out: dict[str, Any] = {}
    if len(conns) == 1:
        s = conns[0]
        for timed, duration in ((False, spec["warmup"]), (True, spec["seconds"])):
            rtts: list[int] = []
            cpu0 = time.process_time()
            t_start = perf()
            end = t_start + int(duration * 1e9)
            while True:
                t0 = perf()
                if t0 >= end:
                    break
                s.sendall(msg)
                got = 0
                while got < SIZE:
                    got += len(s.recv(SIZE - got))
                rtts.append(perf() - t0)
            if timed:
                out = {
                    "messages": len(rtts),
                    "elapsed_ns": perf() - t_start,
                    "client_cpu_s": time.process_time() - cpu0,
                    "rtts_ns": sorted(rtts),
                }
    else:
        ep = select.epoll()
        by_fd = {}
        pending: dict[int, int] = {}  # bytes of the current reply received, per fd
        sent: dict[int, int] = {}  # when the message in flight was sent, per fd
        for s in conns:
            s.setblocking(False)
            by_fd[s.fileno()] = s
            pending[s.fileno()] = 0
            ep.register(s.fileno(), select.EPOLLIN)
            sent[s.fileno()] = perf()
            s.send(msg)
        for timed, duration in ((False, spec["warmup"]), (True, spec["seconds"])):
            rtts = []
            cpu0 = time.process_time()
            t_start = perf()
            end = t_start + int(duration * 1e9)
            while perf() < end:
                for fd, _m in ep.poll(1.0):
                    sock = by_fd[fd]
                    got = pending[fd] + len(sock.recv(65536))
                    if got >= SIZE:  # one message in flight: at most one echo completes
                        t = perf()
                        rtts.append(t - sent[fd])
                        got -= SIZE
                        sent[fd] = t
                        sock.send(msg)
                    pending[fd] = got
            if timed:
                out = {
                    "messages": len(rtts),
                    "elapsed_ns": perf() - t_start,
                    "client_cpu_s": time.process_time() - cpu0,
                    "rtts_ns": sorted(rtts),
                }
    for s in conns:
        s.close()
    print(json.dumps(out), flush=True)
    return 0


# -- the parent ---------------------------------------------------------------------


def _self_argv(*args: str) -> list[str]:
    return [sys.executable, os.path.abspath(__file__), *args]


def _serve(topo: Topology, target: str, cpu: int) -> tuple[str, Server]:
    """A fresh echo server of `target` pinned to `cpu`, serving; (its address, it)."""
    dst = topo.kernel_addr if target == "kernel" else topo.ustack_addr
    argv = _self_argv("--server-role", target, topo.name, str(cpu))
    server = start_server(
        target, argv, cpu, topo=topo.name, addr=dst, port=PORT, client_ns=topo.client_ns
    )
    return dst, server


def run_one(topo: Topology, target: str, conns: int, args: argparse.Namespace) -> dict[str, Any]:
    server_cpu, client_cpu = PLACEMENTS[args.placement]
    dst, server = _serve(topo, target, server_cpu)
    spec = {
        "ns": topo.client_ns,
        "dst": dst,
        "conns": conns,
        "cpu": client_cpu,
        "warmup": args.warmup,
        "seconds": args.seconds,
    }
    client: subprocess.Popen[str] | None = None
    try:
        client = spawn(_self_argv("--client-role", json.dumps(spec)), client_cpu)
        # Server CPU over (about) the timed window: from the end of the warm-up.
        time.sleep(args.warmup + 0.5)
        s0 = server.sample()
        res = json.loads(readline(client, args.warmup + args.seconds + 60, "client"))
        s1 = server.sample()
        client.wait(10)
    finally:
        if client is not None:
            stop_child(client)
        said = server.stop().output
    stats: dict[str, Any] = {}
    for line in said.splitlines():
        if line.startswith("{"):
            stats = json.loads(line)
    seconds = res["elapsed_ns"] / 1e9
    server_cpu_s = cpu_used(s0, s1)
    row: dict[str, Any] = {
        "target": target,
        "conns": conns,
        "messages": res["messages"],
        "msgs_per_s": res["messages"] / seconds,
        "server_cpu": server_cpu_s / max(s1.t - s0.t, 1e-9),
        # The /proc window is the client's timed window give or take a few ms.
        "server_cpu_ms_per_1k": 1e6
        * server_cpu_s
        / max(s1.t - s0.t, 1e-9)
        * seconds
        / max(res["messages"], 1),
        "client_cpu": res["client_cpu_s"] / seconds,
        "loop_frames_per_burst": stats.get("loop_frames_per_burst"),
        "loop_sleeps": stats.get("loop_sleeps"),
    }
    rtts = res.get("rtts_ns")
    if rtts:
        row["p50_us"] = rtts[len(rtts) // 2] / 1000
        row["p99_us"] = rtts[min(len(rtts) - 1, int(len(rtts) * 0.99))] / 1000
    return row


def run_idle(topo: Topology, target: str, args: argparse.Namespace) -> dict[str, Any]:
    """One connection open, no traffic for args.idle seconds: the server's CPU over them."""
    server_cpu, _ = PLACEMENTS[args.placement]
    dst, server = _serve(topo, target, server_cpu)
    try:
        with netns.inside(topo.client_ns):
            conn = socket.create_connection((dst, PORT), timeout=10)
        try:
            conn.sendall(bytes(SIZE))  # one echo, so the server has accepted and served it
            got = 0
            while got < SIZE:
                got += len(conn.recv(SIZE))
            time.sleep(0.5)
            s0 = server.sample()
            time.sleep(args.idle)
            s1 = server.sample()
        finally:
            conn.close()
    finally:
        server.stop()
    return {
        "target": target,
        "idle_s": s1.t - s0.t,
        "server_cpu_s": cpu_used(s0, s1),
        "server_vcsw": s1.vcsw - s0.vcsw,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--server-role", nargs=3, metavar=("TARGET", "TOPO", "CPU"))
    p.add_argument("--client-role", metavar="SPEC")
    p.add_argument("--conns", type=int_list, default=[1, 64])
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--warmup", type=float, default=0.5)
    p.add_argument("--targets", default=",".join(TARGETS))
    p.add_argument("--placement", choices=sorted(PLACEMENTS), default="cross-cpu")
    p.add_argument("--idle", type=float, default=0.0, help="idle run of S seconds (0: none)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.server_role:
        target, topo_name, cpu = args.server_role
        return server_main(target, topo_name, int(cpu))
    if args.client_role:
        return client_main(args.client_role)
    targets = [t for t in args.targets.split(",") if t]
    for t in targets:
        if t not in TARGETS:
            p.error(f"unknown target {t!r}")
    unwind_on_sigterm()
    topo = Topology(f"ustbench{os.getpid()}").up()
    rows = []
    idles = []
    try:
        for conns in args.conns:
            for target in targets:
                progress(f"{target}, {conns} connection(s) ...")
                rows.append(run_one(topo, target, conns, args))
        if args.idle > 0:
            for target in targets:
                progress(f"{target}, idle for {args.idle:g} s ...")
                idles.append(run_idle(topo, target, args))
    except KeyboardInterrupt:
        progress("interrupted")
        return 130
    finally:
        topo.down()
    print(f"machine: {machine_info()}; placement {args.placement}; {SIZE}-byte messages")
    print(
        f"{'target':10} {'conns':>5} {'msgs/s':>10} {'p50 us':>8} {'p99 us':>8} "
        f"{'server CPU':>10} {'CPU s/1k':>9} {'client CPU':>10} {'frames/burst':>12}"
    )
    for r in rows:
        p50 = f"{r['p50_us']:.1f}" if "p50_us" in r else "-"
        p99 = f"{r['p99_us']:.1f}" if "p99_us" in r else "-"
        fpb = r["loop_frames_per_burst"]
        print(
            f"{r['target']:10} {r['conns']:>5} {r['msgs_per_s']:>10.0f} {p50:>8} {p99:>8} "
            f"{r['server_cpu']:>10.2f} {r['server_cpu_ms_per_1k'] / 1000:>9.4f} "
            f"{r['client_cpu']:>10.2f} {fpb if fpb is not None else '-':>12}"
        )
    for i in idles:
        print(
            f"idle {i['target']:10} server CPU {i['server_cpu_s']:.2f} s over {i['idle_s']:.1f} s"
            f" ({i['server_vcsw']} voluntary context switches)"
        )
    if args.json:
        doc = {"machine": machine_info(), "placement": args.placement, "rows": rows, "idle": idles}
        with open(args.json, "w") as f:
            json.dump(doc, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
