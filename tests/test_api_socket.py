"""The socket-like API and `ustack.socket` against the Linux kernel across the topology.

ustack runs in the test's main thread (its Context comes from
`ustack.configure`, as an application's would); the kernel peer runs in
threads with sockets made inside the client namespace, where the TAP has
198.18.0.1.  Each test builds its own topology.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import pytest

import ustack
import ustack.socket as usock
from tests.conftest import ns_run
from tests.kernel import ns_socket
from ustack.api import context as api_context
from ustack.topology import Topology

pytestmark = pytest.mark.netns

MODES = ["busy", "interrupt", "hybrid"]
KERNEL = "198.18.0.1"
US = "198.18.0.2"


class Peer:
    """A kernel-side function in a thread; join() re-raises what it raised."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None

        def run() -> None:
            try:
                self.result = fn()
            except BaseException as exc:  # reported by join()
                self.error = exc

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def join(self, timeout: float = 30) -> Any:
        """Drive this thread's ustack Context while waiting: ustack moves only when driven."""
        api_context.current().wait_until(lambda: not self.thread.is_alive(), timeout)
        self.thread.join(1)
        assert not self.thread.is_alive(), "kernel peer did not finish"
        if self.error is not None:
            raise self.error
        return self.result


def drive_until(done: Callable[[], bool], timeout: float = 10) -> None:
    """Run this thread's ustack Context until done() (the kernel peer runs by itself)."""
    assert api_context.current().wait_until(done, timeout), "condition not reached"


@pytest.fixture(params=MODES)
def api(request: pytest.FixtureRequest, topology: Topology) -> Iterator[Topology]:
    ustack.configure(name=topology.name, poll=request.param)
    try:
        yield topology
    finally:
        api_context.close_current()
        ustack.configure()


@pytest.fixture
def api_hybrid(topology: Topology) -> Iterator[Topology]:
    ustack.configure(name=topology.name, poll="hybrid")
    try:
        yield topology
    finally:
        api_context.close_current()
        ustack.configure()


