"""UDP echo (RFC 862) on the native datagram socket.

Every datagram that arrives on the port goes back to its sender unchanged.
Replies of one burst leave together when the Context flushes.
"""

from __future__ import annotations

from collections.abc import Callable

from ustack.loop import Context

MAX_DATAGRAM = 65535


def serve_udp_echo(ctx: Context, port: int, should_stop: Callable[[], bool]) -> int:
    """Echo until should_stop() is true; returns the number of datagrams echoed."""
    sock = ctx.stack.udp_socket()
    sock.bind(("", port))
    echoed = 0
    try:
        while not should_stop():
            for ready in ctx.poll(0.5):
                while ready.readable:
                    data, addr = ready.recvfrom(MAX_DATAGRAM)
                    if addr[1] == 0:
                        continue  # RFC 768: source port 0 means no reply is wanted
                    ready.sendto(data, addr)
                    echoed += 1
    finally:
        sock.close()
    return echoed
