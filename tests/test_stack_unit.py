"""The Stack as a host, driven frame by frame over a MemoryRing with a fake clock.

No namespace, no root, no real time: every test crafts frames with scapy,
feeds them at an explicit `now_us`, and asserts exactly which frames come
back (as bytes against a scapy-built frame, or field by field), then that
nothing else does, then the counters that changed, exactly.
"""

from __future__ import annotations

import itertools
import os
import threading
from typing import Any

import pytest
from scapy.layers.inet import ICMP, IP, UDP, fragment
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Padding, Raw

from ustack.dev.memring import MemoryRing
from ustack.loop import Context, WrongThreadError
from ustack.stack.interface import Interface, parse_cidr, random_mac
from ustack.stack.stack import Stack
from ustack.stack.udp import UdpSocket
from ustack.wire.ipv4 import ip_from_str

US = "198.18.0.2"
PEER = "198.18.0.1"
OTHER = "198.18.0.3"
GATEWAY = "198.18.0.254"
FAR = "10.1.2.3"  # off-link
SUBNET_BCAST = "198.18.0.255"
US_MAC = "02:00:00:00:00:02"
PEER_MAC = "02:00:00:00:00:01"
OTHER_MAC = "02:00:00:00:00:03"
GATEWAY_MAC = "02:00:00:00:00:fe"
BCAST_MAC = "ff:ff:ff:ff:ff:ff"
ZERO_MAC = "00:00:00:00:00:00"

S = 1_000_000
MS = 1_000
T0 = 5 * S  # tests start away from zero so that offsets matter


class Host:
    """One Stack on one MemoryRing, with helpers to feed frames and read replies."""

    def __init__(self, *, gateway: str | None = None) -> None:
        self.ring = MemoryRing()
        self.iface = Interface.from_config(f"{US}/24", mac=US_MAC, gateway=gateway)
        self.stack = Stack(self.ring, self.iface)
        self._mark: dict[str, int] = {}

    def feed(self, frames: list[Any], now_us: int) -> list[bytes]:
        """Inject frames, run one burst at now_us, flush; return what went out."""
        for f in frames:
            self.ring.inject(bytes(f))
        n = self.ring.rx_burst(self.ring.rx_slots)
        assert n == len(frames)
        self.stack.process(n, now_us)
        self.stack.flush()
        return self.take()

    def timer(self, now_us: int) -> list[bytes]:
        self.stack.on_timer(now_us)
        self.stack.flush()
        return self.take()

    def take(self) -> list[bytes]:
        out = list(self.ring.sent)
        self.ring.sent.clear()
        return out

    def _stats(self) -> dict[str, int]:
        return {k: v for k, v in self.stack.stats().items() if not k.startswith("dev_")}

    def mark(self) -> None:
        """Counters asserted by delta() are counted from here."""
        self._mark = self._stats()

    def delta(self) -> dict[str, int]:
        """Every stack counter (and gauge) that changed since mark(), by how much."""
        now = self._stats()
        keys = set(now) | set(self._mark)
        out = {k: now.get(k, 0) - self._mark.get(k, 0) for k in keys}
        return {k: v for k, v in out.items() if v}

    def learn_peer(self, ip: str = PEER, mac: str = PEER_MAC, now_us: int = T0) -> None:
        """Make ip REACHABLE the way a real peer does: by asking for our address."""
        out = self.feed([arp_request(ip, mac, US)], now_us)
        assert len(out) == 1
        self.mark()


@pytest.fixture
def host() -> Host:
    h = Host()
    h.feed([], T0)  # the stack's clock: sends happen at the time of the last burst
    h.mark()
    return h


@pytest.fixture
def peer_host() -> Host:
    """A host that already knows PEER's MAC; counters are marked after that."""
    h = Host()
    h.learn_peer()
    return h


# ---- frame builders --------------------------------------------------------


def arp_request(spa: str, sha: str, tpa: str, *, eth_src: str | None = None) -> Any:
    return Ether(dst=BCAST_MAC, src=eth_src or sha) / ARP(
        op=1, hwsrc=sha, psrc=spa, hwdst=ZERO_MAC, pdst=tpa
    )


def arp_reply(spa: str, sha: str, tpa: str, tha: str, *, eth_dst: str | None = None) -> Any:
    return Ether(dst=eth_dst or tha, src=sha) / ARP(op=2, hwsrc=sha, psrc=spa, hwdst=tha, pdst=tpa)


def our_arp(op: int, tha: str, tpa: str, eth_dst: str) -> bytes:
    """The 60-byte ARP frame the stack is expected to send."""
    return bytes(
        Ether(dst=eth_dst, src=US_MAC)
        / ARP(op=op, hwsrc=US_MAC, psrc=US, hwdst=tha, pdst=tpa)
        / Padding(bytes(18))
    )


def udp_frame(
    dport: int,
    payload: bytes = b"hello",
    *,
    sport: int = 40000,
    src: str = PEER,
    dst: str = US,
    eth_dst: str = US_MAC,
    chksum: int | None = None,
    ident: int = 4242,
) -> Any:
    udp = (
        UDP(sport=sport, dport=dport)
        if chksum is None
        else UDP(sport=sport, dport=dport, chksum=chksum)
    )
    return Ether(dst=eth_dst, src=PEER_MAC) / IP(src=src, dst=dst, id=ident) / udp / Raw(payload)


def echo_request(
    payload: bytes, *, ident: int = 0x1234, seq: int = 7, dst: str = US, eth_dst: str = US_MAC
) -> Any:
    return (
        Ether(dst=eth_dst, src=PEER_MAC)
        / IP(src=PEER, dst=dst, id=99)
        / ICMP(type=8, id=ident, seq=seq)
        / Raw(payload)
    )


