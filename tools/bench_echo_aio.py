"""TCP echo of 64-byte messages: ustack.aio in each polling mode vs kernel sockets.

Servers (one at a time, each a child process pinned to --server-cpu):

- ``ustack-busy``, ``ustack-interrupt``, ``ustack-hybrid``: an asyncio echo
  protocol on `ustack.aio.new_event_loop(poll=...)`, at 198.18.0.2 on the TAP;
- ``kernel-uvloop``, ``kernel-asyncio``: the same protocol on kernel sockets
  in netns N-k (198.19.0.2, one veth hop from the client), with uvloop and
  with asyncio's default loop.

The client (a child pinned to --client-cpu, in netns N) keeps C
connections with one 64-byte request outstanding on each (closed loop,
epoll, TCP_NODELAY) and records every round trip in the timed window.
Figures per server and C: requests/s, p50/p99 latency, server CPU seconds
per 1000 requests (utime+stime of the server process over the window);
then each server's CPU over --idle seconds with one connection open and
no traffic.

    python tools/bench_echo_aio.py [--conns 1,64] [--seconds 5] [--idle 10] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import int_list, machine_info, progress

from ustack import netns
from ustack.topology import Topology

PORT = 7007
SIZE = 64
SERVERS = ("ustack-busy", "ustack-interrupt", "ustack-hybrid", "kernel-uvloop", "kernel-asyncio")
_CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- server child -------------------------------------------------------------------


class Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t: Any = transport

    def data_received(self, data: bytes) -> None:
        self.t.write(data)


def server_main(kind: str, topo_name: str) -> int:
    async def serve(host: str) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        server = await loop.create_server(Echo, host, PORT, backlog=1024)
        print("ready", flush=True)
        await stop.wait()
        server.close()

    if kind.startswith("ustack-"):
        import ustack.aio

        ustack.aio.run(serve("198.18.0.2"), name=topo_name, poll=kind.split("-", 1)[1])
    else:
        netns.enter(f"{topo_name}-k")
        if kind == "kernel-uvloop":
            import uvloop

            uvloop.run(serve("198.19.0.2"))
        else:
            asyncio.run(serve("198.19.0.2"))
    return 0


# -- client child -------------------------------------------------------------------


def client_main(topo_name: str, target: str, conns: int, warmup: float, seconds: float) -> int:
    netns.enter(topo_name)
    socks = []
    for _ in range(conns):
        s = socket.create_connection((target, PORT), timeout=10)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        socks.append(s)
    ep = select.epoll()
    by_fd = {s.fileno(): s for s in socks}
    for fd in by_fd:
        ep.register(fd, select.EPOLLIN)
    msg = b"m" * SIZE
    perf = time.perf_counter_ns
    sent_at = dict.fromkeys(by_fd, 0)
    pending = dict.fromkeys(by_fd, 0)
    rtts: list[int] = []
    now = perf()
    for fd, s in by_fd.items():
        sent_at[fd] = now
        s.send(msg)
    t_start = now + int(warmup * 1e9)
    t_end = t_start + int(seconds * 1e9)
    announced = False
    while True:
        now = perf()
        if now >= t_end:
            break
        if not announced and now >= t_start:
            print("window", flush=True)
            announced = True
        for fd, _ in ep.poll(0.5):
            s = by_fd[fd]
            got = len(s.recv(65536))
            if not got:
                raise SystemExit("server closed a connection")
            pending[fd] += got
            while pending[fd] >= SIZE:
                pending[fd] -= SIZE
                t = perf()
                if t_start <= sent_at[fd] and t < t_end:
                    rtts.append(t - sent_at[fd])
                sent_at[fd] = t
                s.send(msg)
    rtts.sort()
    print(
        json.dumps(
            {
                "requests": len(rtts),
                "seconds": seconds,
                "p50_us": rtts[len(rtts) // 2] / 1000 if rtts else None,
                "p99_us": rtts[int(len(rtts) * 0.99)] / 1000 if rtts else None,
            }
        ),
        flush=True,
    )
    for s in socks:
        s.close()
    return 0


# -- orchestration ------------------------------------------------------------------


def _child(args: list[str], cpu: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
        preexec_fn=lambda: os.sched_setaffinity(0, {cpu}),
    )


def _line(proc: subprocess.Popen[str], timeout: float, what: str) -> str:
    assert proc.stdout is not None
    r, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if r else ""
    if not line:
        err = proc.stderr.read() if proc.poll() is not None and proc.stderr else ""
        raise RuntimeError(f"{what} said nothing (exit {proc.poll()}): {err}")
    return line.strip()


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()


def cpu_busy_sample() -> dict[int, tuple[int, int]]:
    """Per CPU: (busy, total) jiffies from /proc/stat."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                name, *vals = line.split()
                v = [int(x) for x in vals[:8]]
                out[int(name[3:])] = (sum(v) - v[3] - v[4], sum(v))
    return out


