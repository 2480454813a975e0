"""Device layer: the Python face of the C ring, and the pcap recorder.

Only this package imports the compiled ring (ustack._ring).
"""

from ustack.dev.pcap import PcapWriter
from ustack.dev.ring import Ring, VnetHeader

__all__ = ["PcapWriter", "Ring", "VnetHeader"]
