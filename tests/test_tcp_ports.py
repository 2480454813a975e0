"""RFC 6056 algorithm 4 ephemeral ports: range, per-destination sequence, in-use, exhaustion.

A generator with an injected secret is deterministic, so a second one with
the same secret predicts what the first will choose.
"""

from __future__ import annotations

import errno
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ustack.tcp.ports import DEFAULT_HIGH, DEFAULT_LOW, EphemeralPorts

KEY = bytes(range(32))
KEY2 = bytes(range(1, 33))
OUR = 0xC6120002  # 198.18.0.2
PEER = 0xC6120001  # 198.18.0.1
OTHER = 0xC6130002  # 198.19.0.2


def free(port: int) -> bool:
    return False


def taken(port: int) -> bool:
    return True


def step(a: int, b: int, low: int, high: int) -> int:
    """Forward distance from port a to port b inside low..high."""
    return (b - a) % (high - low + 1)


def test_defaults_are_linux_range() -> None:
    ports = EphemeralPorts(secret=KEY)
    assert (ports.low, ports.high) == (DEFAULT_LOW, DEFAULT_HIGH) == (32768, 60999)


def test_choice_stays_in_range_for_many_destinations() -> None:
    ports = EphemeralPorts(1000, 1099, secret=KEY)
    chosen = [ports.choose(OUR, PEER + i, 80 + i, free) for i in range(500)]
    assert all(1000 <= p <= 1099 for p in chosen)
    # Destinations start at secret offsets spread over the range.
    assert len(set(chosen)) > 50


def test_same_secret_same_choices_different_secret_different_choices() -> None:
    a = EphemeralPorts(secret=KEY)
    b = EphemeralPorts(secret=KEY)
    c = EphemeralPorts(secret=KEY2)
    seq_a = [a.choose(OUR, PEER, 80, free) for _ in range(5)]
    seq_b = [b.choose(OUR, PEER, 80, free) for _ in range(5)]
    seq_c = [c.choose(OUR, PEER, 80, free) for _ in range(5)]
    assert seq_a == seq_b
    assert seq_a != seq_c


def test_successive_choices_for_one_destination_walk_forwards() -> None:
    """Algorithm 4: each destination walks its own sequence; the counter skips 1..8."""
    low, high = DEFAULT_LOW, DEFAULT_HIGH
    ports = EphemeralPorts(secret=KEY)
    chosen = [ports.choose(OUR, PEER, 80, free) for _ in range(200)]
    steps = [step(a, b, low, high) for a, b in itertools.pairwise(chosen)]
    assert all(1 <= s <= 8 for s in steps)
    assert len(set(steps)) > 1  # the secret jitter is not constant
    assert len(set(chosen)) == len(chosen)  # no reuse while the walk lasts


def test_other_destinations_do_not_move_a_destinations_sequence() -> None:
    """Connections elsewhere are invisible to a destination (unlike algorithm 3)."""
    quiet = EphemeralPorts(secret=KEY)
    busy = EphemeralPorts(secret=KEY)
    first = quiet.choose(OUR, PEER, 80, free)
    assert busy.choose(OUR, PEER, 80, free) == first
    for i in range(50):
        busy.choose(OUR, OTHER + i, 443, free)
    assert busy.choose(OUR, PEER, 80, free) == quiet.choose(OUR, PEER, 80, free)


def test_remote_port_and_local_address_are_part_of_the_destination() -> None:
    base = EphemeralPorts(secret=KEY).choose(OUR, PEER, 80, free)
    assert EphemeralPorts(secret=KEY).choose(OUR, PEER, 81, free) != base
    assert EphemeralPorts(secret=KEY).choose(OUR + 1, PEER, 80, free) != base
    assert EphemeralPorts(secret=KEY).choose(OUR, PEER + 1, 80, free) != base


