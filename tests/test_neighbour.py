"""ARP neighbour cache: states, timers, bounds, driven by a fake clock.

Time is an int of microseconds passed in; every test asserts the exact
requests, releases and failures that come out, then the counters.
"""

from __future__ import annotations

from _collections_abc import dict_items
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ustack.stack.neighbour import NeighbourCache, NeighbourState

REQUEST = 1
REPLY = 2

OUR = 0xC6120002  # 198.18.0.2
PEER = 0xC6120001  # 198.18.0.1
OTHER = 0xC6120003  # 198.18.0.3
THIRD = 0xC6120004  # 198.18.0.4
MAC_P = bytes.fromhex("020000000001")
MAC_Q = bytes.fromhex("020000000009")
MAC_O = bytes.fromhex("020000000003")

S = 1_000_000
T0 = 5 * S  # tests start away from zero so that offsets matter


def nonzero(cache: NeighbourCache[Any]) -> dict[str, int]:
    return {k: v for k, v in cache.counters.items() if v}


def resolved(cache: NeighbourCache[Any], ip: int, mac: bytes, now_us: int) -> None:
    """Make `ip` REACHABLE at `now_us` by learning from its request for us."""
    assert cache.on_arp(REQUEST, mac, ip, OUR, OUR, now_us) == (True, [])


class CountingDict(dict[int, Any]):
    """An entry table that counts full walks (calls to items())."""

    walks = 0

    def items(self) -> dict_items[int, Any]:
        self.walks += 1
        return super().items()


# ---- resolution ----------------------------------------------------------


def test_none_queue_creates_incomplete_with_request_due_at_once():
    cache: NeighbourCache[str] = NeighbourCache()
    assert cache.lookup(PEER, T0) is None
    assert cache.queue(PEER, "a", T0) == (True, [])
    assert cache.entries() == [(PEER, None, "INCOMPLETE")]
    assert cache.next_deadline_us() == T0
    assert cache.request_target(PEER) is None
    assert cache.poll(T0) == ([PEER], [])
    assert cache.poll(T0) == ([], [])
    assert cache.lookup(PEER, T0) is None
    assert cache.queued_total == 1
    assert nonzero(cache) == {"arp_requests_sent": 1}


def test_incomplete_reply_releases_items_in_order_with_mac():
    cache: NeighbourCache[str] = NeighbourCache()
    for item in ("a", "b", "c"):
        assert cache.queue(PEER, item, T0) == (True, [])
    assert cache.poll(T0) == ([PEER], [])
    released = cache.on_arp(REPLY, MAC_P, PEER, OUR, OUR, T0 + 300)
    assert released == (False, [(MAC_P, "a"), (MAC_P, "b"), (MAC_P, "c")])
    assert cache.entries() == [(PEER, MAC_P, "REACHABLE")]
    assert cache.lookup(PEER, T0 + 301) == MAC_P
    assert cache.queued_total == 0
    assert cache.poll(T0 + 2 * S) == ([], [])
    assert nonzero(cache) == {"arp_requests_sent": 1, "arp_resolved": 1}


def test_incomplete_queue_second_item_sends_no_extra_request():
    cache: NeighbourCache[str] = NeighbourCache()
    cache.queue(PEER, "a", T0)
    assert cache.poll(T0) == ([PEER], [])
    assert cache.queue(PEER, "b", T0 + 10) == (True, [])
    assert cache.poll(T0 + 10) == ([], [])
    assert cache.next_deadline_us() == T0 + S


def test_incomplete_no_reply_retries_with_backoff_then_fails():
    cache: NeighbourCache[str] = NeighbourCache(retries=3, retry_us=S)
    cache.queue(PEER, "a", T0)
    cache.queue(PEER, "b", T0)
    # Requests at 0, 1 s and 3 s; failure 4 s after the third, at 7 s.
    schedule = [(T0, [PEER]), (T0 + S, [PEER]), (T0 + 3 * S, [PEER])]
    for at_us, ips in schedule:
        assert cache.poll(at_us - 1) == ([], [])
        assert cache.next_deadline_us() == at_us
        assert cache.poll(at_us) == (ips, [])
    assert cache.next_deadline_us() == T0 + 7 * S
    assert cache.poll(T0 + 7 * S - 1) == ([], [])
    assert cache.poll(T0 + 7 * S) == ([], ["a", "b"])
    assert len(cache) == 0
    assert cache.queued_total == 0
    assert cache.next_deadline_us() is None
    assert nonzero(cache) == {
        "arp_requests_sent": 3,
        "arp_failed": 1,
        "drop_arp_unresolved": 2,
    }


