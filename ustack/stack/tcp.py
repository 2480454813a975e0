"""TCP in the Stack: the connection table, listeners, demultiplexing, output and timers.

Theory of operation.  The control blocks (`ustack.tcp.tcb`) and listeners
(`ustack.tcp.listener`) are sans-IO; this module is their I/O.  Every
segment the Stack receives for our address comes to `input`, which finds
its connection by 4-tuple (one dict lookup on an int key), else a
listener, else answers with a RST (RFC 9293 3.10.7.1).  A connection that
was given a segment, fired a timer or was used by the application is
marked dirty; `output`, run once per receive burst (ARCHITECTURE.md rule
3), first tells the application (`on_event`), so its reply joins the
burst, and then asks each dirty control block for its segments and writes
them into transmit slots: one ACK per connection per burst, data
piggybacked.  For in-order data that is a deliberate stretch ACK (one
cumulative ACK for the whole burst); a segment that wants an immediate
ACK of its own (out of order, filling a hole, unacceptable: RFC 5681
4.2, RFC 9293 3.10.7.4) still gets one, since the control block counts
them and its `dispatch` returns that many pure ACKs (see "Delayed ACK"
in `ustack.tcp.tcb`).

Timers cost nothing per idle connection: a heap holds at most one live
entry per connection, pushed only when a control block's next deadline
moves earlier; entries that went stale are skipped when they come up.

Path MTU discovery (RFC 1191).  Segments leave with DF set.  The Stack
hands an ICMP "fragmentation needed" that quotes one of our segments to
`on_frag_needed`, which finds the connection and checks that the quoted
sequence number is in flight, SND.UNA <= SEG.SEQ < SND.MAX (RFC 5927
4.1: a blind attacker must guess it), before the control block lowers
its MSS and resends (`Tcb.on_path_mtu`).  Anything else is ignored and
counted.

Offloads.  On a device with virtio-net headers (the Ring opened with
offloads), checksums are left to the device (NEEDS_CSUM) and a segment
may carry up to 64 KB, which the device cuts into MSS-sized segments
(TSO, gso_type TCPV4).  Without them, segments are MSS-sized and
checksummed here.

The application handles are `TcpConnection` (one connection) and
`TcpListener` (one listening port); the socket-like and asyncio APIs wrap
them.  Their `on_event` callback runs from inside the Stack once per burst
in which the connection had input or timers; it must not raise and should
only note readiness (the API layers check what changed).
"""

from __future__ import annotations

import dataclasses
import errno
import heapq
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from ustack.dev.base import VNET_F_NEEDS_CSUM, VNET_GSO_NONE, VNET_GSO_TCPV4, VnetHeader
from ustack.tcp.isn import IsnGenerator
from ustack.tcp.listener import Listener, reset_for
from ustack.tcp.ports import EphemeralPorts
from ustack.tcp.seq import seq_ge, seq_lt
from ustack.tcp.syncookie import SynCookies
from ustack.tcp.tcb import OutSegment, State, Tcb, TcpConfig
from ustack.wire.drop import Drop
from ustack.wire.ethernet import ETH_HLEN
from ustack.wire.ipv4 import IPV4_HLEN, PROTO_TCP, IPv4Header
from ustack.wire.tcp import (
    ACK,
    RST,
    SYN,
    TCP_HLEN,
    TCP_HLEN_TS,
    TcpSegment,
    emit_tcp,
    emit_tcp_ts,
    options_len,
    parse_tcp,
)
from ustack.wire.types import Buffer, WritableBuffer

if TYPE_CHECKING:
    from ustack.stack.stack import Stack

__all__ = ["TcpConnection", "TcpLayer", "TcpListener"]

_L4: Final = ETH_HLEN + IPV4_HLEN
_TCP_CSUM_OFFSET: Final = 16
_TSO_MAX: Final = 65535 - IPV4_HLEN - 60  # largest TCP payload with the largest header
_SYN_RECEIVED: Final = State.SYN_RECEIVED
_TIME_WAIT: Final = State.TIME_WAIT
_CLOSED: Final = State.CLOSED
# A segment the device checksums but does not cut (not larger than the MSS).
_VNET_CSUM_ONLY: Final = VnetHeader(VNET_F_NEEDS_CSUM, VNET_GSO_NONE, 0, 0, _L4, _TCP_CSUM_OFFSET)


