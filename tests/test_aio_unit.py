"""ustack.aio without root: two ustack loops talking over an in-memory wire.

Each side is a Stack on a `BridgedRing` (a MemoryRing whose transmitted
frames land in the other side's inbox, with an eventfd as its file
descriptor so that a loop can block on it) driven by its own ustack event
loop in its own thread, as every Context belongs to one thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import select
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest

import ustack.aio
from ustack.aio import Server, TcpTransport, UstackEventLoop, UstackSocket
from ustack.aio.loop import _resolve_config
from ustack.dev.memring import MemoryRing
from ustack.loop import Context
from ustack.stack.interface import Interface
from ustack.stack.stack import Stack
from ustack.wire.ethernet import ETH_HLEN
from ustack.wire.ipv4 import IPV4_HLEN, PROTO_TCP
from ustack.wire.tcp import SYN

MODES = ["busy", "interrupt", "hybrid"]
A = "198.18.0.2"  # the server side
B = "198.18.0.1"  # the client side


class BridgedRing(MemoryRing):
    """A MemoryRing wired to a peer; its fileno is an eventfd that says 'frames queued'."""

    def __init__(self, name: str) -> None:
        super().__init__(name=name)
        self.efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.peer: BridgedRing | None = None
        self.drop: Callable[[bytes], bool] | None = None

    def fileno(self) -> int:
        return self.efd

    def rx_burst(self, max_frames: int = 32) -> int:
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self.efd)
        n = super().rx_burst(max_frames)
        if self._inbox:
            os.eventfd_write(self.efd, 1)
        return n

    def _write_burst(self, n: int) -> int:
        before = len(self.sent)
        done = super()._write_burst(n)
        frames = self.sent[before:]
        del self.sent[before:]
        peer = self.peer
        assert peer is not None
        passed = 0
        for frame in frames:
            if self.drop is not None and self.drop(frame):
                continue
            peer.inject(frame)
            passed += 1
        if passed:
            os.eventfd_write(peer.efd, 1)
        return done

    def wait(self, timeout_ms: int) -> bool:
        r, _, _ = select.select([self.efd], [], [], max(timeout_ms, 0) / 1000)
        return bool(r)

    def close(self) -> None:
        super().close()
        if self.efd >= 0:
            os.close(self.efd)
            self.efd = -1


def wire() -> tuple[BridgedRing, BridgedRing]:
    a, b = BridgedRing("memA"), BridgedRing("memB")
    a.peer, b.peer = b, a
    return a, b


def make_loop(dev: BridgedRing, addr: str, mode: str) -> UstackEventLoop:
    ctx = Context(dev, Stack(dev, Interface.from_config(addr + "/24")), poll=mode)
    return ustack.aio.new_event_loop(context=ctx)


class Pair:
    """Server coroutine on loop A in a thread, client coroutine on loop B here."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.a, self.b = wire()
        self.ready = threading.Event()
        self.stop = threading.Event()
        self.port = 0
        self.server_result: Any = None
        self.server_error: BaseException | None = None

    def run(
        self,
        server: Callable[[Pair], Awaitable[Any]],
        client: Callable[[Pair], Awaitable[Any]],
        timeout: float = 60,
    ) -> Any:
        def serve() -> None:
            loop = make_loop(self.a, A, self.mode)
            try:
                self.server_result = loop.run_until_complete(server(self))
            except BaseException as exc:
                self.server_error = exc
                self.ready.set()
            finally:
                loop.close()

        th = threading.Thread(target=serve, name="server-loop")
        th.start()
        try:
            assert self.ready.wait(10), "server side did not start"
            if self.server_error is not None:
                raise self.server_error
            loop = make_loop(self.b, B, self.mode)
            try:
                return loop.run_until_complete(asyncio.wait_for(client(self), timeout))
            finally:
                self.stop.set()
                loop.close()
        finally:
            self.stop.set()
            th.join(30)
            assert not th.is_alive()
            self.a.close()
            self.b.close()
            if self.server_error is not None:
                raise self.server_error

    async def until_stopped(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.stop.wait)