def ip_bytes(frame: Any) -> bytes:
    """The IP datagram of a frame, without link padding."""
    ip = Ether(bytes(frame))[IP]
    return bytes(ip)[: ip.len]


def unreachable(code: int, original: bytes, ident: int = 1) -> bytes:
    """Destination unreachable from us to PEER quoting `original`, as scapy builds it."""
    return bytes(
        Ether(dst=PEER_MAC, src=US_MAC)
        / IP(src=US, dst=PEER, id=ident, ttl=64)
        / ICMP(type=3, code=code)
        / Raw(original)
    )


def parse(frame: bytes) -> Any:
    return Ether(frame)


def icmp_body(frame: bytes) -> bytes:
    """What follows the ICMP header of a frame we sent (no IP options, no padding)."""
    return frame[14 + 20 + 8 :]


def fragments(datagram: Any) -> list[Any]:
    """Scapy's fragments of an IP datagram for a 1500-byte MTU."""
    out: list[Any] = fragment(datagram, fragsize=1480)  # type: ignore[no-untyped-call]
    return out


def bound_socket(h: Host, port: int = 9000) -> UdpSocket:
    sock = h.stack.udp_socket()
    sock.bind(("", port))
    h.mark()
    return sock


# ---- start -------------------------------------------------------------------


def test_start_sends_exactly_one_gratuitous_arp_padded_to_60(host: Host):
    host.stack.start(T0)
    host.stack.flush()
    out = host.take()
    assert out == [our_arp(1, ZERO_MAC, US, BCAST_MAC)]
    assert len(out[0]) == 60
    arp = parse(out[0])[ARP]
    assert arp.psrc == arp.pdst == US
    assert parse(out[0]).dst == BCAST_MAC
    assert host.delta() == {"arp_out_gratuitous": 1, "arp_out_requests": 1}


# ---- ARP -----------------------------------------------------------------------


def test_arp_request_for_us_gets_one_reply_with_our_mac(host: Host):
    out = host.feed([arp_request(PEER, PEER_MAC, US)], T0)
    assert out == [our_arp(2, PEER_MAC, PEER, PEER_MAC)]
    assert parse(out[0])[ARP].hwsrc == US_MAC
    assert host.stack.neighbours.entries() == [
        (ip_from_str(PEER), bytes.fromhex("020000000001"), "REACHABLE")
    ]
    assert host.delta() == {
        "eth_in_frames": 1,
        "arp_in_requests": 1,
        "arp_out_replies": 1,
        "arp_learned": 1,
        "arp_entries": 1,
    }


def test_arp_request_for_us_then_send_to_requester_needs_no_arp(host: Host):
    host.feed([arp_request(PEER, PEER_MAC, US)], T0)
    sock = host.stack.udp_socket()
    sock.bind(("", 5000))
    host.mark()
    assert sock.sendto(b"data", (PEER, 7)) == 4
    host.stack.flush()
    out = host.take()
    assert len(out) == 1
    f = parse(out[0])
    assert (f.dst, f.src, f.type) == (PEER_MAC, US_MAC, 0x0800)
    assert (f[IP].src, f[IP].dst, f[UDP].sport, f[UDP].dport) == (US, PEER, 5000, 7)
    assert bytes(f[UDP].payload) == b"data"
    assert host.delta() == {"udp_out_datagrams": 1, "ipv4_out_requests": 1}


def test_arp_request_for_other_host_gets_nothing_and_no_entry(host: Host):
    assert host.feed([arp_request(PEER, PEER_MAC, OTHER)], T0) == []
    assert host.stack.neighbours.entries() == []
    assert host.delta() == {"eth_in_frames": 1, "arp_in_requests": 1}


def test_arp_gratuitous_from_unknown_host_creates_no_entry(host: Host):
    garp = arp_request(PEER, PEER_MAC, PEER)
    assert host.feed([garp], T0) == []
    assert host.stack.neighbours.entries() == []
    assert host.delta() == {"eth_in_frames": 1, "arp_in_requests": 1}


def test_arp_reply_to_other_host_from_unknown_sender_creates_no_entry(host: Host):
    reply = arp_reply(PEER, PEER_MAC, OTHER, OTHER_MAC, eth_dst=BCAST_MAC)
    assert host.feed([reply], T0) == []
    assert host.stack.neighbours.entries() == []
    assert host.delta() == {"eth_in_frames": 1, "arp_in_replies": 1}


def test_arp_unsolicited_reply_to_us_from_unknown_sender_creates_no_entry(host: Host):
    # We never asked for PEER: as Linux with arp_accept=0, an unsolicited
    # reply must not create a neighbour (it would let any host on the link
    # plant entries, and fill the table with unevictable REACHABLE ones).
    reply = arp_reply(PEER, PEER_MAC, US, US_MAC)
    assert host.feed([reply], T0) == []
    assert host.stack.neighbours.entries() == []
    assert host.delta() == {"eth_in_frames": 1, "arp_in_replies": 1}


def test_arp_sender_mac_differs_from_ethernet_source_dropped_and_counted(host: Host):
    spoofed = arp_request(PEER, PEER_MAC, US, eth_src=OTHER_MAC)
    assert host.feed([spoofed], T0) == []
    assert host.stack.neighbours.entries() == []
    assert host.delta() == {"eth_in_frames": 1, "arp_in_requests": 1, "drop_arp_bad_sender": 1}


def test_arp_claim_of_our_address_counted_as_conflict(host: Host):
    claim = arp_request(US, OTHER_MAC, US)
    assert host.feed([claim], T0) == []
    assert host.stack.neighbours.entries() == []
    assert host.delta() == {"eth_in_frames": 1, "arp_in_requests": 1, "arp_address_conflicts": 1}