def test_incomplete_late_poll_spaces_retries_from_poll_time():
    cache: NeighbourCache[str] = NeighbourCache(retries=3, retry_us=S)
    cache.queue(PEER, "a", T0)
    assert cache.poll(T0 + 5 * S) == ([PEER], [])
    assert cache.next_deadline_us() == T0 + 6 * S
    assert cache.poll(T0 + 6 * S) == ([PEER], [])
    assert cache.next_deadline_us() == T0 + 8 * S


def test_failed_entry_queue_again_starts_fresh_resolution():
    cache: NeighbourCache[str] = NeighbourCache(retries=1, retry_us=S)
    cache.queue(PEER, "a", T0)
    assert cache.poll(T0) == ([PEER], [])
    assert cache.poll(T0 + S) == ([], ["a"])
    assert cache.queue(PEER, "b", T0 + S) == (True, [])
    assert cache.poll(T0 + S) == ([PEER], [])
    assert nonzero(cache) == {"arp_requests_sent": 2, "arp_failed": 1, "drop_arp_unresolved": 1}


# ---- queue bounds --------------------------------------------------------


def test_incomplete_queue_entry_full_drops_new_item():
    cache: NeighbourCache[str] = NeighbourCache(max_queued_per_entry=2)
    assert cache.queue(PEER, "a", T0) == (True, [])
    assert cache.queue(PEER, "b", T0) == (True, [])
    assert cache.queue(PEER, "c", T0) == (False, [])
    assert cache.queued_total == 2
    assert cache.on_arp(REPLY, MAC_P, PEER, OUR, OUR, T0) == (False, [(MAC_P, "a"), (MAC_P, "b")])
    assert nonzero(cache) == {"arp_resolved": 1, "drop_arp_queue_full": 1}


def test_incomplete_queue_total_full_drops_new_item():
    cache: NeighbourCache[str] = NeighbourCache(max_queued_per_entry=8, max_queued_total=3)
    assert cache.queue(PEER, "a", T0) == (True, [])
    assert cache.queue(PEER, "b", T0) == (True, [])
    assert cache.queue(OTHER, "c", T0) == (True, [])
    assert cache.queue(OTHER, "d", T0) == (False, [])
    assert cache.queue(THIRD, "e", T0) == (False, [])
    assert cache.queued_total == 3
    # The refused item still started resolution of its address.
    assert cache.poll(T0) == ([PEER, OTHER, THIRD], [])
    assert nonzero(cache) == {"arp_requests_sent": 3, "drop_arp_queue_full": 2}


def test_full_table_of_incomplete_queue_new_ip_refused():
    cache: NeighbourCache[str] = NeighbourCache(max_entries=2)
    assert cache.queue(PEER, "a", T0) == (True, [])
    assert cache.queue(OTHER, "b", T0) == (True, [])
    assert cache.queue(THIRD, "c", T0) == (False, [])
    assert [ip for ip, _, _ in cache.entries()] == [PEER, OTHER]
    assert nonzero(cache) == {"arp_table_full": 1, "drop_arp_table_full": 1}


def test_full_table_stale_entry_evicted_for_new_incomplete():
    cache: NeighbourCache[str] = NeighbourCache(max_entries=2, reachable_us=10 * S)
    resolved(cache, PEER, MAC_P, T0)
    resolved(cache, OTHER, MAC_O, T0 + S)
    # At T0 + 12 s both are STALE; PEER went stale first and is evicted.
    assert cache.queue(THIRD, "c", T0 + 12 * S) == (True, [])
    assert cache.entries() == [
        (OTHER, MAC_O, "STALE"),
        (THIRD, None, "INCOMPLETE"),
    ]
    assert nonzero(cache) == {"arp_learned": 2, "arp_entries_evicted": 1}


