"""The ustack event loop: asyncio's SelectorEventLoop with ustack underneath.

`UstackEventLoop` is a standard `asyncio.SelectorEventLoop` whose selector
(`UstackSelector`) drives a ustack Context (see selector.py for where and
how the stack is polled).  TCP and UDP endpoints that asyncio code opens
on it live on ustack:

- `create_connection` / `asyncio.open_connection`: an active open on the
  stack; the transport is a `TcpTransport`.
- `create_server` / `asyncio.start_server`: ustack listeners; host None,
  "", "0.0.0.0", "::" or the stack's own address listen on the stack's
  address.  Port 0 or None picks a free port.
- `create_datagram_endpoint`: a ustack UDP socket.

Loopback stays with the kernel: a host that is a loopback address or
"localhost", and any call given an existing kernel `sock=`, go to asyncio's
own implementation over kernel sockets, as do `sock_*`, `add_reader`,
subprocesses, `run_in_executor`, signals and every other loop feature.
ustack is IPv4 only: other IPv6 addresses raise EAFNOSUPPORT.

As asyncio's transports do, ustack connections are opened with
TCP_NODELAY (`get_extra_info('socket').setsockopt` turns it off).

Closing the loop closes what the application left open (FIN, or RST
with unread data, as process exit does on a kernel), lingers up to
`CLOSE_LINGER_S` for those FINs to be acknowledged, resets the rest and
closes the Context's device (unless the Context was handed in).
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import ipaddress
import logging
import random
import socket
import ssl as _ssl
import threading
from asyncio import sslproto
from collections.abc import Callable, Sequence
from typing import Any, Final, cast

from ustack.aio.selector import UstackSelector
from ustack.aio.server import ProtocolFactory, Server
from ustack.aio.transports import DatagramTransport, TcpTransport, conn_error
from ustack.config import Config
from ustack.dev.fault import FaultSpec
from ustack.loop import Context, WrongThreadError
from ustack.stack.stack import Stack
from ustack.stack.tcp import TcpConnection
from ustack.tcp.tcb import State
from ustack.wire.ipv4 import ip_from_str, ip_to_str

logger = logging.getLogger("ustack.aio")

CLOSE_LINGER_S: Final = 1.0
"""How long loop.close() waits for the FINs of connections it closes."""

_EPHEMERAL_LOW: Final = 32768
_EPHEMERAL_HIGH: Final = 60999
_ANY_HOSTS: Final = (None, "", "0.0.0.0", "::")
_DONE_STATES: Final = frozenset({State.CLOSED, State.TIME_WAIT, State.FIN_WAIT_2})
_CONNECTING: Final = frozenset({State.SYN_SENT, State.SYN_RECEIVED})


def _is_loopback(host: object) -> bool:
    if not isinstance(host, str):
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _only_known(kwargs: dict[str, Any], method: str, known: tuple[str, ...]) -> None:
    """Keywords of newer Pythons that the ustack path understands; others are an error."""
    unknown = sorted(set(kwargs) - set(known))
    if unknown:
        raise TypeError(f"{method}() got unexpected keyword argument(s) {', '.join(unknown)}")


def _ipv4_literal(host: str) -> int | None:
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return None
    if addr.version != 4:
        raise OSError(errno.EAFNOSUPPORT, f"ustack speaks IPv4 only, cannot use {host}")
    return int(addr)


class UstackEventLoop(asyncio.SelectorEventLoop):
    """An asyncio event loop whose TCP and UDP endpoints live on a ustack Context."""

    def __init__(self, context: Context, *, own_context: bool = True) -> None:
        context.start()
        self._ustack_ctx = context
        self._own_context = own_context
        self._ustack_selector = UstackSelector(context)
        self._selector_wake = self._ustack_selector.wake
        tcp = context.stack.tcp
        # asyncio sets TCP_NODELAY on every TCP transport (selector_events._set_nodelay).
        self._tcp_config = dataclasses.replace(tcp.config, nodelay=True)
        super().__init__(self._ustack_selector)

    # -- ustack specifics ---------------------------------------------------------

    @property
    def context(self) -> Context:
        return self._ustack_ctx

    @property
    def stack(self) -> Stack:
        return self._ustack_ctx.stack

    def _schedule(self, cb: Callable[..., object], *args: Any) -> None:
        """call_soon from inside the selector: also tells it not to block."""
        self.call_soon(cb, *args)
        self._selector_wake()

    def stats(self) -> dict[str, int | float]:
        """The stack's counters, the Context's and the selector's."""
        out: dict[str, int | float] = dict(self.stack.stats())
        out.update(self._ustack_ctx.stats())
        out.update(self._ustack_selector.stats())
        return out

    def _free_port(self) -> int:
        tcp = self.stack.tcp
        used = set(tcp.listeners)
        used.update(c.local[1] for c in tcp.conns.values())
        span = _EPHEMERAL_HIGH - _EPHEMERAL_LOW + 1
        start = random.randrange(span)
        for i in range(span):
            port = _EPHEMERAL_LOW + (start + i) % span
            if port not in used:
                return port
        raise OSError(errno.EADDRINUSE, "no free TCP port left for a listener")

    async def _resolve(self, host: str, port: int, kind: int) -> list[int]:
        """IPv4 addresses (host-order ints) for host: a literal, or getaddrinfo's answer."""
        ip = _ipv4_literal(host)
        if ip is not None:
            return [ip]
        infos = await self.getaddrinfo(host, port, family=socket.AF_INET, type=kind)
        if not infos:
            raise OSError(f"getaddrinfo({host!r}) returned empty list")
        out: list[int] = []
        for *_, sa in infos:
            a = ip_from_str(str(sa[0]))
            if a not in out:
                out.append(a)
        return out

    def _check_local_host(self, host: object, port: object) -> None:
        if host in _ANY_HOSTS:
            return
        if isinstance(host, str):
            ip = _ipv4_literal(host)
            if ip == self.stack.iface.addr:
                return
        raise OSError(
            errno.EADDRNOTAVAIL,
            f"cannot bind to ({host!r}, {port!r}): ustack's address is "
            f"{ip_to_str(self.stack.iface.addr)}",
        )

    # -- TCP: active open -----------------------------------------------------------

    async def create_connection(  # type: ignore[override]
        self,
        protocol_factory: ProtocolFactory,
        host: str | None = None,
        port: int | None = None,
        *,
        ssl: _ssl.SSLContext | bool | None = None,
        family: int = 0,
        proto: int = 0,
        flags: int = 0,
        sock: socket.socket | None = None,
        local_addr: tuple[str, int] | None = None,
        server_hostname: str | None = None,
        ssl_handshake_timeout: float | None = None,
        ssl_shutdown_timeout: float | None = None,
        happy_eyeballs_delay: float | None = None,
        interleave: int | None = None,
        **kwargs: Any,
    ) -> tuple[asyncio.BaseTransport, asyncio.BaseProtocol]:
        if sock is not None or _is_loopback(host):
            base: Any = super()
            return await base.create_connection(  # type: ignore[no-any-return]
                protocol_factory,
                host,
                port,
                ssl=ssl,
                family=family,
                proto=proto,
                flags=flags,
                sock=sock,
                local_addr=local_addr,
                server_hostname=server_hostname,
                ssl_handshake_timeout=ssl_handshake_timeout,
                ssl_shutdown_timeout=ssl_shutdown_timeout,
                happy_eyeballs_delay=happy_eyeballs_delay,
                interleave=interleave,
                **kwargs,
            )
        if server_hostname is not None and not ssl:
            raise ValueError("server_hostname is only meaningful with ssl")
        if server_hostname is None and ssl:
            if not host:
                raise ValueError("You must set server_hostname when using ssl without a host")
            server_hostname = host
        if ssl_handshake_timeout is not None and not ssl:
            raise ValueError("ssl_handshake_timeout is only meaningful with ssl")
        if ssl_shutdown_timeout is not None and not ssl:
            raise ValueError("ssl_shutdown_timeout is only meaningful with ssl")
        if host is None or port is None:
            raise ValueError("host and port was not specified and no sock specified")
        _only_known(kwargs, "create_connection", ("all_errors",))
        port = int(port)  # asyncio takes service strings of digits too
        local_port: int | None = None
        if local_addr is not None:
            self._check_local_host(local_addr[0], local_addr[1])
            local_port = local_addr[1] or None
        ips = await self._resolve(host, port, socket.SOCK_STREAM)
        errors: list[OSError] = []
        conn: TcpConnection | None = None
        for ip in ips:
            try:
                conn = await self._connect(ip, port, local_port)
                break
            except OSError as exc:
                errors.append(exc)
        if conn is None:
            if kwargs.get("all_errors"):
                raise ExceptionGroup("create connection failed", errors)
            if len(errors) == 1 or len({str(e) for e in errors}) == 1:
                raise errors[0]
            raise OSError(f"Multiple exceptions: {', '.join(str(e) for e in errors)}")
        try:
            return await self._make_tcp_transport(
                conn,
                protocol_factory(),
                ssl=ssl,
                server_side=False,
                server_hostname=server_hostname,
                ssl_handshake_timeout=ssl_handshake_timeout,
                ssl_shutdown_timeout=ssl_shutdown_timeout,
            )
        except BaseException:
            if conn.on_event is None:
                conn.abort()
            raise

    async def _connect(self, ip: int, port: int, local_port: int | None) -> TcpConnection:
        conn = self.stack.tcp.connect(ip, port, local_port=local_port, config=self._tcp_config)
        fut: asyncio.Future[None] = self.create_future()
        addr = (ip_to_str(ip), port)

        def on_event(c: TcpConnection) -> None:
            if fut.done():
                return
            if c.error is not None:
                fut.set_exception(conn_error(c, f"connect call failed {addr}"))
            elif c.state is State.CLOSED:
                fut.set_exception(
                    OSError(errno.ECONNABORTED, f"connect call failed {addr}: aborted")
                )
            elif c.state not in _CONNECTING:
                fut.set_result(None)
            else:
                return
            self._selector_wake()

        conn.on_event = on_event
        try:
            await fut
        except BaseException:
            conn.on_event = None
            if conn.state is not State.CLOSED:
                conn.abort()
            raise
        conn.on_event = None
        return conn

    async def _make_tcp_transport(
        self,
        conn: TcpConnection,
        protocol: asyncio.BaseProtocol,
        *,
        ssl: _ssl.SSLContext | bool | None,
        server_side: bool,
        server_hostname: str | None,
        ssl_handshake_timeout: float | None,
        ssl_shutdown_timeout: float | None,
        server: Server | None = None,
    ) -> tuple[asyncio.BaseTransport, asyncio.BaseProtocol]:
        waiter: asyncio.Future[None] = self.create_future()
        if ssl:
            context = ssl if isinstance(ssl, _ssl.SSLContext) else _ssl.create_default_context()
            ssl_protocol = sslproto.SSLProtocol(
                self,
                protocol,
                context,
                waiter,
                server_side,
                server_hostname,
                ssl_handshake_timeout=cast(Any, ssl_handshake_timeout),
                ssl_shutdown_timeout=cast(Any, ssl_shutdown_timeout),
            )
            raw = TcpTransport(self, self._selector_wake, conn, ssl_protocol, server=server)
            transport: asyncio.BaseTransport = ssl_protocol._app_transport
        else:
            raw = TcpTransport(
                self, self._selector_wake, conn, protocol, waiter=waiter, server=server
            )
            transport = raw
        try:
            await waiter
        except BaseException:
            raw.close()
            raise
        return transport, protocol

    # -- TCP: servers -------------------------------------------------------------------

    async def create_server(  # type: ignore[override]
        self,
        protocol_factory: ProtocolFactory,
        host: str | Sequence[str] | None = None,
        port: int | None = None,
        *,
        family: int = socket.AF_UNSPEC,
        flags: int = socket.AI_PASSIVE,
        sock: socket.socket | None = None,
        backlog: int = 100,
        ssl: _ssl.SSLContext | None = None,
        reuse_address: bool | None = None,
        reuse_port: bool | None = None,
        ssl_handshake_timeout: float | None = None,
        ssl_shutdown_timeout: float | None = None,
        start_serving: bool = True,
        **kwargs: Any,
    ) -> Server | asyncio.Server:
        hosts: list[str | None] = [host] if host is None or isinstance(host, str) else list(host)
        loopback = [h for h in hosts if _is_loopback(h)]
        if sock is not None or (loopback and len(loopback) == len(hosts)):
            base: Any = super()
            return await base.create_server(  # type: ignore[no-any-return]
                protocol_factory,
                host,
                port,
                family=family,
                flags=flags,
                sock=sock,
                backlog=backlog,
                ssl=ssl,
                reuse_address=reuse_address,
                reuse_port=reuse_port,
                ssl_handshake_timeout=ssl_handshake_timeout,
                ssl_shutdown_timeout=ssl_shutdown_timeout,
                start_serving=start_serving,
                **kwargs,
            )
        if loopback:
            raise ValueError(
                "a server cannot listen on loopback (kernel) and ustack addresses at once; "
                "create two servers"
            )
        if isinstance(ssl, bool):
            raise TypeError("ssl argument must be an SSLContext or None")
        if ssl_handshake_timeout is not None and ssl is None:
            raise ValueError("ssl_handshake_timeout is only meaningful with ssl")
        if ssl_shutdown_timeout is not None and ssl is None:
            raise ValueError("ssl_shutdown_timeout is only meaningful with ssl")
        _only_known(kwargs, "create_server", ("keep_alive",))
        port = int(port) if port is not None else None
        for h in hosts:
            self._check_local_host(h, port)
        config = self._tcp_config
        if kwargs.get("keep_alive"):
            config = dataclasses.replace(config, keepalive=True)
        listener = self.stack.tcp.listen(port or self._free_port(), backlog=backlog, config=config)
        if ssl is None:
            factory = protocol_factory
        else:
            factory = self._ssl_server_factory(
                protocol_factory, ssl, ssl_handshake_timeout, ssl_shutdown_timeout
            )
        server = Server(self, factory, [listener])
        if start_serving:
            server._start_serving()
            await asyncio.sleep(0)
        return server

    def _ssl_server_factory(
        self,
        protocol_factory: ProtocolFactory,
        context: _ssl.SSLContext,
        handshake_timeout: float | None,
        shutdown_timeout: float | None,
    ) -> ProtocolFactory:
        def factory() -> asyncio.BaseProtocol:
            waiter: asyncio.Future[None] = self.create_future()
            # A failed handshake is the peer's problem, not the server's.
            waiter.add_done_callback(lambda f: f.cancelled() or f.exception())
            return sslproto.SSLProtocol(
                self,
                protocol_factory(),
                context,
                waiter,
                server_side=True,
                ssl_handshake_timeout=cast(Any, handshake_timeout),
                ssl_shutdown_timeout=cast(Any, shutdown_timeout),
            )

        return factory

    # -- UDP -------------------------------------------------------------------------

    async def create_datagram_endpoint(  # type: ignore[override]
        self,
        protocol_factory: Callable[[], asyncio.DatagramProtocol],
        local_addr: tuple[str, int] | str | None = None,
        remote_addr: tuple[str, int] | str | None = None,
        *,
        family: int = 0,
        proto: int = 0,
        flags: int = 0,
        reuse_port: bool | None = None,
        allow_broadcast: bool | None = None,
        sock: socket.socket | None = None,
        **kwargs: Any,
    ) -> tuple[asyncio.DatagramTransport, asyncio.DatagramProtocol]:
        kernel = (
            sock is not None
            or family == socket.AF_UNIX
            or isinstance(local_addr, str)
            or isinstance(remote_addr, str)
            or (local_addr is not None and _is_loopback(local_addr[0]))
            or (remote_addr is not None and _is_loopback(remote_addr[0]))
        )
        if kernel:
            base: Any = super()
            return await base.create_datagram_endpoint(  # type: ignore[no-any-return]
                protocol_factory,
                local_addr,
                remote_addr,
                family=family,
                proto=proto,
                flags=flags,
                reuse_port=reuse_port,
                allow_broadcast=allow_broadcast,
                sock=sock,
                **kwargs,
            )
        assert not isinstance(local_addr, str) and not isinstance(remote_addr, str)
        _only_known(kwargs, "create_datagram_endpoint", ())
        address: tuple[str, int] | None = None
        if remote_addr is not None:
            rhost, rport = remote_addr
            ips = await self._resolve(rhost, rport, socket.SOCK_DGRAM)
            address = (ip_to_str(ips[0]), rport)
        udp = self.stack.udp_socket()
        try:
            if local_addr is not None:
                self._check_local_host(local_addr[0], local_addr[1])
                udp.bind(("", local_addr[1]))
            else:
                udp.bind(("", 0))
            protocol = protocol_factory()
            waiter: asyncio.Future[None] = self.create_future()
            transport = DatagramTransport(
                self, self._selector_wake, udp, protocol, address=address, waiter=waiter
            )
            try:
                await waiter
            except BaseException:
                transport.close()
                raise
        except BaseException:
            udp.close()
            raise
        return transport, protocol

    # -- closing -----------------------------------------------------------------------

    def close(self) -> None:
        if self.is_running():
            raise RuntimeError("Cannot close a running event loop")
        if self.is_closed():
            return
        try:
            self._shutdown_stack()
        except OSError as exc:  # e.g. the TAP is gone: nothing left to say goodbye on
            logger.warning("ustack loop: closing connections failed: %s", exc)
        finally:
            super().close()
            if self._own_context:
                from ustack.runtime import close_context

                close_context(self._ustack_ctx)

    def _shutdown_stack(self) -> None:
        """Close what the application left open, wait a little for the FINs, reset the rest.

        On a Context the loop opened, that is everything on the stack; on one
        handed in, only the listeners, connections and UDP sockets of this
        loop's servers and transports (the Context may serve others too).
        """
        ctx = self._ustack_ctx
        stack = ctx.stack
        tcp = stack.tcp
        own = self._own_context

        def ours(owner: object) -> bool:
            return own or getattr(owner, "_loop", None) is self

        for listener in list(tcp.listeners.values()):
            if ours(listener.user):
                listener.on_event = None
                listener.close()
        for udp in list(stack.udp.ports.values()):
            if ours(getattr(udp.on_readable, "__self__", None)):
                udp.on_readable = None
                udp.close()
        conns = [c for c in tcp.conns.values() if ours(c.user)]
        for conn in conns:
            conn.on_event = None
            if conn.state not in _DONE_STATES:
                conn.close()
        try:
            ctx.wait_until(
                lambda: all(c.state in _DONE_STATES for c in conns), timeout=CLOSE_LINGER_S
            )
        except WrongThreadError:
            pass  # closed from another thread than the Context's: no lingering
        finally:
            for conn in conns:
                if conn.state not in _DONE_STATES:
                    conn.abort()
            stack.flush(ctx.clock())


