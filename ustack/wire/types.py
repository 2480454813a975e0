"""Buffer type aliases shared by the wire parsers and emitters.

Parsers accept any contiguous byte buffer (a received frame is usually a
memoryview slice of the device pool); emitters need a writable one.
"""

from typing import TypeAlias

Buffer: TypeAlias = bytes | bytearray | memoryview
"""Anything a parser reads with `struct.unpack_from`."""

WritableBuffer: TypeAlias = bytearray | memoryview
"""Anything an emitter writes with `struct.pack_into`."""

tuple_new = tuple.__new__
"""Builds a parsed-header NamedTuple from a tuple of its fields in order.

`tuple_new(Header, fields)` makes the same object as `Header(*fields)`
without the Python frame of the generated `__new__`, about half the cost on
a path taken once per frame per layer.
"""
