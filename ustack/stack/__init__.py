"""The Stack layer: interface, ARP, IPv4 in/out, ICMP, UDP, demux to transports."""

from ustack.stack.interface import Interface
from ustack.stack.stack import Stack
from ustack.stack.udp import UdpSocket

__all__ = ["Interface", "Stack", "UdpSocket"]
