"""TCP in the Stack, driven frame by frame over a MemoryRing with a fake clock.

The test plays the peer: it builds TCP segments with scapy, feeds them at
an explicit `now_us`, and asserts exactly which segments come back (flags,
sequence numbers, options, payload), then that nothing else does, then the
counters that changed.  Covers what `ustack.stack.tcp` and
`ustack.tcp.listener` add to the control block: demultiplexing, passive
and active opens through the Stack, RSTs for closed ports (RFC 9293
3.10.7.1), SYN-ACKs to a listener, SYN cookies when the SYN queue
overflows, the accept queue's back-pressure, TIME-WAIT reuse (RFC 6191),
listener close, the connection table emptying, the timer heap, ACKs per
burst (one cumulative ACK for in-order data, one per segment that wants
its own: RFC 5681 4.2), TSO and checksum offload on a device with
virtio-net headers, and ICMP fragmentation needed (path MTU discovery,
RFC 1191 with RFC 5927's checks).

The peer's initial sequence numbers sit just below 2**32 so that every
data exchange crosses the wrap.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Iterable
from typing import Any

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw

from ustack.dev.base import (
    VNET_F_DATA_VALID,
    VNET_F_NEEDS_CSUM,
    VNET_GSO_NONE,
    VNET_GSO_TCPV4,
    VnetHeader,
)
from ustack.dev.memring import MemoryRing
from ustack.stack.interface import Interface
from ustack.stack.stack import Stack
from ustack.stack.tcp import TcpConnection, TcpListener
from ustack.tcp.syncookie import MSS_TABLE, decode_tsecr
from ustack.tcp.tcb import State, TcpConfig
from ustack.wire.checksum import checksum, pseudo_sum
from ustack.wire.ipv4 import PROTO_TCP, ip_from_str

US = "198.18.0.2"
PEER = "198.18.0.1"
US_MAC = "02:00:00:00:00:02"
PEER_MAC = "02:00:00:00:00:01"
BCAST_MAC = "ff:ff:ff:ff:ff:ff"

S = 1_000_000
MS = 1_000
T0 = 5 * S
PORT = 80
PEER_ISN = 0xFFFFFF00  # the peer's data crosses 2**32 after 256 bytes
MASK32 = 0xFFFFFFFF
OUR_WSCALE = 3  # TcpConfig's default 256 KB rcvbuf needs a shift of 3 (RFC 7323 2.3)
SLOT_GSO = 65536 + 4096


def seq_add(a: int, n: int) -> int:
    return (a + n) & MASK32


# ---- the host and the peer ------------------------------------------------------


class Net:
    """One Stack on a MemoryRing that already knows PEER's MAC; the clock is `now`."""

    def __init__(
        self, *, config: TcpConfig | None = None, vnet: bool = False, slot_size: int = 2048
    ) -> None:
        self.ring = MemoryRing(
            vnet_hdr=vnet, slot_size=slot_size, rx_slots=64, tx_slots=256 if vnet else 512
        )
        iface = Interface.from_config(f"{US}/24", mac=US_MAC)
        self.stack = Stack(self.ring, iface, tcp_config=config)
        self.tcp = self.stack.tcp
        self.now = T0
        self.learn_peer()
        self._mark: dict[str, int] = {}
        self.mark()

    def learn_peer(self) -> None:
        """PEER asks for our MAC: we answer, and PEER is REACHABLE."""
        arp = Ether(dst=BCAST_MAC, src=PEER_MAC) / ARP(op=1, hwsrc=PEER_MAC, psrc=PEER, pdst=US)
        assert len(self.feed([arp])) == 1

    def feed(
        self, frames: Iterable[Any], at: int | None = None, vnet: VnetHeader | None = None
    ) -> list[Any]:
        """Inject frames, run one burst and its flush at `at` (default: now); what went out."""
        if at is not None:
            self.now = at
        n_in = 0
        for f in frames:
            self.ring.inject(bytes(f), vnet)
            n_in += 1
        n = self.ring.rx_burst(self.ring.rx_slots)
        assert n == n_in
        self.stack.process(n, self.now)
        self.stack.flush(self.now)
        return self.take()

    def flush(self) -> list[Any]:
        """What the application's calls made owed, at the current time."""
        self.stack.flush(self.now)
        return self.take()

    def timers(self, at: int) -> list[Any]:
        """Advance the clock to `at`, run due timers as the Context does, flush."""
        self.now = at
        deadline = self.stack.next_deadline_us()
        if deadline is not None and at >= deadline:
            self.stack.on_timer(at)
        self.stack.flush(at)
        return self.take()

    def take(self) -> list[Any]:
        out = [Ether(f) for f in self.ring.sent]
        self.ring.sent.clear()
        return out

    def take_vnet(self) -> list[VnetHeader | None]:
        out = list(self.ring.sent_vnet)
        self.ring.sent_vnet.clear()
        return out

    def _stats(self) -> dict[str, int]:
        return {k: v for k, v in self.stack.stats().items() if not k.startswith("dev_")}

    def mark(self) -> None:
        self._mark = self._stats()

    def delta(self) -> dict[str, int]:
        """Every counter (and gauge) that changed since mark(), by how much."""
        now = self._stats()
        keys = set(now) | set(self._mark)
        out = {k: now.get(k, 0) - self._mark.get(k, 0) for k in keys}
        return {k: v for k, v in out.items() if v}

    def delta_tcp(self) -> dict[str, int]:
        return {k: v for k, v in self.delta().items() if k.startswith(("tcp_", "drop_tcp_"))}


class Peer:
    """The remote end of one 4-tuple, played with scapy; tracks its sequence space."""

    def __init__(
        self,
        net: Net,
        *,
        sport: int = 40000,
        dport: int = PORT,
        isn: int = PEER_ISN,
        mss: int | None = 1460,
        wscale: int | None = 7,
        sack: bool = True,
        ts: bool = True,
        window: int = 1000,
        src: str = PEER,
    ) -> None:
        self.net = net
        self.sport = sport
        self.dport = dport
        self.src = src
        self.isn = isn
        self.snd_nxt = isn
        self.mss = mss
        self.wscale = wscale
        self.sack = sack
        self.ts = ts
        self.window = window
        self.tsval = 7_000_000
        self.ts_recent = 0
        self.rcv_nxt = 0
        self.received = bytearray()

    def _ts_opt(self) -> list[tuple[str, Any]]:
        self.tsval += 1
        return [("NOP", None), ("NOP", None), ("Timestamp", (self.tsval, self.ts_recent))]

    def frame(
        self,
        flags: str,
        payload: bytes = b"",
        *,
        seq: int | None = None,
        ack: int | None = None,
        window: int | None = None,
        options: list[tuple[str, Any]] | None = None,
        chksum: int | None = None,
        advance: bool = True,
    ) -> Any:
        """A segment from the peer; seq defaults to snd_nxt (advanced past data, SYN, FIN)."""
        s = self.snd_nxt if seq is None else seq
        if options is None:
            options = self._ts_opt() if self.ts else []
        fields: dict[str, Any] = {
            "sport": self.sport,
            "dport": self.dport,
            "flags": flags,
            "seq": s,
            "ack": (self.rcv_nxt if ack is None else ack) if "A" in flags else 0,
            "window": self.window if window is None else window,
            "options": options,
        }
        if chksum is not None:
            fields["chksum"] = chksum
        pkt = Ether(dst=US_MAC, src=PEER_MAC) / IP(src=self.src, dst=US) / TCP(**fields)
        if payload:
            pkt = pkt / Raw(payload)
        if advance and seq is None:
            n = len(payload) + ("S" in flags) + ("F" in flags)
            self.snd_nxt = seq_add(self.snd_nxt, n)
        return pkt

    def syn(self, **kw: Any) -> Any:
        opts: list[tuple[str, Any]] = []
        if self.mss is not None:
            opts.append(("MSS", self.mss))
        if self.sack:
            opts.append(("SAckOK", b""))
        if self.ts:
            self.tsval += 1
            opts.append(("Timestamp", (self.tsval, 0)))
        if self.wscale is not None:
            opts += [("NOP", None), ("WScale", self.wscale)]
        self.snd_nxt = self.isn
        return self.frame("S", options=opts, **kw)

    def ack(self, payload: bytes = b"", flags: str = "A", **kw: Any) -> Any:
        return self.frame(flags, payload, **kw)

    def got(self, frames: list[Any]) -> list[Any]:
        """Take note of our segments to this peer (RCV.NXT, TS.Recent, data); return them."""
        mine = [f for f in frames if TCP in f and f[TCP].dport == self.sport]
        for f in mine:
            t = f[TCP]
            n = len(bytes(t.payload))
            if t.flags.S:
                self.rcv_nxt = seq_add(t.seq, 1)
            elif n and t.seq == self.rcv_nxt:
                self.received += bytes(t.payload)
                self.rcv_nxt = seq_add(self.rcv_nxt, n)
            if t.flags.F and seq_add(t.seq, n) == self.rcv_nxt:
                self.rcv_nxt = seq_add(self.rcv_nxt, 1)
            tsopt = dict(t.options).get("Timestamp")
            if tsopt is not None:
                self.ts_recent = tsopt[0]
        return mine


