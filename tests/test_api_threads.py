"""Threads with one Context each, and the thread confinement of sockets and Epolls.

Each thread that uses `ustack.socket` gets its own Context on its own queue
of the topology's multi-queue TAP (`ustack.api.context.current()`).  The
Contexts of one process are one host: one IPv4 address, one MAC, and the
kernel steers each flow to one queue.  The namespace tests run two such
threads at once, as clients of a kernel echo server and as two listeners
on one port (marked netns); the unit tests (MemoryRing, no namespace)
check that a socket or Epoll used from a thread that does not own it
raises WrongThreadError before anything changes, and stays usable by its
owner.  The client test fails on a build whose threads' Contexts have
their own MACs, or that sends an active open's SYN without claiming its
flow first.
"""

from __future__ import annotations

import contextlib
import random
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import ustack
import ustack.socket as usock
from tests.kernel import ns_socket
from tests.test_api_unit import Wire, connected_pair, read_exactly
from ustack.api import context as api_context
from ustack.api.epoll import EPOLLIN, Epoll
from ustack.api.socket import Socket
from ustack.loop import WrongThreadError
from ustack.topology import Topology

KERNEL = "198.18.0.1"
US = "198.18.0.2"
THREADS = 2


def run_threads(fn: Callable[[int], Any], count: int = THREADS, timeout: float = 120) -> list[Any]:
    """Run fn(i) in `count` threads at once; their results, or the first error raised."""
    results: list[Any] = [None] * count
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            results[i] = fn(i)
        except BaseException as exc:  # re-raised in the test's thread
            errors.append(exc)
        finally:
            api_context.close_current()

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), "a thread did not finish"
    if errors:
        raise errors[0]
    return results


@pytest.fixture
def threads_api(topology: Topology) -> Iterator[Topology]:
    ustack.configure(name=topology.name, poll="hybrid")
    try:
        yield topology
    finally:
        ustack.configure()


# ---------------------------------------------------------------------------
# Two threads, two Contexts, one host (kernel peer in the client namespace)
# ---------------------------------------------------------------------------


