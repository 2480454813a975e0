"""The kv item store alone: sizes, expiry, cas ids, LRU eviction, incr/decr, flush.

A fake clock drives every time-dependent test; the sizes and limits are
memcached's (see the module docstring of ustack.apps.kvstore).
"""

from __future__ import annotations

import pytest

from ustack.apps.kvstore import (
    EXPIRED,
    REALTIME_MAXDELTA,
    DeltaError,
    KvStore,
    StoreMode,
    StoreResult,
    item_total,
    parse_counter,
)

NOW = 1_700_000_000.0


class FakeClock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def make(memory_limit: int = 64 << 20, item_size_max: int = 1 << 20) -> tuple[KvStore, FakeClock]:
    clock = FakeClock()
    return KvStore(memory_limit=memory_limit, item_size_max=item_size_max, clock=clock), clock


def put(store: KvStore, key: bytes, value: bytes, flags: int = 0, exptime: int = 0) -> StoreResult:
    return store.store(StoreMode.SET, key, value + b"\r\n", flags, store.expiry(exptime))


def value_of(store: KvStore, key: bytes) -> bytes | None:
    it = store.get(key)
    return None if it is None else it.value


# -- sizes --------------------------------------------------------------------


def test_item_total_is_memcached_ntotal():
    # memcached's "me" command reports size=62 for key "c1", value "a", flags 0.
    assert item_total(2, 0, 1 + 2) == 62
    assert item_total(2, 7, 1 + 2) == 66


def test_item_size_limit_boundary_matches_memcached():
    store, _ = make()
    # Measured on memcached 1.6.18 -I 1m: key of 2 bytes, 1048515 fits, one more not.
    assert store.item_size_ok(2, 0, 1048515)
    assert not store.item_size_ok(2, 0, 1048516)
    assert store.item_size_ok(2, 5, 1048511)
    assert not store.item_size_ok(2, 5, 1048512)


def test_bytes_and_items_tracked():
    store, _ = make()
    put(store, b"a", b"xyz")
    put(store, b"b", b"", flags=1)
    assert len(store) == 2
    assert store.bytes == item_total(1, 0, 5) + item_total(1, 1, 2)
    put(store, b"a", b"x")
    assert store.bytes == item_total(1, 0, 3) + item_total(1, 1, 2)
    store.delete(b"a")
    assert store.bytes == item_total(1, 1, 2)


# -- expiry -----------------------------------------------------------------------


def test_expiry_relative_absolute_negative_never():
    store, clock = make()
    assert store.expiry(0) == 0.0
    assert store.expiry(10) == NOW + 10
    assert store.expiry(REALTIME_MAXDELTA) == NOW + REALTIME_MAXDELTA
    assert store.expiry(REALTIME_MAXDELTA + 1) == EXPIRED  # absolute, in 1970
    assert store.expiry(int(NOW) + 50) == int(NOW) + 50
    assert store.expiry(int(NOW) - 50) == EXPIRED
    assert store.expiry(-1) == EXPIRED
    clock.now += 5
    assert store.expiry(10) == NOW + 15


def test_item_expires_when_its_time_comes():
    store, clock = make()
    put(store, b"k", b"v", exptime=10)
    put(store, b"n", b"v", exptime=0)
    clock.now += 9.999
    assert value_of(store, b"k") == b"v"
    clock.now += 0.001
    assert value_of(store, b"k") is None
    assert value_of(store, b"n") == b"v"
    assert store.stats["get_expired"] == 1
    assert store.stats["get_misses"] == 1
    assert len(store) == 1


def test_negative_exptime_stored_but_never_seen():
    store, _ = make()
    assert put(store, b"k", b"v", exptime=-1) is StoreResult.STORED
    assert value_of(store, b"k") is None
    # Expired counts as missing: add succeeds, replace does not.
    assert store.store(StoreMode.REPLACE, b"k", b"w\r\n", 0, 0.0) is StoreResult.NOT_STORED
    put(store, b"j", b"v", exptime=-1)
    assert store.store(StoreMode.ADD, b"j", b"w\r\n", 0, 0.0) is StoreResult.STORED


def test_touch_and_get_and_touch_move_expiry():
    store, clock = make()
    put(store, b"k", b"v", exptime=10)
    assert store.touch(b"k", store.expiry(100))
    clock.now += 50
    it = store.get_and_touch(b"k", store.expiry(5))
    assert it is not None and it.value == b"v"
    clock.now += 6
    assert not store.touch(b"k", 0.0)
    assert store.stats["touch_hits"] == 2
    assert store.stats["touch_misses"] == 1
    assert store.stats["cmd_touch"] == 3


