"""Classic pcap writer (LINKTYPE_ETHERNET) for frames in and out of a Ring.

The format is the original libpcap one (magic 0xa1b2c3d4, microsecond
timestamps) that tcpdump, tshark and scapy all read.  Frames are copied
into a buffered file as they pass; nothing is kept.
"""

from __future__ import annotations

import struct
import time
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    from ustack.dev.base import FrameDevice

LINKTYPE_ETHERNET = 1
SNAPLEN = 262144
_GLOBAL = struct.Struct("<IHHiIII")
_RECORD = struct.Struct("<IIII")


class PcapWriter:
    """Appends frames to a pcap file; `close()` flushes it."""

    def __init__(self, path: str, snaplen: int = SNAPLEN) -> None:
        self.path = path
        self.snaplen = snaplen
        self.frames = 0
        self._file: BinaryIO = open(path, "wb")  # noqa: SIM115 - closed by close()
        self._file.write(_GLOBAL.pack(0xA1B2C3D4, 2, 4, 0, 0, snaplen, LINKTYPE_ETHERNET))
        self._header = bytearray(_RECORD.size)

    def write_frame(self, frame: bytes | bytearray | memoryview, ts_ns: int | None = None) -> None:
        if ts_ns is None:
            ts_ns = time.time_ns()
        length = len(frame)
        incl = min(length, self.snaplen)
        sec, nsec = divmod(ts_ns, 1_000_000_000)
        _RECORD.pack_into(self._header, 0, sec, nsec // 1000, incl, length)
        self._file.write(self._header)
        self._file.write(frame[:incl])
        self.frames += 1

    def write_rx(self, ring: FrameDevice, n: int) -> None:
        now = time.time_ns()
        for i in range(n):
            self.write_frame(ring.frame(i), now)

    def write_tx(self, ring: FrameDevice, n: int) -> None:
        now = time.time_ns()
        pool = ring.pool
        for i in range(n):
            off = ring.tx_offset(ring.tx_slot_of(i))
            self.write_frame(pool[off : off + ring.tx_len_of(i)], now)

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