def state(conn: TcpConnection) -> State:
    """The connection's state (a call, so that type narrowing does not carry over)."""
    return conn.state


def tcp_of(frame: Any) -> Any:
    assert TCP in frame, frame.summary()
    return frame[TCP]


def flags(frame: Any) -> str:
    return str(tcp_of(frame).flags)


def payload(frame: Any) -> bytes:
    return bytes(tcp_of(frame).payload)


def opts(frame: Any) -> dict[str, Any]:
    return dict(tcp_of(frame).options)


def summary(frames: list[Any]) -> list[tuple[str, int, int, int]]:
    """(flags, seq, ack, payload length) of each TCP frame, in order."""
    return [(flags(f), tcp_of(f).seq, tcp_of(f).ack, len(payload(f))) for f in frames]


def establish(net: Net, listener: TcpListener, peer: Peer) -> TcpConnection:
    """Passive open with `peer`; returns the accepted connection, counters marked after."""
    out = peer.got(net.feed([peer.syn()]))
    assert [flags(f) for f in out] == ["SA"]
    assert net.feed([peer.ack()]) == []
    conn = listener.accept()
    assert conn is not None and state(conn) is State.ESTABLISHED
    net.mark()
    return conn


@pytest.fixture
def net() -> Net:
    return Net()


@pytest.fixture
def listener(net: Net) -> TcpListener:
    lst = net.tcp.listen(PORT)
    net.mark()
    return lst


# ---- passive open ----------------------------------------------------------------


def test_listen_syn_answered_by_syn_ack_with_negotiated_options(net: Net, listener: TcpListener):
    peer = Peer(net)
    out = net.feed([peer.syn()])
    assert len(out) == 1
    f = out[0]
    assert (f.src, f.dst) == (US_MAC, PEER_MAC)
    assert (f[IP].src, f[IP].dst, f[IP].flags.DF) == (US, PEER, True)
    t = tcp_of(f)
    assert (t.sport, t.dport, str(t.flags)) == (PORT, 40000, "SA")
    assert t.ack == seq_add(PEER_ISN, 1)
    assert t.window == 65535  # never scaled in a SYN (RFC 7323 2.2)
    o = opts(f)
    assert o["MSS"] == 1460
    assert o["WScale"] == OUR_WSCALE
    assert "SAckOK" in o
    assert o["Timestamp"][1] == peer.tsval  # TSecr echoes the SYN's TSval
    assert payload(f) == b""
    # The checksum scapy computes over the same bytes agrees with ours.
    again = Ether(bytes(f))
    del again[TCP].chksum
    assert Ether(bytes(again))[TCP].chksum == t.chksum
    conns = list(net.tcp.conns.values())
    assert len(conns) == 1 and conns[0].state is State.SYN_RECEIVED
    assert listener.ready == 0 and listener.core.pending == 1
    assert net.delta() == {
        "eth_in_frames": 1,
        "ipv4_in_receives": 1,
        "ipv4_in_delivers": 1,
        "ipv4_out_requests": 1,
        "tcp_in_segs": 1,
        "tcp_out_segs": 1,
        "tcp_passive_opens": 1,
        "tcp_conns": 1,
        "tcp_conns_syn_received": 1,
    }


def test_listen_syn_without_options_syn_ack_offers_only_mss(net: Net, listener: TcpListener):
    peer = Peer(net, mss=None, wscale=None, sack=False, ts=False)
    out = net.feed([peer.syn()])
    assert [flags(f) for f in out] == ["SA"]
    # RFC 7323 and RFC 2018: no Window Scale, Timestamps or SACK-Permitted
    # in a SYN-ACK unless the SYN had them.
    assert tcp_of(out[0]).options == [("MSS", 1460)]
    (conn,) = net.tcp.conns.values()
    assert conn.stats()["smss"] == 536  # no MSS option: the default (RFC 9293 3.7.1)


def test_syn_received_ack_establishes_and_accept_returns_connection(
    net: Net, listener: TcpListener
):
    events: list[TcpListener] = []
    listener.on_event = events.append
    peer = Peer(net)
    out = peer.got(net.feed([peer.syn()]))
    iss = seq_add(tcp_of(out[0]).seq, 0)
    net.mark()
    assert net.feed([peer.ack()]) == []  # nothing to say: the handshake is complete
    assert events == [listener]
    assert listener.ready == 1 and listener.core.pending == 0
    conn = listener.accept()
    assert conn is not None
    assert listener.accept() is None
    assert state(conn) is State.ESTABLISHED
    assert conn.local == (ip_from_str(US), PORT)
    assert conn.remote == (ip_from_str(PEER), 40000)
    assert conn.tcb.iss == iss
    st = conn.stats()
    assert (st["smss"], st["snd_wscale"], st["rcv_wscale"]) == (1448, 7, OUR_WSCALE)
    assert (st["sack"], st["timestamps"], st["snd_wnd"]) == (True, True, 1000 << 7)
    assert net.delta() == {
        "eth_in_frames": 1,
        "ipv4_in_receives": 1,
        "ipv4_in_delivers": 1,
        "tcp_in_segs": 1,
        "tcp_conns_syn_received": -1,
        "tcp_conns_established": 1,
    }


def test_syn_received_unanswered_syn_ack_times_out_and_frees_syn_queue_place(
    net: Net, listener: TcpListener
):
    peer = Peer(net)
    (sa,) = net.feed([peer.syn()])
    assert listener.core.pending == 1
    # The SYN-ACK is sent again 5 times (synack_retries), backing off from 1 s.
    resent = []
    t = T0
    for _ in range(200):
        t += 500 * MS
        # (ARP re-validates PEER on the way: only TCP counts here.)
        resent += [f for f in net.timers(t) if TCP in f]
        if not net.tcp.conns:
            break
    assert summary(resent) == [("SA", tcp_of(sa).seq, seq_add(PEER_ISN, 1), 0)] * 5
    assert net.tcp.conns == {} and listener.core.pending == 0
    assert net.delta_tcp()["tcp_embryonic_failed"] == 1
    # The place is free again: a new SYN gets a child, not a cookie.
    net.learn_peer()  # PEER never answered ARP's re-validation either
    other = Peer(net, sport=40001)
    assert [flags(f) for f in net.feed([other.syn()])] == ["SA"]
    assert listener.core.pending == 1


def test_syn_received_reset_by_peer_frees_syn_queue_place(net: Net, listener: TcpListener):
    peer = Peer(net)
    net.feed([peer.syn()])
    assert listener.core.pending == 1
    assert net.feed([peer.frame("R", options=[])]) == []
    assert net.tcp.conns == {} and listener.core.pending == 0
    assert listener.accept() is None


def test_listen_on_port_taken_raises_eaddrinuse(net: Net, listener: TcpListener):
    with pytest.raises(OSError) as exc:
        net.tcp.listen(PORT)
    assert exc.value.errno == errno.EADDRINUSE
    with pytest.raises(ValueError):
        net.tcp.listen(0)


def test_syn_retransmitted_before_handshake_gets_same_syn_ack(net: Net, listener: TcpListener):
    peer = Peer(net)
    first = net.feed([peer.syn()])
    again = net.feed([peer.syn()], at=T0 + 500 * MS)
    assert len(net.tcp.conns) == 1 and listener.core.pending == 1
    assert summary(again) == [("SA", tcp_of(first[0]).seq, seq_add(PEER_ISN, 1), 0)]


# ---- active open -------------------------------------------------------------------


