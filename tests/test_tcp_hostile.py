"""Hostile TCP input on a live connection: blind attacks, malformed segments, a SYN flood.

ustack runs on the TAP of a private topology in a thread of its own
(`StackThread`: one Context, created in that thread, with an echo server on
ECHO_PORT and a hashing sink on SINK_PORT); a kernel socket in the client
namespace holds a real connection to it, and the test writes forged frames
into the TAP from the client namespace with an AF_PACKET socket, using the
connection's 4-tuple and the sequence numbers ustack holds for it (read from
the stack thread).  Another AF_PACKET socket captures what ustack sends, so
challenge ACKs are seen on the wire and not only counted.

scapy builds every forged frame and parses every captured one.  Where a test
wants a malformation scapy would repair (a wrong checksum, an option length
that disagrees with its option, a data offset that disagrees with the header)
the field is set by hand: `chksum=`, `dataofs=`, and option bytes carried as
the head of a Raw payload that the data offset counts as header.  The test
then checks that the bytes on the wire carry exactly that malformation and
nothing else (the checksum right wherever it is not the point).

After each batch the test "syncs": an echo round trip on the same
connection.  The TAP queue is FIFO and the stack handles a burst in order,
so when the echo is back every forged frame before it has been processed,
and counters can be compared exactly.  The echo also proves the connection
survived and that no forged byte entered the stream.

Every connection has its own challenge-ACK bucket (RFC 5961 7, 10 per
second with a burst of 10, see ustack.tcp.tcb), so each test opens a fresh
kernel connection and asserts per-connection counters exactly.

The SYN flood sends 20,000 SYNs from spoofed on-link sources (198.18.0.100
to .250, random ports), copies of one scapy-built template per source
address with the fields that vary written in (see `flood_frames`).  ustack's
ARP requests for them go unanswered, as they would for hosts that do not
exist, so the cookie SYN-ACKs wait in the neighbour queues and are freed when
resolution fails: that is the path where a flood could exhaust transmit
buffers, so its bounds (at most a quarter of the transmit slots queued, at
most max_entries neighbours) are checked along with the connection table's.
The kernel owns none of those addresses and so never answers a SYN-ACK with
a RST that would clear the SYN queue.
"""

from __future__ import annotations

import hashlib
import os
import queue
import random
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
from scapy.layers.inet import IP, TCP, in4_chksum, in4_pseudoheader
from scapy.layers.l2 import Ether
from scapy.packet import Packet, Raw
from scapy.utils import checksum

from tests.conftest import require_netns, unique_name
from tests.kernel import ns_socket, tap_mac
from ustack import netns
from ustack.loop import Context
from ustack.runtime import close_context, open_context
from ustack.stack.tcp import TcpConnection, TcpListener
from ustack.tcp.tcb import State, TcpConfig
from ustack.topology import Topology

pytestmark = pytest.mark.netns

T = TypeVar("T")

ECHO_PORT = 7
SINK_PORT = 9
ETH_P_IP = 0x0800
MASK32 = 0xFFFFFFFF
CHALLENGE_BURST = TcpConfig().challenge_ack_per_s  # the bucket starts full: burst = rate
CHALLENGE_RATE = TcpConfig().challenge_ack_per_s


# ---- ustack in a thread of its own ------------------------------------------------------


class EchoApp:
    """Echo every byte back on each accepted connection; close after EOF once all is sent."""

    def __init__(self) -> None:
        self.accepted: list[TcpConnection] = []
        self.errors: list[str] = []
        self._pending: dict[int, bytearray] = {}
        self._closed: set[int] = set()

    def attach(self, listener: TcpListener) -> None:
        listener.on_event = self._on_listener

    def _on_listener(self, listener: TcpListener) -> None:
        while (conn := listener.accept()) is not None:
            self.accepted.append(conn)
            self._pending[id(conn)] = bytearray()
            conn.on_event = self._on_conn

    def _on_conn(self, conn: TcpConnection) -> None:
        try:
            key = id(conn)
            if key in self._closed or conn.error is not None:
                return
            pending = self._pending[key]
            while data := conn.recv(65536):
                pending += data
            if pending:
                del pending[: conn.send(pending)]
            if conn.eof and not pending:
                conn.close()
                self._closed.add(key)
        except Exception as exc:  # recorded for the test; a callback must not raise
            self.errors.append(repr(exc))


