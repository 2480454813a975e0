"""The native API over two Stacks wired back to back, with simulated time.

Two Contexts on MemoryRings joined by a `Wire`: what one transmits is
queued for the other, and each receive burst of one first lets the other
run one burst, so a blocking call on either side drives both.  Time is a
fake clock shared by both: a Context that sleeps moves it forward to its
timeout or to the next timer of either side, so timeouts of seconds take
no real time and every run is the same.  The Wire can be cut to play a
dead peer.

A is the client side at 198.18.0.1, B the server side at 198.18.0.2.
"""

from __future__ import annotations

import contextlib
import errno
import io
import socket as std
import struct
from collections.abc import Iterator

import pytest

import ustack.socket as usock
from ustack.api import context as api_context
from ustack.api.epoll import (
    EPOLLERR,
    EPOLLET,
    EPOLLHUP,
    EPOLLIN,
    EPOLLONESHOT,
    EPOLLOUT,
    EPOLLRDHUP,
    Epoll,
)
from ustack.api.socket import TCP_INFO_STRUCT, Socket
from ustack.dev.memring import MemoryRing
from ustack.loop import Context
from ustack.stack.interface import Interface
from ustack.stack.stack import Stack
from ustack.tcp.tcb import State

A_IP = "198.18.0.1"
B_IP = "198.18.0.2"
ABSENT_IP = "198.18.0.77"
T0 = 5_000_000
IN = EPOLLIN
OUT = EPOLLOUT


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now


class WireRing(MemoryRing):
    """A MemoryRing whose transmitted frames go to the peer's inbox."""

    def __init__(self, wire: Wire) -> None:
        super().__init__()
        self.wire = wire
        self.peer: WireRing | None = None
        self.peer_ctx: Context | None = None
        self.frames_out = 0

    def _write_burst(self, n: int) -> int:
        start = len(self.sent)
        r = super()._write_burst(n)
        frames = self.sent[start:]
        del self.sent[start:]
        self.frames_out += len(frames)
        if not self.wire.cut and self.peer is not None:
            for f in frames:
                self.peer.inject(f)
        return r

    def rx_burst(self, max_frames: int = 32) -> int:
        wire = self.wire
        wire.clock.now += 1
        if not wire.pumping and self.peer_ctx is not None:
            wire.pumping = True
            try:
                self.peer_ctx.poll_once()
            finally:
                wire.pumping = False
        return super().rx_burst(max_frames)

    def wait(self, timeout_ms: int) -> bool:
        super().wait(timeout_ms)
        if self._inbox:
            return True
        assert self.peer is not None and self.peer_ctx is not None
        if self.peer._inbox:
            return False  # the next burst lets the peer run
        clock = self.wire.clock
        until = clock.now + max(timeout_ms, 1) * 1000
        peer_deadline = self.peer_ctx.stack.next_deadline_us()
        if peer_deadline is not None and peer_deadline < until:
            until = max(peer_deadline, clock.now + 1)
        clock.now = until
        return False


class Wire:
    def __init__(self, poll: str = "interrupt") -> None:
        self.clock = Clock()
        self.pumping = False
        self.cut = False
        self.ring_a = WireRing(self)
        self.ring_b = WireRing(self)
        self.a = self._context(self.ring_a, A_IP, poll)
        self.b = self._context(self.ring_b, B_IP, poll)
        self.ring_a.peer, self.ring_a.peer_ctx = self.ring_b, self.b
        self.ring_b.peer, self.ring_b.peer_ctx = self.ring_a, self.a
        self.a.start()
        self.b.start()

    def _context(self, ring: WireRing, ip: str, poll: str) -> Context:
        stack = Stack(ring, Interface.from_config(f"{ip}/24"))
        return Context(ring, stack, poll=poll, clock=self.clock)

    def seconds(self) -> float:
        return (self.clock.now - T0) / 1e6


@pytest.fixture(params=["interrupt", "hybrid"])
def wire(request: pytest.FixtureRequest) -> Iterator[Wire]:
    w = Wire(request.param)
    yield w
    api_context.use(None)


def tcp(ctx: Context) -> Socket:
    return Socket(std.AF_INET, std.SOCK_STREAM, context=ctx)


def udp(ctx: Context) -> Socket:
    return Socket(std.AF_INET, std.SOCK_DGRAM, context=ctx)


def listener(w: Wire, port: int = 7000, **opts: int) -> Socket:
    srv = tcp(w.b)
    for name, value in opts.items():
        srv.setsockopt(std.SOL_SOCKET, getattr(std, name), value)
    srv.bind(("", port))
    srv.listen()
    return srv


def connected_pair(w: Wire, port: int = 7000) -> tuple[Socket, Socket, Socket]:
    """(client on A, accepted socket on B, listening socket on B)."""
    srv = listener(w, port)
    cli = tcp(w.a)
    cli.settimeout(5)
    cli.connect((B_IP, port))
    srv.settimeout(5)
    conn, addr = srv.accept()
    assert addr == cli.getsockname()
    return cli, conn, srv