# -- store modes and cas ------------------------------------------------------------


def test_store_modes():
    store, _ = make()
    s = store.store
    assert s(StoreMode.ADD, b"k", b"1\r\n", 3, 0.0) is StoreResult.STORED
    assert s(StoreMode.ADD, b"k", b"2\r\n", 0, 0.0) is StoreResult.NOT_STORED
    assert s(StoreMode.REPLACE, b"x", b"2\r\n", 0, 0.0) is StoreResult.NOT_STORED
    assert s(StoreMode.APPEND, b"x", b"2\r\n", 0, 0.0) is StoreResult.NOT_STORED
    assert s(StoreMode.PREPEND, b"x", b"2\r\n", 0, 0.0) is StoreResult.NOT_STORED
    assert s(StoreMode.APPEND, b"k", b"ab\r\n", 9, 0.0) is StoreResult.STORED
    assert s(StoreMode.PREPEND, b"k", b"cd\r\n", 9, 0.0) is StoreResult.STORED
    it = store.get(b"k")
    assert it is not None
    assert (it.value, it.flags) == (b"cd1ab", 3)  # append keeps the old flags
    assert s(StoreMode.REPLACE, b"k", b"r\r\n", 7, 0.0) is StoreResult.STORED
    assert value_of(store, b"k") == b"r"


def test_append_keeps_expiry_and_refuses_past_the_size_limit():
    store, clock = make(item_size_max=2048)
    put(store, b"k", b"a" * 1000, exptime=10)
    assert store.store(StoreMode.APPEND, b"k", b"b" * 900 + b"\r\n", 0, 0.0) is StoreResult.STORED
    assert store.store(StoreMode.APPEND, b"k", b"c" * 100 + b"\r\n", 0, 0.0) is (
        StoreResult.NOT_STORED
    )
    clock.now += 11
    assert value_of(store, b"k") is None


def test_cas_ids_and_conflicts():
    store, _ = make()
    put(store, b"a", b"1")
    put(store, b"b", b"1")
    a = store.get(b"a")
    assert a is not None and a.cas == 1
    cas = store.store
    assert cas(StoreMode.CAS, b"a", b"2\r\n", 0, 0.0, 99) is StoreResult.EXISTS
    assert cas(StoreMode.CAS, b"a", b"2\r\n", 0, 0.0, 0) is StoreResult.EXISTS
    assert cas(StoreMode.CAS, b"zz", b"2\r\n", 0, 0.0, 1) is StoreResult.NOT_FOUND
    assert cas(StoreMode.CAS, b"a", b"2\r\n", 0, 0.0, 1) is StoreResult.STORED
    assert cas(StoreMode.CAS, b"a", b"3\r\n", 0, 0.0, 1) is StoreResult.EXISTS
    a = store.get(b"a")
    assert a is not None and (a.value, a.cas) == (b"2", 3)
    assert (store.stats["cas_hits"], store.stats["cas_badval"], store.stats["cas_misses"]) == (
        1,
        3,
        1,
    )


def test_failed_stores_use_no_cas_id_touch_keeps_it():
    store, _ = make()
    put(store, b"a", b"1")
    store.store(StoreMode.ADD, b"a", b"1\r\n", 0, 0.0)
    store.store(StoreMode.REPLACE, b"b", b"1\r\n", 0, 0.0)
    store.touch(b"a", 0.0)
    put(store, b"c", b"1")
    c = store.get(b"c")
    assert c is not None and c.cas == 2


# -- incr / decr --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "value"),
    [
        (b"12\r\n", 12),
        (b" 12\r\n", 12),
        (b"+12\r\n", 12),
        (b"0012\r\n", 12),
        (b"1\t2\r\n", 1),
        (b"12 abc\r\n", 12),
        (b"12\x00abc\r\n", 12),
        (b"-0\r\n", 0),
        (b"18446744073709551615\r\n", 2**64 - 1),
        (b"-18446744073709551615\r\n", 1),
        (b"abc\r\n", None),
        (b"\r\n", None),
        (b"12x\r\n", None),
        (b"-5\r\n", None),
        (b"18446744073709551616\r\n", None),
    ],
)
def test_counter_parsed_like_strtoull(data: bytes, value: int | None):
    assert parse_counter(data) == value