# -- streams ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_streams_echo_between_two_ustack_loops(mode: str):
    async def server(p: Pair) -> dict[str, Any]:
        seen: dict[str, Any] = {}

        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            seen["peer"] = w.get_extra_info("peername")
            total = 0
            while data := await r.read(50_000):
                total += len(data)
                w.write(data)
                await w.drain()
            seen["total"] = total
            w.close()

        srv = await asyncio.start_server(handle, A, 0)
        p.port = srv.sockets[0].getsockname()[1]
        p.ready.set()
        await p.until_stopped()
        srv.close()
        return seen

    async def client(p: Pair) -> tuple[tuple[str, int], int]:
        r, w = await asyncio.open_connection(A, p.port)
        total = 0
        for i in range(60):
            body = os.urandom((i * 104_729) % 200_000 + 1)
            total += len(body)
            w.write(body)
            assert await r.readexactly(len(body)) == body
        w.write_eof()
        assert await r.read() == b""
        local = w.get_extra_info("sockname")
        w.close()
        await w.wait_closed()
        return local, total

    pair = Pair(mode)
    local, total = pair.run(server, client)
    assert pair.server_result == {"peer": local, "total": total}
    assert local[0] == B


@pytest.mark.parametrize("mode", MODES)
def test_flow_control_between_two_loops_bounded_buffers_data_intact(mode: str):
    total = 16 << 20
    chunk = 100_000

    async def server(p: Pair) -> tuple[int, bytes, int]:
        loop = asyncio.get_running_loop()
        got = bytearray()
        done: asyncio.Future[None] = loop.create_future()
        paused_calls = 0

        class Slow(asyncio.Protocol):
            paused = False

            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                assert isinstance(transport, TcpTransport)
                self.t = transport

            def data_received(self, data: bytes) -> None:
                nonlocal paused_calls
                if self.paused:
                    paused_calls += 1
                got.extend(data)
                if len(got) // (4 << 20) != (len(got) - len(data)) // (4 << 20):
                    self.t.pause_reading()
                    assert not self.t.is_reading()
                    self.paused = True
                    loop.call_later(0.05, self.resume)

            def resume(self) -> None:
                self.paused = False
                self.t.resume_reading()

            def eof_received(self) -> None:
                done.set_result(None)

        srv = await loop.create_server(Slow, None, 0)
        p.port = srv.sockets[0].getsockname()[1]
        p.ready.set()
        await done
        srv.close()
        return len(got), bytes(got[-1000:]), paused_calls

    async def client(p: Pair) -> tuple[int, int, int, bytes]:
        loop = asyncio.get_running_loop()
        can = asyncio.Event()
        can.set()
        counts = [0, 0]

        class W(asyncio.Protocol):
            def pause_writing(self) -> None:
                counts[0] += 1
                can.clear()

            def resume_writing(self) -> None:
                counts[1] += 1
                can.set()

        t, _ = await loop.create_connection(W, A, p.port)
        assert isinstance(t, TcpTransport)
        t.set_write_buffer_limits(high=200_000)
        assert t.get_write_buffer_limits() == (50_000, 200_000)
        data = os.urandom(total)
        worst = 0
        for off in range(0, total, chunk):
            await can.wait()
            t.write(data[off : off + chunk])
            worst = max(worst, t.get_write_buffer_size())
        t.write_eof()
        while t.get_write_buffer_size():
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        t.close()
        return counts[0], counts[1], worst, data[-1000:]

    pair = Pair(mode)
    pauses, resumes, worst, tail = pair.run(server, client)
    n, got_tail, paused_calls = pair.server_result
    assert n == total and got_tail == tail
    assert paused_calls == 0
    assert pauses >= 3 and resumes == pauses
    assert 200_000 < worst <= 200_000 + chunk


def test_lost_syn_is_sent_again_when_the_tcp_timer_fires_while_the_loop_sleeps():
    """interrupt mode: nothing arrives, so only the stack's deadline can wake the selector."""

    async def server(p: Pair) -> None:
        srv = await asyncio.get_running_loop().create_server(asyncio.Protocol, None, 0)
        p.port = srv.sockets[0].getsockname()[1]
        p.ready.set()
        await p.until_stopped()
        srv.close()

    dropped: list[bytes] = []

    def drop_first_syn(frame: bytes) -> bool:
        is_tcp = len(frame) > ETH_HLEN + IPV4_HLEN + 13 and frame[ETH_HLEN + 9] == PROTO_TCP
        if is_tcp and frame[ETH_HLEN + IPV4_HLEN + 13] & SYN and not dropped:
            dropped.append(frame)
            return True
        return False

    async def client(p: Pair) -> tuple[float, float, dict[str, int | float]]:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, UstackEventLoop)
        p.b.drop = drop_first_syn
        t0 = time.monotonic()
        c0 = time.process_time()
        t, _ = await loop.create_connection(asyncio.Protocol, A, p.port)
        took = time.monotonic() - t0
        cpu = time.process_time() - c0
        t.close()
        return took, cpu, loop.stats()

    pair = Pair("interrupt")
    took, cpu, stats = pair.run(server, client)
    assert len(dropped) == 1
    assert 0.9 < took < 1.5  # the initial RTO is 1 s (RFC 6298 2.1)
    assert cpu < 0.3  # both loops slept (process CPU of both threads)
    assert stats["aio_blocks"] >= 1