def kernel_connect(topo: Topology, port: int, timeout: float = 10) -> socket.socket:
    s = ns_socket(topo.client_ns, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect((US, port))
    return s


def kernel_listener(topo: Topology, port: int) -> socket.socket:
    s = ns_socket(topo.client_ns, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((KERNEL, port))
    s.listen()
    s.settimeout(10)
    return s


def recv_all(s: socket.socket | usock.socket) -> bytes:
    out = bytearray()
    while chunk := s.recv(65536):
        out += chunk
    return bytes(out)


# ---------------------------------------------------------------------------
# Both directions, every polling mode
# ---------------------------------------------------------------------------


def test_ustack_server_echoes_kernel_client(api: Topology):
    data = os.urandom(1 << 20)
    srv = usock.socket(usock.AF_INET, usock.SOCK_STREAM)
    srv.bind(("", 5001))
    srv.listen()

    def client() -> bytes:
        s = kernel_connect(api, 5001)

        def write() -> None:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)

        writer = threading.Thread(target=write)
        writer.start()
        got = recv_all(s)
        writer.join(30)
        s.close()
        return got

    peer = Peer(client)
    srv.settimeout(10)
    conn, addr = srv.accept()
    assert addr[0] == KERNEL
    conn.settimeout(10)
    c = conn.connection
    assert c is not None
    buf = bytearray(65536)
    received = 0
    while n := conn.recv_into(buf):
        received += n
        conn.sendall(memoryview(buf)[:n])
    conn.close()
    assert peer.join() == data
    drive_until(lambda: str(c.state) == "CLOSED")  # our FIN (and all before it) acknowledged
    assert received == len(data)
    assert c.tcb.bytes_received == len(data)
    assert c.tcb.bytes_acked == len(data)


def test_ustack_client_to_kernel_server(api: Topology):
    data = os.urandom(1 << 20)
    ls = kernel_listener(api, 6001)

    def server() -> str:
        c, _ = ls.accept()
        c.settimeout(10)
        got = recv_all(c)
        c.sendall(hashlib.sha256(got).hexdigest().encode() + got[:1000])
        c.close()
        ls.close()
        return hashlib.sha256(got).hexdigest()

    peer = Peer(server)
    s = usock.create_connection((KERNEL, 6001), timeout=10)
    assert s.getpeername() == (KERNEL, 6001)
    assert s.getsockname()[0] == US
    s.sendall(data)
    s.shutdown(usock.SHUT_WR)
    reply = recv_all(s)
    s.close()
    digest = hashlib.sha256(data).hexdigest()
    assert peer.join() == digest
    assert reply == digest.encode() + data[:1000]


def test_udp_both_directions(api: Topology):
    srv = usock.socket(usock.AF_INET, usock.SOCK_DGRAM)
    srv.bind(("", 7007))
    srv.settimeout(5)

    def kernel_client() -> list[bytes]:
        k = ns_socket(api.client_ns, socket.SOCK_DGRAM)
        k.settimeout(5)
        got = []
        for i in range(20):
            k.sendto(b"%d" % i * (i + 1), (US, 7007))
            got.append(k.recv(65536))
        k.close()
        return got

    peer = Peer(kernel_client)
    for _ in range(20):
        data, addr = srv.recvfrom(65536)
        assert addr is not None and addr[0] == KERNEL
        srv.sendto(data[::-1], addr)
    assert peer.join() == [(b"%d" % i * (i + 1))[::-1] for i in range(20)]

    k = ns_socket(api.client_ns, socket.SOCK_DGRAM)
    k.bind((KERNEL, 7008))
    k.settimeout(5)
    cli = usock.socket(usock.AF_INET, usock.SOCK_DGRAM)
    cli.connect((KERNEL, 7008))
    cli.settimeout(5)
    big = os.urandom(8000)  # fragmented both ways
    echo = Peer(lambda: k.sendto(*k.recvfrom(65536)))
    cli.send(big)
    assert cli.recv(65536) == big
    echo.join()
    k.close()


def test_offload_configured_context_echoes_both_ways(topology: Topology):
    ustack.configure(name=topology.name, poll="hybrid", offload=True)
    try:
        ctx = api_context.current()
        assert ctx.stack.tcp.offload  # vnet headers: checksum offload and TSO
        data = os.urandom(2 << 20)
        ls = kernel_listener(topology, 6010)

        def echo() -> None:
            c, _ = ls.accept()
            c.settimeout(10)
            while chunk := c.recv(65536):
                c.sendall(chunk)
            c.close()

        peer = Peer(echo)
        s = usock.create_connection((KERNEL, 6010), timeout=10)
        s.setblocking(False)
        got = bytearray()
        view = memoryview(data)
        off = 0
        shut = False
        deadline = time.monotonic() + 30
        while True:
            assert time.monotonic() < deadline, f"echoed {len(got)} of {len(data)} bytes"
            if off < len(data):
                with contextlib.suppress(BlockingIOError):
                    off += s.send(view[off : off + 262144])
            elif not shut:
                s.shutdown(usock.SHUT_WR)
                shut = True
            try:
                chunk = s.recv(1 << 20)
            except BlockingIOError:
                continue
            if not chunk:
                break
            got += chunk
        s.close()
        peer.join()
        ls.close()
        assert bytes(got) == data
    finally:
        api_context.close_current()
        ustack.configure()


# ---------------------------------------------------------------------------
# Exceptions and edge cases
# ---------------------------------------------------------------------------


def test_accept_timeout(api_hybrid: Topology):
    srv = usock.create_server(("", 5002))
    srv.settimeout(0.3)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match="timed out"):
        srv.accept()
    assert 0.3 <= time.monotonic() - t0 < 1.0


def test_recv_on_reset_connection_returns_data_then_raises(api_hybrid: Topology):
    srv = usock.create_server(("", 5003))
    srv.settimeout(10)

    def client() -> None:
        s = kernel_connect(api_hybrid, 5003)
        s.sendall(b"last words")
        time.sleep(0.2)  # let them be acknowledged before the reset
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()

    peer = Peer(client)
    conn, _ = srv.accept()
    c = conn.connection
    assert c is not None
    drive_until(lambda: c.error is not None)
    peer.join()
    assert conn.recv(100) == b"last words"
    with pytest.raises(ConnectionResetError):
        conn.recv(100)
    assert conn.recv(100) == b""