def test_arp_probe_for_our_address_answered_without_learning(host: Host):
    # RFC 5227 2.1.1: sender address 0; RFC 5227 2.4 wants our reply.
    probe = arp_request("0.0.0.0", PEER_MAC, US)
    out = host.feed([probe], T0)
    assert out == [our_arp(2, PEER_MAC, "0.0.0.0", PEER_MAC)]
    assert host.stack.neighbours.entries() == []
    assert host.delta() == {"eth_in_frames": 1, "arp_in_requests": 1, "arp_out_replies": 1}


def test_arp_request_off_link_not_for_us_dropped_and_counted(host: Host):
    assert host.feed([arp_request(FAR, PEER_MAC, OTHER)], T0) == []
    assert host.delta() == {"eth_in_frames": 1, "arp_in_requests": 1, "drop_arp_off_link": 1}


# ---- Ethernet ------------------------------------------------------------------


def test_ethernet_frame_for_other_mac_dropped_and_counted(peer_host: Host):
    sock = bound_socket(peer_host)
    assert peer_host.feed([udp_frame(9000, eth_dst=OTHER_MAC)], T0) == []
    assert not sock.readable
    assert peer_host.delta() == {"eth_in_frames": 1, "drop_eth_not_for_us": 1}


def test_ethernet_multicast_source_dropped_and_counted(host: Host):
    frame = Ether(dst=US_MAC, src="01:00:5e:00:00:01") / IP(src=PEER, dst=US) / UDP(dport=9)
    assert host.feed([frame], T0) == []
    assert host.delta() == {"eth_in_frames": 1, "drop_eth_bad_source": 1}


# ---- ICMP echo -----------------------------------------------------------------


def test_echo_request_reply_equals_scapy_built_reply(peer_host: Host):
    payload = bytes(range(56))
    out = peer_host.feed([echo_request(payload, ident=0xBEEF, seq=0x0102)], T0 + 10)
    expected = (
        Ether(dst=PEER_MAC, src=US_MAC)
        / IP(src=US, dst=PEER, id=1, ttl=64)
        / ICMP(type=0, id=0xBEEF, seq=0x0102)
        / Raw(payload)
    )
    assert out == [bytes(expected)]
    assert peer_host.delta() == {
        "eth_in_frames": 1,
        "ipv4_in_receives": 1,
        "ipv4_in_delivers": 1,
        "icmp_in_msgs": 1,
        "icmp_in_echos": 1,
        "icmp_out_echo_reps": 1,
        "ipv4_out_requests": 1,
    }


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_echo_request_4000_bytes_in_3_fragments_reply_fragmented_to_mtu(
    peer_host: Host, order: tuple[int, ...]
):
    payload = bytes((i * 7) & 0xFF for i in range(4000))
    request = IP(src=PEER, dst=US, id=777) / ICMP(type=8, id=0x4242, seq=3) / Raw(payload)
    frags = fragments(request)
    assert len(frags) == 3
    frames = [Ether(dst=US_MAC, src=PEER_MAC) / frags[i] for i in order]
    out = peer_host.feed(frames, T0)

    reply = IP(src=US, dst=PEER, id=1, ttl=64) / ICMP(type=0, id=0x4242, seq=3) / Raw(payload)
    expected = [bytes(Ether(dst=PEER_MAC, src=US_MAC) / f) for f in fragments(reply)]
    assert out == expected
    ips = [parse(f)[IP] for f in out]
    assert [ip.frag * 8 for ip in ips] == [0, 1480, 2960]
    assert [bool(ip.flags.MF) for ip in ips] == [True, True, False]
    assert {ip.id for ip in ips} == {1}
    assert [ip.len for ip in ips] == [1500, 1500, 20 + 4008 - 2960]
    body = b"".join(bytes(ip.payload)[: ip.len - 20] for ip in ips)
    assert body == bytes(ICMP(type=0, id=0x4242, seq=3) / Raw(payload))
    assert peer_host.delta() == {
        "eth_in_frames": 3,
        "ipv4_in_receives": 3,
        "ipv4_frag_in": 3,
        "ipv4_frag_received": 3,
        "ipv4_reasm_ok": 1,
        "ipv4_in_delivers": 1,
        "icmp_in_msgs": 1,
        "icmp_in_echos": 1,
        "icmp_out_echo_reps": 1,
        "ipv4_frag_oks": 1,
        "ipv4_frag_creates": 3,
        "ipv4_out_requests": 3,
    }


@pytest.mark.parametrize("dst", [SUBNET_BCAST, "255.255.255.255"])
def test_echo_request_to_broadcast_ignored_and_counted(peer_host: Host, dst: str):
    assert peer_host.feed([echo_request(b"x" * 8, dst=dst, eth_dst=BCAST_MAC)], T0) == []
    assert peer_host.delta() == {
        "eth_in_frames": 1,
        "ipv4_in_receives": 1,
        "ipv4_in_delivers": 1,
        "icmp_in_msgs": 1,
        "icmp_in_echos": 1,
        "icmp_in_echos_broadcast_ignored": 1,
    }


def test_echo_request_bad_checksum_dropped_and_counted(peer_host: Host):
    frame = Ether(dst=US_MAC, src=PEER_MAC) / IP(src=PEER, dst=US) / ICMP(type=8, chksum=0x1111)
    assert peer_host.feed([frame], T0) == []
    assert peer_host.delta() == {
        "eth_in_frames": 1,
        "ipv4_in_receives": 1,
        "ipv4_in_delivers": 1,
        "drop_icmp_bad_checksum": 1,
    }


# ---- UDP receive -----------------------------------------------------------------


