"""Hostile input from the client namespace: every bad frame dropped, counted, and the host lives.

`ustack serve udp-echo` runs on the TAP of a private topology; the test
writes raw Ethernet frames into the TAP from the client namespace (an
AF_PACKET socket opened inside it) and reads the counters the server
prints when it stops.  Kinds: frames not for us or of unknown type,
truncated and oversize frames, bad IPv4 checksums and lengths, IHL < 5,
martian sources, malformed ICMP and UDP, malformed and foreign ARP,
fragment floods, overlapping fragments, ARP floods.

Each kind must be dropped and counted under its reason (asserted exactly:
the kernel on the client side never sends frames that would touch these
counters), the stack must keep answering (`ping -c 3` after every batch),
and the tables the network can grow must stay within the bounds their
modules declare (ARCHITECTURE.md rule 8).

Frames are written in windows of at most SYNC_EVERY, each followed by a
UDP echo round trip through the stack ("sync"): the TAP queue is FIFO and
the stack handles a burst in order, so when the echo is back every frame
before it has been processed, and the TAP's 500-frame queue never
overflows (which would make counts depend on timing).
"""

from __future__ import annotations

import inspect
import ipaddress
import itertools
import random
import socket
import struct
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from pyroute2 import IPRoute
from scapy.layers.inet import ICMP, IP, UDP, IPOption
from scapy.packet import Packet, Raw
from scapy.utils import checksum

from tests.conftest import ns_run
from tests.kernel import ns_socket, tap_mac
from tests.server import ServerProcess
from ustack import netns
from ustack.stack.neighbour import NeighbourCache
from ustack.stack.reassembly import (
    DROP_BAD_LENGTH,
    DROP_OVERLAP,
    DROP_OVERSIZE,
    DROP_TABLE_FULL,
    DUPLICATE,
    REASM_OK,
    Reassembler,
)
from ustack.topology import Topology
from ustack.wire.drop import Drop

pytestmark = pytest.mark.netns

ECHO_PORT = 7
SYNC_EVERY = 200
OTHER_MAC = "02:00:00:00:00:99"
FORGED_MAC = "02:00:00:00:00:66"
BROADCAST_MAC = "ff:ff:ff:ff:ff:ff"


def _default(cls: type, name: str) -> int:
    """A bound as the module declares it (the server builds its tables with the defaults)."""
    value = inspect.signature(cls).parameters[name].default
    assert isinstance(value, int)
    return value


MAX_DATAGRAMS = _default(Reassembler, "max_datagrams")
MAX_REASM_BYTES = _default(Reassembler, "max_bytes")
MAX_NEIGHBOURS = _default(NeighbourCache, "max_entries")


def ip_int(text: str) -> int:
    return int(ipaddress.IPv4Address(text))


def ip_str(value: int) -> str:
    return str(ipaddress.IPv4Address(value))


