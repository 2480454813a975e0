"""Nothing from the wire crashes the Stack: random and mutated frames through the input path.

A Stack over a MemoryRing (no TAP, no root) gets (a) random bytes, (b)
random bytes behind a valid Ethernet header addressed to it, and (c)
scapy-built ARP, ICMP, UDP frames and fragment trains with random IPv4
header fields and random mutations, at random times so that the neighbour
and reassembly timers fire too.  The driver is the one a Context runs:
rx_burst, process, on_timer, flush, with a UDP echo application on port 7
so that delivered datagrams also exercise the output path (fragmenting
replies included).

Properties: no exception leaves the input path, `drop_internal_error`
(the per-frame catch-all in Stack.process) stays 0, every frame the stack
reached is counted, the tables stay within their bounds, and every frame
the stack sends is well formed: Ethernet from our MAC, ARP with the
IPv4-over-Ethernet layout, IPv4 with a valid header checksum and a total
length that matches the frame, and ICMP and UDP checksums that verify
(over the reassembled datagram when the reply was fragmented).
"""

from __future__ import annotations

import inspect
import socket
import struct
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, UDP, fragment
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw
from scapy.utils import checksum

from ustack.dev.memring import MemoryRing
from ustack.stack.interface import Interface
from ustack.stack.neighbour import NeighbourCache
from ustack.stack.reassembly import Reassembler
from ustack.stack.stack import Stack
from ustack.wire.ethernet import mac_from_str

STACK_MAC = "02:00:00:00:00:02"
PEER_MAC = "02:00:00:00:00:01"
STACK_IP = "198.18.0.2"
PEER_IP = "198.18.0.1"
ECHO_PORT = 7
BROADCAST = "ff:ff:ff:ff:ff:ff"

FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _default(cls: type, name: str) -> int:
    value = inspect.signature(cls).parameters[name].default
    assert isinstance(value, int)
    return value


MAX_DATAGRAMS = _default(Reassembler, "max_datagrams")
MAX_REASM_BYTES = _default(Reassembler, "max_bytes")
MAX_NEIGHBOURS = _default(NeighbourCache, "max_entries")


class Harness:
    """A Stack on a MemoryRing, driven the way a Context drives it, with a UDP echo on port 7."""

    def __init__(self) -> None:
        self.ring = MemoryRing()
        self.stack = Stack(self.ring, Interface.from_config(f"{STACK_IP}/24", mac=STACK_MAC))
        self.sock = self.stack.udp_socket()
        self.sock.bind(("", ECHO_PORT))
        self.now_us = 1_000_000
        self.stack.start(self.now_us)
        self.stack.flush()
        # The peer is known, so replies to it leave at once instead of waiting for ARP.
        self.run(
            [
                bytes(
                    Ether(dst=BROADCAST, src=PEER_MAC)
                    / ARP(op=1, hwsrc=PEER_MAC, psrc=PEER_IP, pdst=STACK_IP)
                )
            ]
        )

    def run(self, frames: list[bytes], step_us: int = 0) -> None:
        for frame in frames:
            self.ring.inject(frame)
        while True:
            self.now_us += step_us
            n = self.ring.rx_burst(64)
            self.stack.process(n, self.now_us)
            self.echo()
            self.stack.on_timer(self.now_us)
            self.stack.flush()
            if not n:
                break

    def echo(self) -> None:
        ready, self.stack.ready = self.stack.ready, []
        for sock in ready:
            while sock.readable:
                data, (host, port) = sock.recvfrom(65535)
                # RFC 768: source port 0 means "no reply wanted"; sendto refuses it.
                if port:
                    sock.sendto(data, (host, port))

    def check(self) -> None:
        stats = self.stack.stats()
        internal = self.stack.counters["drop_internal_error"]
        assert internal == 0, {k: v for k, v in stats.items() if v}
        assert stats["eth_in_frames"] == stats["dev_rx_frames"]
        assert stats["ipv4_reasm_pending"] <= MAX_DATAGRAMS
        assert stats["ipv4_reasm_bytes"] <= MAX_REASM_BYTES
        assert stats["arp_entries"] <= MAX_NEIGHBOURS
        check_sent(self.ring.sent)


