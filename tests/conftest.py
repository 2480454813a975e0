"""Shared fixtures: a private topology per test, and the privilege rule.

Tests that need root and /dev/net/tun skip with a reason on a user's
machine; under CI (CI=true) the same condition is a failure, because CI
must run every namespace test.
"""

from __future__ import annotations

import itertools
import os
import subprocess
from collections.abc import Iterator

import pytest

from ustack.topology import Topology

_ids = itertools.count()


def _missing_privilege() -> str | None:
    if os.geteuid() != 0:
        return "needs root (namespaces and TAP devices)"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun"
    return None


def require_netns() -> None:
    reason = _missing_privilege()
    if reason is None:
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI must run namespace tests, but this machine {reason}")
    pytest.skip(reason)


def unique_name(tag: str = "t") -> str:
    """A topology name no parallel run will pick: tag, pid and a counter."""
    return f"ust{tag}{os.getpid()}-{next(_ids)}"


@pytest.fixture
def topology() -> Iterator[Topology]:
    require_netns()
    topo = Topology(unique_name()).up()
    try:
        yield topo
    finally:
        topo.down()


def ns_run(
    ns: str, *argv: str, timeout: float = 60, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run a command inside namespace `ns` (tests may use iproute2 directly)."""
    return subprocess.run(
        ["ip", "netns", "exec", ns, *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=check,
    )