# -- configuration ------------------------------------------------------------------------


def _resolve_config(
    *,
    name: str | None = None,
    addr: str | None = None,
    gateway: str | None = None,
    poll: str | None = None,
    budget: int | None = None,
    idle_us: int | None = None,
    offload: bool | None = None,
    pcap: str | None = None,
    fault: str | None = None,
) -> dict[str, Any]:
    """Keywords for runtime.open_context, resolved by `ustack.config.Config`.

    A keyword given (not None) wins over its USTACK_* variable, which wins
    over the default (ustack.config).  `fault` has no variable and is
    passed only when set.  Bad values raise ValueError before any device
    is opened.
    """
    given = {
        k: v
        for k, v in (
            ("name", name),
            ("addr", addr),
            ("gateway", gateway),
            ("poll", poll),
            ("budget", budget),
            ("idle_us", idle_us),
            ("offload", offload),
            ("pcap", pcap),
        )
        if v is not None
    }
    kw = Config.resolve(given).context_kwargs()
    if fault:
        if not isinstance(fault, str):
            raise ValueError(f"fault must be a spec such as 'loss=0.01,seed=1', got {fault!r}")
        FaultSpec.parse(fault)  # a bad spec fails here, before the device is opened
        kw["fault"] = fault
    return kw


_opening = threading.local()
"""Set while this thread opens a Context for a new loop."""