# -- servers ------------------------------------------------------------------------------


def test_server_start_serving_serve_forever_wait_closed_and_async_with():
    async def server(p: Pair) -> list[str]:
        loop = asyncio.get_running_loop()
        log: list[str] = []
        transports: list[asyncio.Transport] = []

        class Proto(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                assert isinstance(transport, asyncio.Transport)
                transports.append(transport)
                log.append("made")

            def connection_lost(self, exc: Exception | None) -> None:
                log.append(f"lost {exc}")

        srv = await loop.create_server(Proto, A, 0, start_serving=False)
        assert isinstance(srv, Server) and not srv.is_serving()
        assert srv.get_loop() is loop
        p.port = srv.sockets[0].getsockname()[1]
        p.ready.set()
        await asyncio.sleep(0.2)  # the client connects now: the handshake completes, no accept
        log.append(f"before serving {len(transports)}")
        forever = asyncio.create_task(srv.serve_forever())
        await asyncio.sleep(0.1)
        assert srv.is_serving()
        with pytest.raises(RuntimeError, match="already being awaited"):
            await srv.serve_forever()
        forever.cancel()
        with pytest.raises(asyncio.CancelledError):
            await forever
        # serve_forever's cancellation closed the server and waited for the client.
        assert not srv.is_serving() and srv.sockets == ()
        log.append("closed")
        async with await loop.create_server(Proto, None, 0) as srv2:
            assert srv2.is_serving()
            port2 = srv2.sockets[0].getsockname()[1]
        assert not srv2.is_serving()
        log.append(f"second on {port2 > 0}")
        await p.until_stopped()
        return log

    async def client(p: Pair) -> None:
        _, w = await asyncio.open_connection(A, p.port)
        w.write(b"hi")
        await w.drain()
        await asyncio.sleep(0.5)
        w.close()  # lets the server's wait_closed return
        await w.wait_closed()

    pair = Pair("hybrid")
    pair.run(server, client)
    assert pair.server_result == [
        "before serving 0",
        "made",
        "lost None",
        "closed",
        "second on True",
    ]


def test_wait_closed_waits_for_clients_and_close_clients_closes_them():
    async def server(p: Pair) -> list[str]:
        loop = asyncio.get_running_loop()
        log: list[str] = []

        class Proto(asyncio.Protocol):
            def connection_lost(self, exc: Exception | None) -> None:
                log.append("lost")

        srv = await loop.create_server(Proto, None, 0)
        assert isinstance(srv, Server)
        p.port = srv.sockets[0].getsockname()[1]
        p.ready.set()
        while not srv._clients:
            await asyncio.sleep(0.01)
        srv.close()
        waiter = asyncio.create_task(srv.wait_closed())
        await asyncio.sleep(0.2)
        log.append(f"waiting {not waiter.done()}")
        srv.close_clients()
        await asyncio.wait_for(waiter, 5)
        log.append("closed")
        await p.until_stopped()
        return log

    async def client(p: Pair) -> bytes:
        r, w = await asyncio.open_connection(A, p.port)
        data = await asyncio.wait_for(r.read(), 5)
        w.close()
        return data

    pair = Pair("interrupt")
    assert pair.run(server, client) == b""
    assert pair.server_result == ["waiting True", "lost", "closed"]


# -- the transport's API ---------------------------------------------------------------


class Buffered(asyncio.BufferedProtocol):
    def __init__(self) -> None:
        self.buf = bytearray(1000)
        self.got = bytearray()
        self.sizes: list[int] = []

    def get_buffer(self, sizehint: int) -> memoryview:
        return memoryview(self.buf)

    def buffer_updated(self, nbytes: int) -> None:
        self.sizes.append(nbytes)
        self.got += self.buf[:nbytes]


def test_transport_api_extra_info_sockopts_eof_and_buffered_protocol():
    async def server(p: Pair) -> tuple[bytes, int]:
        loop = asyncio.get_running_loop()
        protos: list[Buffered] = []

        def factory() -> Buffered:
            protos.append(Buffered())
            return protos[-1]

        srv = await loop.create_server(factory, None, 0)
        p.port = srv.sockets[0].getsockname()[1]
        p.ready.set()
        await p.until_stopped()
        srv.close()
        return bytes(protos[0].got), max(protos[0].sizes)

    async def client(p: Pair) -> None:
        loop = asyncio.get_running_loop()
        t, _ = await loop.create_connection(asyncio.Protocol, A, p.port)
        assert isinstance(t, TcpTransport)
        sock = t.get_extra_info("socket")
        assert isinstance(sock, UstackSocket)
        assert (sock.family, sock.type, sock.fileno()) == (socket.AF_INET, socket.SOCK_STREAM, -1)
        assert sock.getsockname() == t.get_extra_info("sockname")
        assert sock.getpeername() == (A, p.port) == t.get_extra_info("peername")
        assert t.connection.tcb.config.nodelay
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)
        assert not t.connection.tcb.config.nodelay
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        assert t.connection.tcb.config.keepalive
        with pytest.raises(OSError) as info:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
        assert info.value.errno == errno.ENOPROTOOPT
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
        with pytest.raises(ValueError):
            t.set_write_buffer_limits(high=10, low=20)
        with pytest.raises(TypeError):
            cast(Any, t).write("text")
        assert t.can_write_eof() and t.is_reading()
        t.pause_reading()
        assert not t.is_reading()
        t.resume_reading()
        t.writelines([b"a" * 3000, memoryview(b"b" * 3000), bytearray(b"c" * 3000)])
        t.write_eof()
        t.write_eof()  # a second one is a no-op
        with pytest.raises(RuntimeError, match="write_eof"):
            t.write(b"late")
        await asyncio.sleep(0.2)
        t.close()
        assert t.is_closing()
        t.close()
        await asyncio.sleep(0.05)

    pair = Pair("hybrid")
    pair.run(server, client)
    got, biggest = pair.server_result
    assert got == b"a" * 3000 + b"b" * 3000 + b"c" * 3000
    assert biggest == 1000  # buffer_updated never got more than get_buffer's buffer


