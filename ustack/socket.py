"""A stand-in for Python's `socket` module whose sockets run on ustack.

A library that takes a socket module as a parameter works unchanged when
given this one::

    import ustack, ustack.socket
    ustack.configure(name="lab", poll="hybrid")
    client = pymemcache.client.base.Client(("198.18.0.1", 11211), socket_module=ustack.socket)

`socket()` (the class), `create_connection`, `create_server`,
`getaddrinfo`, `gethostbyname`, the exceptions (`error`, `timeout`,
`gaierror`, `herror`, the same classes as the real module's), the address
helpers (`inet_aton`, `inet_ntoa`, `inet_pton`, `inet_ntop`, `htons`...)
and the usual constants are here.  Sockets use the calling thread's
Context (`ustack.api.context.current()`), opened on first use from
`ustack.configure(**config)` or the environment.

Differences from the real module: no name resolution (numeric IPv4 only;
anything else raises gaierror), no IPv6 (`has_ipv6` is False, AF_INET6
raises OSError EAFNOSUPPORT), no AF_UNIX, no file descriptors (fileno() is
-1; use ustack.api.epoll instead of select).  Any other upper-case
constant of the real module is forwarded, so `mod.SOMETHING` resolves, but
functions that would reach the kernel's network are not.
"""

from __future__ import annotations

import errno as _errno
import os as _os
import socket as _std
from collections.abc import Iterable as _Iterable
from typing import Any as _Any

from ustack.api.socket import Socket as socket
from ustack.api.socket import getdefaulttimeout, setdefaulttimeout
from ustack.api.socket import parse_host as _parse_host

__all__ = [
    "AF_INET",
    "AF_INET6",
    "AF_UNSPEC",
    "SOCK_DGRAM",
    "SOCK_STREAM",
    "SocketType",
    "create_connection",
    "create_server",
    "error",
    "gaierror",
    "getaddrinfo",
    "getdefaulttimeout",
    "gethostbyname",
    "has_ipv6",
    "herror",
    "inet_aton",
    "inet_ntoa",
    "setdefaulttimeout",
    "socket",
    "timeout",
]

SocketType = socket

# Exceptions: the real module's classes, so handlers written for either catch both.
error = OSError
timeout = TimeoutError
gaierror = _std.gaierror
herror = _std.herror

has_ipv6 = False
_GLOBAL_DEFAULT_TIMEOUT = _std._GLOBAL_DEFAULT_TIMEOUT  # type: ignore[attr-defined]

# Pure address helpers: no network involved.
inet_aton = _std.inet_aton
inet_ntoa = _std.inet_ntoa
inet_pton = _std.inet_pton
inet_ntop = _std.inet_ntop
htons = _std.htons
ntohs = _std.ntohs
htonl = _std.htonl
ntohl = _std.ntohl

AddressFamily = _std.AddressFamily
SocketKind = _std.SocketKind
AF_INET = _std.AF_INET
AF_INET6 = _std.AF_INET6
AF_UNSPEC = _std.AF_UNSPEC
AF_UNIX = _std.AF_UNIX
SOCK_STREAM = _std.SOCK_STREAM
SOCK_DGRAM = _std.SOCK_DGRAM
SOCK_RAW = _std.SOCK_RAW
SOCK_NONBLOCK = _std.SOCK_NONBLOCK
SOCK_CLOEXEC = _std.SOCK_CLOEXEC
SOL_SOCKET = _std.SOL_SOCKET
SOL_TCP = _std.SOL_TCP
SOL_UDP = _std.SOL_UDP
IPPROTO_IP = _std.IPPROTO_IP
IPPROTO_TCP = _std.IPPROTO_TCP
IPPROTO_UDP = _std.IPPROTO_UDP
SO_REUSEADDR = _std.SO_REUSEADDR
SO_REUSEPORT = _std.SO_REUSEPORT
SO_KEEPALIVE = _std.SO_KEEPALIVE
SO_RCVBUF = _std.SO_RCVBUF
SO_SNDBUF = _std.SO_SNDBUF
SO_LINGER = _std.SO_LINGER
SO_ERROR = _std.SO_ERROR
SO_TYPE = _std.SO_TYPE
SO_ACCEPTCONN = _std.SO_ACCEPTCONN
SO_BROADCAST = _std.SO_BROADCAST
TCP_NODELAY = _std.TCP_NODELAY
TCP_MAXSEG = _std.TCP_MAXSEG
TCP_KEEPIDLE = _std.TCP_KEEPIDLE
TCP_KEEPINTVL = _std.TCP_KEEPINTVL
TCP_KEEPCNT = _std.TCP_KEEPCNT
TCP_INFO = _std.TCP_INFO
TCP_USER_TIMEOUT = _std.TCP_USER_TIMEOUT
SHUT_RD = _std.SHUT_RD
SHUT_WR = _std.SHUT_WR
SHUT_RDWR = _std.SHUT_RDWR
MSG_DONTWAIT = _std.MSG_DONTWAIT
MSG_NOSIGNAL = _std.MSG_NOSIGNAL
MSG_PEEK = _std.MSG_PEEK
SOMAXCONN = _std.SOMAXCONN
INADDR_ANY = _std.INADDR_ANY
INADDR_BROADCAST = _std.INADDR_BROADCAST
AI_PASSIVE = _std.AI_PASSIVE
AI_NUMERICHOST = _std.AI_NUMERICHOST
AI_NUMERICSERV = _std.AI_NUMERICSERV
AI_CANONNAME = _std.AI_CANONNAME
EAI_NONAME = _std.EAI_NONAME
EAI_SERVICE = _std.EAI_SERVICE
EAI_FAMILY = _std.EAI_FAMILY
EAI_SOCKTYPE = _std.EAI_SOCKTYPE
EAI_ADDRFAMILY = _std.EAI_ADDRFAMILY


