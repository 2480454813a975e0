"""ustack.aio against the Linux kernel across the test topology, in every polling mode.

Both directions: a ustack server with kernel clients in the client netns,
and ustack clients of a kernel server listening on 198.18.0.1.  Light
kernel peers are kernel sockets driven by the same ustack loop (so the
loop's kernel selector is exercised too); the 200 MB flow-control peers
are separate processes in the client netns, started with the loop's own
subprocess support.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import socket
import struct
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

import ustack.aio
from tests.kernel import ns_socket
from ustack.aio import TcpTransport, UstackEventLoop, UstackSocket
from ustack.topology import Topology

pytestmark = pytest.mark.netns

MODES = ["busy", "interrupt", "hybrid"]
USTACK = "198.18.0.2"
KERNEL = "198.18.0.1"
TOTAL = 200 << 20
PAUSE_EVERY = 25 << 20
CHUNK = 64 * 1024


def run(topo: Topology, mode: str, main: Callable[[], Awaitable[Any]]) -> Any:
    return ustack.aio.run(main(), name=topo.name, poll=mode)


def kernel_stream(topo: Topology) -> socket.socket:
    s = ns_socket(topo.client_ns, socket.SOCK_STREAM)
    s.setblocking(False)
    return s


async def kernel_connect(topo: Topology, port: int) -> socket.socket:
    s = kernel_stream(topo)
    await asyncio.get_running_loop().sock_connect(s, (USTACK, port))
    return s


def kernel_listener(topo: Topology) -> socket.socket:
    s = kernel_stream(topo)
    s.bind((KERNEL, 0))
    s.listen(16)
    return s


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class RssMonitor:
    """Samples this process's RSS every 10 ms on the running loop."""

    def __init__(self) -> None:
        self.base = rss_bytes()
        self.peak = self.base
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            self.peak = max(self.peak, rss_bytes())
            await asyncio.sleep(0.01)

    def stop(self) -> int:
        self._task.cancel()
        self.peak = max(self.peak, rss_bytes())
        return self.peak - self.base


def pattern_block() -> bytes:
    return random.Random(1).randbytes(1_000_003)


# -- streams: ustack server, kernel clients ---------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_start_server_kernel_client_echo_then_eof(topology: Topology, mode: str):
    sizes = [1, 64, 1460, 1461, 5000, 70_000, 300_000]
    seen: dict[str, Any] = {}

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        seen["peername"] = w.get_extra_info("peername")
        seen["sockname"] = w.get_extra_info("sockname")
        seen["socket"] = w.get_extra_info("socket")
        while data := await r.read(100_000):
            w.write(data)
            await w.drain()
        seen["eof"] = True
        w.close()
        await w.wait_closed()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, UstackEventLoop)
        server = await asyncio.start_server(handle, None, 0)
        assert server.is_serving()
        (sock,) = server.sockets
        host, port = sock.getsockname()
        assert host == USTACK and 32768 <= port <= 60999
        k = await kernel_connect(topology, port)
        kport = k.getsockname()[1]
        r, w = await asyncio.open_connection(sock=k)
        for i, n in enumerate(sizes * 3):
            body = bytes([i % 251]) * n
            w.write(body)
            assert await asyncio.wait_for(r.readexactly(n), 10) == body
        w.write_eof()
        assert await asyncio.wait_for(r.read(), 10) == b""
        w.close()
        await w.wait_closed()
        server.close()
        assert not server.is_serving() and server.sockets == ()
        await asyncio.wait_for(server.wait_closed(), 5)
        assert seen["eof"] is True
        assert seen["peername"] == (KERNEL, kport)
        assert seen["sockname"] == (USTACK, port)
        assert isinstance(seen["socket"], UstackSocket)
        assert seen["socket"].getpeername() == (KERNEL, kport)

    run(topology, mode, main)


