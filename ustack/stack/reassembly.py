"""IPv4 fragment reassembly (RFC 791 3.2, RFC 815, RFC 1122 3.3.2), sans-IO.

Owns the table of datagrams in reassembly and nothing else: the caller parses
the IPv4 header, calls `Reassembler.on_fragment` for every datagram that is a
fragment, delivers what comes back complete, and calls `expire` from its
timers.  Time is an argument (`now_us`, integer microseconds from a clock
that never goes backwards); the object never reads a clock.

Theory of operation
-------------------

A datagram is identified by (source, destination, protocol, identification)
(RFC 791 3.2).  Each one in progress keeps RFC 815's hole descriptor list:
half-open byte ranges [first, last) of the payload not yet received,
initially the single hole [0, infinity).  Unlike RFC 815 the holes live in
two sorted arrays, found by bisection, and the data is kept as one copied
`bytes` per accepted fragment, keyed by offset; they are copied into one
bytearray when the datagram completes, so every payload byte is copied twice
in total whatever the arrival order.  The datagram is complete when no hole
remains (the infinite trailing hole disappears only once the last fragment,
MF=0, has fixed the payload length).

A fragment is accepted only if it fits entirely inside one hole.  Anything
else is either an exact duplicate (same offset, same bytes, and it adds
nothing new: counted as `ipv4_frag_duplicate` and ignored) or an overlap.
RFC 815 and RFC 1122 3.3.2 let fragments overlap and let later bytes win,
but overlapping fragments are how the Teardrop and FragmentSmack attacks
worked and how a packet can mean one thing to a filter and another to its
receiver.  So, as RFC 5722 requires for IPv6 and as Linux has done for
IPv4 since its FragmentSmack fixes, any overlap that is not an exact
duplicate discards the whole datagram and returns "drop_ipv4_frag_overlap".
Nothing of the discarded datagram is remembered: later fragments with the
same key start a new datagram, which normally times out (its first part is
gone) and is counted then.

Two kinds of bad fragment are told apart:

- Malformed on its own: a non-last fragment whose length is not a positive
  multiple of 8 (RFC 791 3.2), or data reaching beyond the largest payload
  its own header allows (`max_datagram_len - header_len`).  Only that
  fragment is dropped ("drop_ipv4_frag_bad_length", "drop_ipv4_frag_oversize");
  the datagram it names is left alone, since such a fragment says nothing
  reliable about it.
- Inconsistent with what is held: a second last fragment with a different
  end, data beyond a known end, a last fragment that ends before data already
  held ("drop_ipv4_frag_bad_length"), or a datagram whose length plus the
  header length of its fragment at offset 0 exceeds `max_datagram_len`
  ("drop_ipv4_frag_oversize"; that header is the one the reassembled datagram
  keeps, RFC 791 3.2).  As with overlaps, the whole datagram is discarded.

A fragment with offset 0 and MF=0 is not a fragment at all; it is returned
as it is.  Following RFC 791 3.2 (the reassembly procedure, steps 2 to 5), a
datagram in progress under the same key is flushed (counted as an overlap,
which it is: the whole datagram covers every byte of it).

Bounds, against floods (ARCHITECTURE.md rule 8):

- Timeout: a datagram is discarded `timeout_us` after its first fragment,
  however many fragments follow (RFC 1122 3.3.2 requires a fixed timeout and
  suggests 60 to 120 s; the default is Linux's ipfrag_time of 30 s).  A
  datagram past its deadline is discarded on `expire` or, if a fragment for
  it arrives first, on that fragment, so results do not depend on how often
  `expire` runs.
- Count: at most `max_datagrams` in progress.  See `_start` for why a new
  datagram is refused rather than the oldest evicted.
- Memory: `bytes_held`, the payload bytes buffered, never exceeds
  `max_bytes`.  Every stored fragment but one last fragment per datagram
  carries at least 8 bytes, so the bookkeeping (one `bytes` object, one dict
  entry and at most one hole per fragment) is bounded by a constant times
  `max_bytes / 8 + max_datagrams`.

RFC 1122 3.3.2 asks for an ICMP Time Exceeded when a datagram whose
fragment 0 arrived times out; `expire` reports only a count, so that is left
to a caller that needs it.
"""

