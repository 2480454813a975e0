"""Ping-pong latency (ICMP echo, UDP echo) and UDP echo rate: ustack vs the kernel.

One client, one run, two kinds of server:

    ustack   `python -m ustack serve udp-echo --poll MODE` on the TAP of
             netns N (198.18.0.2), once per poll mode (busy, interrupt,
             hybrid); the same process answers ICMP echo.
    kernel   the baseline in netns N-k (198.19.0.2): a UDP echo server on
             kernel sockets (asyncio DatagramProtocol under uvloop, the
             --kernel-server-role of this script); ICMP echo is answered by
             the kernel itself.

The client (the --client-role of this script) runs in netns N and takes the
same path length to both: one TAP hop to ustack, one veth hop to the
kernel.  Tests, each with a fresh server process:

    icmp       ping-pong of ICMP echo (56 B payload, like ping) on a raw
               socket, one request outstanding;
    udp-SIZE   ping-pong of UDP datagrams of SIZE payload bytes (64, 1024),
               one request outstanding;
    rate-xK    K client processes, each keeping --window datagrams of
               --rate-size bytes in flight (a reply releases the next
               request); echoed datagrams per second.

Every request/reply time is taken with time.perf_counter_ns around
send/recv, so a figure includes the client's own Python and syscall cost,
the same for both targets.  Percentiles are nearest-rank over every sample
of the timed window (after a warm-up in the same test).

CPU placement is explicit and printed: `same-cpu` pins server and client(s)
to CPU 0, `cross-cpu` pins the server to CPU 0 and the client(s) to CPU 1.
An idle vCPU halts and a wake-up across CPUs costs tens of microseconds
each way, so only compare figures of the same placement.  For each timed
window the table shows the CPU time the server and the client(s) used (as
a share of one CPU) so that the bottleneck can be seen, and for ustack
the stack's own counters (frames per receive burst, sleeps per request).

The machine may be shared: the busy time of the pinned CPUs that neither
the server nor the clients used is shown too ("other CPU"), and a test in
which it exceeds --max-other is run again (--retries times at most).
--quiet-wait first waits for an idle machine.

Everything runs in a private topology (ustack.topology) that is removed on
exit, also on Ctrl-C; only child processes started here are ended, by PID.

    sudo .venv/bin/python tools/bench_udp.py [--placement same-cpu|cross-cpu]
        [--seconds 3] [--warmup 0.5] [--window 32] [--rate-clients 1,2]
        [--targets kernel,busy,interrupt,hybrid] [--tests icmp,udp,rate]
        [--max-other 0.25] [--retries 2] [--quiet-wait 0] [--json FILE] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import gc
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import IO, Any, cast

from benchlib import (
    cpu_used,
    int_list,
    machine_info,
    machine_line,
    pin,
    progress,
    quiet_wait,
    readline,
    spawn,
    start_server,
    stop_child,
    str_list,
    unwind_on_sigterm,
)

from ustack import netns
from ustack.bench.targets import Server, cpu_busy, cpu_times
from ustack.topology import Topology
from ustack.wire.checksum import checksum

UDP_PORT = 7  # echo (RFC 862)
LATENCY_SIZES = (64, 1024)
ICMP_PAYLOAD = 56  # ping's default: a 64-byte ICMP message
RATE_SIZE = 64
RATE_WINDOW = 32
RATE_CLIENTS = (1, 2)
USTACK_MODES = ("busy", "interrupt", "hybrid")
TARGETS = ("kernel", *USTACK_MODES)
PLACEMENTS = {"same-cpu": (0, 0), "cross-cpu": (0, 1)}  # (server CPU, client CPU)
RECV_TIMEOUT_S = 0.2  # a reply later than this counts as lost
CLOCK_EVERY = 64  # rate loop iterations between two reads of the clock
READY_TIMEOUT_S = 30.0
ICMP_ECHO_REQUEST = 8
ICMP_ECHO_REPLY = 0

_SEQ = struct.Struct("!Q")
_ICMP = struct.Struct("!BBHHH")


def _set_rcvtimeo(sock: socket.socket, seconds: float) -> None:
    # A kernel receive timeout keeps the socket blocking (one recv syscall
    # per reply); on expiry recv raises BlockingIOError.
    sec = int(seconds)
    usec = int((seconds - sec) * 1e6)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", sec, usec))


# -- the kernel baseline server (child process in netns N-k) -----------------


class _Echo(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.echoed = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDPTransport does not inherit from asyncio.DatagramTransport.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(data, addr)
        self.echoed += 1


def kernel_server_main(namespace: str, addr: str, port: int) -> int:
    """Child: UDP echo on kernel sockets at addr:port in `namespace` until SIGTERM."""
    import uvloop

    netns.enter(namespace)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((addr, port))
    sock.setblocking(False)

    async def run() -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for s in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(s, stop.set)
        transport, proto = await loop.create_datagram_endpoint(_Echo, sock=sock)
        print(
            f"kernel udp-echo ready on {addr} port {port} (uvloop, netns {namespace})", flush=True
        )
        await stop.wait()
        transport.close()
        return proto.echoed

    echoed = uvloop.run(run())
    print(f"kernel udp-echo stopped after {echoed} datagrams; counters:")
    print(f"    {'echoed':34} {echoed}", flush=True)
    return 0


# -- the client (child process in netns N) ------------------------------------


@dataclass
class ClientResult:
    samples: int = 0  # replies received in the timed window
    lost: int = 0  # requests whose reply did not come within RECV_TIMEOUT_S
    stale: int = 0  # replies that came after their request timed out
    elapsed_ns: int = 0
    cpu_s: float = 0.0  # this process's CPU time in the timed window
    rtts_ns: list[int] = field(default_factory=list)


def _handshake() -> None:
    """Tell the parent we are set up, then wait for its "go"."""
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        raise SystemExit(1)


def _timing() -> float:
    print("timing", flush=True)
    return time.process_time()


def udp_pingpong(dst: str, port: int, size: int, warmup: float, seconds: float) -> ClientResult:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect((dst, port))
    _set_rcvtimeo(sock, RECV_TIMEOUT_S)
    payload = bytearray(size)
    buf = bytearray(size + 64)
    _handshake()
    res = ClientResult()
    seq = 0
    for timed, duration in ((False, warmup), (True, seconds)):
        rtts: list[int] = []
        lost = stale = 0
        send = sock.send
        recv_into = sock.recv_into
        perf = time.perf_counter_ns
        pack_into = _SEQ.pack_into
        unpack_from = _SEQ.unpack_from
        append = rtts.append
        cpu0 = _timing() if timed else 0.0
        t_start = perf()
        end = t_start + int(duration * 1e9)
        while True:
            seq += 1
            pack_into(payload, 0, seq)
            t0 = perf()
            if t0 >= end:
                break
            send(payload)
            while True:
                try:
                    n = recv_into(buf)
                except BlockingIOError:
                    lost += 1
                    break
                if n == size and unpack_from(buf, 0)[0] == seq:
                    append(perf() - t0)
                    break
                stale += 1
        if timed:
            res = ClientResult(
                len(rtts), lost, stale, perf() - t_start, time.process_time() - cpu0, rtts
            )
    sock.close()
    return res


def _icmp_echo(ident: int, seq: int, payload: bytes) -> bytes:
    msg = bytearray(_ICMP.pack(ICMP_ECHO_REQUEST, 0, 0, ident, seq & 0xFFFF) + payload)
    struct.pack_into("!H", msg, 2, checksum(msg, 0, len(msg)))
    return bytes(msg)


def icmp_pingpong(dst: str, warmup: float, seconds: float) -> ClientResult:
    # A raw socket connected to dst sees only ICMP from dst; replies are
    # matched on identifier and sequence (the IP header comes with them).
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    sock.connect((dst, 0))
    _set_rcvtimeo(sock, RECV_TIMEOUT_S)
    ident = os.getpid() & 0xFFFF
    payload = bytes(i & 0xFF for i in range(ICMP_PAYLOAD))
    # Requests for every sequence number, built before timing starts.
    requests = [_icmp_echo(ident, s, payload) for s in range(65536)]
    buf = bytearray(2048)
    _handshake()
    res = ClientResult()
    seq = 0
    for timed, duration in ((False, warmup), (True, seconds)):
        rtts: list[int] = []
        lost = stale = 0
        send = sock.send
        recv_into = sock.recv_into
        perf = time.perf_counter_ns
        unpack_from = _ICMP.unpack_from
        append = rtts.append
        cpu0 = _timing() if timed else 0.0
        t_start = perf()
        end = t_start + int(duration * 1e9)
        while True:
            seq = (seq + 1) & 0xFFFF
            req = requests[seq]
            t0 = perf()
            if t0 >= end:
                break
            send(req)
            while True:
                try:
                    n = recv_into(buf)
                except BlockingIOError:
                    lost += 1
                    break
                ihl = (buf[0] & 0x0F) * 4
                if n >= ihl + 8:
                    typ, _code, _sum, rid, rseq = unpack_from(buf, ihl)
                    if typ == ICMP_ECHO_REPLY and rid == ident and rseq == seq:
                        append(perf() - t0)
                        break
                stale += 1
        if timed:
            res = ClientResult(
                len(rtts), lost, stale, perf() - t_start, time.process_time() - cpu0, rtts
            )
    sock.close()
    return res


def udp_rate(
    dst: str, port: int, size: int, window: int, warmup: float, seconds: float
) -> ClientResult:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect((dst, port))
    _set_rcvtimeo(sock, RECV_TIMEOUT_S)
    payload = bytes(size)
    buf = bytearray(size + 64)
    _handshake()
    send = sock.send
    recv_into = sock.recv_into
    clock = time.perf_counter_ns
    inner = range(CLOCK_EVERY)
    for _ in range(window):
        send(payload)
    res = ClientResult()
    for timed, duration in ((False, warmup), (True, seconds)):
        got = lost = 0
        cpu0 = _timing() if timed else 0.0
        t_start = clock()
        end = t_start + int(duration * 1e9)
        while True:
            for _ in inner:
                try:
                    recv_into(buf)
                except BlockingIOError:
                    # Nothing for RECV_TIMEOUT_S: the window is empty, refill it.
                    lost += window
                    for _ in range(window):
                        send(payload)
                    continue
                got += 1
                send(payload)
            if clock() >= end:
                break
        if timed:
            res = ClientResult(got, lost, 0, clock() - t_start, time.process_time() - cpu0)
    sock.close()
    return res


def client_main(spec: str) -> int:
    """Child: one test in netns N as described by a JSON spec; prints a JSON result."""
    p = json.loads(spec)
    pin(p["cpu"])
    netns.enter(p["ns"])
    gc.disable()
    kind = p["kind"]
    if kind == "icmp":
        res = icmp_pingpong(p["dst"], p["warmup"], p["seconds"])
    elif kind == "udp":
        res = udp_pingpong(p["dst"], p["port"], p["size"], p["warmup"], p["seconds"])
    elif kind == "rate":
        res = udp_rate(p["dst"], p["port"], p["size"], p["window"], p["warmup"], p["seconds"])
    else:
        raise ValueError(f"unknown client kind {kind!r}")
    print(json.dumps(asdict(res)), flush=True)
    return 0


# -- processes ----------------------------------------------------------------


def _self_argv(*args: str) -> list[str]:
    return [sys.executable, os.path.abspath(__file__), *args]


def start_target(topo: Topology, target: str, cpu: int) -> Server:
    """A fresh echo server, ready: ustack in a poll mode, or the kernel baseline."""
    if target == "kernel":
        addr = topo.kernel_addr
        argv = _self_argv("--kernel-server-role", topo.kernel_ns, addr, str(UDP_PORT))
    else:
        addr = topo.ustack_addr
        argv = [sys.executable, "-m", "ustack", "serve", "udp-echo", "--name", topo.name]
        argv += ["--poll", target, "--port", str(UDP_PORT)]
    return start_server(
        target, argv, cpu, topo=topo.name, addr=addr, port=UDP_PORT, client_ns=topo.client_ns
    )


@dataclass
class Window:
    clients: list[ClientResult]
    server_cpu: float  # share of one CPU
    client_cpu: float  # share of one CPU, summed over the clients
    cpu_busy: dict[int, float]  # whole-machine busy share per CPU


def run_clients(topo: Topology, server: Server, specs: list[dict[str, Any]], cpu: int) -> Window:
    """Run the clients together against a started server; the timed window's figures."""
    procs: list[subprocess.Popen[str]] = []
    try:
        for spec in specs:
            procs.append(spawn(_self_argv("--client-role", json.dumps(spec)), cpu, stdin=True))
        for p in procs:
            word = readline(p, READY_TIMEOUT_S, "client")
            if word != "ready":
                raise RuntimeError(f"client {p.pid} said {word!r}")
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        longest = max(s["warmup"] + s["seconds"] for s in specs) + 30
        for p in procs:
            word = readline(p, longest, "client")
            if word != "timing":
                raise RuntimeError(f"client {p.pid} said {word!r}")
        s0 = server.sample()
        b0 = cpu_times()
        results = [ClientResult(**json.loads(readline(p, longest, "client"))) for p in procs]
        s1 = server.sample()
        b1 = cpu_times()
        for p in procs:
            p.wait(timeout=10)
    finally:
        for p in procs:
            stop_child(p)
    return Window(
        results,
        cpu_used(s0, s1) / (s1.t - s0.t),
        sum(r.cpu_s * 1e9 / r.elapsed_ns for r in results),
        cpu_busy(b0, b1),
    )