def test_udp_to_bound_socket_queued_and_ready_once(peer_host: Host):
    sock = bound_socket(peer_host)
    assert peer_host.feed([udp_frame(9000, b"one", sport=1111)], T0) == []
    assert peer_host.stack.ready == [sock]
    assert peer_host.feed([udp_frame(9000, b"two", sport=2222)], T0 + 1) == []
    assert peer_host.stack.ready == [sock]
    assert sock.queued == 2
    assert sock.recvfrom(100) == (b"one", (PEER, 1111))
    assert sock.recvfrom(100) == (b"two", (PEER, 2222))
    with pytest.raises(BlockingIOError):
        sock.recvfrom(100)
    assert peer_host.delta() == {
        "eth_in_frames": 2,
        "ipv4_in_receives": 2,
        "ipv4_in_delivers": 2,
        "udp_in_datagrams": 2,
    }


def test_udp_zero_checksum_accepted(peer_host: Host):
    sock = bound_socket(peer_host)
    frame = udp_frame(9000, b"no checksum", chksum=0)
    assert Ether(bytes(frame))[UDP].chksum == 0
    assert peer_host.feed([frame], T0) == []
    assert sock.recvfrom(100) == (b"no checksum", (PEER, 40000))
    assert peer_host.delta() == {
        "eth_in_frames": 1,
        "ipv4_in_receives": 1,
        "ipv4_in_delivers": 1,
        "udp_in_datagrams": 1,
    }


def test_udp_bad_checksum_dropped_with_exact_counter(peer_host: Host):
    sock = bound_socket(peer_host)
    good = Ether(bytes(udp_frame(9000, b"payload")))[UDP].chksum
    frame = udp_frame(9000, b"payload", chksum=good ^ 0x0101)
    assert peer_host.feed([frame], T0) == []
    assert not sock.readable
    assert peer_host.stack.ready == []
    assert peer_host.delta() == {
        "eth_in_frames": 1,
        "ipv4_in_receives": 1,
        "ipv4_in_delivers": 1,
        "drop_udp_bad_checksum": 1,
    }


def test_udp_closed_port_one_port_unreachable_quoting_datagram(peer_host: Host):
    frame = udp_frame(4444, b"abc")  # short: padded to 60 bytes on the wire
    original = ip_bytes(frame)
    out = peer_host.feed([Ether(bytes(frame)) / Padding(bytes(60 - len(bytes(frame))))], T0)
    assert out == [unreachable(3, original)]
    quoted = icmp_body(out[0])
    assert quoted[:28] == original[:28]  # the IP header and the first 8 bytes at least
    assert quoted == original  # all of it: it is far below 576 bytes, and no padding
    assert peer_host.delta() == {
        "eth_in_frames": 1,
        "ipv4_in_receives": 1,
        "ipv4_in_delivers": 1,
        "udp_no_ports": 1,
        "icmp_out_dest_unreachs": 1,
        "ipv4_out_requests": 1,
    }


def test_udp_closed_port_large_datagram_quote_bounded_to_576(peer_host: Host):
    frame = udp_frame(4444, bytes(range(256)) * 4)
    original = ip_bytes(frame)
    out = peer_host.feed([frame], T0)
    assert out == [unreachable(3, original[:548])]
    assert parse(out[0])[IP].len == 576
    assert peer_host.delta()["icmp_out_dest_unreachs"] == 1


@pytest.mark.parametrize("dst", [SUBNET_BCAST, "255.255.255.255"])
def test_udp_closed_port_broadcast_destination_no_icmp(peer_host: Host, dst: str):
    assert peer_host.feed([udp_frame(4444, dst=dst, eth_dst=BCAST_MAC)], T0) == []
    assert peer_host.delta() == {
        "eth_in_frames": 1,
        "ipv4_in_receives": 1,
        "ipv4_in_delivers": 1,
        "udp_no_ports": 1,
    }


def test_udp_closed_port_link_layer_broadcast_no_icmp(peer_host: Host):
    # RFC 1122 3.2.2: no ICMP error for a datagram sent as a link-layer
    # broadcast, even when its IP destination is our unicast address.
    assert peer_host.feed([udp_frame(4444, eth_dst=BCAST_MAC)], T0) == []
    assert peer_host.delta() == {
        "eth_in_frames": 1,
        "ipv4_in_receives": 1,
        "ipv4_in_delivers": 1,
        "udp_no_ports": 1,
    }


@pytest.mark.parametrize("order", [(0, 1, 2), (2, 1, 0), (1, 2, 0)])
def test_udp_closed_port_reassembled_datagram_one_port_unreachable(
    peer_host: Host, order: tuple[int, ...]
):
    # The reassembled datagram is not a fragment: RFC 1122 3.2.2's "no error
    # about a non-initial fragment" must not depend on which fragment came last.
    payload = bytes(i & 0xFF for i in range(3000))
    datagram = IP(src=PEER, dst=US, id=555) / UDP(sport=40000, dport=4444) / Raw(payload)
    frags = fragments(datagram)
    assert len(frags) == 3
    out = peer_host.feed([Ether(dst=US_MAC, src=PEER_MAC) / frags[i] for i in order], T0)
    # The quote starts with a plain header for the whole datagram (RFC 792).
    header = IP(src=PEER, dst=US, id=555, ttl=64, proto=17, len=20 + 8 + 3000)
    assert out == [unreachable(3, bytes(header) + bytes(datagram)[20:548])]
    assert len(icmp_body(out[0])) == 548
    assert peer_host.delta() == {
        "eth_in_frames": 3,
        "ipv4_in_receives": 3,
        "ipv4_frag_in": 3,
        "ipv4_frag_received": 3,
        "ipv4_reasm_ok": 1,
        "ipv4_in_delivers": 1,
        "udp_no_ports": 1,
        "icmp_out_dest_unreachs": 1,
        "ipv4_out_requests": 1,
    }


