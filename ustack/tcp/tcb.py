"""The TCP control block: one connection's state machine (RFC 9293), sans-IO.

Owns everything about one connection from the first SYN to CLOSED: the
eleven states, the send and receive sequence spaces, the option
negotiation (MSS, window scale and timestamps of RFC 7323, SACK-permitted
of RFC 2018), retransmission with RFC 6298 timers, loss detection with RACK-TLP (RFC
8985) and SACK-based (RFC 6675) recovery, or NewReno (RFC 6582) recovery
without SACK, flow control with silly window
avoidance on both sides (RFC 9293 3.8.6), Nagle (RFC 896), delayed ACKs
(RFC 1122 4.2.3.2, RFC 5681 4.2), zero-window probing, keepalive, PAWS
(RFC 7323 5) and the blind-attack defences of RFC 5961.  It never reads a
clock, never sleeps and never touches a device: time is the `now_us`
argument (integer microseconds) and output is a list of `OutSegment`.

Theory of operation
-------------------

A `Tcb` is made by one of two constructors and then driven by four calls,
in the style of smoltcp's socket (`process`, `dispatch`, `poll_at`):

  Tcb.connect(local, remote, iss, now_us, config)     active open: SYN-SENT
  Tcb.accept_syn(local, remote, syn, iss, now_us, config)
                                                      passive open from a SYN
                                                      a listener accepted:
                                                      SYN-RECEIVED

  on_segment(seg, payload, now_us)   a segment for this 4-tuple arrived
  on_timer(now_us)                   the deadline from poll_at() passed
  dispatch(now_us) -> [OutSegment]   what to transmit now
  poll_at() -> int | None            the next deadline, or None

`on_segment` and `on_timer` only change state; `dispatch` turns state into
segments.  The Stack calls `dispatch` once per connection at the end of
every receive burst and after the application ran (ARCHITECTURE.md rule
3), so one segment carries the ACK for everything the burst brought, and
the reply data of the application rides on it.  A delayed or suppressed
ACK is therefore just a flag (`ack now`, or a deadline) that `dispatch`
reads; nothing is sent from inside `on_segment`.  The exception is a
segment that wants an immediate ACK of its own (out of order, filling a
hole, unacceptable, a challenge): those are counted, and `dispatch`
sends one pure ACK for each (see "Delayed ACK" below).

`local` and `remote` are (IPv4 address, port) pairs of ints.  `seg` is
the parsed header (`ustack.wire.tcp.TcpSegment`); `payload` is the data,
usually a memoryview into a receive slot that is only valid during the
call: data that is kept is copied into the receive buffer before
`on_segment` returns.  `OutSegment.payload` is the reverse: a view into
the send buffer, valid until the next call that changes this Tcb (the
Stack copies it into a transmit slot at once).  OutSegment holds no
ports or addresses: the Stack has them from `local` and `remote`.

The application side is `send`, `recv`, `recv_into`, `shutdown_write`,
`close` and `abort`, and the properties `state`, `readable_bytes`,
`send_space`, `eof` and `error`.  `recv` returns b"" both when nothing is
readable yet and at end of stream; `eof` tells them apart.  Data that
arrived before a reset stays readable (as on Linux); `error` says why the
connection ended.  Misuse (sending after shutdown_write, on a connection
that failed or was never open) raises an OSError subclass with the errno
a kernel socket gives.
A peer that breaks the protocol never raises: its segment is dropped and
counted in `counters` under a `TcpDrop` reason.  The Stack may free the
Tcb once `state` is CLOSED and `dispatch` has been called.

Sequence spaces
---------------

Fields carry RFC 9293's names and are compared only through `seq_*`
(modulo 2**32).  As in BSD, `snd_nxt` is the next sequence number to send
and `snd_max` the highest ever sent (+1): a retransmission timeout rewinds
`snd_nxt` to `snd_una` and sends again from there (go-back-N, paced by the
loss window of one segment that slow start reopens), while ACK
acceptability and pure ACKs use `snd_max`.  The send buffer holds bytes
from SND.UNA on (`sendbuf.SendBuffer`); the receive buffer holds readable
bytes and, beyond RCV.NXT, out-of-order data in place (`recvbuf`).

`rcv_adv` is the right edge of the window we last advertised; the window
never moves left except by less than one scale unit when the buffer is
nearly full (RFC 7323 2.4 rounding).  Receiver silly window avoidance
(RFC 9293 3.8.6.2.2): the right edge moves only by at least
min(buffer / 2, MSS), or not at all.

Input (on_segment), in RFC 9293 3.10.7 order
--------------------------------------------

Fast path (Linux's header prediction): in ESTABLISHED, an ACK without
SYN, FIN, RST, URG or SACK blocks at exactly RCV.NXT that passes PAWS,
acknowledges nothing or new data, carries data or new acknowledgment and
fits the window, while no recovery runs, no out-of-order data waits and
RACK-TLP has nothing to examine (nothing SACKed, no retransmission or loss
probe unacknowledged), passes every check below by construction;
`_fast_path` does only its ACK and data steps.  Everything else takes the
numbered steps.

SYN-SENT follows 3.10.7.3 (an ACK outside (ISS, SND.NXT] is answered with
<SEQ=SEG.ACK><CTL=RST>; a RST counts only with an acceptable ACK and gives
ECONNREFUSED; a SYN without ACK is a simultaneous open: SYN-RECEIVED and a
SYN-ACK).  The other states follow 3.10.7.4:

0. PAWS (RFC 7323 5.3): a segment whose TSval is older than TS.Recent is
   dropped and answered with an ACK, unless it is a RST or, as Linux's
   tcp_disordered_ack allows, a pure duplicate ACK reordered behind a
   newer one (see `_reordered_dupack`).  TS.Recent older
   than 24 days is no longer trusted (5.5).  A segment without timestamps
   on a connection that negotiated them is accepted, as Linux does (RFC
   7323 3.2 lets a receiver accept it).
1. Sequence check with the acceptability table of 3.10.7.4.  Like Linux,
   a bare FIN at RCV.NXT is accepted with a zero window, and a segment at
   RCV.NXT with a zero window is accepted for its ACK (the data is dropped,
   RFC 9293's "special allowance").  An unacceptable segment is answered
   with an ACK; as in Linux, ACKs answering segments without data are
   limited to one per `oow_ack_interval_us` so two confused peers cannot
   loop.  In TIME-WAIT a retransmitted FIN is ACKed and restarts 2 MSL.
2. RST (RFC 5961 3.2): exactly at RCV.NXT resets (ECONNRESET in the data
   states, nothing for a connection the application already closed);
   elsewhere in the window it draws a challenge ACK.  A RST in TIME-WAIT is
   ignored (RFC 1337's fix for TIME-WAIT assassination, Linux's
   tcp_rfc1337=1).
3. (security/compartment: not applicable)
4. SYN (RFC 5961 4.2): any SYN draws a challenge ACK, in or out of the
   window, and is dropped.  One exception: in SYN-RECEIVED, a SYN with the
   initial sequence number we already know is the peer retransmitting
   because our SYN-ACK was lost; the SYN-ACK is sent again.  (RFC 9293
   would return a passive SYN-RECEIVED connection to LISTEN on a SYN; the
   challenge ACK is the safer reading and what Linux does after the
   handshake.)
5. ACK.  Without ACK: drop.  SYN-RECEIVED becomes ESTABLISHED on an ACK in
   (SND.UNA, SND.MAX], and answers any other ACK with <SEQ=SEG.ACK><RST>.
   Elsewhere (RFC 5961 5.2) an ACK outside [SND.UNA - MAX.SND.WND,
   SND.MAX] drops the segment and draws a challenge ACK (RFC 9293 asks for
   an ACK when SEG.ACK > SND.NXT too; Linux stays silent there); an old ACK
   inside that range is a duplicate, ignored for acknowledgment but the
   segment's data is processed.  New data acknowledged moves SND.UNA, frees
   the send buffer, takes an RTT sample, feeds congestion control and
   restarts the retransmission timer (RFC 6298 5.3).  The send window is
   updated under the SND.WL1/SND.WL2 rule.  Our FIN acknowledged moves
   FIN-WAIT-1 to FIN-WAIT-2, CLOSING to TIME-WAIT and LAST-ACK to CLOSED.
   TS.Recent is updated here (RFC 7323 4.3), after the ACK was found valid.
6. URG: ignored; urgent data is delivered inline as ordinary data.
7. Text (ESTABLISHED, FIN-WAIT-1, FIN-WAIT-2): in-order data is copied to
   the receive buffer, trimmed to the window; data beyond RCV.NXT is
   copied to its place and remembered as a range (at most
   `max_ooo_ranges`).  After close() any new data resets the connection
   (RFC 2525 2.17, Linux).
8. FIN, once everything before it has arrived (a FIN that comes early is
   remembered and processed when the hole fills).

Output (dispatch)
-----------------

In order: RST replies and an abort's RST; the SYN or SYN-ACK (also its
retransmission); a loss probe; a fast retransmission of the first
unacknowledged segment (with SACK, of the first range marked lost);
new data and the FIN as windows allow; a zero-window or keepalive
probe; a pure ACK if one is owed, or one per segment that asked for an
immediate ACK of its own.  Every segment with ACK
carries the current RCV.NXT, window and, once negotiated, timestamps and
SACK blocks (most recent first, RFC 2018 4), so any of them settles an
owed ACK.

Sending data, per RFC 9293 3.7 and 3.8:
- usable = min(SND.UNA + SND.WND - SND.NXT, cwnd - pipe), where pipe is
  the bytes sent since SND.UNA less those the peer SACKed, or without
  SACK information less one segment per duplicate ACK (RFC 6582's
  accounting without window inflation: the first two duplicate ACKs each
  let one new segment out, as RFC 3042 limited transmit does).  In SACK
  recovery pipe is RFC 6675's (see below).
- A segment is at most `smss` bytes (the peer's MSS less our option
  bytes), or, with `tso_max_bytes` above the MSS, up to that many bytes
  rounded down to whole `smss` so the device cuts full segments.
- A segment shorter than `smss` goes only if (Nagle, RFC 9293 3.7.4) no
  data is unacknowledged, or `nodelay`, or a FIN is queued; and if more
  data is waiting than it carries, only if it is at least half the
  largest window the peer ever offered (sender SWS avoidance, 3.8.6.2.1).
  Otherwise the persist timer's expiry overrides (the "override timeout").
  Retransmissions are never held back by either rule (BSD does the same).
- The FIN rides on the last data segment, or goes alone, whatever the
  windows say (Linux).

Delayed ACK (Linux-like, documented here because behaviours differ):
in-order data is ACKed when two full segments' worth (2 * rcv_mss bytes)
has arrived since the last ACK, or after `delayed_ack_us`.  The ACK goes
at once for: data out of order or beyond the window (RFC 5681 4.2), data
that fills a hole (4.2), a duplicate or unacceptable segment, a FIN, and
a window update after the application read: when the window we could
offer is at least twice what is left of the advertised one, and that is
at most half the maximum window (Linux's __tcp_cleanup_rbuf).

Quick-ACK mode, as Linux's net/ipv4/tcp_input.c has it: in-order data is
ACKed at once, without waiting for the second full segment or the timer,
while quick ACKs are left and the connection is not interactive
(tcp_in_quickack_mode: icsk_ack.quick and not pingpong; `_quick`,
`_pingpong`).  The first data of a connection, and data after none came
for longer than the RTO (a sender restarting from its initial window),
allow up to `MAX_QUICKACKS` (16): as many as the window we last
advertised holds pairs of full segments, 2 if it holds none
(tcp_event_data_recv, tcp_incr_quickack), so slow start is not slowed by
delayed ACKs.  Data that starts before RCV.NXT (sent again: our ACK was
lost or late) does the same and ends interactive mode (tcp_send_dupack,
tcp_enter_quickack_mode).  Each segment that acknowledges in-order data
not acknowledged before, pure ACK or data, uses one quick ACK
(tcp_event_ack_sent, tcp_dec_quickack_mode).  The connection turns
interactive ("pingpong") when we send data within `delayed_ack_us` of the
peer's last data, a reply (tcp_event_data_sent, with that as the ATO);
then ACKs wait again, for the next reply to carry them, until the
delayed-ACK timer fires with an ACK owed: the reply did not come in time,
and interactive mode ends (tcp_delack_timer_handler).  Not imitated: the
adaptive ATO (the timer is always `delayed_ack_us`, also in pingpong
mode), ECN's quick ACKs, and quick-ACK mode for data dropped at the
window's edge.  The fast path pays one store per data segment
(`_last_data_us`), looks for an idle gap only at the first data since
our last ACK, and tests `_quick` (usually 0) only when the ACK would
otherwise wait.

"At once" means at the next `dispatch`, which the Stack runs once per
receive burst (ARCHITECTURE.md rule 3).  For in-order data that makes a
deliberate stretch ACK: however many segments a burst brings, one
cumulative ACK covers them (RFC 5681 4.2 asks for one per second
full-sized segment; batching is the agreed trade, and a sender that
counts bytes acknowledged, RFC 3465 or Linux, grows its window the same).
Quick-ACK mode is per burst too: an ACK at the flush, instead of at the
second full segment or the timer, using one quick ACK for the burst.
It must not merge the ACKs that signal a hole, though: a sender without
SACK counts duplicate ACKs per packet (RFC 5681 3.2), and five
out-of-order segments in one burst must bring it five.  So each segment
that wants an immediate ACK of its own (out of order, filling a hole,
beyond the window, unacceptable, a challenge ACK) is counted
(`_owe_ack`), and `dispatch` sends that many identical pure ACKs, with
the SACK blocks of the flush, at most `MAX_ACKS_PER_DISPATCH`.  They
name the RCV.NXT of the flush, so the count restarts when RCV.NXT moves
(a hole filled: ACKs owed for the old number would read as duplicates
of the new one), and collapses to one ACK when in-order data or a FIN
after the last counted segment moved it.  The fast path never counts.

Timers (one deadline each; `poll_at` is their minimum):
- retransmission (RFC 6298): runs while data, SYN or FIN is
  unacknowledged.  On expiry: back off, cwnd to one segment
  (`on_rto`), rewind to SND.UNA.  The SYN is retried `syn_retries` times,
  the SYN-ACK `synack_retries` times, data `max_retries` times (Linux's
  tcp_retries2 = 15, counted per unacknowledged segment), and one more
  expiry gives ETIMEDOUT.  With the peer's window at zero a timeout
  resends the first segment anyway, as a probe, and the connection times
  out only if the peer has said nothing for `max_rto_us` (Linux).
  `user_timeout_us`, when set, also bounds the time from the first
  retransmission (RFC 9293's USER TIMEOUT, Linux's TCP_USER_TIMEOUT).
- loss probe (RFC 8985 7, SACK only): after new data went out or was
  ACKed, while nothing is SACKed and no recovery runs, PTO = 2 * SRTT
  (plus `TLP_DELACK_US` for a lone segment in flight, else plus 2 ms as
  Linux adds), never later than the retransmission timer.  On expiry one
  probe goes in place of a timeout: a new segment if the window allows,
  else the last segment again; the retransmission timer restarts.  At most
  one probe per flight.
- RACK reordering (RFC 8985 6.3): when a segment sent before the most
  recently delivered one is still within the reordering window, a timer
  runs until its window ends; then loss detection runs again.
- delayed ACK: `delayed_ack_us` after the first unacknowledged segment;
  its expiry ends pingpong mode (see "Delayed ACK").
- persist (RFC 9293 3.8.6.1): runs while data waits, nothing is in flight
  and the window stops it; RTO-based with back-off up to `max_rto_us`.  On
  expiry it sends what the window allows if it allows anything (the SWS
  override), else a zero-window probe as Linux does: <SEQ=SND.UNA-1>, no
  data, which every receiver answers with an ACK carrying its window.  A
  peer that keeps answering is never timed out (RFC 9293 3.8.6.1).
- keepalive (RFC 9293 3.8.4, off by default): after `keepalive_idle_us`
  without receiving anything, probes <SEQ=SND.UNA-1> every
  `keepalive_interval_us`; `keepalive_count` unanswered probes give
  ETIMEDOUT.
- TIME-WAIT: `time_wait_us` (2 MSL, 60 s as in Linux), restarted by a
  retransmitted FIN; then CLOSED.  The same deadline serves FIN-WAIT-2
  after close() (Linux's tcp_fin_timeout, `fin_wait2_timeout_us`), so an
  orphan does not wait forever for the peer's FIN.

RTT samples: one segment at a time is timed with microsecond precision
and never a retransmitted one (Karn, RFC 6298 3).  With timestamps, an
ACK of new data that ends no timing (because timing was cancelled by a
retransmission, or covers data sent after it) gives a sample from TSecr
(RFC 7323 4), in the 1 ms units of our TSval clock.

Congestion control is the `congestion` module's (CUBIC by default);
the Tcb tells it when data is ACKed, when fast retransmit starts and a
full ACK ends recovery, on a timeout and after idle.  Loss recovery:

- With SACK negotiated, RACK-TLP (RFC 8985) decides what is lost and RFC
  6675 what to send.  SACK blocks within (SND.UNA, SND.MAX] fill a
  scoreboard (`sack.Scoreboard`) and mark the transmission record (see
  "RACK-TLP" below); bogus blocks are ignored.  A segment is lost once a
  segment sent after it was delivered (ACKed or SACKed) and it is overdue
  by the reordering window; that also finds lost retransmissions.  The
  window is 0 until reordering is seen, while recovery runs or once
  DupThresh (3) segments are SACKed (so with no reordering RACK declares
  what RFC 6675's IsLost would), else min_RTT / 4, times one more for
  every round trip with a D-SACK (RFC 2883 blocks are recognised for
  this and for the probe), back to one after 16 recoveries without, and
  never above SRTT.  Recovery starts when RACK marks a loss (or, from a
  peer that sends duplicate ACKs without SACK blocks, on DupThresh of
  them).  The first lost range is resent at once; then, while cwnd - pipe
  >= SMSS, the first range marked lost is resent, else new data is sent
  (NextSeg rules 1 and 2; rules 3 and 4 are left out, as Linux does).
  pipe counts every byte sent and neither SACKed nor marked lost.  A probe
  that repaired a lost tail (the ACK covers it and no D-SACK said both
  copies arrived) reduces cwnd as a recovery would (RFC 8985 7.4).
- Without SACK, NewReno (RFC 6582): the first segment is resent on the
  third duplicate ACK and again after each partial ACK.
- Both: `recover` keeps a timeout or a recovery from being followed by
  another fast retransmit for data sent before it; a full ACK (SND.MAX at
  entry) ends recovery with cwnd = ssthresh; the retransmission timer is
  restarted by every partial ACK (RFC 6582 "slow but steady").  A timeout
  forgets the scoreboard (RFC 2018 8: the receiver may have reneged) and
  marks everything in flight lost; going back after it skips ranges
  SACKed again since.  Spurious reductions are not undone (no Eifel or
  D-SACK undo, RFC 3522 / 3708).

RACK-TLP needs each range's last transmit time.  The send buffer is a byte
ring, so the record is kept beside it as three parallel lists (end offset,
transmit time, flags SACKED / LOST / RETRANS) of entries that partition
[SND.UNA, SND.MAX) in sequence order.  A burst of new data extends the
last entry (one transmit time per dispatch), so the per-segment cost is
an integer store; only SACK edges and retransmissions split entries, and
adjacent SACKed entries merge again.  Segments sent at the same time are
ordered by sequence number, as RFC 8985's RACK_sent_after does.

Challenge ACKs (RFC 5961 7): a per-connection token bucket,
`challenge_ack_per_s` (default 10) with the same burst.  Linux limits
globally (tcp_challenge_ack_limit), which made the counter a side channel
(CVE-2016-5696); a per-connection bucket leaks nothing across connections
and still stops one connection from being used as an ACK amplifier.

TIME-WAIT reuse (RFC 6191): `time_wait_reopen(syn)` says whether a SYN for
this 4-tuple may start a new incarnation (its timestamp is newer than
TS.Recent, or without timestamps its sequence number is beyond RCV.NXT)
and returns an ISS for it above our old sequence space; the Stack then
frees this Tcb and hands the SYN to the listener.

The peer's MSS option is clamped to at least 48 bytes (Linux's
tcp_min_snd_mss, against CVE-2019-11477-style resource exhaustion);
without the option it is 536 (RFC 9293 3.7.1).

Path MTU discovery (RFC 1191, with RFC 5927's checks): segments leave
with DF set, and a router whose next hop is too small drops them and
answers with ICMP "fragmentation needed".  The Stack matches the quoted
segment to its connection and checks SND.UNA <= SEG.SEQ < SND.MAX (RFC
5927 4.1) before calling `on_path_mtu(mtu, now_us)`.  The send MSS becomes
mtu - 40 (IPv4 and TCP headers; timestamps are taken off as at the
handshake), never below `PMTU_MIN` - 40 = 512 (Linux's min_pmtu of 552,
which keeps a forged ICMP from shrinking segments to a few bytes, RFC 5927
5.2) and never raised by ICMP (RFC 1191 6.3); an ICMP that would not lower
it is ignored and counted.  A next-hop MTU of 0 (a router older than RFC
1191) means the plateau below the quoted datagram's length (RFC 1191 5 and
7).  What is in flight was sent in the old size, so it is sent again at
once in the new one, as Linux's tcp_simple_retransmit does: every unSACKed
byte in flight counts as lost (the transmission record keeps ranges, not
segments, so a short segment that did get through is sent again too), the
sender goes back to SND.UNA as after a timeout, and `recover` is moved to
SND.MAX so that the duplicate ACKs of the repair start no fast
retransmit.  Unlike a timeout this is no congestion signal: cwnd and
ssthresh keep their values and the RTO does not back off (a SACK recovery
that runs already goes on, resending the ranges now marked lost).  With
TSO the segment cap, and so the device's segment size, follow the new MSS.

Not implemented: urgent data (RFC 6093 deprecates it; URG is ignored),
undo of spurious reductions, RACK after a timeout (lost retransmissions
of the go-back wait for the next timeout, where Linux's RACK still marks
them), ECN, raising the path MTU again (RFC 1191 6.3's probe after ten
minutes) or PLPMTUD (RFC 4821), data on SYN (it is ignored; the peer
retransmits it), TCP Fast Open, pacing.
"""

