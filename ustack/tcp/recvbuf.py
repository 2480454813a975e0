"""TCP receive buffer: a bounded byte ring with in-place reassembly of out-of-order data.

Owns the bytes that arrived but that the application has not read, and
the out-of-order data beyond RCV.NXT (RFC 9293 3.10.7.4, seventh step:
segments "other than the expected next one" may be held for later).  The
control block maps sequence numbers to offsets from RCV.NXT; this module
knows only offsets.

Theory of operation
-------------------

One `bytearray` of `capacity` bytes, allocated once.  Positions are
absolute stream offsets (Python ints that only grow), and byte x of the
stream lives at ring index x mod capacity:

    read          commit                          read + capacity
     |  readable    |  window: holes and ranges     |
     +--------------+--------------------------------+

- [read, commit) is in order and readable (`readable`).
- [commit, read + capacity) is the space the receive window may offer
  (`space`).  Out-of-order data is copied straight to its place in that
  space and its extent recorded in `ranges`, a short sorted list of
  disjoint, non-adjacent [start, end) extents, all beyond `commit`.  When
  in-order data reaches a range, `commit` jumps over it: filling a hole
  costs no second copy (the idea of smoltcp's Assembler).

The number of ranges is bounded (`max_ranges`); a segment that would
need a new range beyond the bound is refused and the sender retransmits
it later.  Memory is bounded by `capacity` whatever arrives, because the
control block never offers more window than `space` and `write` trims
anything beyond it.

Each range carries a recency stamp so that `sack_ranges` can list the
most recently changed range first, as RFC 2018 section 4 asks of SACK
blocks.
"""

from __future__ import annotations

from ustack.wire.types import Buffer, WritableBuffer


class RecvBuffer:
    """Bounded ring of received bytes with out-of-order ranges; see the module docstring."""

    __slots__ = ("_buf", "_cap", "_clock", "_commit", "_mv", "_ranges", "_read", "max_ranges")

    def __init__(self, capacity: int, max_ranges: int = 32) -> None:
        if capacity <= 0:
            raise ValueError(f"receive buffer capacity must be positive, got {capacity}")
        if max_ranges < 1:
            raise ValueError(f"max_ranges must be at least 1, got {max_ranges}")
        self._buf = bytearray(capacity)
        self._mv = memoryview(self._buf)
        self._cap = capacity
        self._read = 0
        self._commit = 0
        # [start, end, stamp], absolute offsets, sorted by start, start > commit
        self._ranges: list[list[int]] = []
        self._clock = 0
        self.max_ranges = max_ranges

    @property
    def capacity(self) -> int:
        return self._cap

    @property
    def readable(self) -> int:
        """In-order bytes the application may read."""
        return self._commit - self._read

    @property
    def space(self) -> int:
        """Bytes from the in-order end (RCV.NXT) to the end of the buffer."""
        return self._cap - (self._commit - self._read)

    @property
    def has_out_of_order(self) -> bool:
        return bool(self._ranges)

    @property
    def out_of_order_bytes(self) -> int:
        return sum(r[1] - r[0] for r in self._ranges)

    def _copy_in(self, pos: int, data: memoryview) -> None:
        cap = self._cap
        i = pos % cap
        n = len(data)
        first = cap - i
        if first >= n:
            self._mv[i : i + n] = data
        else:
            self._mv[i:cap] = data[:first]
            self._mv[: n - first] = data[first:]

    def write(self, data: Buffer) -> int:
        """Append in-order data at RCV.NXT; return how far RCV.NXT advances.

        The advance includes any out-of-order ranges the data reaches.
        Bytes beyond `space` are ignored (the caller trims to the window).
        """
        src = data if isinstance(data, memoryview) else memoryview(data)
        room = self.space
        if len(src) > room:
            src = src[:room]
        n = len(src)
        if n == 0:
            return 0
        start = self._commit
        self._copy_in(start, src)
        commit = start + n
        ranges = self._ranges
        if ranges and ranges[0][0] <= commit:
            k = 0
            while k < len(ranges) and ranges[k][0] <= commit:
                if ranges[k][1] > commit:
                    commit = ranges[k][1]
                k += 1
            del ranges[:k]
        self._commit = commit
        return commit - start

    def insert(self, offset: int, data: Buffer) -> bool:
        """Store data that starts `offset` > 0 bytes beyond RCV.NXT.

        Returns False, storing nothing, if it needs a new range and
        `max_ranges` are in use.  Bytes beyond `space` are ignored.
        """
        if offset <= 0:
            raise ValueError(f"out-of-order data must start beyond RCV.NXT, got offset {offset}")
        src = data if isinstance(data, memoryview) else memoryview(data)
        room = self.space - offset
        if len(src) > room:
            src = src[: max(room, 0)]
        n = len(src)
        if n == 0:
            return True
        start = self._commit + offset
        end = start + n
        ranges = self._ranges
        # first range that ends at or after `start` (touching counts as overlap)
        i = 0
        while i < len(ranges) and ranges[i][1] < start:
            i += 1
        # ranges i..j-1 overlap or touch [start, end)
        j = i
        while j < len(ranges) and ranges[j][0] <= end:
            j += 1
        if i == j and len(ranges) >= self.max_ranges:
            return False
        self._copy_in(start, src)
        self._clock += 1
        if i < j:
            start = min(start, ranges[i][0])
            end = max(end, ranges[j - 1][1])
            ranges[i:j] = [[start, end, self._clock]]
        else:
            ranges.insert(i, [start, end, self._clock])
        return True

    def ooo_ranges(self) -> list[tuple[int, int]]:
        """Out-of-order extents as (offset, end offset) from RCV.NXT, in sequence order."""
        c = self._commit
        return [(r[0] - c, r[1] - c) for r in self._ranges]

    def sack_ranges(self, n: int) -> list[tuple[int, int]]:
        """Up to `n` out-of-order extents as offsets from RCV.NXT, most recent first."""
        c = self._commit
        ordered = sorted(self._ranges, key=lambda r: -r[2])
        return [(r[0] - c, r[1] - c) for r in ordered[:n]]

    def read(self, n: int) -> bytes:
        """Take up to `n` readable bytes."""
        avail = self._commit - self._read
        if n > avail:
            n = avail
        if n <= 0:
            return b""
        cap = self._cap
        i = self._read % cap
        self._read += n
        if i + n <= cap:
            return bytes(self._mv[i : i + n])
        return bytes(self._mv[i:cap]) + bytes(self._mv[: n - (cap - i)])

    def read_into(self, out: WritableBuffer) -> int:
        """Copy up to len(out) readable bytes into `out`; return how many."""
        n = min(len(out), self._commit - self._read)
        if n <= 0:
            return 0
        dst = out if isinstance(out, memoryview) else memoryview(out)
        cap = self._cap
        i = self._read % cap
        first = cap - i
        if first >= n:
            dst[:n] = self._mv[i : i + n]
        else:
            dst[:first] = self._mv[i:cap]
            dst[first:n] = self._mv[: n - first]
        self._read += n
        return n

    def discard_out_of_order(self) -> None:
        self._ranges.clear()