# -- well-formedness of what the stack sends ------------------------------------


def _pseudo(ip: bytes, proto: int, length: int) -> bytes:
    return ip[12:20] + struct.pack("!BBH", 0, proto, length)


def _check_l4(proto: int, ip_header: bytes, body: bytes) -> None:
    if proto == 1:
        assert len(body) >= 8
        assert checksum(body) == 0, f"bad ICMP checksum in {body[:16].hex()}"
    elif proto == 17:
        assert len(body) >= 8
        (ulen, csum) = struct.unpack_from("!HH", body, 4)
        assert ulen == len(body)
        assert csum != 0  # ustack always computes one
        assert checksum(_pseudo(ip_header, 17, len(body)) + body) == 0, "bad UDP checksum"
    else:
        raise AssertionError(f"the stack sent IPv4 protocol {proto}")


def check_sent(frames: list[bytes]) -> None:
    fragments: dict[int, list[tuple[int, bool, bytes, bytes]]] = {}
    for frame in frames:
        assert len(frame) >= 14
        eth = Ether(frame)
        assert eth.src == STACK_MAC
        assert not int(eth.dst.split(":")[0], 16) & 1 or eth.dst == BROADCAST
        if eth.type == 0x0806:
            assert len(frame) == 60  # 14 + 28, padded to the Ethernet minimum
            arp = eth[ARP]
            assert (arp.hwtype, arp.ptype, arp.hwlen, arp.plen) == (1, 0x0800, 6, 4)
            assert arp.op in (1, 2)
            assert (arp.hwsrc, arp.psrc) == (STACK_MAC, STACK_IP)
            continue
        assert eth.type == 0x0800, f"unexpected ethertype {eth.type:#x}"
        ip = frame[14:]
        assert len(ip) >= 20 and ip[0] == 0x45
        (total,) = struct.unpack_from("!H", ip, 2)
        assert total == len(ip)
        assert checksum(ip[:20]) == 0, "bad IPv4 header checksum"
        assert ip[12:16] == socket.inet_aton(STACK_IP)
        (ident, flags_frag) = struct.unpack_from("!HH", ip, 4)
        assert not flags_frag & 0x8000
        mf = bool(flags_frag & 0x2000)
        off = (flags_frag & 0x1FFF) * 8
        if mf or off:
            assert not mf or (total - 20) % 8 == 0
            fragments.setdefault(ident, []).append((off, mf, ip[:20], ip[20:]))
            continue
        _check_l4(ip[9], ip[:20], ip[20:])
    for ident, pieces in fragments.items():
        pieces.sort(key=lambda p: p[0])
        body = b""
        for off, _mf, _hdr, data in pieces:
            assert off == len(body), f"fragments of ident {ident} leave a hole or overlap"
            body += data
        assert not pieces[-1][1], f"fragments of ident {ident} have no last fragment"
        assert pieces[0][0] == 0
        header = pieces[0][2]
        _check_l4(header[9], header, body)


# -- inputs --------------------------------------------------------------------

time_step = st.one_of(st.just(0), st.integers(0, 2_000_000), st.integers(0, 90_000_000))
eth_dst = st.sampled_from([STACK_MAC, BROADCAST])
ethertype = st.sampled_from([0x0800, 0x0806])


@FUZZ
@given(frames=st.lists(st.binary(max_size=2100), min_size=1, max_size=8), step=time_step)
def test_fuzz_random_bytes_into_stack_never_raise(frames, step):
    h = Harness()
    h.run(frames, step)
    h.check()


@FUZZ
@given(
    bodies=st.lists(
        st.tuples(eth_dst, ethertype, st.binary(max_size=1600)), min_size=1, max_size=8
    ),
    step=time_step,
)
def test_fuzz_random_payload_behind_valid_ethernet_never_raise(bodies, step):
    h = Harness()
    frames = [
        mac_from_str(dst) + mac_from_str(PEER_MAC) + struct.pack("!H", etype) + body
        for dst, etype, body in bodies
    ]
    h.run(frames, step)
    h.check()