def test_full_table_expired_entries_removed_before_eviction():
    cache: NeighbourCache[str] = NeighbourCache(max_entries=3, reachable_us=10 * S, stale_us=5 * S)
    resolved(cache, PEER, MAC_P, T0)
    resolved(cache, OTHER, MAC_O, T0 + S)
    resolved(cache, THIRD, MAC_Q, T0 + 5 * S)
    # At T0 + 16 s PEER and OTHER are past 10 s + 5 s; THIRD is only STALE.
    new_ip = 0xC6120010
    assert cache.queue(new_ip, "x", T0 + 16 * S) == (True, [])
    assert cache.entries() == [
        (THIRD, MAC_Q, "STALE"),
        (new_ip, None, "INCOMPLETE"),
    ]
    assert nonzero(cache) == {"arp_learned": 3, "arp_entries_expired": 2}


def test_full_table_of_reachable_queue_refused_until_one_goes_stale():
    cache: NeighbourCache[str] = NeighbourCache(max_entries=2, reachable_us=10 * S)
    resolved(cache, PEER, MAC_P, T0)
    resolved(cache, OTHER, MAC_O, T0 + S)
    assert cache.queue(THIRD, "a", T0 + 10 * S - 1) == (False, [])
    assert cache.queue(THIRD, "b", T0 + 10 * S) == (True, [])
    assert [ip for ip, _, _ in cache.entries()] == [OTHER, THIRD]
    assert nonzero(cache) == {
        "arp_learned": 2,
        "arp_table_full": 1,
        "drop_arp_table_full": 1,
        "arp_entries_evicted": 1,
    }


def test_full_table_refused_then_gratuitous_makes_stale_entry_evictable():
    cache: NeighbourCache[str] = NeighbourCache(max_entries=2)
    resolved(cache, PEER, MAC_P, T0)
    resolved(cache, OTHER, MAC_O, T0)
    assert cache.queue(THIRD, "a", T0 + 1) == (False, [])
    # OTHER announces a new MAC: STALE, so it may now give way.
    assert cache.on_arp(REQUEST, MAC_Q, OTHER, OTHER, OUR, T0 + 2) == (False, [])
    assert cache.queue(THIRD, "b", T0 + 3) == (True, [])
    assert cache.entries() == [(PEER, MAC_P, "REACHABLE"), (THIRD, None, "INCOMPLETE")]
    assert nonzero(cache) == {
        "arp_learned": 2,
        "arp_table_full": 1,
        "drop_arp_table_full": 1,
        "arp_entries_evicted": 1,
    }


# ---- learning and the RFC 826 merge ---------------------------------------


def test_none_request_for_us_learns_reachable_and_needs_reply():
    cache: NeighbourCache[str] = NeighbourCache()
    assert cache.on_arp(REQUEST, MAC_P, PEER, OUR, OUR, T0) == (True, [])
    assert cache.entries() == [(PEER, MAC_P, "REACHABLE")]
    assert cache.lookup(PEER, T0 + 1) == MAC_P
    assert cache.next_deadline_us() == T0 + 30 * S
    assert nonzero(cache) == {"arp_learned": 1}


def test_none_unsolicited_reply_for_us_creates_no_entry():
    cache: NeighbourCache[str] = NeighbourCache()
    assert cache.on_arp(REPLY, MAC_P, PEER, OUR, OUR, T0) == (False, [])
    assert len(cache) == 0
    assert nonzero(cache) == {}


def test_none_arp_for_other_host_creates_no_entry():
    cache: NeighbourCache[str] = NeighbourCache()
    assert cache.on_arp(REQUEST, MAC_P, PEER, OTHER, OUR, T0) == (False, [])
    assert cache.on_arp(REPLY, MAC_P, PEER, OTHER, OUR, T0) == (False, [])
    assert len(cache) == 0
    assert cache.next_deadline_us() is None
    assert nonzero(cache) == {}


def test_none_gratuitous_from_other_creates_no_entry():
    cache: NeighbourCache[str] = NeighbourCache()
    assert cache.on_arp(REQUEST, MAC_P, PEER, PEER, OUR, T0) == (False, [])
    assert cache.on_arp(REPLY, MAC_P, PEER, PEER, OUR, T0) == (False, [])
    assert len(cache) == 0


