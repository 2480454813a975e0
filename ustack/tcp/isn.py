"""Initial sequence numbers (RFC 6528) and per-connection timestamp offsets (RFC 7323 5.4).

Owns the two secret-keyed functions of a connection's 4-tuple that make our
numbers unpredictable to an off-path attacker, and the keyed-hash helpers
that `ports` and `syncookie` share.  Sans-IO: the clock is the `now_us`
argument; the only source of randomness is `os.urandom` for the secret at
construction, and a test injects the secret instead.

Initial sequence numbers
------------------------

RFC 6528 section 3 (the algorithm RFC 9293 3.4.1 requires):

    ISN = M + F(localip, localport, remoteip, remoteport, secretkey)

M is a timer that ticks every 4 microseconds, so the ISNs of successive
incarnations of one 4-tuple keep moving forwards through the sequence space
(2**32 ticks of 4 us wrap in about 4.77 hours), which is what keeps old
duplicates out of a new incarnation (RFC 9293 3.4.1).  F is a keyed PRF:
here BLAKE2s (RFC 7693) in its keyed mode with a 4-byte digest over the
packed 4-tuple.  BLAKE2s is in the standard library, is a MAC when keyed
(no HMAC construction needed) and costs about a microsecond, once per
connection.  RFC 6528 asks that the secret not be guessable and suggests
changing it now and then; rekeying would break the monotonic ISN of a
4-tuple across the change, so ustack keeps one secret per generator (per
stack instance) and a restart picks a new one.

Timestamp offsets
-----------------

RFC 7323 5.4 recommends that the TSval clock start from a random offset per
connection, so that the timestamps of one host do not reveal its uptime and
cannot be used to link its connections together (see also its security
considerations, section 7).  The offset is a second keyed PRF of the same
4-tuple: one 4-tuple always gets the same offset, so TSval stays monotonic
across incarnations of that 4-tuple, which PAWS (RFC 7323 5) relies on when
a TIME-WAIT 4-tuple is reused.  (Linux keys its offset on the address pair
only, because its old per-host timestamp cache, tcp_tw_recycle, compared
TSvals across connections to one host; ustack keeps no such cache.)  The
two PRFs share the secret but are independent functions: BLAKE2 takes a
personalisation string (the `person` argument of hashlib.blake2s) and each
use in ustack has its own, the standard way to derive unrelated keyed
functions from one key.

Addresses are host-order ints (as everywhere in ustack) and the 4-tuple is
given from our side: `src`/`sport` are the local address and port,
`dst`/`dport` the peer's.
"""

from __future__ import annotations

import hashlib
import os
import struct

__all__ = [
    "ISN_TICK_US",
    "SECRET_MAX_BYTES",
    "SECRET_MIN_BYTES",
    "IsnGenerator",
    "keyed_hash32",
    "pack_4tuple",
    "secret_or_random",
]

ISN_TICK_US = 4
"""RFC 6528 section 3: M is a 4-microsecond timer."""

SECRET_MIN_BYTES = 16
"""Shortest secret accepted: 128 bits, the usual floor for a MAC key."""

SECRET_MAX_BYTES = 32
"""Longest key BLAKE2s takes (RFC 7693 2.1), and the size of a fresh secret."""

_MASK32 = 0xFFFFFFFF
_TUPLE = struct.Struct("!IHIH")  # local addr, local port, remote addr, remote port

_PERSON_ISN = b"tcp-isn"
_PERSON_TS = b"tcp-tso"


def secret_or_random(secret: bytes | None) -> bytes:
    """The secret to key a PRF with: `secret` checked, or 32 fresh bytes of os.urandom."""
    if secret is None:
        return os.urandom(SECRET_MAX_BYTES)
    if not isinstance(secret, bytes):
        raise TypeError(f"secret must be bytes, got {type(secret).__name__}")
    if not SECRET_MIN_BYTES <= len(secret) <= SECRET_MAX_BYTES:
        raise ValueError(
            f"secret must be {SECRET_MIN_BYTES}..{SECRET_MAX_BYTES} bytes, got {len(secret)};"
            " pass None to draw one from os.urandom"
        )
    return secret


def keyed_hash32(secret: bytes, person: bytes, data: bytes) -> int:
    """BLAKE2s keyed with `secret`, personalised with `person` (<= 8 bytes), as a 32-bit int."""
    digest = hashlib.blake2s(data, digest_size=4, key=secret, person=person).digest()
    return int.from_bytes(digest, "big")


def pack_4tuple(src: int, sport: int, dst: int, dport: int) -> bytes:
    """The 12-byte input of the 4-tuple PRFs; ValueError for an address or port out of range."""
    try:
        return _TUPLE.pack(src, sport, dst, dport)
    except struct.error:
        raise ValueError(
            f"4-tuple out of range: ({src}, {sport}, {dst}, {dport});"
            " addresses are ints in 0..2**32-1 and ports ints in 0..65535"
        ) from None


class IsnGenerator:
    """Initial sequence numbers (RFC 6528) and TSval offsets (RFC 7323 5.4) for one stack.

    `secret` keys both PRFs; None draws 32 bytes from os.urandom.  Tests
    inject a fixed secret to get reproducible numbers.
    """

    __slots__ = ("_secret",)

    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secret_or_random(secret)

    def isn(self, src: int, sport: int, dst: int, dport: int, now_us: int) -> int:
        """Our ISS for the connection (src, sport) -> (dst, dport) opened at `now_us`.

        (now_us // 4 + F(4-tuple)) mod 2**32: for a fixed 4-tuple it advances
        by one every 4 microseconds and wraps modulo 2**32.
        """
        f = keyed_hash32(self._secret, _PERSON_ISN, pack_4tuple(src, sport, dst, dport))
        return ((now_us // ISN_TICK_US) + f) & _MASK32

    def ts_offset(self, src: int, sport: int, dst: int, dport: int) -> int:
        """The 32-bit offset to add (mod 2**32) to our timestamp clock on this connection."""
        return keyed_hash32(self._secret, _PERSON_TS, pack_4tuple(src, sport, dst, dport))