def test_peer_reset_gives_connection_reset_error_after_the_data():
    async def server(p: Pair) -> tuple[bytes, str]:
        loop = asyncio.get_running_loop()
        got = bytearray()
        lost: asyncio.Future[Exception | None] = loop.create_future()

        class Proto(asyncio.Protocol):
            def data_received(self, data: bytes) -> None:
                got.extend(data)

            def connection_lost(self, exc: Exception | None) -> None:
                lost.set_result(exc)

        srv = await loop.create_server(Proto, None, 0)
        p.port = srv.sockets[0].getsockname()[1]
        p.ready.set()
        exc = await asyncio.wait_for(lost, 5)
        srv.close()
        return bytes(got), type(exc).__name__

    async def client(p: Pair) -> None:
        loop = asyncio.get_running_loop()
        t, _ = await loop.create_connection(asyncio.Protocol, A, p.port)
        t.write(b"before the reset")
        await asyncio.sleep(0.05)
        t.abort()
        await asyncio.sleep(0.05)

    pair = Pair("hybrid")
    pair.run(server, client)
    assert pair.server_result == (b"before the reset", "ConnectionResetError")


def test_loop_close_sends_fin_for_a_connection_the_app_left_open():
    async def server(p: Pair) -> tuple[bytes, bool]:
        loop = asyncio.get_running_loop()
        eof: asyncio.Future[bytes] = loop.create_future()
        got = bytearray()

        class Proto(asyncio.Protocol):
            def data_received(self, data: bytes) -> None:
                got.extend(data)

            def eof_received(self) -> None:
                eof.set_result(bytes(got))

        srv = await loop.create_server(Proto, None, 0)
        p.port = srv.sockets[0].getsockname()[1]
        p.ready.set()
        data = await asyncio.wait_for(eof, 10)
        srv.close()
        return data, True

    async def client(p: Pair) -> None:
        t, _ = await asyncio.get_running_loop().create_connection(asyncio.Protocol, A, p.port)
        t.write(b"never closed by the app")

    pair = Pair("interrupt")
    pair.run(server, client)  # Pair.run closes the client's loop after client() returns
    assert pair.server_result == (b"never closed by the app", True)


# -- datagrams -------------------------------------------------------------------------------


