"""SYN cookies: stateless SYN-ACKs for when a listener's SYN queue overflows (RFC 4987 3.6).

Owns the encoding of a connection request into our initial sequence number
(the cookie) and into the low bits of our TSval, and their checks when the
final ACK of the handshake comes back.  The listener decides when to use
cookies and builds the segments; this module only computes and checks
numbers.  Sans-IO: the clock is `now_us`; the secret comes from os.urandom
at construction or is injected by a test.

Theory of operation
-------------------

A listener whose SYN queue is full answers a SYN with a SYN-ACK whose ISN
is a cookie and then forgets the SYN.  A legitimate peer's ACK carries
`ack = cookie + 1` and `seq = peer_isn + 1`, so from the ACK alone the
listener recovers both, checks the cookie, and builds the connection from
what the cookie encodes.  The idea is Linux's (net/ipv4/syncookies.c); the
layout below is ustack's own.

The cookie, 32 bits, modulo 2**32:

    t      = now_us // COUNTER_US                    coarse clock, 64 s units
    i      = index in MSS_TABLE of the MSS we use    2 bits
    mac    = H_mac(4-tuple, peer_isn, t, i) mod 2**22
    word   = (t mod 256) << 24 | mac << 2 | i
    cookie = (H_off(4-tuple) + word) mod 2**32

H_off and H_mac are keyed BLAKE2s (the same construction as RFC 6528's F,
see `ustack.tcp.isn`) with their own personalisation strings.  To check, the
listener subtracts H_off, reads `t mod 256` and `i` back, takes the counter
t' within MAX_AGE_COUNTERS of the current one whose low 8 bits match, and
recomputes the MAC with the full t'.  Why each part is there:

- `t` in the top byte makes cookie ISNs of a 4-tuple advance by 2**24 per
  64 s, the same pace as the 4-microsecond ISN clock of RFC 6528 (2**24
  ticks take 67 s), so a cookie connection starts, coarsely, where an
  ordinary one would.  It also makes cookies expire: one made in counter t
  is accepted through counter t + MAX_AGE_COUNTERS, i.e. for at least 128
  s and at most 192 s.  The MAC covers the full counter, so a cookie does
  not come back to life when `t mod 256` repeats 4.5 hours later.
- The MAC binds the cookie to the 4-tuple, the peer's ISN, the counter and
  the MSS index: changing any of them invalidates it.
- H_off, a secret per 4-tuple, hides the whole layout from a blind
  attacker: without it the top byte (the time) and the MSS index could be
  guessed and only the 22 MAC bits would stand in the way.

Strength.  For one 4-tuple and peer ISN, exactly MSS_TABLE length (4) x
(MAX_AGE_COUNTERS + 1) (3) = 12 of the 2**32 cookie values are accepted at
any moment, so an ACK with a guessed cookie is accepted with probability
12 / 2**32, about 1 in 358 million (28.4 bits).  An attacker sending a
million spoofed ACKs a second would open one connection every six minutes
or so; RFC 4987 3.6 notes this exposure, so the listener should check
cookies only while it has sent some recently (Linux checks whether its SYN
queue overflowed lately), and count the failures.

What a cookie connection loses (RFC 4987 3.6):

- The peer's MSS is rounded down to one of four values (MSS_TABLE).  A
  peer that announced less than 536 gets 536, the IPv4 default MSS every
  host must accept (RFC 9293 3.7.1, RFC 1122 3.3.2); the listener takes
  the minimum with its own MSS as usual.
- Window scaling and SACK survive only when the peer sent timestamps: the
  listener then puts them in the low TS_OPT_BITS bits of our TSval
  (`make_tsval`) and reads them back from the TSecr the peer echoes
  (`decode_tsecr`).  Without timestamps the SYN-ACK must offer neither
  option, and the connection runs without them.  Our own window scale is
  not stored anywhere: the listener must derive it again from its
  configuration, exactly as it did for the SYN-ACK.  The TSval bits are not
  covered by the MAC; a peer that alters them only misconfigures its own
  connection (it could have sent any options in its SYN anyway).
- Nothing retransmits the SYN-ACK (no state is kept); the peer's SYN
  retransmission does instead.  If the final ACK is lost and the
  application protocol waits for the server to speak first, the peer
  believes it is connected while the listener knows nothing until the
  peer sends data (whose ACK field still carries the cookie).
- Other SYN options and any data on the SYN are dropped.

Addresses are host-order ints and the 4-tuple is given from our side:
`src`/`sport` are the listener's address and port, `dst`/`dport` the peer's,
the same in `make` (from the SYN) and `check` (from the ACK).
"""

