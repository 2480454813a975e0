"""`ustack up`/`down` and the Topology they drive."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from pyroute2 import IPRoute

from tests.conftest import ns_run, require_netns, unique_name
from ustack import netns
from ustack.errors import BadDeviceNameError
from ustack.topology import Topology

pytestmark = pytest.mark.netns


def _addrs(ns: str, ifname: str) -> set[str]:
    with IPRoute(netns=ns) as ipr:
        idx = ipr.link_lookup(ifname=ifname)[0]
        return {
            f"{a.get('IFA_ADDRESS')}/{a['prefixlen']}" for a in ipr.get_addr(index=idx, family=2)
        }


def _routes(ns: str) -> list[str | None]:
    with IPRoute(netns=ns) as ipr:
        return [r.get("RTA_DST") for r in ipr.get_routes(family=2, table=254)]


def test_topology_up_builds_namespaces_addresses_and_no_default_route(topology: Topology):
    assert netns.exists(topology.client_ns) and netns.exists(topology.kernel_ns)
    assert _addrs(topology.client_ns, topology.tap) == {"198.18.0.1/24"}
    assert _addrs(topology.client_ns, "veth-c") == {"198.19.0.1/24"}
    assert _addrs(topology.kernel_ns, "veth-k") == {"198.19.0.2/24"}
    # only the two connected /24s; nothing routes off the machine
    assert sorted(r or "default" for r in _routes(topology.client_ns)) == [
        "198.18.0.0",
        "198.19.0.0",
    ]
    assert _routes(topology.kernel_ns) == ["198.19.0.0"]
    ping = ns_run(topology.client_ns, "ping", "-c", "1", "-W", "2", "198.19.0.2", check=False)
    assert ping.returncode == 0, ping.stdout


def test_topology_up_twice_and_down_twice_are_idempotent():
    require_netns()
    topo = Topology(unique_name("i"))
    try:
        topo.up()
        topo.up()
        assert _addrs(topo.client_ns, topo.tap) == {"198.18.0.1/24"}
    finally:
        topo.down()
        topo.down()
    assert not netns.exists(topo.client_ns) and not netns.exists(topo.kernel_ns)


def test_topology_bad_name_rejected():
    with pytest.raises(BadDeviceNameError, match="bad topology name"):
        Topology("has space")
    with pytest.raises(BadDeviceNameError):
        Topology("x" * 60)


def _cli(*args: str, user: int | None = None) -> subprocess.CompletedProcess[str]:
    code = "import sys; from ustack.cli import main; "
    if user is not None:
        code += f"import os; os.setgid({user}); os.setuid({user}); "
    code += f"sys.exit(main({list(args)!r}))"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_cli_up_down_roundtrip():
    require_netns()
    name = unique_name("c")
    try:
        up = _cli("up", "--name", name)
        assert up.returncode == 0, up.stderr
        assert f"topology {name} up" in up.stdout
        assert netns.exists(name) and netns.exists(f"{name}-k")
    finally:
        down = _cli("down", "--name", name)
    assert down.returncode == 0 and f"topology {name} removed" in down.stdout
    again = _cli("down", "--name", name)
    assert again.returncode == 0 and "was not up" in again.stdout


def test_cli_not_root_prints_one_line_and_fails():
    require_netns()  # needs root to drop to an unprivileged user
    res = _cli("up", "--name", unique_name("u"), user=65534)
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "needs root" in lines[0], res.stderr


def test_cli_bad_name_prints_one_line_and_fails():
    res = _cli("up", "--name", "bad/name")
    assert res.returncode == 1
    assert res.stderr.count("\n") == 1 and "bad topology name" in res.stderr


def test_demo_compares_kv_on_both_stacks_and_cleans_up(tmp_path):
    require_netns()
    name = unique_name("d")
    plot = tmp_path / "demo.png"
    res = subprocess.run(
        [sys.executable, "-m", "ustack", "demo", "--name", name, "--quick", "--plot", str(plot)],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ},
    )
    assert res.returncode == 0, res.stderr
    assert "ustack-hybrid" in res.stdout and "kernel-uvloop" in res.stdout
    assert f"plot written to {plot}" in res.stdout
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not netns.exists(name) and not netns.exists(f"{name}-k")