class KernelEchoServer:
    """A kernel TCP echo server on 198.18.0.1 in the client namespace, a thread per client."""

    def __init__(self, topo: Topology, port: int) -> None:
        self.sock = ns_socket(topo.client_ns, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((KERNEL, port))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.stop = threading.Event()
        self.accepted = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.accepted += 1
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        conn.settimeout(30)
        with conn, contextlib.suppress(OSError):
            while chunk := conn.recv(65536):
                conn.sendall(chunk)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


@pytest.mark.netns
def test_two_threads_with_own_contexts_are_concurrent_tcp_clients(threads_api: Topology):
    port = 7100
    server = KernelEchoServer(threads_api, port)
    barrier = threading.Barrier(THREADS, timeout=30)
    conns_per_thread = 3
    rounds = 120  # per connection

    def client(i: int) -> dict[str, Any]:
        rng = random.Random(i)
        ctx = api_context.current()  # this thread's own Context, on its own queue
        barrier.wait()  # both Contexts are up before either sends
        sent = 0
        for _ in range(conns_per_thread):
            with usock.create_connection((KERNEL, port), timeout=20) as s:
                for r in range(rounds):
                    size = 32768 if r % 40 == 39 else rng.randint(1, 2000)
                    msg = rng.randbytes(size)
                    s.sendall(msg)
                    assert read_exactly(s, size) == msg
                    sent += size
                s.shutdown(usock.SHUT_WR)
                assert s.recv(1) == b""
        return {"ctx": ctx, "mac": ctx.stack.iface.mac, "bytes": sent, "stats": ctx.stack.stats()}

    try:
        results = run_threads(client)
    finally:
        server.close()
    assert server.accepted == THREADS * conns_per_thread
    assert all(r["bytes"] > 200_000 for r in results)
    assert results[0]["ctx"] is not results[1]["ctx"]
    assert len({r["mac"] for r in results}) == 1  # one host: one MAC for every Context
    for r in results:
        # Every frame reached the Context of its flow: none was for another
        # MAC, and no Context reset a connection it did not know.
        assert r["stats"].get("drop_eth_not_for_us", 0) == 0, r["stats"]
        assert r["stats"].get("tcp_out_rsts", 0) == 0, r["stats"]
        assert r["stats"]["tcp_out_flow_claims"] == conns_per_thread


@pytest.mark.netns
def test_two_threads_listen_on_one_port_and_share_kernel_connections(threads_api: Topology):
    port = 7200
    total = 40
    barrier = threading.Barrier(THREADS + 1, timeout=30)
    stop = threading.Event()

    def server(i: int) -> int:
        served = 0
        with usock.socket(usock.AF_INET, usock.SOCK_STREAM) as srv:
            srv.bind(("", port))
            srv.listen(64)
            srv.settimeout(0.1)
            barrier.wait()
            while not stop.is_set():
                try:
                    conn, _ = srv.accept()
                except TimeoutError:
                    continue
                with conn:
                    conn.settimeout(20)
                    while chunk := conn.recv(65536):
                        conn.sendall(chunk)
                served += 1
        return served

    def clients() -> int:
        ok = 0
        for n in range(total):
            msg = b"connection %d " % n * 50
            s = ns_socket(threads_api.client_ns, socket.SOCK_STREAM)
            with s:
                s.settimeout(20)
                s.connect((US, port))
                s.sendall(msg)
                s.shutdown(socket.SHUT_WR)
                got = bytearray()
                while chunk := s.recv(65536):
                    got += chunk
            ok += bytes(got) == msg
        return ok

    served_ok: list[int] = []

    def kernel_side() -> None:
        try:
            barrier.wait()
            served_ok.append(clients())
        finally:
            stop.set()

    peer = threading.Thread(target=kernel_side, daemon=True)
    peer.start()
    shares = run_threads(server)
    peer.join(30)
    assert served_ok == [total]
    assert sum(shares) == total
    # How the kernel spreads flows over queues is its business (a flow
    # hash); both threads getting some is expected, not required.
    print(f"connections per thread: {shares}")


# ---------------------------------------------------------------------------
# Thread confinement (MemoryRing, no namespace)
# ---------------------------------------------------------------------------


def in_other_thread(fn: Callable[[], object]) -> BaseException | None:
    """Run fn in a new thread; what it raised (None if nothing)."""
    caught: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as exc:
            caught.append(exc)

    t = threading.Thread(target=run)
    t.start()
    t.join(10)
    return caught[0] if caught else None


@pytest.fixture
def wire() -> Iterator[Wire]:
    w = Wire("interrupt")
    yield w
    api_context.use(None)


def test_foreign_thread_socket_calls_raise_wrong_thread_and_change_nothing(wire: Wire):
    cli, conn, srv = connected_pair(wire)
    frames_before = wire.ring_a.frames_out
    calls: dict[str, Callable[[], object]] = {
        "send": lambda: cli.send(b"x"),
        "sendall": lambda: cli.sendall(b"x"),
        "sendto": lambda: cli.sendto(b"x", (US, 7000)),
        "recv": lambda: cli.recv(10),
        "recv_into": lambda: cli.recv_into(bytearray(10)),
        "recvfrom": lambda: cli.recvfrom(10),
        "connect": lambda: cli.connect((US, 7000)),
        "accept": srv.accept,
        "setsockopt": lambda: cli.setsockopt(usock.IPPROTO_TCP, usock.TCP_NODELAY, 1),
        "shutdown": lambda: cli.shutdown(usock.SHUT_WR),
        "close": cli.close,
        "close listener": srv.close,
    }
    for name, call in calls.items():
        exc = in_other_thread(call)
        assert isinstance(exc, WrongThreadError), (name, exc)
        assert "thread" in str(exc)
    assert wire.ring_a.frames_out == frames_before  # nothing was queued or sent
    assert cli.connection is not None and cli.connection.tcb.unacked_bytes == 0
    # The owner still has working sockets.
    cli.sendall(b"hello")
    assert read_exactly(conn, 5) == b"hello"
    conn.sendall(b"world")
    assert read_exactly(cli, 5) == b"world"
    cli.close()
    assert conn.recv(10) == b""
    srv.close()


def test_socket_made_on_another_threads_context_raises_wrong_thread(wire: Wire):
    sockets_before = len(api_context.state(wire.a).sockets)
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):

        def make(kind: int = kind) -> Socket:
            return Socket(socket.AF_INET, kind, context=wire.a)

        exc = in_other_thread(make)
        assert isinstance(exc, WrongThreadError), exc
    assert len(api_context.state(wire.a).sockets) == sockets_before
    assert not wire.a.stack.udp.ports


