"""Running an asyncio app (echo, discard, kv) on ustack's loop or on kernel sockets.

This module owns what the apps share and what surrounds them: the app
counters (`AppCounters`), building an app's protocol factories
(`build_app`), making the event loop and the address to bind
(`make_loop`), starting the servers, the ready line, SIGTERM/SIGINT and
the final counters (`run_app`, which `ustack serve` calls).

The apps themselves are plain asyncio protocols (`ustack.apps.echo`,
`ustack.apps.kv`) and never know which stack carries them.  The only
stack-specific step is `make_loop()`:

- ``kernel``: enter netns ``<name>-k``, a uvloop (or the default asyncio)
  event loop, bind 198.19.0.2 (the kernel baseline of the topology);
- ``ustack``: ``ustack.aio.new_event_loop(...)``, an asyncio loop whose
  transports sit on ustack connections, bind 198.18.0.2.

Workers (`--workers N`, ustack only): N processes, each with its own
Context on its own queue of the multi-queue TAP and its own copy of the
app; the kernel steers each flow to one queue, so every worker accepts
on the same port.  The parent prints the one ready line once all are
listening, forwards SIGTERM/SIGINT, and prints each worker's share and
the summed counters.  Workers learn neighbours from IPv4 traffic too
(`NeighbourCache.confirm`): an ARP reply reaches only the queue the
kernel picks for it.

Key mode (kv): `build_app(keys=...)` and `run_app(keys=...)` pick
``strict`` (the default) or ``memcached`` (see ustack.apps.kv); a mode
other than strict shows in the ready line.

Live counters: every server answers on a Unix socket in
``/run/ustack/<name>/`` (one per process) with a JSON snapshot: app and
stack counters and, on ustack, one `ss -ti`-like entry per connection.
`ustack stats` reads them (`read_live_stats`).  `--stats-json FILE`
writes the same snapshot at exit and on SIGUSR1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ustack import netns
from ustack.errors import UstackError
from ustack.topology import KERNEL_ADDR, TAP_PREFIX, USTACK_ADDR
from ustack.wire.ipv4 import ip_to_str

APPS = ("echo", "discard", "kv")
DEFAULT_PORTS = {"echo": 7, "discard": 9, "kv": 11211}
STACKS = ("ustack", "kernel")
DEFAULT_ADDR = f"{USTACK_ADDR}/{TAP_PREFIX}"
KERNEL_LOOPS = ("uvloop", "asyncio")
CLOSE_GRACE_S = 1.0  # how long open connections get to flush at shutdown
CONTROL_DIR = "/run/ustack"


@dataclass(eq=False)
class AppCounters:
    """What an app did, summed over its connections; printed when it stops.

    `requests` is per app: kv commands, echo/discard reads (TCP) and
    datagrams (UDP).  `protocol_errors` counts connections the server
    closed because the client broke the protocol (a kv line too long).
    `live` is the set of open connection transports, closed at shutdown.
    """

    conns_accepted: int = 0
    conns_active: int = 0
    requests: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    datagrams_in: int = 0
    datagrams_out: int = 0
    protocol_errors: int = 0
    live: set[asyncio.BaseTransport] = field(default_factory=set, repr=False)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.conns_accepted += 1
        self.conns_active += 1
        self.live.add(transport)

    def connection_lost(self, transport: asyncio.BaseTransport) -> None:
        if transport in self.live:
            self.live.discard(transport)
            self.conns_active -= 1

    def as_dict(self) -> dict[str, int]:
        return {
            "app_conns_accepted": self.conns_accepted,
            "app_conns_active": self.conns_active,
            "app_requests": self.requests,
            "app_bytes_in": self.bytes_in,
            "app_bytes_out": self.bytes_out,
            "app_datagrams_in": self.datagrams_in,
            "app_datagrams_out": self.datagrams_out,
            "app_protocol_errors": self.protocol_errors,
        }


ProtocolFactory = Callable[[], asyncio.BaseProtocol]


@dataclass
class App:
    """An app ready to start: its port and protocol factories for TCP and UDP."""

    name: str
    port: int
    counters: AppCounters
    tcp: ProtocolFactory | None = None
    udp: ProtocolFactory | None = None
    # Extra counters to print at the end (the kv store's), read when it stops.
    extra_counters: Callable[[], Mapping[str, int]] | None = None
    # Settings that differ from the defaults, for the ready line ("keys memcached").
    settings: str = ""

    @property
    def protocols(self) -> str:
        return "+".join(p for p, f in (("tcp", self.tcp), ("udp", self.udp)) if f is not None)


def build_app(
    name: str,
    *,
    port: int | None = None,
    memory_limit: int = 64 << 20,
    item_size_max: int = 1 << 20,
    keys: str = "strict",
    clock: Callable[[], float] = time.time,
) -> App:
    """The app called `name` with fresh counters (and, for kv, a fresh store).

    `keys`: the kv key mode, ``strict`` or ``memcached``.
    """
    if name not in APPS:
        raise ValueError(f"unknown app {name!r} (known: {', '.join(APPS)})")
    port = DEFAULT_PORTS[name] if port is None else port
    if not 1 <= port <= 65535:
        raise ValueError(f"--port must be 1..65535, got {port}")
    counters = AppCounters()
    if name in ("echo", "discard"):
        from ustack.apps import echo

        if name == "echo":
            return App(
                name,
                port,
                counters,
                tcp=lambda: echo.EchoProtocol(counters),
                udp=lambda: echo.EchoDatagramProtocol(counters),
            )
        return App(
            name,
            port,
            counters,
            tcp=lambda: echo.DiscardProtocol(counters),
            udp=lambda: echo.DiscardDatagramProtocol(counters),
        )
    from ustack.apps.kv import KEY_MODES, KvServer
    from ustack.apps.kvstore import KvStore

    if keys not in KEY_MODES:
        raise ValueError(f"--keys must be one of {', '.join(KEY_MODES)}, got {keys!r}")
    store = KvStore(memory_limit=memory_limit, item_size_max=item_size_max, clock=clock)
    server = KvServer(store, counters, port=port, keys=keys, clock=clock)

    def kv_counters() -> dict[str, int]:
        out = {f"kv_{k}": v for k, v in store.stats.items()}
        out["kv_curr_items"] = len(store)
        out["kv_bytes"] = store.bytes
        return out

    return App(
        name,
        port,
        counters,
        tcp=server.protocol,
        extra_counters=kv_counters,
        settings="" if keys == "strict" else f"keys {keys}",
    )


@dataclass
class LoopChoice:
    """What make_loop() made: the loop, where to bind, and how to describe it."""

    loop: asyncio.AbstractEventLoop
    host: str
    stack: str
    mode: str
    netns: str
    close: Callable[[], None] | None = None
    """What to close after the loop (a Context the loop does not own)."""


def make_loop(
    stack: str,
    *,
    name: str,
    addr: str = DEFAULT_ADDR,
    poll: str = "hybrid",
    pcap: str | None = None,
    fault: str | None = None,
    offload: bool = False,
    loop: str = "uvloop",
    shared_queue: bool = False,
    mac: str | None = None,
) -> LoopChoice:
    """The event loop for `stack` and the address the app binds on it.

    The one place that differs between the stacks.  For ``kernel`` this
    moves the calling thread into netns ``<name>-k`` for good (the
    process is the server; sockets are made in the namespace the thread
    is in); `loop` picks uvloop or asyncio's default loop there.
    ``ustack.aio`` is imported only here, so the kernel path works
    without it.  `shared_queue` is set in workers (see the module
    docstring).
    """
    if stack == "kernel":
        if pcap is not None or fault is not None or offload:
            raise UstackError("--pcap, --fault and --offload apply to --stack ustack only")
        if loop not in KERNEL_LOOPS:
            raise ValueError(f"unknown loop {loop!r} (known: {', '.join(KERNEL_LOOPS)})")
        ns = f"{name}-k"
        netns.enter(ns)
        if loop == "uvloop":
            import uvloop

            return LoopChoice(uvloop.new_event_loop(), KERNEL_ADDR, "kernel", "uvloop", ns)
        return LoopChoice(asyncio.new_event_loop(), KERNEL_ADDR, "kernel", "asyncio", ns)
    if stack == "ustack":
        try:
            from ustack import aio
        except ImportError as exc:
            if exc.name != "ustack.aio":
                raise
            raise UstackError(
                "--stack ustack needs ustack.aio (the asyncio loop over ustack), "
                "which this build does not have yet; use --stack kernel"
            ) from exc
        mode = f"poll {poll}" + (", offload" if offload else "")
        host = addr.split("/")[0]
        if shared_queue:
            from ustack.runtime import close_context, open_context

            ctx = open_context(
                name=name,
                addr=addr,
                poll=poll,
                pcap=pcap,
                fault=fault,
                offload=offload,
                shared_queue=True,
                mac=mac,
            )
            try:
                ustack_loop = aio.new_event_loop(context=ctx)
            except BaseException:
                close_context(ctx)
                raise
            return LoopChoice(ustack_loop, host, "ustack", mode, name, lambda: close_context(ctx))
        kwargs: dict[str, Any] = {"name": name, "addr": addr, "poll": poll, "pcap": pcap}
        if fault is not None:
            kwargs["fault"] = fault
        if offload:
            kwargs["offload"] = True
        return LoopChoice(aio.new_event_loop(**kwargs), host, "ustack", mode, name)
    raise ValueError(f"unknown stack {stack!r} (known: {', '.join(STACKS)})")


async def start_app(loop: asyncio.AbstractEventLoop, app: App, host: str) -> list[Any]:
    """Listen for the app's TCP and UDP; the servers and endpoints to close later."""
    opened: list[Any] = []
    try:
        if app.tcp is not None:
            server = await loop.create_server(
                app.tcp, host, app.port, reuse_address=True, backlog=1024
            )
            opened.append(server)
        if app.udp is not None:
            transport, _ = await loop.create_datagram_endpoint(app.udp, local_addr=(host, app.port))
            opened.append(transport)
    except BaseException:
        for item in opened:
            item.close()
        raise
    return opened


