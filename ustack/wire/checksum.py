"""Internet checksum (RFC 1071) and TCP/UDP pseudo-header sums (RFC 768, 9293).

Thin typed face of the C routine in ext/checksum.c.  Sums are integers in
network order; `pseudo_sum` feeds `checksum` as its initial value.
"""

from ustack._csum import ffi as _ffi
from ustack._csum import lib as _lib

_from_buffer = _ffi.from_buffer
_csum = _lib.us_csum
_csum_partial = _lib.us_csum_partial
pseudo_sum = _lib.us_pseudo_sum
"""pseudo_sum(src, dst, proto, length): unfolded sum of the IPv4 pseudo header;
addresses are integers in host order."""


def checksum(buf: bytes | bytearray | memoryview, off: int, length: int, initial: int = 0) -> int:
    """One's complement of the one's complement sum of buf[off:off+length].

    A region that carries a correct checksum sums to 0.
    """
    if off < 0 or length < 0 or off + length > len(buf):
        raise ValueError(f"checksum range {off}+{length} outside a buffer of {len(buf)} bytes")
    return int(_csum(_from_buffer(buf), off, length, initial))


def checksum_partial(
    buf: bytes | bytearray | memoryview, off: int, length: int, initial: int = 0
) -> int:
    """The folded sum without the final complement, to chain several regions."""
    if off < 0 or length < 0 or off + length > len(buf):
        raise ValueError(f"checksum range {off}+{length} outside a buffer of {len(buf)} bytes")
    return int(_csum_partial(_from_buffer(buf), off, length, initial))