def test_foreign_thread_udp_calls_raise_wrong_thread(wire: Wire):
    a = Socket(socket.AF_INET, socket.SOCK_DGRAM, context=wire.a)
    b = Socket(socket.AF_INET, socket.SOCK_DGRAM, context=wire.b)
    b.bind(("", 5300))
    for call in (
        lambda: a.sendto(b"x", (US, 5300)),
        lambda: b.recvfrom(10),
        lambda: b.bind(("", 5301)),
    ):
        assert isinstance(in_other_thread(call), WrongThreadError)
    assert a.getsockname() == ("0.0.0.0", 0)  # the foreign sendto did not bind it
    a.sendto(b"ping", (US, 5300))
    b.settimeout(5)
    assert b.recvfrom(10) == (b"ping", ("198.18.0.1", a.getsockname()[1]))


def test_foreign_thread_epoll_calls_raise_wrong_thread_and_keep_registrations(wire: Wire):
    cli, conn, srv = connected_pair(wire)
    ep = Epoll(context=wire.b)
    ep.register(conn, EPOLLIN)
    calls: dict[str, Callable[[], object]] = {
        "register": lambda: ep.register(srv, EPOLLIN),
        "modify": lambda: ep.modify(conn, EPOLLIN),
        "unregister": lambda: ep.unregister(conn),
        "poll": lambda: ep.poll(0),
        "close": ep.close,
    }
    for name, call in calls.items():
        exc = in_other_thread(call)
        assert isinstance(exc, WrongThreadError), (name, exc)
    assert not ep.closed
    cli.sendall(b"ready")
    assert ep.poll(5) == [(conn, EPOLLIN)]
    ep.unregister(conn)
    ep.close()


@pytest.mark.netns
def test_two_threads_with_own_asyncio_loops_are_concurrent_tcp_clients(topology: Topology):
    """The same with `ustack.aio.run` in each thread: its loop's Context joins the host."""
    import asyncio

    import ustack.aio

    port = 7101
    server = KernelEchoServer(topology, port)
    barrier = threading.Barrier(THREADS, timeout=30)

    async def client(i: int) -> tuple[bytes, int]:
        rng = random.Random(100 + i)
        loop = asyncio.get_running_loop()
        assert isinstance(loop, ustack.aio.UstackEventLoop)
        await loop.run_in_executor(None, barrier.wait)  # both loops are up before either sends
        sent = 0
        for _ in range(3):
            reader, writer = await asyncio.open_connection(KERNEL, port)
            for _ in range(60):
                msg = rng.randbytes(rng.randint(1, 3000))
                writer.write(msg)
                assert await asyncio.wait_for(reader.readexactly(len(msg)), 20) == msg
                sent += len(msg)
            writer.close()
            await writer.wait_closed()
        return loop.context.stack.iface.mac, sent

    try:
        results = run_threads(lambda i: ustack.aio.run(client(i), name=topology.name))
    finally:
        server.close()
    macs = {mac for mac, _ in results}
    assert len(macs) == 1, macs  # one host
    assert all(sent > 0 for _, sent in results)
    assert server.accepted == 3 * THREADS