async def stop_app(app: App, opened: list[Any]) -> None:
    """Stop listening, let open connections flush for a moment, then cut them."""
    for item in opened:
        item.close()
    live = app.counters.live
    for t in list(live):
        t.close()
    deadline = time.monotonic() + CLOSE_GRACE_S
    while live and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    for t in list(live):
        abort = getattr(t, "abort", None)
        if abort is not None:
            abort()
    await asyncio.sleep(0)


def _stop_on_signals(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> Callable[[], None]:
    """SIGTERM/SIGINT set `stop`; returns the undo."""
    sigs = (signal.SIGINT, signal.SIGTERM)
    try:
        for s in sigs:
            loop.add_signal_handler(s, stop.set)
    except NotImplementedError:
        # A loop without signal support: a plain handler that wakes the loop.
        old = {s: signal.signal(s, lambda *_: loop.call_soon_threadsafe(stop.set)) for s in sigs}

        def undo_plain() -> None:
            for s, h in old.items():
                signal.signal(s, h)

        return undo_plain

    def undo() -> None:
        for s in sigs:
            loop.remove_signal_handler(s)

    return undo


def format_app_counters(app: App, stack_counters: Mapping[str, int | float] | None) -> str:
    """The final counters: the app's (all of them), then the store's and the stack's."""
    lines = ["app:"]
    lines += [f"    {k:34} {v}" for k, v in app.counters.as_dict().items()]
    if app.extra_counters is not None:
        extra = {k: v for k, v in app.extra_counters().items() if v}
        if extra:
            lines.append(f"{app.name}:")
            lines += [f"    {k:34} {v}" for k, v in extra.items()]
    if stack_counters:
        from ustack.runtime import format_counters

        lines.append(format_counters(stack_counters))
    return "\n".join(lines)


def _stack_counters(loop: asyncio.AbstractEventLoop) -> Mapping[str, int | float] | None:
    """The loop's own counters when it has them (ustack's loop: per layer)."""
    stats = getattr(loop, "stats", None)
    if callable(stats):
        result = stats()
        if isinstance(result, Mapping):
            return result
    return None


def _connections(loop: asyncio.AbstractEventLoop) -> list[dict[str, object]]:
    """One `ss -ti`-like entry per TCP connection of a ustack loop ([] on the kernel)."""
    stack = getattr(loop, "stack", None)
    tcp = getattr(stack, "tcp", None)
    if tcp is None:
        return []
    out: list[dict[str, object]] = []
    for conn in list(tcp.conns.values()):
        (lip, lport), (rip, rport) = conn.local, conn.remote
        entry: dict[str, object] = {
            "local": f"{ip_to_str(lip)}:{lport}",
            "remote": f"{ip_to_str(rip)}:{rport}",
        }
        entry.update(conn.stats())
        out.append(entry)
    return out


def snapshot(app: App, choice: LoopChoice) -> dict[str, Any]:
    """What `ustack stats` and `--stats-json` show of a running server."""
    counters: dict[str, int | float] = dict(app.counters.as_dict())
    if app.extra_counters is not None:
        counters.update(app.extra_counters())
    stack = _stack_counters(choice.loop)
    if stack:
        counters.update(stack)
    return {
        "pid": os.getpid(),
        "app": app.name,
        "port": app.port,
        "stack": choice.stack,
        "mode": choice.mode,
        "host": choice.host,
        "counters": counters,
        "connections": _connections(choice.loop),
    }


def write_json(path: str, data: Mapping[str, Any]) -> None:
    """Write atomically, so a reader never sees half a file."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def control_path(name: str, pid: int | None = None) -> str:
    return os.path.join(CONTROL_DIR, name, f"{os.getpid() if pid is None else pid}.sock")


async def _open_control(name: str, app: App, choice: LoopChoice) -> asyncio.AbstractServer:
    """The Unix socket `ustack stats` reads: one JSON snapshot per connection."""

    def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(json.dumps(snapshot(app, choice)).encode() + b"\n")
        writer.close()

    path = control_path(name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if os.path.exists(path):
        os.unlink(path)  # left by a process of the same pid that died
    return await asyncio.start_unix_server(answer, path)


def read_live_stats(name: str, timeout: float = 2.0) -> list[dict[str, Any]]:
    """Snapshots of every server of topology `name` that is running (one per process)."""
    directory = os.path.join(CONTROL_DIR, name)
    try:
        entries = sorted(os.listdir(directory))
    except FileNotFoundError:
        return []
    out: list[dict[str, Any]] = []
    for entry in entries:
        if not entry.endswith(".sock"):
            continue
        path = os.path.join(directory, entry)
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(timeout)
                s.connect(path)
                data = bytearray()
                while chunk := s.recv(1 << 16):
                    data += chunk
        except (ConnectionRefusedError, FileNotFoundError):
            continue  # the server is gone; its socket file stayed behind
        out.append(json.loads(data))
    return out


def run_app(
    app_name: str,
    *,
    stack: str,
    name: str,
    port: int | None = None,
    addr: str = DEFAULT_ADDR,
    poll: str = "hybrid",
    pcap: str | None = None,
    fault: str | None = None,
    offload: bool = False,
    loop: str = "uvloop",
    workers: int = 1,
    memory_limit: int = 64 << 20,
    item_size_max: int = 1 << 20,
    stats_json: str | None = None,
    keys: str = "strict",
) -> int:
    """`ustack serve APP`: serve until SIGTERM/SIGINT; one ready line, then counters."""
    if workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    app = build_app(
        app_name, port=port, memory_limit=memory_limit, item_size_max=item_size_max, keys=keys
    )
    if workers > 1:
        if stack != "ustack":
            raise UstackError(
                "--workers > 1 is for --stack ustack (the kernel baseline is one loop)"
            )
        if app_name == "kv":
            raise UstackError(
                "--workers > 1 would give each worker process its own kv store; "
                "run kv with one worker"
            )
        if pcap is not None:
            raise UstackError("--pcap records one queue; use it with --workers 1")
        return _run_workers(
            app,
            workers,
            name=name,
            addr=addr,
            poll=poll,
            fault=fault,
            offload=offload,
            stats_json=stats_json,
        )
    choice = make_loop(
        stack, name=name, addr=addr, poll=poll, pcap=pcap, fault=fault, offload=offload, loop=loop
    )
    _run_one(app, choice, name, stats_json, report=None)
    return 0


def _run_one(
    app: App, choice: LoopChoice, name: str, stats_json: str | None, report: int | None
) -> None:
    loop = choice.loop
    try:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(_serve(app, choice, name, stats_json, report))
    finally:
        asyncio.set_event_loop(None)
        loop.close()
        if choice.close is not None:
            choice.close()


async def _serve(
    app: App, choice: LoopChoice, name: str, stats_json: str | None, report: int | None
) -> None:
    """Serve until a signal.  `report`: a worker's pipe to the parent, instead of stdout."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    undo = _stop_on_signals(loop, stop)
    if stats_json is not None:
        loop.add_signal_handler(
            signal.SIGUSR1, lambda: write_json(stats_json, snapshot(app, choice))
        )
    control: asyncio.AbstractServer | None = None
    try:
        opened = await start_app(loop, app, choice.host)
        control = await _open_control(name, app, choice)
        ready = (
            f"ustack {app.name} ready on {choice.host} port {app.port} {app.protocols} "
            f"(stack {choice.stack}, mode {choice.mode}, netns {choice.netns}"
            + (f", {app.settings})" if app.settings else ")")
        )
        if report is None:
            print(ready, flush=True)
        else:
            os.write(report, json.dumps({"ready": ready}).encode() + b"\n")
        await stop.wait()
        await stop_app(app, opened)
    finally:
        undo()
        if control is not None:
            control.close()
            path = control_path(name)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            with contextlib.suppress(OSError):  # still used by another server
                os.rmdir(os.path.dirname(path))
    final = snapshot(app, choice)
    if stats_json is not None:
        write_json(stats_json, final)
    if report is not None:
        os.write(report, json.dumps({"final": final}).encode() + b"\n")
        return
    print(f"ustack {app.name} stopped; counters:")
    print(format_app_counters(app, _stack_counters(loop)))
    sys.stdout.flush()


def _run_workers(
    app: App,
    workers: int,
    *,
    name: str,
    addr: str,
    poll: str,
    fault: str | None,
    offload: bool,
    stats_json: str | None,
) -> int:
    """Fork one process per queue; see the module docstring."""
    from ustack.stack.interface import random_mac
    from ustack.wire.ethernet import mac_to_str

    mac = mac_to_str(random_mac())  # one host: every worker answers with the same MAC
    children: list[tuple[int, Any]] = []
    for index in range(workers):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the worker
            os.close(r)
            rc = 1
            try:
                choice = make_loop(
                    "ustack",
                    name=name,
                    addr=addr,
                    poll=poll,
                    fault=fault,
                    offload=offload,
                    shared_queue=True,
                    mac=mac,
                )
                _run_one(app, choice, name, None, report=w)
                rc = 0
            except BaseException as exc:  # reported to the parent, which prints it
                os.write(w, json.dumps({"error": f"worker {index}: {exc}"}).encode() + b"\n")
            finally:
                os._exit(rc)
        os.close(w)
        children.append((pid, os.fdopen(r)))

    def forward(signum: int, frame: object) -> None:
        for pid, _ in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        ready: list[str] = []
        for _, pipe in children:
            msg = json.loads(pipe.readline() or '{"error": "a worker died while starting"}')
            if "error" in msg:
                forward(signal.SIGTERM, None)
                raise UstackError(msg["error"])
            ready.append(msg["ready"])
        print(
            f"{ready[0][: ready[0].rindex('(')]}(stack ustack, {workers} workers, "
            f"mode poll {poll}{', offload' if offload else ''}, netns {name})",
            flush=True,
        )
        finals: list[dict[str, Any]] = []
        for _, pipe in children:
            line = pipe.readline()
            if line:
                msg = json.loads(line)
                if "final" in msg:
                    finals.append(msg["final"])
    finally:
        for pid, pipe in children:
            pipe.close()
            os.waitpid(pid, 0)
        for s, h in old.items():
            signal.signal(s, h)
    total: dict[str, Any] = {}
    for final in finals:
        for k, v in final["counters"].items():
            if isinstance(v, int):
                total[k] = total.get(k, 0) + v
    combined = {"pid": os.getpid(), "app": app.name, "workers": finals, "counters": total}
    if stats_json is not None:
        write_json(stats_json, combined)
    print(f"ustack {app.name} stopped; {len(finals)} workers:")
    for i, final in enumerate(finals):
        c = final["counters"]
        print(
            f"    worker {i} (pid {final['pid']}): {c.get('app_conns_accepted', 0)} connections, "
            f"{c.get('app_requests', 0)} requests, {c.get('app_datagrams_in', 0)} datagrams"
        )
    from ustack.runtime import format_counters

    print(format_counters(total))
    sys.stdout.flush()
    return 0 if len(finals) == workers else 1