@pytest.mark.parametrize("mode", MODES)
def test_open_connection_to_kernel_server_echo_then_half_close(topology: Topology, mode: str):
    """ustack client -> kernel server on 198.18.0.1 (asyncio.start_server on a kernel socket)."""
    seen: dict[str, Any] = {}

    async def kernel_handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        seen["peer"] = w.get_extra_info("peername")
        total = 0
        while data := await r.read(65536):
            total += len(data)
            w.write(data)
            await w.drain()
        w.write(b"bye %d" % total)
        w.close()

    async def main() -> None:
        ks = kernel_listener(topology)
        kport = ks.getsockname()[1]
        kserver = await asyncio.start_server(kernel_handle, sock=ks)
        r, w = await asyncio.open_connection(KERNEL, kport)
        transport = w.transport
        assert isinstance(transport, TcpTransport)
        local = w.get_extra_info("sockname")
        assert local[0] == USTACK
        assert w.get_extra_info("peername") == (KERNEL, kport)
        sock = w.get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        total = 0
        for i in range(200):
            body = os.urandom(1 + (i * 7919) % 20_000)
            total += len(body)
            w.write(body)
            assert await asyncio.wait_for(r.readexactly(len(body)), 10) == body
        w.write_eof()
        with pytest.raises(RuntimeError, match="write_eof"):
            w.write(b"x")
        assert await asyncio.wait_for(r.read(), 10) == b"bye %d" % total
        assert r.at_eof()
        w.close()
        await w.wait_closed()
        kserver.close()
        await kserver.wait_closed()
        assert seen["peer"] == local

    run(topology, mode, main)


def test_connect_refused_by_kernel(topology: Topology):
    async def main() -> None:
        ks = kernel_listener(topology)
        port = ks.getsockname()[1]
        ks.close()  # nothing listens there now: the kernel answers RST
        with pytest.raises(ConnectionRefusedError):
            await asyncio.wait_for(asyncio.open_connection(KERNEL, port), 5)

    run(topology, "hybrid", main)


class Recorder(asyncio.Protocol):
    def __init__(self) -> None:
        self.data = bytearray()
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.data += data

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set_result(exc)


@pytest.mark.parametrize("mode", MODES)
def test_kernel_reset_gives_connection_reset_and_abort_resets_kernel(topology: Topology, mode: str):
    async def main() -> None:
        loop = asyncio.get_running_loop()
        protos: list[Recorder] = []

        def factory() -> Recorder:
            protos.append(Recorder())
            return protos[-1]

        server = await loop.create_server(factory, "0.0.0.0", 0)
        port = server.sockets[0].getsockname()[1]
        # 1: the kernel resets (SO_LINGER 0): connection_lost(ConnectionResetError)
        k = await kernel_connect(topology, port)
        await loop.sock_sendall(k, b"hello")
        while not protos or protos[0].data != b"hello":
            await asyncio.sleep(0.005)
        k.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        k.close()
        exc = await asyncio.wait_for(protos[0].lost, 5)
        assert isinstance(exc, ConnectionResetError)
        # 2: ustack aborts: the kernel's recv sees the reset
        k2 = await kernel_connect(topology, port)
        while len(protos) < 2 or protos[1].transport is None:
            await asyncio.sleep(0.005)
        t = protos[1].transport
        assert t is not None
        t.write(b"x" * 1000)
        t.abort()
        assert await asyncio.wait_for(protos[1].lost, 5) is None
        with pytest.raises(ConnectionResetError):
            got = b""
            while True:
                chunk = await asyncio.wait_for(loop.sock_recv(k2, 65536), 5)
                if not chunk:
                    break
                got += chunk
        k2.close()
        server.close()
        await asyncio.wait_for(server.wait_closed(), 5)

    run(topology, mode, main)


# -- flow control, 200 MB each way -----------------------------------------------------

KERNEL_WRITER = r"""
import hashlib, random, socket, sys
port, total, chunk = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
block = random.Random(1).randbytes(1_000_003)
assert chunk <= len(block)
mv = memoryview(block + block)
s = socket.create_connection(("198.18.0.2", port))
h = hashlib.sha256()
off = sent = 0
while sent < total:
    n = min(chunk, total - sent)
    piece = mv[off : off + n]
    s.sendall(piece)
    h.update(piece)
    sent += n
    off = (off + n) % len(block)
s.shutdown(socket.SHUT_WR)
reply = b""
while data := s.recv(4096):
    reply += data
print(sent, h.hexdigest(), reply.decode(), flush=True)
"""