from __future__ import annotations

import enum
import errno
import os
from bisect import bisect_right
from dataclasses import dataclass
from typing import Final, NamedTuple

from ustack.ratelimit import TokenBucket
from ustack.tcp.congestion import DEFAULT_CONGESTION_CONTROL, CongestionControl
from ustack.tcp.congestion import make_congestion_control as _make_cc
from ustack.tcp.recvbuf import RecvBuffer
from ustack.tcp.rtt import RttEstimator
from ustack.tcp.sack import Scoreboard
from ustack.tcp.sendbuf import SendBuffer
from ustack.tcp.seq import seq_add, seq_ge, seq_gt, seq_le, seq_lt, seq_sub
from ustack.wire.tcp import ACK, FIN, MAX_WSCALE, PSH, RST, SYN, TcpSegment
from ustack.wire.types import Buffer, WritableBuffer
from ustack.wire.types import tuple_new as _tuple_new

__all__ = [
    "DEFAULT_PEER_MSS",
    "OutSegment",
    "State",
    "Tcb",
    "TcpConfig",
    "TcpDrop",
]

Endpoint = tuple[int, int]
"""(IPv4 address, port), both ints."""

DEFAULT_PEER_MSS: Final = 536
"""MSS assumed when the peer's SYN has no MSS option (RFC 9293 3.7.1, RFC 1122 4.2.2.6)."""
MIN_PEER_MSS: Final = 48
"""Smallest peer MSS honoured (Linux's tcp_min_snd_mss)."""
PMTU_MIN: Final = 552
"""Smallest path MTU ICMP can make us use: Linux's ip_rt_min_pmtu (512 + 20 + 20)."""
PMTU_PLATEAUS: Final = (65535, 32000, 17914, 8166, 4352, 2002, 1492, 1006, 508, 296, 68)
"""RFC 1191 7: MTU estimates for a "fragmentation needed" without a next-hop MTU."""
PAWS_IDLE_US: Final = 24 * 86_400 * 1_000_000
"""RFC 7323 5.5: TS.Recent is invalid after 24 days of idleness."""
TS_OPTION_LEN: Final = 12
"""NOP NOP Timestamps: the option bytes on every segment once timestamps are on."""
DUPACK_THRESHOLD: Final = 3
"""RFC 5681 3.2."""
TLP_NO_RTT_PTO_US: Final = 1_000_000
"""RFC 8985 7.2: the probe timeout before any RTT sample."""
TLP_DELACK_US: Final = 200_000
"""RFC 8985 7.2 WCDelAckT: a lone segment's ACK may be delayed this long."""
TLP_SLACK_US: Final = 2_000
"""Added to 2 * SRTT when more than one segment is in flight (Linux's TCP_TIMEOUT_MIN)."""
RACK_PERSIST_RECOVERIES: Final = 16
"""RFC 8985 6.2 step 4: recoveries a D-SACK-widened reordering window survives."""
MAX_ACKS_PER_DISPATCH: Final = 64
"""Most immediate ACKs one dispatch sends, one per segment that asked for one.

A burst holds at most the Context's budget of segments (64 by default), so
this is only a guard (ARCHITECTURE.md rule 8: what the network can grow
is bounded); three duplicate ACKs are what a sender without SACK needs."""
MAX_QUICKACKS: Final = 16
"""Most quick ACKs one entry into quick-ACK mode allows (Linux's TCP_MAX_QUICKACKS)."""

# Transmission record flags (RACK-TLP).
_RK_SACKED: Final = 1
"""The peer SACKed the range (delivered above SND.UNA)."""
_RK_LOST: Final = 2
"""RACK (or a timeout) marked the range lost; not retransmitted since."""
_RK_RETRANS: Final = 4
"""The range was retransmitted at least once (RFC 8985 Segment.retransmitted)."""

_EMPTY: Final = memoryview(b"")
_FAST_PATH_MASK: Final = SYN | FIN | RST | ACK | 0x20  # URG: the flags the fast path rules out
_MASK32: Final = 0xFFFFFFFF
_HALF32: Final = 0x80000000
# The per-segment paths (`_fast_path`, `_ack_advance`, `_pipe`, output) write
# the `ustack.tcp.seq` helpers out as these masked expressions, which cost a
# fraction of a function call; each carries a comment naming the helper.


class State(enum.Enum):
    """RFC 9293 3.3.2 connection states; str() gives the RFC spelling."""

    CLOSED = "CLOSED"
    LISTEN = "LISTEN"
    SYN_SENT = "SYN-SENT"
    SYN_RECEIVED = "SYN-RECEIVED"
    ESTABLISHED = "ESTABLISHED"
    FIN_WAIT_1 = "FIN-WAIT-1"
    FIN_WAIT_2 = "FIN-WAIT-2"
    CLOSE_WAIT = "CLOSE-WAIT"
    CLOSING = "CLOSING"
    LAST_ACK = "LAST-ACK"
    TIME_WAIT = "TIME-WAIT"

    def __str__(self) -> str:
        return self.value

    # Members are singletons: hash by identity in C rather than by name in
    # Python (Enum's default), since every segment tests `state in {...}`.
    __hash__ = object.__hash__


CLOSED: Final = State.CLOSED
LISTEN: Final = State.LISTEN
SYN_SENT: Final = State.SYN_SENT
SYN_RECEIVED: Final = State.SYN_RECEIVED
ESTABLISHED: Final = State.ESTABLISHED
FIN_WAIT_1: Final = State.FIN_WAIT_1
FIN_WAIT_2: Final = State.FIN_WAIT_2
CLOSE_WAIT: Final = State.CLOSE_WAIT
CLOSING: Final = State.CLOSING
LAST_ACK: Final = State.LAST_ACK
TIME_WAIT: Final = State.TIME_WAIT

# States in which data or our FIN may still have to be (re)transmitted.
_OUTPUT_STATES: Final = frozenset({ESTABLISHED, CLOSE_WAIT, FIN_WAIT_1, CLOSING, LAST_ACK})
# States in which the peer may still send data (its FIN has not arrived).
_RECEIVE_STATES: Final = frozenset({ESTABLISHED, FIN_WAIT_1, FIN_WAIT_2})
# States in which the application may queue data.
_SEND_STATES: Final = frozenset({SYN_SENT, SYN_RECEIVED, ESTABLISHED, CLOSE_WAIT})


class TcpDrop(enum.StrEnum):
    """Why the control block discarded (part of) a segment; the value is the counter name."""

    PAWS = "drop_tcp_paws"
    """TSval older than TS.Recent (RFC 7323 5)."""
    OUT_OF_WINDOW = "drop_tcp_out_of_window"
    """Not acceptable under RFC 9293 3.10.7.4's table."""
    RST_CHALLENGED = "drop_tcp_rst_challenged"
    """RST in the window but not at RCV.NXT (RFC 5961 3.2)."""
    RST_IGNORED = "drop_tcp_rst_ignored"
    """RST in SYN-SENT without an acceptable ACK, or in TIME-WAIT (RFC 1337)."""
    SYN_CHALLENGED = "drop_tcp_syn_challenged"
    """SYN in a synchronized state (RFC 5961 4.2)."""
    NO_ACK = "drop_tcp_no_ack"
    """Neither SYN nor RST, and no ACK bit."""
    ACK_UNSENT = "drop_tcp_ack_unsent"
    """SEG.ACK beyond SND.MAX (RFC 5961 5.2)."""
    ACK_TOO_OLD = "drop_tcp_ack_too_old"
    """SEG.ACK before SND.UNA - MAX.SND.WND (RFC 5961 5.2)."""
    BAD_ACK = "drop_tcp_bad_ack"
    """Unacceptable ACK in SYN-SENT or SYN-RECEIVED: answered with a RST."""
    NOT_SYN = "drop_tcp_syn_sent_no_syn"
    """Neither SYN nor RST in SYN-SENT."""
    CLOSED_STATE = "drop_tcp_closed"
    """A segment for a control block that is already CLOSED."""
    OOO_RANGES = "drop_tcp_ooo_ranges"
    """Out-of-order data that would need one range too many."""
    CHALLENGE_LIMITED = "drop_tcp_challenge_ack_limited"
    """A challenge ACK not sent: the per-connection bucket was empty."""
    OOW_ACK_LIMITED = "drop_tcp_oow_ack_limited"
    """An ACK for an unacceptable segment not sent: rate limit."""
    PMTU_NOT_LOWER = "drop_tcp_pmtu_not_lower"
    """ICMP fragmentation needed that would not lower the send MSS (RFC 1191 6.3)."""
    PMTU_STATE = "drop_tcp_pmtu_state"
    """ICMP fragmentation needed in a state that sends no data (handshake, FIN-WAIT-2, ...)."""