def test_connect_sends_syn_and_syn_ack_establishes_with_ack(net: Net):
    conn = net.tcp.connect(ip_from_str(PEER), 8080)
    assert state(conn) is State.SYN_SENT
    queued = conn.send(b"early data")  # sent once the handshake completes
    assert queued == 10
    out = net.flush()
    assert [flags(f) for f in out] == ["S"]
    syn = tcp_of(out[0])
    lport = syn.sport
    assert 1024 <= lport <= 65535 and syn.dport == 8080
    o = opts(out[0])
    assert (o["MSS"], o["WScale"], "SAckOK" in o) == (1460, OUR_WSCALE, True)
    assert o["Timestamp"][1] == 0
    assert net.delta_tcp() == {
        "tcp_active_opens": 1,
        "tcp_out_segs": 1,
        "tcp_conns": 1,
        "tcp_conns_syn_sent": 1,
    }
    peer = Peer(net, sport=8080, dport=lport, isn=0xFFFFFFF0)
    peer.got(out)
    peer.rcv_nxt = seq_add(syn.seq, 1)
    synack = peer.syn()
    synack[TCP].flags = "SA"
    synack[TCP].ack = peer.rcv_nxt
    out = peer.got(net.feed([synack]))
    assert state(conn) is State.ESTABLISHED
    # The ACK of the SYN-ACK carries the data queued during the handshake.
    assert summary(out) == [("PA", seq_add(syn.seq, 1), seq_add(0xFFFFFFF0, 1), 10)]
    assert payload(out[0]) == b"early data"
    assert conn.stats()["snd_wscale"] == 7


def test_connect_to_closed_port_rst_gives_econnrefused_and_frees_entry(net: Net):
    conn = net.tcp.connect(ip_from_str(PEER), 8080)
    (syn,) = net.flush()
    t = tcp_of(syn)
    peer = Peer(net, sport=8080, dport=t.sport)
    rst = peer.frame("RA", seq=0, ack=seq_add(t.seq, 1), options=[])
    assert net.feed([rst]) == []
    assert state(conn) is State.CLOSED and conn.error == errno.ECONNREFUSED
    assert net.tcp.conns == {}


def test_connect_twice_same_local_port_raises_eaddrinuse(net: Net):
    conn = net.tcp.connect(ip_from_str(PEER), 8080, local_port=5555)
    assert conn.local[1] == 5555
    with pytest.raises(OSError) as exc:
        net.tcp.connect(ip_from_str(PEER), 8080, local_port=5555)
    assert exc.value.errno == errno.EADDRINUSE


def test_connect_ephemeral_ports_distinct_for_same_peer(net: Net):
    ports = {net.tcp.connect(ip_from_str(PEER), 8080).local[1] for _ in range(50)}
    assert len(ports) == 50
    assert len(net.tcp.conns) == 50


# ---- data ----------------------------------------------------------------------------


def test_established_data_both_ways_across_sequence_wrap(net: Net, listener: TcpListener):
    peer = Peer(net)
    conn = establish(net, listener, peer)
    iss = conn.tcb.iss
    # 300 bytes from the peer cross 2**32 (PEER_ISN + 1 + 300 wraps).
    data = bytes(range(256)) + b"x" * 44
    # The first data of the connection is ACKed at the burst's flush (quick-ACK mode).
    out = peer.got(net.feed([peer.ack(data, "PA")]))
    assert summary(out) == [("A", seq_add(iss, 1), seq_add(PEER_ISN, 301), 0)]
    assert conn.readable_bytes == 300
    assert conn.recv(1000) == data
    # The application answers: the data goes at the next flush.  A reply within
    # 40 ms of the request makes the connection interactive (Linux's pingpong).
    assert conn.send(b"reply" * 100) == 500
    out = peer.got(net.flush())
    assert summary(out) == [("PA", seq_add(iss, 1), seq_add(PEER_ISN, 301), 500)]
    assert peer.received == b"reply" * 100
    assert conn.stats()["unacked"] == 500
    # The next request's ACK waits for a reply to ride on (RFC 1122 4.2.3.2) ...
    assert net.feed([peer.ack(b"more", "PA")]) == []
    assert conn.stats()["unacked"] == 0
    assert conn.recv(1000) == b"more"
    # ... and with none, leaves 40 ms later, from the timer.
    out = peer.got(net.timers(net.now + 40 * MS))
    assert summary(out) == [("A", seq_add(iss, 501), seq_add(PEER_ISN, 305), 0)]
    assert net.delta_tcp() == {"tcp_in_segs": 2, "tcp_out_segs": 3}


def test_two_full_segments_acked_at_once(net: Net, listener: TcpListener):
    peer = Peer(net)
    conn = establish(net, listener, peer)
    out = net.feed([peer.ack(b"a" * 1448), peer.ack(b"b" * 1448)])
    assert summary(out) == [("A", seq_add(conn.tcb.iss, 1), seq_add(PEER_ISN, 1 + 2896), 0)]


def test_on_event_reply_rides_on_the_ack_of_the_request(net: Net, listener: TcpListener):
    peer = Peer(net)
    conn = establish(net, listener, peer)
    seen: list[bytes] = []

    def echo(c: TcpConnection) -> None:
        data = c.recv(65536)
        if data:
            seen.append(data)
            c.send(data.upper())

    conn.on_event = echo
    out = peer.got(net.feed([peer.ack(b"ping", "PA")]))
    assert seen == [b"ping"]
    assert summary(out) == [("PA", seq_add(conn.tcb.iss, 1), seq_add(PEER_ISN, 5), 4)]
    assert payload(out[0]) == b"PING"


def test_segments_without_offload_are_at_most_smss_and_fully_checksummed(
    net: Net, listener: TcpListener
):
    peer = Peer(net, window=2000)
    conn = establish(net, listener, peer)
    assert conn.send(bytes(10_000)) == 10_000
    out = peer.got(net.flush())
    # The short tail waits for the ACK (Nagle, RFC 9293 3.7.4).
    assert [len(payload(f)) for f in out] == [1448] * 6
    tail = peer.got(net.feed([peer.ack()]))
    assert [len(payload(f)) for f in tail] == [10_000 - 6 * 1448]
    assert peer.received == bytes(10_000)
    for f in out + tail:
        ip = bytes(f[IP])
        tlen = len(ip) - 20
        assert checksum(ip, 20, tlen, pseudo_sum(ip_from_str(US), ip_from_str(PEER), 6, tlen)) == 0


# ---- ACKs per burst: one cumulative ACK, but one ACK per out-of-order segment ---------------


def sack_blocks(frame: Any) -> list[tuple[int, int]]:
    """The SACK blocks of one of our segments, as (left, right) pairs."""
    flat = opts(frame).get("SAck", ())
    return list(zip(flat[0::2], flat[1::2], strict=True))


def test_established_in_order_burst_gets_exactly_one_cumulative_ack(
    net: Net, listener: TcpListener
):
    """ARCHITECTURE.md rule 3: five in-order segments in one burst, one (stretch) ACK."""
    peer = Peer(net)
    conn = establish(net, listener, peer)
    out = net.feed([peer.ack(bytes([i]) * 1448) for i in range(5)])
    assert summary(out) == [("A", seq_add(conn.tcb.iss, 1), seq_add(PEER_ISN, 1 + 5 * 1448), 0)]
    assert conn.readable_bytes == 5 * 1448
    assert net.delta_tcp() == {"tcp_in_segs": 5, "tcp_out_segs": 1}


@pytest.mark.parametrize("sack", [True, False], ids=["sack", "no-sack"])
def test_established_out_of_order_burst_gets_one_duplicate_ack_per_segment(
    net: Net, listener: TcpListener, sack: bool
):
    """RFC 5681 4.2: an immediate duplicate ACK for each out-of-order segment.

    A peer without SACK counts duplicate ACKs per packet (Linux does), so
    five segments beyond a hole in one burst must bring five ACKs, each
    for the hole and with the same window, or it never sees three.
    """
    peer = Peer(net, sack=sack)
    conn = establish(net, listener, peer)
    hole = peer.snd_nxt
    peer.snd_nxt = seq_add(hole, 1448)  # the first segment is lost
    out = net.feed([peer.ack(bytes([i]) * 1448) for i in range(5)])
    iss1 = seq_add(conn.tcb.iss, 1)
    assert summary(out) == [("A", iss1, hole, 0)] * 5
    assert len({tcp_of(f).window for f in out}) == 1  # a window change is no duplicate
    for f in out:
        if sack:
            assert sack_blocks(f) == [(seq_add(hole, 1448), seq_add(hole, 6 * 1448))]
        else:
            assert "SAck" not in opts(f)
    assert conn.readable_bytes == 0
    assert net.delta_tcp() == {"tcp_in_segs": 5, "tcp_out_segs": 5}