def test_send_after_shutdown_raises_brokenpipe_and_kernel_sees_eof(api_hybrid: Topology):
    ls = kernel_listener(api_hybrid, 6002)
    peer = Peer(lambda: recv_all(ls.accept()[0]))
    s = usock.create_connection((KERNEL, 6002), timeout=10)
    s.sendall(b"only this")
    s.shutdown(usock.SHUT_WR)
    with pytest.raises(BrokenPipeError):
        s.send(b"more")
    assert peer.join() == b"only this"
    s.close()
    ls.close()


def test_connect_refused(api_hybrid: Topology):
    s = usock.socket()
    s.settimeout(5)
    with pytest.raises(ConnectionRefusedError):
        s.connect((KERNEL, 6999))
    assert usock.socket().connect_ex((KERNEL, 6999)) == errno.ECONNREFUSED


@pytest.fixture
def syn_drop(api_hybrid: Topology) -> Iterator[int]:
    """An nftables rule in the client namespace that drops SYNs to port 6998, counted."""
    ns = api_hybrid.client_ns
    ns_run(ns, "nft", "add", "table", "ip", "ustapi")
    ns_run(
        ns,
        "nft",
        "add chain ip ustapi input { type filter hook input priority 0 ; policy accept ; }",
    )
    ns_run(ns, "nft", "add rule ip ustapi input tcp dport 6998 tcp flags syn counter drop")
    try:
        yield 6998
    finally:
        ns_run(ns, "nft", "delete", "table", "ip", "ustapi", check=False)


def test_connect_times_out_when_the_kernel_drops_syns(api_hybrid: Topology, syn_drop: int):
    ls = kernel_listener(api_hybrid, syn_drop)  # listening, but SYNs never reach it
    s = usock.socket()
    s.settimeout(1.5)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match="timed out"):
        s.connect((KERNEL, syn_drop))
    assert 1.5 <= time.monotonic() - t0 < 2.5
    rules = ns_run(api_hybrid.client_ns, "nft", "list", "table", "ip", "ustapi").stdout
    # The SYN and its retransmission after the 1 s initial RTO were dropped.
    assert "counter packets 2 " in rules, rules
    s2 = usock.socket()
    s2.settimeout(0.3)
    assert s2.connect_ex((KERNEL, syn_drop)) == errno.EAGAIN
    ls.close()


def test_connect_times_out_to_an_address_nobody_answers_arp_for(api_hybrid: Topology):
    ctx = api_context.current()
    before = ctx.stack.stats().get("arp_out_requests", 0)
    s = usock.socket()
    s.settimeout(0.5)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match="timed out"):
        s.connect(("198.18.0.77", 80))
    assert 0.5 <= time.monotonic() - t0 < 1.5
    assert ctx.stack.stats().get("arp_out_requests", 0) > before


def test_close_with_unread_data_resets_the_kernel_peer(api_hybrid: Topology):
    srv = usock.create_server(("", 5004))
    srv.settimeout(10)
    go = threading.Event()

    def client() -> None:
        s = kernel_connect(api_hybrid, 5004)
        s.sendall(b"unread")
        go.wait(10)
        with pytest.raises(ConnectionResetError):
            s.recv(10)

    peer = Peer(client)
    conn, _ = srv.accept()
    c = conn.connection
    assert c is not None
    drive_until(lambda: c.readable_bytes == 6)
    conn.close()
    go.set()
    peer.join()