def test_reachable_gratuitous_new_mac_updates_to_stale():
    cache: NeighbourCache[str] = NeighbourCache()
    resolved(cache, PEER, MAC_P, T0)
    assert cache.on_arp(REQUEST, MAC_Q, PEER, PEER, OUR, T0 + S) == (False, [])
    assert cache.entries() == [(PEER, MAC_Q, "STALE")]
    # Using it gives the new MAC and re-validates it with a unicast request.
    assert cache.lookup(PEER, T0 + 2 * S) == MAC_Q
    assert cache.entries() == [(PEER, MAC_Q, "PROBE")]
    assert cache.request_target(PEER) == MAC_Q
    assert cache.poll(T0 + 2 * S) == ([PEER], [])


def test_reachable_gratuitous_same_mac_unchanged():
    cache: NeighbourCache[str] = NeighbourCache()
    resolved(cache, PEER, MAC_P, T0)
    assert cache.on_arp(REPLY, MAC_P, PEER, PEER, OUR, T0 + S) == (False, [])
    assert cache.entries() == [(PEER, MAC_P, "REACHABLE")]
    assert cache.next_deadline_us() == T0 + 30 * S


def test_incomplete_arp_from_target_to_other_host_releases_as_stale():
    cache: NeighbourCache[str] = NeighbourCache()
    cache.queue(PEER, "a", T0)
    cache.queue(PEER, "b", T0)
    assert cache.poll(T0) == ([PEER], [])
    # PEER's own broadcast request for another host says where it is.
    got = cache.on_arp(REQUEST, MAC_P, PEER, OTHER, OUR, T0 + 10)
    assert got == (False, [(MAC_P, "a"), (MAC_P, "b")])
    assert cache.entries() == [(PEER, MAC_P, "STALE")]
    assert cache.next_deadline_us() == T0 + 10 + 60 * S
    assert nonzero(cache) == {"arp_requests_sent": 1, "arp_resolved": 1}


def test_stale_request_for_us_becomes_reachable_with_new_mac():
    cache: NeighbourCache[str] = NeighbourCache(reachable_us=10 * S)
    resolved(cache, PEER, MAC_P, T0)
    assert cache.poll(T0 + 10 * S) == ([], [])
    assert cache.entries() == [(PEER, MAC_P, "STALE")]
    assert cache.on_arp(REQUEST, MAC_Q, PEER, OUR, OUR, T0 + 11 * S) == (True, [])
    assert cache.entries() == [(PEER, MAC_Q, "REACHABLE")]
    assert cache.next_deadline_us() == T0 + 21 * S


def test_reachable_request_for_us_refreshes_deadline_exactly():
    cache: NeighbourCache[str] = NeighbourCache(reachable_us=10 * S)
    resolved(cache, PEER, MAC_P, T0)
    resolved(cache, OTHER, MAC_O, T0 + 2 * S)
    assert cache.next_deadline_us() == T0 + 10 * S
    resolved(cache, PEER, MAC_P, T0 + 4 * S)
    # PEER was the earliest; now OTHER is.
    assert cache.next_deadline_us() == T0 + 12 * S
    assert cache.lookup(PEER, T0 + 13 * S) == MAC_P
    assert cache.entries()[0] == (PEER, MAC_P, "REACHABLE")


def test_none_probe_spa_zero_never_learns_but_needs_reply_for_us():
    cache: NeighbourCache[str] = NeighbourCache()
    assert cache.on_arp(REQUEST, MAC_P, 0, OUR, OUR, T0) == (True, [])
    assert cache.on_arp(REQUEST, MAC_P, 0, OTHER, OUR, T0) == (False, [])
    assert len(cache) == 0
    assert nonzero(cache) == {}


def test_reachable_probe_for_its_address_leaves_entry_alone():
    cache: NeighbourCache[str] = NeighbourCache()
    resolved(cache, PEER, MAC_P, T0)
    # A new host (MAC_Q) probes whether PEER's address is taken (RFC 5227).
    assert cache.on_arp(REQUEST, MAC_Q, 0, PEER, OUR, T0 + S) == (False, [])
    assert cache.entries() == [(PEER, MAC_P, "REACHABLE")]