addresses = st.sampled_from(
    [
        STACK_IP,
        PEER_IP,
        "198.18.0.9",
        "198.18.0.255",
        "255.255.255.255",
        "198.18.0.77",
        "198.19.3.4",
        "0.0.0.0",
        "127.0.0.1",
        "224.0.0.1",
        "240.1.2.3",
    ]
)
src_addresses = st.one_of(st.just(PEER_IP), st.just(PEER_IP), addresses)
dst_addresses = st.one_of(st.just(STACK_IP), st.just(STACK_IP), addresses)


def rarely(draw: Any) -> bool:
    return bool(draw(st.integers(0, 9)) == 0)


@st.composite
def ip_headers(draw: Any) -> dict[str, Any]:
    """Keyword arguments for scapy's IP(): half the time clean, else some fields random."""
    fields: dict[str, Any] = {
        "src": draw(src_addresses),
        "dst": draw(dst_addresses),
        "id": draw(st.integers(0, 0xFFFF)),
    }
    if draw(st.booleans()):
        return fields
    maybe = {
        "ihl": st.integers(0, 15),
        "version": st.integers(0, 15),
        "tos": st.integers(0, 255),
        "len": st.integers(0, 0xFFFF),
        "flags": st.integers(0, 7),
        "frag": st.one_of(st.integers(0, 0x1FFF), st.integers(0, 8)),
        "ttl": st.integers(0, 255),
        "chksum": st.integers(0, 0xFFFF),
    }
    for name, strategy in maybe.items():
        if draw(st.integers(0, 3)) == 0:
            fields[name] = draw(strategy)
    return fields


@st.composite
def l4_payloads(draw: Any, min_size: int, max_size: int) -> Any:
    kind = draw(st.sampled_from(["echo", "udp-echo", "udp-closed", "icmp-other", "proto"]))
    data = draw(st.binary(min_size=min_size, max_size=max_size))
    if kind == "echo":
        return ICMP(type=8, id=draw(st.integers(0, 0xFFFF)), seq=draw(st.integers(0, 99))) / data
    if kind == "icmp-other":
        return ICMP(type=draw(st.integers(0, 255)), code=draw(st.integers(0, 255))) / data
    if kind == "proto":
        return Raw(data)
    sport = draw(st.integers(0, 0xFFFF))
    dport = ECHO_PORT if kind == "udp-echo" else draw(st.integers(1, 0xFFFF))
    return UDP(sport=sport, dport=dport) / data


@st.composite
def mutations(draw: Any, frame: bytes) -> bytes:
    """Half the time none; else flip bytes, truncate or extend."""
    if draw(st.booleans()):
        return frame
    out = bytearray(frame)
    for _ in range(draw(st.integers(0, 3))):
        if not out:
            break
        where = draw(st.integers(0, len(out) - 1))
        out[where] = draw(st.integers(0, 255))
    how = draw(st.sampled_from(["keep", "truncate", "extend"]))
    if how == "truncate":
        out = out[: draw(st.integers(0, len(out)))]
    elif how == "extend":
        out += draw(st.binary(min_size=1, max_size=64))
    return bytes(out)