def test_incr_wraps_decr_stops_at_zero_in_place_padding():
    store, _ = make()
    put(store, b"n", b"18446744073709551615")
    assert store.delta(b"n", 2, True) == b"1"
    assert value_of(store, b"n") == b"1" + b" " * 19  # same length, padded
    assert store.delta(b"n", 5, False) == b"0"
    put(store, b"m", b"9")
    assert store.delta(b"m", 1, True) == b"10"
    assert value_of(store, b"m") == b"10"  # longer: exactly the digits
    assert store.delta(b"zz", 1, True) is DeltaError.NOT_FOUND
    put(store, b"s", b"abc")
    assert store.delta(b"s", 1, False) is DeltaError.NON_NUMERIC
    assert (store.stats["incr_hits"], store.stats["decr_hits"]) == (2, 1)
    assert (store.stats["incr_misses"], store.stats["decr_misses"]) == (1, 0)


def test_incr_takes_a_cas_id_keeps_flags_and_expiry():
    store, clock = make()
    store.store(StoreMode.SET, b"n", b"5\r\n", 7, store.expiry(10))
    store.delta(b"n", 100, True)
    it = store.get(b"n")
    assert it is not None and (it.value, it.flags, it.cas) == (b"105", 7, 2)
    clock.now += 11
    assert store.get(b"n") is None


# -- memory and LRU -------------------------------------------------------------------


def test_lru_evicts_oldest_first_and_hits_keep_items_young():
    size = item_total(2, 0, 100 + 2)
    store, _ = make(memory_limit=size * 5)
    for i in range(5):
        put(store, b"k%d" % i, b"x" * 100)
    assert store.get(b"k0") is not None  # k0 is now the youngest
    put(store, b"k5", b"x" * 100)
    put(store, b"k6", b"x" * 100)
    assert b"k1" not in store and b"k2" not in store
    assert all(k in store for k in (b"k0", b"k3", b"k4", b"k5", b"k6"))
    assert store.stats["evictions"] == 2
    assert store.stats["evicted_unfetched"] == 2
    assert store.bytes == size * 5


def test_expired_items_reclaimed_before_counting_evictions():
    size = item_total(2, 0, 100 + 2)
    store, clock = make(memory_limit=size * 2)
    put(store, b"k0", b"x" * 100, exptime=5)
    put(store, b"k1", b"x" * 100)
    clock.now += 10
    put(store, b"k2", b"x" * 100)
    assert (store.stats["reclaimed"], store.stats["evictions"]) == (1, 0)
    assert b"k1" in store and b"k2" in store


def test_memory_ok_and_shrinking_the_limit():
    store, _ = make(memory_limit=4096)
    assert store.memory_ok(1, 0, 4096 - 60)
    assert not store.memory_ok(1, 0, 4096 - 59)
    for i in range(30):
        put(store, b"k%02d" % i, b"x" * 50)
    store.set_memory_limit(1024)
    assert store.bytes <= 1024
    assert b"k29" in store and b"k00" not in store


def test_discard_is_quiet():
    store, _ = make()
    put(store, b"k", b"v")
    store.discard(b"k")
    store.discard(b"nothing")
    assert len(store) == 0 and store.bytes == 0
    assert store.stats["delete_hits"] == store.stats["delete_misses"] == 0


# -- flush_all ------------------------------------------------------------------------


def test_flush_all_now_clears_and_uses_a_cas_id():
    store, _ = make()
    put(store, b"a", b"1")
    store.flush_all(0)
    assert value_of(store, b"a") is None
    put(store, b"a", b"2")
    it = store.get(b"a")
    assert it is not None and it.cas == 3


def test_flush_all_delayed_takes_items_stored_before_the_deadline():
    store, clock = make()
    put(store, b"a", b"1")
    store.flush_all(10)  # memcached: effective after delay - 1 s
    clock.now += 8.5
    put(store, b"b", b"1")
    assert value_of(store, b"a") == b"1"
    clock.now += 0.5
    assert value_of(store, b"a") is None and value_of(store, b"b") is None
    put(store, b"c", b"1")
    clock.now += 100
    assert value_of(store, b"c") == b"1"


def test_flush_all_one_second_is_immediate():
    store, _ = make()
    put(store, b"a", b"1")
    store.flush_all(1)
    assert value_of(store, b"a") is None


def test_reset_stats_keeps_items():
    store, _ = make()
    put(store, b"a", b"1")
    store.get(b"a")
    store.reset_stats()
    assert all(v == 0 for v in store.stats.values())
    assert value_of(store, b"a") == b"1"


def test_small_item_size_limit_refused():
    with pytest.raises(ValueError, match="at least 1024"):
        KvStore(item_size_max=100)