def test_none_sender_with_our_address_counts_conflict_never_learns():
    cache: NeighbourCache[str] = NeighbourCache()
    assert cache.on_arp(REQUEST, MAC_Q, OUR, OUR, OUR, T0) == (True, [])
    assert cache.on_arp(REPLY, MAC_Q, OUR, PEER, OUR, T0) == (False, [])
    assert len(cache) == 0
    assert nonzero(cache) == {"arp_address_conflicts": 2}


@pytest.mark.parametrize(
    "sha", [b"\xff" * 6, bytes.fromhex("01005e000001"), bytes(6)], ids=["bcast", "mcast", "zero"]
)
def test_none_bad_sha_dropped_and_counted(sha: bytes):
    cache: NeighbourCache[str] = NeighbourCache()
    assert cache.on_arp(REQUEST, sha, PEER, OUR, OUR, T0) == (False, [])
    assert len(cache) == 0
    assert nonzero(cache) == {"drop_arp_bad_sha": 1}


@pytest.mark.parametrize(
    "spa",
    [0x00010203, 0x7F000001, 0xE0000001, 0xF0000001, 0xFFFFFFFF],
    ids=["zero-net", "loopback", "multicast", "class-e", "broadcast"],
)
def test_none_martian_spa_dropped_and_counted(spa: int):
    cache: NeighbourCache[str] = NeighbourCache()
    assert cache.on_arp(REQUEST, MAC_P, spa, OUR, OUR, T0) == (False, [])
    assert len(cache) == 0
    assert nonzero(cache) == {"drop_arp_bad_spa": 1}


# ---- table bound under floods --------------------------------------------


def test_flood_requests_for_us_from_many_ips_table_stays_bounded():
    cache: NeighbourCache[str] = NeighbourCache(max_entries=16)
    base = 0xC6120100
    for i in range(1000):
        assert cache.on_arp(REQUEST, MAC_P, base + i, OUR, OUR, T0 + i) == (True, [])
        if i == 16:
            # The table is full and nothing in it may go before T0 + 30 s:
            # later refusals must not walk it again.
            entries = cache._entries = CountingDict(cache._entries)
    assert entries.walks == 0
    assert len(cache) == 16
    assert [ip for ip, _, _ in cache.entries()] == [base + i for i in range(16)]
    assert cache.queue(PEER, "a", T0 + 1000) == (False, [])
    assert nonzero(cache) == {
        "arp_learned": 16,
        "arp_table_full": 985,
        "drop_arp_table_full": 1,
    }


def test_flood_requests_for_us_after_aging_evicts_oldest_stale():
    cache: NeighbourCache[str] = NeighbourCache(max_entries=4, reachable_us=10 * S)
    base = 0xC6120100
    for i in range(4):
        resolved(cache, base + i, MAC_P, T0 + i)
    resolved(cache, base + 99, MAC_Q, T0 + 10 * S + 1)
    assert [ip for ip, _, _ in cache.entries()] == [base + 1, base + 2, base + 3, base + 99]
    assert cache.entries()[-1] == (base + 99, MAC_Q, "REACHABLE")
    assert nonzero(cache) == {"arp_learned": 5, "arp_entries_evicted": 1}


def test_flood_arp_between_other_hosts_creates_no_entry():
    cache: NeighbourCache[str] = NeighbourCache(max_entries=16)
    base = 0xC6120100
    for i in range(1000):
        assert cache.on_arp(REQUEST, MAC_P, base + i, base + i + 1, OUR, T0) == (False, [])
        assert cache.on_arp(REPLY, MAC_P, base + i, base + i, OUR, T0) == (False, [])
    assert len(cache) == 0
    assert nonzero(cache) == {}


def test_flood_queue_for_many_ips_table_and_queue_bounded():
    cache: NeighbourCache[int] = NeighbourCache(max_entries=8, max_queued_total=5)
    base = 0xC6120100
    accepted = [cache.queue(base + i, i, T0)[0] for i in range(100)]
    assert accepted == [True] * 5 + [False] * 95
    assert len(cache) == 8
    assert cache.queued_total == 5
    assert nonzero(cache) == {
        "drop_arp_queue_full": 3,
        "arp_table_full": 92,
        "drop_arp_table_full": 92,
    }


# ---- aging ---------------------------------------------------------------