def cpu_busy(a: dict[int, tuple[int, int]], b: dict[int, tuple[int, int]]) -> dict[int, float]:
    return {c: round((b[c][0] - a[c][0]) / max(1, b[c][1] - a[c][1]), 3) for c in a if c in b}


def quiet_wait(limit: float) -> dict[int, float]:
    """Wait (up to `limit` s) for a second in which every CPU is under 10% busy."""
    deadline = time.monotonic() + limit
    while True:
        b0 = cpu_busy_sample()
        time.sleep(1.0)
        busy = cpu_busy(b0, cpu_busy_sample())
        if all(v < 0.10 for v in busy.values()) or time.monotonic() >= deadline:
            return busy


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def bench_server(
    topo: Topology, kind: str, conns: Sequence[int], args: argparse.Namespace
) -> dict[str, Any]:
    target = "198.18.0.2" if kind.startswith("ustack") else "198.19.0.2"
    before = quiet_wait(args.quiet_wait)
    progress(f"{kind}: machine cpu busy before start: {before}")
    server = _child(["--server-role", kind, topo.name], args.server_cpu)
    out: dict[str, Any] = {"server": kind, "runs": []}
    try:
        _line(server, 30, f"{kind} server")
        for c in conns:
            progress(f"{kind}: {c} connection(s)")
            client = _child(
                ["--client-role", topo.name, target, str(c), str(args.warmup), str(args.seconds)],
                args.client_cpu,
            )
            try:
                assert _line(client, 60, "client") == "window"
                c0 = cpu_s(server.pid)
                b0 = cpu_busy_sample()
                res = json.loads(_line(client, args.seconds + 60, "client"))
                used = cpu_s(server.pid) - c0
                res["machine_cpu_busy"] = cpu_busy(b0, cpu_busy_sample())
            finally:
                _stop(client)
            res["conns"] = c
            res["rps"] = res["requests"] / res["seconds"]
            res["server_cpu_s_per_1000"] = (
                used / (res["requests"] / 1000) if res["requests"] else None
            )
            res["server_cpu_share"] = used / res["seconds"]
            out["runs"].append(res)
        progress(f"{kind}: idle {args.idle} s with one connection open")
        with netns.inside(topo.client_ns):
            idle_conn = socket.create_connection((target, PORT), timeout=10)
        time.sleep(1.0)
        c0 = cpu_s(server.pid)
        time.sleep(args.idle)
        out["idle_cpu_s"] = cpu_s(server.pid) - c0
        out["idle_seconds"] = args.idle
        idle_conn.close()
    finally:
        _stop(server)
    return out


def format_table(results: Sequence[dict[str, Any]]) -> str:
    lines = [
        f"{'server':18} {'conns':>5} {'req/s':>9} {'p50 us':>8} {'p99 us':>8} "
        f"{'cpu s/1k req':>12} {'srv cpu':>7}  machine busy per cpu"
    ]
    for r in results:
        for run in r["runs"]:
            lines.append(
                f"{r['server']:18} {run['conns']:>5} {run['rps']:>9.0f} {run['p50_us']:>8.1f} "
                f"{run['p99_us']:>8.1f} {run['server_cpu_s_per_1000']:>12.4f} "
                f"{run['server_cpu_share']:>7.0%}  {run['machine_cpu_busy']}"
            )
    lines.append("")
    lines.append(f"{'server':18} idle CPU (s over the idle window, one connection open)")
    for r in results:
        lines.append(f"{r['server']:18} {r['idle_cpu_s']:.2f} / {r['idle_seconds']:.0f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--server-role":
        return server_main(argv[1], argv[2])
    if argv and argv[0] == "--client-role":
        return client_main(argv[1], argv[2], int(argv[3]), float(argv[4]), float(argv[5]))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--conns", type=int_list, default=[1, 64])
    p.add_argument("--servers", default=",".join(SERVERS))
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--idle", type=float, default=10.0)
    p.add_argument("--server-cpu", type=int, default=0)
    p.add_argument("--client-cpu", type=int, default=1)
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=60.0,
        help="wait this long at most for idle CPUs before each run",
    )
    p.add_argument("--json", help="write the results here too")
    args = p.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the children stop and the topology goes.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    topo = Topology(f"ustbecho{os.getpid()}").up()
    results = []
    try:
        for kind in args.servers.split(","):
            results.append(bench_server(topo, kind, args.conns, args))
    finally:
        topo.down()
    print(format_table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine_info(), "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
