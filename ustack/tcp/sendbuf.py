"""TCP send buffer: a bounded byte ring of unacknowledged and unsent data.

Owns the bytes between SND.UNA and the end of what the application has
written (RFC 9293 3.3.1, "send sequence space": areas 2 and 3, sent but
unacknowledged and not yet sent).  The control block knows the sequence
numbers; this module knows only byte offsets from the head, the first
unacknowledged byte.

The ring is one `bytearray` allocated once and never resized, so a
memoryview taken by `view` stays a valid object for as long as the caller
holds it (a resize would raise BufferError while a view exists).  What it
shows is only guaranteed until the next `write`: acknowledged space is
reused.  A view never crosses the end of the ring; `view` returns fewer
bytes than asked for at the wrap point, and the control block sends the
rest in the next segment, once per trip around the ring.

Every operation is O(bytes copied): no per-write objects, no compaction.
"""

from __future__ import annotations

from ustack.wire.types import Buffer


class SendBuffer:
    """Bounded ring of bytes; offset 0 is the oldest unacknowledged byte."""

    __slots__ = ("_buf", "_cap", "_head", "_len", "_mv")

    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError(f"send buffer capacity must be positive, got {capacity}")
        self._buf = bytearray(capacity)
        self._mv = memoryview(self._buf)
        self._cap = capacity
        self._head = 0  # ring index of offset 0
        self._len = 0

    def __len__(self) -> int:
        return self._len

    @property
    def capacity(self) -> int:
        return self._cap

    @property
    def free(self) -> int:
        """Bytes `write` would accept now."""
        return self._cap - self._len

    def write(self, data: Buffer) -> int:
        """Append as much of `data` as fits; return the number of bytes taken."""
        n = len(data)
        room = self._cap - self._len
        if n > room:
            n = room
        if n == 0:
            return 0
        src = data if isinstance(data, memoryview) else memoryview(data)
        cap = self._cap
        tail = self._head + self._len
        if tail >= cap:
            tail -= cap
        first = cap - tail
        if first >= n:
            self._mv[tail : tail + n] = src[:n]
        else:
            self._mv[tail:cap] = src[:first]
            self._mv[: n - first] = src[first:n]
        self._len += n
        return n

    def view(self, offset: int, n: int) -> memoryview:
        """Up to `n` bytes from `offset`, without copying; shorter at the ring's end.

        The caller keeps 0 <= offset and offset + n <= len(self).
        """
        pos = self._head + offset
        cap = self._cap
        if pos >= cap:
            pos -= cap
        if n > cap - pos:
            n = cap - pos
        return self._mv[pos : pos + n]

    def consume(self, n: int) -> None:
        """Forget the first `n` bytes (they were acknowledged)."""
        if not 0 <= n <= self._len:
            raise ValueError(f"cannot consume {n} of {self._len} buffered bytes")
        self._len -= n
        if self._len == 0:
            self._head = 0  # keep the next writes contiguous
        else:
            head = self._head + n
            self._head = head - self._cap if head >= self._cap else head

    def clear(self) -> None:
        self._len = 0
        self._head = 0