# -- tests and results -----------------------------------------------------------


@dataclass
class Test:
    name: str
    kind: str  # icmp, udp or rate
    size: int
    clients: int = 1


@dataclass
class Result:
    test: str
    target: str
    kind: str
    size: int
    clients: int
    samples: int
    lost: int
    stale: int
    seconds: float
    rate: float  # replies per second (for ping-pong: 1 / mean RTT, client included)
    p50_us: float | None
    p90_us: float | None
    p99_us: float | None
    p999_us: float | None
    min_us: float | None
    max_us: float | None
    server_cpu: float
    client_cpu: float
    cpu_busy: dict[int, float]
    cpus: list[int]  # the server's and the clients' CPUs
    counters: dict[str, float]
    attempts: int = 1  # runs made; more than 1 when something else used the CPUs

    @property
    def other_cpu(self) -> float:
        """Busy time of the CPUs we use that neither the server nor the clients used."""
        mine = sum(self.cpu_busy.get(c, 0.0) for c in self.cpus)
        return max(0.0, mine - self.server_cpu - self.client_cpu)

    @property
    def frames_per_burst(self) -> float | None:
        return self.counters.get("loop_frames_per_burst")

    @property
    def sleeps_per_request(self) -> float | None:
        c = self.counters
        reqs = c.get("udp_in_datagrams", 0) + c.get("icmp_in_echos", 0)
        if "loop_sleeps" not in c and "loop_polls" not in c:
            return None
        return c.get("loop_sleeps", 0) / reqs if reqs else None