@dataclass(frozen=True, slots=True)
class TcpConfig:
    """Per-connection TCP settings; defaults follow Linux where the RFCs leave a choice."""

    mss: int = 1460
    """MSS we announce: the largest segment data we accept (RFC 9293 3.7.1)."""
    mtu: int | None = None
    """Our interface MTU; when given, the MSS is clamped to mtu - 40."""
    rcvbuf: int = 256 * 1024
    """Receive buffer bytes: the largest window we offer."""
    sndbuf: int = 256 * 1024
    """Send buffer bytes: unacknowledged plus unsent data."""
    window_scaling: bool = True
    """Offer window scaling (RFC 7323 2); the shift comes from rcvbuf."""
    sack: bool = True
    """Offer SACK-permitted (RFC 2018) and send SACK blocks."""
    timestamps: bool = True
    """Offer timestamps (RFC 7323 3): RTT measurement and PAWS."""
    nodelay: bool = False
    """True turns Nagle's algorithm off (TCP_NODELAY)."""
    delayed_ack_us: int = 40_000
    """Longest an ACK of in-order data waits (Linux's TCP_DELACK_MIN; RFC 5681 4.2 < 500 ms)."""
    min_rto_us: int = 200_000
    max_rto_us: int = 120_000_000
    initial_rto_us: int = 1_000_000
    time_wait_us: int = 60_000_000
    """2 * MSL (Linux's TCP_TIMEWAIT_LEN)."""
    fin_wait2_timeout_us: int = 60_000_000
    """How long FIN-WAIT-2 waits for the peer's FIN after close() (Linux's tcp_fin_timeout)."""
    keepalive: bool = False
    keepalive_idle_us: int = 7_200_000_000
    keepalive_interval_us: int = 75_000_000
    keepalive_count: int = 9
    congestion_control: str = DEFAULT_CONGESTION_CONTROL
    challenge_ack_per_s: int = 10
    """RFC 5961 7 rate limit, per connection (see the module docstring)."""
    oow_ack_interval_us: int = 500_000
    """Minimum gap between ACKs answering unacceptable dataless segments (Linux's
    tcp_invalid_ratelimit)."""
    syn_retries: int = 6
    synack_retries: int = 5
    max_retries: int = 15
    user_timeout_us: int | None = None
    """RFC 9293 USER TIMEOUT (Linux's TCP_USER_TIMEOUT): ETIMEDOUT once data has
    gone unacknowledged this long after its first retransmission; None: only
    `max_retries` counts."""
    tso_max_bytes: int | None = None
    """Largest segment data the device segments for us (TSO); None: one MSS."""
    max_ooo_ranges: int = 32
    """Bound on separate out-of-order extents held in the receive buffer."""

    def __post_init__(self) -> None:
        if not 88 <= self.mss <= 65495:
            raise ValueError(f"mss must be 88..65495, got {self.mss}")
        if self.mtu is not None and not 128 <= self.mtu <= 65535:
            raise ValueError(f"mtu must be 128..65535 or None, got {self.mtu}")
        if self.rcvbuf < 1 or self.sndbuf < 1:
            raise ValueError("rcvbuf and sndbuf must be positive")
        if self.rcvbuf > 1 << 30:
            raise ValueError("rcvbuf above 1 GiB cannot be offered (RFC 7323 2.3)")
        if self.tso_max_bytes is not None and not 1 <= self.tso_max_bytes <= 65535 - 60:
            raise ValueError(f"tso_max_bytes must be 1..65475 or None, got {self.tso_max_bytes}")
        for name in (
            "delayed_ack_us",
            "time_wait_us",
            "fin_wait2_timeout_us",
            "keepalive_idle_us",
            "keepalive_interval_us",
            "challenge_ack_per_s",
            "oow_ack_interval_us",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} cannot be negative")
        if self.keepalive_count < 1 or self.max_ooo_ranges < 1:
            raise ValueError("keepalive_count and max_ooo_ranges must be at least 1")

    @property
    def effective_mss(self) -> int:
        """The MSS we announce: `mss`, clamped to mtu - 40 (IPv4 and TCP headers)."""
        if self.mtu is None:
            return self.mss
        return min(self.mss, self.mtu - 40)

    @property
    def rcv_wscale(self) -> int:
        """Our window scale shift: the smallest that lets rcvbuf be offered (RFC 7323 2.3)."""
        if not self.window_scaling:
            return 0
        shift = 0
        while (self.rcvbuf >> shift) > 65535 and shift < MAX_WSCALE:
            shift += 1
        return shift


class OutSegment(NamedTuple):
    """A segment to transmit; the option fields match `emit_tcp`'s arguments.

    `window` is the 16-bit header field, already scaled down.  `payload` is
    a view into the send buffer, valid until the next call that changes
    the Tcb.  With TSO it may exceed the MSS; the device then cuts it into
    segments of `Tcb.smss` bytes.
    """

    seq: int
    ack: int
    flags: int
    window: int
    payload: memoryview = _EMPTY
    mss: int | None = None
    wscale: int | None = None
    sack_permitted: bool = False
    sack_blocks: tuple[tuple[int, int], ...] = ()
    ts: tuple[int, int] | None = None


def _raise(code: int, what: str) -> None:
    raise OSError(code, f"{os.strerror(code)}: {what}")