def test_established_burst_partly_filling_a_hole_acks_the_fill_and_each_later_segment(
    net: Net, listener: TcpListener
):
    """RFC 5681 4.2: an immediate ACK for a segment that partly fills a gap, then dupACKs."""
    peer = Peer(net)
    conn = establish(net, listener, peer)
    iss1 = seq_add(conn.tcb.iss, 1)
    a = peer.snd_nxt  # segments a and b are lost, c and d arrive
    b = seq_add(a, 1448)
    c = seq_add(a, 2 * 1448)
    peer.snd_nxt = c
    first = net.feed([peer.ack(b"c" * 1448), peer.ack(b"d" * 1448)])
    assert summary(first) == [("A", iss1, a, 0)] * 2
    # One burst: the retransmission of a (b still missing), then e beyond d.
    fill = peer.ack(b"a" * 1448, seq=a)
    e = peer.ack(b"e" * 1448)
    out = net.feed([fill, e])
    assert summary(out) == [("A", iss1, b, 0)] * 2
    for f in out:
        assert sack_blocks(f) == [(c, seq_add(c, 3 * 1448))]
    assert conn.readable_bytes == 1448


def test_established_burst_filling_the_hole_gets_one_ack_and_no_stale_duplicates(
    net: Net, listener: TcpListener
):
    """Reordering inside one burst: the duplicate ACKs owed before the hole filled are
    not sent with the new acknowledgment number, where they would read as duplicates
    of it (a false loss signal); the ACK for the fill supersedes them."""
    peer = Peer(net, sack=False)
    conn = establish(net, listener, peer)
    a = peer.snd_nxt
    peer.snd_nxt = seq_add(a, 1448)
    later = [peer.ack(bytes([i]) * 1448) for i in range(4)]
    out = net.feed([*later, peer.ack(b"a" * 1448, seq=a)])
    assert summary(out) == [("A", seq_add(conn.tcb.iss, 1), seq_add(a, 5 * 1448), 0)]
    assert conn.readable_bytes == 5 * 1448


def test_established_old_duplicates_then_new_data_in_one_burst_get_one_ack(
    net: Net, listener: TcpListener
):
    """Each old duplicate owes an ACK (RFC 9293 3.10.7.4), but new data in the same burst
    moves RCV.NXT: one ACK for it, not duplicates of the new number."""
    peer = Peer(net, sack=False)
    conn = establish(net, listener, peer)
    a = peer.snd_nxt
    net.feed([peer.ack(b"a" * 1448), peer.ack(b"b" * 1448)])
    dups = [peer.ack(b"a" * 1448, seq=a), peer.ack(b"b" * 1448, seq=seq_add(a, 1448))]
    out = net.feed([*dups, *dups, peer.ack(b"c" * 1448)])
    assert summary(out) == [("A", seq_add(conn.tcb.iss, 1), seq_add(a, 3 * 1448), 0)]
    # Alone, each duplicate gets its ACK.
    out = net.feed(dups)
    assert summary(out) == [("A", seq_add(conn.tcb.iss, 1), seq_add(a, 3 * 1448), 0)] * 2


def test_segment_for_unknown_4tuple_matching_no_listener_port_reset(
    net: Net, listener: TcpListener
):
    # Same peer address, another source port: not this connection.
    peer = Peer(net)
    establish(net, listener, peer)
    other = Peer(net, sport=40001)
    out = net.feed([other.ack(b"x", seq=1234, ack=5678)])
    assert summary(out) == [("R", 5678, 0, 0)]


# ---- RST for a closed port (RFC 9293 3.10.7.1) -----------------------------------------


def test_closed_port_segment_with_ack_gets_rst_seq_from_ack(net: Net):
    peer = Peer(net, dport=81)
    out = net.feed([peer.ack(b"data", seq=1000, ack=0xFFFFFFF0)])
    # <SEQ=SEG.ACK><CTL=RST>
    assert summary(out) == [("R", 0xFFFFFFF0, 0, 0)]
    assert tcp_of(out[0]).options == []
    assert tcp_of(out[0]).window == 0
    assert net.delta_tcp() == {
        "tcp_in_segs": 1,
        "tcp_no_port": 1,
        "tcp_out_rsts": 1,
        "tcp_out_segs": 1,
    }


def test_closed_port_syn_gets_rst_ack_acknowledging_syn(net: Net):
    peer = Peer(net, dport=81)
    out = net.feed([peer.syn()])
    # <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>; the SYN counts one.
    assert summary(out) == [("RA", 0, seq_add(PEER_ISN, 1), 0)]
    assert net.delta_tcp() == {
        "tcp_in_segs": 1,
        "tcp_no_port": 1,
        "tcp_out_rsts": 1,
        "tcp_out_segs": 1,
    }


def test_closed_port_syn_with_data_rst_acknowledges_syn_and_data(net: Net):
    peer = Peer(net, dport=81, ts=False)
    syn = peer.frame("S", b"0123456789", options=[("MSS", 1460)])
    out = net.feed([syn])
    assert summary(out) == [("RA", 0, seq_add(PEER_ISN, 11), 0)]


def test_closed_port_rst_gets_no_answer(net: Net):
    peer = Peer(net, dport=81)
    assert net.feed([peer.frame("R", seq=1000, options=[])]) == []
    assert net.feed([peer.frame("RA", seq=1000, ack=2000, options=[])]) == []
    assert net.delta_tcp() == {"tcp_in_segs": 2, "tcp_no_port": 2}


def test_flags_with_neither_ack_syn_nor_rst_dropped_without_answer(net: Net):
    peer = Peer(net, dport=81)
    assert net.feed([peer.frame("F", seq=1000, options=[])]) == []
    assert net.feed([peer.frame("", seq=1000, options=[])]) == []
    assert net.delta_tcp() == {"drop_tcp_bad_flags": 2}


def test_syn_ack_to_listener_answered_by_rst(net: Net, listener: TcpListener):
    peer = Peer(net)
    sa = peer.syn()
    sa[TCP].flags = "SA"
    sa[TCP].ack = 0x12345678
    out = net.feed([sa])
    assert summary(out) == [("R", 0x12345678, 0, 0)]
    assert net.tcp.conns == {} and listener.core.pending == 0


def test_ack_to_listener_without_cookies_outstanding_answered_by_rst(
    net: Net, listener: TcpListener
):
    peer = Peer(net)
    out = net.feed([peer.ack(seq=1000, ack=0xABCDEF01)])
    assert summary(out) == [("R", 0xABCDEF01, 0, 0)]
    # Not a cookie check: no cookie was sent, so none can fail.
    assert net.delta_tcp() == {"tcp_in_segs": 1, "tcp_out_rsts": 1, "tcp_out_segs": 1}


def test_rst_to_listener_ignored_and_counted(net: Net, listener: TcpListener):
    peer = Peer(net)
    assert net.feed([peer.frame("R", seq=1000, options=[])]) == []
    assert net.delta_tcp() == {"tcp_in_segs": 1, "tcp_listen_rst_ignored": 1}


# ---- SYN cookies ------------------------------------------------------------------------


def fill_syn_queue(net: Net, n: int, first_port: int = 50000) -> list[Peer]:
    peers = [Peer(net, sport=first_port + i) for i in range(n)]
    for p in peers:
        p.got(net.feed([p.syn()]))
    return peers


def test_syn_queue_full_answers_with_cookie_and_keeps_no_state(net: Net):
    listener = net.tcp.listen(PORT, syn_backlog=2)
    fill_syn_queue(net, 2)
    assert listener.core.pending == 2
    net.mark()
    peer = Peer(net, mss=1400, wscale=9, sack=True)
    out = peer.got(net.feed([peer.syn()]))
    assert [flags(f) for f in out] == ["SA"]
    o = opts(out[0])
    assert o["MSS"] == 1460 and o["WScale"] == OUR_WSCALE and "SAckOK" in o
    tsval, tsecr = o["Timestamp"]
    assert tsecr == peer.tsval
    # The peer's options ride in the low bits of our TSval (syncookie.make_tsval).
    assert decode_tsecr(tsval) == (9, True)
    assert tcp_of(out[0]).ack == seq_add(PEER_ISN, 1)
    assert len(net.tcp.conns) == 2 and listener.core.pending == 2
    assert net.delta_tcp() == {
        "tcp_in_segs": 1,
        "tcp_out_segs": 1,
        "tcp_syncookies_sent": 1,
    }


