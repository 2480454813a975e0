"""Entering a named network namespace for the calling thread, and back.

setns(2) moves only the calling thread, and sockets and TAP fds stay bound
to the namespace they were opened in, so a short `with inside(name):` block
is enough to open them there.  Namespaces live under /var/run/netns as
pyroute2 and iproute2 make them.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager

from pyroute2 import netns as _netns

from ustack.errors import DeviceNotFoundError, DevicePermissionError

NETNS_DIR = "/var/run/netns"


def netns_path(name: str) -> str:
    return os.path.join(NETNS_DIR, name)


def exists(name: str) -> bool:
    return os.path.exists(netns_path(name))


def _setns(fd: int, name: str) -> None:
    try:
        _netns.setns(fd, flags=0)
    except OSError as exc:
        if exc.errno in (errno.EPERM, errno.EACCES):
            raise DevicePermissionError(
                exc.errno, f"cannot enter network namespace '{name}' (needs root)", name
            ) from exc
        raise


@contextmanager
def inside(name: str | None) -> Iterator[None]:
    """Run the block with this thread in namespace `name` (None: stay put)."""
    if name is None:
        yield
        return
    try:
        target = os.open(netns_path(name), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise DeviceNotFoundError(errno.ENOENT, f"no network namespace '{name}'", name) from None
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(target, name)
        try:
            yield
        finally:
            _setns(home, "(original)")
    finally:
        os.close(target)
        os.close(home)


def enter(name: str) -> None:
    """Move this thread into `name` for good (for a process that lives there)."""
    try:
        fd = os.open(netns_path(name), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise DeviceNotFoundError(errno.ENOENT, f"no network namespace '{name}'", name) from None
    try:
        _setns(fd, name)
    finally:
        os.close(fd)
