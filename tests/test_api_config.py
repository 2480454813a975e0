"""Configuration: keywords, environment fallback, validation, and the per-thread Context.

No device is opened here except in the last tests, which need a topology.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

import ustack
from ustack import config as config_mod
from ustack.api import context as api_context
from ustack.config import ENV, Config
from ustack.topology import Topology


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for var in ENV.values():
        monkeypatch.delenv(var, raising=False)
    yield
    ustack.configure()


def test_defaults_match_the_runtime_and_topology():
    from ustack import loop, runtime, topology

    cfg = Config.resolve()
    assert cfg == Config(
        name="ustack", addr="198.18.0.2/24", gateway=None, poll="hybrid", offload=False, pcap=None
    )
    assert config_mod.DEFAULT_NAME == topology.DEFAULT_NAME
    assert config_mod.DEFAULT_ADDR == runtime.DEFAULT_ADDR
    assert config_mod.POLL_MODES == loop.POLL_MODES


@pytest.mark.parametrize(
    "name",
    ["lab", "a", "x" * 41, "x" * 42, "ust-1.2_3", "-lead", ".lead", "_lead", "sp ace", "", "é"],
)
def test_name_rule_is_the_topologys(name: str):
    try:
        Topology(name)
        topology_ok = True
    except ValueError:
        topology_ok = False
    try:
        Config(name=name)
        config_ok = True
    except ValueError:
        config_ok = False
    assert config_ok == topology_ok


def test_environment_fills_every_keyword():
    env = {
        "USTACK_NAME": "lab",
        "USTACK_ADDR": "198.18.5.9/16",
        "USTACK_GATEWAY": "198.18.0.1",
        "USTACK_POLL": "busy",
        "USTACK_OFFLOAD": "yes",
        "USTACK_PCAP": "/tmp/x.pcap",
    }
    assert Config.resolve(env=env) == Config(
        name="lab",
        addr="198.18.5.9/16",
        gateway="198.18.0.1",
        poll="busy",
        offload=True,
        pcap="/tmp/x.pcap",
    )


def test_keywords_win_over_the_environment_and_empty_variables_are_unset():
    env = {"USTACK_POLL": "busy", "USTACK_NAME": "", "USTACK_OFFLOAD": "1"}
    cfg = Config.resolve({"poll": "interrupt", "offload": False}, env=env)
    assert (cfg.poll, cfg.name, cfg.offload) == ("interrupt", "ustack", False)


def test_os_environ_is_read_when_no_env_is_given(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("USTACK_POLL", "interrupt")
    assert Config.resolve().poll == "interrupt"


@pytest.mark.parametrize(
    ("text", "value"),
    [("1", True), ("true", True), ("ON", True), (" yes ", True), ("0", False), ("off", False)],
)
def test_offload_environment_values(text: str, value: bool):
    assert Config.resolve(env={"USTACK_OFFLOAD": text}).offload is value


@pytest.mark.parametrize(
    ("keywords", "message"),
    [
        ({"name": "bad name"}, "name must be a topology name"),
        ({"addr": "198.18.0.2/33"}, "addr must be an IPv4 address with prefix"),
        ({"addr": "fe80::1/64"}, "addr must be an IPv4 address with prefix"),
        ({"addr": "not an address"}, "addr must be an IPv4 address with prefix"),
        ({"addr": "224.0.0.1/24"}, "addr must be a unicast IPv4 address"),
        ({"addr": "198.18.0.0/24"}, "network or broadcast address"),
        ({"addr": "198.18.0.255/24"}, "network or broadcast address"),
        ({"gateway": "198.19.0.1"}, "gateway 198.19.0.1 is not on our subnet 198.18.0.0/24"),
        ({"gateway": "gw"}, "gateway must be an IPv4 address"),
        ({"poll": "spin"}, "poll must be one of busy, interrupt, hybrid, got 'spin'"),
        ({"offload": "yes"}, "offload must be True or False"),
        ({"pcap": ""}, "pcap must be a file path or None"),
    ],
)
def test_bad_keyword_values_raise_valueerror_naming_the_keyword(
    keywords: dict[str, object], message: str
):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        Config.resolve(keywords)
    with pytest.raises(ValueError, match=message.split()[0]):
        ustack.configure(**keywords)


@pytest.mark.parametrize(
    ("var", "text", "message"),
    [
        ("USTACK_NAME", "a/b", "USTACK_NAME must be a topology name"),
        ("USTACK_ADDR", "198.18.0.2/40", "USTACK_ADDR must be an IPv4 address with prefix"),
        ("USTACK_GATEWAY", "10.0.0.1", "USTACK_GATEWAY 10.0.0.1 is not on our subnet"),
        ("USTACK_POLL", "fast", "USTACK_POLL must be one of busy, interrupt, hybrid"),
        ("USTACK_OFFLOAD", "maybe", "USTACK_OFFLOAD must be one of 1/0"),
    ],
)
def test_bad_environment_values_raise_valueerror_naming_the_variable(
    var: str, text: str, message: str
):
    with pytest.raises(ValueError, match=message):
        Config.resolve(env={var: text})


def test_bad_environment_value_is_ignored_when_a_keyword_overrides_it():
    assert Config.resolve({"poll": "busy"}, env={"USTACK_POLL": "fast"}).poll == "busy"


def test_unknown_keyword_is_a_typeerror():
    with pytest.raises(TypeError, match="unknown ustack configuration keyword"):
        ustack.configure(polling="busy")


def test_configure_sets_what_later_contexts_get_and_replaces_earlier_calls():
    cfg = ustack.configure(name="lab", poll="busy")
    assert (cfg.name, cfg.poll) == ("lab", "busy")
    assert api_context.settings() == cfg
    ustack.configure(addr="198.18.0.9/24")
    assert api_context.settings() == Config(addr="198.18.0.9/24")


def test_failed_configure_keeps_the_previous_configuration():
    ustack.configure(poll="interrupt")
    with pytest.raises(ValueError):
        ustack.configure(poll="nope")
    assert api_context.settings().poll == "interrupt"


def test_context_kwargs_pass_offload_only_when_on():
    assert "offload" not in Config().context_kwargs()
    assert Config(offload=True).context_kwargs()["offload"] is True


def test_importing_ustack_and_configuring_loads_no_device_or_stack_code():
    code = (
        "import sys, ustack; ustack.configure(poll='busy'); "
        "heavy = [m for m in ('ustack.runtime', 'ustack.dev.ring', 'ustack.stack.stack', "
        "'ustack.topology', 'pyroute2') if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


def test_close_current_without_a_context_does_nothing():
    api_context.close_current()


def test_current_opens_one_context_per_thread_as_one_host_from_the_configuration(
    topology: Topology,
):
    ustack.configure(name=topology.name, poll="interrupt")
    seen: dict[str, object] = {}

    def other() -> None:
        ctx = api_context.current()
        seen["ctx"] = ctx
        seen["again"] = api_context.current() is ctx
        seen["mode"] = ctx.mode
        seen["mac"] = ctx.stack.iface.mac
        seen["ports"] = ctx.stack.tcp.ports
        api_context.close_current()

    try:
        ctx = api_context.current()
        assert api_context.current() is ctx
        assert ctx.mode == "interrupt"
        t = threading.Thread(target=other)
        t.start()
        t.join(30)
        assert seen["again"] is True
        assert seen["mode"] == "interrupt"
        assert seen["ctx"] is not ctx
        # One host on several queues (as workers): one MAC, neighbours learnt
        # from IPv4 too, one ephemeral port table.
        assert seen["mac"] == ctx.stack.iface.mac
        assert seen["ports"] is ctx.stack.tcp.ports
        assert ctx.stack.learn_from_ip
    finally:
        api_context.close_current()


def test_environment_configures_the_context_when_configure_was_not_called(
    topology: Topology, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("USTACK_NAME", topology.name)
    monkeypatch.setenv("USTACK_POLL", "busy")
    monkeypatch.setenv("USTACK_ADDR", "198.18.0.3/24")
    try:
        ctx = api_context.current()
        assert ctx.mode == "busy"
        assert ctx.stack.iface.cidr == "198.18.0.3/24"
    finally:
        api_context.close_current()


def test_pcap_keyword_records_the_contexts_frames(topology: Topology, tmp_path: os.PathLike[str]):
    path = os.path.join(tmp_path, "api.pcap")
    ustack.configure(name=topology.name, pcap=path)
    try:
        api_context.current().wait_until(lambda: False, 0.05)
    finally:
        api_context.close_current()
    with open(path, "rb") as f:
        data = f.read()
    assert data[:4] == bytes.fromhex("d4c3b2a1")  # pcap magic, little-endian
    assert len(data) > 24  # at least the gratuitous ARP was recorded


# ---- polling settings: budget and idle_us ------------------------------------------------


def test_polling_setting_defaults_match_the_context_and_open_context():
    import inspect

    from ustack import loop, runtime

    cfg = Config.resolve()
    assert (cfg.budget, cfg.idle_us) == (64, 100)
    assert config_mod.DEFAULT_BUDGET == loop.DEFAULT_BUDGET
    assert config_mod.DEFAULT_IDLE_US == loop.DEFAULT_IDLE_US
    params = inspect.signature(runtime.open_context).parameters
    assert params["budget"].default == cfg.budget
    assert params["idle_us"].default == cfg.idle_us


def test_polling_settings_from_environment_and_keywords_win():
    env = {"USTACK_BUDGET": "16", "USTACK_IDLE_US": " 250 "}
    cfg = Config.resolve(env=env)
    assert (cfg.budget, cfg.idle_us) == (16, 250)
    cfg = Config.resolve({"budget": 1, "idle_us": 0}, env=env)
    assert (cfg.budget, cfg.idle_us) == (1, 0)
    assert Config.resolve(env={"USTACK_BUDGET": "4096", "USTACK_IDLE_US": "1000000"}) == Config(
        budget=4096, idle_us=1_000_000
    )


@pytest.mark.parametrize(
    ("keywords", "message"),
    [
        ({"budget": 0}, "budget must be a whole number of frames, 1..4096, got 0"),
        ({"budget": 4097}, "budget must be a whole number of frames, 1..4096, got 4097"),
        ({"budget": True}, "budget must be a whole number of frames, 1..4096, got True"),
        ({"budget": "8"}, "budget must be a whole number of frames, 1..4096, got '8'"),
        ({"budget": 8.0}, "budget must be a whole number of frames, 1..4096, got 8.0"),
        ({"idle_us": -1}, "idle_us must be a whole number of microseconds, 0..1000000, got -1"),
        ({"idle_us": 1_000_001}, "idle_us must be a whole number of microseconds, 0..1000000"),
        ({"idle_us": "100"}, "idle_us must be a whole number of microseconds, 0..1000000"),
    ],
)
def test_bad_polling_settings_raise_valueerror_naming_the_keyword(
    keywords: dict[str, object], message: str
):
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        Config.resolve(keywords)
    with pytest.raises(ValueError, match=message.split()[0]):
        ustack.configure(**keywords)


@pytest.mark.parametrize(
    ("var", "text", "message"),
    [
        ("USTACK_BUDGET", "lots", "USTACK_BUDGET must be a whole number of frames, 1..4096"),
        ("USTACK_BUDGET", "0", "USTACK_BUDGET must be a whole number of frames, 1..4096, got 0"),
        ("USTACK_BUDGET", "64.0", "USTACK_BUDGET must be a whole number of frames"),
        ("USTACK_IDLE_US", "-5", "USTACK_IDLE_US must be a whole number of microseconds"),
        ("USTACK_IDLE_US", "1e3", "USTACK_IDLE_US must be a whole number of microseconds"),
        ("USTACK_IDLE_US", "2000000", "USTACK_IDLE_US must be a whole number of microseconds"),
    ],
)
def test_bad_polling_environment_values_raise_valueerror_naming_the_variable(
    var: str, text: str, message: str
):
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        Config.resolve(env={var: text})


def test_context_kwargs_carry_the_polling_settings_to_open_context():
    import inspect

    from ustack.runtime import open_context

    kw = Config(poll="busy", budget=8, idle_us=250).context_kwargs()
    assert (kw["poll"], kw["budget"], kw["idle_us"]) == ("busy", 8, 250)
    assert set(kw) <= set(inspect.signature(open_context).parameters)


def test_asyncio_keywords_and_environment_carry_the_polling_settings(
    monkeypatch: pytest.MonkeyPatch,
):
    import ustack.aio
    from ustack.aio.loop import _resolve_config

    kw = _resolve_config()
    assert (kw["budget"], kw["idle_us"]) == (64, 100)
    monkeypatch.setenv("USTACK_BUDGET", "32")
    monkeypatch.setenv("USTACK_IDLE_US", "500")
    kw = _resolve_config(idle_us=0)
    assert (kw["budget"], kw["idle_us"]) == (32, 0)
    with pytest.raises(ValueError, match="budget must be"):
        ustack.aio.install(budget=0)
    with pytest.raises(ValueError, match="idle_us must be"):
        ustack.aio.new_event_loop(idle_us=-1)


def test_polling_settings_reach_the_threads_context(
    topology: Topology, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("USTACK_IDLE_US", "250")
    ustack.configure(name=topology.name, budget=8)
    try:
        ctx = api_context.current()
        assert (ctx.mode, ctx.budget, ctx.idle_us) == ("hybrid", 8, 250)
    finally:
        api_context.close_current()