class HashSinkApp:
    """Read each connection to EOF, then answer with the SHA-256 (hex) of what came, and close."""

    def __init__(self) -> None:
        self.results: dict[int, tuple[int, str]] = {}
        self.errors: list[str] = []
        self._hash: dict[int, Any] = {}
        self._count: dict[int, int] = {}

    def attach(self, listener: TcpListener) -> None:
        listener.on_event = self._on_listener

    def _on_listener(self, listener: TcpListener) -> None:
        while (conn := listener.accept()) is not None:
            self._hash[id(conn)] = hashlib.sha256()
            self._count[id(conn)] = 0
            conn.on_event = self._on_conn

    def _on_conn(self, conn: TcpConnection) -> None:
        try:
            key = id(conn)
            if key not in self._hash:
                return
            h = self._hash[key]
            while data := conn.recv(262144):
                h.update(data)
                self._count[key] += len(data)
            if conn.eof:
                digest = h.hexdigest()
                self.results[conn.remote[1]] = (self._count[key], digest)
                del self._hash[key]
                conn.send(digest.encode())
                conn.close()
        except Exception as exc:
            self.errors.append(repr(exc))


class StackThread:
    """A ustack Context on the topology's TAP, created and driven by a thread of its own.

    `setup(ctx)` runs in that thread before it reports ready (listen there).
    `call(fn)` runs fn(ctx) in the stack thread between two bursts and returns
    its result: the way to look at (or act on) the stack from the test.
    """

    def __init__(
        self,
        topo: Topology,
        setup: Callable[[Context], None],
        *,
        tcp_config: TcpConfig | None = None,
        offload: bool = False,
        poll: str = "interrupt",
    ) -> None:
        self.topo = topo
        self.setup = setup
        self.tcp_config = tcp_config
        self.offload = offload
        self.poll = poll
        self.mac = ""
        self._requests: queue.SimpleQueue[tuple[Callable[[Context], Any], Future[Any]]] = (
            queue.SimpleQueue()
        )
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"ustack-{topo.name}", daemon=True)

    def __enter__(self) -> StackThread:
        self._thread.start()
        if not self._ready.wait(30):
            raise AssertionError("the stack thread did not start")
        if self._error is not None:
            raise AssertionError(f"the stack thread failed: {self._error!r}") from self._error
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        assert not self._thread.is_alive(), "the stack thread did not stop"

    def _run(self) -> None:
        try:
            ctx = open_context(
                name=self.topo.name,
                poll=self.poll,
                offload=self.offload,
                tcp_config=self.tcp_config,
            )
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        try:
            ctx.start()
            self.setup(ctx)
            self.mac = ctx.stack.iface.mac.hex(":")
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            close_context(ctx)
            return
        self._ready.set()
        requests = self._requests
        stop = self._stop

        def done() -> bool:
            return stop.is_set() or not requests.empty()

        try:
            while not stop.is_set():
                ctx.wait_until(done, 0.01)
                while not requests.empty():
                    fn, fut = requests.get_nowait()
                    try:
                        fut.set_result(fn(ctx))
                    except BaseException as exc:
                        fut.set_exception(exc)
        except BaseException as exc:
            self._error = exc
        finally:
            while not requests.empty():
                requests.get_nowait()[1].set_exception(RuntimeError("stack thread stopped"))
            close_context(ctx)

    def call(self, fn: Callable[[Context], T], timeout: float = 20.0) -> T:
        if self._error is not None:
            raise AssertionError(f"the stack thread failed: {self._error!r}") from self._error
        fut: Future[T] = Future()
        self._requests.put((fn, fut))
        return fut.result(timeout)

    def stats(self) -> dict[str, int]:
        return self.call(lambda ctx: dict(ctx.stack.stats()))

    def conn_for(self, remote_port: int) -> ConnInfo:
        """What ustack holds for the connection from the kernel's `remote_port`."""

        def get(ctx: Context) -> ConnInfo:
            for conn in ctx.stack.tcp.conns.values():
                if conn.remote[1] == remote_port:
                    t = conn.tcb
                    return ConnInfo(
                        state=t.state,
                        rcv_nxt=t.rcv_nxt,
                        snd_max=t.snd_max,
                        rcv_wnd=(t.rcv_adv - t.rcv_nxt) & MASK32,
                        local_port=t.local[1],
                        counters=dict(t.counters),
                    )
            raise LookupError(f"no connection from port {remote_port}")

        return self.call(get)


