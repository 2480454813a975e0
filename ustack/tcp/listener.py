"""A passive open: the SYN queue, the accept queue and SYN cookies of one listening port.

Sans-IO like the control block: the Stack hands a listener the SYNs and
handshake ACKs that match no connection, with the clock as `now_us`, and
gets back a new `Tcb` (which it enters in its connection table), a
segment to send without keeping state (a cookie SYN-ACK), or nothing.

Two queues, as in Linux (and RFC 4987 3.6):

- the SYN queue: children in SYN-RECEIVED, at most `syn_backlog`.  When
  it is full a SYN is answered with a SYN cookie (`syncookie`) instead of
  a new child, so a SYN flood costs no memory; the final ACK then
  rebuilds the connection from the cookie (`on_ack`).
- the accept queue: established children the application has not taken
  yet, at most `backlog`.  While it is full, new SYNs are dropped and a
  child's handshake-completing ACK is dropped before the child sees it
  (`accept_full`), so the peer retransmits: nothing the peer sent is lost
  and nothing is acknowledged that the application will not get.

The Stack reports children's fates with `child_established` (moves it to
the accept queue) and `child_failed` (leaves the SYN queue).
"""

from __future__ import annotations

from collections import deque
from typing import Final, Generic, TypeVar

from ustack.tcp.isn import IsnGenerator
from ustack.tcp.seq import seq_add
from ustack.tcp.syncookie import SynCookies, decode_tsecr, make_tsval
from ustack.tcp.tcb import Endpoint, OutSegment, Tcb, TcpConfig
from ustack.wire.tcp import ACK, FIN, RST, SYN, TcpSegment
from ustack.wire.types import Buffer

__all__ = ["Listener"]

COOKIE_WINDOW_US: Final = 128_000_000
"""Cookie ACKs are checked only this long after the last cookie was sent
(RFC 4987 3.6 advice: an idle listener accepts no guessed cookie)."""

_MASK32: Final = 0xFFFFFFFF

ChildT = TypeVar("ChildT")
"""What the accept queue holds: whatever the Stack wraps a child Tcb in."""