from __future__ import annotations

import struct

from ustack.tcp.isn import keyed_hash32, pack_4tuple, secret_or_random

__all__ = [
    "COUNTER_US",
    "MAX_AGE_COUNTERS",
    "MSS_TABLE",
    "TS_OPT_BITS",
    "SynCookies",
    "decode_tsecr",
    "make_tsval",
]

COUNTER_US = 64_000_000
"""Length of one tick of the cookie clock: 64 s (Linux uses 60 s)."""

MAX_AGE_COUNTERS = 2
"""A cookie made in counter t is accepted through counter t + 2 (128..192 s)."""

MSS_TABLE = (536, 1300, 1440, 1460)
"""MSS values a cookie can carry, ascending: the IPv4 default, values peers
commonly announce behind tunnels and PPPoE (1300, 1440), and plain Ethernet
(1460).  Four entries so that the index takes 2 bits."""

TS_OPT_BITS = 6
"""Low bits of our TSval that carry the peer's options in cookie mode."""

_MASK32 = 0xFFFFFFFF
_MASK64 = 0xFFFFFFFFFFFFFFFF
_MAC_BITS = 22
_MAC_MASK = (1 << _MAC_BITS) - 1
_INDEX_BITS = 2
_INDEX_MASK = (1 << _INDEX_BITS) - 1
_COUNTER_SHIFT = _MAC_BITS + _INDEX_BITS  # 24: the counter's 8 bits sit on top
_COUNTER_MASK = 0xFF
_MAC_INPUT = struct.Struct("!QB")  # counter, MSS index; after the 4-tuple and peer ISN
_PEER_ISN = struct.Struct("!I")

_PERSON_OFF = b"ck-off"
_PERSON_MAC = b"ck-mac"

# TSval option bits (Linux's cookie_init_timestamp idea, ustack's layout):
# bits 0-3 the peer's window scale 0..14, or 15 when it sent no Window Scale;
# bit 4 SACK-permitted; bit 5 reserved, always 0, so that a TSecr that is not
# an echo of make_tsval is caught half the time (Linux keeps ECN there).
_TS_OPT_MASK = (1 << TS_OPT_BITS) - 1
_TS_WSCALE_MASK = 0x0F
_TS_NO_WSCALE = 0x0F
_TS_SACK = 0x10
_TS_RESERVED = 0x20
_MAX_WSCALE = 14  # RFC 7323 2.3


def _mss_index(peer_mss: int) -> int:
    """Index of the largest MSS_TABLE entry <= peer_mss, or 0 when all are larger."""
    for i in range(len(MSS_TABLE) - 1, 0, -1):
        if peer_mss >= MSS_TABLE[i]:
            return i
    return 0


def make_tsval(now_tsval: int, wscale: int | None, sack_permitted: bool) -> int:
    """Our SYN-ACK TSval in cookie mode: `now_tsval` with the peer's options in its low bits.

    `wscale` is the shift the peer announced (None if it sent no Window
    Scale option); values above 14 are used as 14 (RFC 7323 2.3).  The low
    TS_OPT_BITS bits of `now_tsval` are replaced, stepping back one block of
    2**TS_OPT_BITS ticks if needed, so the result is never ahead of the
    clock and the TSvals that follow stay monotonic (PAWS, RFC 7323 5).
    """
    if wscale is None:
        opts = _TS_NO_WSCALE
    elif wscale < 0:
        raise ValueError(f"window scale must be 0..14 or None, got {wscale}")
    else:
        opts = min(wscale, _MAX_WSCALE)
    if sack_permitted:
        opts |= _TS_SACK
    now_tsval &= _MASK32
    tsval = (now_tsval & ~_TS_OPT_MASK) | opts
    if opts > now_tsval & _TS_OPT_MASK:
        tsval -= 1 << TS_OPT_BITS
    return tsval & _MASK32