def percentile(sorted_ns: Sequence[int], q: float) -> float:
    """Nearest-rank percentile, in microseconds."""
    k = max(0, min(len(sorted_ns) - 1, int(-(-q * len(sorted_ns) // 1)) - 1))
    return sorted_ns[k] / 1000


def make_result(
    test: Test, target: str, w: Window, counters: dict[str, float], cpus: list[int]
) -> Result:
    rtts = sorted(x for r in w.clients for x in r.rtts_ns)
    samples = sum(r.samples for r in w.clients)
    elapsed = max(r.elapsed_ns for r in w.clients) / 1e9

    def pct(q: float) -> float | None:
        return percentile(rtts, q) if rtts else None

    return Result(
        test=test.name,
        target=target,
        kind=test.kind,
        size=test.size,
        clients=test.clients,
        samples=samples,
        lost=sum(r.lost for r in w.clients),
        stale=sum(r.stale for r in w.clients),
        seconds=elapsed,
        rate=sum(r.samples * 1e9 / r.elapsed_ns for r in w.clients),
        p50_us=pct(0.50),
        p90_us=pct(0.90),
        p99_us=pct(0.99),
        p999_us=pct(0.999),
        min_us=rtts[0] / 1000 if rtts else None,
        max_us=rtts[-1] / 1000 if rtts else None,
        server_cpu=w.server_cpu,
        client_cpu=w.client_cpu,
        cpu_busy=w.cpu_busy,
        cpus=cpus,
        counters=counters,
    )


def client_spec(topo: Topology, test: Test, target: str, cfg: Config) -> dict[str, Any]:
    dst = topo.kernel_addr if target == "kernel" else topo.ustack_addr
    return {
        "kind": test.kind,
        "ns": topo.client_ns,
        "cpu": cfg.client_cpu,
        "dst": dst,
        "port": UDP_PORT,
        "size": test.size,
        "window": cfg.window,
        "warmup": cfg.warmup,
        "seconds": cfg.seconds,
    }


@dataclass
class Config:
    placement: str
    server_cpu: int
    client_cpu: int
    seconds: float
    warmup: float
    window: int
    rate_size: int
    sizes: list[int]
    rate_clients: list[int]
    targets: list[str]
    tests: list[str]
    max_other: float
    retries: int


def build_tests(cfg: Config) -> list[Test]:
    tests = [Test("icmp", "icmp", ICMP_PAYLOAD)]
    tests += [Test(f"udp-{s}", "udp", s) for s in cfg.sizes]
    tests += [Test(f"rate-x{k}", "rate", cfg.rate_size, k) for k in cfg.rate_clients]
    if cfg.tests:
        tests = [t for t in tests if t.name in cfg.tests or t.kind in cfg.tests]
    return tests


def run_one(topo: Topology, cfg: Config, test: Test, target: str) -> Result:
    """One test against one target, with a fresh server."""
    server = start_target(topo, target, cfg.server_cpu)
    try:
        spec = client_spec(topo, test, target, cfg)
        w = run_clients(topo, server, [spec] * test.clients, cfg.client_cpu)
    finally:
        stopped = server.stop()
    res = make_result(test, target, w, stopped.counters, sorted({cfg.server_cpu, cfg.client_cpu}))
    if res.samples == 0 or "Traceback" in stopped.output:
        progress(f"warning: {test.name} on {target}: server said:\n{stopped.output or '(nothing)'}")
    lat = f"p50 {res.p50_us:7.1f} us  p99 {res.p99_us:7.1f} us" if res.p50_us is not None else ""
    progress(
        f"  {test.name:<9} {target:<9} {res.rate:>10,.0f}/s  {lat}"
        f"  lost {res.lost}  server CPU {res.server_cpu:.0%}"
        f"  client CPU {res.client_cpu:.0%}  other CPU {res.other_cpu:.0%}"
    )
    return res


def run_all(topo: Topology, cfg: Config, tests: Sequence[Test]) -> list[Result]:
    results = []
    # Test by test, every target in turn: the figures that are compared were
    # taken close together in time.
    for test in tests:
        for target in cfg.targets:
            for attempt in range(1, cfg.retries + 2):
                res = run_one(topo, cfg, test, target)
                res.attempts = attempt
                if res.other_cpu <= cfg.max_other:
                    break
                progress(
                    f"  {test.name:<9} {target:<9} {res.other_cpu:.0%} of the CPU time went to"
                    f" something else (> {cfg.max_other:.0%})"
                    + ("; again" if attempt <= cfg.retries else "; keeping it")
                )
            results.append(res)
    return results


# -- reporting ----------------------------------------------------------------


def _target_label(r: Result) -> tuple[str, str]:
    if r.target == "kernel":
        return "kernel", "softirq" if r.kind == "icmp" else "uvloop"
    return "ustack", r.target


def _f(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def format_table(results: Sequence[Result]) -> str:
    lines = [
        "| test      | target | mode      |  replies | p50 us | p99 us |   rate/s | lost "
        "| server CPU | client CPU | other CPU | frames/burst | sleeps/req | runs |",
        "|-----------|--------|-----------|---------:|-------:|-------:|---------:|-----:"
        "|-----------:|-----------:|----------:|-------------:|-----------:|-----:|",
    ]
    for r in results:
        target, mode = _target_label(r)
        lines.append(
            f"| {r.test:<9} | {target:<6} | {mode:<9} | {r.samples:>8} "
            f"| {_f(r.p50_us, '.1f'):>6} | {_f(r.p99_us, '.1f'):>6} | {r.rate:>8,.0f} "
            f"| {r.lost:>4} | {r.server_cpu:>10.0%} | {r.client_cpu:>10.0%} "
            f"| {r.other_cpu:>9.0%} | {_f(r.frames_per_burst, '.2f'):>12} "
            f"| {_f(r.sleeps_per_request, '.2f'):>10} | {r.attempts:>4} |"
        )
    return "\n".join(lines)


def ratios(results: Sequence[Result]) -> list[str]:
    """ustack against the kernel, test by test."""
    out = []
    by = {(r.test, r.target): r for r in results}
    for r in results:
        if r.target == "kernel":
            continue
        k = by.get((r.test, "kernel"))
        if k is None:
            continue
        if r.kind == "rate" and k.rate > 0:
            out.append(f"{r.test:<9} {r.target:<9} rate {r.rate / k.rate:.2f}x the kernel's")
        elif r.p50_us and k.p50_us and r.p99_us and k.p99_us:
            out.append(
                f"{r.test:<9} {r.target:<9} p50 {r.p50_us - k.p50_us:+.1f} us"
                f" ({r.p50_us / k.p50_us:.2f}x), p99 {r.p99_us - k.p99_us:+.1f} us"
                f" ({r.p99_us / k.p99_us:.2f}x) over the kernel"
            )
    return out


def report(
    out: IO[str],
    command: str,
    machine: dict[str, Any],
    cfg: Config,
    background: dict[int, float],
    results: Sequence[Result],
) -> None:
    w = out.write
    w(f"command: {command}\n")
    w(machine_line(machine) + "\n")
    w(
        f"placement: {cfg.placement}: server on CPU {cfg.server_cpu},"
        f" client(s) on CPU {cfg.client_cpu}\n"
    )
    w(
        f"runs: {cfg.warmup:g} s warm-up then {cfg.seconds:g} s timed per test and target,"
        f" a fresh server each; rate: {cfg.window} datagrams of {cfg.rate_size} B in flight"
        f" per client\n"
    )
    w(
        "background load before the run: "
        + ", ".join(f"CPU {c} {b:.0%}" for c, b in background.items())
        + "\n\n"
    )
    w(format_table(results) + "\n\n")
    w(
        "server/client CPU: CPU time over the timed window as a share of one CPU"
        " (client: summed over the client processes).\n"
        "other CPU: the rest of the busy time of the CPU(s) they are pinned to (softirq\n"
        "work charged to no process, kernel threads, anything else running there).\n"
        "frames/burst, sleeps/req: ustack's loop counters over the server's whole life"
        " (warm-up included).\n"
        "rate/s of a ping-pong row is 1 / mean RTT.\n"
        f"runs: a test is run again (at most {cfg.retries} times) when other CPU is over"
        f" {cfg.max_other:.0%}; the last run is shown.\n\n"
    )
    for line in ratios(results):
        w(line + "\n")


# -- main ---------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="ICMP/UDP echo latency and UDP echo rate: ustack vs the kernel."
    )
    ap.add_argument("--placement", choices=sorted(PLACEMENTS), default="same-cpu")
    ap.add_argument("--seconds", type=float, default=3.0, help="timed length of a test (3)")
    ap.add_argument("--warmup", type=float, default=0.5, help="warm-up before a test, s (0.5)")
    ap.add_argument("--window", type=int, default=RATE_WINDOW, help="rate: datagrams in flight")
    ap.add_argument("--rate-size", type=int, default=RATE_SIZE, help="rate: payload bytes (64)")
    ap.add_argument(
        "--sizes", type=int_list, default=list(LATENCY_SIZES), help="UDP ping-pong payloads"
    )
    ap.add_argument(
        "--rate-clients",
        type=int_list,
        default=list(RATE_CLIENTS),
        help="client processes of the rate tests, comma-separated (1,2)",
    )
    ap.add_argument(
        "--targets",
        type=str_list,
        default=list(TARGETS),
        help="kernel and/or ustack poll modes, comma-separated (kernel,busy,interrupt,hybrid)",
    )
    ap.add_argument(
        "--tests",
        type=str_list,
        default=[],
        help="only these tests, by name (icmp, udp-64, rate-x1) or kind (udp, rate)",
    )
    ap.add_argument(
        "--max-other",
        type=float,
        default=0.25,
        help="run a test again when this share of a CPU went to other work (0.25)",
    )
    ap.add_argument("--retries", type=int, default=2, help="at most this many re-runs (2)")
    ap.add_argument(
        "--quiet-wait",
        type=float,
        default=0.0,
        help="first wait up to this many seconds for every CPU to be under 10%% busy (0)",
    )
    ap.add_argument("--quick", action="store_true", help="smoke run: short tests, one client")
    ap.add_argument("--json", metavar="FILE", help="also write every figure as JSON")
    ap.add_argument("--kernel-server-role", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--client-role", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.kernel_server_role:
        ns, addr, port = args.kernel_server_role
        return kernel_server_main(ns, addr, int(port))
    if args.client_role:
        return client_main(args.client_role)

    if args.quick:
        args.seconds, args.warmup, args.rate_clients = 0.5, 0.2, [1]
    server_cpu, client_cpu = PLACEMENTS[args.placement]
    cfg = Config(
        args.placement,
        server_cpu,
        client_cpu,
        args.seconds,
        args.warmup,
        args.window,
        args.rate_size,
        args.sizes,
        args.rate_clients,
        args.targets,
        args.tests,
        args.max_other,
        args.retries,
    )
    for t in cfg.targets:
        if t not in TARGETS:
            print(f"error: unknown target {t!r} (have {', '.join(TARGETS)})", file=sys.stderr)
            return 2
    allowed = os.sched_getaffinity(0)
    for cpu in (server_cpu, client_cpu):
        if cpu not in allowed:
            print(f"error: CPU {cpu} is not available (have {sorted(allowed)})", file=sys.stderr)
            return 2
    if any(not 8 <= n <= 65507 for n in [*cfg.sizes, cfg.rate_size]):
        print("error: UDP payload sizes must be 8..65507 bytes", file=sys.stderr)
        return 2
    if not 1 <= cfg.window <= 4096:
        print("error: --window must be 1..4096", file=sys.stderr)
        return 2
    tests = build_tests(cfg)
    if not tests:
        print("error: --tests selects nothing", file=sys.stderr)
        return 2

    command = " ".join(["python", *sys.argv])
    unwind_on_sigterm()
    # This process only waits for its children; keep it off the server's CPU
    # unless the placement puts everything on one CPU anyway.
    pin(client_cpu)
    background = quiet_wait(args.quiet_wait)
    if any(b > 0.05 for b in background.values()):
        progress(
            "warning: the machine is not idle: "
            + ", ".join(f"CPU {c} {b:.0%} busy" for c, b in background.items())
        )
    topo = Topology(f"ustbu{os.getpid()}")
    try:
        topo.up()
        progress(
            f"topology {topo.name} up; placement {cfg.placement}"
            f" (server CPU {server_cpu}, client CPU {client_cpu})"
        )
        results = run_all(topo, cfg, tests)
    except KeyboardInterrupt:
        progress("interrupted")
        return 130
    finally:
        topo.down()

    machine = machine_info()
    print()
    report(sys.stdout, command, machine, cfg, background, results)
    if args.json:
        doc = {
            "command": command,
            "machine": machine,
            "config": asdict(cfg),
            "background_busy": background,
            "results": [
                {
                    **asdict(r),
                    "other_cpu": r.other_cpu,
                    "frames_per_burst": r.frames_per_burst,
                    "sleeps_per_request": r.sleeps_per_request,
                }
                for r in results
            ],
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
