"""The SACK scoreboard of a data sender (RFC 2018, RFC 6675), sans-IO.

Owns what the peer's SACK blocks said about our data in flight: which
ranges above SND.UNA it holds.  The control block feeds in validated
blocks and asks the questions of RFC 6675's recovery: is a byte lost
(IsLost), which unSACKed bytes come next (NextSeg's rules), and how much
of a range is SACKed (for the pipe estimate).

Positions are absolute stream offsets (ints that only grow: the number of
bytes between the connection's first data byte and the position), not
32-bit sequence numbers, so the scoreboard needs no modular arithmetic;
the control block converts.  The ranges are a short sorted list of
disjoint, non-adjacent [start, end) pairs; `max_ranges` bounds it (a
block that would need one more range is ignored: the peer repeats its
blocks in every ACK, and the data is retransmitted at worst).

IsLost (RFC 6675 section 4) for a position s: at least DupThresh
discontiguous SACKed ranges lie above s, or more than (DupThresh - 1) *
SMSS bytes above s are SACKed.  Both counts only grow as s moves down, so
the lost positions are exactly the unSACKed ones below one boundary,
`lost_end`, found by walking the ranges from the top.  (RFC 6675 counts
discontiguous SACKed *segments*; a range stands for at least one.)
"""

from __future__ import annotations

__all__ = ["Scoreboard"]


class Scoreboard:
    """SACKed ranges above SND.UNA as absolute offsets; see the module docstring."""

    __slots__ = ("_ranges", "max_ranges", "sacked_bytes")

    def __init__(self, max_ranges: int = 32) -> None:
        if max_ranges < 1:
            raise ValueError(f"max_ranges must be at least 1, got {max_ranges}")
        self._ranges: list[list[int]] = []
        self.max_ranges = max_ranges
        self.sacked_bytes = 0

    def __bool__(self) -> bool:
        return bool(self._ranges)

    def __len__(self) -> int:
        return len(self._ranges)

    @property
    def ranges(self) -> list[tuple[int, int]]:
        return [(r[0], r[1]) for r in self._ranges]

    def clear(self) -> None:
        self._ranges.clear()
        self.sacked_bytes = 0

    def add(self, start: int, end: int) -> int:
        """Mark [start, end) SACKed; return how many bytes were not SACKed before."""
        if end <= start:
            return 0
        ranges = self._ranges
        i = 0
        while i < len(ranges) and ranges[i][1] < start:
            i += 1
        j = i
        while j < len(ranges) and ranges[j][0] <= end:
            j += 1
        if i == j:
            if len(ranges) >= self.max_ranges:
                return 0
            ranges.insert(i, [start, end])
            self.sacked_bytes += end - start
            return end - start
        old = sum(r[1] - r[0] for r in ranges[i:j])
        start = min(start, ranges[i][0])
        end = max(end, ranges[j - 1][1])
        ranges[i:j] = [[start, end]]
        new = (end - start) - old
        self.sacked_bytes += new
        return new

    def advance(self, una: int) -> None:
        """SND.UNA moved to `una`: forget everything below it."""
        ranges = self._ranges
        k = 0
        while k < len(ranges) and ranges[k][1] <= una:
            self.sacked_bytes -= ranges[k][1] - ranges[k][0]
            k += 1
        if k:
            del ranges[:k]
        if ranges and ranges[0][0] < una:
            self.sacked_bytes -= una - ranges[0][0]
            ranges[0][0] = una

    def sacked_in(self, start: int, end: int) -> int:
        """SACKed bytes within [start, end)."""
        n = 0
        for a, b in self._ranges:
            if a >= end:
                break
            if b > start:
                n += min(b, end) - max(a, start)
        return n

    def lost_end(self, smss: int, dupthresh: int = 3) -> int | None:
        """The boundary below which every unSACKed byte IsLost, or None if none is."""
        total = 0
        limit = (dupthresh - 1) * smss
        for count, (a, b) in enumerate(reversed(self._ranges), 1):
            total += b - a
            if count >= dupthresh or total > limit:
                return a
        return None

    def next_unsacked(self, pos: int, limit: int) -> tuple[int, int] | None:
        """The first unSACKed [start, end) at or after `pos` and below `limit`, or None."""
        for a, b in self._ranges:
            if pos < a:
                break
            if pos < b:
                pos = b
        if pos >= limit:
            return None
        end = limit
        for a, _ in self._ranges:
            if a > pos:
                end = min(a, limit)
                break
        return pos, end

    def holes(self, una: int) -> int:
        """Unsacked gaps between `una` and the highest SACKed byte."""
        n = 0
        pos = una
        for a, b in self._ranges:
            if a > pos:
                n += 1
            pos = b
        return n