def _key(remote_ip: int, remote_port: int, local_port: int) -> int:
    return remote_ip << 32 | remote_port << 16 | local_port


EventCallback = Callable[["TcpConnection"], None]
ListenerCallback = Callable[["TcpListener"], None]


class TcpConnection:
    """One TCP connection as the application sees it (wraps a `Tcb`).

    Reads and writes go to the control block's buffers; whatever they
    make owed (data, an ACK, a window update, a FIN) leaves at the next
    flush of the Stack.  `state`, `error`, `readable_bytes`, `send_space`
    and `eof` are the control block's.
    """

    __slots__ = ("_dirty", "_layer", "_timer_at", "key", "listener", "on_event", "tcb", "user")

    def __init__(self, layer: TcpLayer, tcb: Tcb, key: int, listener: TcpListener | None) -> None:
        self._layer = layer
        self.tcb = tcb
        self.key = key
        self.listener = listener
        self.on_event: EventCallback | None = None
        self.user: object = None
        self._dirty = False
        self._timer_at: int | None = None

    # -- state ----------------------------------------------------------------

    @property
    def state(self) -> State:
        return self.tcb.state

    @property
    def error(self) -> int | None:
        return self.tcb.error

    @property
    def readable_bytes(self) -> int:
        return self.tcb.readable_bytes

    @property
    def send_space(self) -> int:
        return self.tcb.send_space

    @property
    def eof(self) -> bool:
        return self.tcb.eof

    @property
    def local(self) -> tuple[int, int]:
        return self.tcb.local

    @property
    def remote(self) -> tuple[int, int]:
        return self.tcb.remote

    def stats(self) -> dict[str, object]:
        return self.tcb.stats()

    # -- data -----------------------------------------------------------------

    def send(self, data: Buffer) -> int:
        """Queue what fits of `data` in the send buffer; returns the count (may be 0)."""
        n = self.tcb.send(data)
        if n:
            self._layer.touch(self)
        return n

    def recv(self, max_bytes: int) -> bytes:
        data = self.tcb.recv(max_bytes)
        if data:
            self._layer.touch(self)  # a window update may be owed
        return data

    def recv_into(self, buf: WritableBuffer) -> int:
        n = self.tcb.recv_into(buf)
        if n:
            self._layer.touch(self)
        return n

    def shutdown_write(self) -> None:
        self.tcb.shutdown_write()
        self._layer.touch(self)

    def close(self) -> None:
        """Close: FIN after queued data, or RST when unread data remains (RFC 2525 2.17)."""
        self.tcb.close()
        self._layer.touch(self)

    def abort(self) -> None:
        self.tcb.abort()
        self._layer.touch(self)

    def __repr__(self) -> str:
        return f"TcpConnection({self.tcb!r})"


class TcpListener:
    """A listening port as the application sees it: `accept()` established connections."""

    __slots__ = ("_layer", "core", "on_event", "port", "user")

    def __init__(self, layer: TcpLayer, port: int, core: Listener[TcpConnection]) -> None:
        self._layer = layer
        self.port = port
        self.core = core
        self.on_event: ListenerCallback | None = None
        self.user: object = None

    @property
    def ready(self) -> int:
        """Established connections waiting in the accept queue."""
        return len(self.core.accept_queue)

    @property
    def closed(self) -> bool:
        return self._layer.listeners.get(self.port) is not self

    def accept(self) -> TcpConnection | None:
        return self.core.accept()

    def close(self) -> None:
        """Stop listening; connections not yet accepted are reset (as Linux does)."""
        self._layer.unlisten(self)

    def __repr__(self) -> str:
        return f"TcpListener(port={self.port}, ready={self.ready}, pending={self.core.pending})"