def mac_bytes(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


class Wire:
    """Raw frames into ustack from the client namespace, with sync, ping and echo checks."""

    def __init__(self, topo: Topology, srv: ServerProcess) -> None:
        self.topo = topo
        self.mac = srv.ready_line.split("mac ")[1].split(",")[0]
        self.kernel_mac = tap_mac(topo)
        with netns.inside(topo.client_ns):
            # Protocol 0: this socket only sends, so nothing piles up in it.
            self.raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            self.raw.bind((topo.tap, 0))
        self.udp = ns_socket(topo.client_ns)
        self.udp.bind((topo.client_addr, 0))
        self.udp.settimeout(5)
        self.port: int = self.udp.getsockname()[1]
        self.tokens = itertools.count()
        self.syncs = 0
        self.pings = 0
        self.echoes: list[bytes] = []
        """Echoes that came back to `port` and were not sync tokens."""

    def close(self) -> None:
        self.raw.close()
        self.udp.close()

    # -- frames --------------------------------------------------------------

    def eth(self, payload: bytes, ethertype: int = 0x0800, dst: str | None = None) -> bytes:
        return (
            mac_bytes(dst or self.mac)
            + mac_bytes(self.kernel_mac)
            + struct.pack("!H", ethertype)
            + payload
        )

    def ip(self, packet: Packet | bytes) -> bytes:
        return self.eth(bytes(packet))

    def echo_request(self, seq: int = 0, **ip_fields: Any) -> Packet:
        fields: dict[str, Any] = {"src": self.topo.client_addr, "dst": self.topo.ustack_addr}
        fields.update(ip_fields)
        return IP(**fields) / ICMP(id=0x4855, seq=seq) / b"hostile"

    def udp_to_echo(self, data: bytes, **ip_fields: Any) -> Packet:
        fields: dict[str, Any] = {"src": self.topo.client_addr, "dst": self.topo.ustack_addr}
        fields.update(ip_fields)
        return IP(**fields) / UDP(sport=self.port, dport=ECHO_PORT) / data

    # -- driving -------------------------------------------------------------

    def send(self, frames: Iterable[bytes]) -> None:
        """Write frames into the TAP, syncing every SYNC_EVERY frames and at the end."""
        pending = 0
        for frame in frames:
            self.raw.send(frame)
            pending += 1
            if pending == SYNC_EVERY:
                self.sync()
                pending = 0
        self.sync()

    def sync(self) -> None:
        """One UDP echo round trip: every frame written before it has been processed."""
        token = b"sync-%d" % next(self.tokens)
        self.udp.sendto(token, (self.topo.ustack_addr, ECHO_PORT))
        self.syncs += 1
        while True:
            data = self.udp.recv(65535)
            if data == token:
                return
            if not data.startswith(b"sync-"):
                self.echoes.append(data)

    def ping(self, check: bool = True) -> str:
        """The stack still answers: 3 echo requests, 3 replies; returns ping's output."""
        res = ns_run(
            self.topo.client_ns,
            "ping",
            "-c",
            "3",
            "-i",
            "0.2",
            "-W",
            "2",
            self.topo.ustack_addr,
            check=False,
        )
        self.pings += 3
        if check:
            assert " 3 received" in res.stdout, res.stdout + res.stderr
        return res.stdout + res.stderr


@contextmanager
def serving(topo: Topology) -> Iterator[tuple[ServerProcess, Wire]]:
    with ServerProcess(topo, "udp-echo") as srv:
        wire = Wire(topo, srv)
        try:
            wire.ping()  # the kernel and ustack know each other before anything hostile
            yield srv, wire
        finally:
            wire.close()


def check_counters(srv: ServerProcess, expected: dict[str, int]) -> None:
    """Exact counters, all compared at once so that a failure shows every difference."""
    assert srv.returncode == 0, srv.output
    got = {name: srv.counter(name) for name in expected}
    assert got == expected, srv.output


def check(srv: ServerProcess, wire: Wire, expected: dict[str, int] | None = None) -> None:
    """`expected` exactly, plus what holds after every hostile test.

    No internal error, and the only echo requests seen and answered were the pings.
    """
    baseline = {
        "drop_internal_error": 0,
        "icmp_in_echos": wire.pings,
        "icmp_out_echo_reps": wire.pings,
    }
    check_counters(srv, {**baseline, **(expected or {})})


# -- Ethernet ---------------------------------------------------------------------


def test_ethernet_frames_not_for_us_or_unusable_dropped_and_counted(topology: Topology):
    with serving(topology) as (srv, w):
        echo = bytes(w.echo_request())
        w.send(w.eth(echo, dst=OTHER_MAC) for _ in range(10))
        w.send(w.eth(echo, dst="01:00:5e:00:00:01") for _ in range(5))  # IPv4 multicast MAC
        w.ping()
        w.send(w.eth(echo, ethertype=0x86DD) for _ in range(4))  # IPv6
        w.send(w.eth(echo, ethertype=0x88B5) for _ in range(3))  # IEEE local experimental
        w.ping()
        w.send(w.eth(b"\x00\x01" + echo, ethertype=0x8100) for _ in range(5))  # 802.1Q
        w.send(w.eth(b"\x00\x01" + echo, ethertype=0x88A8) for _ in range(3))  # 802.1ad
        w.send(w.eth(echo, ethertype=len(echo)) for _ in range(6))  # 802.3 length field
        w.ping()
        multicast_src = mac_bytes(w.mac) + mac_bytes("03:00:00:00:00:01") + b"\x08\x00" + echo
        w.send(multicast_src for _ in range(4))
        # Truncated: an Ethernet header and nothing (or too little) of what it announces.
        w.send(w.eth(b"", 0x0800) for _ in range(3))
        w.send(w.eth(echo[:19], 0x0800) for _ in range(2))
        w.send(w.eth(b"", 0x0806) for _ in range(2))
        w.send(w.eth(bytes(27), 0x0806) for _ in range(2))
        w.ping()
    check(
        srv,
        w,
        {
            "drop_eth_not_for_us": 15,
            "drop_eth_unknown_type": 7,
            "drop_eth_vlan": 8,
            "drop_eth_length_field": 6,
            "drop_eth_bad_source": 4,
            "drop_ipv4_truncated": 5,
            "drop_arp_truncated": 4,
            "dev_drop_rx_truncated": 0,
            "dev_drop_rx_short": 0,
        },
    )


def test_oversize_frames_dropped_by_ring_as_truncated(topology: Topology):
    """A frame longer than a slot holds (1984 of 2048 bytes) is dropped whole by the ring."""
    with IPRoute(netns=topology.client_ns) as ipr:
        idx = ipr.link_lookup(ifname=topology.tap)[0]
        ipr.link("set", index=idx, mtu=9000)
    with serving(topology) as (srv, w):
        big = w.ip(w.udp_to_echo(b"\x5a" * (3000 - 14 - 20 - 8)))
        assert len(big) == 3000
        w.send(big for _ in range(5))
        w.ping()
        w.send(w.eth(bytes(9000 - 14), ethertype=0x0800) for _ in range(2))
        w.ping()
    check(
        srv,
        w,
        {
            "dev_drop_rx_truncated": 7,
            # Nothing of an oversize frame reaches the stack.
            "drop_ipv4_truncated": 0,
            "drop_ipv4_bad_version": 0,
            "udp_in_datagrams": w.syncs,
        },
    )
    assert w.echoes == []


# -- IPv4 ---------------------------------------------------------------------------


def test_ipv4_bad_headers_dropped_and_counted(topology: Topology):
    with serving(topology) as (srv, w):
        ustack, client = topology.ustack_addr, topology.client_addr
        good = bytes(w.echo_request())
        bad_sum = bytearray(good)
        bad_sum[10] ^= 0xFF
        w.send(w.ip(bytes(bad_sum)) for _ in range(10))
        w.ping()
        w.send(w.ip(w.echo_request(version=6)) for _ in range(3))
        # IHL < 5, each with the checksum right over the 20 bytes present.
        w.send(w.ip(w.echo_request(ihl=ihl)) for ihl in range(5))
        w.ping()
        # Total length below the header, and beyond the frame.
        w.send(w.ip(w.echo_request(len=length)) for length in (0, 19))
        w.send(w.ip(w.echo_request(len=1000)) for _ in range(4))
        w.send(w.ip(good[:12]) for _ in range(2))  # the header itself cut
        w.send(w.ip(w.echo_request(ihl=15)) for _ in range(1))  # options announced, absent
        w.ping()
        w.send(w.ip(w.echo_request(flags=4)) for _ in range(2))  # the reserved ("evil") bit
        w.send(w.ip(w.echo_request(dst="198.18.0.77")) for _ in range(5))
        w.send(w.ip(w.echo_request(dst="198.19.0.2")) for _ in range(1))
        martians = [
            "0.0.0.0",
            "127.0.0.1",
            "224.0.0.5",
            "240.0.0.1",
            "255.255.255.255",
            "198.18.0.255",  # our subnet's broadcast (RFC 1122 3.2.1.3)
        ]
        w.send(w.ip(w.echo_request(src=src)) for src in martians)
        w.send(w.ip(w.udp_to_echo(b"from a martian", src=src)) for src in martians)
        w.ping()
        # Padding after total length is not part of the datagram: echoed without it.
        w.send([w.ip(bytes(w.udp_to_echo(b"exact")) + b"JUNK" * 10)])
        w.send([w.ip(IP(src=client, dst=ustack, proto=253) / b"what protocol?")])
        w.ping()
    check(
        srv,
        w,
        {
            "drop_ipv4_bad_checksum": 10,
            "drop_ipv4_bad_version": 3,
            "drop_ipv4_bad_ihl": 5,
            "drop_ipv4_bad_length": 2,
            "drop_ipv4_truncated": 7,
            "drop_ipv4_reserved_flag": 2,
            "drop_ipv4_not_for_us": 6,
            "drop_ipv4_martian_source": 2 * len(martians),
            "drop_ipv4_unknown_protocol": 1,
            "icmp_out_dest_unreachs": 1,
            "udp_in_datagrams": w.syncs + 1,
            "udp_out_datagrams": w.syncs + 1,
        },
    )
    assert w.echoes == [b"exact"]


def test_icmp_and_udp_malformed_dropped_and_counted(topology: Topology):
    with serving(topology) as (srv, w):
        ustack, client = topology.ustack_addr, topology.client_addr

        def raw_ip(proto: int, body: bytes) -> bytes:
            return w.ip(IP(src=client, dst=ustack, proto=proto) / Raw(body))

        request = bytearray(bytes(ICMP(id=1, seq=1) / b"payload"))
        request[2] ^= 0x55
        w.send(raw_ip(1, bytes(request)) for _ in range(4))
        w.send(raw_ip(1, b"\x08\x00\xf7\xff") for _ in range(3))  # 4 of ICMP's 8 header bytes
        w.ping()
        # Built on its IP header, so that scapy fills in the checksum before we break it.
        datagram = bytearray(bytes(w.udp_to_echo(b"bad checksum")))
        datagram[-1] ^= 0x01
        w.send(w.ip(bytes(datagram)) for _ in range(4))
        long_len = bytearray(bytes(UDP(sport=w.port, dport=ECHO_PORT, chksum=0) / (b"x" * 12)))
        struct.pack_into("!H", long_len, 4, 200)  # UDP length beyond the IP payload
        w.send(raw_ip(17, bytes(long_len)) for _ in range(3))
        short_len = bytearray(long_len)
        struct.pack_into("!H", short_len, 4, 7)  # below the UDP header
        w.send([raw_ip(17, bytes(short_len))])
        w.send(raw_ip(17, struct.pack("!HH", w.port, ECHO_PORT)) for _ in range(2))
        w.ping()
        # RFC 768: checksum 0 means none; that datagram is good and comes back.
        w.send([raw_ip(17, bytes(UDP(sport=w.port, dport=ECHO_PORT, chksum=0) / b"no sum"))])
        w.ping()
    check(
        srv,
        w,
        {
            "drop_icmp_bad_checksum": 4,
            "drop_icmp_truncated": 3,
            "drop_udp_bad_checksum": 4,
            "drop_udp_bad_length": 4,
            "drop_udp_truncated": 2,
            "udp_in_datagrams": w.syncs + 1,
        },
    )
    assert w.echoes == [b"no sum"]


def test_udp_echo_from_source_port_zero_not_answered_server_survives(topology: Topology):
    """RFC 768: source port 0 means the sender wants no reply; the server must not die of it."""
    with serving(topology) as (srv, w):
        zero = w.ip(
            IP(src=topology.client_addr, dst=topology.ustack_addr)
            / UDP(sport=0, dport=ECHO_PORT)
            / b"port zero"
        )
        w.raw.send(zero)
        answered = w.ping(check=False)
    # The server's own words first: a dead server says why on its way out.
    check(srv, w)
    assert " 3 received" in answered, answered


# -- ARP ----------------------------------------------------------------------------


def arp_frame(
    eth_dst: str,
    eth_src: str,
    *,
    op: int = 1,
    sha: str,
    spa: str,
    tpa: str,
    tha: str = "00:00:00:00:00:00",
    htype: int = 1,
    ptype: int = 0x0800,
    hlen: int = 6,
    plen: int = 4,
) -> bytes:
    arp = struct.pack(
        "!HHBBH6s4s6s4s",
        htype,
        ptype,
        hlen,
        plen,
        op,
        mac_bytes(sha),
        socket.inet_aton(spa),
        mac_bytes(tha),
        socket.inet_aton(tpa),
    )
    return mac_bytes(eth_dst) + mac_bytes(eth_src) + b"\x08\x06" + arp


def test_arp_malformed_and_foreign_dropped_and_counted(topology: Topology):
    with serving(topology) as (srv, w):
        us = topology.ustack_addr

        def request(
            sha: str = FORGED_MAC, spa: str = "198.18.0.66", tpa: str = us, **kw: Any
        ) -> bytes:
            eth_src = kw.pop("eth_src", sha)
            return arp_frame(BROADCAST_MAC, eth_src, sha=sha, spa=spa, tpa=tpa, **kw)

        w.send(request()[: 14 + 20] for _ in range(3))
        w.send(request(htype=6) for _ in range(2))
        w.send(request(ptype=0x86DD) for _ in range(2))
        w.send([request(hlen=8), request(plen=16), request(hlen=0), request(plen=6)])
        w.send([request(op=3), request(op=0)])
        w.ping()
        # Sender MAC other than the frame's source, or not a unicast MAC.
        w.send(request(eth_src=OTHER_MAC) for _ in range(2))
        w.send([request(sha="01:00:5e:00:00:01", eth_src=OTHER_MAC)])
        w.send([request(sha="00:00:00:00:00:00", eth_src="00:00:00:00:00:00")])
        # A martian sender address asking for us.
        w.send(request(spa=spa) for spa in ("127.0.0.1", "224.0.0.9", "0.1.2.3"))
        w.ping()
        # For other hosts, from off-link senders: not our business.
        w.send(request(spa="198.18.5.5", tpa="198.18.0.50") for _ in range(4))
        # For other hosts, from on-link senders: no entry made, no reply.
        w.send(
            request(spa=f"198.18.0.{60 + i}", sha=f"02:00:00:00:01:{i:02x}", tpa="198.18.0.50")
            for i in range(3)
        )
        # Someone claims our address: a conflict, not a new neighbour.
        w.send(request(spa=us, tpa="198.18.0.50") for _ in range(2))
        w.ping()
    check(
        srv,
        w,
        {
            "drop_arp_truncated": 3,
            "drop_arp_bad_htype": 2,
            "drop_arp_bad_ptype": 2,
            "drop_arp_bad_lengths": 4,
            "drop_arp_bad_op": 2,
            "drop_arp_bad_sender": 3,
            "drop_arp_bad_sha": 1,
            "drop_arp_bad_spa": 3,
            "drop_arp_off_link": 4,
            "arp_address_conflicts": 2,
            # Only the kernel's side of the TAP became a neighbour.
            "arp_entries": 1,
            "arp_table_full": 0,
        },
    )


def test_arp_flood_other_hosts_and_many_senders_table_bounded(topology: Topology):
    with serving(topology) as (srv, w):
        us = topology.ustack_addr
        n = 5000
        base_tpa = ip_int("198.19.0.0")
        off_link_spa = ip_int("198.18.1.0")
        # 5,000 requests for other hosts: half from off-link senders, half from on-link ones.
        w.send(
            arp_frame(
                BROADCAST_MAC,
                f"02:aa:00:00:{i >> 8:02x}:{i & 0xFF:02x}",
                sha=f"02:aa:00:00:{i >> 8:02x}:{i & 0xFF:02x}",
                spa=ip_str(off_link_spa + i) if i % 2 else f"198.18.0.{10 + i % 240}",
                tpa=ip_str(base_tpa + i),
            )
            for i in range(n)
        )
        w.ping()
        # 5,000 requests for us, each from a sender never seen before.
        senders = ip_int("198.18.100.0")
        w.send(
            arp_frame(
                BROADCAST_MAC,
                f"02:bb:00:00:{i >> 8:02x}:{i & 0xFF:02x}",
                sha=f"02:bb:00:00:{i >> 8:02x}:{i & 0xFF:02x}",
                spa=ip_str(senders + i),
                tpa=us,
            )
            for i in range(n)
        )
        w.ping()
    assert srv.counter("arp_entries") <= MAX_NEIGHBOURS, srv.output
    assert srv.counter("arp_out_replies") >= n, srv.output  # every request for us answered
    check(
        srv,
        w,
        {
            "drop_arp_off_link": n // 2,
            # The kernel's entry came first; the rest of the table went to the flood.
            "arp_entries": MAX_NEIGHBOURS,
            "arp_table_full": n - (MAX_NEIGHBOURS - 1),
            "arp_queued": 0,
        },
    )


# -- fragments ------------------------------------------------------------------------


def _with_ident(template: bytearray, ident: int) -> bytes:
    """The frame with its IPv4 identification set and the header checksum redone."""
    struct.pack_into("!HH", template, 14 + 4, ident, struct.unpack_from("!H", template, 14 + 6)[0])
    struct.pack_into("!H", template, 14 + 10, 0)
    struct.pack_into("!H", template, 14 + 10, checksum(bytes(template[14 : 14 + 20])))
    return bytes(template)


def test_fragment_flood_reassembly_table_and_memory_bounded(topology: Topology):
    with serving(topology) as (srv, w):
        ustack, client = topology.ustack_addr, topology.client_addr
        n = 20_000
        first = bytearray(
            w.ip(IP(src=client, dst=ustack, proto=17, flags="MF", frag=0) / Raw(b"\xee" * 16))
        )
        w.send(_with_ident(first, ident) for ident in range(n))
        w.ping()
        # Fill the datagrams that were taken with all the data they may hold, in
        # 1480-byte pieces, never the last one: each stays incomplete and keeps its bytes.
        piece = b"\xdd" * 1480
        pieces_per_datagram = (65535 - 20 - 16) // 1480

        def fill() -> Iterator[bytes]:
            for k in range(pieces_per_datagram):
                off = 16 + k * 1480
                frame = bytearray(
                    w.ip(IP(src=client, dst=ustack, proto=17, flags="MF", frag=off // 8) / piece)
                )
                for ident in range(MAX_DATAGRAMS):
                    yield _with_ident(frame, ident)

        w.send(fill())
        w.ping()
    # The bounds, whatever the policy inside them.
    assert srv.counter("ipv4_reasm_pending") <= MAX_DATAGRAMS, srv.output
    assert srv.counter("ipv4_reasm_bytes") <= MAX_REASM_BYTES, srv.output
    # The policy: the first MAX_DATAGRAMS are kept (with all they carry), the rest refused.
    check(
        srv,
        w,
        {
            "ipv4_frag_in": n + MAX_DATAGRAMS * pieces_per_datagram,
            DROP_TABLE_FULL: n - MAX_DATAGRAMS,
            "ipv4_reasm_pending": MAX_DATAGRAMS,
            "ipv4_reasm_bytes": MAX_DATAGRAMS * (16 + pieces_per_datagram * 1480),
            REASM_OK: 0,
            DROP_OVERLAP: 0,
        },
    )


def _fragments(
    w: Wire, ident: int, pieces: list[tuple[int, bytes, bool]], proto: int = 17
) -> list[bytes]:
    """Frames for (byte offset, data, more fragments) pieces of one datagram."""
    return [
        w.ip(
            IP(
                src=w.topo.client_addr,
                dst=w.topo.ustack_addr,
                proto=proto,
                id=ident,
                flags="MF" if mf else 0,
                frag=off // 8,
            )
            / Raw(data)
        )
        for off, data, mf in pieces
    ]


def test_overlapping_fragments_not_delivered_and_counted(topology: Topology):
    with serving(topology) as (srv, w):

        def datagram(text: bytes) -> bytes:
            # Checksum 0 (none): whichever bytes won an overlap, the datagram would be
            # accepted and echoed, so only the overlap rule can keep it from the socket.
            return bytes(UDP(sport=w.port, dport=ECHO_PORT, chksum=0, len=8 + len(text)) / text)

        # Control: the same kind of datagram in three clean fragments, last first.
        d = datagram(b"C" * 32)
        w.send(_fragments(w, 100, [(32, d[32:], False), (16, d[16:32], True), (0, d[:16], True)]))
        # A: the last fragment starts inside the first, with other bytes there.
        a1, a2 = datagram(b"A" * 32), datagram(b"a" * 32)
        w.send(_fragments(w, 101, [(0, a1[:24], True), (16, a2[16:], False)]))
        # B (Teardrop's shape): a fragment wholly inside one held.
        b = datagram(b"B" * 32)
        w.send(_fragments(w, 102, [(8, b[8:16], True), (0, b[:32], True), (32, b[32:], False)]))
        # C: same offset, different bytes.
        c1, c2 = datagram(b"X" * 32), datagram(b"Y" * 32)
        w.send(_fragments(w, 103, [(0, c1[:16], True), (0, c2[:16], True), (16, c1[16:], False)]))
        w.ping()
        # An exact duplicate is harmless: ignored, and the datagram completes.
        e = datagram(b"E" * 32)
        w.send(_fragments(w, 104, [(0, e[:16], True), (0, e[:16], True), (16, e[16:], False)]))
        w.ping()
    check(
        srv,
        w,
        {
            DROP_OVERLAP: 3,
            DUPLICATE: 1,
            REASM_OK: 2,
            # B's and C's last fragments arrived after the discard and wait for a start.
            "ipv4_reasm_pending": 2,
            "udp_in_datagrams": w.syncs + 2,
        },
    )
    assert w.echoes == [b"C" * 32, b"E" * 32]


def test_fragments_malformed_dropped_and_counted(topology: Topology):
    # The parser and the reassembler count these under the same names.
    assert (Drop.IPV4_FRAG_BAD_LENGTH, Drop.IPV4_FRAG_OVERSIZE) == (DROP_BAD_LENGTH, DROP_OVERSIZE)
    with serving(topology) as (srv, w):
        data = b"\x11" * 64
        # Not the last fragment, length not a positive multiple of 8 (RFC 791 3.2).
        w.send(_fragments(w, 200, [(0, data[:12], True)]))
        w.send(_fragments(w, 201, [(0, b"", True)]))
        # Data beyond the largest datagram (Ping of Death).
        w.send(_fragments(w, 202, [(65512, data[:40], False)]))
        w.send(_fragments(w, 203, [(65528, data[:8], True)]))
        w.ping()
        # Inconsistent ends: a second last fragment that disagrees on the end, and a
        # last fragment that ends before data already held.
        w.send(_fragments(w, 204, [(16, data[:16], False), (16, data[:24], False)]))
        w.send(_fragments(w, 205, [(0, data[:16], True), (8, data[:0], False)]))
        w.ping()
    check(
        srv,
        w,
        {
            # Two caught by the IPv4 parser, two by the reassembler: one counter.
            DROP_BAD_LENGTH: 4,
            DROP_OVERSIZE: 2,
            REASM_OK: 0,
            "ipv4_reasm_pending": 0,
            "ipv4_reasm_bytes": 0,
        },
    )


def test_fragments_with_options_reassembling_beyond_65535_dropped(topology: Topology):
    """Fragment 0 carries 40 bytes of options; the payload fills 65515: a 65575-byte datagram."""
    with serving(topology) as (srv, w):
        body = bytes(ICMP(type=8, id=0x4855, seq=9) / (b"\x42" * (65535 - 20 - 8)))
        frames = []
        # 1440 bytes a piece: with 60 bytes of header, fragment 0 still fits the 1500 MTU.
        for off in range(0, len(body), 1440):
            chunk = body[off : off + 1440]
            options = [IPOption(b"\x01" * 40)] if off == 0 else []
            frames.append(
                w.ip(
                    IP(
                        src=topology.client_addr,
                        dst=topology.ustack_addr,
                        proto=1,
                        id=300,
                        flags="MF" if off + len(chunk) < len(body) else 0,
                        frag=off // 8,
                        options=options,
                    )
                    / Raw(chunk)
                )
            )
        assert frames[0][14] == 0x4F  # IHL 15
        w.send(frames)
        w.ping()
    check(
        srv,
        w,
        {
            DROP_OVERSIZE: 1,
            REASM_OK: 0,
            "ipv4_reasm_pending": 0,
        },
    )


def test_hostile_mix_after_all_stack_still_serves_fragmented_echo(topology: Topology):
    """After a little of everything, a legitimate fragmented UDP echo still comes back whole."""
    with serving(topology) as (srv, w):
        rng = random.Random(2544)
        junk = [rng.randbytes(rng.randrange(0, 1500)) for _ in range(50)]
        w.send(w.eth(j) for j in junk)
        w.send(w.eth(j, ethertype=0x0806) for j in junk)
        w.ping()
        payload = rng.randbytes(4000)
        w.udp.sendto(payload, (topology.ustack_addr, ECHO_PORT))
        assert w.udp.recv(65535) == payload
        w.ping()
    check(srv, w, {REASM_OK: 1, "ipv4_reasm_pending": 0})