def test_reachable_timeout_becomes_stale_then_removed():
    cache: NeighbourCache[str] = NeighbourCache(reachable_us=30 * S, stale_us=60 * S)
    resolved(cache, PEER, MAC_P, T0)
    assert cache.next_deadline_us() == T0 + 30 * S
    assert cache.poll(T0 + 30 * S - 1) == ([], [])
    assert cache.entries() == [(PEER, MAC_P, "REACHABLE")]
    assert cache.poll(T0 + 30 * S) == ([], [])
    assert cache.entries() == [(PEER, MAC_P, "STALE")]
    assert cache.next_deadline_us() == T0 + 90 * S
    assert cache.poll(T0 + 90 * S - 1) == ([], [])
    assert cache.poll(T0 + 90 * S) == ([], [])
    assert len(cache) == 0
    assert cache.next_deadline_us() is None
    assert nonzero(cache) == {"arp_learned": 1, "arp_entries_expired": 1}


def test_reachable_late_poll_ages_through_stale_to_removed_at_once():
    cache: NeighbourCache[str] = NeighbourCache(reachable_us=30 * S, stale_us=60 * S)
    resolved(cache, PEER, MAC_P, T0)
    assert cache.poll(T0 + 100 * S) == ([], [])
    assert len(cache) == 0
    assert nonzero(cache) == {"arp_learned": 1, "arp_entries_expired": 1}


def test_reachable_lookup_before_timeout_stays_reachable():
    cache: NeighbourCache[str] = NeighbourCache(reachable_us=30 * S)
    resolved(cache, PEER, MAC_P, T0)
    assert cache.lookup(PEER, T0 + 30 * S - 1) == MAC_P
    assert cache.entries() == [(PEER, MAC_P, "REACHABLE")]
    assert cache.next_deadline_us() == T0 + 30 * S


def test_stale_lookup_returns_mac_and_schedules_probe():
    cache: NeighbourCache[str] = NeighbourCache(reachable_us=30 * S)
    resolved(cache, PEER, MAC_P, T0)
    t1 = T0 + 31 * S
    # Lazily REACHABLE -> STALE -> PROBE in one lookup; the MAC is still used.
    assert cache.lookup(PEER, t1) == MAC_P
    assert cache.entries() == [(PEER, MAC_P, "PROBE")]
    assert cache.next_deadline_us() == t1
    assert cache.poll(t1) == ([PEER], [])
    assert cache.request_target(PEER) == MAC_P
    assert cache.lookup(PEER, t1 + 10) == MAC_P
    assert cache.poll(t1 + 10) == ([], [])
    assert cache.on_arp(REPLY, MAC_P, PEER, OUR, OUR, t1 + 20) == (False, [])
    assert cache.entries() == [(PEER, MAC_P, "REACHABLE")]
    assert cache.next_deadline_us() == t1 + 20 + 30 * S
    assert nonzero(cache) == {"arp_learned": 1, "arp_requests_sent": 1}


def test_probe_no_reply_removes_entry_after_schedule():
    cache: NeighbourCache[str] = NeighbourCache(reachable_us=30 * S, retries=3, retry_us=S)
    resolved(cache, PEER, MAC_P, T0)
    t1 = T0 + 40 * S
    assert cache.lookup(PEER, t1) == MAC_P
    for at_us in (t1, t1 + S, t1 + 3 * S):
        assert cache.poll(at_us - 1) == ([], [])
        assert cache.poll(at_us) == ([PEER], [])
        assert cache.lookup(PEER, at_us) == MAC_P
    assert cache.poll(t1 + 7 * S - 1) == ([], [])
    assert cache.poll(t1 + 7 * S) == ([], [])
    assert cache.lookup(PEER, t1 + 7 * S) is None
    assert len(cache) == 0
    assert nonzero(cache) == {"arp_learned": 1, "arp_requests_sent": 3, "arp_failed": 1}


def test_stale_expired_lookup_misses_and_removes():
    cache: NeighbourCache[str] = NeighbourCache(reachable_us=10 * S, stale_us=20 * S)
    resolved(cache, PEER, MAC_P, T0)
    assert cache.lookup(PEER, T0 + 30 * S) is None
    assert len(cache) == 0
    assert cache.queue(PEER, "a", T0 + 30 * S) == (True, [])
    assert cache.entries() == [(PEER, None, "INCOMPLETE")]
    assert nonzero(cache) == {"arp_learned": 1, "arp_entries_expired": 1}