KERNEL_SLOW_READER = r"""
import hashlib, socket, sys, time
pause_every, stall = int(sys.argv[1]), float(sys.argv[2])
ls = socket.socket()
ls.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 128 * 1024)
ls.bind(("198.18.0.1", 0))
ls.listen(1)
print(ls.getsockname()[1], flush=True)
s, _ = ls.accept()
h = hashlib.sha256()
got = 0
next_stall = pause_every
buf = bytearray(256 * 1024)
while n := s.recv_into(buf):
    h.update(memoryview(buf)[:n])
    got += n
    if got >= next_stall:
        next_stall += pause_every
        time.sleep(stall)
print(got, h.hexdigest(), flush=True)
"""


async def ns_python(topo: Topology, script: str, *args: object) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        "ip",
        "netns",
        "exec",
        topo.client_ns,
        sys.executable,
        "-c",
        script,
        *(str(a) for a in args),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


@pytest.mark.parametrize("mode", MODES)
def test_flow_control_paused_ustack_reader_holds_back_200mb_kernel_writer(
    topology: Topology, mode: str
):
    """A ustack server pauses reading every 25 MB for 100 ms; the window closes, RSS stays put."""
    stall = 0.1

    class SlowReader(asyncio.Protocol):
        def __init__(self) -> None:
            self.n = 0
            self.hash = hashlib.sha256()
            self.next_pause = PAUSE_EVERY
            self.paused = False
            self.calls_while_paused = 0
            self.at_resume: list[tuple[int, int]] = []  # (readable bytes, rcv_wnd)
            self.mss = 0
            self.done = asyncio.get_running_loop().create_future()

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, TcpTransport)
            self.t = transport

        def data_received(self, data: bytes) -> None:
            if self.paused:
                self.calls_while_paused += 1
            self.n += len(data)
            self.hash.update(data)
            if self.n >= self.next_pause:
                self.next_pause += PAUSE_EVERY
                self.t.pause_reading()
                self.paused = True
                asyncio.get_running_loop().call_later(stall, self.resume)

        def resume(self) -> None:
            conn = self.t.connection
            stats = conn.stats()
            wnd, mss = stats["rcv_wnd"], stats["rcv_mss"]
            assert isinstance(wnd, int) and isinstance(mss, int)
            self.at_resume.append((conn.readable_bytes, wnd))
            self.mss = mss
            self.paused = False
            self.t.resume_reading()

        def eof_received(self) -> bool:
            self.t.write(b"%d %s" % (self.n, self.hash.hexdigest().encode()))
            self.done.set_result(None)
            return False

    async def main() -> None:
        loop = asyncio.get_running_loop()
        protos: list[SlowReader] = []

        def factory() -> SlowReader:
            protos.append(SlowReader())
            return protos[-1]

        server = await loop.create_server(factory, USTACK, 0)
        port = server.sockets[0].getsockname()[1]
        mon = RssMonitor()
        t0 = time.monotonic()
        proc = await ns_python(topology, KERNEL_WRITER, port, TOTAL, 256 * 1024)
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        elapsed = time.monotonic() - t0
        growth = mon.stop()
        assert proc.returncode == 0, err.decode()
        sent, digest, n, rdigest = out.decode().split()
        (p,) = protos
        assert int(sent) == TOTAL == int(n) == p.n
        assert digest == rdigest
        assert p.calls_while_paused == 0
        assert len(p.at_resume) == TOTAL // PAUSE_EVERY
        assert isinstance(loop, UstackEventLoop)
        rcvbuf = loop.stack.tcp.config.rcvbuf
        # While paused the receive buffer filled up and the advertised window closed,
        # except for less than a segment: the kernel's sender-side silly window
        # avoidance may hold back a tail smaller than an MSS that an earlier
        # advertisement still allows (a right edge never moves left).
        for readable, wnd in p.at_resume[:-1]:
            assert rcvbuf - p.mss < readable <= readable + wnd <= rcvbuf, p.at_resume
            assert wnd < p.mss, p.at_resume
        # The last pause comes with the last byte; nothing is left to hold back.
        assert p.at_resume[-1][0] == 0
        assert elapsed > stall * len(p.at_resume)
        assert growth < 16 << 20, f"RSS grew by {growth >> 20} MB while 200 MB flowed"
        server.close()
        await server.wait_closed()

    run(topology, mode, main)