class Listener(Generic[ChildT]):
    """One listening endpoint; see the module docstring."""

    __slots__ = (
        "_cookies_until_us",
        "accept_queue",
        "backlog",
        "config",
        "cookies",
        "counters",
        "isn",
        "local",
        "pending",
        "syn_backlog",
    )

    def __init__(
        self,
        local: Endpoint,
        config: TcpConfig,
        *,
        backlog: int = 128,
        syn_backlog: int = 256,
        isn: IsnGenerator | None = None,
        cookies: SynCookies | None = None,
    ) -> None:
        if backlog < 1 or syn_backlog < 1:
            raise ValueError(
                f"backlog and syn_backlog must be at least 1, got {backlog}, {syn_backlog}"
            )
        self.local = local
        self.config = config
        self.backlog = backlog
        self.syn_backlog = syn_backlog
        self.isn = isn or IsnGenerator()
        self.cookies = cookies or SynCookies()
        self.pending = 0
        self.accept_queue: deque[ChildT] = deque()
        self.counters: dict[str, int] = {}
        self._cookies_until_us: int | None = None

    def _count(self, name: str) -> None:
        c = self.counters
        c[name] = c.get(name, 0) + 1

    @property
    def accept_full(self) -> bool:
        return len(self.accept_queue) >= self.backlog

    # -- input ------------------------------------------------------------------

    def on_syn(
        self, remote: Endpoint, syn: TcpSegment, now_us: int, *, iss: int | None = None
    ) -> Tcb | OutSegment | None:
        """A SYN for this port: a new child, a cookie SYN-ACK, or None (dropped).

        `iss` is given when a TIME-WAIT connection of the same 4-tuple is
        being reopened (RFC 6191) and must start above its old sequence space.
        """
        if self.accept_full:
            self._count("tcp_listen_overflows")
            return None
        lip, lport = self.local
        rip, rport = remote
        if self.pending >= self.syn_backlog:
            return self._cookie_syn_ack(remote, syn, now_us)
        if iss is None:
            iss = self.isn.isn(lip, lport, rip, rport, now_us)
        tcb = Tcb.accept_syn(
            self.local,
            remote,
            syn,
            iss,
            now_us,
            self.config,
            ts_offset=self.isn.ts_offset(lip, lport, rip, rport),
        )
        self.pending += 1
        self._count("tcp_passive_opens")
        return tcb

    def _cookie_syn_ack(self, remote: Endpoint, syn: TcpSegment, now_us: int) -> OutSegment:
        cfg = self.config
        lip, lport = self.local
        rip, rport = remote
        peer_mss = syn.mss if syn.mss is not None else 536
        cookie, _mss = self.cookies.make(lip, lport, rip, rport, syn.seq, peer_mss, now_us)
        # Window scale and SACK survive only inside the timestamp (see syncookie).
        ts: tuple[int, int] | None = None
        wscale: int | None = None
        sack = False
        if cfg.timestamps and syn.ts_val is not None:
            peer_ws = syn.wscale if cfg.window_scaling else None
            sack = cfg.sack and syn.sack_permitted
            offset = self.isn.ts_offset(lip, lport, rip, rport)
            now_ts = (now_us // 1000 + offset) & _MASK32
            ts = (make_tsval(now_ts, peer_ws, sack), syn.ts_val)
            if peer_ws is not None:
                wscale = cfg.rcv_wscale
        self._cookies_until_us = now_us + COOKIE_WINDOW_US
        self._count("tcp_syncookies_sent")
        return OutSegment(
            cookie,
            seq_add(syn.seq, 1),
            SYN | ACK,
            min(cfg.rcvbuf, 65535),
            mss=cfg.effective_mss,
            wscale=wscale,
            sack_permitted=sack,
            ts=ts,
        )

    def on_ack(self, remote: Endpoint, seg: TcpSegment, now_us: int) -> Tcb | None:
        """A segment with ACK and no SYN for an unknown 4-tuple: a cookie connection or None.

        None means the caller should answer with a RST (RFC 9293 3.10.7.2),
        except when `accept_full` (the peer retransmits).  The returned Tcb
        is in SYN-RECEIVED; the caller enters it in its table and gives it
        the same segment through `on_segment`, which completes the handshake
        (and takes any data the ACK carries).
        """
        if seg.flags & (SYN | RST | ACK) != ACK:
            return None
        until = self._cookies_until_us
        if until is None or now_us > until:
            return None
        if self.accept_full:
            self._count("tcp_listen_overflows")
            return None
        lip, lport = self.local
        rip, rport = remote
        peer_isn = seq_add(seg.seq, -1)
        iss = seq_add(seg.ack, -1)
        mss = self.cookies.check(lip, lport, rip, rport, peer_isn, iss, now_us)
        if mss is None:
            self._count("tcp_syncookies_failed")
            return None
        cfg = self.config
        peer_ws: int | None = None
        sack = False
        ts_val: int | None = None
        if cfg.timestamps and seg.ts_ecr is not None and seg.ts_val is not None:
            decoded = decode_tsecr(seg.ts_ecr)
            if decoded is None:
                self._count("tcp_syncookies_failed")
                return None
            peer_ws, sack = decoded
            ts_val = seg.ts_val
        self._count("tcp_syncookies_recv")
        self._count("tcp_passive_opens")
        syn = TcpSegment(
            rport, lport, peer_isn, 0, SYN, 0, 0, 20, mss, peer_ws, sack, (), ts_val, None
        )
        return Tcb.accept_cookie(
            self.local,
            remote,
            syn,
            iss,
            now_us,
            cfg,
            ts_offset=self.isn.ts_offset(lip, lport, rip, rport),
        )

    # -- children ---------------------------------------------------------------

    def child_established(self, child: ChildT, *, from_syn_queue: bool = True) -> None:
        """A child completed its handshake: it waits in the accept queue.

        `from_syn_queue` is False for a connection rebuilt from a cookie,
        which never took a place in the SYN queue.
        """
        if from_syn_queue:
            self.pending -= 1
        self.accept_queue.append(child)

    def child_failed(self) -> None:
        """A child in the SYN queue was reset or timed out."""
        self.pending -= 1
        self._count("tcp_embryonic_failed")

    def accept(self) -> ChildT | None:
        """The oldest established child, or None."""
        q = self.accept_queue
        return q.popleft() if q else None


def wants_reset(flags: int) -> bool:
    """RFC 9293 3.10.7.1: anything but a RST to a closed port is answered with a RST."""
    return not flags & RST


def reset_for(seg: TcpSegment, payload: Buffer) -> tuple[int, int, int]:
    """(seq, ack, flags) of the RST answering `seg` on a closed port (RFC 9293 3.10.7.1)."""
    if seg.flags & ACK:
        return seg.ack, 0, RST
    length = len(payload) + (1 if seg.flags & SYN else 0) + (1 if seg.flags & FIN else 0)
    return 0, seq_add(seg.seq, length), RST | ACK