# ---- deadlines and cost ----------------------------------------------------


def test_empty_next_deadline_is_none():
    cache: NeighbourCache[str] = NeighbourCache()
    assert cache.next_deadline_us() is None
    assert cache.poll(T0) == ([], [])


def test_incomplete_resolved_early_next_deadline_is_exact():
    cache: NeighbourCache[str] = NeighbourCache(reachable_us=30 * S)
    cache.queue(PEER, "a", T0)
    resolved(cache, OTHER, MAC_O, T0)
    assert cache.poll(T0) == ([PEER], [])
    assert cache.next_deadline_us() == T0 + S
    cache.on_arp(REPLY, MAC_P, PEER, OUR, OUR, T0 + S // 2)
    assert cache.next_deadline_us() == T0 + 30 * S


def test_stale_expired_by_lookup_next_deadline_is_exact():
    cache: NeighbourCache[str] = NeighbourCache(reachable_us=10 * S, stale_us=60 * S)
    resolved(cache, PEER, MAC_P, T0)
    resolved(cache, OTHER, MAC_O, T0 + S)
    assert cache.poll(T0 + 11 * S) == ([], [])
    assert cache.next_deadline_us() == T0 + 70 * S
    assert cache.lookup(PEER, T0 + 70 * S) is None
    assert cache.next_deadline_us() == T0 + 71 * S


def test_many_entries_poll_walks_only_when_due():
    cache: NeighbourCache[str] = NeighbourCache(reachable_us=30 * S)
    base = 0xC6120100
    for i in range(50):
        resolved(cache, base + i, MAC_P, T0 + i * S)
    entries = cache._entries = CountingDict(cache._entries)
    for t in range(T0, T0 + 30 * S, S // 10):
        assert cache.poll(t) == ([], [])
    assert entries.walks == 0
    assert cache.poll(T0 + 30 * S) == ([], [])
    assert entries.walks == 1
    assert cache.poll(T0 + 30 * S + S // 2) == ([], [])
    assert entries.walks == 1
    assert cache.next_deadline_us() == T0 + 31 * S


# ---- misuse ---------------------------------------------------------------


def test_reachable_queue_raises_value_error():
    cache: NeighbourCache[str] = NeighbourCache()
    resolved(cache, PEER, MAC_P, T0)
    with pytest.raises(ValueError, match="call lookup"):
        cache.queue(PEER, "a", T0 + 1)


def test_bad_op_or_sha_length_raises_value_error():
    cache: NeighbourCache[str] = NeighbourCache()
    with pytest.raises(ValueError, match="op"):
        cache.on_arp(3, MAC_P, PEER, OUR, OUR, T0)
    with pytest.raises(ValueError, match="6 bytes"):
        cache.on_arp(REQUEST, MAC_P[:5], PEER, OUR, OUR, T0)


@pytest.mark.parametrize(
    "kwargs",
    [{"max_entries": 0}, {"max_queued_total": -1}, {"reachable_us": 0}, {"retries": 0}],
)
def test_config_out_of_range_raises_value_error(kwargs: dict[str, int]):
    with pytest.raises(ValueError):
        NeighbourCache(**kwargs)


def test_state_names_print_like_linux():
    assert [str(s) for s in NeighbourState] == ["INCOMPLETE", "REACHABLE", "STALE", "PROBE"]


# ---- invariants under random traffic ----------------------------------------

_IPS = [0xC6120100 + i for i in range(6)]
_MACS = [bytes.fromhex(f"0200000000{i:02x}") for i in range(1, 4)]

_op = st.one_of(
    st.tuples(st.just("queue"), st.sampled_from(_IPS)),
    st.tuples(st.just("lookup"), st.sampled_from(_IPS)),
    st.tuples(st.just("poll"), st.just(0)),
    st.tuples(
        st.just("arp"),
        st.tuples(
            st.sampled_from([REQUEST, REPLY]),
            st.sampled_from(_MACS),
            st.sampled_from([*_IPS, 0]),
            st.sampled_from([OUR, _IPS[0], OTHER]),
        ),
    ),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3 * S), _op), max_size=60))