def test_udp_rcvbuf_full_drops_and_counts(peer_host: Host):
    sock = bound_socket(peer_host)
    sock.rcvbuf = 250
    frames = [udp_frame(9000, bytes([i]) * 100) for i in range(3)]
    assert peer_host.feed(frames, T0) == []
    assert sock.queued == 2
    assert sock.drops == 1
    assert sock.recvfrom(1000)[0] == b"\x00" * 100
    assert sock.recvfrom(1000)[0] == b"\x01" * 100
    assert peer_host.stack.ready == [sock]
    assert peer_host.delta() == {
        "eth_in_frames": 3,
        "ipv4_in_receives": 3,
        "ipv4_in_delivers": 3,
        "udp_in_datagrams": 3,
        "drop_udp_rcvbuf": 1,
    }


# ---- UDP send ----------------------------------------------------------------------


def test_sendto_1472_bytes_one_full_size_frame(peer_host: Host):
    sock = bound_socket(peer_host, 5000)
    data = bytes(i & 0xFF for i in range(1472))
    assert sock.sendto(data, (PEER, 7)) == 1472
    peer_host.stack.flush()
    out = peer_host.take()
    expected = (
        Ether(dst=PEER_MAC, src=US_MAC)
        / IP(src=US, dst=PEER, id=1, ttl=64)
        / UDP(sport=5000, dport=7)
        / Raw(data)
    )
    assert out == [bytes(expected)]
    assert len(out[0]) == 1514
    assert peer_host.delta() == {"udp_out_datagrams": 1, "ipv4_out_requests": 1}


def test_sendto_4000_bytes_fragments_with_offsets(peer_host: Host):
    sock = bound_socket(peer_host, 5000)
    data = bytes((i * 13) & 0xFF for i in range(4000))
    assert sock.sendto(data, (PEER, 7)) == 4000
    peer_host.stack.flush()
    out = peer_host.take()
    whole = IP(src=US, dst=PEER, id=1, ttl=64) / UDP(sport=5000, dport=7) / Raw(data)
    assert out == [bytes(Ether(dst=PEER_MAC, src=US_MAC) / f) for f in fragments(whole)]
    ips = [parse(f)[IP] for f in out]
    assert [(ip.frag * 8, bool(ip.flags.MF), ip.len) for ip in ips] == [
        (0, True, 1500),
        (1480, True, 1500),
        (2960, False, 20 + 4008 - 2960),
    ]
    assert {ip.id for ip in ips} == {1}
    body = b"".join(bytes(ip.payload)[: ip.len - 20] for ip in ips)
    assert body == bytes(whole)[20:]
    assert peer_host.delta() == {
        "udp_out_datagrams": 1,
        "ipv4_frag_oks": 1,
        "ipv4_frag_creates": 3,
        "ipv4_out_requests": 3,
    }


def test_sendto_unresolved_host_arp_then_reply_releases_datagram(host: Host):
    sock = bound_socket(host, 5000)
    assert sock.sendto(b"held", (PEER, 7)) == 4
    host.stack.flush()
    assert host.take() == [our_arp(1, ZERO_MAC, PEER, BCAST_MAC)]
    assert host.stack.stats()["arp_queued"] == 1
    out = host.feed([arp_reply(PEER, PEER_MAC, US, US_MAC)], T0 + 300)
    assert len(out) == 1
    f = parse(out[0])
    assert (f.dst, f.src) == (PEER_MAC, US_MAC)
    assert (f[IP].dst, f[UDP].dport, bytes(f[UDP].payload)) == (PEER, 7, b"held")
    assert host.delta() == {
        "udp_out_datagrams": 1,
        "ipv4_out_requests": 1,
        "arp_out_requests": 1,
        "arp_requests_sent": 1,
        "eth_in_frames": 1,
        "arp_in_replies": 1,
        "arp_resolved": 1,
        "arp_entries": 1,
    }


def test_sendto_unresolved_host_no_reply_dropped_and_slot_returned(host: Host):
    sock = bound_socket(host, 5000)
    free0 = host.ring.tx_free_count()
    request = our_arp(1, ZERO_MAC, PEER, BCAST_MAC)
    sock.sendto(b"lost", (PEER, 7))
    host.stack.flush()
    assert host.take() == [request]
    assert host.ring.tx_free_count() == free0 - 1  # the held datagram
    assert host.stack.next_deadline_us() == T0 + 1 * S
    assert host.timer(T0 + 1 * S - 1) == []
    assert host.timer(T0 + 1 * S) == [request]
    assert host.timer(T0 + 3 * S - 1) == []
    assert host.timer(T0 + 3 * S) == [request]
    assert host.timer(T0 + 7 * S - 1) == []
    assert host.timer(T0 + 7 * S) == []
    assert host.ring.tx_free_count() == free0
    assert host.stack.next_deadline_us() is None
    assert host.delta() == {
        "udp_out_datagrams": 1,
        "ipv4_out_requests": 1,
        "arp_out_requests": 3,
        "arp_requests_sent": 3,
        "arp_failed": 1,
        "drop_arp_unresolved": 1,
    }