def test_cookie_ack_creates_connection_with_options_the_cookie_encoded(net: Net):
    listener = net.tcp.listen(PORT, syn_backlog=1)
    fill_syn_queue(net, 1)
    peer = Peer(net, mss=1400, wscale=9, sack=True)
    (sa,) = peer.got(net.feed([peer.syn()]))
    cookie = tcp_of(sa).seq
    net.mark()
    # The final ACK carries data: it is kept, and ACKed at the flush (the first
    # data of the connection: quick-ACK mode, Linux).
    out = peer.got(net.feed([peer.ack(b"hello", "PA")]))
    assert summary(out) == [("A", seq_add(cookie, 1), seq_add(PEER_ISN, 6), 0)]
    conn = listener.accept()
    assert conn is not None and state(conn) is State.ESTABLISHED
    assert conn.tcb.iss == cookie
    assert conn.recv(100) == b"hello"
    st = conn.stats()
    # 1400 is rounded down to the table's 1300; timestamps take 12 bytes.
    assert MSS_TABLE[1] == 1300
    assert st["smss"] == 1300 - 12
    assert (st["snd_wscale"], st["rcv_wscale"], st["sack"], st["timestamps"]) == (
        9,
        OUR_WSCALE,
        True,
        True,
    )
    assert st["snd_wnd"] == 1000 << 9
    assert listener.core.pending == 1  # the cookie connection took no SYN-queue place
    d = net.delta_tcp()
    assert d["tcp_syncookies_recv"] == 1 and d["tcp_passive_opens"] == 1
    assert "tcp_syncookies_failed" not in d
    # Data flows both ways.
    assert conn.send(b"world") == 5
    out = peer.got(net.flush())
    assert summary(out) == [("PA", seq_add(cookie, 1), seq_add(PEER_ISN, 6), 5)]


def test_cookie_without_timestamps_carries_no_window_scale_or_sack(net: Net):
    listener = net.tcp.listen(PORT, syn_backlog=1)
    fill_syn_queue(net, 1)
    peer = Peer(net, mss=1460, wscale=7, sack=True, ts=False)
    (sa,) = peer.got(net.feed([peer.syn()]))
    # Without timestamps there is nowhere to keep them: the SYN-ACK offers neither.
    assert tcp_of(sa).options == [("MSS", 1460)]
    assert net.feed([peer.ack()]) == []
    conn = listener.accept()
    assert conn is not None
    st = conn.stats()
    assert (st["smss"], st["snd_wscale"], st["rcv_wscale"], st["sack"], st["timestamps"]) == (
        1460,
        0,
        0,
        False,
        False,
    )


def test_forged_cookie_ack_reset_and_counted(net: Net):
    listener = net.tcp.listen(PORT, syn_backlog=1)
    fill_syn_queue(net, 1)
    peer = Peer(net)
    (sa,) = peer.got(net.feed([peer.syn()]))
    cookie = tcp_of(sa).seq
    net.mark()
    forged = seq_add(cookie, 1 + 4)  # not the cookie
    out = net.feed([peer.ack(ack=forged)])
    assert summary(out) == [("R", forged, 0, 0)]
    # Right cookie, wrong peer ISN: the MAC covers it.
    out = net.feed([peer.ack(seq=seq_add(PEER_ISN, 1000), ack=seq_add(cookie, 1))])
    assert summary(out) == [("R", seq_add(cookie, 1), 0, 0)]
    assert listener.ready == 0 and len(net.tcp.conns) == 1
    assert net.delta_tcp() == {
        "tcp_in_segs": 2,
        "tcp_out_rsts": 2,
        "tcp_out_segs": 2,
        "tcp_syncookies_failed": 2,
    }


def test_cookie_ack_for_another_port_pair_fails(net: Net):
    net.tcp.listen(PORT, syn_backlog=1)
    fill_syn_queue(net, 1)
    peer = Peer(net, sport=41000)
    (sa,) = peer.got(net.feed([peer.syn()]))
    thief = Peer(net, sport=41001)
    thief.snd_nxt = peer.snd_nxt
    out = net.feed([thief.ack(ack=seq_add(tcp_of(sa).seq, 1))])
    assert [flags(f) for f in out] == ["R"]
    assert net.delta_tcp()["tcp_syncookies_failed"] == 1


# ---- accept queue full ---------------------------------------------------------------------


def test_accept_queue_full_drops_syn_and_handshake_ack_until_app_accepts(net: Net):
    listener = net.tcp.listen(PORT, backlog=1)
    a, b, c = (Peer(net, sport=p) for p in (41000, 41001, 41002))
    a.got(net.feed([a.syn()]))
    b.got(net.feed([b.syn()]))
    assert net.feed([a.ack()]) == []
    assert listener.ready == 1
    net.mark()
    # The accept queue is full: a new SYN is dropped (the peer retries) ...
    assert net.feed([c.syn()]) == []
    # ... and b's handshake ACK is dropped before b's child sees it.
    b_ack = b.ack()
    assert net.feed([b_ack]) == []
    (b_conn,) = (x for x in net.tcp.conns.values() if x.remote[1] == 41001)
    assert state(b_conn) is State.SYN_RECEIVED
    assert len(net.tcp.conns) == 2
    assert net.delta_tcp() == {"tcp_in_segs": 2, "tcp_listen_overflows": 2}
    # The application takes a; b's retransmitted ACK now completes.
    first = listener.accept()
    assert first is not None and first.remote[1] == 41000
    assert net.feed([b_ack]) == []
    assert state(b_conn) is State.ESTABLISHED
    assert listener.accept() is b_conn
    # c's SYN retransmission is answered now.
    out = c.got(net.feed([c.syn()]))
    assert [flags(f) for f in out] == ["SA"]


def test_accept_queue_full_child_syn_ack_retransmitted_then_completes(net: Net):
    listener = net.tcp.listen(PORT, backlog=1)
    a, b = Peer(net, sport=41000), Peer(net, sport=41001)
    a.got(net.feed([a.syn()]))
    (sa,) = b.got(net.feed([b.syn()]))
    net.feed([a.ack()])
    assert net.feed([b.ack(b"req", "PA")]) == []  # dropped: nothing acknowledged
    # Our SYN-ACK timer (1 s initial RTO) resends; the peer's answer is
    # still dropped while the queue is full.
    out = net.timers(T0 + 1 * S + 10 * MS)
    assert summary(out) == [("SA", tcp_of(sa).seq, seq_add(PEER_ISN, 1), 0)]
    assert listener.accept() is not None
    b.snd_nxt = seq_add(PEER_ISN, 1)
    out = net.feed([b.ack(b"req", "PA")])  # completes the handshake; quick ACK of the data
    assert summary(out) == [("A", seq_add(tcp_of(sa).seq, 1), seq_add(PEER_ISN, 4), 0)]
    conn = listener.accept()
    assert conn is not None and conn.recv(10) == b"req"


def test_accept_queue_full_cookie_ack_dropped_without_rst(net: Net):
    listener = net.tcp.listen(PORT, backlog=1, syn_backlog=1)
    a, b = Peer(net, sport=41000), Peer(net, sport=41001)
    a.got(net.feed([a.syn()]))
    (cookie_sa,) = b.got(net.feed([b.syn()]))  # SYN queue full: a cookie
    assert net.feed([a.ack()]) == []
    net.mark()
    ack = b.ack()
    assert net.feed([ack]) == []
    assert net.delta_tcp() == {"tcp_in_segs": 1, "tcp_listen_overflows": 1}
    assert listener.accept() is not None
    assert net.feed([ack]) == []
    conn = listener.accept()
    assert conn is not None and conn.tcb.iss == tcp_of(cookie_sa).seq


# ---- TIME-WAIT and reuse ------------------------------------------------------------------


def close_from_us(net: Net, peer: Peer, conn: TcpConnection) -> None:
    """ustack closes first; afterwards conn is in TIME-WAIT."""
    conn.close()
    out = peer.got(net.flush())
    assert [flags(f) for f in out] == ["FA"]
    assert state(conn) is State.FIN_WAIT_1
    out = net.feed([peer.ack(flags="FA")])
    assert [flags(f) for f in peer.got(out)] == ["A"]
    assert state(conn) is State.TIME_WAIT


def test_time_wait_syn_with_newer_timestamp_opens_new_incarnation(net: Net, listener: TcpListener):
    peer = Peer(net)
    conn = establish(net, listener, peer)
    close_from_us(net, peer, conn)
    old_snd_max = conn.tcb.snd_max
    net.mark()
    again = Peer(net, isn=0x10000000)
    again.tsval = peer.tsval + 100  # newer than TS.Recent
    out = again.got(net.feed([again.syn()]))
    assert [flags(f) for f in out] == ["SA"]
    # RFC 6191: the new ISS lies beyond the old incarnation's sequence space.
    assert tcp_of(out[0]).seq == seq_add(old_snd_max, 65536 + 2)
    assert tcp_of(out[0]).ack == seq_add(0x10000000, 1)
    (new,) = net.tcp.conns.values()
    assert new is not conn and state(new) is State.SYN_RECEIVED
    assert net.feed([again.ack()]) == []
    assert listener.accept() is new
    d = net.delta_tcp()
    assert d["tcp_time_wait_reused"] == 1 and d["tcp_passive_opens"] == 1