def decode_tsecr(tsecr: int) -> tuple[int | None, bool] | None:
    """(peer window scale or None, SACK permitted) from the TSecr of the final ACK.

    None when the reserved bit is set, i.e. the value cannot have come from
    `make_tsval`; the listener should then drop the ACK (or treat the
    connection as having neither option).
    """
    opts = tsecr & _TS_OPT_MASK
    if opts & _TS_RESERVED:
        return None
    wscale = opts & _TS_WSCALE_MASK
    return (None if wscale == _TS_NO_WSCALE else wscale), bool(opts & _TS_SACK)


class SynCookies:
    """Makes and checks SYN cookies for one listener (or one stack).

    `secret` keys the hashes; None draws 32 bytes from os.urandom.
    """

    __slots__ = ("_secret",)

    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secret_or_random(secret)

    def _mac(self, tuple4: bytes, peer_isn: int, counter: int, index: int) -> int:
        data = tuple4 + _PEER_ISN.pack(peer_isn) + _MAC_INPUT.pack(counter & _MASK64, index)
        return keyed_hash32(self._secret, _PERSON_MAC, data) & _MAC_MASK

    def make(
        self, src: int, sport: int, dst: int, dport: int, peer_isn: int, peer_mss: int, now_us: int
    ) -> tuple[int, int]:
        """(our ISN cookie, the MSS we will use) for a SYN with `peer_isn` and `peer_mss`.

        The MSS is the largest MSS_TABLE entry <= peer_mss, or the smallest
        entry if peer_mss is below all of them.  peer_isn is taken mod 2**32.
        """
        tuple4 = pack_4tuple(src, sport, dst, dport)
        peer_isn &= _MASK32
        index = _mss_index(peer_mss)
        counter = now_us // COUNTER_US
        word = (
            (counter & _COUNTER_MASK) << _COUNTER_SHIFT
            | self._mac(tuple4, peer_isn, counter, index) << _INDEX_BITS
            | index
        )
        cookie = (keyed_hash32(self._secret, _PERSON_OFF, tuple4) + word) & _MASK32
        return cookie, MSS_TABLE[index]

    def check(
        self, src: int, sport: int, dst: int, dport: int, peer_isn: int, cookie: int, now_us: int
    ) -> int | None:
        """The MSS encoded in `cookie`, or None if it is not valid now.

        Pass peer_isn = SEG.SEQ - 1 and cookie = SEG.ACK - 1 of the ACK; both
        are taken mod 2**32, so the caller need not wrap them.  None means
        forged, for another 4-tuple or peer ISN, or expired: drop and count.
        """
        tuple4 = pack_4tuple(src, sport, dst, dport)
        word = (cookie - keyed_hash32(self._secret, _PERSON_OFF, tuple4)) & _MASK32
        now_counter = now_us // COUNTER_US
        age = (now_counter - (word >> _COUNTER_SHIFT)) & _COUNTER_MASK
        if age > MAX_AGE_COUNTERS:
            return None
        index = word & _INDEX_MASK
        mac = (word >> _INDEX_BITS) & _MAC_MASK
        if mac != self._mac(tuple4, peer_isn & _MASK32, now_counter - age, index):
            return None
        return MSS_TABLE[index]

    # The TSval helpers need no secret; they are reachable from the object
    # too so that a listener holding a SynCookies needs no second import.
    make_tsval = staticmethod(make_tsval)
    decode_tsecr = staticmethod(decode_tsecr)