def test_datagram_endpoints_between_two_loops_connected_filtering():
    async def server(p: Pair) -> None:
        loop = asyncio.get_running_loop()
        other, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=(A, 0))

        class Echo(asyncio.DatagramProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                assert isinstance(transport, asyncio.DatagramTransport)
                self.t = transport

            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                self.t.sendto(data, addr)
                other.sendto(b"from another port", addr)  # a connected socket drops these

        t, _ = await loop.create_datagram_endpoint(Echo, local_addr=("0.0.0.0", 0))
        p.port = t.get_extra_info("sockname")[1]
        p.ready.set()
        await p.until_stopped()
        t.close()
        other.close()

    async def client(p: Pair) -> list[tuple[bytes, tuple[str, int]]]:
        loop = asyncio.get_running_loop()
        got: list[tuple[bytes, tuple[str, int]]] = []

        class Collect(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                got.append((data, addr))

        t, _ = await loop.create_datagram_endpoint(Collect, remote_addr=(A, p.port))
        assert t.get_extra_info("peername") == (A, p.port)
        assert isinstance(t, ustack.aio.DatagramTransport) and t.get_write_buffer_size() == 0
        with pytest.raises(ValueError, match="Invalid address"):
            t.sendto(b"x", (A, p.port + 1))
        t.sendto(b"warm up")  # ARP both ways first: unresolved queues hold only a few frames
        while not got:
            await asyncio.sleep(0.01)
        assert got.pop() == (b"warm up", (A, p.port))
        for size in (0, 1, 1472, 1473, 30_000):
            t.sendto(bytes([size % 256]) * size)
        while len(got) < 5:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        t.close()
        return got

    pair = Pair("hybrid")
    got = pair.run(server, client)
    assert [(len(d), d[:1]) for d, _ in got] == [
        (0, b""),
        (1, b"\x01"),
        (1472, bytes([1472 % 256])),
        (1473, bytes([1473 % 256])),
        (30_000, bytes([30_000 % 256])),
    ]
    assert all(addr == (A, pair.port) for _, addr in got)


# -- TLS over a ustack connection ----------------------------------------------------------


@pytest.fixture
def cert(tmp_path: Path) -> Iterator[tuple[str, str]]:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a test certificate")
    key, crt = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=ustack.test",
            "-addext",
            f"subjectAltName=IP:{A}",
            "-keyout",
            str(key),
            "-out",
            str(crt),
        ],
        check=True,
        capture_output=True,
    )
    yield str(crt), str(key)


def test_tls_streams_over_ustack(cert: tuple[str, str]):
    crt, key = cert

    async def server(p: Pair) -> None:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(crt, key)

        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            line = await r.readline()
            w.write(b"tls:" + line)
            await w.drain()
            w.close()

        srv = await asyncio.start_server(handle, A, 0, ssl=ctx)
        p.port = srv.sockets[0].getsockname()[1]
        p.ready.set()
        await p.until_stopped()
        srv.close()

    async def client(p: Pair) -> tuple[bytes, str | None]:
        ctx = ssl.create_default_context(cafile=crt)
        r, w = await asyncio.open_connection(A, p.port, ssl=ctx)
        w.write(b"hello\n")
        data = await r.read()
        version = w.get_extra_info("ssl_object").version()
        w.close()
        return data, version

    data, version = Pair("hybrid").run(server, client)
    assert data == b"tls:hello\n"
    assert version is not None and version.startswith("TLS")


# -- configuration and entry points --------------------------------------------------------