def test_time_wait_reuse_in_same_burst_as_fin_retransmission_counts_once(
    net: Net, listener: TcpListener
):
    peer = Peer(net)
    conn = establish(net, listener, peer)
    close_from_us(net, peer, conn)
    # The peer's FIN again (our ACK was lost), then a new SYN, in one burst:
    # the old incarnation is touched, then replaced.
    fin = peer.frame("FA", seq=seq_add(peer.snd_nxt, -1), ack=conn.tcb.snd_max)
    again = Peer(net, isn=0x10000000)
    again.tsval = peer.tsval + 100
    net.mark()
    out = net.feed([fin, again.syn()])
    assert [flags(f) for f in out] == ["SA"]
    assert net.delta_tcp() == {
        "tcp_in_segs": 2,
        "tcp_out_segs": 1,
        "tcp_passive_opens": 1,
        "tcp_time_wait_reused": 1,
        "drop_tcp_out_of_window": 1,  # the old FIN, counted by the old incarnation once
        "tcp_conns_time_wait": -1,
        "tcp_conns_syn_received": 1,
    }


def test_time_wait_syn_with_old_timestamp_refused_with_challenge_ack(
    net: Net, listener: TcpListener
):
    peer = Peer(net)
    conn = establish(net, listener, peer)
    close_from_us(net, peer, conn)
    again = Peer(net, isn=0x10000000)
    again.tsval = peer.tsval - 100  # older: could be a delayed duplicate
    out = net.feed([again.syn()])
    # PAWS discards it and answers with the current ACK.
    assert summary(out) == [("A", conn.tcb.snd_max, conn.tcb.rcv_nxt, 0)]
    assert state(conn) is State.TIME_WAIT
    assert list(net.tcp.conns.values()) == [conn]
    assert "tcp_time_wait_reused" not in net.delta_tcp()


def test_time_wait_ends_after_time_wait_us_and_table_empties():
    net = Net(config=TcpConfig(time_wait_us=2 * S))
    listener = net.tcp.listen(PORT)
    peer = Peer(net)
    conn = establish(net, listener, peer)
    close_from_us(net, peer, conn)
    t_closed = net.now
    assert net.timers(t_closed + 2 * S - 1) == []
    assert state(conn) is State.TIME_WAIT and len(net.tcp.conns) == 1
    assert net.timers(t_closed + 2 * S) == []
    assert state(conn) is State.CLOSED
    assert net.tcp.conns == {}
    assert net.stack.stats()["tcp_conns"] == 0


# ---- closing and the connection table ----------------------------------------------------


def test_peer_closes_first_last_ack_then_closed_and_table_empty(net: Net, listener: TcpListener):
    peer = Peer(net)
    conn = establish(net, listener, peer)
    out = peer.got(net.feed([peer.ack(b"bye", "FPA")]))
    # A FIN is ACKed at once.
    assert summary(out) == [("A", seq_add(conn.tcb.iss, 1), seq_add(PEER_ISN, 5), 0)]
    assert state(conn) is State.CLOSE_WAIT
    assert conn.recv(10) == b"bye" and conn.eof
    conn.close()
    out = peer.got(net.flush())
    assert [flags(f) for f in out] == ["FA"]
    assert state(conn) is State.LAST_ACK
    assert net.feed([peer.ack()]) == []
    assert state(conn) is State.CLOSED and conn.error is None
    assert net.tcp.conns == {}
    # Its counters are kept after it is gone.
    assert net.stack.stats()["tcp_passive_opens"] == 1


def test_peer_reset_frees_connection_with_econnreset(net: Net, listener: TcpListener):
    peer = Peer(net)
    conn = establish(net, listener, peer)
    assert net.feed([peer.frame("R", options=[])]) == []
    assert state(conn) is State.CLOSED and conn.error == errno.ECONNRESET
    assert net.tcp.conns == {}
    with pytest.raises(OSError) as exc:
        conn.send(b"x")
    assert exc.value.errno == errno.ECONNRESET


def test_abort_sends_rst_and_frees_connection(net: Net, listener: TcpListener):
    peer = Peer(net)
    conn = establish(net, listener, peer)
    conn.abort()
    out = net.flush()
    assert summary(out) == [("RA", seq_add(conn.tcb.iss, 1), seq_add(PEER_ISN, 1), 0)]
    assert net.tcp.conns == {}


def test_close_with_unread_data_resets(net: Net, listener: TcpListener):
    peer = Peer(net)
    conn = establish(net, listener, peer)
    net.feed([peer.ack(b"unread", "PA")])
    conn.close()
    out = net.flush()
    assert [flags(f) for f in out] == ["RA"]
    assert net.tcp.conns == {}


def test_many_connections_closed_both_ways_table_returns_to_empty():
    net = Net(config=TcpConfig(time_wait_us=1 * S))
    listener = net.tcp.listen(PORT)
    pairs = []
    for i in range(40):
        p = Peer(net, sport=30000 + i)
        pairs.append((p, establish(net, listener, p)))
    assert len(net.tcp.conns) == 40
    for i, (p, conn) in enumerate(pairs):
        if i % 2:
            close_from_us(net, p, conn)
        else:
            p.got(net.feed([p.ack(flags="FA")]))
            conn.close()
            p.got(net.flush())
            net.feed([p.ack()])
            assert state(conn) is State.CLOSED
    assert len(net.tcp.conns) == 20  # the ones ustack closed first wait in TIME-WAIT
    net.timers(net.now + 1 * S)
    assert net.tcp.conns == {}
    st = net.stack.stats()
    assert st["tcp_conns"] == 0 and st["tcp_passive_opens"] == 40


# ---- listener close -------------------------------------------------------------------------


def test_listener_close_resets_unaccepted_children(net: Net, listener: TcpListener):
    accepted_peer, waiting_peer, half_peer = (Peer(net, sport=p) for p in (41000, 41001, 41002))
    accepted = establish(net, listener, accepted_peer)
    waiting_peer.got(net.feed([waiting_peer.syn()]))
    net.feed([waiting_peer.ack()])
    half_peer.got(net.feed([half_peer.syn()]))
    assert listener.ready == 1 and listener.core.pending == 1
    listener.close()
    assert listener.closed
    out = net.flush()
    by_port = {tcp_of(f).dport: f for f in out}
    assert sorted(by_port) == [41001, 41002]
    assert flags(by_port[41001]) == "RA" and flags(by_port[41002]) == "RA"
    assert tcp_of(by_port[41001]).seq == waiting_peer.rcv_nxt
    # The accepted connection is the application's: it lives on.
    assert list(net.tcp.conns.values()) == [accepted]
    assert state(accepted) is State.ESTABLISHED
    # The port is closed now.
    late = Peer(net, sport=41003)
    assert [flags(f) for f in net.feed([late.syn()])] == ["RA"]
    # And it can be listened on again.
    net.tcp.listen(PORT)


# ---- timers -------------------------------------------------------------------------------


def test_idle_connections_cost_nothing_at_timer_runs():
    net = Net()
    listener = net.tcp.listen(PORT)
    n = 100
    events: list[TcpConnection] = []
    peers = [Peer(net, sport=20000 + i) for i in range(n)]
    conns = [establish(net, listener, p) for p in peers]
    for c in conns:
        c.on_event = events.append
    # Each connection does a little work: the peer sends, we reply.
    for p, c in zip(peers, conns, strict=True):
        p.got(net.feed([p.ack(b"q", "PA")]))
        assert c.recv(10) == b"q"
        assert c.send(b"r") == 1
        p.got(net.flush())
        net.feed([p.ack()])
    heap = len(net.tcp._timers)
    assert heap <= 3 * n, heap
    # Let every pending deadline pass: what was armed fires once, or was stale.
    net.timers(net.now + 10 * S)
    assert net.tcp.next_deadline_us() is None
    assert len(net.tcp._timers) == 0
    events.clear()
    net.mark()
    # Hours of idleness: no timer, no segment, no callback.
    for _ in range(99):
        assert net.timers(net.now + 60 * S) == []
    assert events == []
    assert net.delta_tcp() == {}
    assert all(state(c) is State.ESTABLISHED for c in conns)