@dataclass
class ConnInfo:
    state: State
    rcv_nxt: int
    snd_max: int
    rcv_wnd: int
    local_port: int
    counters: dict[str, int] = field(default_factory=dict)


# ---- frames ------------------------------------------------------------------------------


class Wire:
    """Forged frames into the TAP from the client namespace, and a capture of ustack's frames."""

    def __init__(self, topo: Topology, ustack_mac: str) -> None:
        self.topo = topo
        self.dst_mac = ustack_mac
        self.src_mac = tap_mac(topo)
        with netns.inside(topo.client_ns):
            self.tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            self.tx.bind((topo.tap, 0))
            self.rx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP))
            self.rx.bind((topo.tap, ETH_P_IP))
        self.rx.setblocking(False)
        self.rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)

    def close(self) -> None:
        self.tx.close()
        self.rx.close()

    def ip(self, src: str | None = None, **kw: Any) -> IP:
        """An IPv4 header to ustack from `src` (the client by default), DF and ID 0 as Linux's."""
        src = src or self.topo.client_addr
        return IP(src=src, dst=self.topo.ustack_addr, flags="DF", id=0, **kw)

    def frame(self, packet: Packet) -> bytes:
        """`packet` (IPv4 and up) in an Ethernet frame from the kernel's side of the TAP."""
        return bytes(Ether(dst=self.dst_mac, src=self.src_mac) / packet)

    def send(self, frames: list[bytes]) -> None:
        for f in frames:
            self.tx.send(f)

    def drain(self) -> None:
        while True:
            try:
                self.rx.recv(65536)
            except BlockingIOError:
                return

    def captured_from_ustack(self, dport: int) -> list[tuple[str, int, int, int]]:
        """(flags, seq, ack, payload length) of each TCP segment ustack sent to `dport` so far."""
        out: list[tuple[str, int, int, int]] = []
        while True:
            try:
                pkt = Ether(self.rx.recv(65536))
            except BlockingIOError:
                return out
            if TCP not in pkt or pkt[IP].src != self.topo.ustack_addr:
                continue
            ip, tcp = pkt[IP], pkt[TCP]
            if tcp.dport == dport:
                # From the IP total length: scapy hangs Ethernet padding under TCP.
                length = ip.len - 4 * ip.ihl - 4 * tcp.dataofs
                out.append((str(tcp.flags), tcp.seq, tcp.ack, length))


# ---- fixtures ------------------------------------------------------------------------------


@dataclass
class Served:
    topo: Topology
    stack: StackThread
    wire: Wire
    echo: EchoApp
    sink: HashSinkApp


def _serve(topo: Topology, **kw: Any) -> tuple[StackThread, EchoApp, HashSinkApp]:
    echo, sink = EchoApp(), HashSinkApp()

    def setup(ctx: Context) -> None:
        echo.attach(ctx.stack.tcp.listen(ECHO_PORT))
        sink.attach(ctx.stack.tcp.listen(SINK_PORT))

    return StackThread(topo, setup, **kw), echo, sink


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    """One topology and one ustack for the blind-attack tests (each uses its own connection)."""
    require_netns()
    topo = Topology(unique_name("h")).up()
    try:
        st, echo, sink = _serve(topo)
        with st:
            wire = Wire(topo, st.mac)
            try:
                yield Served(topo, st, wire, echo, sink)
            finally:
                wire.close()
        assert echo.errors == [] and sink.errors == []
    finally:
        topo.down()