class Tcb:
    """One TCP connection; see the module docstring."""

    __slots__ = (
        "_ack_now",
        "_acks_owed",
        "_acks_owed_at",
        "_active",
        "_app_closed",
        "_cc",
        "_challenge_bucket",
        "_delack_bytes",
        "_delack_deadline",
        "_dup_bytes",
        "_dupacks",
        "_fin_acked",
        "_fin_queued",
        "_fin_rcv_seq",
        "_fin_seq",
        "_in_recovery",
        "_ka_deadline",
        "_ka_due",
        "_ka_probes",
        "_last_data_us",
        "_last_rx_us",
        "_last_send_us",
        "_mss_base",
        "_oow_last_us",
        "_persist_backoff",
        "_persist_deadline",
        "_pingpong",
        "_pmtu",
        "_probe_due",
        "_quick",
        "_rack_dsack_round",
        "_rack_end",
        "_rack_fack",
        "_rack_reord",
        "_rack_rtt",
        "_rack_wnd_mult",
        "_rack_wnd_persist",
        "_rack_xmit",
        "_rcv_fin",
        "_rcv_mss",
        "_rcvbuf",
        "_recover",
        "_reo_deadline",
        "_retries",
        "_rk_end",
        "_rk_flags",
        "_rk_lost",
        "_rk_retx_hi",
        "_rk_sacked",
        "_rk_xmit",
        "_rst_out",
        "_rto_force",
        "_rtt",
        "_rtt_sent_us",
        "_rtt_seq",
        "_rtx_deadline",
        "_rtx_head",
        "_rtx_since_us",
        "_sack_ok",
        "_sack_rec",
        "_sb",
        "_seg_cap",
        "_send_rst",
        "_sent_pipe",
        "_sndbuf",
        "_syn_opts",
        "_syn_retransmitted",
        "_syn_window",
        "_tlp_deadline",
        "_tlp_due",
        "_tlp_end",
        "_tlp_rearm",
        "_tlp_retrans",
        "_tlp_seq",
        "_ts_offset",
        "_ts_ok",
        "_ts_recent",
        "_ts_recent_us",
        "_tw_deadline",
        "_una_abs",
        "_ws_ok",
        "bytes_acked",
        "bytes_received",
        "bytes_retrans",
        "bytes_sent",
        "config",
        "counters",
        "dsacks",
        "error",
        "irs",
        "iss",
        "last_ack_sent",
        "local",
        "max_snd_wnd",
        "paws_exempt_acks",
        "rack_reo_timeouts",
        "rcv_adv",
        "rcv_nxt",
        "rcv_wscale",
        "recoveries",
        "remote",
        "retransmits",
        "rtos",
        "segs_in",
        "segs_out",
        "smss",
        "snd_max",
        "snd_nxt",
        "snd_una",
        "snd_wl1",
        "snd_wl2",
        "snd_wnd",
        "snd_wscale",
        "state",
        "tlp_probes",
        "tlp_recoveries",
    )

    # -- construction ---------------------------------------------------------

    def __init__(self, local: Endpoint, remote: Endpoint, iss: int, config: TcpConfig) -> None:
        """Use `connect` or `accept_syn`; this makes a CLOSED block with no peer state."""
        self.local = local
        self.remote = remote
        self.config = config
        self.state = CLOSED
        self.error: int | None = None
        iss &= _MASK32
        self.iss = iss
        self.snd_una = iss
        self.snd_nxt = iss
        self.snd_max = iss
        self.snd_wnd = 0
        self.snd_wl1 = 0
        self.snd_wl2 = 0
        self.max_snd_wnd = 0
        self.snd_wscale = 0
        self.irs = 0
        self.rcv_nxt = 0
        self.rcv_adv = 0
        self.rcv_wscale = 0
        self.last_ack_sent = 0
        mss = config.effective_mss
        self._mss_base = min(mss, DEFAULT_PEER_MSS)
        self.smss = self._mss_base
        self._rcv_mss = mss
        self._seg_cap = self.smss
        self._pmtu = config.mtu  # the path MTU as far as we know (lowered by on_path_mtu)
        self._syn_opts = (config.timestamps, config.sack, config.window_scaling)
        self._syn_window = 0
        self._ts_ok = False
        self._sack_ok = False
        self._ws_ok = False
        self._ts_offset = 0
        self._ts_recent = 0
        self._ts_recent_us = 0
        self._sndbuf = SendBuffer(config.sndbuf)
        self._rcvbuf = RecvBuffer(config.rcvbuf, config.max_ooo_ranges)
        self._rtt = RttEstimator(
            min_rto_us=config.min_rto_us,
            max_rto_us=config.max_rto_us,
            initial_rto_us=config.initial_rto_us,
        )
        self._cc: CongestionControl = _make_cc(config.congestion_control, self.smss)
        self._active = False
        self._app_closed = False
        self._fin_queued = False
        self._fin_seq: int | None = None
        self._fin_acked = False
        self._rcv_fin = False
        self._fin_rcv_seq: int | None = None
        self._ack_now = False
        self._acks_owed = 0  # immediate ACKs owed, one per segment that asked (see _owe_ack)
        self._acks_owed_at = 0  # RCV.NXT when they were counted
        self._delack_bytes = 0
        self._quick = 0  # quick ACKs left (Linux's icsk_ack.quick)
        self._pingpong = False  # interactive: our data answers theirs (see "Delayed ACK")
        # When in-order data last came (Linux's lrcvtime); None: not yet.
        self._last_data_us: int | None = None
        self._send_rst = False
        self._rst_out: list[tuple[int, int, int]] = []
        self._rtx_head = False
        self._rto_force = False
        self._sent_pipe = 0
        self._probe_due = False
        self._ka_due = False
        self._ka_probes = 0
        self._dupacks = 0
        self._dup_bytes = 0
        self._in_recovery = False
        self._recover = iss
        self._sb = Scoreboard()
        self._una_abs = 0  # SND.UNA as an absolute offset from ISS, for the scoreboard
        self._sack_rec = False  # the current recovery is SACK-based (RACK marks, RFC 6675 sends)
        # Transmission record (see "RACK-TLP" in the module docstring): one
        # entry per transmission of a range above SND.UNA, in sequence order,
        # as three parallel lists (end offset, transmit time, flags).
        self._rk_end: list[int] = []
        self._rk_xmit: list[int] = []
        self._rk_flags: list[int] = []
        self._rk_sacked = 0  # bytes in SACKED entries
        self._rk_lost = 0  # bytes in LOST entries
        self._rk_retx_hi = 0  # no entry ending above this was retransmitted
        self._rack_xmit = -1  # RACK.xmit_ts (-1: nothing delivered yet)
        self._rack_end = 0  # RACK.end_seq (absolute)
        self._rack_rtt = 0  # RACK.rtt
        self._rack_fack = 0  # RACK.fack (absolute)
        self._rack_reord = False  # RACK.reordering_seen
        self._rack_wnd_mult = 1  # RACK.reo_wnd_mult
        self._rack_wnd_persist = 0  # RACK.reo_wnd_persist
        self._rack_dsack_round: int | None = None  # RACK.dsack_round (a sequence number)
        self._reo_deadline: int | None = None
        self._tlp_deadline: int | None = None
        self._tlp_due = False
        self._tlp_rearm = False
        self._tlp_end: int | None = None  # TLP.end_seq: SND.MAX when the probe went
        self._tlp_seq = 0  # first sequence number of the probe
        self._tlp_retrans = False  # TLP.is_retrans
        self._retries = 0
        self._rtx_since_us = 0  # first retransmission of the unacknowledged data
        self._syn_retransmitted = False
        self._rtt_seq: int | None = None
        self._rtt_sent_us = 0
        self._persist_backoff = 0
        self._rtx_deadline: int | None = None
        self._delack_deadline: int | None = None
        self._persist_deadline: int | None = None
        self._ka_deadline: int | None = None
        self._tw_deadline: int | None = None
        self._last_rx_us = 0
        self._last_send_us = 0
        rate = config.challenge_ack_per_s
        self._challenge_bucket = TokenBucket(rate, rate)
        self._oow_last_us: int | None = None
        self.counters: dict[str, int] = {}
        self.bytes_acked = 0
        self.bytes_received = 0
        self.bytes_sent = 0
        self.bytes_retrans = 0
        self.retransmits = 0
        self.rtos = 0
        self.recoveries = 0
        self.tlp_probes = 0
        self.tlp_recoveries = 0
        self.rack_reo_timeouts = 0
        self.dsacks = 0
        self.paws_exempt_acks = 0
        self.segs_in = 0
        self.segs_out = 0

    @classmethod
    def connect(
        cls,
        local: Endpoint,
        remote: Endpoint,
        iss: int,
        now_us: int,
        config: TcpConfig | None = None,
        *,
        ts_offset: int = 0,
    ) -> Tcb:
        """Active open (RFC 9293 3.10.1): SYN-SENT, with a SYN for the next dispatch.

        `iss` comes from `IsnGenerator.isn`, `ts_offset` from
        `IsnGenerator.ts_offset` (RFC 7323 5.4).
        """
        tcb = cls(local, remote, iss, config or TcpConfig())
        tcb._active = True
        tcb._ts_offset = ts_offset & _MASK32
        tcb.state = SYN_SENT
        tcb._last_rx_us = now_us
        tcb._last_send_us = now_us
        return tcb

    @classmethod
    def accept_syn(
        cls,
        local: Endpoint,
        remote: Endpoint,
        syn: TcpSegment,
        iss: int,
        now_us: int,
        config: TcpConfig | None = None,
        *,
        ts_offset: int = 0,
    ) -> Tcb:
        """Passive open from a SYN the listener accepted: SYN-RECEIVED, SYN-ACK queued.

        Options are taken from the SYN (RFC 9293 3.10.7.2); data on the SYN
        is not kept (the peer sends it again after the handshake).
        """
        if syn.flags & (SYN | ACK | RST) != SYN:
            raise ValueError(f"accept_syn needs a SYN without ACK or RST, got flags {syn.flags:#x}")
        tcb = cls(local, remote, iss, config or TcpConfig())
        tcb._ts_offset = ts_offset & _MASK32
        tcb._last_rx_us = now_us
        tcb._last_send_us = now_us
        tcb._take_syn(syn, now_us)
        tcb.state = SYN_RECEIVED
        return tcb

    @classmethod
    def accept_cookie(
        cls,
        local: Endpoint,
        remote: Endpoint,
        syn: TcpSegment,
        iss: int,
        now_us: int,
        config: TcpConfig | None = None,
        *,
        ts_offset: int = 0,
    ) -> Tcb:
        """A connection rebuilt from a valid SYN cookie: SYN-RECEIVED with the SYN-ACK sent.

        `syn` is the SYN the cookie stands for (reconstructed by the
        listener: the peer's ISN, the MSS, window scale and SACK the cookie
        carried, and the ACK's TSval as TS.Recent); `iss` is the cookie.
        Feed the ACK that carried the cookie to `on_segment` next: it
        completes the handshake like any other.
        """
        tcb = cls.accept_syn(local, remote, syn, iss, now_us, config, ts_offset=ts_offset)
        tcb.snd_nxt = tcb.snd_max = seq_add(iss, 1)
        return tcb

    def _take_syn(self, syn: TcpSegment, now_us: int) -> None:
        """Record the peer's SYN: IRS, RCV.NXT, its window and the negotiated options."""
        cfg = self.config
        self.irs = syn.seq
        self.rcv_nxt = seq_add(syn.seq, 1)
        self.last_ack_sent = self.rcv_nxt
        want_ts, want_sack, want_ws = self._syn_opts
        self._ts_ok = want_ts and syn.ts_val is not None
        if self._ts_ok and syn.ts_val is not None:
            self._ts_recent = syn.ts_val
            self._ts_recent_us = now_us
        self._sack_ok = want_sack and syn.sack_permitted
        self._ws_ok = want_ws and syn.wscale is not None
        if self._ws_ok and syn.wscale is not None:
            self.snd_wscale = syn.wscale
            self.rcv_wscale = cfg.rcv_wscale
        else:
            self.snd_wscale = 0
            self.rcv_wscale = 0
        peer_mss = DEFAULT_PEER_MSS if syn.mss is None else max(syn.mss, MIN_PEER_MSS)
        self._set_send_mss(min(peer_mss, cfg.effective_mss))
        self._rcv_mss = self.smss
        self.snd_wnd = syn.window  # never scaled in a SYN (RFC 7323 2.2)
        self.max_snd_wnd = syn.window
        self.snd_wl1 = syn.seq
        self.snd_wl2 = self.snd_una
        # The window our SYN or SYN-ACK offers (unscaled, RFC 7323 2.2).
        if not self._syn_window:
            self._syn_window = min(self._rcvbuf.space, 65535)
        self.rcv_adv = seq_add(self.rcv_nxt, self._syn_window)

    # -- application interface -----------------------------------------------

    @property
    def readable_bytes(self) -> int:
        """In-order bytes `recv` can return now."""
        return self._rcvbuf.readable

    @property
    def send_space(self) -> int:
        """Bytes `send` would accept now (0 once the write side is shut)."""
        if self.state not in _SEND_STATES or self._fin_queued or self.error is not None:
            return 0
        return self._sndbuf.free

    @property
    def eof(self) -> bool:
        """The peer's FIN arrived and every byte before it has been read."""
        return self._rcv_fin and self._rcvbuf.readable == 0

    @property
    def unacked_bytes(self) -> int:
        """Data bytes in the send buffer: sent but unacknowledged, and unsent."""
        return len(self._sndbuf)

    def send(self, data: Buffer) -> int:
        """Queue as much of `data` as the send buffer takes; return that count (0 if full).

        Allowed from SYN-SENT to CLOSE-WAIT until shutdown_write; data
        queued before the handshake completes is sent after it.
        """
        if self.error is not None:
            _raise(self.error, "the connection failed")
        if self._fin_queued:
            _raise(errno.EPIPE, "send after shutdown_write or close")
        if self.state not in _SEND_STATES:
            _raise(errno.ENOTCONN, f"send in state {self.state}")
        return self._sndbuf.write(data)

    def recv(self, max_bytes: int) -> bytes:
        """Take up to `max_bytes` readable bytes; b"" if none (see `eof`)."""
        data = self._rcvbuf.read(max_bytes)
        if data:
            self._after_read()
        return data

    def recv_into(self, buf: WritableBuffer) -> int:
        """Copy readable bytes into `buf`; return how many (0 if none, see `eof`)."""
        n = self._rcvbuf.read_into(buf)
        if n:
            self._after_read()
        return n

    def _after_read(self) -> None:
        # Window update after the application made room (Linux's
        # __tcp_cleanup_rbuf): ACK at once if the window we could offer now
        # is at least twice what is left of the one we advertised, and that
        # is at most half of the largest window.
        if self.state not in _RECEIVE_STATES or self._ack_now:
            return
        left = seq_sub(self.rcv_adv, self.rcv_nxt)
        if left < 0:
            left = 0
        max_wnd = min(self._rcvbuf.capacity, 65535 << self.rcv_wscale)
        if 2 * left <= max_wnd:
            new = self._window_bytes(left)
            if new and new >= 2 * left:
                self._ack_now = True

    def shutdown_write(self) -> None:
        """Half-close: queue a FIN after the buffered data (RFC 9293 3.10.4 CLOSE)."""
        state = self.state
        if self._fin_queued or state in (CLOSED, LISTEN):
            return
        if state is SYN_SENT:
            # Nothing was synchronized: the connection just goes away.
            self._close_now()
            return
        if state not in (SYN_RECEIVED, ESTABLISHED, CLOSE_WAIT):
            return
        self._fin_queued = True
        if state is SYN_RECEIVED:
            return  # the FIN goes once the handshake completes (see _establish)
        self._fin_seq = seq_add(self.snd_una, len(self._sndbuf))
        self.state = FIN_WAIT_1 if state is ESTABLISHED else LAST_ACK

    def close(self) -> None:
        """Close both directions: FIN after the data, or RST if unread data remains.

        RFC 9293 3.10.4 and RFC 2525 2.17: closing with data not yet read
        (or with data arriving afterwards) resets the connection so the
        peer learns that data was lost.  After close(), FIN-WAIT-2 lasts at
        most `fin_wait2_timeout_us`.
        """
        if self.state is CLOSED:
            return
        self._app_closed = True
        if self._rcvbuf.readable and self.state not in (SYN_SENT, TIME_WAIT):
            self.abort()
            return
        self.shutdown_write()

    def abort(self) -> None:
        """Reset the connection (RFC 9293 3.10.5 ABORT): RST if synchronized, then CLOSED."""
        state = self.state
        if state in (SYN_RECEIVED, ESTABLISHED, FIN_WAIT_1, FIN_WAIT_2, CLOSE_WAIT):
            self._send_rst = True
        self._app_closed = True
        self._close_now()

    def time_wait_reopen(self, syn: TcpSegment) -> int | None:
        """In TIME-WAIT, may this SYN open a new incarnation? (RFC 6191, RFC 9293 3.6.1)

        Yes when timestamps are in use and its TSval is newer than TS.Recent,
        or, without timestamps, when its sequence number is beyond RCV.NXT.
        Returns an ISS for the new connection beyond anything this one sent
        (SND.NXT + 2**16 + 2, as Linux picks), or None to refuse.
        """
        if self.state is not TIME_WAIT or syn.flags & (SYN | ACK | RST) != SYN:
            return None
        if self._ts_ok and syn.ts_val is not None:
            if not seq_gt(syn.ts_val, self._ts_recent):
                return None
        elif not seq_gt(syn.seq, self.rcv_nxt):
            return None
        return seq_add(self.snd_max, 65536 + 2)

    def reconfigure(self, config: TcpConfig, now_us: int) -> None:
        """Apply changed settings to a live connection (setsockopt after connect).

        Buffer sizes, MSS and window scaling are fixed at the handshake and
        keep their values; Nagle, delayed ACK, timers, retries and
        keepalive take effect at once.  Keepalive switched on (or its idle
        time changed) on an open connection is armed from `now_us`.
        """
        old = self.config
        self.config = config
        rearm = config.keepalive and (
            not old.keepalive or config.keepalive_idle_us != old.keepalive_idle_us
        )
        if rearm and self.state in (ESTABLISHED, CLOSE_WAIT):
            self._ka_deadline = now_us + config.keepalive_idle_us
        elif not config.keepalive:
            self._ka_deadline = None

    # -- state for the API and for ss -----------------------------------------

    @property
    def rto_us(self) -> int:
        return self._rtt.rto_us

    @property
    def cwnd(self) -> int:
        return self._cc.cwnd

    @property
    def ssthresh(self) -> int:
        return self._cc.ssthresh

    @property
    def in_recovery(self) -> bool:
        return self._in_recovery

    def stats(self) -> dict[str, object]:
        """An `ss -ti`-like snapshot: state, windows, RTT estimates (us), counters."""
        s: dict[str, object] = {
            "state": str(self.state),
            "cwnd": self._cc.cwnd,
            "ssthresh": self._cc.ssthresh,
            "srtt_us": self._rtt.srtt_us,
            "rttvar_us": self._rtt.rttvar_us,
            "min_rtt_us": self._rtt.min_rtt_us,
            "rto_us": self._rtt.rto_us,
            "smss": self.smss,
            "rcv_mss": self._rcv_mss,
            "pmtu": self._pmtu,
            "snd_wnd": self.snd_wnd,
            "rcv_wnd": max(seq_sub(self.rcv_adv, self.rcv_nxt), 0),
            "snd_wscale": self.snd_wscale,
            "rcv_wscale": self.rcv_wscale,
            "timestamps": self._ts_ok,
            "ts_recent": self._ts_recent if self._ts_ok else None,
            "sack": self._sack_ok,
            "unacked": seq_sub(self.snd_max, self.snd_una),
            "retransmits": self.retransmits,
            "backoffs": self._rtt.backoffs,
            "in_recovery": self._in_recovery,
            "dupacks": self._dupacks,
            "bytes_sent": self.bytes_sent,
            "bytes_retrans": self.bytes_retrans,
            "bytes_acked": self.bytes_acked,
            "bytes_received": self.bytes_received,
            "segs_in": self.segs_in,
            "segs_out": self.segs_out,
            "notsent_bytes": max(len(self._sndbuf) - seq_sub(self.snd_nxt, self.snd_una), 0),
            "ooo_bytes": self._rcvbuf.out_of_order_bytes,
            "sacked_bytes": self._sb.sacked_bytes,
            "sack_holes": self._sb.holes(self._una_abs),
            "rtos": self.rtos,
            "recoveries": self.recoveries,
            "tlp_probes": self.tlp_probes,
            "tlp_recoveries": self.tlp_recoveries,
            "rack_reo_timeouts": self.rack_reo_timeouts,
            "rack_reordering_seen": self._rack_reord,
            "rack_reo_wnd_us": self._rack_reo_wnd() if self._sack_ok else 0,
            "dsacks": self.dsacks,
            "paws_exempt_acks": self.paws_exempt_acks,
            "quickacks": self._quick,
            "pingpong": self._pingpong,
            "congestion_control": self._cc.name,
        }
        s.update(self.counters)
        return s

    def __repr__(self) -> str:
        return (
            f"Tcb({self.local} -> {self.remote} {self.state} una={self.snd_una}"
            f" nxt={self.snd_nxt} max={self.snd_max} rcv_nxt={self.rcv_nxt})"
        )

    # -- helpers ----------------------------------------------------------------

    @property
    def _sack_block_cap(self) -> int:
        return 3 if self._ts_ok else 4  # what fits in 40 option bytes (RFC 2018 3)

    def sack_mss(self, blocks: int) -> int:
        """Data bytes per segment when a segment carries `blocks` SACK blocks."""
        return self.smss - (4 + 8 * blocks if blocks else 0)

    def _set_send_mss(self, base: int) -> None:
        """SMSS from `base`, the MSS before options (handshake, path MTU discovery).

        Takes the timestamp option's bytes off, sets the TSO segment cap to a
        whole number of segments and tells congestion control.
        """
        self._mss_base = base
        smss = max(base - (TS_OPTION_LEN if self._ts_ok else 0), 1)
        self.smss = smss
        tso = self.config.tso_max_bytes
        self._seg_cap = tso - tso % smss if tso is not None and tso > smss else smss
        self._cc.set_mss(smss)

    def _count(self, reason: TcpDrop) -> None:
        c = self.counters
        c[reason] = c.get(reason, 0) + 1

    def _tsval(self, now_us: int) -> int:
        """Our timestamp clock: milliseconds plus the per-connection offset (RFC 7323 5.4)."""
        return (now_us // 1000 + self._ts_offset) & _MASK32

    def _challenge_ack(self, now_us: int) -> None:
        """RFC 5961 7: send an ACK unless the per-connection bucket is empty."""
        if self._challenge_bucket.take(now_us):
            self._owe_ack()
        else:
            self._count(TcpDrop.CHALLENGE_LIMITED)

    def _ack_unacceptable(self, seg: TcpSegment, plen: int, now_us: int) -> None:
        """ACK a segment that failed the sequence or PAWS check (rate-limited if dataless).

        Data that starts before RCV.NXT was sent again, so our ACK was lost
        or came too late: as Linux's tcp_send_dupack does, this enters
        quick-ACK mode and leaves pingpong mode (tcp_enter_quickack_mode).
        """
        if plen == 0 and not seg.flags & (SYN | FIN):
            last = self._oow_last_us
            if last is not None and now_us - last < self.config.oow_ack_interval_us:
                self._count(TcpDrop.OOW_ACK_LIMITED)
                return
            self._oow_last_us = now_us
        elif seq_lt(seg.seq, self.rcv_nxt):
            self._incr_quickack()
            self._pingpong = False
        self._owe_ack()

    def _owe_ack(self) -> None:
        """The segment being processed wants an immediate ACK of its own.

        RFC 5681 4.2 asks for an immediate duplicate ACK for each
        out-of-order segment and an immediate ACK for one that fills a gap,
        RFC 9293 3.10.7.4 for each unacceptable segment, RFC 5961 7 for each
        challenge.  The Stack calls `dispatch` once per burst (ARCHITECTURE.md
        rule 3), so `_ack_now` alone would merge them into one ACK and a
        peer without SACK, which counts duplicate ACKs per packet, would
        never see three.  So the segments are counted here and `dispatch`
        sends that many pure ACKs.  They all carry the RCV.NXT of the
        flush; ACKs owed for an older RCV.NXT would read as duplicates of
        the new one (a false loss signal), so when RCV.NXT moves the count
        restarts, and if it moves after the last one (in-order data or a
        FIN later in the burst), one ACK goes for all (see `dispatch`).
        Only the slow path comes here: the fast path never owes an ACK.
        """
        self._ack_now = True
        n = self._acks_owed
        if n and self._acks_owed_at == self.rcv_nxt:
            if n < MAX_ACKS_PER_DISPATCH:
                self._acks_owed = n + 1
        else:
            self._acks_owed = 1
            self._acks_owed_at = self.rcv_nxt

    def _incr_quickack(self) -> None:
        """Allow quick ACKs: Linux's tcp_incr_quickack(sk, TCP_MAX_QUICKACKS).

        As many as the window we last advertised holds pairs of full
        segments (2 when it holds none), at most `MAX_QUICKACKS`; a count
        already higher is kept.
        """
        wnd = seq_sub(self.rcv_adv, self.last_ack_sent)
        quick = wnd // (2 * self._rcv_mss) if wnd > 0 else 0
        if quick == 0:
            quick = 2
        elif quick > MAX_QUICKACKS:
            quick = MAX_QUICKACKS
        if quick > self._quick:
            self._quick = quick

    def _quickack_on_data(self, now_us: int) -> None:
        """In-order data arrived: the quick-ACK part of Linux's tcp_event_data_recv.

        The first data of the connection, or data after the receiver heard
        no data for longer than the RTO (a sender that restarts from its
        initial window after idle), enters quick-ACK mode.  The caller
        then stores `_last_data_us`.  The fast path asks only for the
        first data since our last ACK: an earlier segment is ACKed within
        `delayed_ack_us`, so a gap longer than the RTO always ends there
        (unless delayed_ack_us is configured above the RTO).
        """
        last = self._last_data_us
        if last is None or now_us - last > self._rtt.rto_us:
            self._incr_quickack()

    def _close_now(self) -> None:
        """Enter CLOSED: stop every timer and forget the data in flight."""
        self.state = CLOSED
        self._rtx_deadline = None
        self._delack_deadline = None
        self._persist_deadline = None
        self._ka_deadline = None
        self._tw_deadline = None
        self._reo_deadline = None
        self._tlp_deadline = None
        self._ack_now = False
        self._acks_owed = 0
        self._rtx_head = False
        self._probe_due = False
        self._ka_due = False
        self._sndbuf.clear()
        self._rcvbuf.discard_out_of_order()

    def _reset(self, code: int | None) -> None:
        self.error = code
        self._close_now()

    def _enter_time_wait(self, now_us: int) -> None:
        self.state = TIME_WAIT
        self._rtx_deadline = None
        self._persist_deadline = None
        self._ka_deadline = None
        self._delack_deadline = None
        self._reo_deadline = None
        self._tlp_deadline = None
        self._tw_deadline = now_us + self.config.time_wait_us
        self._sndbuf.clear()

    def _pipe(self) -> int:
        """Bytes believed in the network (RFC 6675's pipe, or its NewReno equivalent).

        Outside SACK recovery: bytes sent since SND.UNA (up to SND.NXT, which
        a timeout rewinds) less the SACKed ones, or without SACK
        information one segment per duplicate ACK.  In SACK recovery, RFC
        6675 4 with RACK's marks: every byte sent and neither SACKed nor
        marked lost (a retransmission clears the mark, so it counts again).
        """
        if not self._sack_rec:
            pipe = ((self.snd_nxt - self.snd_una + _HALF32) & _MASK32) - _HALF32  # seq_sub
            sb = self._sb
            if sb:
                pipe -= sb.sacked_in(self._una_abs, self._una_abs + pipe)
            else:
                pipe -= self._dup_bytes
            return pipe if pipe > 0 else 0
        pipe = seq_sub(self.snd_max, self.snd_una) - self._rk_sacked - self._rk_lost
        return pipe if pipe > 0 else 0

    def _window_bytes(self, left: int) -> int:
        """The window we would offer now, given `left` bytes of the advertised one remain."""
        space = self._rcvbuf.space
        max_wnd = 65535 << self.rcv_wscale
        if space > max_wnd:
            space = max_wnd
        # Receiver SWS avoidance (RFC 9293 3.8.6.2.2, RFC 1122 4.2.3.3).
        if space - left < min(self._rcvbuf.capacity >> 1, self._rcv_mss):
            return left if left < space else space
        return space

    def _select_window(self) -> int:
        """The 16-bit window field for a non-SYN segment; moves rcv_adv."""
        rcv_nxt = self.rcv_nxt
        left = ((self.rcv_adv - rcv_nxt + _HALF32) & _MASK32) - _HALF32  # seq_sub
        if left < 0:
            left = 0
        wnd = self._window_bytes(left)
        ws = self.rcv_wscale
        field = wnd >> ws
        if ws and (field << ws) < left and ((field + 1) << ws) <= self._rcvbuf.space:
            field += 1  # round up rather than pull the right edge back
        if field > 65535:
            field = 65535
        self.rcv_adv = (rcv_nxt + (field << ws)) & _MASK32  # seq_add
        return field

    # -- input ----------------------------------------------------------------

    def on_segment(self, seg: TcpSegment, payload: Buffer, now_us: int) -> None:
        """Process one segment for this connection (RFC 9293 3.10.7); see the module docstring."""
        self.segs_in += 1
        state = self.state
        if (
            state is ESTABLISHED
            and seg.flags & _FAST_PATH_MASK == ACK
            and seg.seq == self.rcv_nxt
            and self._fast_path(seg, payload, now_us)
        ):
            return
        if state is SYN_SENT:
            self._on_segment_syn_sent(seg, payload, now_us)
            return
        if state is CLOSED or state is LISTEN:
            self._count(TcpDrop.CLOSED_STATE)
            return
        flags = seg.flags
        seq = seg.seq
        plen = len(payload)

        # PAWS (RFC 7323 5.3 R1), before the sequence check.
        if (
            self._ts_ok
            and seg.ts_val is not None
            and not flags & RST
            and seq_lt(seg.ts_val, self._ts_recent)
            and now_us - self._ts_recent_us <= PAWS_IDLE_US
        ):
            if self._reordered_dupack(seg, plen):
                self.paws_exempt_acks += 1
            else:
                self._count(TcpDrop.PAWS)
                self._ack_unacceptable(seg, plen, now_us)
                return

        if flags & SYN:  # never with RST: parse_tcp drops that combination
            if state is SYN_RECEIVED and seq == self.irs:
                if not flags & ACK:
                    # Our SYN-ACK was lost and the peer retransmitted its SYN.
                    self.snd_nxt = self.iss
                    return
                if seq_gt(seg.ack, self.snd_una) and seq_le(seg.ack, self.snd_max):
                    # Simultaneous open (RFC 9293 figure 8, line 6): the peer's
                    # SYN-ACK acknowledges our SYN.  Linux accepts it the same way.
                    self._establish(seg, now_us)
                    return
            # RFC 5961 4.2: a SYN anywhere draws a challenge ACK.
            self._count(TcpDrop.SYN_CHALLENGED)
            self._challenge_ack(now_us)
            return

        # First: sequence number (RFC 9293 3.10.7.4 acceptability table).
        rcv_nxt = self.rcv_nxt
        wnd = seq_sub(self.rcv_adv, rcv_nxt)
        if wnd < 0:
            wnd = 0
        fin = flags & FIN
        seg_len = plen + (1 if fin else 0)
        off = seq_sub(seq, rcv_nxt)
        if seg_len == 0:
            ok = off == 0 if wnd == 0 else 0 <= off < wnd
        elif wnd == 0:
            ok = off == 0  # only the ACK (and a bare FIN) of it will count
        else:
            last = off + seg_len - 1
            ok = 0 <= off < wnd or 0 <= last < wnd
        if not ok:
            if state is TIME_WAIT and fin and seq_add(seq, plen) == seq_add(rcv_nxt, -1):
                # A retransmitted FIN: ACK it and restart 2 MSL (RFC 9293 3.10.7.4 eighth).
                self._tw_deadline = now_us + self.config.time_wait_us
            if not flags & RST:
                self._ack_unacceptable(seg, plen, now_us)
            self._count(TcpDrop.OUT_OF_WINDOW)
            return

        # The peer is alive (for keepalive and the zero-window timeout).
        self._last_rx_us = now_us
        self._ka_probes = 0

        # Second: RST (RFC 5961 3.2).
        if flags & RST:
            if state is TIME_WAIT:
                self._count(TcpDrop.RST_IGNORED)
            elif off == 0:
                self._on_rst()
            else:
                self._count(TcpDrop.RST_CHALLENGED)
                self._challenge_ack(now_us)
            return

        # Fifth: ACK.
        if not flags & ACK:
            self._count(TcpDrop.NO_ACK)
            return
        ack = seg.ack
        if state is SYN_RECEIVED:
            if seq_gt(ack, self.snd_una) and seq_le(ack, self.snd_max):
                self._establish(seg, now_us)
                state = self.state
            else:
                self._count(TcpDrop.BAD_ACK)
                self._rst_out.append((ack, 0, RST))
                return
        if seq_gt(ack, self.snd_max):
            self._count(TcpDrop.ACK_UNSENT)
            self._challenge_ack(now_us)
            return
        if seq_lt(ack, seq_add(self.snd_una, -self.max_snd_wnd)):
            self._count(TcpDrop.ACK_TOO_OLD)
            self._challenge_ack(now_us)
            return
        ts_val = seg.ts_val
        if (
            self._ts_ok
            and ts_val is not None
            and seq_le(seq, self.last_ack_sent)
            and seq_ge(ts_val, self._ts_recent)
        ):
            self._ts_recent = ts_val  # RFC 7323 4.3
            self._ts_recent_us = now_us
        if not self._on_ack(seg, plen, now_us):
            return

        # Seventh and eighth: text and FIN.
        if (plen or fin) and self.state in _RECEIVE_STATES:
            self._on_text(seq, payload, fin, now_us)

    def _reordered_dupack(self, seg: TcpSegment, plen: int) -> bool:
        """May a segment that failed PAWS be processed anyway? (Linux's tcp_disordered_ack)

        PAWS exists to keep old duplicate *data* from a wrapped sequence
        space out of the receive buffer (RFC 7323 5).  A pure ACK at exactly
        RCV.NXT that acknowledges exactly SND.UNA, leaves the send window as
        it is and whose TSval is less than one RTO older than TS.Recent
        brings no data and changes no state a replay could abuse: it is a
        duplicate ACK the network reordered behind a newer one (ACKs of one
        flight carry TSvals a millisecond apart).  Dropping it, as RFC 7323
        5.3 R1 read literally does, loses its SACK blocks and its count as a
        duplicate ACK, and answers it with an ACK of our own; Linux exempts
        exactly these segments, and so do we.  TS.Recent is not moved by
        them (RFC 7323 4.3 takes only newer TSvals).
        """
        if plen or seg.flags & (SYN | FIN | RST) or not seg.flags & ACK:
            return False
        seq = seg.seq
        if seq != self.rcv_nxt or seg.ack != self.snd_una:
            return False
        wnd = seg.window << self.snd_wscale
        if seq_gt(seq, self.snd_wl1) or (seq == self.snd_wl1 and (wnd > self.snd_wnd or wnd == 0)):
            return False  # it could update the window (Linux's tcp_may_update_window)
        age_ms = (self._ts_recent - (seg.ts_val or 0)) & _MASK32
        return age_ms * 1000 <= self._rtt.rto_us

    def _fast_path(self, seg: TcpSegment, payload: Buffer, now_us: int) -> bool:
        """Header prediction (Linux's tcp_rcv_established): the common in-order segment.

        Taken in ESTABLISHED for an ACK without SYN, FIN, RST or URG at
        exactly RCV.NXT that passes PAWS, acknowledges nothing or new data
        within SND.MAX, carries data or new acknowledgment (a pure duplicate
        ACK goes the slow way), fits the window, and arrives while no
        recovery runs and no out-of-order data waits.  Such a segment passes
        every check of RFC 9293 3.10.7.4, so the numbered steps reduce to
        the ACK and the data; anything else returns False for the slow path.
        """
        ts_ok = self._ts_ok
        ts_val = seg.ts_val
        # seq_lt(ts_val, TS.Recent)
        if ts_ok and (ts_val is None or ((ts_val - self._ts_recent) & _MASK32) >= _HALF32):
            return False
        ack = seg.ack
        una = self.snd_una
        acked = ((ack - una + _HALF32) & _MASK32) - _HALF32  # seq_sub(ack, una)
        plen = len(payload)
        if (
            acked < 0
            or acked > ((self.snd_max - una + _HALF32) & _MASK32) - _HALF32  # seq_sub
            or (acked == 0 and plen == 0)
            or self._in_recovery
            or self._dupacks
            or self._app_closed
            or seg.sack_blocks
            or self._rk_sacked
            or self._una_abs < self._rk_retx_hi
            or self._tlp_end is not None
        ):
            return False
        rcvbuf = self._rcvbuf
        if plen:
            left = ((self.rcv_adv - self.rcv_nxt + _HALF32) & _MASK32) - _HALF32  # seq_sub
            if (
                plen > left
                or plen > rcvbuf.space
                or rcvbuf.has_out_of_order
                or self._fin_rcv_seq is not None
            ):
                return False
        self._last_rx_us = now_us
        self._ka_probes = 0
        seq = seg.seq
        if ts_ok and ts_val is not None and seq == self.last_ack_sent:
            self._ts_recent = ts_val
            self._ts_recent_us = now_us
        if acked:
            self._ack_advance(ack, acked, seg, now_us)
        wl1 = self.snd_wl1
        # seq_lt(SND.WL1, seq) or (SND.WL1 == seq and seq_le(SND.WL2, ack))
        if ((wl1 - seq) & _MASK32) >= _HALF32 or (
            wl1 == seq and ((ack - self.snd_wl2) & _MASK32) <= _HALF32
        ):
            wnd = seg.window << self.snd_wscale
            self.snd_wnd = wnd
            self.snd_wl1 = seq
            self.snd_wl2 = ack
            if wnd > self.max_snd_wnd:
                self.max_snd_wnd = wnd
        if plen:
            rcvbuf.write(payload)
            self.rcv_nxt = (seq + plen) & _MASK32  # seq_add
            self.bytes_received += plen
            delack = self._delack_bytes + plen
            self._delack_bytes = delack
            if delack == plen:
                # The first data since our last ACK: only here can it be the
                # first of the connection or follow an idle gap (see
                # `_quickack_on_data`), so later segments skip the test.
                self._quickack_on_data(now_us)
            self._last_data_us = now_us
            # A deliberate stretch ACK: `_ack_now` says "ACK at the flush",
            # which comes once per burst (ARCHITECTURE.md rule 3), so one
            # ACK covers all in-order data of the burst (see "Delayed ACK").
            if delack >= 2 * self._rcv_mss:
                self._ack_now = True
            elif self._quick and not self._pingpong:
                self._ack_now = True  # quick-ACK mode (Linux's tcp_in_quickack_mode)
            elif self._delack_deadline is None:
                self._delack_deadline = now_us + self.config.delayed_ack_us
        return True

    def _on_segment_syn_sent(self, seg: TcpSegment, payload: Buffer, now_us: int) -> None:
        """RFC 9293 3.10.7.3."""
        flags = seg.flags
        ack = seg.ack
        ack_ok = False
        if flags & ACK:
            if seq_le(ack, self.iss) or seq_gt(ack, self.snd_max):
                self._count(TcpDrop.BAD_ACK)
                if not flags & RST:
                    self._rst_out.append((ack, 0, RST))
                return
            ack_ok = True
        if flags & RST:
            if ack_ok:
                self._reset(errno.ECONNREFUSED)
            else:
                self._count(TcpDrop.RST_IGNORED)
            return
        if not flags & SYN:
            self._count(TcpDrop.NOT_SYN)
            return
        self._last_rx_us = now_us
        self._take_syn(seg, now_us)
        if ack_ok:
            self._establish(seg, now_us)
            self._ack_now = True
            if len(payload) or flags & FIN:
                self._on_text(seq_add(seg.seq, 1), payload, flags & FIN, now_us)
        else:
            # Simultaneous open: answer with SYN-ACK <SEQ=ISS><ACK=RCV.NXT>.
            self.state = SYN_RECEIVED
            self.snd_nxt = self.iss

    def _establish(self, seg: TcpSegment, now_us: int) -> None:
        """Our SYN is acknowledged by `seg`: ESTABLISHED (or on to FIN-WAIT-1)."""
        ack = seg.ack
        self.snd_una = ack
        if seq_lt(self.snd_nxt, ack):
            self.snd_nxt = ack
        wnd = seg.window if seg.flags & SYN else seg.window << self.snd_wscale
        self.snd_wnd = wnd
        if wnd > self.max_snd_wnd:
            self.max_snd_wnd = wnd
        self.snd_wl1 = seg.seq
        self.snd_wl2 = ack
        self._recover = ack
        if self._rtt_seq is not None and seq_ge(ack, self._rtt_seq):
            self._rtt.on_sample(now_us - self._rtt_sent_us)
        elif self._ts_ok and seg.ts_ecr:
            self._ts_sample(seg.ts_ecr, now_us)
        self._rtt_seq = None
        if self._syn_retransmitted:
            self._rtt.on_handshake_retransmitted()
        self._retries = 0
        self._rtx_deadline = None
        self.state = ESTABLISHED
        if self.config.keepalive:
            self._ka_deadline = now_us + self.config.keepalive_idle_us
        if self._fin_queued:
            self._fin_seq = seq_add(self.snd_una, len(self._sndbuf))
            self.state = FIN_WAIT_1

    def _ts_sample(self, ts_ecr: int, now_us: int) -> None:
        delta = (self._tsval(now_us) - ts_ecr) & _MASK32
        if delta < 0x80000000 and delta * 1000 <= self.config.max_rto_us:
            self._rtt.on_sample(max(delta, 1) * 1000)

    def _on_rst(self) -> None:
        state = self.state
        if state is SYN_RECEIVED:
            # Passive: the listener carries on; active (simultaneous open): refused.
            self._reset(errno.ECONNREFUSED if self._active else None)
        elif state in (CLOSING, LAST_ACK) or self._app_closed:
            self._reset(None)
        else:
            self._reset(errno.ECONNRESET)

    def _on_ack(self, seg: TcpSegment, plen: int, now_us: int) -> bool:
        """RFC 9293 3.10.7.4 fifth step for a valid ACK; False if processing stops."""
        ack = seg.ack
        una = self.snd_una
        acked = seq_sub(ack, una)
        wnd = seg.window << self.snd_wscale
        rack_xmit = self._rack_xmit
        rack_end = self._rack_end
        if acked > 0:
            self._ack_advance(ack, acked, seg, now_us)
        new_sacked = 0
        blocks = seg.sack_blocks
        if blocks and self._sack_ok:
            if self._is_dsack(blocks, ack):
                self._on_dsack(blocks[0])
            if self.snd_max != self.snd_una:
                new_sacked = self._sack_update(blocks, now_us)
        if self._tlp_end is not None:
            self._tlp_on_ack(seg, acked, new_sacked, now_us)
        if self._sack_ok and (
            rack_xmit != self._rack_xmit
            or rack_end != self._rack_end
            or (acked > 0 and self._reo_deadline is not None)
        ):
            # RFC 8985 6.2 step 5 after new deliveries; also when the ACK may
            # have delivered what the reordering timer waits for.
            self._rack_check(now_us)
        # RFC 5681 2 duplicate ACK, or RFC 6675 2: an ACK that SACKs new data.
        if (
            acked == 0
            and self.snd_max != una
            and (new_sacked or (plen == 0 and not seg.flags & FIN and wnd == self.snd_wnd))
        ):
            self._on_dupack(now_us)
        # Window update (SND.WL1/SND.WL2 rule); ACKs older than SND.UNA do not count.
        if acked >= 0 and (
            seq_lt(self.snd_wl1, seg.seq) or (self.snd_wl1 == seg.seq and seq_le(self.snd_wl2, ack))
        ):
            self.snd_wnd = wnd
            self.snd_wl1 = seg.seq
            self.snd_wl2 = ack
            if wnd > self.max_snd_wnd:
                self.max_snd_wnd = wnd
        if self._fin_acked:
            state = self.state
            if state is FIN_WAIT_1:
                self.state = FIN_WAIT_2
                if self._app_closed:
                    self._tw_deadline = now_us + self.config.fin_wait2_timeout_us
            elif state is CLOSING:
                self._enter_time_wait(now_us)
                return False
            elif state is LAST_ACK:
                self._close_now()
                return False
        return True

    def _ack_advance(self, ack: int, acked: int, seg: TcpSegment, now_us: int) -> None:
        """New data (or our FIN) acknowledged."""
        # Whether cwnd limited the sender is judged by the flight after its
        # last transmission, as Linux's is_cwnd_limited is: segments leave
        # only at the end of a burst, so every ACK of a burst but the first
        # would otherwise see a flight its predecessors already drained and
        # be taken for application-limited.
        pipe_before = max(self._pipe(), self._sent_pipe)
        data = acked
        fin_seq = self._fin_seq
        if fin_seq is not None and seq_gt(ack, fin_seq):
            data -= 1
            self._fin_acked = True
        buffered = len(self._sndbuf)
        if data > buffered:
            data = buffered
        self._sndbuf.consume(data)
        self.snd_una = ack
        if ((self.snd_nxt - ack) & _MASK32) >= _HALF32:  # seq_lt(SND.NXT, ack)
            self.snd_nxt = ack
        self.bytes_acked += data
        self._retries = 0
        old_abs = self._una_abs
        self._una_abs = una_abs = old_abs + acked
        if self._sb:
            self._sb.advance(una_abs)
        if self._rk_end:
            self._rk_acked(old_abs, una_abs, now_us)
        self._tlp_rearm = True
        # RTT sample: the timed segment (Karn), else TSecr (RFC 7323 4).
        rtt_seq = self._rtt_seq
        if rtt_seq is not None and ((ack - rtt_seq) & _MASK32) < _HALF32:  # seq_ge(ack, rtt_seq)
            self._rtt.on_sample(now_us - self._rtt_sent_us)
            self._rtt_seq = None
        elif rtt_seq is None and self._ts_ok and seg.ts_ecr:
            self._ts_sample(seg.ts_ecr, now_us)
        # Congestion control and recovery (RFC 5681, RFC 6582).
        if self._in_recovery:
            if seq_ge(ack, self._recover):
                self._in_recovery = False
                self._sack_rec = False
                self._dupacks = 0
                self._dup_bytes = 0
                self._cc.on_exit_recovery(now_us)
                if self._rack_wnd_persist > 0:  # RFC 8985 6.2 step 4
                    self._rack_wnd_persist -= 1
                    if self._rack_wnd_persist == 0:
                        self._rack_wnd_mult = 1
            elif not self._sack_rec:
                # Partial ACK: retransmit the next hole; what it covered beyond one
                # segment had been counted as left the network by duplicate ACKs.
                self._rtx_head = True
                covered = data - self.smss
                if covered > 0:
                    self._dup_bytes = max(self._dup_bytes - covered, 0)
                self._rtt_seq = None
        else:
            self._dupacks = 0
            self._dup_bytes = 0
            self._cc.on_ack(data, now_us, self._rtt.srtt_us, pipe_before)
        # Retransmission timer (RFC 6298 5.2, 5.3).
        if ack == self.snd_max:
            self._rtx_deadline = None
            self._reo_deadline = None
        else:
            self._rtx_deadline = now_us + self._rtt.rto_us
        self._persist_backoff = 0

    def _on_dupack(self, now_us: int) -> None:
        self._dupacks += 1
        self._dup_bytes += self.smss
        if not self._in_recovery:
            self._maybe_enter_recovery(now_us)

    def _maybe_enter_recovery(self, now_us: int) -> None:
        """Fast retransmit: RACK marked a loss, or DupThresh duplicate ACKs without SACK."""
        if self._sack_ok:
            if not self._rk_lost and (self._dupacks < DUPACK_THRESHOLD or self._rk_sacked):
                return
        elif self._dupacks < DUPACK_THRESHOLD:
            return
        # RFC 6582 3.2 step 2 (and RFC 6675 5 step 2): not again for data sent
        # before the last recovery or timeout.
        if not seq_ge(self.snd_una, self._recover):
            return
        if self._sack_ok and not self._rk_lost:
            # Duplicate ACKs that carry no SACK blocks although SACK was
            # negotiated: RFC 5681's DupThresh declares the first segment lost.
            self._rk_mark_lost(self._una_abs, self._una_abs + self.smss)
        # FlightSize as of the last transmission: earlier ACKs of this burst
        # have drained the flight, and nothing was sent in between.
        flight = max(seq_sub(self.snd_max, self.snd_una), self._sent_pipe)
        self._recover = self.snd_max
        self._in_recovery = True
        self._sack_rec = self._sack_ok
        self._cc.on_enter_recovery(now_us, flight)
        self._rtx_head = True  # RFC 6675 5 step 4.3 / RFC 6582: the first segment at once
        self._rtt_seq = None
        self._tlp_deadline = None
        self.recoveries += 1

    def _abs(self, seq: int) -> int:
        """Sequence number -> absolute offset (valid within the send window)."""
        return self._una_abs + seq_sub(seq, self.snd_una)

    def _sack_update(self, blocks: tuple[tuple[int, int], ...], now_us: int) -> int:
        """Add the peer's SACK blocks to the scoreboard and the transmission record.

        Returns the newly SACKed bytes.  A block must lie within (SND.UNA,
        SND.MAX] (RFC 2018 / RFC 6675 3); others, D-SACK blocks (RFC 2883)
        among them, are ignored here.
        """
        una = self.snd_una
        flight = seq_sub(self.snd_max, una)
        base = self._una_abs
        new = 0
        for left, right in blocks:
            a = seq_sub(left, una)
            b = seq_sub(right, una)
            if 0 < a < b <= flight:
                new += self._sb.add(base + a, base + b)
                self._rk_sack(base + a, base + b, now_us)
        return new

    @staticmethod
    def _is_dsack(blocks: tuple[tuple[int, int], ...], ack: int) -> bool:
        """RFC 2883 4: the first block reports a duplicate if it lies below SEG.ACK
        or within the second block."""
        left, right = blocks[0]
        if seq_le(right, ack):
            return True
        if len(blocks) > 1:
            l2, r2 = blocks[1]
            return seq_ge(left, l2) and seq_le(right, r2)
        return False

    def _on_dsack(self, block: tuple[int, int]) -> None:
        """A D-SACK arrived: widen RACK's reordering window once per round (RFC 8985 6.2 step 4)."""
        self.dsacks += 1
        rnd = self._rack_dsack_round
        if rnd is not None and seq_ge(self.snd_una, rnd):
            rnd = self._rack_dsack_round = None
        if rnd is None:
            self._rack_dsack_round = self.snd_max
            self._rack_wnd_mult += 1
            self._rack_wnd_persist = RACK_PERSIST_RECOVERIES
        end = self._tlp_end
        if end is not None and self._tlp_retrans:
            left, right = block
            if seq_lt(left, end) and seq_gt(right, self._tlp_seq):
                # Both the probe and what it repeated arrived: no loss (RFC 8985 7.4.2).
                self._tlp_end = None

    # -- RACK-TLP (RFC 8985) ------------------------------------------------------
    #
    # The transmission record: entries [start, end) in sequence order that
    # partition [SND.UNA, SND.MAX) as absolute offsets; an entry's start is
    # the previous entry's end (or SND.UNA).  Segments of one burst share a
    # transmit time, so new data sent at the same time as the last entry
    # extends it; a SACK block or a retransmission that covers part of an
    # entry splits it, and adjacent SACKed entries merge again.  RACK's
    # "sent after" order is (transmit time, end); within an entry the bytes
    # are "sent before" anything later in the same entry, which splitting at
    # every SACK edge makes exact for the delivered ranges.

    def _rk_sent(self, pos: int, length: int, retrans: int, now_us: int) -> None:
        """[pos, pos + length) went out at `now_us`; its first `retrans` bytes went before."""
        if retrans:
            self._rk_retransmitted(pos, pos + retrans, now_us)
            if retrans >= length:
                return
            pos += retrans
            length -= retrans
        ends = self._rk_end
        if ends and ends[-1] == pos and self._rk_xmit[-1] == now_us and not self._rk_flags[-1]:
            ends[-1] = pos + length
        else:
            ends.append(pos + length)
            self._rk_xmit.append(now_us)
            self._rk_flags.append(0)

    def _rk_split(self, pos: int) -> int:
        """Make `pos` an entry boundary; return the index of the entry that starts there."""
        ends = self._rk_end
        i = bisect_right(ends, pos)
        if i < len(ends) and (ends[i - 1] if i else self._una_abs) < pos:
            ends.insert(i, pos)
            self._rk_xmit.insert(i, self._rk_xmit[i])
            self._rk_flags.insert(i, self._rk_flags[i])
            i += 1
        return i

    def _rk_retransmitted(self, a: int, b: int, now_us: int) -> None:
        """[a, b) was sent again at `now_us`: one entry, in flight, retransmitted."""
        i = self._rk_split(a)
        j = self._rk_split(b)
        if i >= j:
            return
        ends = self._rk_end
        flags = self._rk_flags
        start = ends[i - 1] if i else self._una_abs
        for k in range(i, j):
            f = flags[k]
            if f & _RK_LOST:
                self._rk_lost -= ends[k] - start
            elif f & _RK_SACKED:
                self._rk_sacked -= ends[k] - start
            start = ends[k]
        if j - i > 1:
            del ends[i : j - 1]
            del self._rk_xmit[i : j - 1]
            del flags[i : j - 1]
        self._rk_xmit[i] = now_us
        flags[i] = _RK_RETRANS
        if b > self._rk_retx_hi:
            self._rk_retx_hi = b

    def _rk_mark_lost(self, a: int, b: int) -> None:
        """Mark the unSACKed entries within [a, b) lost (DupThresh without SACK blocks)."""
        i = self._rk_split(a)
        j = self._rk_split(b)
        ends = self._rk_end
        flags = self._rk_flags
        start = ends[i - 1] if i else self._una_abs
        for k in range(i, j):
            f = flags[k]
            if not f & (_RK_SACKED | _RK_LOST):
                flags[k] = f | _RK_LOST
                self._rk_lost += ends[k] - start
            start = ends[k]

    def _rk_acked(self, old: int, una: int, now_us: int) -> None:
        """SND.UNA moved from `old` to `una`: drop the entries below it, delivering them."""
        ends = self._rk_end
        flags = self._rk_flags
        xmit = self._rk_xmit
        n = len(ends)
        k = 0
        start = old
        while k < n:
            e = ends[k]
            f = flags[k]
            if e > una:
                if una > start:  # the ACK ends inside this entry
                    if f & _RK_LOST:
                        self._rk_lost -= una - start
                    elif f & _RK_SACKED:
                        self._rk_sacked -= una - start
                    else:
                        self._rack_deliver(xmit[k], una, f, now_us)
                break
            if f & _RK_SACKED:
                self._rk_sacked -= e - start
            else:
                if f & _RK_LOST:
                    self._rk_lost -= e - start
                self._rack_deliver(xmit[k], e, f, now_us)
            start = e
            k += 1
        if k:
            del ends[:k]
            del xmit[:k]
            del flags[:k]

    def _rk_sack(self, a: int, b: int, now_us: int) -> None:
        """The peer SACKed [a, b): mark the entries, delivering those not SACKed before."""
        ends = self._rk_end
        flags = self._rk_flags
        xmit = self._rk_xmit
        i = bisect_right(ends, a)
        while i < len(ends):
            start = ends[i - 1] if i else self._una_abs
            if start >= b:
                break
            f = flags[i]
            if f & _RK_SACKED:
                i += 1
                continue
            if start < a:
                ends.insert(i, a)
                xmit.insert(i, xmit[i])
                flags.insert(i, f)
                i += 1
                start = a
            e = ends[i]
            if e > b:
                ends.insert(i, b)
                xmit.insert(i, xmit[i])
                flags.insert(i, f)
                e = b
            if f & _RK_LOST:
                self._rk_lost -= e - start
            self._rk_sacked += e - start
            self._rack_deliver(xmit[i], e, f, now_us)
            flags[i] = _RK_SACKED
            if i and flags[i - 1] & _RK_SACKED:
                ends[i - 1] = e  # merge with the SACKed entry before
                del ends[i]
                del xmit[i]
                del flags[i]
            else:
                i += 1
        if 0 < i < len(ends) and flags[i] & _RK_SACKED and flags[i - 1] & _RK_SACKED:
            del ends[i - 1]
            del xmit[i - 1]
            del flags[i - 1]

    def _rack_deliver(self, xmit_us: int, end: int, flags: int, now_us: int) -> None:
        """RFC 8985 6.2 steps 2 and 3 for one newly ACKed or SACKed range."""
        if end > self._rack_fack:
            self._rack_fack = end
        elif end < self._rack_fack and not flags & _RK_RETRANS:
            self._rack_reord = True  # delivered below something delivered before
        if flags & _RK_RETRANS:
            # Which copy arrived?  Not this one if the round trip would be
            # shorter than any seen (Linux's tcp_rack_advance).  RFC 8985
            # also rejects an echoed TSval older than the retransmission,
            # but a receiver echoes the TSval of its last in-order segment
            # (RFC 7323 4.3), so every SACK of a retransmission that left a
            # hole below it would be rejected: Linux leaves that test out.
            min_rtt = self._rtt.min_rtt_us
            if min_rtt is not None and now_us - xmit_us < min_rtt:
                return
        if xmit_us > self._rack_xmit or (xmit_us == self._rack_xmit and end > self._rack_end):
            self._rack_xmit = xmit_us
            self._rack_end = end
            self._rack_rtt = now_us - xmit_us

    def _rack_reo_wnd(self) -> int:
        """RFC 8985 6.2 step 4: how long a segment sent before a delivered one may still come."""
        if not self._rack_reord:
            if seq_lt(self.snd_una, self._recover):
                return 0  # in fast or timeout recovery, with no reordering seen
            if self._rk_sacked >= DUPACK_THRESHOLD * self.smss:
                return 0  # DupThresh would have declared the loss
        rtt = self._rtt
        wnd = self._rack_wnd_mult * ((rtt.min_rtt_us or 0) >> 2)
        srtt = rtt.srtt_us or 0
        return wnd if wnd < srtt else srtt

    def _rack_detect(self, now_us: int) -> int:
        """RFC 8985 6.2 step 5: mark lost what was sent before the most recently
        delivered segment and is overdue by the reordering window; return how
        long until the next one would be (0: none waits)."""
        rack_xmit = self._rack_xmit
        if rack_xmit < 0:
            return 0
        rack_end = self._rack_end
        wait = self._rack_rtt + self._rack_reo_wnd() - now_us
        ends = self._rk_end
        flags = self._rk_flags
        xmit = self._rk_xmit
        retx_hi = self._rk_retx_hi
        start = self._una_abs
        timeout = 0
        for k in range(len(ends)):
            e = ends[k]
            f = flags[k]
            if not f & (_RK_SACKED | _RK_LOST):
                x = xmit[k]
                if x < rack_xmit or (x == rack_xmit and e < rack_end):
                    remaining = x + wait
                    if remaining <= 0:
                        flags[k] = f | _RK_LOST
                        self._rk_lost += e - start
                    elif remaining > timeout:
                        timeout = remaining
                elif start >= retx_hi:
                    # Never retransmitted from here on: later entries were sent later.
                    break
            start = e
        return timeout

    def _rack_check(self, now_us: int) -> None:
        """Run RACK's loss detection, arm its reordering timer, start recovery on a loss."""
        timeout = self._rack_detect(now_us)
        self._reo_deadline = now_us + timeout if timeout else None
        if self._rk_lost and not self._in_recovery:
            self._maybe_enter_recovery(now_us)

    def _rk_first_lost(self, limit: int) -> tuple[int, int] | None:
        """The first range marked lost below `limit` (NextSeg rule 1 with RACK's marks)."""
        if not self._rk_lost:
            return None
        ends = self._rk_end
        start = self._una_abs
        for k, f in enumerate(self._rk_flags):
            if start >= limit:
                return None
            e = ends[k]
            if f & _RK_LOST:
                return start, e if e < limit else limit
            start = e
        return None

    def _tlp_arm(self, now_us: int) -> None:
        """RFC 8985 7.2: (re)start the probe timeout after new data went out or was ACKed."""
        if (
            self._in_recovery
            or self._rk_sacked
            or self._tlp_end is not None
            or ((self.snd_una - self._recover) & _MASK32) >= _HALF32  # seq_lt(SND.UNA, recover)
            or self.snd_nxt != self.snd_max
        ):
            self._tlp_deadline = None
            return
        if not self._tlp_rearm and self._tlp_deadline is not None:
            return
        self._tlp_rearm = False
        srtt = self._rtt.srtt_us
        if srtt is None:
            pto = TLP_NO_RTT_PTO_US
        elif ((self.snd_max - self.snd_una + _HALF32) & _MASK32) - _HALF32 <= self.smss:  # seq_sub
            pto = 2 * srtt + TLP_DELACK_US
        else:
            pto = 2 * srtt + TLP_SLACK_US
        deadline = now_us + pto
        rtx = self._rtx_deadline
        if rtx is not None and deadline > rtx:
            deadline = rtx
        self._tlp_deadline = deadline

    def _tlp_on_ack(self, seg: TcpSegment, acked: int, new_sacked: int, now_us: int) -> None:
        """RFC 8985 7.4: did the probe repair a loss?"""
        end = self._tlp_end
        if end is None or seq_lt(seg.ack, end):
            return
        if not self._tlp_retrans:
            self._tlp_end = None  # a probe of new data: RACK sees to any loss
        elif seq_gt(seg.ack, end):
            # Only one copy was needed: the probe repaired a lost tail, a
            # congestion event the window must answer (Linux enters CWR).
            self._tlp_end = None
            self.tlp_recoveries += 1
            if not self._in_recovery:
                self._cc.on_enter_recovery(now_us, max(self._sent_pipe, self.smss))
                self._cc.on_exit_recovery(now_us)
        elif acked == 0 and not new_sacked and not seg.sack_blocks:
            self._tlp_end = None  # a duplicate ACK without SACK: nothing to learn

    def _send_tlp(self, out: list[OutSegment], now_us: int) -> None:
        """RFC 8985 7.3: one new segment if the window allows, else the last one sent again."""
        self.tlp_probes += 1
        sndbuf = self._sndbuf
        off = seq_sub(self.snd_nxt, self.snd_una)
        n = min(len(sndbuf) - off, self.snd_wnd - off, self.smss)
        if n > 0:
            self._tlp_seq = self.snd_nxt
            self._tlp_retrans = False
            self._send_data(out, off, n, now_us)
        else:
            sent = min(seq_sub(self.snd_max, self.snd_una), len(sndbuf))
            n = min(sent, self.smss)
            saved = self.snd_nxt
            self.snd_nxt = seq_add(self.snd_una, sent - n)
            self._tlp_seq = self.snd_nxt
            self._tlp_retrans = True
            self._send_data(out, sent - n, n, now_us)
            if seq_gt(saved, self.snd_nxt):
                self.snd_nxt = saved
        self._tlp_end = self.snd_max

    def _on_text(self, dseq: int, payload: Buffer, fin: int, now_us: int) -> None:
        """Seventh and eighth steps: `payload` starts at sequence number `dseq`."""
        plen = len(payload)
        fin_at = seq_add(dseq, plen)
        start = seq_sub(dseq, self.rcv_nxt)
        data: Buffer = payload
        if start < 0:
            data = payload[-start:] if -start < plen else b""
            start = 0
        n = len(data)
        immediate = False  # this segment owes an ACK of its own (see _owe_ack)
        wnd = seq_sub(self.rcv_adv, self.rcv_nxt)
        room = self._rcvbuf.space
        if wnd > room:
            wnd = room
        if start + n > wnd:
            keep = wnd - start
            data = data[:keep] if keep > 0 else b""
            n = len(data)
            fin = 0
            immediate = True  # tell the sender where the window ends
        if n and self._app_closed:
            # Data after close(): nobody will read it (RFC 2525 2.17, Linux).
            self._send_rst = True
            self._reset(None)
            return
        rcvbuf = self._rcvbuf
        if n:
            if start == 0:
                had_holes = rcvbuf.has_out_of_order
                adv = rcvbuf.write(data)
                self.rcv_nxt = seq_add(self.rcv_nxt, adv)
                self.bytes_received += adv
                self._quickack_on_data(now_us)
                self._last_data_us = now_us
                if had_holes:
                    immediate = True  # a hole (partly) filled: RFC 5681 4.2
                else:
                    # Stretch ACK, deliberately: past 2 * rcv_mss the ACK is
                    # owed at once, but it leaves at the flush that ends the
                    # burst (ARCHITECTURE.md rule 3), so one ACK covers every
                    # in-order segment of the burst (see "Delayed ACK").
                    self._delack_bytes += adv
                    if self._delack_bytes >= 2 * self._rcv_mss:
                        self._ack_now = True
                    elif self._quick and not self._pingpong:
                        self._ack_now = True  # quick-ACK mode (Linux's tcp_in_quickack_mode)
                    elif self._delack_deadline is None:
                        self._delack_deadline = now_us + self.config.delayed_ack_us
            else:
                if rcvbuf.insert(start, data):
                    if fin:
                        self._fin_rcv_seq = fin_at
                else:
                    self._count(TcpDrop.OOO_RANGES)
                fin = 0
                immediate = True  # out of order: duplicate ACK at once (RFC 5681 4.2)
        elif fin and start > 0:
            self._fin_rcv_seq = fin_at
            fin = 0
            immediate = True
        if immediate:
            self._owe_ack()  # after RCV.NXT moved: the ACK names the new one
        if (fin and fin_at == self.rcv_nxt) or (
            self._fin_rcv_seq is not None and self._fin_rcv_seq == self.rcv_nxt
        ):
            self._on_fin(now_us)

    def _on_fin(self, now_us: int) -> None:
        """The peer's FIN, in order (RFC 9293 3.10.7.4 eighth)."""
        self.rcv_nxt = seq_add(self.rcv_nxt, 1)
        self._rcv_fin = True
        self._fin_rcv_seq = None
        self._rcvbuf.discard_out_of_order()
        self._ack_now = True
        self._delack_deadline = None
        state = self.state
        if state is ESTABLISHED:
            self.state = CLOSE_WAIT
        elif state is FIN_WAIT_1:
            # Our FIN is not yet acknowledged (else we would be in FIN-WAIT-2).
            self.state = CLOSING
        elif state is FIN_WAIT_2:
            self._enter_time_wait(now_us)

    # -- path MTU discovery (RFC 1191, RFC 5927) --------------------------------

    def on_path_mtu(self, mtu: int, now_us: int, *, datagram_len: int = 0) -> bool:
        """ICMP "fragmentation needed": a hop on the path carries at most `mtu` bytes.

        The Stack calls this once it matched the quoted segment to this
        connection and found its sequence number in flight (RFC 5927 4.1).
        `datagram_len` is the quoted datagram's total length: with `mtu` 0
        (a router older than RFC 1191) the estimate is the plateau below
        it, or below the path MTU we use without it (RFC 1191 5 and 7).
        Returns True when the send MSS went down; then what is in flight
        goes again at the next `dispatch` (see "Path MTU discovery" in the
        module docstring).
        """
        if self.state not in _OUTPUT_STATES:
            self._count(TcpDrop.PMTU_STATE)
            return False
        if mtu <= 0:
            size = datagram_len if datagram_len > 0 else self._mss_base + 40
            mtu = next((p for p in PMTU_PLATEAUS if p < size), 0)
        mtu = max(mtu, PMTU_MIN)
        if mtu - 40 >= self._mss_base:
            self._count(TcpDrop.PMTU_NOT_LOWER)  # never raised from ICMP (RFC 1191 6.3)
            return False
        self._pmtu = mtu
        self._set_send_mss(mtu - 40)
        self._pmtu_retransmit(now_us)
        return True

    def _pmtu_retransmit(self, now_us: int) -> None:
        """Send the flight again in the new size (Linux's tcp_simple_retransmit).

        Every unSACKed byte in flight is marked lost; outside a SACK recovery
        the sender goes back to SND.UNA as after a timeout (skipping what is
        SACKed), inside one NextSeg resends the marked ranges.  `recover`
        moves to SND.MAX: duplicate ACKs for data sent before now start no
        fast retransmit.  Not a congestion signal, so cwnd and ssthresh stay
        (Linux: "we do not increase amount of _data_ in network, but units
        changed") and the RTO does not back off; the timer restarts for the
        retransmission.
        """
        una = self.snd_una
        flight = seq_sub(self.snd_max, una)
        if flight <= 0:
            return
        if self._sack_ok and self._rk_end:
            self._rk_mark_lost(self._una_abs, self._una_abs + flight)
        self._recover = self.snd_max
        self._rtt_seq = None  # Karn: what comes back may be for the old segments
        self._tlp_end = None
        self._tlp_due = False
        self._tlp_deadline = None
        self._rtx_deadline = now_us + self._rtt.rto_us
        if self._sack_rec:
            return
        self.snd_nxt = una
        self._dupacks = 0
        self._dup_bytes = 0

    # -- timers -----------------------------------------------------------------

    def poll_at(self) -> int | None:
        """The earliest timer deadline (microseconds), or None when no timer runs."""
        t: int | None = None
        for d in (
            self._rtx_deadline,
            self._tlp_deadline,
            self._reo_deadline,
            self._delack_deadline,
            self._persist_deadline,
            self._ka_deadline,
            self._tw_deadline,
        ):
            if d is not None and (t is None or d < t):
                t = d
        return t

    def on_timer(self, now_us: int) -> None:
        """Run every timer whose deadline is at or before `now_us`; then call `dispatch`."""
        d = self._tw_deadline
        if d is not None and d <= now_us:
            self._tw_deadline = None
            if self.state is TIME_WAIT or self.state is FIN_WAIT_2:
                self._close_now()
                return
        d = self._reo_deadline
        if d is not None and d <= now_us:
            # RFC 8985 6.3: the reordering window of a segment ran out.
            self._reo_deadline = None
            self.rack_reo_timeouts += 1
            self._rack_check(now_us)
        d = self._tlp_deadline
        if d is not None and d <= now_us:
            # RFC 8985 7.3: the probe goes in place of a timeout, which is restarted.
            self._tlp_deadline = None
            if (
                self.state in _OUTPUT_STATES
                and self.snd_max != self.snd_una
                and not self._in_recovery
                and self._tlp_end is None
            ):
                self._tlp_due = True
                self._rtx_deadline = now_us + self._rtt.rto_us
        d = self._rtx_deadline
        if d is not None and d <= now_us:
            self._on_rto(now_us)
            if self.state is CLOSED:
                return
        d = self._delack_deadline
        if d is not None and d <= now_us:
            # The reply the ACK waited for did not come: not interactive after
            # all (Linux's tcp_delack_timer_handler leaves pingpong mode).
            self._delack_deadline = None
            self._ack_now = True
            self._pingpong = False
        d = self._persist_deadline
        if d is not None and d <= now_us:
            self._persist_deadline = None
            if self.state in _OUTPUT_STATES and self.snd_max == self.snd_una:
                self._probe_due = True
                self._persist_backoff += 1
        d = self._ka_deadline
        if d is not None and d <= now_us:
            self._on_keepalive(now_us)

    def _on_rto(self, now_us: int) -> None:
        """Retransmission timeout (RFC 6298 5.4-5.6)."""
        cfg = self.config
        state = self.state
        if state is SYN_SENT or state is SYN_RECEIVED:
            limit = cfg.syn_retries if state is SYN_SENT else cfg.synack_retries
            if self._retries >= limit:
                self._reset(errno.ETIMEDOUT)
                return
            self._retries += 1
            self._syn_retransmitted = True
            self._cc.on_handshake_loss()
            self.snd_nxt = self.iss
        else:
            if self.snd_max == self.snd_una:
                self._rtx_deadline = None
                return
            if self._retries == 0:
                self._rtx_since_us = now_us
            user_timeout = cfg.user_timeout_us
            if self._retries >= cfg.max_retries or (
                user_timeout is not None and now_us - self._rtx_since_us >= user_timeout
            ):
                zero_window_peer_alive = (
                    self.snd_wnd == 0 and now_us - self._last_rx_us <= cfg.max_rto_us
                )
                if not zero_window_peer_alive:
                    self._reset(errno.ETIMEDOUT)
                    return
            self._retries += 1
            self.rtos += 1
            self._cc.on_rto(now_us, seq_sub(self.snd_max, self.snd_una))
            self._in_recovery = False
            self._sack_rec = False
            self._recover = self.snd_max
            self._dupacks = 0
            self._dup_bytes = 0
            self._rtx_head = False
            # RFC 2018 8: the receiver may have reneged; forget what it SACKed.
            self._sb.clear()
            self._rk_all_lost()
            self._tlp_end = None
            self._tlp_due = False
            self._tlp_deadline = None
            self._reo_deadline = None
            self.snd_nxt = self.snd_una
            self._rto_force = True
        self._rtt_seq = None
        self._rtt.backoff()
        self._rtx_deadline = now_us + self._rtt.rto_us

    def _rk_all_lost(self) -> None:
        """A timeout: everything in flight counts as lost, nothing as SACKed (RFC 2018 8)."""
        flags = self._rk_flags
        for k, f in enumerate(flags):
            flags[k] = (f & _RK_RETRANS) | _RK_LOST
        self._rk_sacked = 0
        self._rk_lost = self._rk_end[-1] - self._una_abs if self._rk_end else 0

    def _on_keepalive(self, now_us: int) -> None:
        cfg = self.config
        self._ka_deadline = None
        if not cfg.keepalive or self.state not in (ESTABLISHED, CLOSE_WAIT):
            return
        idle = now_us - self._last_rx_us
        if idle < cfg.keepalive_idle_us:
            self._ka_deadline = self._last_rx_us + cfg.keepalive_idle_us
            return
        if self.snd_max != self.snd_una or len(self._sndbuf):
            # Data is outstanding: the retransmission timer watches the peer.
            self._ka_deadline = now_us + cfg.keepalive_interval_us
            return
        if self._ka_probes >= cfg.keepalive_count:
            self._reset(errno.ETIMEDOUT)
            return
        self._ka_probes += 1
        self._ka_due = True
        self._ka_deadline = now_us + cfg.keepalive_interval_us

    # -- output -------------------------------------------------------------------

    def _make(
        self, seq: int, flags: int, payload: memoryview, now_us: int, *, syn: bool = False
    ) -> OutSegment:
        """Build one segment with ACK, window and options; settle any owed ACK."""
        ts: tuple[int, int] | None = None
        if syn:
            window = self._syn_window or min(self._rcvbuf.space, 65535)
            self._syn_window = window
            want_ts, want_sack, want_ws = self._syn_opts
            passive = flags & ACK
            wscale: int | None
            if passive:
                use_ts = self._ts_ok
                wscale = self.rcv_wscale if self._ws_ok else None
                sack_perm = self._sack_ok
            else:
                use_ts = want_ts
                wscale = self.config.rcv_wscale if want_ws else None
                sack_perm = want_sack
            if use_ts:
                ts = (self._tsval(now_us), self._ts_recent if passive else 0)
            ack = self.rcv_nxt if passive else 0
            if passive:
                self.last_ack_sent = ack
                self.rcv_adv = seq_add(ack, window)
                self._ack_now = False
                self._delack_deadline = None
            self.segs_out += 1
            return OutSegment(
                seq,
                ack,
                flags,
                window,
                payload,
                self.config.effective_mss,
                wscale,
                sack_perm,
                (),
                ts,
            )
        if self._ts_ok:
            ts = ((now_us // 1000 + self._ts_offset) & _MASK32, self._ts_recent)  # _tsval
        blocks: tuple[tuple[int, int], ...] = ()
        if self._sack_ok and self._rcvbuf.has_out_of_order:
            rn = self.rcv_nxt
            blocks = tuple(
                (seq_add(rn, a), seq_add(rn, b))
                for a, b in self._rcvbuf.sack_ranges(self._sack_block_cap)
            )
        ack = 0
        window = 0
        if flags & ACK:
            ack = self.rcv_nxt
            window = self._select_window()
            self.last_ack_sent = ack
            self._ack_now = False
            self._delack_deadline = None
            if self._quick and self._delack_bytes:
                self._quick -= 1  # an ACK of new data (Linux's tcp_dec_quickack_mode)
            self._delack_bytes = 0
        self.segs_out += 1
        return _tuple_new(
            OutSegment, (seq, ack, flags, window, payload, None, None, False, blocks, ts)
        )

    def dispatch(self, now_us: int) -> list[OutSegment]:
        """Segments to transmit now, in order (see "Output" in the module docstring)."""
        out: list[OutSegment] = []
        if self._rst_out:
            for seq, ack, flags in self._rst_out:
                out.append(OutSegment(seq, ack, flags, 0))
            self.segs_out += len(self._rst_out)
            self._rst_out.clear()
        state = self.state
        if self._send_rst:
            self._send_rst = False
            ts = (self._tsval(now_us), self._ts_recent) if self._ts_ok else None
            out.append(OutSegment(self.snd_max, self.rcv_nxt, RST | ACK, 0, _EMPTY, ts=ts))
            self.segs_out += 1
            return out
        if state is CLOSED or state is LISTEN:
            return out
        if state is SYN_SENT or state is SYN_RECEIVED:
            if self.snd_nxt == self.iss:
                flags = SYN if state is SYN_SENT else SYN | ACK
                out.append(self._make(self.iss, flags, _EMPTY, now_us, syn=True))
                self.snd_nxt = seq_add(self.iss, 1)
                if self.snd_max == self.iss:
                    self.snd_max = self.snd_nxt
                    self._rtt_seq = self.snd_nxt
                    self._rtt_sent_us = now_us
                else:
                    self.retransmits += 1
                    self._rtt_seq = None  # Karn
                if self._rtx_deadline is None:
                    self._rtx_deadline = now_us + self._rtt.rto_us
                self._last_send_us = now_us
            elif self._ack_now and state is SYN_RECEIVED:
                out.append(self._make(self.snd_max, ACK, _EMPTY, now_us))
            self._ack_now = False
            self._acks_owed = 0
            return out
        if state in _OUTPUT_STATES:
            self._output_data(out, now_us)
            self._sent_pipe = self._pipe()
        if self._probe_due:
            self._probe_due = False
            if not out:
                self._send_probe(out, now_us)
        if self._ka_due:
            self._ka_due = False
            if not out:
                out.append(self._make(seq_add(self.snd_una, -1), ACK, _EMPTY, now_us))
        owed = self._acks_owed
        if owed:
            # One pure ACK per segment that asked for one (see _owe_ack),
            # even when data carried the ACK: a segment with data is no
            # duplicate ACK (RFC 5681 2).  They are identical, so one
            # OutSegment serves them all.
            self._acks_owed = 0
            if self._acks_owed_at != self.rcv_nxt:
                owed = 1 if self._ack_now else 0  # RCV.NXT moved after the last one
            if owed:
                pure = self._make(self.snd_max, ACK, _EMPTY, now_us)
                out.append(pure)
                if owed > 1:
                    out.extend([pure] * (owed - 1))
                    self.segs_out += owed - 1
        elif self._ack_now:
            out.append(self._make(self.snd_max, ACK, _EMPTY, now_us))
        self._rto_force = False
        if state in _OUTPUT_STATES:
            self._arm_send_timers(now_us)
        elif state is FIN_WAIT_2 and self._app_closed and self._tw_deadline is None:
            self._tw_deadline = now_us + self.config.fin_wait2_timeout_us
        return out

    def _send_probe(self, out: list[OutSegment], now_us: int) -> None:
        """Persist timer expired: send what the window allows, else a zero-window probe."""
        off = seq_sub(self.snd_nxt, self.snd_una)
        avail = len(self._sndbuf) - off
        wnd_left = self.snd_wnd - off
        if avail > 0 and wnd_left > 0:
            self._send_data(out, off, min(avail, wnd_left, self.smss), now_us)
        else:
            out.append(self._make(seq_add(self.snd_una, -1), ACK, _EMPTY, now_us))

    def _send_data(self, out: list[OutSegment], off: int, n: int, now_us: int) -> int:
        """Send up to `n` bytes from offset `off` of the send buffer (FIN if it ends there)."""
        if n and self._sack_ok and self._rcvbuf.has_out_of_order:
            # SACK blocks ride on this segment: take their bytes off the data
            # so the packet still fits the MSS (RFC 6691; Linux's
            # tcp_current_mss).  A TSO segment keeps its length: the Stack
            # cuts it at sack_mss(), which counts the same blocks.
            room = self.sack_mss(len(self._rcvbuf.sack_ranges(self._sack_block_cap)))
            if room < n <= self.smss:
                n = room
        buffered = len(self._sndbuf)
        piece = self._sndbuf.view(off, n)
        n = len(piece)
        end = off + n
        flags = ACK
        if end == buffered:
            if n:
                flags |= PSH
            if self._fin_queued:
                flags |= FIN
        if n and not self._pingpong:
            # Data within the delayed-ACK time of the peer's last data is a
            # reply: interactive, so delay ACKs for it to ride on (Linux's
            # tcp_event_data_sent, with `delayed_ack_us` as the ATO).
            last = self._last_data_us
            if last is not None and now_us - last < self.config.delayed_ack_us:
                self._pingpong = True
        seq = self.snd_nxt
        out.append(self._make(seq, flags, piece, now_us))
        length = n + 1 if flags & FIN else n
        nxt = (seq + length) & _MASK32  # seq_add
        self.snd_nxt = nxt
        new = ((nxt - self.snd_max + _HALF32) & _MASK32) - _HALF32  # seq_sub
        if self._sack_ok:
            self._rk_sent(
                self._una_abs + (((seq - self.snd_una + _HALF32) & _MASK32) - _HALF32),  # seq_sub
                length,
                length if new <= 0 else length - new,
                now_us,
            )
        if new > 0:
            self.snd_max = nxt
            self.bytes_sent += new - 1 if flags & FIN else new
            self._tlp_rearm = True
        if new < length:
            # Part or all of it was sent before: a retransmission (Karn: no timing).
            self.retransmits += 1
            self.bytes_retrans += n
            self._rtt_seq = None
        elif self._rtt_seq is None and not self._in_recovery:
            self._rtt_seq = nxt
            self._rtt_sent_us = now_us
        self._last_send_us = now_us
        return n

    def _output_data(self, out: list[OutSegment], now_us: int) -> None:
        """Fast retransmission, then new data and FIN as windows, Nagle and SWS allow."""
        sndbuf = self._sndbuf
        smss = self.smss
        if self._tlp_due:
            self._tlp_due = False
            self._send_tlp(out, now_us)
        if self._sack_rec:
            force = self._rtx_head
            self._rtx_head = False
            self._output_sack_recovery(out, now_us, force)
            return
        if self._rtx_head:
            self._rtx_head = False
            n = min(len(sndbuf), smss)
            saved = self.snd_nxt
            self.snd_nxt = self.snd_una
            if n > 0 or self._fin_queued:
                self._send_data(out, 0, n, now_us)
            if seq_gt(saved, self.snd_nxt):
                self.snd_nxt = saved
        if self.snd_max == self.snd_una and len(sndbuf) and self.snd_wnd:
            idle = now_us - self._last_send_us
            if idle > 0:
                self._cc.on_idle_restart(now_us, idle, self._rtt.rto_us)
        nodelay = self.config.nodelay or self._fin_queued
        sb = self._sb
        while True:
            buffered = len(sndbuf)
            snd_nxt = self.snd_nxt
            off = ((snd_nxt - self.snd_una + _HALF32) & _MASK32) - _HALF32  # seq_sub
            avail = buffered - off
            gap = avail
            # seq_lt(SND.NXT, SND.MAX) before asking the scoreboard (a method call).
            if avail > 0 and ((snd_nxt - self.snd_max) & _MASK32) >= _HALF32 and sb:
                # Going back after a timeout: skip what the peer has SACKed since.
                pos = self._una_abs + off
                hole = sb.next_unsacked(pos, self._una_abs + buffered)
                if hole is None:
                    self.snd_nxt = seq_add(self.snd_una, buffered)
                    continue
                if hole[0] != pos:
                    self.snd_nxt = seq_add(self.snd_nxt, hole[0] - pos)
                    continue
                gap = hole[1] - pos
            if avail <= 0:
                if (
                    self._fin_queued
                    and avail == 0
                    and self._fin_seq is not None
                    and self.snd_nxt == self._fin_seq
                ):
                    self._send_data(out, off, 0, now_us)
                break
            usable = self.snd_wnd - off
            cwnd_left = self._cc.cwnd - self._pipe()
            if cwnd_left < usable:
                usable = cwnd_left
            if usable <= 0:
                if self._rto_force and off == 0:
                    # Timeout with the window shut: the first segment goes as a probe.
                    self._rto_force = False
                    self._send_data(out, 0, min(avail, smss), now_us)
                break
            n = avail if avail < usable else usable
            if n > self._seg_cap:
                n = self._seg_cap
            if n > gap:
                n = gap
            if n < smss and ((snd_nxt - self.snd_max) & _MASK32) < _HALF32:  # not seq_lt
                # A short segment of new data (retransmissions always go, as in BSD).
                if not nodelay and self.snd_max != self.snd_una:
                    break  # Nagle (RFC 9293 3.7.4)
                if n < avail and n < (self.max_snd_wnd >> 1):
                    break  # sender SWS avoidance (RFC 9293 3.8.6.2.1)
            elif n < avail and n > smss:
                n -= n % smss
            self._send_data(out, off, n, now_us)

    def _output_sack_recovery(self, out: list[OutSegment], now_us: int, force: bool) -> None:
        """RFC 6675 5 step (C): send while cwnd - pipe >= 1 SMSS, choosing with NextSeg.

        NextSeg's rules 1 (retransmit the first range RACK marked lost; the
        retransmission clears the mark) and 2 (new data) are followed;
        `force` sends the first lost range whatever cwnd says (step 4.3).
        Rule 3 (retransmit any unSACKed byte, a SHOULD) and the rescue
        retransmission of rule 4 (a MAY) are left out, as in Linux: RACK
        marks a lost retransmission lost again, and a lost tail is RACK's
        and the loss probe's business.
        """
        smss = self.smss
        sndbuf = self._sndbuf
        nodelay = self.config.nodelay or self._fin_queued
        while force or self._cc.cwnd - self._pipe() >= smss:
            una = self._una_abs
            # Rule 1 (a FIN in flight is the timer's business).
            hole = self._rk_first_lost(una + len(sndbuf))
            if hole is None:
                if force:
                    force = False
                    continue
                # Rule 2: new data, if the peer's window and Nagle allow a segment.
                off = seq_sub(self.snd_nxt, self.snd_una)
                avail = len(sndbuf) - off
                wnd_left = self.snd_wnd - off
                n = min(avail, wnd_left, smss)
                if n > 0 and (n >= smss or (n == avail and nodelay)):
                    self._send_data(out, off, n, now_us)
                    continue
                if avail == 0 and self._fin_queued and self.snd_nxt == self._fin_seq:
                    self._send_data(out, off, 0, now_us)
                    continue
                return
            force = False
            pos, end = hole
            n = min(end - pos, smss)
            saved = self.snd_nxt
            self.snd_nxt = seq_add(self.snd_una, pos - una)
            self._send_data(out, pos - una, n, now_us)
            self.snd_nxt = saved

    def _arm_send_timers(self, now_us: int) -> None:
        """Retransmission timer while anything is unacknowledged, else persist if data waits."""
        if self.snd_max != self.snd_una:
            if self._rtx_deadline is None:
                self._rtx_deadline = now_us + self._rtt.rto_us
            if self._sack_ok:
                self._tlp_arm(now_us)
            self._persist_deadline = None
            self._persist_backoff = 0
            return
        self._rtx_deadline = None
        self._tlp_deadline = None
        self._reo_deadline = None
        waiting = len(self._sndbuf) > 0 or (
            self._fin_queued and self._fin_seq is not None and self.snd_nxt == self._fin_seq
        )
        if waiting:
            if self._persist_deadline is None:
                rto = self._rtt.rto_us << self._persist_backoff
                self._persist_deadline = now_us + min(rto, self.config.max_rto_us)
        else:
            self._persist_deadline = None
            self._persist_backoff = 0