def test_so_linger_zero_aborts(api_hybrid: Topology):
    srv = usock.create_server(("", 5005))
    srv.settimeout(10)
    connected = threading.Event()
    closed = threading.Event()

    def client() -> None:
        s = kernel_connect(api_hybrid, 5005)
        connected.set()
        closed.wait(10)
        with pytest.raises(ConnectionResetError):
            s.recv(10)

    peer = Peer(client)
    conn, _ = srv.accept()
    drive_until(connected.is_set)  # a RST before connect() returns would fail connect()
    conn.setsockopt(usock.SOL_SOCKET, usock.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()
    closed.set()
    peer.join()


def test_so_linger_positive_waits_until_the_kernel_acknowledged(api_hybrid: Topology):
    srv = usock.create_server(("", 5006))
    srv.settimeout(10)
    data = os.urandom(500_000)
    peer = Peer(lambda: recv_all(kernel_connect(api_hybrid, 5006)))
    conn, _ = srv.accept()
    conn.setsockopt(usock.SOL_SOCKET, usock.SO_LINGER, struct.pack("ii", 1, 10))
    c = conn.connection
    assert c is not None
    conn.sendall(data)
    conn.close()
    assert c.tcb.unacked_bytes == 0
    assert str(c.state) in ("FIN-WAIT-2", "TIME-WAIT")
    assert peer.join() == data


def test_nonblocking_calls_raise_blockingioerror(api_hybrid: Topology):
    ls = kernel_listener(api_hybrid, 6003)
    s = usock.socket(usock.AF_INET, usock.SOCK_STREAM | usock.SOCK_NONBLOCK)
    with pytest.raises(BlockingIOError) as exc:
        s.connect((KERNEL, 6003))
    assert exc.value.errno == errno.EINPROGRESS
    c = s.connection
    assert c is not None
    drive_until(lambda: str(c.state) == "ESTABLISHED")
    assert s.getsockopt(usock.SOL_SOCKET, usock.SO_ERROR) == 0
    with pytest.raises(BlockingIOError) as exc:
        s.recv(10)
    assert exc.value.errno == errno.EAGAIN
    s.close()
    ls.close()


def test_tcp_info_and_nodelay_on_a_kernel_connection(api_hybrid: Topology):
    ls = kernel_listener(api_hybrid, 6004)
    peer = Peer(lambda: recv_all(ls.accept()[0]))
    s = usock.create_connection((KERNEL, 6004), timeout=10)
    s.setsockopt(usock.IPPROTO_TCP, usock.TCP_NODELAY, 1)
    s.sendall(bytes(100_000))
    c = s.connection
    assert c is not None
    drive_until(lambda: c.tcb.unacked_bytes == 0)
    raw = s.getsockopt(usock.IPPROTO_TCP, usock.TCP_INFO, 232)
    assert isinstance(raw, bytes)
    state, _ca, _rtx, _probes, _backoff, options = raw[:6]
    assert state == 1 and options & 1  # ESTABLISHED, timestamps negotiated with Linux
    snd_mss, rtt = struct.unpack_from("=I", raw, 16)[0], struct.unpack_from("=I", raw, 68)[0]
    assert snd_mss == 1448
    assert 0 < rtt < 1_000_000
    assert struct.unpack_from("=Q", raw, 120)[0] == 100_000  # tcpi_bytes_acked
    s.close()
    assert peer.join() == bytes(100_000)
    ls.close()


# ---------------------------------------------------------------------------
# Unchanged code that takes a socket module
# ---------------------------------------------------------------------------


def fetch_upper(mod: ModuleType, address: tuple[str, int], text: bytes) -> bytes:
    """Library-style code: only mod.create_connection, sendall, shutdown and recv."""
    with mod.create_connection(address, timeout=5) as s:
        s.sendall(text)
        s.shutdown(mod.SHUT_WR)
        out = b""
        while chunk := s.recv(4096):
            out += chunk
        return out


def test_function_taking_a_socket_module_runs_on_ustack_socket(api_hybrid: Topology):
    ls = kernel_listener(api_hybrid, 6005)

    def upper_server() -> None:
        c, _ = ls.accept()
        c.sendall(recv_all(c).upper())
        c.close()

    peer = Peer(upper_server)
    assert fetch_upper(usock, (KERNEL, 6005), b"hello, kernel") == b"HELLO, KERNEL"
    peer.join()
    ls.close()


@pytest.fixture
def memcached(api_hybrid: Topology) -> Iterator[tuple[str, int]]:
    port = 11311
    proc = subprocess.Popen(
        [
            *("ip", "netns", "exec", api_hybrid.client_ns),
            *("memcached", "-u", "root", "-l", KERNEL, "-p", str(port), "-U", "0", "-t", "1"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            probe = ns_socket(api_hybrid.client_ns, socket.SOCK_STREAM)
            try:
                probe.connect((KERNEL, port))
                break
            except OSError:
                assert time.monotonic() < deadline, "memcached did not start"
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                time.sleep(0.05)
            finally:
                probe.close()
        yield (KERNEL, port)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_pymemcache_client_works_unchanged_on_ustack_socket(memcached: tuple[str, int]):
    from pymemcache.client.base import Client  # type: ignore[import-untyped]

    client = Client(memcached, socket_module=usock, connect_timeout=5, timeout=5, no_delay=True)
    big = os.urandom(200_000)
    assert client.set("greeting", b"hello from ustack") is True
    assert client.get("greeting") == b"hello from ustack"
    assert client.set("big", big) is True
    assert client.get("big") == big
    assert client.get_many(["greeting", "missing"]) == {"greeting": b"hello from ustack"}
    assert client.incr("n", 1) is None
    client.set("n", b"41")
    assert client.incr("n", 1) == 42
    assert client.delete("greeting") is True
    assert client.get("greeting") is None
    sock = client.sock
    assert isinstance(sock, usock.socket)
    assert sock.getsockopt(usock.IPPROTO_TCP, usock.TCP_NODELAY) == 1
    client.close()


def test_namespace_looks_like_the_socket_module():
    assert usock.has_ipv6 is False
    assert usock.error is OSError and usock.timeout is TimeoutError
    assert usock.gaierror is socket.gaierror and usock.herror is socket.herror
    for name in (
        "AF_INET",
        "SOCK_STREAM",
        "SOCK_DGRAM",
        "SOL_SOCKET",
        "IPPROTO_TCP",
        "TCP_NODELAY",
        "SO_REUSEADDR",
        "SO_RCVBUF",
        "SO_SNDBUF",
        "SO_LINGER",
        "SO_KEEPALIVE",
        "SHUT_RD",
        "SHUT_WR",
        "SHUT_RDWR",
        "IP_TOS",
    ):
        assert getattr(usock, name) == getattr(socket, name), name
    assert usock.inet_aton("198.18.0.1") == bytes([198, 18, 0, 1])
    assert usock.inet_ntoa(bytes([198, 18, 0, 2])) == "198.18.0.2"
    with pytest.raises(AttributeError):
        usock.gethostbyaddr  # noqa: B018 - functions reaching the kernel are not forwarded
    assert usock.getaddrinfo("198.18.0.1", 80, usock.AF_UNSPEC, usock.SOCK_STREAM) == (
        socket.getaddrinfo("198.18.0.1", 80, socket.AF_UNSPEC, socket.SOCK_STREAM)
    )
    assert usock.getaddrinfo("198.18.0.1", "80") == [
        i for i in socket.getaddrinfo("198.18.0.1", "80") if i[1] != socket.SOCK_RAW
    ]
    with pytest.raises(socket.gaierror) as exc:
        usock.getaddrinfo("memcached.example", 80)
    assert exc.value.errno == socket.EAI_NONAME
    with pytest.raises(socket.gaierror):
        usock.getaddrinfo("198.18.0.1", "http")
    with pytest.raises(socket.gaierror):
        usock.getaddrinfo("198.18.0.1", 80, usock.AF_INET6)
    with pytest.raises(OSError) as oexc:
        usock.socket(usock.AF_INET6)
    assert oexc.value.errno == errno.EAFNOSUPPORT
    assert usock.gethostbyname("198.18.0.9") == "198.18.0.9"


def test_default_timeout_applies_to_new_sockets(api_hybrid: Topology):
    assert usock.getdefaulttimeout() is None
    usock.setdefaulttimeout(0.2)
    try:
        s = usock.socket()
        assert s.gettimeout() == 0.2
    finally:
        usock.setdefaulttimeout(None)
