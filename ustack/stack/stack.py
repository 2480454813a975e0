"""The Stack: one host on one link, from Ethernet frames to UDP sockets.

Theory of operation.  The driver (the Context) reads a burst from the
device and calls `process(n, now_us)`; each frame is parsed in place in the
device pool, validated layer by layer and either delivered (ARP to the
neighbour cache, ICMP echo answered, UDP queued on its socket, other
transports handed to a registered handler) or dropped and counted under a
named reason.  Replies are written straight into transmit slots and
queued on the device; the driver calls `flush()` once per burst so that
every reply of the burst leaves in one tx_burst.  `on_timer(now_us)` runs
the neighbour cache and reassembly timers; `next_deadline_us()` says when
it next has work.

RFCs: 826 (ARP), 791 and 1122 (IPv4 host), 815 (reassembly), 792 and 1812
4.3.2 (ICMP errors and their rate limit), 768 (UDP), 1191 and 5927 (path
MTU discovery: an ICMP "fragmentation needed" that quotes one of our TCP
segments goes to the TCP layer, which checks it further).
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Callable

from ustack.dev.base import HEADROOM, VNET_F_DATA_VALID, VNET_F_NEEDS_CSUM, FrameDevice
from ustack.errors import PoolExhaustedError
from ustack.ratelimit import TokenBucket
from ustack.stack.interface import Interface
from ustack.stack.neighbour import NeighbourCache
from ustack.stack.reassembly import Reassembler
from ustack.stack.tcp import TcpLayer
from ustack.stack.udp import UdpSocket, UdpTable
from ustack.tcp.tcb import TcpConfig
from ustack.wire.arp import ARP_LEN, OP_REPLY, OP_REQUEST, emit_arp, parse_arp
from ustack.wire.drop import Drop
from ustack.wire.ethernet import (
    BROADCAST_MAC,
    ETH_HLEN,
    ETHERTYPE_ARP,
    ETHERTYPE_IPV4,
    emit_ethernet,
    parse_ethernet,
)
from ustack.wire.icmp import (
    DEST_UNREACH,
    ECHO_REPLY,
    ECHO_REQUEST,
    ICMP_HLEN,
    UNREACH_FRAG_NEEDED,
    UNREACH_PORT,
    UNREACH_PROTOCOL,
    emit_dest_unreachable,
    emit_icmp,
    parse_icmp,
    parse_quoted_ipv4,
)
from ustack.wire.ipv4 import (
    IPV4_HLEN,
    PROTO_ICMP,
    PROTO_TCP,
    PROTO_UDP,
    IPv4Header,
    emit_ipv4,
    parse_ipv4,
)
from ustack.wire.udp import UDP_HLEN, emit_udp, parse_udp

# (header, buffer, payload offset, payload length, now_us)
TransportHandler = Callable[[IPv4Header, "bytes | bytearray | memoryview", int, int, int], None]

_ETH_MIN_FRAME = 60  # without FCS (IEEE 802.3); the TAP does not pad for us
_L3 = ETH_HLEN
_L4 = ETH_HLEN + IPV4_HLEN
_CSUM_VOUCHED = VNET_F_DATA_VALID | VNET_F_NEEDS_CSUM
# Where a datagram's IP header is, for quoting it in an ICMP error.
_REASSEMBLED = -1  # not in the buffer: rebuild it
_NO_ERROR = -2  # the datagram must not cause an ICMP error at all
_QUOTED_TCP = struct.Struct("!HHI")  # source port, destination port, sequence number


def _martian_source(src: int) -> bool:
    """Sources a host must not accept (RFC 1122 3.2.1.3, RFC 1812 5.3.7)."""
    first = src >> 24
    return src == 0 or src == 0xFFFFFFFF or first == 127 or first >= 224


class Stack:
    """Ethernet/ARP/IPv4/ICMP/UDP for one interface over one frame device."""

    def __init__(
        self,
        device: FrameDevice,
        iface: Interface,
        *,
        neighbours: NeighbourCache[tuple[int, int]] | None = None,
        reassembler: Reassembler | None = None,
        icmp_limit: TokenBucket | None = None,
        tcp_config: TcpConfig | None = None,
        learn_from_ip: bool = False,
    ) -> None:
        if iface.mtu + ETH_HLEN > device.tx_capacity:
            raise ValueError(
                f"MTU {iface.mtu} does not fit the device's {device.tx_capacity}-byte slots; "
                "open the device with a larger slot_size or lower the MTU"
            )
        self.dev = device
        self.iface = iface
        # Workers sharing one address on a multi-queue TAP (see NeighbourCache.confirm).
        self.learn_from_ip = learn_from_ip
        # A neighbour queue may hold at most a quarter of the transmit slots,
        # so resolution never starves the rest of the stack of buffers.
        self.neighbours: NeighbourCache[tuple[int, int]] = neighbours or NeighbourCache(
            max_queued_total=max(1, device.tx_slots // 4)
        )
        self.reassembler = reassembler or Reassembler()
        self.icmp_limit = icmp_limit or TokenBucket()
        self.udp = UdpTable()
        self.counters: Counter[str] = Counter()
        self.tcp = TcpLayer(self, tcp_config)
        self.transports: dict[int, TransportHandler] = {}
        self.ready: list[UdpSocket] = []
        self._ident = 0
        self._now_us = 0

    # -- driving ------------------------------------------------------------

    def start(self, now_us: int) -> None:
        """Announce ourselves: a gratuitous ARP request (RFC 5227 2.3)."""
        self._now_us = now_us
        self._send_arp(OP_REQUEST, BROADCAST_MAC, bytes(6), self.iface.addr)
        self.counters["arp_out_gratuitous"] += 1

    def process(self, n: int, now_us: int) -> None:
        """Handle the n frames of the device's last rx burst."""
        self._now_us = now_us
        dev = self.dev
        pool = dev.pool
        lens = dev.rx_len
        size = dev.slot_size
        vnet = dev.vnet_hdr_len
        for i in range(n):
            off = i * size + HEADROOM
            vouched = bool(pool[off - vnet] & _CSUM_VOUCHED) if vnet else False
            try:
                self._input_frame(pool, off, lens[i], vouched)
            except Exception:
                self.counters["drop_internal_error"] += 1

    @property
    def now_us(self) -> int:
        """The clock as of the last burst, timer run or flush."""
        return self._now_us

    def on_timer(self, now_us: int) -> None:
        self._now_us = now_us
        self._poll_neighbours()
        self.reassembler.expire(now_us)
        self.tcp.on_timer(now_us)

    def _poll_neighbours(self) -> None:
        """Send due ARP requests; free the slots of packets whose resolution failed."""
        neighbours = self.neighbours
        ips, failed = neighbours.poll(self._now_us)
        for ip in ips:
            # Re-validating a known neighbour is unicast (RFC 1122 2.3.2.1).
            known = neighbours.request_target(ip)
            self._send_arp(OP_REQUEST, known or BROADCAST_MAC, bytes(6), ip)
        for slot, _length in failed:
            self.dev.tx_free(slot)

    def next_deadline_us(self) -> int | None:
        t: int | None = None
        for d in (
            self.neighbours.next_deadline_us(),
            self.reassembler.next_deadline_us(),
            self.tcp.next_deadline_us(),
        ):
            if d is not None and (t is None or d < t):
                t = d
        return t

    def flush(self, now_us: int | None = None) -> int:
        """Emit what TCP owes, then write every frame queued during this burst."""
        if now_us is not None:
            self._now_us = now_us
        self.tcp.output(self._now_us)
        return self.dev.tx_burst()

    # -- sockets --------------------------------------------------------------

    def udp_socket(self) -> UdpSocket:
        return UdpSocket(self)

    def udp_bind(self, sock: UdpSocket, port: int) -> int:
        return self.udp.bind(sock, port)

    def udp_unbind(self, port: int) -> None:
        self.udp.unbind(port)

    def stats(self) -> dict[str, int]:
        """All counters of the stack, its tables and its device, by name."""
        out: dict[str, int] = {f"dev_{k}": v for k, v in self.dev.stats().items()}
        out.update(self.counters)
        for part in (self.neighbours.counters, self.reassembler.counters):
            for k, v in part.items():
                out[k] = out.get(k, 0) + v
        out["arp_entries"] = len(self.neighbours)
        out["arp_queued"] = self.neighbours.queued_total
        out["ipv4_reasm_pending"] = len(self.reassembler)
        out["ipv4_reasm_bytes"] = self.reassembler.bytes_held
        out["udp_sockets"] = len(self.udp.ports)
        out.update(self.tcp.stats())
        return out

    # -- input -----------------------------------------------------------------

    def _input_frame(self, buf: memoryview, off: int, length: int, vouched: bool) -> None:
        c = self.counters
        c["eth_in_frames"] += 1
        eth = parse_ethernet(buf, off, length)
        if isinstance(eth, Drop):
            c[eth] += 1
            return
        dst = eth.dst
        broadcast = dst == BROADCAST_MAC
        if not broadcast and dst != self.iface.mac:
            c["drop_eth_not_for_us"] += 1
            return
        if eth.src[0] & 1:
            c["drop_eth_bad_source"] += 1
            return
        if eth.ethertype == ETHERTYPE_IPV4:
            self._input_ipv4(buf, off + ETH_HLEN, length - ETH_HLEN, vouched, broadcast, eth.src)
        elif eth.ethertype == ETHERTYPE_ARP:
            self._input_arp(buf, off + ETH_HLEN, length - ETH_HLEN, eth.src)
        else:
            c["drop_eth_unknown_type"] += 1

    def _input_arp(self, buf: memoryview, off: int, length: int, eth_src: bytes) -> None:
        c = self.counters
        arp = parse_arp(buf, off, length)
        if isinstance(arp, Drop):
            c[arp] += 1
            return
        c["arp_in_requests" if arp.op == OP_REQUEST else "arp_in_replies"] += 1
        if arp.sha[0] & 1 or arp.sha != eth_src:
            c["drop_arp_bad_sender"] += 1
            return
        our = self.iface.addr
        if arp.spa == our:
            # Someone else claims our address (RFC 5227 2.4): count, never learn.
            c["arp_address_conflicts"] += 1
            return
        if arp.tpa != our and not self.iface.on_link(arp.spa):
            c["drop_arp_off_link"] += 1
            return
        reply, released = self.neighbours.on_arp(
            arp.op, arp.sha, arp.spa, arp.tpa, our, self._now_us
        )
        if reply:
            self._send_arp(OP_REPLY, arp.sha, arp.sha, arp.spa)
        if released:
            self._release(released)

    def _release(self, released: list[tuple[bytes, tuple[int, int]]]) -> None:
        """Send the frames that waited for a neighbour's MAC."""
        dev = self.dev
        pool = dev.pool
        mac = self.iface.mac
        for dst_mac, (slot, frame_len) in released:
            emit_ethernet(pool, dev.tx_offset(slot), dst_mac, mac, ETHERTYPE_IPV4)
            dev.tx_submit(slot, frame_len)

    def _input_ipv4(
        self,
        buf: memoryview,
        off: int,
        length: int,
        vouched: bool,
        link_broadcast: bool,
        eth_src: bytes,
    ) -> None:
        c = self.counters
        c["ipv4_in_receives"] += 1
        h = parse_ipv4(buf, off, length, not vouched)
        if isinstance(h, Drop):
            c[h] += 1
            return
        if not self.iface.is_local(h.dst):
            c["drop_ipv4_not_for_us"] += 1
            return
        if _martian_source(h.src) or h.src == self.iface.broadcast or h.src == self.iface.addr:
            c["drop_ipv4_martian_source"] += 1
            return
        if self.learn_from_ip and self.iface.on_link(h.src):
            released = self.neighbours.confirm(h.src, eth_src, self._now_us)
            if released:
                self._release(released)
        data: bytes | bytearray | memoryview = buf
        poff = off + h.header_len
        plen = h.total_len - h.header_len
        ip_off = off
        if h.mf or h.frag_off:
            c["ipv4_frag_in"] += 1
            key = (h.src, h.dst, h.proto, h.ident)
            whole = self.reassembler.on_fragment(
                key,
                h.frag_off,
                h.mf,
                buf[poff : poff + plen],
                self._now_us,
                header_len=h.header_len,
            )
            if whole is None or isinstance(whole, str):
                return  # waiting for more, or dropped (the reassembler counts it)
            data, poff, plen, ip_off = whole, 0, len(whole), _REASSEMBLED
            vouched = False
        c["ipv4_in_delivers"] += 1
        proto = h.proto
        # RFC 1122 3.2.2: no ICMP error about a link-layer broadcast.
        quote = _NO_ERROR if link_broadcast else ip_off
        if proto == PROTO_TCP:
            self.tcp.input(h, data, poff, plen, vouched, self._now_us)
        elif proto == PROTO_UDP:
            self._input_udp(h, data, poff, plen, quote, vouched)
        elif proto == PROTO_ICMP:
            self._input_icmp(h, data, poff, plen)
        else:
            handler = self.transports.get(proto)
            if handler is not None:
                handler(h, data, poff, plen, self._now_us)
            else:
                c["drop_ipv4_unknown_protocol"] += 1
                self._icmp_error(UNREACH_PROTOCOL, h, data, quote, poff, plen)

    def _input_udp(
        self,
        h: IPv4Header,
        buf: bytes | bytearray | memoryview,
        off: int,
        length: int,
        ip_off: int,
        vouched: bool,
    ) -> None:
        c = self.counters
        u = parse_udp(buf, off, length, h.src, h.dst, not vouched)
        if isinstance(u, Drop):
            c[u] += 1
            return
        sock = self.udp.ports.get(u.dport)
        if sock is None:
            c["udp_no_ports"] += 1
            if h.dst == self.iface.addr:
                self._icmp_error(UNREACH_PORT, h, buf, ip_off, off, length)
            return
        c["udp_in_datagrams"] += 1
        was_readable = sock.readable
        if not sock._deliver(bytes(buf[off + UDP_HLEN : off + u.length]), h.src, u.sport):
            c["drop_udp_rcvbuf"] += 1
            return
        if not was_readable:
            # A socket with a callback is its owner's business; the others
            # wait in `ready` for Context.poll() (which empties it).
            if sock.on_readable is not None:
                sock.on_readable(sock)
            else:
                self.ready.append(sock)

    def _input_icmp(
        self, h: IPv4Header, buf: bytes | bytearray | memoryview, off: int, length: int
    ) -> None:
        c = self.counters
        ic = parse_icmp(buf, off, length)
        if isinstance(ic, Drop):
            c[ic] += 1
            return
        c["icmp_in_msgs"] += 1
        if ic.type == ECHO_REQUEST:
            c["icmp_in_echos"] += 1
            if h.dst != self.iface.addr:
                # Linux's icmp_echo_ignore_broadcasts default (RFC 1122 3.2.2.6 allows it).
                c["icmp_in_echos_broadcast_ignored"] += 1
                return
            reply = bytearray(buf[off : off + length])
            emit_icmp(reply, 0, ECHO_REPLY, 0, ic.rest, length - ICMP_HLEN)
            if self.send_ip(h.src, PROTO_ICMP, reply, tos=h.tos):
                c["icmp_out_echo_reps"] += 1
        elif ic.type == ECHO_REPLY:
            c["icmp_in_echo_reps"] += 1
        elif ic.type == DEST_UNREACH:
            c["icmp_in_dest_unreachs"] += 1
            if ic.code == UNREACH_FRAG_NEEDED:
                self._input_frag_needed(h, ic.rest, buf, off + ICMP_HLEN, length - ICMP_HLEN)
        else:
            c["icmp_in_other"] += 1

    def _input_frag_needed(
        self, h: IPv4Header, rest: int, buf: bytes | bytearray | memoryview, off: int, length: int
    ) -> None:
        """ICMP fragmentation needed (RFC 1191 4); the quote is buf[off : off + length].

        Only TCP sends with DF, so only a quote of one of our TCP segments
        with at least its first 8 bytes (ports and sequence number, RFC 792)
        goes on, to the TCP layer; the next-hop MTU is the low 16 bits of
        the header's rest (RFC 1191 4).  Like Linux, an ICMP error sent to a
        broadcast address is not believed.
        """
        c = self.counters
        c["icmp_in_frag_needed"] += 1
        if h.dst != self.iface.addr:
            c["drop_icmp_frag_needed_not_unicast"] += 1
            return
        q = parse_quoted_ipv4(buf, off, length)
        if q is None or q.src != self.iface.addr or q.l4_len < _QUOTED_TCP.size:
            c["drop_icmp_bad_quote"] += 1
            return
        if q.proto != PROTO_TCP:
            c["drop_icmp_frag_needed_not_tcp"] += 1
            return
        sport, dport, seq = _QUOTED_TCP.unpack_from(buf, q.l4_off)
        self.tcp.on_frag_needed(q.dst, dport, sport, seq, rest & 0xFFFF, q.total_len, self._now_us)

    # -- output ----------------------------------------------------------------

    def _alloc(self) -> int | None:
        dev = self.dev
        try:
            return dev.tx_alloc()
        except PoolExhaustedError:
            if dev.tx_pending:
                dev.tx_burst()
                try:
                    return dev.tx_alloc()
                except PoolExhaustedError:
                    pass
        self.counters["drop_out_no_buffer"] += 1
        return None

    def _next_ident(self) -> int:
        self._ident = (self._ident + 1) & 0xFFFF
        return self._ident

    def send_udp(
        self, sport: int, dst: int, dport: int, data: bytes | bytearray | memoryview
    ) -> int:
        """Send one datagram from our address; returns len(data) (dropped frames are counted)."""
        n = len(data)
        if n > 0xFFFF - UDP_HLEN - IPV4_HLEN:
            raise OSError(90, f"datagram of {n} bytes is too long for UDP over IPv4")  # EMSGSIZE
        c = self.counters
        c["udp_out_datagrams"] += 1
        src = self.iface.addr
        if IPV4_HLEN + UDP_HLEN + n <= self.iface.mtu:
            slot = self._alloc()
            if slot is None:
                return n
            pool = self.dev.pool
            base = self.dev.tx_offset(slot)
            start = base + _L4 + UDP_HLEN
            pool[start : start + n] = data
            emit_udp(pool, base + _L4, sport=sport, dport=dport, payload_len=n, src=src, dst=dst)
            self._send_ip_slot(slot, base, dst, PROTO_UDP, UDP_HLEN + n, df=False)
            return n
        body = bytearray(UDP_HLEN + n)
        body[UDP_HLEN:] = data
        emit_udp(body, 0, sport=sport, dport=dport, payload_len=n, src=src, dst=dst)
        self.send_ip(dst, PROTO_UDP, body)
        return n

    def send_ip(
        self,
        dst: int,
        proto: int,
        body: bytes | bytearray | memoryview,
        *,
        df: bool = False,
        tos: int = 0,
    ) -> bool:
        """Send `body` (a complete transport message) to dst, fragmenting if needed."""
        mtu = self.iface.mtu
        n = len(body)
        if IPV4_HLEN + n <= mtu:
            slot = self._alloc()
            if slot is None:
                return False
            base = self.dev.tx_offset(slot)
            self.dev.pool[base + _L4 : base + _L4 + n] = body
            return self._send_ip_slot(slot, base, dst, proto, n, df=df, tos=tos)
        if df:
            self.counters["drop_ipv4_out_too_big"] += 1
            return False
        return self._send_fragments(dst, proto, body, tos)

    def _send_fragments(
        self, dst: int, proto: int, body: bytes | bytearray | memoryview, tos: int
    ) -> bool:
        # RFC 791 3.2: every fragment but the last carries a multiple of 8 bytes.
        chunk = (self.iface.mtu - IPV4_HLEN) & ~7
        ident = self._next_ident()
        total = len(body)
        nh = self._next_hop(dst)
        if nh is None:
            return False
        dev = self.dev
        pool = dev.pool
        c = self.counters
        c["ipv4_frag_oks"] += 1
        for start in range(0, total, chunk):
            part = min(chunk, total - start)
            slot = self._alloc()
            if slot is None:
                return False
            base = dev.tx_offset(slot)
            pool[base + _L4 : base + _L4 + part] = body[start : start + part]
            emit_ipv4(
                pool,
                base + _L3,
                src=self.iface.addr,
                dst=dst,
                proto=proto,
                payload_len=part,
                ident=ident,
                mf=start + part < total,
                frag_off=start,
                tos=tos,
            )
            c["ipv4_frag_creates"] += 1
            c["ipv4_out_requests"] += 1
            self._emit_frame(slot, base, dst, nh, _L4 + part)
        return True

    def _send_ip_slot(
        self, slot: int, base: int, dst: int, proto: int, l4_len: int, *, df: bool, tos: int = 0
    ) -> bool:
        """The transport message is at base+34; add IPv4 and Ethernet and queue it."""
        nh = self._next_hop(dst)
        if nh is None:
            self.dev.tx_free(slot)
            return False
        emit_ipv4(
            self.dev.pool,
            base + _L3,
            src=self.iface.addr,
            dst=dst,
            proto=proto,
            payload_len=l4_len,
            ident=self._next_ident(),
            df=df,
            tos=tos,
        )
        self.counters["ipv4_out_requests"] += 1
        return self._emit_frame(slot, base, dst, nh, _L4 + l4_len)

    def _next_hop(self, dst: int) -> int | None:
        nh = self.iface.next_hop(dst)
        if nh is None:
            self.counters["drop_ipv4_out_no_route"] += 1
        return nh

    def _emit_frame(self, slot: int, base: int, dst: int, nh: int, frame_len: int) -> bool:
        """Add the Ethernet header, or park the frame until ARP resolves nh."""
        iface = self.iface
        dev = self.dev
        if dst == iface.broadcast or dst == 0xFFFFFFFF:
            mac: bytes | None = BROADCAST_MAC
        else:
            mac = self.neighbours.lookup(nh, self._now_us)
        if mac is not None:
            emit_ethernet(dev.pool, base, mac, iface.mac, ETHERTYPE_IPV4)
            dev.tx_submit(slot, frame_len)
            return True
        accepted, evicted = self.neighbours.queue(nh, (slot, frame_len), self._now_us)
        for other, _ in evicted:
            dev.tx_free(other)
        if not accepted:
            dev.tx_free(slot)
            return False
        # The first request goes out now rather than at the next timer tick.
        self._poll_neighbours()
        return True

    def _send_arp(self, op: int, eth_dst: bytes, tha: bytes, tpa: int) -> None:
        slot = self._alloc()
        if slot is None:
            return
        dev = self.dev
        pool = dev.pool
        base = dev.tx_offset(slot)
        mac = self.iface.mac
        emit_ethernet(pool, base, eth_dst, mac, ETHERTYPE_ARP)
        emit_arp(pool, base + ETH_HLEN, op, mac, self.iface.addr, tha, tpa)
        end = base + ETH_HLEN + ARP_LEN
        pool[end : base + _ETH_MIN_FRAME] = bytes(_ETH_MIN_FRAME - ETH_HLEN - ARP_LEN)
        dev.tx_submit(slot, _ETH_MIN_FRAME)
        self.counters["arp_out_requests" if op == OP_REQUEST else "arp_out_replies"] += 1

    def _icmp_error(
        self,
        code: int,
        h: IPv4Header,
        buf: bytes | bytearray | memoryview,
        ip_off: int,
        poff: int,
        plen: int,
    ) -> None:
        """Destination unreachable about datagram h, unless RFC 1122 3.2.2 forbids it.

        ip_off is where h's header starts in buf, or _REASSEMBLED when buf
        holds only the reassembled payload, or _NO_ERROR to send nothing.
        """
        c = self.counters
        if ip_off == _NO_ERROR or h.dst != self.iface.addr:
            return
        if h.proto == PROTO_ICMP and plen >= 1 and buf[poff] not in (ECHO_REQUEST, 13, 15, 17):
            return  # never an error about an error
        if not self.icmp_limit.take(self._now_us):
            c["icmp_out_rate_limited"] += 1
            return
        if ip_off >= 0:
            original: bytes | bytearray | memoryview = buf[ip_off : poff + plen]
        else:
            # Reassembled: rebuild a plain header to quote in front of the data.
            head = bytearray(IPV4_HLEN)
            emit_ipv4(
                head,
                0,
                src=h.src,
                dst=h.dst,
                proto=h.proto,
                payload_len=plen,
                ident=h.ident,
                ttl=h.ttl,
                tos=h.tos,
            )
            original = bytes(head) + bytes(buf[poff : poff + min(plen, 548)])
        slot = self._alloc()
        if slot is None:
            return
        base = self.dev.tx_offset(slot)
        n = emit_dest_unreachable(self.dev.pool, base + _L4, code, original)
        if self._send_ip_slot(slot, base, h.src, PROTO_ICMP, n, df=False):
            c["icmp_out_dest_unreachs"] += 1
