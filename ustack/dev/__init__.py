"""Device layer: the TAP ring, an in-memory device, and the pcap recorder.

Only ustack.dev.ring imports the compiled ring (ustack._ring).
"""

from ustack.dev.base import FrameDevice, VnetHeader
from ustack.dev.memring import MemoryRing
from ustack.dev.pcap import PcapWriter
from ustack.dev.ring import Ring

__all__ = ["FrameDevice", "MemoryRing", "PcapWriter", "Ring", "VnetHeader"]
