"""Drop reasons returned by the wire parsers.

A parser that meets malformed input returns one of these values instead of
raising (ARCHITECTURE.md rule 8).  Each value is the name of the counter the
stack increments, `drop_<layer>_<reason>`, so `counters[reason] += 1` needs
no mapping table.  Being a `StrEnum`, a reason compares equal to its counter
name and is never confused with a parsed header (a tuple).
"""

import enum


class Drop(enum.StrEnum):
    """Why a frame was dropped by a wire parser; the value is the counter name."""

    # Ethernet II (IEEE 802.3 clause 3.2.6)
    ETH_TRUNCATED = "drop_eth_truncated"
    """Fewer than 14 bytes: no complete Ethernet header."""
    ETH_VLAN = "drop_eth_vlan"
    """802.1Q or 802.1ad tagged frame; ustack has no VLAN support."""
    ETH_LENGTH_FIELD = "drop_eth_length_field"
    """Type field below 0x0600: an 802.3 length (LLC/SNAP frame), not Ethernet II."""

    # ARP (RFC 826), IPv4 over Ethernet only
    ARP_TRUNCATED = "drop_arp_truncated"
    """Fewer than the 28 bytes of an IPv4-over-Ethernet ARP packet."""
    ARP_BAD_HTYPE = "drop_arp_bad_htype"
    """Hardware type is not 1 (Ethernet)."""
    ARP_BAD_PTYPE = "drop_arp_bad_ptype"
    """Protocol type is not 0x0800 (IPv4)."""
    ARP_BAD_LENGTHS = "drop_arp_bad_lengths"
    """Hardware/protocol address lengths are not 6 and 4."""
    ARP_BAD_OP = "drop_arp_bad_op"
    """Opcode is neither 1 (request) nor 2 (reply)."""

    # IPv4 (RFC 791, RFC 1122 section 3.2.1)
    IPV4_TRUNCATED = "drop_ipv4_truncated"
    """The frame ends before the header or before total length."""
    IPV4_BAD_VERSION = "drop_ipv4_bad_version"
    """Version field is not 4."""
    IPV4_BAD_IHL = "drop_ipv4_bad_ihl"
    """Header length below 20 bytes."""
    IPV4_BAD_LENGTH = "drop_ipv4_bad_length"
    """Total length smaller than the header length."""
    IPV4_BAD_CHECKSUM = "drop_ipv4_bad_checksum"
    """Header checksum does not verify (RFC 1122 3.2.1.2)."""
    IPV4_RESERVED_FLAG = "drop_ipv4_reserved_flag"
    """The reserved flag bit, which RFC 791 requires to be zero, is set."""
    IPV4_FRAG_BAD_LENGTH = "drop_ipv4_frag_bad_length"
    """A non-final fragment whose data is not a positive multiple of 8 bytes."""
    IPV4_FRAG_OVERSIZE = "drop_ipv4_frag_oversize"
    """A fragment that ends beyond the 65535-byte datagram limit."""

    # ICMP (RFC 792)
    ICMP_TRUNCATED = "drop_icmp_truncated"
    """Fewer than the 8 bytes of an ICMP header."""
    ICMP_BAD_CHECKSUM = "drop_icmp_bad_checksum"
    """Checksum over the whole ICMP message does not verify."""

    # UDP (RFC 768)
    UDP_TRUNCATED = "drop_udp_truncated"
    """Fewer than the 8 bytes of a UDP header."""
    UDP_BAD_LENGTH = "drop_udp_bad_length"
    """UDP length below 8 or beyond the IP payload."""
    UDP_BAD_CHECKSUM = "drop_udp_bad_checksum"
    """Non-zero checksum that does not verify over pseudo header and datagram."""

    # TCP (RFC 9293 3.1; options: RFC 9293 3.7.1, RFC 7323, RFC 2018)
    TCP_TRUNCATED = "drop_tcp_truncated"
    """Fewer than the 20 bytes of a TCP header."""
    TCP_BAD_DATA_OFFSET = "drop_tcp_bad_data_offset"
    """Data offset below 5 words, or a header longer than the segment."""
    TCP_BAD_CHECKSUM = "drop_tcp_bad_checksum"
    """Checksum over pseudo header, header and data does not verify."""
    TCP_BAD_PORT = "drop_tcp_bad_port"
    """Source or destination port 0: reserved in the IANA registry, no socket has it."""
    TCP_BAD_FLAGS = "drop_tcp_bad_flags"
    """SYN with FIN or RST, or none of ACK, SYN, RST (see ustack/wire/tcp.py)."""
    TCP_BAD_OPTION = "drop_tcp_bad_option"
    """An option length below 2 or past the header, or a known option of the wrong length."""