@pytest.mark.parametrize("mode", MODES)
def test_flow_control_ustack_writer_to_slow_kernel_reader_200mb(topology: Topology, mode: str):
    """pause_writing/resume_writing pace a fast writer; the buffer stays under high + one write."""

    class Writer(asyncio.Protocol):
        def __init__(self) -> None:
            self.pauses = 0
            self.resumes = 0
            self.can_write = asyncio.Event()
            self.can_write.set()

        def pause_writing(self) -> None:
            self.pauses += 1
            self.can_write.clear()

        def resume_writing(self) -> None:
            self.resumes += 1
            self.can_write.set()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        proc = await ns_python(topology, KERNEL_SLOW_READER, PAUSE_EVERY, 0.1)
        assert proc.stdout is not None
        kport = int(await asyncio.wait_for(proc.stdout.readline(), 10))
        transport, proto = await loop.create_connection(Writer, KERNEL, kport)
        assert isinstance(transport, TcpTransport) and isinstance(proto, Writer)
        low, high = transport.get_write_buffer_limits()
        assert (low, high) == (16 * 1024, 64 * 1024)
        block = pattern_block()
        mv = memoryview(block + block)
        h = hashlib.sha256()
        mon = RssMonitor()
        off = sent = max_buffered = 0
        while sent < TOTAL:
            await proto.can_write.wait()
            n = min(CHUNK, TOTAL - sent)
            piece = mv[off : off + n]
            transport.write(piece)
            h.update(piece)
            sent += n
            off = (off + n) % len(block)
            max_buffered = max(max_buffered, transport.get_write_buffer_size())
        transport.close()
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        growth = mon.stop()
        assert proc.returncode == 0, err.decode()
        got, digest = out.decode().split()
        assert int(got) == TOTAL
        assert digest == h.hexdigest()
        assert proto.pauses >= TOTAL // PAUSE_EVERY - 1
        assert proto.resumes == proto.pauses
        assert high < max_buffered <= high + CHUNK
        assert growth < 16 << 20, f"RSS grew by {growth >> 20} MB while 200 MB flowed"

    run(topology, mode, main)


# -- datagrams -----------------------------------------------------------------------


class Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t: Any = transport  # asyncio 3.11's kernel datagram transport is no DatagramTransport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.t.sendto(data, addr)