def test_random_traffic_keeps_bounds_and_accounts_every_item(steps: list[tuple[int, Any]]):
    cache: NeighbourCache[int] = NeighbourCache(
        max_entries=4,
        max_queued_per_entry=2,
        max_queued_total=5,
        reachable_us=2 * S,
        stale_us=3 * S,
        retries=2,
        retry_us=S // 2,
    )
    now = 0
    held: set[int] = set()
    refused = released_count = failed_count = 0
    next_item = 0
    for dt, (kind, arg) in steps:
        now += dt
        if kind == "queue":
            if cache.lookup(arg, now) is not None:
                continue
            item, next_item = next_item, next_item + 1
            accepted, evicted = cache.queue(arg, item, now)
            assert evicted == []
            if accepted:
                held.add(item)
            else:
                refused += 1
        elif kind == "lookup":
            cache.lookup(arg, now)
        elif kind == "poll":
            ips, failed = cache.poll(now)
            assert len(set(ips)) == len(ips)
            assert set(failed) <= held
            held -= set(failed)
            failed_count += len(failed)
        else:
            op, sha, spa, tpa = arg
            _, released = cache.on_arp(op, sha, spa, tpa, OUR, now)
            items = [item for _, item in released]
            assert items == sorted(items)
            assert set(items) <= held
            held -= set(items)
            released_count += len(items)
        assert len(cache) <= 4
        assert cache.queued_total == len(held) <= 5
        deadline = cache.next_deadline_us()
        assert (deadline is None) == (len(cache) == 0)
        if deadline is not None and now < deadline:
            assert cache.poll(now) == ([], [])
    # Every item is held, released, failed or refused, exactly once.
    assert next_item == len(held) + released_count + failed_count + refused
    c = cache.counters
    assert c["drop_arp_unresolved"] == failed_count
    assert c["drop_arp_queue_full"] + c["drop_arp_table_full"] == refused


# ---- confirmation from IPv4 traffic (workers) ------------------------------


def test_confirm_learns_absent_neighbour_as_reachable():
    cache: NeighbourCache[str] = NeighbourCache()
    assert cache.confirm(PEER, MAC_P, T0) == []
    assert cache.entries() == [(PEER, MAC_P, "REACHABLE")]
    assert cache.lookup(PEER, T0 + 1) == MAC_P
    assert nonzero(cache) == {"arp_learned_from_ip": 1}


def test_confirm_releases_queue_of_incomplete_entry_in_order():
    cache: NeighbourCache[str] = NeighbourCache()
    for item in ("a", "b"):
        assert cache.queue(PEER, item, T0) == (True, [])
    assert cache.poll(T0) == ([PEER], [])
    assert cache.confirm(PEER, MAC_P, T0 + 10) == [(MAC_P, "a"), (MAC_P, "b")]
    assert cache.queued_total == 0
    assert cache.entries() == [(PEER, MAC_P, "REACHABLE")]
    # Resolved: no further request, no failure later.
    assert cache.poll(T0 + 10 * S) == ([], [])


def test_confirm_refreshes_stale_entry_so_no_probe_is_sent():
    cache: NeighbourCache[str] = NeighbourCache()
    resolved(cache, PEER, MAC_P, T0)
    later = T0 + cache.reachable_us + 1
    assert cache.poll(later) == ([], [])
    assert cache.entries() == [(PEER, MAC_P, "STALE")]
    assert cache.confirm(PEER, MAC_P, later + 1) == []
    assert cache.entries() == [(PEER, MAC_P, "REACHABLE")]
    assert cache.lookup(PEER, later + 2) == MAC_P
    assert cache.poll(later + 2) == ([], [])


def test_confirm_with_new_mac_replaces_old():
    cache: NeighbourCache[str] = NeighbourCache()
    resolved(cache, PEER, MAC_P, T0)
    assert cache.confirm(PEER, MAC_Q, T0 + 1) == []
    assert cache.lookup(PEER, T0 + 2) == MAC_Q


def test_confirm_respects_table_bound():
    cache: NeighbourCache[str] = NeighbourCache(max_entries=1)
    resolved(cache, PEER, MAC_P, T0)
    assert cache.confirm(OTHER, MAC_O, T0 + 1) == []
    assert len(cache) == 1
    assert cache.counters["arp_table_full"] == 1