def test_in_use_ports_are_skipped_in_sequence() -> None:
    low, high = 2000, 2009
    predicted = EphemeralPorts(low, high, secret=KEY).choose(OUR, PEER, 80, free)
    busy = {predicted, low + (predicted - low + 1) % 10}
    asked: list[int] = []

    def in_use(port: int) -> bool:
        asked.append(port)
        return port in busy

    port = EphemeralPorts(low, high, secret=KEY).choose(OUR, PEER, 80, in_use)
    assert port == low + (predicted - low + 2) % 10
    assert asked == [predicted, low + (predicted - low + 1) % 10, port]


def test_walk_wraps_from_high_to_low() -> None:
    low, high = 5000, 5003
    ports = EphemeralPorts(low, high, secret=KEY)
    chosen = [ports.choose(OUR, PEER, 80, free) for _ in range(20)]
    assert all(low <= p <= high for p in chosen)
    # The forward distance is taken modulo the range: wrapping is a small step.
    assert any(b < a for a, b in itertools.pairwise(chosen))


def test_range_fills_then_eaddrnotavail() -> None:
    low, high = 3000, 3009
    ports = EphemeralPorts(low, high, secret=KEY)
    used: set[int] = set()
    for _ in range(10):
        used.add(ports.choose(OUR, PEER, 80, used.__contains__))
    assert used == set(range(low, high + 1))
    with pytest.raises(OSError) as info:
        ports.choose(OUR, PEER, 80, used.__contains__)
    assert info.value.errno == errno.EADDRNOTAVAIL
    assert "3000..3009" in str(info.value)
    assert "198.18.0.1:80" in str(info.value)
    # The caller's in_use is per destination: towards another peer every
    # port is free again, as those 4-tuples differ.
    assert low <= ports.choose(OUR, OTHER, 80, free) <= high


def test_exhaustion_asks_every_port_once_and_leaves_the_table_alone() -> None:
    low, high = 4000, 4099
    ports = EphemeralPorts(low, high, secret=KEY)
    twin = EphemeralPorts(low, high, secret=KEY)
    asked: list[int] = []

    def in_use(port: int) -> bool:
        asked.append(port)
        return True

    with pytest.raises(OSError) as info:
        ports.choose(OUR, PEER, 80, in_use)
    assert info.value.errno == errno.EADDRNOTAVAIL
    assert sorted(asked) == list(range(low, high + 1))
    assert ports.choose(OUR, PEER, 80, free) == twin.choose(OUR, PEER, 80, free)


def test_single_port_range() -> None:
    ports = EphemeralPorts(7000, 7000, secret=KEY)
    assert ports.choose(OUR, PEER, 80, free) == 7000
    assert ports.choose(OUR, PEER, 80, free) == 7000
    with pytest.raises(OSError):
        ports.choose(OUR, PEER, 80, taken)


def test_invalid_range_or_destination_is_refused() -> None:
    for low, high in [(0, 10), (10, 9), (1, 65536)]:
        with pytest.raises(ValueError, match="ephemeral range"):
            EphemeralPorts(low, high, secret=KEY)
    with pytest.raises(ValueError, match=r"16\.\.32 bytes"):
        EphemeralPorts(secret=b"k")
    with pytest.raises(ValueError, match="out of range"):
        EphemeralPorts(secret=KEY).choose(OUR, PEER, 70000, free)


@given(
    low=st.integers(1, 65535),
    size=st.integers(1, 64),
    remote=st.integers(0, 0xFFFFFFFF),
    rport=st.integers(0, 65535),
    busy=st.frozensets(st.integers(0, 63)),
)
def test_choice_is_in_range_and_free_or_exhausted(
    low: int, size: int, remote: int, rport: int, busy: frozenset[int]
) -> None:
    high = min(low + size - 1, 65535)
    in_use = {low + b for b in busy if low + b <= high}
    ports = EphemeralPorts(low, high, secret=KEY)
    if len(in_use) == high - low + 1:
        with pytest.raises(OSError):
            ports.choose(OUR, remote, rport, in_use.__contains__)
    else:
        port = ports.choose(OUR, remote, rport, in_use.__contains__)
        assert low <= port <= high
        assert port not in in_use