def test_sendto_unresolved_failure_due_during_later_burst_slot_returned(host: Host):
    # PEER never answers; its entry is due to fail at T0+7s.  A burst at that
    # moment needs ARP for another host (an echo reply to OTHER), and resolving
    # it runs the neighbour timers before on_timer does: PEER's held datagram
    # fails there and must give its TX slot back all the same.
    sock = bound_socket(host, 5000)
    free0 = host.ring.tx_free_count()
    sock.sendto(b"lost", (PEER, 7))
    host.stack.flush()
    host.timer(T0 + 1 * S)
    host.timer(T0 + 3 * S)
    host.take()
    ping = (
        Ether(dst=US_MAC, src=OTHER_MAC)
        / IP(src=OTHER, dst=US)
        / ICMP(type=8, id=1, seq=1)
        / Raw(b"x" * 8)
    )
    out = host.feed([ping], T0 + 7 * S)
    assert out == [our_arp(1, ZERO_MAC, OTHER, BCAST_MAC)]
    assert host.stack.neighbours.entries() == [(ip_from_str(OTHER), None, "INCOMPLETE")]
    assert host.ring.tx_free_count() == free0 - 1  # only the echo reply for OTHER is held
    assert host.timer(T0 + 7 * S) == []
    assert host.ring.tx_free_count() == free0 - 1
    assert host.delta() == {
        "udp_out_datagrams": 1,
        "ipv4_out_requests": 2,
        "arp_out_requests": 4,
        "arp_requests_sent": 4,
        "arp_failed": 1,
        "drop_arp_unresolved": 1,
        "eth_in_frames": 1,
        "ipv4_in_receives": 1,
        "ipv4_in_delivers": 1,
        "icmp_in_msgs": 1,
        "icmp_in_echos": 1,
        "icmp_out_echo_reps": 1,
        "arp_entries": 1,
        "arp_queued": 1,
    }


def test_sendto_stale_neighbour_sends_at_once_then_unicast_probe(peer_host: Host):
    # PEER was learned at T0 and is STALE after 30 s: the datagram still goes
    # to the MAC we hold, and the re-validation is unicast (RFC 1122 2.3.2.1).
    sock = bound_socket(peer_host, 5000)
    peer_host.feed([], T0 + 31 * S)
    sock.sendto(b"stale", (PEER, 7))
    peer_host.stack.flush()
    out = peer_host.take()
    assert len(out) == 1
    assert (parse(out[0]).dst, bytes(parse(out[0])[UDP].payload)) == (PEER_MAC, b"stale")
    assert peer_host.timer(T0 + 31 * S) == [our_arp(1, ZERO_MAC, PEER, PEER_MAC)]
    assert peer_host.stack.neighbours.entries() == [
        (ip_from_str(PEER), bytes.fromhex("020000000001"), "PROBE")
    ]
    assert peer_host.delta() == {
        "udp_out_datagrams": 1,
        "ipv4_out_requests": 1,
        "arp_out_requests": 1,
        "arp_requests_sent": 1,
    }


def test_sendto_off_link_no_gateway_dropped_no_route(host: Host):
    sock = bound_socket(host, 5000)
    free0 = host.ring.tx_free_count()
    assert sock.sendto(b"far", (FAR, 7)) == 3
    host.stack.flush()
    assert host.take() == []
    assert host.ring.tx_free_count() == free0
    assert host.delta() == {"udp_out_datagrams": 1, "drop_ipv4_out_no_route": 1}


def test_sendto_off_link_with_gateway_arps_for_gateway_then_sends_via_it():
    h = Host(gateway=GATEWAY)
    h.feed([], T0)
    sock = bound_socket(h, 5000)
    sock.sendto(b"far", (FAR, 7))
    h.stack.flush()
    assert h.take() == [our_arp(1, ZERO_MAC, GATEWAY, BCAST_MAC)]
    out = h.feed([arp_reply(GATEWAY, GATEWAY_MAC, US, US_MAC)], T0)
    assert len(out) == 1
    f = parse(out[0])
    assert (f.dst, f[IP].src, f[IP].dst, bytes(f[UDP].payload)) == (GATEWAY_MAC, US, FAR, b"far")
    assert h.delta() == {
        "udp_out_datagrams": 1,
        "ipv4_out_requests": 1,
        "arp_out_requests": 1,
        "arp_requests_sent": 1,
        "eth_in_frames": 1,
        "arp_in_replies": 1,
        "arp_resolved": 1,
        "arp_entries": 1,
    }


def test_sendto_subnet_broadcast_goes_to_broadcast_mac_without_arp(host: Host):
    sock = bound_socket(host, 5000)
    sock.sendto(b"all", (SUBNET_BCAST, 7))
    host.stack.flush()
    out = host.take()
    assert len(out) == 1
    f = parse(out[0])
    assert (f.dst, f[IP].dst, bytes(f[UDP].payload)) == (BCAST_MAC, SUBNET_BCAST, b"all")
    assert host.delta() == {"udp_out_datagrams": 1, "ipv4_out_requests": 1}


def test_stack_refuses_mtu_larger_than_device_slots():
    # A 9000-byte MTU on 2048-byte slots would write frames across the
    # neighbouring slots of the pool.
    ring = MemoryRing(slot_size=2048)
    with pytest.raises(ValueError):
        Stack(ring, Interface.from_config(f"{US}/24", mac=US_MAC, mtu=9000))


# ---- ICMP errors and their rate limit ----------------------------------------------