class TcpLayer:
    """Connection table, listeners and segment I/O for one Stack."""

    def __init__(self, stack: Stack, config: TcpConfig | None = None) -> None:
        self.stack = stack
        dev = stack.dev
        # Virtio-net headers mean the device takes partial checksums and TSO.
        self.offload = dev.vnet_hdr_len > 0
        tso: int | None = None
        if self.offload:
            tso = min(_TSO_MAX, dev.tx_capacity - _L4 - 60)
            if tso <= stack.iface.mtu:
                tso = None
        base = config or TcpConfig()
        self.config = dataclasses.replace(
            base,
            mtu=stack.iface.mtu if base.mtu is None else base.mtu,
            tso_max_bytes=tso if base.tso_max_bytes is None else base.tso_max_bytes,
        )
        self.conns: dict[int, TcpConnection] = {}
        self.listeners: dict[int, TcpListener] = {}
        self.isn = IsnGenerator()
        self.ports = EphemeralPorts()
        self.cookies = SynCookies()
        self.counters = stack.counters
        self.retired: dict[str, int] = {}
        self._dirty: list[TcpConnection] = []
        self._timers: list[tuple[int, int, TcpConnection]] = []
        self._timer_seq = 0

    # -- application side ----------------------------------------------------

    def listen(
        self,
        port: int,
        *,
        backlog: int = 128,
        syn_backlog: int = 256,
        config: TcpConfig | None = None,
    ) -> TcpListener:
        if not 1 <= port <= 65535:
            raise ValueError(f"port must be 1..65535, got {port}")
        if port in self.listeners:
            raise OSError(errno.EADDRINUSE, f"{os.strerror(errno.EADDRINUSE)}: TCP port {port}")
        core: Listener[TcpConnection] = Listener(
            (self.stack.iface.addr, port),
            config or self.config,
            backlog=backlog,
            syn_backlog=syn_backlog,
            isn=self.isn,
            cookies=self.cookies,
        )
        listener = TcpListener(self, port, core)
        self.listeners[port] = listener
        return listener

    def unlisten(self, listener: TcpListener) -> None:
        if self.listeners.get(listener.port) is not listener:
            return
        del self.listeners[listener.port]
        core = listener.core
        while (conn := core.accept()) is not None:
            conn.abort()
        for conn in list(self.conns.values()):
            if conn.listener is listener:
                conn.listener = None
                conn.abort()
        retired = self.retired
        for k, v in core.counters.items():
            retired[k] = retired.get(k, 0) + v

    def connect(
        self,
        remote_ip: int,
        remote_port: int,
        *,
        local_port: int | None = None,
        config: TcpConfig | None = None,
        now_us: int | None = None,
    ) -> TcpConnection:
        """Active open: a connection in SYN-SENT whose SYN leaves at the next flush."""
        if not 1 <= remote_port <= 65535:
            raise ValueError(f"port must be 1..65535, got {remote_port}")
        local_ip = self.stack.iface.addr
        conns = self.conns
        if local_port is None:
            base = _key(remote_ip, remote_port, 0)
            local_port = self.ports.choose(
                local_ip,
                remote_ip,
                remote_port,
                lambda p: (base | p) in conns or p in self.listeners,
            )
        elif _key(remote_ip, remote_port, local_port) in conns:
            raise OSError(
                errno.EADDRINUSE,
                f"{os.strerror(errno.EADDRINUSE)}: a connection from port {local_port} "
                "to that peer exists",
            )
        now = self.stack.now_us if now_us is None else now_us
        tcb = Tcb.connect(
            (local_ip, local_port),
            (remote_ip, remote_port),
            self.isn.isn(local_ip, local_port, remote_ip, remote_port, now),
            now,
            config or self.config,
            ts_offset=self.isn.ts_offset(local_ip, local_port, remote_ip, remote_port),
        )
        self.counters["tcp_active_opens"] += 1
        conn = self._insert(tcb, None)
        if self.stack.learn_from_ip:
            self._claim_flow(conn)
        self.touch(conn)
        return conn

    def _claim_flow(self, conn: TcpConnection) -> None:
        """Make the kernel steer the replies of a new active open to this Context's queue.

        On a TAP shared by several Contexts (threads or workers: the Stack's
        `learn_from_ip`), the kernel sends a flow's packets to the queue that
        last transmitted on it, but it records that only after handling the
        frame, and it answers a SYN at once: the SYN-ACK would go wherever
        the flow hash points, possibly to another Context, whose RST would
        both kill the handshake and claim the flow.  A RST for the not yet
        opened connection, sent just before the SYN, claims the flow first:
        the kernel drops a RST for which it has no socket without answering
        (RFC 9293 3.10.7.1), and one that meets a TIME-WAIT socket is out of
        its window (the sequence number is our ISS) and dropped too.
        """
        (_, lport), (rip, rport) = conn.local, conn.remote
        self.counters["tcp_out_flow_claims"] += 1
        self._emit(rip, lport, rport, OutSegment(conn.tcb.iss, 0, RST, 0), None)

    def touch(self, conn: TcpConnection) -> None:
        """Mark `conn` for output at the next flush."""
        if not conn._dirty:
            conn._dirty = True
            self._dirty.append(conn)

    # -- table -------------------------------------------------------------------

    def _insert(self, tcb: Tcb, listener: TcpListener | None) -> TcpConnection:
        rip, rport = tcb.remote
        key = _key(rip, rport, tcb.local[1])
        conn = TcpConnection(self, tcb, key, listener)
        self.conns[key] = conn
        return conn

    def _remove(self, conn: TcpConnection) -> None:
        if self.conns.get(conn.key) is not conn:
            # Removed already: a TIME-WAIT connection replaced by a new
            # incarnation is still on the dirty list; retire its counters once.
            return
        del self.conns[conn.key]
        retired = self.retired
        for k, v in conn.tcb.counters.items():
            retired[k] = retired.get(k, 0) + v
        if conn.listener is not None:
            # Still in the SYN queue: reset or timed out in SYN-RECEIVED.
            conn.listener.core.child_failed()
            conn.listener = None

    # -- input -------------------------------------------------------------------

    def input(
        self, h: IPv4Header, buf: Buffer, off: int, length: int, vouched: bool, now_us: int
    ) -> None:
        c = self.counters
        seg = parse_tcp(buf, off, length, h.src, h.dst, not vouched)
        if isinstance(seg, Drop):
            c[seg] += 1
            return
        c["tcp_in_segs"] += 1
        if h.dst != self.stack.iface.addr:
            c["drop_tcp_not_unicast"] += 1  # RFC 1122 4.2.3.10
            return
        payload = buf[off + seg.header_len : off + length]
        conn = self.conns.get(h.src << 32 | seg.sport << 16 | seg.dport)
        if conn is not None:
            tcb = conn.tcb
            state = tcb.state
            if state is _TIME_WAIT and seg.flags & SYN:
                iss = tcb.time_wait_reopen(seg)
                if iss is not None:
                    # RFC 6191: a new incarnation replaces the TIME-WAIT one.
                    c["tcp_time_wait_reused"] += 1
                    tcb.abort()
                    self._remove(conn)
                    self._to_listener(h, seg, payload, now_us, iss)
                    return
            elif (
                state is _SYN_RECEIVED
                and conn.listener is not None
                and conn.listener.core.accept_full
                and not seg.flags & (SYN | RST)
            ):
                # Leave the handshake unfinished: the peer retransmits (Linux).
                # Counted with the listener's own overflows: Stack.stats() takes
                # a listener's counter over a Stack counter of the same name.
                lc = conn.listener.core.counters
                lc["tcp_listen_overflows"] = lc.get("tcp_listen_overflows", 0) + 1
                return
            tcb.on_segment(seg, payload, now_us)
            if conn.listener is not None and tcb.state is not _SYN_RECEIVED:
                self._child_settled(conn)
            self.touch(conn)
            return
        self._to_listener(h, seg, payload, now_us, None)

    def _to_listener(
        self, h: IPv4Header, seg: TcpSegment, payload: Buffer, now_us: int, iss: int | None
    ) -> None:
        c = self.counters
        listener = self.listeners.get(seg.dport)
        remote = (h.src, seg.sport)
        if listener is None:
            c["tcp_no_port"] += 1
            self._reset(h, seg, payload)
            return
        core = listener.core
        flags = seg.flags
        if flags & RST:
            c["tcp_listen_rst_ignored"] += 1
            return
        if flags & SYN:
            if flags & ACK:  # SYN-ACK to a listener: RST (RFC 9293 3.10.7.2)
                self._reset(h, seg, payload)
                return
            out = core.on_syn(remote, seg, now_us, iss=iss)
            if out is None:
                return
            if isinstance(out, Tcb):
                conn = self._insert(out, listener)
                self.touch(conn)
            else:
                self._emit(h.src, seg.dport, seg.sport, out, None)
            return
        tcb = core.on_ack(remote, seg, now_us)
        if tcb is None:
            if not core.accept_full:
                self._reset(h, seg, payload)
            return
        conn = self._insert(tcb, listener)
        tcb.on_segment(seg, payload, now_us)
        if tcb.state is _SYN_RECEIVED:
            # The cookie was good but the ACK did not complete the handshake.
            conn.listener = None  # it never took a place in the SYN queue
            tcb.abort()
        else:
            self._child_settled(conn, from_syn_queue=False)
        self.touch(conn)

    def _child_settled(self, conn: TcpConnection, *, from_syn_queue: bool = True) -> None:
        """A child left SYN-RECEIVED: into the accept queue, or out of the SYN queue.

        `conn.listener` is set only while the child is in the SYN queue.
        """
        listener = conn.listener
        assert listener is not None
        conn.listener = None
        if conn.tcb.state is _CLOSED:
            if from_syn_queue:
                listener.core.child_failed()
            return
        listener.core.child_established(conn, from_syn_queue=from_syn_queue)
        if listener.on_event is not None:
            listener.on_event(listener)

    def _reset(self, h: IPv4Header, seg: TcpSegment, payload: Buffer) -> None:
        if seg.flags & RST:
            return
        seq, ack, flags = reset_for(seg, payload)
        self.counters["tcp_out_rsts"] += 1
        self._emit(h.src, seg.dport, seg.sport, OutSegment(seq, ack, flags, 0), None)

    def on_frag_needed(
        self,
        remote_ip: int,
        remote_port: int,
        local_port: int,
        seq: int,
        mtu: int,
        datagram_len: int,
        now_us: int,
    ) -> None:
        """ICMP fragmentation needed (RFC 1191) quoting our segment `seq` to remote_ip:remote_port.

        `mtu` is the next-hop MTU (0 from an old router), `datagram_len` the
        quoted datagram's total length.  The ICMP is believed only for a
        connection that exists and a sequence number in flight (RFC 5927
        4.1, as Linux's tcp_v4_err does); then the control block decides.
        """
        c = self.counters
        conn = self.conns.get(_key(remote_ip, remote_port, local_port))
        if conn is None:
            c["drop_icmp_frag_needed_no_conn"] += 1
            return
        tcb = conn.tcb
        if not (seq_ge(seq, tcb.snd_una) and seq_lt(seq, tcb.snd_max)):
            c["drop_icmp_frag_needed_out_of_window"] += 1
            return
        if tcb.on_path_mtu(mtu, now_us, datagram_len=datagram_len):
            c["tcp_pmtu_updates"] += 1
            self.touch(conn)

    # -- output ------------------------------------------------------------------

    def output(self, now_us: int) -> None:
        """Tell the application, then transmit what every dirty connection owes."""
        dirty = self._dirty
        if not dirty:
            return
        for conn in dirty:
            cb = conn.on_event
            if cb is not None:
                cb(conn)
        # The callbacks may have dirtied more connections: the list grows in place.
        i = 0
        while i < len(dirty):
            conn = dirty[i]
            i += 1
            conn._dirty = False
            tcb = conn.tcb
            # Once per connection per burst (ARCHITECTURE.md rule 3): in-order
            # data gets one cumulative, deliberately stretched ACK; segments
            # that asked for an ACK of their own come back as that many pure
            # ACKs (the control block's `_owe_ack`).
            segs = tcb.dispatch(now_us)
            if segs:
                rip, rport = tcb.remote
                lport = tcb.local[1]
                for s in segs:
                    self._emit(rip, lport, rport, s, tcb)
            if tcb.state is _CLOSED:
                self._remove(conn)
                continue
            d = tcb.poll_at()
            if d is not None:
                at = conn._timer_at
                if at is None or d < at:
                    conn._timer_at = d
                    self._timer_seq += 1
                    heapq.heappush(self._timers, (d, self._timer_seq, conn))
        dirty.clear()

    def _emit(self, rip: int, lport: int, rport: int, s: OutSegment, tcb: Tcb | None) -> None:
        stack = self.stack
        slot = stack._alloc()
        if slot is None:
            return  # counted; the control block's timers recover it
        dev = stack.dev
        pool = dev.pool
        base = dev.tx_offset(slot)
        l4 = base + _L4
        seq, ack, flags, window, payload, mss, wscale, sack_permitted, sack_blocks, ts = s
        n = len(payload)
        # The usual segment has no option but timestamps: emit_tcp_ts, without
        # sizing options or binding keywords (once per segment).
        common = mss is None and wscale is None and not sack_permitted and not sack_blocks
        if common:
            hlen = TCP_HLEN if ts is None else TCP_HLEN_TS
        else:
            hlen = TCP_HLEN + options_len(
                mss=mss,
                wscale=wscale,
                sack_permitted=sack_permitted,
                sack_blocks=sack_blocks,
                ts=ts,
            )
        if n:
            start = l4 + hlen
            pool[start : start + n] = payload
        offload = self.offload
        if common:
            emit_tcp_ts(
                pool,
                l4,
                lport,
                rport,
                seq,
                ack,
                flags,
                window,
                stack.iface.addr,
                rip,
                n,
                ts,
                offload,
            )
        else:
            emit_tcp(
                pool,
                l4,
                sport=lport,
                dport=rport,
                seq=seq,
                ack=ack,
                flags=flags,
                window=window,
                src=stack.iface.addr,
                dst=rip,
                payload_len=n,
                mss=mss,
                wscale=wscale,
                sack_permitted=sack_permitted,
                sack_blocks=sack_blocks,
                ts=ts,
                offload_checksum=offload,
            )
        if offload:
            if tcb is not None and n > tcb.smss:
                vnet = VnetHeader(
                    VNET_F_NEEDS_CSUM,
                    VNET_GSO_TCPV4,
                    _L4 + hlen,
                    tcb.sack_mss(len(sack_blocks)),
                    _L4,
                    _TCP_CSUM_OFFSET,
                )
            else:
                vnet = _VNET_CSUM_ONLY
            dev.tx_set_vnet(slot, vnet)
        self.counters["tcp_out_segs"] += 1
        stack._send_ip_slot(slot, base, rip, PROTO_TCP, hlen + n, df=True)

    # -- timers ------------------------------------------------------------------

    def next_deadline_us(self) -> int | None:
        timers = self._timers
        return timers[0][0] if timers else None

    def on_timer(self, now_us: int) -> None:
        timers = self._timers
        while timers and timers[0][0] <= now_us:
            d, _, conn = heapq.heappop(timers)
            if conn._timer_at != d:
                continue  # superseded by an earlier deadline
            conn._timer_at = None
            tcb = conn.tcb
            real = tcb.poll_at()
            if real is None:
                continue
            if real <= now_us:
                tcb.on_timer(now_us)
                self.touch(conn)
            else:
                conn._timer_at = real
                self._timer_seq += 1
                heapq.heappush(timers, (real, self._timer_seq, conn))

    # -- statistics ----------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        out: dict[str, int] = dict(self.retired)
        states: dict[str, int] = {}
        for conn in self.conns.values():
            tcb = conn.tcb
            for k, v in tcb.counters.items():
                out[k] = out.get(k, 0) + v
            name = "tcp_conns_" + tcb.state.name.lower()
            states[name] = states.get(name, 0) + 1
        out.update(states)
        out["tcp_conns"] = len(self.conns)
        out["tcp_listeners"] = len(self.listeners)
        for listener in self.listeners.values():
            for k, v in listener.core.counters.items():
                out[k] = out.get(k, 0) + v
        return out