from array import array
from bisect import bisect_right

__all__ = [
    "DROP_BAD_LENGTH",
    "DROP_MEMORY",
    "DROP_OVERLAP",
    "DROP_OVERSIZE",
    "DROP_TABLE_FULL",
    "DROP_TIMEOUT",
    "Reassembler",
]

RECEIVED = "ipv4_frag_received"
"""Every call to `on_fragment`."""
REASM_OK = "ipv4_reasm_ok"
"""Datagrams returned whole (including offset-0, MF=0 ones that needed no work)."""
DUPLICATE = "ipv4_frag_duplicate"
"""Exact duplicates ignored."""
DROP_OVERLAP = "drop_ipv4_frag_overlap"
"""Datagrams discarded because a fragment overlapped held data (RFC 5722 policy)."""
DROP_OVERSIZE = "drop_ipv4_frag_oversize"
"""Fragments or datagrams that would make an IP datagram over `max_datagram_len`."""
DROP_BAD_LENGTH = "drop_ipv4_frag_bad_length"
"""Bad non-last fragment lengths, and datagrams whose fragments disagree on the end."""
DROP_TIMEOUT = "drop_ipv4_frag_timeout"
"""Datagrams discarded `timeout_us` after their first fragment."""
DROP_TABLE_FULL = "drop_ipv4_frag_table_full"
"""Fragments refused because they would start a datagram beyond `max_datagrams`."""
DROP_MEMORY = "drop_ipv4_frag_memory"
"""Fragments refused because `bytes_held` would exceed `max_bytes`."""

_COUNTERS = (
    RECEIVED,
    REASM_OK,
    DUPLICATE,
    DROP_OVERLAP,
    DROP_OVERSIZE,
    DROP_BAD_LENGTH,
    DROP_TIMEOUT,
    DROP_TABLE_FULL,
    DROP_MEMORY,
)

_MIN_HLEN = 20
"""RFC 791: the IPv4 header without options."""
_MAX_HLEN = 60
"""RFC 791: IHL is 4 bits of 32-bit words."""
_MAX_FRAG_OFF = 0x1FFF << 3
"""RFC 791: 13 bits of 8-byte units."""
_INFINITY = 1 << 20
"""RFC 815's "infinity", the open end of the trailing hole: beyond any offset."""
_EMTU_R_MIN = 576
"""RFC 1122 3.3.2: every host MUST reassemble datagrams of at least 576 bytes."""


class _Datagram:
    """One datagram in reassembly."""

    __slots__ = ("deadline_us", "end", "hole_first", "hole_last", "limit", "nbytes", "pieces")

    def __init__(self, deadline_us: int, limit: int) -> None:
        self.deadline_us = deadline_us
        self.end = -1
        """Payload length, known once the last fragment (MF=0) is in; -1 before."""
        self.limit = limit
        """Largest payload allowed: max_datagram_len minus the header of fragment 0."""
        # RFC 815 hole descriptors, sorted and disjoint: hole k is
        # [hole_first[k], hole_last[k]).  While the end is unknown the last hole
        # is [data_end, _INFINITY), data_end being the end of the data held.
        self.hole_first = array("i", (0,))
        self.hole_last = array("i", (_INFINITY,))
        self.pieces: dict[int, bytes] = {}
        """Accepted fragments by offset, pairwise disjoint."""
        self.nbytes = 0
        """Payload bytes in `pieces`."""