def test_icmp_rate_limit_burst_of_100_gives_50_then_refills_10_per_10ms(peer_host: Host):
    frames = [udp_frame(10000 + i) for i in range(100)]
    out = peer_host.feed(frames, T0)
    assert len(out) == 50
    assert [parse(f)[ICMP].type for f in out] == [3] * 50
    quoted_ports = [UDP(icmp_body(f)[20:28]).dport for f in out]
    assert quoted_ports == list(range(10000, 10050))
    assert peer_host.delta() == {
        "eth_in_frames": 100,
        "ipv4_in_receives": 100,
        "ipv4_in_delivers": 100,
        "udp_no_ports": 100,
        "icmp_out_dest_unreachs": 50,
        "icmp_out_rate_limited": 50,
        "ipv4_out_requests": 50,
    }
    peer_host.mark()
    out = peer_host.feed([udp_frame(20000 + i) for i in range(20)], T0 + 10 * MS)
    assert len(out) == 10
    assert peer_host.delta() == {
        "eth_in_frames": 20,
        "ipv4_in_receives": 20,
        "ipv4_in_delivers": 20,
        "udp_no_ports": 20,
        "icmp_out_dest_unreachs": 10,
        "icmp_out_rate_limited": 10,
        "ipv4_out_requests": 10,
    }


def test_unknown_protocol_gets_protocol_unreachable(peer_host: Host):
    frame = (
        Ether(dst=US_MAC, src=PEER_MAC) / IP(src=PEER, dst=US, proto=200, id=31) / Raw(b"?" * 30)
    )
    out = peer_host.feed([frame], T0)
    assert out == [unreachable(2, ip_bytes(frame))]
    assert peer_host.delta() == {
        "eth_in_frames": 1,
        "ipv4_in_receives": 1,
        "ipv4_in_delivers": 1,
        "drop_ipv4_unknown_protocol": 1,
        "icmp_out_dest_unreachs": 1,
        "ipv4_out_requests": 1,
    }


def test_unknown_protocol_to_broadcast_no_icmp(peer_host: Host):
    frame = Ether(dst=BCAST_MAC, src=PEER_MAC) / IP(src=PEER, dst=SUBNET_BCAST, proto=200)
    assert peer_host.feed([frame], T0) == []
    assert peer_host.delta() == {
        "eth_in_frames": 1,
        "ipv4_in_receives": 1,
        "ipv4_in_delivers": 1,
        "drop_ipv4_unknown_protocol": 1,
    }


def test_icmp_error_received_gets_no_icmp_error(peer_host: Host):
    # A port unreachable about a datagram of ours (to a closed port of PEER).
    ours = IP(src=US, dst=PEER) / UDP(sport=5000, dport=7) / Raw(b"x")
    err = Ether(dst=US_MAC, src=PEER_MAC) / IP(src=PEER, dst=US) / ICMP(type=3, code=3) / ours
    assert peer_host.feed([err], T0) == []
    assert peer_host.delta() == {
        "eth_in_frames": 1,
        "ipv4_in_receives": 1,
        "ipv4_in_delivers": 1,
        "icmp_in_msgs": 1,
        "icmp_in_dest_unreachs": 1,
    }


def test_icmp_unknown_type_gets_no_reply(peer_host: Host):
    frame = Ether(dst=US_MAC, src=PEER_MAC) / IP(src=PEER, dst=US) / ICMP(type=42)
    assert peer_host.feed([frame], T0) == []
    assert peer_host.delta() == {
        "eth_in_frames": 1,
        "ipv4_in_receives": 1,
        "ipv4_in_delivers": 1,
        "icmp_in_msgs": 1,
        "icmp_in_other": 1,
    }


# ---- IPv4 input filters --------------------------------------------------------------


@pytest.mark.parametrize(
    "src",
    [
        "0.0.0.0",
        "127.0.0.1",
        "127.255.0.9",
        "224.0.0.1",
        "239.1.2.3",
        "240.0.0.1",
        "255.255.255.255",
        SUBNET_BCAST,  # RFC 1122 3.2.1.3: {<Network-number>, -1} is never a source
        "198.18.0.2",  # our own address arriving from the wire (a spoof or a loop)
    ],
)
def test_martian_source_dropped_and_counted(peer_host: Host, src: str):
    sock = bound_socket(peer_host)
    assert peer_host.feed([udp_frame(9000, src=src), udp_frame(4444, src=src)], T0) == []
    assert not sock.readable
    assert peer_host.delta() == {
        "eth_in_frames": 2,
        "ipv4_in_receives": 2,
        "drop_ipv4_martian_source": 2,
    }


@pytest.mark.parametrize("dst", [OTHER, "224.0.0.1", FAR, "198.18.0.0"])
def test_datagram_not_for_us_dropped_and_counted(peer_host: Host, dst: str):
    sock = bound_socket(peer_host)
    assert peer_host.feed([udp_frame(9000, dst=dst), echo_request(b"e", dst=dst)], T0) == []
    assert not sock.readable
    assert peer_host.delta() == {
        "eth_in_frames": 2,
        "ipv4_in_receives": 2,
        "drop_ipv4_not_for_us": 2,
    }


def test_ipv4_bad_header_checksum_dropped_and_counted(peer_host: Host):
    frame = Ether(dst=US_MAC, src=PEER_MAC) / IP(src=PEER, dst=US, chksum=0x1234) / UDP(dport=9)
    assert peer_host.feed([frame], T0) == []
    assert peer_host.delta() == {
        "eth_in_frames": 1,
        "ipv4_in_receives": 1,
        "drop_ipv4_bad_checksum": 1,
    }


# ---- Context -------------------------------------------------------------------------


def make_context(h: Host, **kw: Any) -> Context:
    return Context(h.ring, h.stack, clock=lambda: T0, **kw)


def test_context_poll_zero_processes_injected_frames_returns_ready(host: Host):
    sock = bound_socket(host)
    ctx = make_context(host)
    host.ring.inject(bytes(udp_frame(9000, b"ping", src=PEER)))
    assert ctx.poll(0) == [sock]
    assert host.stack.ready == []
    assert sock.recvfrom(100) == (b"ping", (PEER, 40000))
    assert host.take() == [our_arp(1, ZERO_MAC, US, BCAST_MAC)]  # start()'s announcement
    assert ctx.poll(0) == []
    assert host.take() == []
    assert ctx.counters.polls == 2
    assert ctx.counters.frames == 1