class Collect(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.q: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.q.put_nowait((data, addr))


@pytest.mark.parametrize("mode", MODES)
def test_datagram_echo_with_kernel_udp_peer_both_ways(topology: Topology, mode: str):
    sizes = [1, 64, 1472, 1473, 3000, 8000, 20_000]  # asyncio 3.11 skips empty ones

    async def main() -> None:
        loop = asyncio.get_running_loop()
        # ustack echo server; the kernel peer is a kernel socket on this loop.
        et, _ = await loop.create_datagram_endpoint(Echo, local_addr=(USTACK, 0))
        port = et.get_extra_info("sockname")[1]
        assert et.get_extra_info("sockname") == (USTACK, port) and port > 0
        ks = ns_socket(topology.client_ns, socket.SOCK_DGRAM)
        ks.bind((KERNEL, 0))
        ks.setblocking(False)
        kt, kp = await loop.create_datagram_endpoint(Collect, sock=ks)
        assert isinstance(kp, Collect)
        for i in range(60):
            body = os.urandom(sizes[i % len(sizes)])
            kt.sendto(body, (USTACK, port))
            data, addr = await asyncio.wait_for(kp.q.get(), 5)
            assert (data, addr) == (body, (USTACK, port))
        # ustack "connected" client of a kernel echo.
        kt.close()
        ks2 = ns_socket(topology.client_ns, socket.SOCK_DGRAM)
        ks2.bind((KERNEL, 0))
        ks2.setblocking(False)
        ket, _ = await loop.create_datagram_endpoint(Echo, sock=ks2)
        kport = ks2.getsockname()[1]
        ct, cp = await loop.create_datagram_endpoint(Collect, remote_addr=(KERNEL, kport))
        assert isinstance(cp, Collect)
        assert ct.get_extra_info("peername") == (KERNEL, kport)
        for i in range(60):
            body = os.urandom(sizes[i % len(sizes)])
            ct.sendto(body)
            assert await asyncio.wait_for(cp.q.get(), 5) == (body, (KERNEL, kport))
        with pytest.raises(ValueError, match="Invalid address"):
            ct.sendto(b"x", (KERNEL, kport + 1))
        for t in (ct, ket, et):
            t.close()
        await asyncio.sleep(0)

    run(topology, mode, main)


# -- the rest of asyncio on the same loop ------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_call_later_executor_subprocess_and_kernel_sockets_beside_ustack(
    topology: Topology, mode: str
):
    async def main() -> None:
        loop = asyncio.get_running_loop()
        # A ustack connection stays open and idle throughout.
        server = await loop.create_server(Recorder, None, 0)
        port = server.sockets[0].getsockname()[1]
        k = await kernel_connect(topology, port)
        fired: list[float] = []
        t0 = loop.time()
        loop.call_later(0.05, lambda: fired.append(loop.time() - t0))
        await asyncio.sleep(0.2)
        assert len(fired) == 1 and 0.05 <= fired[0] < 0.18  # on its own, not with the 0.2 s sleep
        caller = threading.get_ident()
        ident = await loop.run_in_executor(None, threading.get_ident)
        assert ident != caller
        proc = await asyncio.create_subprocess_exec(
            "cat", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
        out, _ = await asyncio.wait_for(proc.communicate(b"through a pipe"), 10)
        assert out == b"through a pipe" and proc.returncode == 0
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        await loop.sock_sendall(a, b"kernel socketpair")
        assert await asyncio.wait_for(loop.sock_recv(b, 100), 5) == b"kernel socketpair"
        a.close()
        b.close()
        k.close()
        server.close()
        await server.wait_closed()

    run(topology, mode, main)


class Waker(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.got: asyncio.Future[float] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not self.got.done():
            self.got.set_result(time.monotonic())


@pytest.mark.parametrize("mode", MODES)
def test_idle_loop_cpu_and_wakeup_on_frame(topology: Topology, mode: str):
    """With a ustack connection open and nothing to do, hybrid/interrupt sleep; busy spins.

    A kernel thread sends after 0.5 s; in every mode the data arrives at once
    (well before any timeout would have woken the loop).
    """
    sent: list[float] = []

    def kernel_client(port: int) -> None:
        with ns_socket(topology.client_ns, socket.SOCK_STREAM) as s:
            s.connect((USTACK, port))
            time.sleep(0.5)
            sent.append(time.monotonic())
            s.sendall(b"wake up")
            s.recv(10)

    async def main() -> tuple[float, float, dict[str, int]]:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, UstackEventLoop)
        protos: list[Waker] = []

        def factory() -> Waker:
            protos.append(Waker())
            return protos[-1]

        server = await loop.create_server(factory, None, 0)
        port = server.sockets[0].getsockname()[1]
        th = threading.Thread(target=kernel_client, args=(port,))
        th.start()
        while not protos:
            await asyncio.sleep(0.01)
        s0 = loop.stats()
        cpu0 = time.process_time()
        got = await asyncio.wait_for(protos[0].got, 5)
        cpu = time.process_time() - cpu0
        s1 = loop.stats()
        t = protos[0].transport
        assert t is not None
        t.close()
        await loop.run_in_executor(None, th.join)
        server.close()
        counts = {k: int(s1[k] - s0[k]) for k in ("aio_spins", "aio_blocks", "aio_tap_wakeups")}
        return got, cpu, counts

    got, cpu, counts = run(topology, mode, main)
    assert got - sent[0] < 0.1
    if mode == "busy":
        # Never blocks: spins through the whole idle half second.
        assert counts["aio_blocks"] == 0 and counts["aio_spins"] > 1000, counts
    else:
        # Sleeps in the kernel selector and is woken by the frame on the TAP.
        assert cpu < 0.1, cpu
        assert counts["aio_blocks"] >= 1 and counts["aio_tap_wakeups"] >= 1, counts
        assert counts["aio_spins"] < 1000, counts


# -- configuration, policy and the runner's calls ----------------------------------------


def test_runner_calls_listen_on_none_any_and_own_address_and_datagram(topology: Topology):
    loop = ustack.aio.new_event_loop(
        name=topology.name, addr="198.18.0.2/24", poll="hybrid", pcap=None, fault=None, offload=None
    )
    try:

        async def main() -> None:
            servers = [
                await loop.create_server(Recorder, host, 0) for host in (None, "0.0.0.0", USTACK)
            ]
            ports = [s.sockets[0].getsockname() for s in servers]
            assert all(h == USTACK for h, _ in ports)
            with pytest.raises(OSError) as info:
                await loop.create_server(Recorder, USTACK, ports[0][1])
            assert info.value.errno == 98  # EADDRINUSE
            with pytest.raises(OSError) as info:
                await loop.create_server(Recorder, "198.18.0.9", 0)
            assert info.value.errno == 99  # EADDRNOTAVAIL
            for _, port in ports:
                k = await kernel_connect(topology, port)
                await loop.sock_sendall(k, b"ping")
                k.close()
            ut, _ = await loop.create_datagram_endpoint(Echo, local_addr=(USTACK, 0))
            uport = ut.get_extra_info("sockname")[1]
            ks = ns_socket(topology.client_ns, socket.SOCK_DGRAM)
            ks.setblocking(False)
            await loop.sock_sendto(ks, b"dgram", (USTACK, uport))
            data, addr = await asyncio.wait_for(loop.sock_recvfrom(ks, 100), 5)
            assert (data, addr) == (b"dgram", (USTACK, uport))
            ks.close()
            ut.close()
            for s in servers:
                s.close()
                await s.wait_closed()

        loop.run_until_complete(main())
    finally:
        loop.close()
    assert loop.is_closed()


def test_install_makes_asyncio_run_use_ustack(topology: Topology):
    async def main() -> str:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, UstackEventLoop)
        assert loop.context.mode == "interrupt"
        ks = kernel_listener(topology)
        kport = ks.getsockname()[1]

        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            w.write(await r.readline())
            w.close()

        kserver = await asyncio.start_server(handle, sock=ks)
        r, w = await asyncio.open_connection(KERNEL, kport)
        w.write(b"via policy\n")
        line = await r.readline()
        w.close()
        kserver.close()
        return line.decode()

    old = asyncio.get_event_loop_policy()
    policy = ustack.aio.install(name=topology.name, poll="interrupt")
    try:
        assert asyncio.get_event_loop_policy() is policy
        assert asyncio.run(main()) == "via policy\n"
    finally:
        asyncio.set_event_loop_policy(old)