class Client:
    """A kernel TCP connection from the client namespace to ustack's echo port."""

    def __init__(self, s: Served, port: int = ECHO_PORT) -> None:
        self.s = s
        self.sock = ns_socket(s.topo.client_ns, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect((s.topo.ustack_addr, port))
        self.port: int = self.sock.getsockname()[1]
        self.sent = bytearray()
        self.echoed = bytearray()
        self._tokens = 0
        self.sync()

    def sync(self) -> None:
        """Echo round trip: every frame written into the TAP before it has been processed."""
        self._tokens += 1
        token = b"<sync %d>" % self._tokens
        self.sock.sendall(token)
        self.sent += token
        while len(self.echoed) < len(self.sent):
            data = self.sock.recv(65536)
            assert data, "ustack closed the connection"
            self.echoed += data
        assert self.echoed == self.sent  # no forged byte got into the stream

    def info(self) -> ConnInfo:
        return self.s.stack.conn_for(self.port)

    def inject_each(self, frames: list[bytes], counter: str) -> float:
        """Write the frames one at a time, each once the last was counted under `counter`.

        The stack sends at most one ACK per connection per burst, so forged
        segments that share a burst share an ACK; one segment per burst makes
        the ACKs countable.  Returns the seconds it took.
        """
        t0 = time.monotonic()
        base = self.info().counters.get(counter, 0)
        for k, f in enumerate(frames, 1):
            self.s.wire.send([f])
            deadline = time.monotonic() + 10
            while self.info().counters.get(counter, 0) < base + k:
                assert time.monotonic() < deadline, f"frame {k} was never counted as {counter}"
        return time.monotonic() - t0

    def seg(
        self, flags: str, *, seq: int, ack: int | None = None, payload: bytes = b"", **kw: Any
    ) -> bytes:
        """A frame with a segment on this connection's 4-tuple; `kw` are more TCP() fields."""
        ack = self.info().snd_max if ack is None else ack
        tcp = TCP(
            sport=self.port,
            dport=ECHO_PORT,
            seq=seq & MASK32,
            ack=ack & MASK32,
            flags=flags,
            window=65535,
            **kw,
        )
        return self.s.wire.frame(self.s.wire.ip() / (tcp / Raw(payload) if payload else tcp))

    def close(self) -> None:
        self.sock.close()


def pure_acks(segs: list[tuple[str, int, int, int]]) -> list[tuple[str, int, int, int]]:
    return [s for s in segs if s[0] == "A" and s[3] == 0]


# ---- RFC 5961: blind resets and SYNs --------------------------------------------------------


def test_established_out_of_window_rst_ignored_in_window_rst_challenged(served: Served):
    c = Client(served)
    w = served.wire
    info = c.info()
    nxt, wnd = info.rcv_nxt, info.rcv_wnd
    assert wnd > 0
    w.drain()
    outside = [nxt - 1, nxt + wnd, nxt + wnd + 100_000, nxt + (1 << 31), nxt - 70_000]
    c.inject_each([c.seg("R", seq=s) for s in outside], "drop_tcp_out_of_window")
    # In the window but not at RCV.NXT: a challenge ACK each (RFC 5961 3.2).
    inside = [nxt + 1, nxt + 1000, nxt + wnd - 1]
    inside_frames = [c.seg("R", seq=s) for s in inside] + [c.seg("RA", seq=nxt + 5)] * 2
    c.inject_each(inside_frames, "drop_tcp_rst_challenged")
    c.sync()
    after = c.info()
    assert after.state is State.ESTABLISHED
    got = pure_acks(w.captured_from_ustack(c.port))
    # Each challenge ACK carries <SEQ=SND.NXT><ACK=RCV.NXT> as they were then;
    # an out-of-window RST gets nothing.
    assert got == [("A", info.snd_max, nxt, 0)] * 5
    assert after.counters == {
        "drop_tcp_out_of_window": len(outside),
        "drop_tcp_rst_challenged": 5,
    }
    c.sync()  # still alive
    c.close()


def test_established_syn_anywhere_challenged_and_rate_limited(served: Served):
    c = Client(served)
    w = served.wire
    info = c.info()
    rng = random.Random(5961)
    n = 40
    seqs = [info.rcv_nxt, info.rcv_nxt + 1] + [rng.getrandbits(32) for _ in range(n - 2)]
    frames = [c.seg("S", seq=s, ack=0, options=[("MSS", 1460)]) for s in seqs]
    w.drain()
    elapsed = c.inject_each(frames, "drop_tcp_syn_challenged")
    c.sync()
    after = c.info()
    assert after.state is State.ESTABLISHED
    challenges = pure_acks(w.captured_from_ustack(c.port))
    sent = len(challenges)
    # The bucket holds CHALLENGE_BURST; it refills at CHALLENGE_RATE per second.
    assert CHALLENGE_BURST <= sent <= CHALLENGE_BURST + int(elapsed * CHALLENGE_RATE) + 1, (
        sent,
        elapsed,
    )
    assert set(challenges) == {("A", info.snd_max, info.rcv_nxt, 0)}
    assert after.counters == {
        "drop_tcp_syn_challenged": n,
        "drop_tcp_challenge_ack_limited": n - sent,
    }
    # A second later the bucket has refilled (10 per second): challenges again.
    time.sleep(1.0)
    c.inject_each(frames[:3], "drop_tcp_syn_challenged")
    c.sync()
    assert len(pure_acks(w.captured_from_ustack(c.port))) == 3
    c.close()


def test_established_ack_for_unsent_data_challenged(served: Served):
    c = Client(served)
    w = served.wire
    info = c.info()
    w.drain()
    frames = [c.seg("A", seq=info.rcv_nxt, ack=info.snd_max + 100_000)] * 3
    c.inject_each(frames, "drop_tcp_ack_unsent")
    c.sync()
    got = pure_acks(w.captured_from_ustack(c.port))
    assert got == [("A", info.snd_max, info.rcv_nxt, 0)] * 3
    assert c.info().counters == {"drop_tcp_ack_unsent": 3}
    c.close()


# ---- data beyond the window --------------------------------------------------------------


def test_data_beyond_window_dropped_counted_and_acked(served: Served):
    c = Client(served)
    w = served.wire
    info = c.info()
    nxt, wnd = info.rcv_nxt, info.rcv_wnd
    evil = b"EVIL" * 25
    w.drain()
    beyond = [nxt + wnd + k * 1000 for k in range(5)]
    frames = [c.seg("PA", seq=s, payload=evil) for s in beyond]
    # Old data, wholly before RCV.NXT: also unacceptable, also ACKed.
    frames.append(c.seg("PA", seq=nxt - 5000, payload=evil))
    c.inject_each(frames, "drop_tcp_out_of_window")
    c.sync()
    got = pure_acks(w.captured_from_ustack(c.port))
    # Segments with data are always ACKed (the rate limit is for dataless ones).
    assert got == [("A", info.snd_max, nxt, 0)] * 6
    after = c.info()
    assert after.counters == {"drop_tcp_out_of_window": 6}
    assert after.state is State.ESTABLISHED
    c.close()


def test_dataless_out_of_window_acks_rate_limited(served: Served):
    c = Client(served)
    w = served.wire
    info = c.info()
    w.drain()
    frames = [c.seg("A", seq=info.rcv_nxt + info.rcv_wnd + 5000, ack=info.snd_max)] * 20
    elapsed = c.inject_each(frames, "drop_tcp_out_of_window")
    c.sync()
    got = pure_acks(w.captured_from_ustack(c.port))
    # At most one ACK per oow_ack_interval_us (500 ms, Linux's tcp_invalid_ratelimit).
    interval_s = TcpConfig().oow_ack_interval_us / 1e6
    assert 1 <= len(got) <= 1 + int(elapsed / interval_s), (len(got), elapsed)
    assert set(got) == {("A", info.snd_max, info.rcv_nxt, 0)}
    assert c.info().counters == {
        "drop_tcp_out_of_window": 20,
        "drop_tcp_oow_ack_limited": 20 - len(got),
    }
    c.close()


# ---- malformed segments --------------------------------------------------------------------


def test_malformed_segments_dropped_and_counted_by_reason(served: Served):
    c = Client(served)
    w = served.wire
    info = c.info()
    nxt, una = info.rcv_nxt, info.snd_max
    evil = b"EVIL!!!!"

    def seg(*, payload: bytes = evil, **kw: Any) -> Packet:
        fields: dict[str, Any] = {
            "sport": c.port,
            "dport": ECHO_PORT,
            "seq": nxt,
            "ack": una,
            "flags": "PA",
        }
        tcp = TCP(**(fields | {"window": 65535} | kw))
        return w.ip() / (tcp / Raw(payload) if payload else tcp)

    def with_options(options: bytes) -> Packet:
        # scapy writes each option's length from its value, so these ride at the
        # head of the payload, and the data offset, set by hand, makes them header.
        return seg(dataofs=5 + len(options) // 4, payload=options + evil)

    good = bytes(seg())
    csum = IP(good)[TCP].chksum
    bad_options = [
        b"\x02\x00\x05\xb4",  # MSS with length 0
        b"\x02\x01\x05\xb4",  # length 1: shorter than its own header
        b"\x08\x0e" + bytes(10),  # Timestamps with length 14 (needs 10)
        b"\x01\x01\x01\x08\x0a\x00\x00\x00",  # Timestamps past the header end
        b"\x05\x03\x00\x00",  # SACK with a length of no whole block
        b"\x03\x02\x00\x00",  # Window Scale with length 2
    ]
    # (0x0000 and 0xFFFF are the same one's complement sum: flip other bits.)
    bad_csums = [csum ^ 0x0101, csum ^ 0x8000]
    bad_offsets = [4, 15]
    bad_flags = ["SF", "FP", ""]
    kinds: dict[str, list[Packet]] = {
        "drop_tcp_bad_checksum": [seg(chksum=x) for x in bad_csums],
        "drop_tcp_bad_option": [with_options(o) for o in bad_options],
        "drop_tcp_bad_data_offset": [seg(dataofs=d) for d in bad_offsets],
        "drop_tcp_bad_flags": [seg(flags=f) for f in bad_flags],
        "drop_tcp_bad_port": [
            seg(sport=0, flags="A", payload=b""),
            seg(dport=0, flags="A", payload=b""),
        ],
        "drop_tcp_truncated": [
            w.ip(proto=socket.IPPROTO_TCP) / Raw(good[20 : 20 + n]) for n in (19, 8)
        ],
    }
    # Each packet carries its malformation and no other: IPv4 as scapy wrote it,
    # the TCP checksum right unless it is the point, the rest of the good segment.
    wire = {k: [bytes(p) for p in v] for k, v in kinds.items()}
    tcp_at = 20
    chk, off, flg = tcp_at + 16, tcp_at + 12, tcp_at + 13

    def tcp_csum_ok(raw: bytes) -> bool:
        return in4_chksum(socket.IPPROTO_TCP, IP(raw), raw[tcp_at:]) == 0

    def differs_from_good_at(raw: bytes) -> set[int]:
        assert len(raw) == len(good)
        return {i for i in range(len(raw)) if raw[i] != good[i]}

    assert IP(good)[TCP].dataofs == 5 and tcp_csum_ok(good)
    for raw, x in zip(wire["drop_tcp_bad_checksum"], bad_csums, strict=True):
        assert IP(raw)[TCP].chksum == x and not tcp_csum_ok(raw)
        assert differs_from_good_at(raw) <= {chk, chk + 1}
    for raw, o in zip(wire["drop_tcp_bad_option"], bad_options, strict=True):
        assert raw[off] >> 4 == 5 + len(o) // 4 and tcp_csum_ok(raw)
        assert raw[tcp_at + 20 :] == o + evil
        assert raw[tcp_at : tcp_at + 12] == good[tcp_at : tcp_at + 12]
    for raw, d in zip(wire["drop_tcp_bad_data_offset"], bad_offsets, strict=True):
        assert raw[off] >> 4 == d and tcp_csum_ok(raw)
        assert differs_from_good_at(raw) <= {off, chk, chk + 1}
    for raw, f in zip(wire["drop_tcp_bad_flags"], bad_flags, strict=True):
        assert raw[flg] == int(TCP(flags=f).flags) and tcp_csum_ok(raw)
        assert differs_from_good_at(raw) <= {flg, chk, chk + 1}
    for raw, ports in zip(wire["drop_tcp_bad_port"], [(0, ECHO_PORT), (c.port, 0)], strict=True):
        tcp = IP(raw)[TCP]
        assert (tcp.sport, tcp.dport, tcp.flags, tcp.dataofs) == (*ports, "A", 5)
        assert len(raw) == tcp_at + 20 and tcp_csum_ok(raw)
    for raw, n in zip(wire["drop_tcp_truncated"], (19, 8), strict=True):
        ip = IP(raw)
        assert (ip.proto, ip.len, raw[tcp_at:]) == (socket.IPPROTO_TCP, len(raw), good[20 : 20 + n])
    before = served.stack.stats()
    w.drain()
    for packets in kinds.values():
        w.send([w.frame(p) for p in packets])
    c.sync()
    after = served.stack.stats()
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in kinds}
    assert delta == {k: len(v) for k, v in kinds.items()}
    assert after.get("drop_internal_error", 0) == before.get("drop_internal_error", 0)
    # None reached the connection: nothing was answered, nothing counted there.
    assert pure_acks(w.captured_from_ustack(c.port)) == []
    assert c.info().counters == {}
    c.sync()
    c.close()


# ---- SYN flood -------------------------------------------------------------------------------


FLOOD_SYNS = 20_000
FLOOD_CHUNK = 250
FLOOD_PORT = ECHO_PORT
SYN_BACKLOG = 256  # TcpLayer.listen's default


def flood_frames(wire: Wire, n: int, seed: int) -> list[bytes]:
    """SYNs with MSS, SACK-permitted, timestamps and window scale, like Linux's.

    scapy builds one frame per source address (151 of them); each SYN is a copy
    of its source's frame with the source port, ISN and TSval written in by
    pack_into and the TCP checksum recomputed (scapy's `checksum` over scapy's
    pseudo-header).  Building all 20,000 with scapy takes about 9 s, twice the
    rest of this module; this takes a fraction of a second.  A few are checked
    against scapy building them whole.
    """
    rng = random.Random(seed)
    params: list[tuple[str, int, int, int]] = []  # (source, port, TSval, ISN)
    tuples: set[tuple[str, int]] = set()
    while len(params) < n:
        src = f"198.18.0.{rng.randint(100, 250)}"
        sport = rng.randint(1024, 65535)
        if (src, sport) in tuples:
            continue  # each SYN opens a 4-tuple of its own
        tuples.add((src, sport))
        params.append((src, sport, rng.getrandbits(32), rng.getrandbits(32)))

    def syn(src: str, sport: int, tsval: int, isn: int) -> Packet:
        options = [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (tsval, 0)), ("NOP", None)]
        tcp = TCP(
            sport=sport,
            dport=FLOOD_PORT,
            seq=isn,
            flags="S",
            window=64240,
            options=[*options, ("WScale", 7)],
        )
        return wire.ip(src) / tcp

    tcp_at = 14 + 20  # Ethernet, IPv4 without options
    u16, u32 = struct.Struct("!H"), struct.Struct("!I")
    templates: dict[str, tuple[bytes, bytes]] = {}  # source: (frame, TCP pseudo-header)
    out: list[bytes] = []
    for src, sport, tsval, isn in params:
        if src not in templates:
            pkt = syn(src, 0, 0, 0)
            frame = wire.frame(pkt)
            assert frame[tcp_at + 26 : tcp_at + 28] == b"\x08\x0a"  # TSval follows
            pseudo = in4_pseudoheader(socket.IPPROTO_TCP, wire.ip(src), len(frame) - tcp_at)
            templates[src] = frame, pseudo
        frame, pseudo = templates[src]
        buf = bytearray(frame)
        u16.pack_into(buf, tcp_at, sport)
        u32.pack_into(buf, tcp_at + 4, isn)
        u32.pack_into(buf, tcp_at + 28, tsval)
        u16.pack_into(buf, tcp_at + 16, 0)
        u16.pack_into(buf, tcp_at + 16, checksum(pseudo + buf[tcp_at:]))
        out.append(bytes(buf))
    for k in (0, 1, n // 2, n - 1):
        assert out[k] == wire.frame(syn(*params[k])), k
    return out


def syns_seen(ctx: Context) -> int:
    c = ctx.stack.tcp.listeners[FLOOD_PORT].core.counters
    return (
        c.get("tcp_passive_opens", 0)
        + c.get("tcp_syncookies_sent", 0)
        + c.get("tcp_listen_overflows", 0)
    )


def bounds(ctx: Context) -> tuple[int, int, int, int]:
    """(connections, ARP queued, ARP entries, free transmit slots) right now."""
    st = ctx.stack
    return (
        len(st.tcp.conns),
        st.neighbours.queued_total,
        len(st.neighbours),
        st.dev.tx_free_count(),
    )


def test_syn_flood_cookies_keep_memory_bounded_and_service_up(topology: Topology):
    stack, echo, sink = _serve(topology)
    payload = os.urandom(1 << 20)
    with stack:
        wire = Wire(topology, stack.mac)
        try:
            _syn_flood(topology, stack, wire, echo, sink, payload)
        finally:
            wire.close()
    assert echo.errors == [] and sink.errors == []


def _syn_flood(
    topo: Topology,
    stack: StackThread,
    wire: Wire,
    echo: EchoApp,
    sink: HashSinkApp,
    payload: bytes,
) -> None:
    frames = flood_frames(wire, FLOOD_SYNS, seed=4987)
    tx_slots = stack.call(lambda ctx: ctx.stack.dev.tx_slots)
    max_queued = stack.call(lambda ctx: ctx.stack.neighbours.max_queued_total)
    max_neigh = stack.call(lambda ctx: ctx.stack.neighbours.max_entries)

    # An established transfer to the hashing sink runs through the whole flood.
    flood_done = threading.Event()
    result: dict[str, Any] = {}
    xfer = ns_socket(topo.client_ns, socket.SOCK_STREAM)
    xfer.settimeout(60)
    xfer.connect((topo.ustack_addr, SINK_PORT))

    def transfer() -> None:
        h = hashlib.sha256()
        sent = 0
        try:
            # About 25 MB/s: a steady stream that leaves the CPU to the flood.
            piece = 256 * 1024
            while not flood_done.is_set() or sent < 4 * len(payload):
                chunk = payload[sent % len(payload) :][:piece]
                xfer.sendall(chunk)
                h.update(chunk)
                sent += len(chunk)
                time.sleep(0.01)
            xfer.shutdown(socket.SHUT_WR)
            reply = b""
            while len(reply) < 64:
                data = xfer.recv(64 - len(reply))
                if not data:
                    break
                reply += data
            result.update(sent=sent, digest=h.hexdigest(), reply=reply.decode())
        except Exception as exc:
            result["error"] = repr(exc)

    sender = threading.Thread(target=transfer, name="transfer")
    sender.start()
    legit: socket.socket | None = None
    most = (0, 0, 0, tx_slots)
    t0 = time.monotonic()
    try:
        for i in range(0, FLOOD_SYNS, FLOOD_CHUNK):
            wire.send(frames[i : i + FLOOD_CHUNK])
            # Pace to ustack: the TAP's queue holds 500 frames, and a frame it
            # drops would make the counts below depend on timing.
            deadline = time.monotonic() + 20
            expected = i + FLOOD_CHUNK + (legit is not None)  # the legitimate SYN too
            while stack.call(syns_seen) < expected:
                assert time.monotonic() < deadline, (
                    f"ustack saw {stack.call(syns_seen)} of {expected} SYNs",
                    stack.stats(),
                )
                time.sleep(0.002)
            b = stack.call(bounds)
            most = (max(most[0], b[0]), max(most[1], b[1]), max(most[2], b[2]), min(most[3], b[3]))
            if i == FLOOD_SYNS // 2:
                # Halfway: a legitimate client connects; its SYN gets a cookie.
                legit = ns_socket(topo.client_ns, socket.SOCK_STREAM)
                legit.settimeout(10)
                legit.connect((topo.ustack_addr, ECHO_PORT))
                legit.sendall(b"hello through a cookie")
                got = b""
                while len(got) < 22:
                    data = legit.recv(64)
                    assert data
                    got += data
                assert got == b"hello through a cookie"
        st = stack.stats()
        lc = stack.call(lambda ctx: dict(ctx.stack.tcp.listeners[FLOOD_PORT].core.counters))
        t_flood = time.monotonic() - t0
    finally:
        flood_done.set()
        sender.join(120)
        xfer.close()
        if legit is not None:
            legit.close()
    assert not sender.is_alive()
    assert "error" not in result, result
    # The transfer crossed the flood intact.
    assert result["reply"] == result["digest"]
    assert result["sent"] >= 4 * len(payload)
    assert list(sink.results.values()) == [(result["sent"], result["digest"])]
    # Cookies engaged once the SYN queue was full, and the legitimate
    # connection came through one.
    # The flood listener (the transfer's is another) saw every SYN: the first
    # SYN_BACKLOG filled its SYN queue, every later one, the legitimate
    # client's included, was answered with a cookie.
    assert lc == {
        "tcp_passive_opens": SYN_BACKLOG + 1,
        "tcp_syncookies_sent": FLOOD_SYNS + 1 - SYN_BACKLOG,
        "tcp_syncookies_recv": 1,
    }, t_flood
    assert st["tcp_syncookies_sent"] == FLOOD_SYNS + 1 - SYN_BACKLOG
    assert len(echo.accepted) == 1
    # Memory stayed bounded: the SYN queue, two real connections; the neighbour
    # queues within their share of the transmit slots.
    conns, queued, neigh, free = most
    assert conns <= SYN_BACKLOG + 2, most
    assert queued <= max_queued, most
    assert neigh <= max_neigh, most
    assert free >= tx_slots - max_queued, most
    assert st.get("drop_internal_error", 0) == 0
    assert st["tcp_conns_syn_received"] <= SYN_BACKLOG