def test_context_poll_zero_runs_due_timers(host: Host):
    sock = bound_socket(host, 5000)
    ctx = make_context(host)
    ctx.start()
    host.take()
    sock.sendto(b"x", (PEER, 7))
    host.stack.flush()
    assert host.take() == [our_arp(1, ZERO_MAC, PEER, BCAST_MAC)]
    now = [T0 + 1 * S]
    ctx.clock = lambda: now[0]
    assert ctx.poll(0) == []
    assert host.take() == [our_arp(1, ZERO_MAC, PEER, BCAST_MAC)]
    assert ctx.counters.timer_runs == 1


def test_context_used_from_another_thread_raises_wrong_thread(host: Host):
    ctx = make_context(host)
    caught: list[BaseException] = []

    def run() -> None:
        try:
            ctx.poll(0)
        except BaseException as exc:
            caught.append(exc)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    assert len(caught) == 1
    assert isinstance(caught[0], WrongThreadError)
    assert "thread" in str(caught[0])
    assert host.take() == []  # nothing ran: not even the start announcement


@pytest.mark.parametrize("mode", ["busy", "interrupt", "hybrid"])
def test_context_valid_poll_modes_accepted(host: Host, mode: str):
    assert make_context(host, poll=mode).mode == mode


@pytest.mark.parametrize("mode", ["spin", "", "BUSY"])
def test_context_bad_poll_mode_raises_value_error(host: Host, mode: str):
    with pytest.raises(ValueError, match="poll mode"):
        make_context(host, poll=mode)


def test_context_zero_budget_raises_value_error(host: Host):
    with pytest.raises(ValueError, match="budget"):
        make_context(host, budget=0)


# ---- Interface -------------------------------------------------------------------------


def test_parse_cidr_with_and_without_prefix():
    assert parse_cidr("198.18.0.2/24") == (0xC6120002, 24)
    assert parse_cidr("198.18.0.2") == (0xC6120002, 32)
    assert parse_cidr("0.0.0.0/0") == (0, 0)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("198.18.0.2/33", "prefix"),
        ("198.18.0.2/-1", "prefix"),
        ("198.18.0.2/abc", "prefix"),
        ("198.18.0.2/", "prefix"),
        ("198.18.0.2/\uff12\uff14", "prefix"),  # fullwidth "24"
        ("198.18.0.2/\u00b2", "prefix"),  # superscript two
        ("198.18.0.256/24", "dotted-quad"),
        ("198.18.0/24", "dotted-quad"),
        ("", "dotted-quad"),
    ],
)
def test_parse_cidr_bad_text_raises_clear_value_error(text: str, match: str):
    with pytest.raises(ValueError, match=match):
        parse_cidr(text)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"addr": "198.18.0.2/40"}, "prefix"),
        ({"addr": "198.18.0.2/24", "mac": "02:00:00:00:00"}, "MAC"),
        ({"addr": "198.18.0.2/24", "mac": "01:00:5e:00:00:01"}, "unicast"),
        ({"addr": "198.18.0.2/24", "gateway": "10.0.0.1"}, "not on"),
        ({"addr": "198.18.0.2/24", "gateway": "10.0.0"}, "dotted-quad"),
        ({"addr": "198.18.0.2/24", "mtu": 67}, "MTU"),
        ({"addr": "198.18.0.2/24", "mtu": 65536}, "MTU"),
    ],
)
def test_interface_from_config_bad_values_raise_clear_value_error(
    kwargs: dict[str, Any], match: str
):
    with pytest.raises(ValueError, match=match):
        Interface.from_config(**kwargs)


def test_interface_next_hop_on_link_is_destination_else_gateway():
    with_gw = Interface.from_config(f"{US}/24", mac=US_MAC, gateway=GATEWAY)
    no_gw = Interface.from_config(f"{US}/24", mac=US_MAC)
    for iface in (with_gw, no_gw):
        assert iface.next_hop(ip_from_str(PEER)) == ip_from_str(PEER)
        assert iface.next_hop(ip_from_str(SUBNET_BCAST)) == ip_from_str(SUBNET_BCAST)
    assert with_gw.next_hop(ip_from_str(FAR)) == ip_from_str(GATEWAY)
    assert no_gw.next_hop(ip_from_str(FAR)) is None
    assert no_gw.next_hop(ip_from_str("198.19.0.1")) is None  # just outside the /24


def test_interface_host_route_prefix_32_everything_via_gateway():
    iface = Interface(addr=ip_from_str(US), prefix_len=32, mac=bytes.fromhex("020000000002"))
    assert iface.next_hop(ip_from_str(US)) == ip_from_str(US)
    assert iface.next_hop(ip_from_str(PEER)) is None
    assert iface.broadcast == iface.addr


@pytest.mark.parametrize("raw", [b"\xff" * 6, b"\x00" * 6, b"\x01\x02\x03\x04\x05\x06"])
def test_random_mac_forces_unicast_locally_administered(monkeypatch: Any, raw: bytes):
    monkeypatch.setattr(os, "urandom", lambda n: raw[:n])
    mac = random_mac()
    assert len(mac) == 6
    assert mac[0] & 0x01 == 0
    assert mac[0] & 0x02 == 0x02
    assert mac[1:] == raw[1:]


def test_random_mac_draws_are_unicast_locally_administered_and_differ():
    macs = {random_mac() for _ in range(64)}
    assert len(macs) > 1
    assert all(m[0] & 0x03 == 0x02 for m in macs)
    Interface(addr=ip_from_str(US))  # the default MAC is accepted by the interface