def test_config_keywords_beat_environment_beat_defaults(monkeypatch: pytest.MonkeyPatch):
    for var in ("USTACK_NAME", "USTACK_ADDR", "USTACK_GATEWAY", "USTACK_POLL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("USTACK_OFFLOAD", raising=False)
    monkeypatch.delenv("USTACK_PCAP", raising=False)
    kw = _resolve_config()
    assert (kw["name"], kw["addr"], kw["gateway"], kw["poll"]) == (
        "ustack",
        "198.18.0.2/24",
        None,
        "hybrid",
    )
    assert "offload" not in kw and "fault" not in kw
    monkeypatch.setenv("USTACK_NAME", "lab")
    monkeypatch.setenv("USTACK_POLL", "busy")
    monkeypatch.setenv("USTACK_GATEWAY", "198.18.0.1")
    kw = _resolve_config(poll="interrupt", offload=True, fault="loss=0.01,seed=1")
    assert (kw["name"], kw["poll"], kw["gateway"]) == ("lab", "interrupt", "198.18.0.1")
    assert kw["offload"] is True and kw["fault"] == "loss=0.01,seed=1"
    with pytest.raises(ValueError, match="poll"):
        _resolve_config(poll="sometimes")
    with pytest.raises(ValueError):
        _resolve_config(fault="loss=lots")
    with pytest.raises(ValueError, match="poll"):
        ustack.aio.install(poll="never")
    with pytest.raises(ValueError, match="either context or"):
        ustack.aio.new_event_loop(context=make_context_stub(), name="lab")


def make_context_stub() -> Context:
    dev = MemoryRing()
    return Context(dev, Stack(dev, Interface.from_config("198.18.0.2/24")))


def test_loop_on_a_memory_device_runs_plain_asyncio_and_rejects_foreign_hosts():
    ctx = make_context_stub()
    foreign = ctx.stack.tcp.listen(9999)  # someone else's listener on the same Context
    loop = ustack.aio.new_event_loop(context=ctx)
    assert isinstance(loop, UstackEventLoop) and loop.context is ctx
    left_open: list[int] = []

    async def main() -> list[object]:
        out: list[object] = []
        fired = asyncio.Event()
        loop.call_later(0.02, fired.set)
        await asyncio.wait_for(fired.wait(), 1)
        out.append(await loop.run_in_executor(None, sum, [1, 2, 3]))
        with pytest.raises(OSError) as info:
            await loop.create_server(asyncio.Protocol, "198.18.0.77", 0)
        out.append(info.value.errno)
        with pytest.raises(OSError) as info:
            await loop.create_connection(asyncio.Protocol, "2001:db8::1", 80)
        out.append(info.value.errno)
        with pytest.raises(ValueError, match="loopback"):
            await loop.create_server(asyncio.Protocol, [A, "127.0.0.1"], 0)
        # Loopback goes to the kernel, on the same loop.
        ksrv = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        out.append(isinstance(ksrv, asyncio.base_events.Server))
        ksrv.close()
        srv = await loop.create_server(asyncio.Protocol, None, 0)  # left open
        left_open.append(srv.sockets[0].getsockname()[1])
        return out

    try:
        assert loop.run_until_complete(main()) == [
            6,
            errno.EADDRNOTAVAIL,
            errno.EAFNOSUPPORT,
            True,
        ]
    finally:
        loop.close()
    assert loop.is_closed()
    ctx.poll_once()  # the Context handed in stays open
    # Closing the loop closed its own listener and left the other one alone.
    assert ctx.stack.tcp.listeners == {9999: foreign}
    assert left_open[0] != 9999


def test_start_tls_upgrade_and_sendfile_over_ustack(cert: tuple[str, str], tmp_path: Path):
    crt, key = cert
    payload = os.urandom(300_000)
    path = tmp_path / "payload.bin"
    path.write_bytes(payload)

    async def server(p: Pair) -> None:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(crt, key)

        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            assert await r.readline() == b"STARTTLS\n"
            w.write(b"go ahead\n")
            await w.drain()
            await w.start_tls(ctx)
            line = await r.readline()
            w.write(b"secret:" + line)
            await w.drain()
            w.close()

        async def file_handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            with open(path, "rb") as f:
                sent = await asyncio.get_running_loop().sendfile(w.transport, f)
            assert sent == len(payload)
            w.close()

        srv = await asyncio.start_server(handle, A, 0)
        fsrv = await asyncio.start_server(file_handle, A, 0)
        p.port = srv.sockets[0].getsockname()[1]
        p.server_result = fsrv.sockets[0].getsockname()[1]
        p.ready.set()
        await p.until_stopped()
        srv.close()
        fsrv.close()

    async def client(p: Pair) -> tuple[bytes, bytes]:
        r, w = await asyncio.open_connection(A, p.port)
        w.write(b"STARTTLS\n")
        assert await r.readline() == b"go ahead\n"
        await w.start_tls(ssl.create_default_context(cafile=crt), server_hostname=A)
        assert w.get_extra_info("ssl_object") is not None
        w.write(b"over tls\n")
        answer = await r.read()
        w.close()
        r2, w2 = await asyncio.open_connection(A, p.server_result)
        body = await r2.read()
        w2.close()
        return answer, body

    answer, body = Pair("hybrid").run(server, client)
    assert answer == b"secret:over tls\n"
    assert body == payload