def test_timer_heap_bounded_during_long_exchange(net: Net, listener: TcpListener):
    peer = Peer(net, window=65535)
    conn = establish(net, listener, peer)
    most = 0
    for i in range(2000):
        net.now += 100
        conn.send(b"x" * 100)
        peer.got(net.flush())
        net.now += 100
        net.feed([peer.ack(b"y" * 50, "PA")])
        conn.recv(100)
        if i % 7 == 0:
            net.timers(net.now + 1)
        most = max(most, len(net.tcp._timers))
    assert most <= 4, most
    assert peer.received == b"x" * 200_000


def test_tail_loss_probe_fires_from_the_timer_heap(net: Net, listener: TcpListener):
    peer = Peer(net, window=65535)
    conn = establish(net, listener, peer)
    tcb = conn.tcb
    conn.send(b"x" * 3 * tcb.smss)
    sent = summary(peer.got(net.flush()))
    assert [n for _, _, _, n in sent] == [tcb.smss] * 3
    # The peer stays silent: the next deadline is the probe timeout, before
    # the retransmission timer, and it is the heap's only live entry.
    deadline = net.tcp.next_deadline_us()
    assert deadline == tcb.poll_at()
    assert deadline is not None and deadline < net.now + tcb.rto_us
    live = [e for e in net.tcp._timers if e[2]._timer_at == e[0]]
    assert len(live) == 1
    out = summary(net.timers(deadline))
    # The probe: the last segment again (sequence number, ACK and length).
    assert len(out) == 1 and out[0][1:] == sent[-1][1:]
    st = tcb.stats()
    assert (st["tlp_probes"], st["rtos"]) == (1, 0)
    # Then only the restarted retransmission timer remains.
    assert net.tcp.next_deadline_us() == deadline + tcb.rto_us
    assert len([e for e in net.tcp._timers if e[2]._timer_at == e[0]]) == 1


def test_keepalive_idle_connection_probes_only_when_due():
    net = Net(
        config=TcpConfig(keepalive=True, keepalive_idle_us=10 * S, keepalive_interval_us=2 * S)
    )
    listener = net.tcp.listen(PORT)
    peers = [Peer(net, sport=20000 + i) for i in range(10)]
    conns = [establish(net, listener, p) for p in peers]
    assert len(net.tcp._timers) <= 10
    t = net.now
    assert net.timers(t + 9 * S) == []
    out = net.timers(t + 10 * S)
    assert sorted(tcp_of(f).dport for f in out) == [20000 + i for i in range(10)]
    # Each probe is <SEQ=SND.UNA-1> (RFC 9293 3.8.4).
    for f, c in zip(sorted(out, key=lambda f: tcp_of(f).dport), conns, strict=True):
        assert summary([f]) == [("A", seq_add(c.tcb.snd_una, -1), c.tcb.rcv_nxt, 0)]
    assert len(net.tcp._timers) <= 10


# ---- offloads: TSO and checksum offload -----------------------------------------------------


def test_offload_large_send_goes_as_one_tso_segment_with_partial_checksum():
    net = Net(vnet=True, slot_size=SLOT_GSO)
    assert net.tcp.offload
    listener = net.tcp.listen(PORT)
    peer = Peer(net, window=65535)
    conn = establish(net, listener, peer)
    net.take_vnet()
    smss = conn.tcb.smss
    assert smss == 1448
    data = bytes(i % 251 for i in range(100_000))
    assert conn.send(data) == 100_000
    out = net.flush()
    vnets = net.take_vnet()
    # The initial window is 10 segments: one TSO segment carries all of it.
    assert [len(payload(f)) for f in out] == [10 * smss]
    (f,) = out
    (v,) = vnets
    hlen = 14 + 20 + 32
    assert v == VnetHeader(VNET_F_NEEDS_CSUM, VNET_GSO_TCPV4, hlen, smss, 14 + 20, 16)
    assert f[IP].len == 20 + 32 + 10 * smss
    raw = bytearray(bytes(f))
    # Checksum partial: the field holds the folded pseudo-header sum (Linux's
    # CHECKSUM_PARTIAL); finishing it over header and data as the device does
    # gives the right checksum.
    tlen = len(raw) - 34
    pseudo = pseudo_sum(ip_from_str(US), ip_from_str(PEER), PROTO_TCP, tlen)
    while pseudo >> 16:
        pseudo = (pseudo & 0xFFFF) + (pseudo >> 16)
    assert int.from_bytes(raw[34 + 16 : 34 + 18], "big") == pseudo
    raw[34 + 16 : 34 + 18] = checksum(raw, 34, tlen).to_bytes(2, "big")
    assert checksum(raw, 34, tlen, pseudo_sum(ip_from_str(US), ip_from_str(PEER), 6, tlen)) == 0
    # The IP header checksum is ours, complete.
    assert checksum(raw, 14, 20) == 0
    assert payload(f) == data[: 10 * smss]
    # The ACK of it opens cwnd (slow start): the next flight is again one TSO
    # segment, a whole number of MSS-sized segments larger than the first.
    peer.got(out)
    out = peer.got(net.feed([peer.ack()]))
    vnets = net.take_vnet()
    assert len(out) == 1
    size = len(payload(out[0]))
    assert size > 10 * smss and size % smss == 0
    assert vnets == [VnetHeader(VNET_F_NEEDS_CSUM, VNET_GSO_TCPV4, hlen, smss, 34, 16)]
    assert peer.received == data[: 10 * smss + size]


def test_offload_pure_ack_needs_csum_without_gso():
    net = Net(vnet=True, slot_size=SLOT_GSO)
    listener = net.tcp.listen(PORT)
    peer = Peer(net)
    establish(net, listener, peer)
    net.take_vnet()
    out = net.feed([peer.ack(b"a" * 1448), peer.ack(b"b" * 1448)])
    assert [flags(f) for f in out] == ["A"]
    (v,) = net.take_vnet()
    assert v == VnetHeader(VNET_F_NEEDS_CSUM, VNET_GSO_NONE, 0, 0, 34, 16)


def test_offload_gro_superframe_with_partial_checksum_accepted(net: Net):
    net = Net(vnet=True, slot_size=SLOT_GSO)
    listener = net.tcp.listen(PORT)
    peer = Peer(net)
    conn = establish(net, listener, peer)
    # What the kernel hands up with GRO: 30 KB in one frame, checksum left partial.
    frame = peer.ack(b"z" * 30_000, "PA", chksum=0x1234)
    out = net.feed([frame], vnet=VnetHeader(VNET_F_NEEDS_CSUM, VNET_GSO_TCPV4, 66, 1448, 34, 16))
    assert conn.readable_bytes == 30_000
    assert summary(out) == [("A", seq_add(conn.tcb.iss, 1), seq_add(PEER_ISN, 30_001), 0)]
    # Without the device's word for it, the bad checksum is caught.
    bad = peer.ack(b"w" * 100, "PA", chksum=0x1234)
    assert net.feed([bad], vnet=VnetHeader()) == []
    assert net.delta_tcp().get("drop_tcp_bad_checksum") == 1
    # DATA_VALID: the device checked it.
    peer.snd_nxt = seq_add(peer.snd_nxt, -100)
    ok = peer.ack(b"w" * 100, "PA", chksum=0x1234)
    net.feed([ok], vnet=VnetHeader(VNET_F_DATA_VALID))
    assert conn.readable_bytes == 30_100


def test_data_segments_carrying_sack_blocks_shrink_to_fit_the_mss(net: Net, listener: TcpListener):
    """RFC 6691: with SACK blocks on a data segment the data gives way, not the MTU."""
    peer = Peer(net, window=2000)
    conn = establish(net, listener, peer)
    # A hole: the peer's next 100 bytes are missing, the 100 after arrive.
    ooo = peer.ack(b"y" * 100, seq=seq_add(peer.snd_nxt, 100), advance=False)
    assert [len(opts(f).get("SAck", ())) for f in peer.got(net.feed([ooo]))] == [2]
    assert conn.send(bytes(5000)) == 5000
    out = peer.got(net.flush())
    sizes = [len(payload(f)) for f in out]
    assert sizes and all(n == 1448 - 12 for n in sizes[:-1]), sizes
    for f in out:
        assert "SAck" in opts(f)
        assert f[IP].len <= 1500, f[IP].len


def test_tso_segment_with_sack_blocks_is_cut_at_the_reduced_mss():
    net = Net(vnet=True, slot_size=SLOT_GSO)
    listener = net.tcp.listen(PORT)
    peer = Peer(net, window=65535)
    conn = establish(net, listener, peer)
    ooo = peer.ack(b"y" * 100, seq=seq_add(peer.snd_nxt, 100), advance=False)
    peer.got(net.feed([ooo]))
    net.take_vnet()
    assert conn.send(bytes(50_000)) == 50_000
    (f,) = net.flush()
    (v,) = net.take_vnet()
    assert v is not None and v.gso_type == VNET_GSO_TCPV4
    hlen = 14 + 20 + 32 + 12  # timestamps and one SACK block
    assert v.hdr_len == hlen
    assert v.gso_size == 1448 - 12
    # Every piece the device cuts fits a 1500-byte MTU.
    assert 20 + (hlen - 14 - 20) + v.gso_size <= 1500
    assert len(payload(f)) > v.gso_size