def test_env_configures_the_loop(topology: Topology, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("USTACK_NAME", topology.name)
    monkeypatch.setenv("USTACK_POLL", "busy")
    monkeypatch.setenv("USTACK_ADDR", "198.18.0.3/24")

    async def main() -> tuple[str, str, tuple[str, int]]:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, UstackEventLoop)
        server = await loop.create_server(Recorder, None, 0)
        name = server.sockets[0].getsockname()
        server.close()
        return loop.context.mode, str(loop.stack.iface.cidr), name

    mode, cidr, name = ustack.aio.run(main())
    assert (mode, cidr, name[0]) == ("busy", "198.18.0.3/24", "198.18.0.3")
    # Keywords win over the environment.
    mode2 = ustack.aio.run(_mode(), poll="interrupt")
    assert mode2 == "interrupt"


async def _mode() -> str:
    loop = asyncio.get_running_loop()
    assert isinstance(loop, UstackEventLoop)
    return loop.context.mode


def test_loop_close_sends_fin_for_connections_left_open(topology: Topology):
    ks = kernel_listener(topology)
    ks.setblocking(True)
    kport = ks.getsockname()[1]
    accepted: list[socket.socket] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(None, ks.accept)
        t, _ = await loop.create_connection(Recorder, KERNEL, kport)
        conn, _ = await fut
        accepted.append(conn)
        t.write(b"left open")
        await asyncio.sleep(0.05)

    run(topology, "hybrid", main)
    (conn,) = accepted
    conn.settimeout(5)
    got = b""
    while data := conn.recv(100):
        got += data
    assert got == b"left open"  # then the FIN: recv returned b"" (no reset, no hang)
    conn.close()
    ks.close()