def read_exactly(sock: Socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        assert chunk, f"EOF after {len(buf)} of {n} bytes"
        buf += chunk
    return bytes(buf)


# ---------------------------------------------------------------------------
# Construction and closed sockets
# ---------------------------------------------------------------------------


def test_socket_ipv6_family_raises_eafnosupport(wire: Wire):
    with pytest.raises(OSError) as exc:
        Socket(std.AF_INET6, std.SOCK_STREAM, context=wire.a)
    assert exc.value.errno == errno.EAFNOSUPPORT


def test_socket_raw_type_raises_esocktnosupport(wire: Wire):
    with pytest.raises(OSError) as exc:
        Socket(std.AF_INET, std.SOCK_RAW, context=wire.a)
    assert exc.value.errno == errno.ESOCKTNOSUPPORT


def test_socket_udp_proto_on_stream_raises_eprotonosupport(wire: Wire):
    with pytest.raises(OSError) as exc:
        Socket(std.AF_INET, std.SOCK_STREAM, std.IPPROTO_UDP, context=wire.a)
    assert exc.value.errno == errno.EPROTONOSUPPORT


def test_socket_fileno_argument_is_refused(wire: Wire):
    with pytest.raises(OSError, match="no file descriptor"):
        Socket(std.AF_INET, std.SOCK_STREAM, fileno=3, context=wire.a)


def test_socket_nonblock_type_flag_sets_timeout_zero(wire: Wire):
    s = Socket(std.AF_INET, std.SOCK_STREAM | std.SOCK_NONBLOCK, context=wire.a)
    assert s.gettimeout() == 0.0
    assert not s.getblocking()
    assert s.type == std.SOCK_STREAM and s.family == std.AF_INET and s.proto == 0


def test_closed_socket_raises_ebadf_and_close_twice_is_harmless(wire: Wire):
    s = tcp(wire.a)
    assert s.fileno() == -1
    s.close()
    s.close()
    for call in (lambda: s.recv(1), lambda: s.send(b"x"), s.getsockname, lambda: s.listen()):
        with pytest.raises(OSError) as exc:
            call()
        assert exc.value.errno == errno.EBADF
    assert "closed" in repr(s)


def test_settimeout_rejects_negative_and_setblocking_maps_to_timeout(wire: Wire):
    s = tcp(wire.a)
    with pytest.raises(ValueError, match="Timeout value out of range"):
        s.settimeout(-1)
    s.settimeout(2.5)
    assert s.gettimeout() == 2.5 and s.getblocking()
    s.setblocking(False)
    assert s.gettimeout() == 0.0
    s.setblocking(True)
    assert s.gettimeout() is None


def test_context_manager_closes(wire: Wire):
    with tcp(wire.a) as s:
        s.bind(("", 0))
    with pytest.raises(OSError):
        s.getsockname()


# ---------------------------------------------------------------------------
# Addresses and bind
# ---------------------------------------------------------------------------


def test_unbound_getsockname_is_any_zero_and_getpeername_enotconn(wire: Wire):
    s = tcp(wire.a)
    assert s.getsockname() == ("0.0.0.0", 0)
    with pytest.raises(OSError) as exc:
        s.getpeername()
    assert exc.value.errno == errno.ENOTCONN


def test_bind_any_reports_any_address_bind_own_reports_own(wire: Wire):
    s1, s2 = tcp(wire.b), tcp(wire.b)
    s1.bind(("", 7001))
    s2.bind((B_IP, 7002))
    assert s1.getsockname() == ("0.0.0.0", 7001)
    assert s2.getsockname() == (B_IP, 7002)


def test_bind_port_zero_picks_an_ephemeral_port(wire: Wire):
    s = tcp(wire.b)
    s.bind(("", 0))
    port = s.getsockname()[1]
    assert 32768 <= port <= 60999


def test_bind_foreign_address_raises_eaddrnotavail(wire: Wire):
    with pytest.raises(OSError) as exc:
        tcp(wire.b).bind((A_IP, 7000))
    assert exc.value.errno == errno.EADDRNOTAVAIL


def test_bind_host_name_raises_gaierror_without_resolving(wire: Wire):
    with pytest.raises(std.gaierror) as exc:
        tcp(wire.b).bind(("localhost", 7000))
    assert exc.value.errno == std.EAI_NONAME


def test_bind_bad_address_shapes_raise_like_cpython(wire: Wire):
    s = tcp(wire.b)
    with pytest.raises(TypeError, match="must be tuple"):
        s.bind("198.18.0.2:80")  # type: ignore[arg-type]
    with pytest.raises(OverflowError, match="port must be 0-65535"):
        s.bind(("", 70000))


def test_bind_same_port_twice_raises_eaddrinuse(wire: Wire):
    s1, s2 = tcp(wire.b), tcp(wire.b)
    s1.bind(("", 7000))
    with pytest.raises(OSError) as exc:
        s2.bind(("", 7000))
    assert exc.value.errno == errno.EADDRINUSE


def test_bind_same_port_with_reuseaddr_on_both_is_allowed_until_one_listens(wire: Wire):
    s1, s2, s3 = tcp(wire.b), tcp(wire.b), tcp(wire.b)
    for s in (s1, s2, s3):
        s.setsockopt(std.SOL_SOCKET, std.SO_REUSEADDR, 1)
    s1.bind(("", 7000))
    s2.bind(("", 7000))
    s1.listen()
    with pytest.raises(OSError) as exc:
        s3.bind(("", 7000))
    assert exc.value.errno == errno.EADDRINUSE


def test_bind_port_of_closed_socket_is_free_again(wire: Wire):
    s1 = tcp(wire.b)
    s1.bind(("", 7000))
    s1.close()
    s2 = tcp(wire.b)
    s2.bind(("", 7000))
    assert s2.getsockname()[1] == 7000


def test_bind_port_held_by_time_wait_needs_reuseaddr(wire: Wire):
    cli, conn, _srv = connected_pair(wire)
    local_port = cli.getsockname()[1]
    cli.close()  # active close: the client's connection goes to TIME-WAIT
    assert conn.recv(10) == b""
    conn.close()
    wire.a.wait_until(
        lambda: cli.connection is not None and cli.connection.state is State.TIME_WAIT, 1
    )
    again = tcp(wire.a)
    with pytest.raises(OSError) as exc:
        again.bind(("", local_port))
    assert exc.value.errno == errno.EADDRINUSE
    again.setsockopt(std.SOL_SOCKET, std.SO_REUSEADDR, 1)
    again.bind(("", local_port))


def test_bind_twice_raises_einval(wire: Wire):
    s = tcp(wire.b)
    s.bind(("", 7000))
    with pytest.raises(OSError) as exc:
        s.bind(("", 7001))
    assert exc.value.errno == errno.EINVAL


# ---------------------------------------------------------------------------
# Connect, accept
# ---------------------------------------------------------------------------


def test_connect_accept_addresses_on_both_sides(wire: Wire):
    cli, conn, _ = connected_pair(wire)
    assert cli.getpeername() == (B_IP, 7000)
    assert conn.getsockname() == (B_IP, 7000)
    assert conn.getpeername() == (A_IP, cli.getsockname()[1])
    assert cli.getsockname()[0] == A_IP


def test_connect_from_bound_port_uses_it(wire: Wire):
    listener(wire)
    cli = tcp(wire.a)
    cli.bind(("", 40000))
    cli.connect((B_IP, 7000))
    assert cli.getsockname() == (A_IP, 40000)


def test_accepted_socket_gets_default_timeout_not_the_listeners(wire: Wire):
    srv = listener(wire)
    srv.settimeout(3)
    cli = tcp(wire.a)
    cli.connect((B_IP, 7000))
    conn, _ = srv.accept()
    assert conn.gettimeout() is None


def test_accept_timeout_raises_timeout_after_that_long(wire: Wire):
    srv = listener(wire)
    srv.settimeout(0.25)
    t0 = wire.clock.now
    with pytest.raises(TimeoutError, match="timed out"):
        srv.accept()
    waited = (wire.clock.now - t0) / 1e6
    assert 0.25 <= waited < 0.3


def test_accept_nonblocking_raises_blockingioerror_eagain(wire: Wire):
    srv = listener(wire)
    srv.setblocking(False)
    with pytest.raises(BlockingIOError) as exc:
        srv.accept()
    assert exc.value.errno == errno.EAGAIN


def test_accept_on_non_listening_socket_raises_einval(wire: Wire):
    with pytest.raises(OSError) as exc:
        tcp(wire.b).accept()
    assert exc.value.errno == errno.EINVAL


def test_connect_refused_raises_connectionrefusederror(wire: Wire):
    cli = tcp(wire.a)
    with pytest.raises(ConnectionRefusedError) as exc:
        cli.connect((B_IP, 7999))
    assert exc.value.errno == errno.ECONNREFUSED
    assert tcp(wire.a).connect_ex((B_IP, 7999)) == errno.ECONNREFUSED


def test_connect_to_absent_host_times_out_at_the_socket_timeout(wire: Wire):
    cli = tcp(wire.a)
    cli.settimeout(0.5)
    t0 = wire.clock.now
    with pytest.raises(TimeoutError, match="timed out"):
        cli.connect((ABSENT_IP, 80))
    assert 0.5 <= (wire.clock.now - t0) / 1e6 < 0.6
    assert cli.connection is None  # the attempt was abandoned
    cli2 = tcp(wire.a)
    cli2.settimeout(0.5)
    assert cli2.connect_ex((ABSENT_IP, 80)) == errno.EAGAIN  # CPython's value for a timeout


def test_connect_blocking_gives_etimedout_after_syn_retries(wire: Wire):
    cli = tcp(wire.a)
    wire.cut = True
    with pytest.raises(TimeoutError) as exc:
        cli.connect((B_IP, 7000))
    assert exc.value.errno == errno.ETIMEDOUT
    # 1 s initial RTO doubled six times: 1+2+4+8+16+32+64 = 127 s of simulated time.
    assert 127 <= wire.seconds() < 130


def test_connect_off_link_without_gateway_raises_enetunreach(wire: Wire):
    with pytest.raises(OSError) as exc:
        tcp(wire.a).connect(("10.1.2.3", 80))
    assert exc.value.errno == errno.ENETUNREACH


def test_connect_to_own_address_raises_enetunreach(wire: Wire):
    with pytest.raises(OSError) as exc:
        tcp(wire.a).connect((A_IP, 80))
    assert exc.value.errno == errno.ENETUNREACH


def test_connect_nonblocking_inprogress_then_ealready_then_established(wire: Wire):
    listener(wire)
    cli = tcp(wire.a)
    cli.setblocking(False)
    with pytest.raises(BlockingIOError) as exc:
        cli.connect((B_IP, 7000))
    assert exc.value.errno == errno.EINPROGRESS
    assert cli.connection is not None and cli.connection.state is State.SYN_SENT
    with pytest.raises(BlockingIOError) as exc:
        cli.connect((B_IP, 7000))
    assert exc.value.errno == errno.EALREADY
    wire.a.wait_until(
        lambda: cli.connection is not None and cli.connection.state is State.ESTABLISHED, 1
    )
    assert cli.getsockopt(std.SOL_SOCKET, std.SO_ERROR) == 0
    assert cli.connect_ex((B_IP, 7000)) == errno.EISCONN


def test_connect_nonblocking_refused_reports_so_error_once(wire: Wire):
    cli = tcp(wire.a)
    cli.setblocking(False)
    assert cli.connect_ex((B_IP, 7999)) == errno.EINPROGRESS
    wire.a.wait_until(
        lambda: cli.connection is not None and cli.connection.state is State.CLOSED, 1
    )
    assert cli.getsockopt(std.SOL_SOCKET, std.SO_ERROR) == errno.ECONNREFUSED
    assert cli.getsockopt(std.SOL_SOCKET, std.SO_ERROR) == 0


def test_connect_host_name_raises_gaierror(wire: Wire):
    with pytest.raises(std.gaierror):
        tcp(wire.a).connect(("example.invalid", 80))


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------


def pump(src: Socket, dst: Socket, data: bytes) -> bytes:
    """Send `data` from src while reading it at dst, in one thread; what dst got."""
    src.setblocking(False)
    view = memoryview(data)
    got = bytearray()
    off = 0
    while len(got) < len(data):
        if off < len(data):
            with contextlib.suppress(BlockingIOError):
                off += src.send(view[off : off + 100_000])
        dst.settimeout(1)
        got += dst.recv(65536)
    return bytes(got)


def test_send_recv_one_megabyte_both_ways_intact(wire: Wire):
    cli, conn, _ = connected_pair(wire)
    data = bytes(range(256)) * 4096
    assert pump(cli, conn, data) == data
    assert pump(conn, cli, data[::-1]) == data[::-1]


def test_sendall_smaller_than_the_buffer_returns_at_once(wire: Wire):
    cli, conn, _ = connected_pair(wire)
    t0 = wire.clock.now
    cli.sendall(bytes(100_000))
    assert wire.clock.now - t0 < 100  # queued, no waiting
    assert read_exactly(conn, 100_000) == bytes(100_000)


def test_recv_into_fills_the_callers_buffer_and_honours_nbytes(wire: Wire):
    cli, conn, _ = connected_pair(wire)
    cli.sendall(b"abcdefghij")
    buf = bytearray(b"." * 16)
    view = memoryview(buf)
    n = conn.recv_into(view[2:], 4)
    assert n == 4 and bytes(buf) == b"..abcd.........."
    n = conn.recv_into(view[6:])
    assert n == 6 and bytes(buf) == b"..abcdefghij...."
    with pytest.raises(ValueError, match="buffer too small"):
        conn.recv_into(bytearray(2), 3)


def test_recvfrom_on_stream_returns_none_address(wire: Wire):
    cli, conn, _ = connected_pair(wire)
    cli.sendall(b"hi")
    assert conn.recvfrom(10) == (b"hi", None)


def test_recv_at_eof_returns_empty_bytes_every_time(wire: Wire):
    cli, conn, _ = connected_pair(wire)
    cli.sendall(b"last")
    cli.shutdown(std.SHUT_WR)
    assert read_exactly(conn, 4) == b"last"
    assert conn.recv(10) == b""
    assert conn.recv(10) == b""


def test_recv_nonblocking_raises_eagain_and_msg_dontwait_too(wire: Wire):
    cli, conn, _ = connected_pair(wire)
    conn.setblocking(False)
    with pytest.raises(BlockingIOError) as exc:
        conn.recv(10)
    assert exc.value.errno == errno.EAGAIN
    with pytest.raises(BlockingIOError):
        cli.recv(10, std.MSG_DONTWAIT)


def test_recv_timeout_raises_timeout_after_that_long(wire: Wire):
    cli, _, _ = connected_pair(wire)
    cli.settimeout(0.2)
    t0 = wire.clock.now
    with pytest.raises(TimeoutError, match="timed out"):
        cli.recv(10)
    assert 0.2 <= (wire.clock.now - t0) / 1e6 < 0.25


def test_recv_msg_peek_is_refused_clearly(wire: Wire):
    _, conn, _ = connected_pair(wire)
    with pytest.raises(OSError, match="MSG_PEEK"):
        conn.recv(10, std.MSG_PEEK)


def test_send_returns_partial_count_when_buffer_fills_then_eagain(wire: Wire):
    cli, _, _ = connected_pair(wire)
    cli.setblocking(False)
    sndbuf = cli.getsockopt(std.SOL_SOCKET, std.SO_SNDBUF)
    big = bytes(4 * sndbuf)
    first = cli.send(big)
    assert first == sndbuf  # what the empty send buffer took
    total = first
    with pytest.raises(BlockingIOError) as exc:
        while True:
            total += cli.send(big)
    assert exc.value.errno == errno.EAGAIN
    # Nobody reads on B: what was taken is the send buffer plus B's receive window.
    assert total <= sndbuf + 256 * 1024 + sndbuf


def test_sendall_times_out_when_peer_does_not_read(wire: Wire):
    cli, _, _ = connected_pair(wire)
    cli.settimeout(0.5)
    t0 = wire.clock.now
    with pytest.raises(TimeoutError, match="timed out"):
        cli.sendall(bytes(4 << 20))
    assert 0.5 <= (wire.clock.now - t0) / 1e6 < 0.6


def test_send_on_unconnected_socket_raises_brokenpipe_recv_enotconn(wire: Wire):
    s = tcp(wire.a)
    with pytest.raises(BrokenPipeError):
        s.send(b"x")
    with pytest.raises(OSError) as exc:
        s.recv(1)
    assert exc.value.errno == errno.ENOTCONN


def test_send_after_shutdown_wr_raises_brokenpipe_and_peer_sees_eof(wire: Wire):
    cli, conn, _ = connected_pair(wire)
    cli.shutdown(std.SHUT_WR)
    with pytest.raises(BrokenPipeError) as exc:
        cli.send(b"x")
    assert exc.value.errno == errno.EPIPE
    assert conn.recv(10) == b""
    conn.sendall(b"still open this way")  # half-close: the other direction works
    assert read_exactly(cli, 19) == b"still open this way"


def test_shutdown_rd_makes_recv_return_empty(wire: Wire):
    cli, _, _ = connected_pair(wire)
    cli.shutdown(std.SHUT_RD)
    assert cli.recv(10) == b""


def test_shutdown_unconnected_raises_enotconn(wire: Wire):
    with pytest.raises(OSError) as exc:
        tcp(wire.a).shutdown(std.SHUT_RDWR)
    assert exc.value.errno == errno.ENOTCONN


def test_recv_after_reset_returns_data_first_then_connectionreseterror_once(wire: Wire):
    cli, conn, _ = connected_pair(wire)
    conn.setsockopt(std.SOL_SOCKET, std.SO_LINGER, struct.pack("ii", 1, 0))
    conn.sendall(b"before the reset")
    c = cli.connection
    assert c is not None
    wire.a.wait_until(lambda: c.readable_bytes == 16, 1)  # delivered and acknowledged
    conn.close()  # SO_LINGER 0: RST
    wire.a.wait_until(lambda: cli.connection is not None and cli.connection.error is not None, 1)
    assert cli.recv(100) == b"before the reset"
    with pytest.raises(ConnectionResetError) as exc:
        cli.recv(100)
    assert exc.value.errno == errno.ECONNRESET
    assert cli.recv(100) == b""  # reported once, as Linux
    with pytest.raises(BrokenPipeError):
        cli.send(b"x")


def test_send_after_reset_raises_connectionreseterror_first(wire: Wire):
    cli, conn, _ = connected_pair(wire)
    conn.setsockopt(std.SOL_SOCKET, std.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()
    wire.a.wait_until(lambda: cli.connection is not None and cli.connection.error is not None, 1)
    with pytest.raises(ConnectionResetError):
        cli.send(b"x")
    with pytest.raises(BrokenPipeError):
        cli.send(b"x")


def test_close_with_unread_data_resets_the_peer(wire: Wire):
    cli, conn, _ = connected_pair(wire)
    cli.sendall(b"never read")
    wire.b.wait_until(
        lambda: conn.connection is not None and conn.connection.readable_bytes == 10, 1
    )
    conn.close()
    with pytest.raises(ConnectionResetError):
        cli.recv(10)


def test_close_without_unread_data_sends_fin(wire: Wire):
    cli, conn, _ = connected_pair(wire)
    conn.close()
    assert cli.recv(10) == b""


def test_linger_on_waits_for_the_fin_to_be_acknowledged(wire: Wire):
    cli, conn, _ = connected_pair(wire)
    conn.setsockopt(std.SOL_SOCKET, std.SO_LINGER, struct.pack("ii", 1, 5))
    conn.sendall(bytes(100_000))
    c = conn.connection
    assert c is not None
    conn.close()
    assert c.state in (State.FIN_WAIT_2, State.TIME_WAIT)
    assert read_exactly(cli, 100_000) == bytes(100_000)


def test_linger_timeout_returns_when_peer_is_gone(wire: Wire):
    _, conn, _ = connected_pair(wire)
    conn.setsockopt(std.SOL_SOCKET, std.SO_LINGER, struct.pack("ii", 1, 2))
    wire.cut = True
    conn.sendall(b"lost")
    t0 = wire.clock.now
    conn.close()
    assert 2.0 <= (wire.clock.now - t0) / 1e6 < 2.1


def test_makefile_readline_and_write(wire: Wire):
    cli, conn, _ = connected_pair(wire)
    wf = cli.makefile("wb")
    wf.write(b"line one\nline two\n")
    wf.flush()
    rf = conn.makefile("rb")
    assert rf.readline() == b"line one\n"
    assert rf.readline() == b"line two\n"
    text = conn.makefile("w", encoding="ascii")
    assert isinstance(text, io.TextIOWrapper)
    text.write("reply\n")
    text.flush()
    assert cli.makefile("r", encoding="ascii").readline() == "reply\n"
    rf.close()
    text.close()


def test_close_is_deferred_while_makefile_objects_are_open(wire: Wire):
    cli, conn, _ = connected_pair(wire)
    rf = conn.makefile("rb")
    conn.close()
    cli.sendall(b"still readable\n")
    assert rf.readline() == b"still readable\n"
    rf.close()
    assert cli.recv(10) == b""


# ---------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------


def test_tcp_nodelay_reaches_the_live_connection(wire: Wire):
    cli, _, _ = connected_pair(wire)
    c = cli.connection
    assert c is not None and not c.tcb.config.nodelay
    cli.setsockopt(std.IPPROTO_TCP, std.TCP_NODELAY, 1)
    assert c.tcb.config.nodelay
    assert cli.getsockopt(std.IPPROTO_TCP, std.TCP_NODELAY) == 1


def test_nodelay_on_listener_is_inherited_by_accepted_connections(wire: Wire):
    srv = listener(wire)
    srv.setsockopt(std.IPPROTO_TCP, std.TCP_NODELAY, 1)
    tcp(wire.a).connect((B_IP, 7000))
    conn, _ = srv.accept()
    assert conn.connection is not None and conn.connection.tcb.config.nodelay
    assert conn.getsockopt(std.IPPROTO_TCP, std.TCP_NODELAY) == 1


def test_buffer_sizes_set_before_connect_size_the_connection(wire: Wire):
    listener(wire)
    cli = tcp(wire.a)
    cli.setsockopt(std.SOL_SOCKET, std.SO_RCVBUF, 65536)
    cli.setsockopt(std.SOL_SOCKET, std.SO_SNDBUF, 32768)
    cli.connect((B_IP, 7000))
    c = cli.connection
    assert c is not None
    assert (c.tcb.config.rcvbuf, c.tcb.config.sndbuf) == (65536, 32768)
    assert c.send_space == 32768
    assert cli.getsockopt(std.SOL_SOCKET, std.SO_RCVBUF) == 65536


def test_buffer_size_is_clamped_to_linux_minimum(wire: Wire):
    s = tcp(wire.a)
    s.setsockopt(std.SOL_SOCKET, std.SO_RCVBUF, 1)
    assert s.getsockopt(std.SOL_SOCKET, std.SO_RCVBUF) == 2304


def test_linger_option_round_trips_as_struct_and_int(wire: Wire):
    s = tcp(wire.a)
    assert s.getsockopt(std.SOL_SOCKET, std.SO_LINGER) == 0
    s.setsockopt(std.SOL_SOCKET, std.SO_LINGER, struct.pack("ii", 1, 7))
    assert s.getsockopt(std.SOL_SOCKET, std.SO_LINGER, 8) == struct.pack("ii", 1, 7)
    assert s.getsockopt(std.SOL_SOCKET, std.SO_LINGER) == 1


def test_keepalive_options_reach_the_config_and_time_out_a_dead_peer(wire: Wire):
    cli, _, _ = connected_pair(wire)
    cli.settimeout(None)
    cli.setsockopt(std.SOL_SOCKET, std.SO_KEEPALIVE, 1)
    cli.setsockopt(std.IPPROTO_TCP, std.TCP_KEEPIDLE, 10)
    cli.setsockopt(std.IPPROTO_TCP, std.TCP_KEEPINTVL, 2)
    cli.setsockopt(std.IPPROTO_TCP, std.TCP_KEEPCNT, 3)
    c = cli.connection
    assert c is not None
    cfg = c.tcb.config
    assert (
        cfg.keepalive,
        cfg.keepalive_idle_us,
        cfg.keepalive_interval_us,
        cfg.keepalive_count,
    ) == (
        True,
        10_000_000,
        2_000_000,
        3,
    )
    assert cli.getsockopt(std.IPPROTO_TCP, std.TCP_KEEPIDLE) == 10
    wire.cut = True
    t0 = wire.clock.now
    with pytest.raises(TimeoutError) as exc:
        cli.recv(10)
    assert exc.value.errno == errno.ETIMEDOUT
    # idle 10 s, then 3 probes 2 s apart: dead after 16 s.
    assert 15.9 <= (wire.clock.now - t0) / 1e6 < 16.5


def test_unknown_option_raises_enoprotoopt(wire: Wire):
    s = tcp(wire.a)
    for level, name in ((std.SOL_SOCKET, 9999), (std.IPPROTO_IP, std.IP_TTL)):
        with pytest.raises(OSError) as exc:
            s.setsockopt(level, name, 1)
        assert exc.value.errno == errno.ENOPROTOOPT
    with pytest.raises(OSError) as exc:
        udp(wire.a).setsockopt(std.IPPROTO_TCP, std.TCP_NODELAY, 1)
    assert exc.value.errno == errno.ENOPROTOOPT


def test_so_type_and_acceptconn(wire: Wire):
    srv = listener(wire)
    assert srv.getsockopt(std.SOL_SOCKET, std.SO_TYPE) == std.SOCK_STREAM
    assert srv.getsockopt(std.SOL_SOCKET, std.SO_ACCEPTCONN) == 1
    assert udp(wire.a).getsockopt(std.SOL_SOCKET, std.SO_TYPE) == std.SOCK_DGRAM


def test_tcp_info_has_linux_layout_and_live_figures(wire: Wire):
    cli, conn, _ = connected_pair(wire)
    cli.sendall(bytes(5000))
    read_exactly(conn, 5000)
    wire.a.wait_until(lambda: cli.tcp_info()["unacked"] == 0, 1)
    raw = cli.getsockopt(std.IPPROTO_TCP, std.TCP_INFO, 232)
    assert isinstance(raw, bytes) and len(raw) == 232
    f = TCP_INFO_STRUCT.unpack(raw)
    names = ("state", "ca_state", "retransmits", "probes", "backoff", "options", "wscale")
    head = dict(zip(names, f[:7], strict=True))
    assert head["state"] == 1  # TCP_ESTABLISHED
    assert head["options"] == 1 | 2 | 4  # timestamps, SACK, window scaling
    info = cli.tcp_info()
    assert f[10] == info["smss"]  # tcpi_snd_mss
    assert f[34] == 5000  # tcpi_bytes_acked
    assert f[48] == 5000  # tcpi_bytes_sent
    assert cli.getsockopt(std.IPPROTO_TCP, std.TCP_INFO) == 1 | (0 << 8)  # first 4 bytes


def test_tcp_maxseg_reads_the_connections_mss(wire: Wire):
    cli, _, _ = connected_pair(wire)
    assert cli.getsockopt(std.IPPROTO_TCP, std.TCP_MAXSEG) == 1448  # 1460 - timestamps


# ---------------------------------------------------------------------------
# UDP
# ---------------------------------------------------------------------------


def test_udp_sendto_recvfrom_both_ways(wire: Wire):
    srv = udp(wire.b)
    srv.bind(("", 9000))
    cli = udp(wire.a)
    cli.settimeout(1)
    srv.settimeout(1)
    assert cli.sendto(b"ping", (B_IP, 9000)) == 4
    data, addr = srv.recvfrom(100)
    assert data == b"ping" and addr == (A_IP, cli.getsockname()[1])
    srv.sendto(b"pong", addr)
    assert cli.recvfrom(100) == (b"pong", (B_IP, 9000))


def test_udp_recv_into_truncates_like_the_kernel(wire: Wire):
    srv = udp(wire.b)
    srv.bind(("", 9000))
    udp(wire.a).sendto(b"0123456789", (B_IP, 9000))
    buf = bytearray(4)
    srv.settimeout(1)
    n, addr = srv.recvfrom_into(buf)
    assert n == 4 and bytes(buf) == b"0123"
    assert addr is not None and addr[0] == A_IP


def test_udp_connected_send_and_peer_filter(wire: Wire):
    srv = udp(wire.b)
    srv.bind(("", 9000))
    srv.connect((A_IP, 9001))
    stranger = udp(wire.a)
    stranger.bind(("", 9002))
    friend = udp(wire.a)
    friend.bind(("", 9001))
    stranger.sendto(b"from a stranger", (B_IP, 9000))
    friend.sendto(b"from the peer", (B_IP, 9000))
    srv.settimeout(1)
    assert srv.recv(100) == b"from the peer"
    srv.send(b"back")
    friend.settimeout(1)
    assert friend.recv(100) == b"back"
    assert srv.getpeername() == (A_IP, 9001)


def test_udp_send_without_peer_raises_edestaddrreq(wire: Wire):
    with pytest.raises(OSError) as exc:
        udp(wire.a).send(b"x")
    assert exc.value.errno == errno.EDESTADDRREQ


def test_udp_recv_timeout_and_nonblocking(wire: Wire):
    s = udp(wire.a)
    s.bind(("", 9000))
    s.settimeout(0.1)
    with pytest.raises(TimeoutError):
        s.recvfrom(10)
    s.setblocking(False)
    with pytest.raises(BlockingIOError):
        s.recvfrom(10)


def test_udp_broadcast_needs_so_broadcast(wire: Wire):
    s = udp(wire.a)
    with pytest.raises(PermissionError):
        s.sendto(b"x", ("<broadcast>", 9000))
    s.setsockopt(std.SOL_SOCKET, std.SO_BROADCAST, 1)
    assert s.sendto(b"x", ("<broadcast>", 9000)) == 1


# ---------------------------------------------------------------------------
# Epoll semantics
# ---------------------------------------------------------------------------


def test_epoll_unconnected_socket_reports_out_and_hup_like_linux(wire: Wire):
    ep = Epoll(context=wire.a)
    s = tcp(wire.a)
    ep.register(s, EPOLLIN | EPOLLOUT)
    assert ep.poll(0) == [(s, EPOLLOUT | EPOLLHUP)]


def test_epoll_listener_reports_in_when_a_connection_waits(wire: Wire):
    srv = listener(wire)
    ep = Epoll(context=wire.b)
    ep.register(srv, EPOLLIN)
    assert ep.poll(0) == []
    cli = tcp(wire.a)
    cli.setblocking(False)
    cli.connect_ex((B_IP, 7000))
    assert ep.poll(1) == [(srv, IN)]
    srv.accept()
    assert ep.poll(0) == []


def test_epoll_level_triggered_reports_until_drained(wire: Wire):
    cli, conn, _ = connected_pair(wire)
    ep = Epoll(context=wire.b)
    ep.register(conn, EPOLLIN)
    assert ep.poll(0) == []
    cli.sendall(b"hello")
    assert ep.poll(1) == [(conn, IN)]
    assert ep.poll(0) == [(conn, IN)]
    assert conn.recv(10) == b"hello"
    assert ep.poll(0) == []


def test_epoll_edge_triggered_reports_once_per_arrival(wire: Wire):
    cli, conn, _ = connected_pair(wire)
    ep = Epoll(context=wire.b)
    ep.register(conn, EPOLLIN | EPOLLET)
    cli.sendall(b"one")
    assert ep.poll(1) == [(conn, IN)]
    assert ep.poll(0) == []  # nothing new, data still unread
    cli.sendall(b"two")
    assert ep.poll(1) == [(conn, IN)]
    assert conn.recv(10) == b"onetwo"


def test_epoll_oneshot_disables_until_modify(wire: Wire):
    cli, conn, _ = connected_pair(wire)
    ep = Epoll(context=wire.b)
    ep.register(conn, EPOLLIN | EPOLLONESHOT)
    cli.sendall(b"x")
    assert ep.poll(1) == [(conn, IN)]
    cli.sendall(b"y")
    assert ep.poll(0.1) == []
    ep.modify(conn, EPOLLIN | EPOLLONESHOT)
    assert ep.poll(0) == [(conn, IN)]


def test_epoll_out_on_connect_and_after_buffer_drains(wire: Wire):
    listener(wire)
    cli = tcp(wire.a)
    cli.setblocking(False)
    ep = Epoll(context=wire.a)
    assert cli.connect_ex((B_IP, 7000)) == errno.EINPROGRESS
    ep.register(cli, EPOLLOUT | EPOLLET)
    assert ep.poll(0) == []  # SYN-SENT: not writable yet
    assert ep.poll(1) == [(cli, OUT)]


def test_epoll_rdhup_on_peer_fin_and_hup_when_both_sides_shut(wire: Wire):
    cli, conn, _ = connected_pair(wire)
    ep = Epoll(context=wire.b)
    ep.register(conn, EPOLLIN | EPOLLOUT | EPOLLRDHUP)
    assert ep.poll(0) == [(conn, OUT)]
    cli.shutdown(std.SHUT_WR)
    events = ep.poll(1)
    assert events == [(conn, IN | OUT | EPOLLRDHUP)]
    conn.shutdown(std.SHUT_WR)
    assert ep.poll(0) == [(conn, IN | OUT | EPOLLRDHUP | EPOLLHUP)]


def test_epoll_reset_reports_err_and_hup_once_err_is_consumed(wire: Wire):
    cli, conn, _ = connected_pair(wire)
    ep = Epoll(context=wire.a)
    ep.register(cli, EPOLLIN)
    conn.setsockopt(std.SOL_SOCKET, std.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()
    assert ep.poll(1) == [(cli, IN | EPOLLERR | EPOLLHUP)]
    with pytest.raises(ConnectionResetError):
        cli.recv(10)
    assert ep.poll(0) == [(cli, IN | EPOLLHUP)]  # ERR is gone once reported


def test_epoll_refused_connect_reports_all_like_linux(wire: Wire):
    cli = tcp(wire.a)
    cli.setblocking(False)
    ep = Epoll(context=wire.a)
    ep.register(cli, EPOLLIN | EPOLLOUT | EPOLLRDHUP)
    assert cli.connect_ex((B_IP, 7999)) == errno.EINPROGRESS
    # Linux reports 0x201d here: IN OUT ERR HUP RDHUP.
    assert ep.poll(1) == [(cli, IN | OUT | EPOLLERR | EPOLLHUP | EPOLLRDHUP)]


def test_epoll_udp_readable(wire: Wire):
    s = udp(wire.b)
    s.bind(("", 9000))
    ep = Epoll(context=wire.b)
    ep.register(s, EPOLLIN)
    assert ep.poll(0) == []
    udp(wire.a).sendto(b"d", (B_IP, 9000))
    assert ep.poll(1) == [(s, IN)]
    s.recvfrom(10)
    assert ep.poll(0) == []


def test_epoll_poll_timeout_returns_empty_after_that_long(wire: Wire):
    ep = Epoll(context=wire.a)
    t0 = wire.clock.now
    assert ep.poll(0.3) == []
    assert 0.3 <= (wire.clock.now - t0) / 1e6 < 0.35


def test_epoll_maxevents_rotates_level_triggered_entries(wire: Wire):
    socks = [udp(wire.a) for _ in range(3)]
    ep = Epoll(context=wire.a)
    for s in socks:
        ep.register(s, EPOLLOUT)
    first = ep.poll(0, maxevents=2)
    second = ep.poll(0, maxevents=2)
    assert [s for s, _ in first] == socks[:2]
    assert [s for s, _ in second] == [socks[2], socks[0]]


def test_epoll_register_errors_like_select_epoll(wire: Wire):
    ep = Epoll(context=wire.a)
    s = tcp(wire.a)
    ep.register(s)
    with pytest.raises(FileExistsError):
        ep.register(s)
    other = tcp(wire.a)
    with pytest.raises(FileNotFoundError):
        ep.modify(other, EPOLLIN)
    with pytest.raises(FileNotFoundError):
        ep.unregister(other)
    with pytest.raises(TypeError, match="ustack sockets"):
        ep.register(3, EPOLLIN)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="another Context"):
        ep.register(tcp(wire.b))
    with pytest.raises(ValueError, match="maxevents"):
        ep.poll(0, maxevents=0)
    ep.close()
    with pytest.raises(ValueError, match="closed epoll"):
        ep.poll(0)


def test_epoll_closing_a_socket_unregisters_it(wire: Wire):
    ep = Epoll(context=wire.a)
    s = udp(wire.a)
    ep.register(s, EPOLLOUT)
    s.close()
    assert ep.poll(0) == []
    assert "0 registered" in repr(ep)


def test_epoll_ready_sockets_do_not_starve_input(wire: Wire):
    cli, conn, _ = connected_pair(wire)
    ep = Epoll(context=wire.b)
    ep.register(conn, EPOLLOUT | EPOLLIN)  # always writable
    cli.sendall(b"arrives while B only polls")
    for _ in range(10):
        events = dict(ep.poll(0))
        if events[conn] & EPOLLIN:
            break
    assert events[conn] & EPOLLIN
    assert conn.recv(100) == b"arrives while B only polls"


# ---------------------------------------------------------------------------
# The module namespace and the per-thread Context
# ---------------------------------------------------------------------------


def test_namespace_uses_the_threads_context_and_create_connection(wire: Wire):
    listener(wire)
    api_context.use(wire.a)
    s = usock.create_connection((B_IP, 7000), timeout=2)
    assert isinstance(s, usock.socket)
    assert s.context is wire.a
    assert s.gettimeout() == 2
    assert s.getpeername() == (B_IP, 7000)


def test_namespace_create_connection_propagates_refusal(wire: Wire):
    api_context.use(wire.a)
    with pytest.raises(ConnectionRefusedError):
        usock.create_connection((B_IP, 7999))


def test_namespace_create_server_listens_with_reuseaddr(wire: Wire):
    api_context.use(wire.b)
    srv = usock.create_server(("", 7005))
    assert srv.getsockopt(usock.SOL_SOCKET, usock.SO_REUSEADDR) == 1
    assert srv.getsockopt(usock.SOL_SOCKET, usock.SO_ACCEPTCONN) == 1


def test_close_current_closes_the_threads_sockets_and_lets_fins_out(wire: Wire):
    cli, conn, _ = connected_pair(wire)
    api_context.use(wire.b)
    api_context.close_current()
    with pytest.raises(OSError) as exc:
        conn.recv(1)
    assert exc.value.errno == errno.EBADF
    assert cli.recv(10) == b""  # the FIN went out
