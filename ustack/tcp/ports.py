"""Ephemeral port selection for active opens (RFC 6056, algorithm 4 "Double-Hash").

Owns the choice of a local port for `connect()` when the application did not
bind one.  The caller owns the connection tables and says, through
`in_use(port)`, whether (local_ip, port, remote_ip, remote_port) is taken.
Sans-IO and clock-free; the secret comes from os.urandom at construction or
is injected by a test.

Which algorithm, and why
------------------------

RFC 6056 section 3.3 describes five algorithms.  Algorithms 1 and 2 pick
ports at random: unpredictable, but they may reuse a port towards the same
peer soon after it was freed and so collide with a 4-tuple still in
TIME-WAIT at the peer.  Algorithm 3 ("Simple Hash-Based") starts each destination
at a secret offset F(local_ip, remote_ip, remote_port, key) and then walks
the range in sequence, which spaces reuse of a 4-tuple as far apart as the
range allows; but its walk counter `next_ephemeral` is global, so an
attacker who connects to its own server twice learns from the difference
how many connections the host opened to anyone in between (RFC 6056
3.3.4).  Algorithm 4 ("Double-Hash") keeps algorithm 3's per-destination
sequence and splits the counter into a table of perturbation counters
indexed by a second, independent hash G of the destination; a destination
only sees the connections made to destinations sharing its table slot.
That is the algorithm implemented here:

    offset = F(local_ip, remote_ip, remote_port)        # secret, 32 bits
    index  = G(local_ip, remote_ip, remote_port) % TABLE_LENGTH
    for k in 0 .. num_ephemeral - 1:
        port = low + (offset + table[index] + k) % num_ephemeral
        if not in_use(port): table[index] += k + 1 + J; return port
    raise EADDRNOTAVAIL

Two hardenings follow what the Linux developers did after Klein and
Pinkas ("Device Tracking via Linux's New TCP Source Port Selection
Algorithm", USENIX Security 2022) showed that with a small table an
attacker can find destinations that share a slot and use that collision
pattern as a fingerprint of the device:

- The table has 2**16 counters (an `array` of 32-bit ints, 256 KiB), so
  collisions between the destinations of one attacker are rare.
- After a success the counter also skips J in 0..7 extra ports, J drawn from
  a third keyed hash of (index, counter).  The steps an observer sees are
  then not the plain count of connections made in the slot.  The walk per
  destination stays sequential in the large (about 4.5 ports per
  connection on average), which keeps the TIME-WAIT property above.

F, G and J are keyed BLAKE2s with separate personalisation strings, so they
are independent functions of one secret (see `ustack.tcp.isn`).  On
exhaustion the table is left as it was.
"""

from __future__ import annotations

import errno
import struct
from array import array
from collections.abc import Callable

from ustack.tcp.isn import keyed_hash32, secret_or_random
from ustack.wire.ipv4 import ip_to_str

__all__ = ["DEFAULT_HIGH", "DEFAULT_LOW", "TABLE_LENGTH", "EphemeralPorts"]

DEFAULT_LOW = 32768
DEFAULT_HIGH = 60999
"""Linux's default net.ipv4.ip_local_port_range (RFC 6056 3.2 suggests 1024..65535)."""

TABLE_LENGTH = 1 << 16
"""Number of perturbation counters (RFC 6056 3.3.4 TABLE_LENGTH)."""

_JITTER_MASK = 7  # J in 0..7 extra ports skipped after each success
_MASK32 = 0xFFFFFFFF
_DEST = struct.Struct("!IIH")  # local addr, remote addr, remote port
_SLOT = struct.Struct("!II")  # table index, counter before the advance

_PERSON_F = b"port-F"
_PERSON_G = b"port-G"
_PERSON_J = b"port-J"


class EphemeralPorts:
    """Chooses local ports in low..high (inclusive) per RFC 6056 algorithm 4.

    `secret` keys the hashes; None draws 32 bytes from os.urandom.
    """

    __slots__ = ("_num", "_secret", "_table", "high", "low")

    def __init__(
        self, low: int = DEFAULT_LOW, high: int = DEFAULT_HIGH, secret: bytes | None = None
    ) -> None:
        if not 1 <= low <= high <= 65535:
            raise ValueError(
                f"ephemeral range {low}..{high} is invalid; need 1 <= low <= high <= 65535"
            )
        self.low = low
        self.high = high
        self._num = high - low + 1
        self._secret = secret_or_random(secret)
        self._table = array("I", bytes(4 * TABLE_LENGTH))

    def choose(
        self, local_ip: int, remote_ip: int, remote_port: int, in_use: Callable[[int], bool]
    ) -> int:
        """A free local port for (local_ip, ?, remote_ip, remote_port).

        Tries the ports of the range in this destination's sequence and
        returns the first one for which `in_use(port)` is False.  Raises
        OSError(EADDRNOTAVAIL) when every port of the range is in use
        towards this destination.
        """
        try:
            dest = _DEST.pack(local_ip, remote_ip, remote_port)
        except struct.error:
            raise ValueError(
                f"destination out of range: ({local_ip}, {remote_ip}, {remote_port});"
                " addresses are ints in 0..2**32-1 and ports ints in 0..65535"
            ) from None
        secret = self._secret
        offset = keyed_hash32(secret, _PERSON_F, dest)
        index = keyed_hash32(secret, _PERSON_G, dest) % TABLE_LENGTH
        table = self._table
        counter = table[index]
        num = self._num
        low = self.low
        start = offset + counter
        for k in range(num):
            port = low + (start + k) % num
            if not in_use(port):
                jitter = keyed_hash32(secret, _PERSON_J, _SLOT.pack(index, counter)) & _JITTER_MASK
                table[index] = (counter + k + 1 + jitter) & _MASK32
                return port
        raise OSError(
            errno.EADDRNOTAVAIL,
            f"no free local port in {low}..{self.high} towards "
            f"{ip_to_str(remote_ip)}:{remote_port} from {ip_to_str(local_ip)}; "
            "close connections to that peer or widen the ephemeral range",
        )