def new_event_loop(
    *,
    name: str | None = None,
    addr: str | None = None,
    gateway: str | None = None,
    poll: str | None = None,
    budget: int | None = None,
    idle_us: int | None = None,
    offload: bool | None = None,
    pcap: str | None = None,
    fault: str | None = None,
    context: Context | None = None,
) -> UstackEventLoop:
    """A new event loop on ustack.

    Without `context`, opens a Context on the TAP of topology `name` (see
    `_resolve_config` for the keywords and their USTACK_* fallbacks); the
    loop closes it when it closes.  With `context` (any Context, e.g. over
    an in-memory device), the loop uses it and leaves it open.  `budget`
    (frames per receive burst) and `idle_us` (hybrid's idle threshold) are
    the Context's polling settings, which the selector follows too.
    """
    if context is not None:
        given = {k: v for k, v in locals().items() if k != "context" and v is not None}
        if given:
            raise ValueError(f"pass either context or configuration keywords, not both: {given}")
        return UstackEventLoop(context, own_context=False)
    from ustack.runtime import open_context

    kw = _resolve_config(
        name=name,
        addr=addr,
        gateway=gateway,
        poll=poll,
        budget=budget,
        idle_us=idle_us,
        offload=offload,
        pcap=pcap,
        fault=fault,
    )
    _opening.depth = getattr(_opening, "depth", 0) + 1
    try:
        # Loops in several threads of one process are one host on several
        # queues of the TAP, as the socket API's per-thread Contexts are.
        ctx = open_context(**kw, shared_queue=True)
    finally:
        _opening.depth -= 1
    try:
        return UstackEventLoop(ctx)
    except BaseException:
        from ustack.runtime import close_context

        close_context(ctx)
        raise


class EventLoopPolicy(asyncio.DefaultEventLoopPolicy):
    """asyncio's default policy, whose new loops are ustack loops with one configuration.

    Loops asked for while a ustack loop is being opened in the same thread
    (pyroute2, which waits for the TAP, makes one) are plain asyncio loops.
    """

    def __init__(self, **config: Any) -> None:
        super().__init__()
        _resolve_config(**config)  # fail early on a bad keyword or value
        self._config = config

    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        if getattr(_opening, "depth", 0):
            return super().new_event_loop()
        return new_event_loop(**self._config)


def install(**config: Any) -> EventLoopPolicy:
    """Make every loop asyncio creates from now on (asyncio.run, frameworks) a ustack loop."""
    policy = EventLoopPolicy(**config)
    asyncio.set_event_loop_policy(policy)
    return policy


def run(coro: Any, *, debug: bool | None = None, **config: Any) -> Any:
    """Run one coroutine on a fresh ustack loop, like asyncio.run; the loop is closed after."""
    with asyncio.Runner(debug=debug, loop_factory=lambda: new_event_loop(**config)) as runner:
        return runner.run(coro)