def __getattr__(name: str) -> int:
    """Other upper-case constants of the real module (values only, never functions)."""
    if name.isupper():
        value = getattr(_std, name, None)
        if isinstance(value, int):
            return value
    raise AttributeError(f"module 'ustack.socket' has no attribute {name!r}")


def _port_of(port: object) -> int:
    if port is None:
        return 0
    if isinstance(port, bytes | bytearray):
        port = bytes(port).decode("ascii")
    if isinstance(port, str):
        if not (port.isascii() and port.isdigit()):
            raise gaierror(
                EAI_SERVICE,
                f"Servname not supported for ai_socktype: ustack takes numeric ports only, "
                f"got {port!r}",
            )
        port = int(port)
    if not isinstance(port, int):
        raise OSError("Int or String expected")
    if not 0 <= port <= 65535:
        raise gaierror(EAI_SERVICE, "Servname not supported for ai_socktype")
    return port


def getaddrinfo(
    host: str | bytes | None,
    port: str | bytes | int | None,
    family: int = 0,
    type: int = 0,
    proto: int = 0,
    flags: int = 0,
) -> list[tuple[AddressFamily, SocketKind, int, str, tuple[str, int]]]:
    """Numeric IPv4 only: host "a.b.c.d" (None: 0.0.0.0 with AI_PASSIVE, else 127.0.0.1).

    A host name raises gaierror (EAI_NONAME): ustack does not resolve names.
    """
    if family not in (AF_UNSPEC, AF_INET):
        raise gaierror(EAI_ADDRFAMILY, "Address family for hostname not supported")
    if isinstance(host, bytes | bytearray):
        host = bytes(host).decode("ascii")
    if not host:
        text = "0.0.0.0" if flags & AI_PASSIVE else "127.0.0.1"
    else:
        text = _std.inet_ntoa(_parse_host(host).to_bytes(4, "big"))
    portnum = _port_of(port)
    kinds: _Iterable[tuple[SocketKind, int]]
    if type == 0:
        kinds = ((SOCK_STREAM, IPPROTO_TCP), (SOCK_DGRAM, IPPROTO_UDP))
    elif type == SOCK_STREAM:
        kinds = ((SOCK_STREAM, IPPROTO_TCP),)
    elif type == SOCK_DGRAM:
        kinds = ((SOCK_DGRAM, IPPROTO_UDP),)
    else:
        raise gaierror(EAI_SOCKTYPE, "ai_socktype not supported")
    out = []
    for kind, p in kinds:
        if proto not in (0, p):
            continue
        out.append((AF_INET, kind, p, "", (text, portnum)))
    if not out:
        raise gaierror(EAI_SERVICE, "Servname not supported for ai_socktype")
    return out


def gethostbyname(hostname: str) -> str:
    """The address itself for a numeric IPv4 host; gaierror for a name."""
    ip = _parse_host(hostname)
    return _std.inet_ntoa(ip.to_bytes(4, "big"))


def create_connection(
    address: tuple[str, int],
    timeout: float | object | None = _GLOBAL_DEFAULT_TIMEOUT,
    source_address: tuple[str, int] | None = None,
    *,
    all_errors: bool = False,
) -> socket:
    """Connect a TCP socket to (host, port), as socket.create_connection (numeric hosts)."""
    host, port = address
    errors: list[Exception] = []
    for family, kind, proto, _canon, sa in getaddrinfo(host, port, 0, SOCK_STREAM):
        sock = None
        try:
            sock = socket(family, kind, proto)
            if timeout is not _GLOBAL_DEFAULT_TIMEOUT:
                sock.settimeout(timeout)  # type: ignore[arg-type]
            if source_address:
                sock.bind(source_address)
            sock.connect(sa)
            return sock
        except OSError as exc:
            errors.append(exc)
            if sock is not None:
                sock.close()
    if not errors:
        raise OSError("getaddrinfo returns an empty list")
    if all_errors:
        raise ExceptionGroup("create_connection failed", errors)
    raise errors[0]


def create_server(
    address: tuple[str, int],
    *,
    family: int = AF_INET,
    backlog: int | None = None,
    reuse_port: bool = False,
    dualstack_ipv6: bool = False,
) -> socket:
    """A listening TCP socket bound to `address`, as socket.create_server (SO_REUSEADDR on)."""
    if reuse_port or dualstack_ipv6:
        raise ValueError("ustack has no SO_REUSEPORT and no IPv6")
    sock = socket(family, SOCK_STREAM)
    try:
        sock.setsockopt(SOL_SOCKET, SO_REUSEADDR, 1)
        sock.bind(address)
        if backlog is None:
            sock.listen()
        else:
            sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def has_dualstack_ipv6() -> bool:
    return False


def socketpair(*args: _Any, **kwargs: _Any) -> socket:
    raise OSError(_errno.EOPNOTSUPP, f"{_os.strerror(_errno.EOPNOTSUPP)}: ustack has no AF_UNIX")
