"""asyncio on ustack: an event loop whose TCP and UDP endpoints live on the stack.

Entry points, in uvloop's style::

    import ustack.aio
    ustack.aio.install(name="lab")          # every later asyncio.run() runs on ustack
    ustack.aio.run(main(), name="lab")      # one coroutine on a fresh ustack loop
    loop = ustack.aio.new_event_loop(name="lab", poll="busy")

Configuration keywords (all optional): name (topology, env USTACK_NAME),
addr (default 198.18.0.2/24, env USTACK_ADDR), gateway (env
USTACK_GATEWAY), poll (busy | interrupt | hybrid, default hybrid, env
USTACK_POLL), offload (bool), pcap (file), fault (spec such as
"loss=0.01,seed=1").  `new_event_loop(context=ctx)` runs on a Context
made by the caller (e.g. over an in-memory device).

Unmodified asyncio code runs on the loop: `create_server`,
`create_connection`, `asyncio.start_server`, `asyncio.open_connection`
and `create_datagram_endpoint` use ustack; everything else (timers,
executors, subprocesses, signals, kernel sockets and files, loopback
hosts) is asyncio's own over the kernel selector.  See loop.py and
selector.py for the design.
"""

from ustack.aio.loop import (
    CLOSE_LINGER_S,
    EventLoopPolicy,
    UstackEventLoop,
    install,
    new_event_loop,
    run,
)
from ustack.aio.selector import UstackSelector
from ustack.aio.server import Server
from ustack.aio.transports import DatagramTransport, TcpTransport, UstackSocket

Loop = UstackEventLoop

__all__ = [
    "CLOSE_LINGER_S",
    "DatagramTransport",
    "EventLoopPolicy",
    "Loop",
    "Server",
    "TcpTransport",
    "UstackEventLoop",
    "UstackSelector",
    "UstackSocket",
    "install",
    "new_event_loop",
    "run",
]
