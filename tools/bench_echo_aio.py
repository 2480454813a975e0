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
import sys
import time
from collections.abc import Sequence
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (
    cpu_used,
    int_list,
    machine_info,
    progress,
    quiet_wait,
    readline,
    spawn,
    start_server,
    stop_child,
    unwind_on_sigterm,
)

from ustack import netns
from ustack.bench.targets import cpu_busy, cpu_times
from ustack.topology import Topology

PORT = 7007
SIZE = 64
SERVERS = ("ustack-busy", "ustack-interrupt", "ustack-hybrid", "kernel-uvloop", "kernel-asyncio")


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


def _self_argv(*args: str) -> list[str]:
    return [sys.executable, os.path.abspath(__file__), *args]


def _rounded(busy: dict[int, float]) -> dict[int, float]:
    return {c: round(v, 3) for c, v in busy.items()}


def bench_server(
    topo: Topology, kind: str, conns: Sequence[int], args: argparse.Namespace
) -> dict[str, Any]:
    target = topo.ustack_addr if kind.startswith("ustack") else topo.kernel_addr
    before = _rounded(quiet_wait(args.quiet_wait))
    progress(f"{kind}: machine cpu busy before start: {before}")
    server = start_server(
        kind,
        _self_argv("--server-role", kind, topo.name),
        args.server_cpu,
        topo=topo.name,
        addr=target,
        port=PORT,
        client_ns=topo.client_ns,
    )
    out: dict[str, Any] = {"server": kind, "runs": []}
    try:
        for c in conns:
            progress(f"{kind}: {c} connection(s)")
            client = spawn(
                _self_argv(
                    "--client-role", topo.name, target, str(c), str(args.warmup), str(args.seconds)
                ),
                args.client_cpu,
            )
            try:
                assert readline(client, 60, "client") == "window"
                c0 = server.sample()
                b0 = cpu_times()
                res = json.loads(readline(client, args.seconds + 60, "client"))
                used = cpu_used(c0, server.sample())
                res["machine_cpu_busy"] = _rounded(cpu_busy(b0, cpu_times()))
            finally:
                stop_child(client)
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
        c0 = server.sample()
        time.sleep(args.idle)
        out["idle_cpu_s"] = cpu_used(c0, server.sample())
        out["idle_seconds"] = args.idle
        idle_conn.close()
    finally:
        server.stop()
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
    unwind_on_sigterm()
    topo = Topology(f"ustbecho{os.getpid()}").up()
    results = []
    try:
        for kind in args.servers.split(","):
            results.append(bench_server(topo, kind, args.conns, args))
    except KeyboardInterrupt:
        progress("interrupted")
        return 130
    finally:
        topo.down()
    print(format_table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine_info(), "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