class Reassembler:
    """Reassembles IPv4 datagrams from fragments, within fixed bounds.

    Drops are values, never exceptions: `on_fragment` returns the counter name
    of the reason.  Only misuse of the API (impossible field values, bad
    configuration) raises `ValueError`.
    """

    def __init__(
        self,
        *,
        timeout_us: int = 30_000_000,
        max_datagrams: int = 64,
        max_bytes: int = 4 * 1024 * 1024,
        max_datagram_len: int = 65535,
    ) -> None:
        if timeout_us <= 0:
            raise ValueError(f"timeout_us must be positive, got {timeout_us}")
        if max_datagrams < 1:
            raise ValueError(f"max_datagrams must be at least 1, got {max_datagrams}")
        if max_bytes < 0:
            raise ValueError(f"max_bytes must not be negative, got {max_bytes}")
        if not _EMTU_R_MIN <= max_datagram_len <= 0xFFFF:
            raise ValueError(
                f"max_datagram_len must be {_EMTU_R_MIN}..65535 (RFC 1122 3.3.2 and the"
                f" 16-bit total length), got {max_datagram_len}"
            )
        self._timeout_us = timeout_us
        self._max_datagrams = max_datagrams
        self._max_bytes = max_bytes
        self._max_len = max_datagram_len
        self._table: dict[tuple[int, int, int, int], _Datagram] = {}
        """In order of creation, hence of deadline while `now_us` never decreases."""
        self._bytes = 0
        self.counters: dict[str, int] = dict.fromkeys(_COUNTERS, 0)

    def __len__(self) -> int:
        """Datagrams in progress."""
        return len(self._table)

    @property
    def bytes_held(self) -> int:
        """Payload bytes buffered across all datagrams in progress."""
        return self._bytes

    def next_deadline_us(self) -> int | None:
        """When the oldest datagram in progress expires; None if there is none."""
        for dg in self._table.values():
            return dg.deadline_us
        return None

    def expire(self, now_us: int) -> int:
        """Discard the datagrams whose deadline is at or before now_us; return how many."""
        table = self._table
        due: list[tuple[int, int, int, int]] = []
        for key, dg in table.items():
            if dg.deadline_us > now_us:
                break
            due.append(key)
        for key in due:
            self._bytes -= table.pop(key).nbytes
        self.counters[DROP_TIMEOUT] += len(due)
        return len(due)

    def on_fragment(
        self,
        key: tuple[int, int, int, int],
        frag_off: int,
        mf: bool,
        data: bytes | bytearray | memoryview,
        now_us: int,
        *,
        header_len: int = _MIN_HLEN,
    ) -> bytearray | str | None:
        """Take one fragment; return the whole payload, None, or a drop reason.

        key is (src, dst, proto, ident); frag_off is in bytes (the header field
        times 8); data is the fragment's IP payload, copied if kept; header_len
        is this fragment's IP header length, which bounds the payload when the
        fragment is the one at offset 0.  Returns a new bytearray holding the
        reassembled payload when this fragment completes its datagram, None
        when more fragments are needed (or this one was an exact duplicate),
        and otherwise the name of the counter that was incremented.
        """
        if frag_off & 7 or not 0 <= frag_off <= _MAX_FRAG_OFF:
            raise ValueError(f"frag_off must be a multiple of 8 in 0..65528, got {frag_off}")
        if header_len & 3 or not _MIN_HLEN <= header_len <= _MAX_HLEN:
            raise ValueError(f"header_len must be a multiple of 4 in 20..60, got {header_len}")
        counters = self.counters
        counters[RECEIVED] += 1
        n = len(data)
        end = frag_off + n

        # Malformed on its own: drop the fragment, keep any datagram it names.
        if mf and (n == 0 or n & 7):
            counters[DROP_BAD_LENGTH] += 1
            return DROP_BAD_LENGTH
        if end > self._max_len - header_len:
            counters[DROP_OVERSIZE] += 1
            return DROP_OVERSIZE

        table = self._table
        dg = table.get(key)
        if dg is not None and now_us >= dg.deadline_us:
            self._discard(key, dg)
            counters[DROP_TIMEOUT] += 1
            dg = None

        if frag_off == 0 and not mf:
            # A whole datagram (RFC 791 3.2, reassembly steps 2-5).
            if dg is not None:
                self._discard(key, dg)
                counters[DROP_OVERLAP] += 1
            counters[REASM_OK] += 1
            return bytearray(data)

        if dg is None:
            dg = self._start(key, now_us)
            if dg is None:
                counters[DROP_TABLE_FULL] += 1
                return DROP_TABLE_FULL

        # Inconsistent with what is held: discard the datagram.
        hole_first = dg.hole_first
        hole_last = dg.hole_last
        if dg.end >= 0:
            if end > dg.end or (not mf and end != dg.end):
                return self._reject(key, dg, DROP_BAD_LENGTH)
        elif not mf and end < hole_first[-1]:
            return self._reject(key, dg, DROP_BAD_LENGTH)
        if end > dg.limit:
            return self._reject(key, dg, DROP_OVERSIZE)

        sets_end = not mf and dg.end < 0
        if sets_end:
            # The last fragment: the trailing hole [data_end, infinity) shrinks
            # to [data_end, end), or vanishes when nothing is missing before it.
            dg.end = end
            if end > hole_first[-1]:
                hole_last[-1] = end
            else:
                hole_first.pop()
                hole_last.pop()

        if n:
            k = bisect_right(hole_first, frag_off) - 1
            if k >= 0 and end <= hole_last[k]:
                if frag_off == 0 and header_len > _MIN_HLEN:
                    limit = self._max_len - header_len
                    extent = dg.end if dg.end >= 0 else max(end, hole_first[-1])
                    if extent > limit:
                        return self._reject(key, dg, DROP_OVERSIZE)
                    dg.limit = limit
                if self._bytes + n > self._max_bytes:
                    self.expire(now_us)
                    if self._bytes + n > self._max_bytes:
                        # The datagram cannot complete without this fragment,
                        # which will not come again; free what it holds now.
                        return self._reject(key, dg, DROP_MEMORY)
                # RFC 815 steps 4 to 6: replace hole k by what is left of it
                # before and after the fragment.
                first = hole_first[k]
                last = hole_last[k]
                if first < frag_off:
                    hole_last[k] = frag_off
                    if end < last:
                        hole_first.insert(k + 1, end)
                        hole_last.insert(k + 1, last)
                elif end < last:
                    hole_first[k] = end
                else:
                    del hole_first[k]
                    del hole_last[k]
                dg.pieces[frag_off] = bytes(data)
                dg.nbytes += n
                self._bytes += n
            else:
                held = dg.pieces.get(frag_off)
                if held is None or held != data:
                    return self._reject(key, dg, DROP_OVERLAP)
                if not sets_end:
                    counters[DUPLICATE] += 1
                    return None
        elif not sets_end:
            # Zero bytes and an end already known: nothing new.
            counters[DUPLICATE] += 1
            return None

        if hole_first:
            return None
        # RFC 815 step 8: no hole left, the datagram is complete.
        del table[key]
        self._bytes -= dg.nbytes
        counters[REASM_OK] += 1
        out = bytearray(dg.end)
        for off, piece in dg.pieces.items():
            out[off : off + len(piece)] = piece
        return out

    def _start(self, key: tuple[int, int, int, int], now_us: int) -> _Datagram | None:
        """Create the datagram for key, or return None if the table stays full.

        When the table is full after expiring what is due, the new datagram is
        refused rather than the oldest one evicted.  Evicting would let anyone
        who sends max_datagrams small fragments under fresh keys flush every
        legitimate reassembly in progress, as often as they like; refusing
        keeps the work already done and bounds the damage of a flood to the
        datagrams that start while the table is full, until the flood's own
        entries time out.
        """
        table = self._table
        if len(table) >= self._max_datagrams:
            self.expire(now_us)
            if len(table) >= self._max_datagrams:
                return None
        dg = _Datagram(now_us + self._timeout_us, self._max_len - _MIN_HLEN)
        table[key] = dg
        return dg

    def _reject(self, key: tuple[int, int, int, int], dg: _Datagram, reason: str) -> str:
        self._discard(key, dg)
        self.counters[reason] += 1
        return reason

    def _discard(self, key: tuple[int, int, int, int], dg: _Datagram) -> None:
        del self._table[key]
        self._bytes -= dg.nbytes