@st.composite
def ipv4_frames(draw: Any) -> list[bytes]:
    """One datagram, whole or as a fragment train (reordered, duplicated, cut short)."""
    header = draw(ip_headers())
    eth = bytes(Ether(dst=draw(eth_dst), src=PEER_MAC, type=0x0800))
    if draw(st.booleans()):
        l4 = draw(l4_payloads(0, 1600))
        packet = IP(**header) / l4
        if isinstance(l4, Raw):
            packet.proto = draw(st.integers(0, 255))
        return [draw(mutations(eth + bytes(packet)))]
    l4 = draw(l4_payloads(16, 3000))
    whole = IP(**{k: v for k, v in header.items() if k in ("src", "dst", "id")}) / l4
    if isinstance(l4, Raw):
        whole.proto = draw(st.integers(0, 255))
    fragsize = 8 * draw(st.integers(1, 64))
    train: list[Any] = fragment(whole, fragsize=fragsize)  # type: ignore[no-untyped-call]
    pieces = [bytes(p) for p in train]
    pieces = pieces or [bytes(whole)]  # scapy gives nothing for an empty payload
    pieces = [pieces[i] for i in draw(st.permutations(range(len(pieces))))]
    if draw(st.booleans()):
        pieces.append(pieces[draw(st.integers(0, len(pieces) - 1))])
    if draw(st.booleans()):
        pieces = pieces[: draw(st.integers(0, len(pieces)))]
    frames = []
    for piece in pieces:
        raw = bytearray(piece)
        if rarely(draw):
            # Move the fragment by a few 8-byte units: overlaps and holes.
            (flags_frag,) = struct.unpack_from("!H", raw, 6)
            moved = (flags_frag & 0x1FFF) + draw(st.integers(-2, 2))
            struct.pack_into("!H", raw, 6, (flags_frag & 0xE000) | (moved & 0x1FFF))
            struct.pack_into("!H", raw, 10, 0)
            struct.pack_into("!H", raw, 10, checksum(bytes(raw[:20])))
        frames.append(draw(mutations(eth + bytes(raw))))
    return frames


@st.composite
def arp_frames(draw: Any) -> list[bytes]:
    sha = draw(st.sampled_from([PEER_MAC, "02:00:00:00:00:09", "00:00:00:00:00:00", BROADCAST]))
    odd = rarely(draw)
    pkt = Ether(dst=draw(eth_dst), src=draw(st.sampled_from([PEER_MAC, sha]))) / ARP(
        hwtype=draw(st.sampled_from([1, 6])) if odd else 1,
        ptype=draw(st.sampled_from([0x0800, 0x86DD])) if odd else 0x0800,
        hwlen=draw(st.sampled_from([6, 8, 0])) if odd else 6,
        plen=draw(st.sampled_from([4, 6, 0])) if odd else 4,
        op=draw(st.sampled_from([1, 2, 3, 0])) if odd else draw(st.sampled_from([1, 2])),
        hwsrc=sha,
        psrc=draw(src_addresses),
        pdst=draw(dst_addresses),
    )
    return [draw(mutations(bytes(pkt)))]


@FUZZ
@given(
    batches=st.lists(
        st.tuples(st.one_of(ipv4_frames(), arp_frames()), time_step), min_size=1, max_size=4
    )
)
def test_fuzz_mutated_scapy_frames_never_raise_and_replies_well_formed(batches):
    h = Harness()
    for frames, step in batches:
        h.run(frames, step)
    h.check()


@FUZZ
@given(
    size=st.integers(0, 6000),
    fragsize=st.integers(8, 185),
    data=st.data(),
)
def test_fuzz_fragmented_echo_reassembles_and_reply_well_formed(size, fragsize, data):
    """Unmutated fragment trains in any order: each one is echoed, in well-formed fragments."""
    h = Harness()
    whole = (
        IP(src=PEER_IP, dst=STACK_IP, id=4242) / UDP(sport=5000, dport=ECHO_PORT) / (b"\xa5" * size)
    )
    train: list[Any] = fragment(whole, fragsize=8 * fragsize)  # type: ignore[no-untyped-call]
    pieces = [bytes(p) for p in train]
    order = data.draw(st.permutations(range(len(pieces))), label="order")
    eth = bytes(Ether(dst=STACK_MAC, src=PEER_MAC, type=0x0800))
    h.run([eth + pieces[i] for i in order])
    h.check()
    stats = h.stack.stats()
    assert stats["udp_in_datagrams"] == 1
    assert stats["ipv4_reasm_pending"] == 0 and stats["ipv4_reasm_bytes"] == 0
    echoed = [f for f in h.ring.sent if Ether(f).type == 0x0800]
    payload = b"".join(f[14 + 20 :] for f in echoed)
    assert len(payload) == 8 + size
