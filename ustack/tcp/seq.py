"""TCP sequence-number arithmetic modulo 2**32 (RFC 9293 section 3.4).

Sequence numbers live in a space of 2**32 values that wraps around, so they
are never compared with `<` directly (STYLE.md).  The rule, the one Linux
uses in `before()`/`after()` and RFC 1982 calls serial-number arithmetic:
`a` comes before `b` when the distance from `a` forwards to `b` is less than
half the space, that is when `(a - b) mod 2**32`, read as a signed 32-bit
integer, is negative.  TCP keeps this unambiguous by never having more than
2**30 bytes in flight or in a window (RFC 7323 section 2.3 caps the window
scale at 14 for that reason).

All four comparisons are defined by the sign of `seq_sub(a, b)`, so
`seq_lt` is exactly `not seq_ge` and `seq_gt` exactly `not seq_le`.  At the
one distance RFC 1982 leaves undefined, exactly 2**31, `seq_sub` gives
-2**31 in both orders: each number is "before" the other, as with Linux's
`before()`; no TCP state ever compares numbers that far apart.

Arguments are 32-bit sequence numbers (ints in 0..2**32-1); results of
`seq_add`, `seq_max` and `seq_min` are too.  The functions are plain
integer expressions, cheap enough for the per-segment path.
"""

_MASK = 0xFFFFFFFF
_HALF = 0x80000000


def seq_add(a: int, n: int) -> int:
    """a + n modulo 2**32; n may be negative."""
    return (a + n) & _MASK


def seq_sub(a: int, b: int) -> int:
    """Signed distance from b to a, in -2**31..2**31-1: `(s32)(a - b)` in C."""
    return ((a - b + _HALF) & _MASK) - _HALF


def seq_lt(a: int, b: int) -> bool:
    """a is before b (Linux `before(a, b)`)."""
    return ((a - b) & _MASK) >= _HALF


def seq_le(a: int, b: int) -> bool:
    """a is before b or equal to it."""
    return ((b - a) & _MASK) <= _HALF


def seq_gt(a: int, b: int) -> bool:
    """a is after b."""
    return ((b - a) & _MASK) > _HALF


def seq_ge(a: int, b: int) -> bool:
    """a is after b or equal to it."""
    return ((a - b) & _MASK) < _HALF


def seq_max(a: int, b: int) -> int:
    """The later of a and b."""
    return b if ((a - b) & _MASK) >= _HALF else a


def seq_min(a: int, b: int) -> int:
    """The earlier of a and b."""
    return a if ((a - b) & _MASK) >= _HALF else b


def seq_in_window(x: int, start: int, size: int) -> bool:
    """start <= x < start + size modulo 2**32; a window of size 0 holds nothing.

    This is the test of RFC 9293 3.10.7.4 (`RCV.NXT =< SEG.SEQ < RCV.NXT +
    RCV.WND`) in one subtraction: the offset of x from start, taken modulo
    2**32, must be below size.  `size` is at most 2**32; TCP's are at most 2**30.
    """
    return ((x - start) & _MASK) < size