# ---- path MTU discovery: ICMP fragmentation needed (RFC 1191, RFC 5927) ----------------------

ROUTER = "198.18.0.254"


def frag_needed(
    quote: bytes, mtu: int = 1280, *, dst: str = US, eth_dst: str = US_MAC, src: str = ROUTER
) -> Any:
    """A router's ICMP "fragmentation needed and DF set" (type 3 code 4) quoting `quote`."""
    icmp = ICMP(type=3, code=4, nexthopmtu=mtu)
    return Ether(dst=eth_dst, src=PEER_MAC) / IP(src=src, dst=dst) / icmp / Raw(quote)


def quote_of(frame: Any, *, seq: int | None = None, n: int = 548) -> bytes:
    """What a router quotes of our datagram: its first `n` bytes (Linux: up to 576 - 28),
    optionally with the TCP sequence number replaced."""
    q = bytearray(bytes(frame[IP])[:n])
    if seq is not None:
        struct.pack_into("!I", q, 20 + 4, seq)
    return bytes(q)


def pmtu_delta(net: Net) -> dict[str, int]:
    return {
        k: v for k, v in net.delta().items() if k.startswith(("icmp_", "drop_icmp_")) or "pmtu" in k
    }


def sending(
    net: Net, listener: TcpListener, nbytes: int = 10_000
) -> tuple[TcpConnection, list[Any]]:
    """An established connection that just sent the initial window of `nbytes` (1448s)."""
    peer = Peer(net, window=65535)
    conn = establish(net, listener, peer)
    assert conn.send(bytes(i % 251 for i in range(nbytes))) == nbytes
    out = net.flush()
    assert [len(payload(f)) for f in out] == [1448] * 6  # the 1312-byte tail waits: Nagle
    assert all(f[IP].flags.DF and f[IP].len == 1500 for f in out)
    net.mark()
    return conn, out


def test_frag_needed_lowers_mss_and_resends_the_flight_at_once(net: Net, listener: TcpListener):
    conn, out = sending(net, listener)
    una = seq_add(conn.tcb.iss, 1)
    resent = net.feed([frag_needed(quote_of(out[0]))])
    # MSS 1280 - 40 = 1240, less 12 bytes of timestamps: 1228-byte segments
    # from SND.UNA on, every datagram within 1280 bytes.
    assert conn.tcb.smss == 1228
    assert [(tcp_of(f).seq, len(payload(f))) for f in resent] == [
        (seq_add(una, 1228 * k), 1228) for k in range(8)
    ]
    assert all(f[IP].len == 1280 and f[IP].flags.DF for f in resent)
    assert b"".join(payload(f) for f in resent) == bytes(i % 251 for i in range(8 * 1228))
    assert pmtu_delta(net) == {
        "icmp_in_msgs": 1,
        "icmp_in_dest_unreachs": 1,
        "icmp_in_frag_needed": 1,
        "tcp_pmtu_updates": 1,
    }
    st = conn.stats()
    assert (st["pmtu"], st["rtos"], st["recoveries"]) == (1280, 0, 0)


def test_frag_needed_one_per_dropped_segment_lowers_once(net: Net, listener: TcpListener):
    conn, out = sending(net, listener)
    resent = net.feed([frag_needed(quote_of(f)) for f in out])
    assert len(resent) == 8
    assert pmtu_delta(net) == {
        "icmp_in_msgs": 6,
        "icmp_in_dest_unreachs": 6,
        "icmp_in_frag_needed": 6,
        "tcp_pmtu_updates": 1,
        "drop_tcp_pmtu_not_lower": 5,
    }
    # A later one with a larger MTU raises nothing (RFC 1191 6.3).
    assert net.feed([frag_needed(quote_of(resent[0]), 1400)]) == []
    assert conn.tcb.smss == 1228


def test_frag_needed_outside_snd_una_to_snd_max_is_ignored(net: Net, listener: TcpListener):
    conn, out = sending(net, listener)
    tcb = conn.tcb
    # RFC 5927 4.1: SND.UNA <= SEG.SEQ < SND.MAX, else a blind forgery.
    frames = [
        frag_needed(quote_of(out[0], seq=seq_add(tcb.snd_una, -1))),
        frag_needed(quote_of(out[0], seq=tcb.snd_max)),
        frag_needed(quote_of(out[0], seq=seq_add(tcb.snd_max, 100_000))),
    ]
    assert net.feed(frames) == []
    assert tcb.smss == 1448
    assert pmtu_delta(net) == {
        "icmp_in_msgs": 3,
        "icmp_in_dest_unreachs": 3,
        "icmp_in_frag_needed": 3,
        "drop_icmp_frag_needed_out_of_window": 3,
    }


def test_frag_needed_for_no_connection_is_ignored(net: Net, listener: TcpListener):
    conn, out = sending(net, listener)
    q = bytearray(quote_of(out[0]))
    struct.pack_into("!H", q, 20 + 2, 40001)  # another remote port
    assert net.feed([frag_needed(bytes(q))]) == []
    assert conn.tcb.smss == 1448
    assert pmtu_delta(net) == {
        "icmp_in_msgs": 1,
        "icmp_in_dest_unreachs": 1,
        "icmp_in_frag_needed": 1,
        "drop_icmp_frag_needed_no_conn": 1,
    }


def _udp_quote() -> bytes:
    return bytes(IP(src=US, dst=PEER, flags="DF") / UDP(sport=5000, dport=53) / Raw(b"q" * 40))


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("truncated", "drop_icmp_bad_quote"),
        ("not-ipv4", "drop_icmp_bad_quote"),
        ("not-from-us", "drop_icmp_bad_quote"),
        ("later-fragment", "drop_icmp_bad_quote"),
        ("udp", "drop_icmp_frag_needed_not_tcp"),
        ("broadcast", "drop_icmp_frag_needed_not_unicast"),
    ],
)
def test_frag_needed_malformed_or_not_ours_is_dropped_and_counted(
    net: Net, listener: TcpListener, case: str, reason: str
):
    conn, out = sending(net, listener)
    good = quote_of(out[0])
    if case == "truncated":
        frame = frag_needed(good[: 20 + 7])  # RFC 792: at least 8 bytes past the header
    elif case == "not-ipv4":
        frame = frag_needed(b"\x65" + good[1:])
    elif case == "not-from-us":
        frame = frag_needed(good[:12] + bytes([198, 18, 0, 9]) + good[16:])
    elif case == "later-fragment":
        frame = frag_needed(good[:6] + b"\x40\x10" + good[8:])
    elif case == "udp":
        frame = frag_needed(_udp_quote())
    else:
        frame = frag_needed(good, dst="198.18.0.255", eth_dst=BCAST_MAC)
    assert net.feed([frame]) == []
    assert conn.tcb.smss == 1448
    assert pmtu_delta(net) == {
        "icmp_in_msgs": 1,
        "icmp_in_dest_unreachs": 1,
        "icmp_in_frag_needed": 1,
        reason: 1,
    }


def test_frag_needed_with_offload_shrinks_the_tso_segment_size():
    net = Net(vnet=True, slot_size=SLOT_GSO)
    listener = net.tcp.listen(PORT)
    peer = Peer(net, window=65535)
    conn = establish(net, listener, peer)
    net.take_vnet()
    assert conn.send(bytes(100_000)) == 100_000
    (f,) = net.flush()
    (v,) = net.take_vnet()
    assert v is not None and v.gso_size == 1448
    (resent,) = net.feed([frag_needed(quote_of(f))])
    (v,) = net.take_vnet()
    hlen = 14 + 20 + 32
    assert v == VnetHeader(VNET_F_NEEDS_CSUM, VNET_GSO_TCPV4, hlen, 1228, 34, 16)
    # From SND.UNA, a whole number of 1228-byte segments (the initial window
    # recomputed for the new MSS: 10 of them).
    assert tcp_of(resent).seq == seq_add(conn.tcb.iss, 1)
    assert len(payload(resent)) == 10 * 1228
    assert 20 + 32 + v.gso_size == 1280
    assert net.delta_tcp()["tcp_pmtu_updates"] == 1
