"""The item store behind the `kv` server: items, LRU by memory, expiry, cas ids, stats.

Sans-IO like the protocol machines: the store never reads a clock of its
own choosing (the clock is injected, seconds as a float, default
`time.time`) and knows nothing of connections or the wire format.  The
memcached text protocol on top of it lives in `ustack.apps.kv`.

What it follows from memcached (1.6), so that replies and stats line up:

- **Size of an item.**  memcached's item is a 48-byte header, the key and
  its NUL, 4 bytes of client flags when they are not zero, the value with
  its CRLF and an 8-byte cas id.  `item_total()` computes exactly that; it
  is what counts against the memory limit, what `stats` reports as
  `bytes`, and what the item size limit (`-I`, default 1 MiB) is checked
  against, so the largest value accepted is the same as memcached's.
- **Expiry** (`expiry()`, memcached's `realtime()`): 0 never expires; up to
  30 days is relative to now; above that it is an absolute unix time;
  negative or in the past means already expired.  Expired items are
  dropped lazily when touched, or reclaimed before evicting live ones.
- **flush_all [delay]**: with no delay (or a delay of at most one second,
  where memcached's `oldest_live` already lies in the past) everything
  goes at once and one cas id is used up, as memcached's `oldest_cas`
  does; with a delay every item stored before the deadline goes when it
  passes.
- **cas ids** come from one counter that every stored item (set, add,
  replace, append, prepend, cas, incr/decr) and an immediate flush advance
  by one, so a client sees the same ids from both servers.
- **LRU**: one strict LRU list (memcached segments its LRU per slab class
  and bumps an item at most once a minute); a hit, a touch, an add on an
  existing key and incr/decr move the item to the young end; storing
  evicts from the old end until the new item fits (`evictions`,
  `reclaimed` for expired items found on the way).
- **incr/decr** read the value as C's strtoull does (leading blanks, a
  sign, trailing blank or NUL), wrap at 2**64 on incr, stop at 0 on decr,
  and when the new number is not longer than the old value it is written
  in place padded with spaces (the length does not change), as memcached
  does; otherwise the value becomes exactly the digits.
"""

from __future__ import annotations

import enum
import re
import time
from collections import OrderedDict
from collections.abc import Callable

MIB = 1024 * 1024
DEFAULT_MEMORY_LIMIT = 64 * MIB  # memcached -m 64
DEFAULT_ITEM_SIZE_MAX = 1 * MIB  # memcached -I 1m
KEY_MAX_LENGTH = 250

# memcached's item: sizeof(item) 48 + key NUL 1 + CRLF 2 + cas 8 (flags add 4).
ITEM_OVERHEAD = 48 + 1 + 2 + 8
FLAGS_SIZE = 4

REALTIME_MAXDELTA = 60 * 60 * 24 * 30  # 30 days: above this an exptime is absolute
EXPIRED = 1.0  # an absolute time always in the past (memcached's rel time 1)

U64 = 1 << 64

# C strtoull over the stored value: blanks, an optional sign, digits, then a
# blank, NUL or the end.  Value bytes end with the CRLF memcached keeps.
_VALUE_NUMBER = re.compile(rb"[ \t\n\v\f\r]*([+-]?)([0-9]+)(?:[ \t\n\v\f\r\x00]|\Z)")


class StoreMode(enum.Enum):
    SET = "set"
    ADD = "add"
    REPLACE = "replace"
    APPEND = "append"
    PREPEND = "prepend"
    CAS = "cas"


class StoreResult(enum.Enum):
    STORED = b"STORED\r\n"
    NOT_STORED = b"NOT_STORED\r\n"
    EXISTS = b"EXISTS\r\n"
    NOT_FOUND = b"NOT_FOUND\r\n"


class DeltaError(enum.Enum):
    NOT_FOUND = b"NOT_FOUND\r\n"
    NON_NUMERIC = b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n"
    NO_MEMORY = b"SERVER_ERROR out of memory\r\n"


class Item:
    """One stored value.  `data` is the value followed by CRLF, as on the wire."""

    __slots__ = ("cas", "data", "exptime", "fetched", "flags", "size")

    def __init__(self, data: bytes, flags: int, exptime: float, size: int) -> None:
        self.data = data
        self.flags = flags
        self.exptime = exptime  # absolute unix time; 0 never expires
        self.size = size  # item_total(): what it costs against the memory limit
        self.cas = 0
        self.fetched = False

    @property
    def value(self) -> bytes:
        return self.data[:-2]


def item_total(nkey: int, flags: int, nbytes: int) -> int:
    """memcached's ITEM_ntotal for a key of `nkey` and `nbytes` of data (value + CRLF)."""
    return ITEM_OVERHEAD - 2 + nkey + nbytes + (FLAGS_SIZE if flags else 0)


# The counters `stats` reports, in memcached's order: the commands' (the
# general stats before `bytes_read`), then the items' (after `curr_items`).
COMMAND_STAT_NAMES = (
    "cmd_get",
    "cmd_set",
    "cmd_flush",
    "cmd_touch",
    "get_hits",
    "get_misses",
    "get_expired",
    "get_flushed",
    "delete_misses",
    "delete_hits",
    "incr_misses",
    "incr_hits",
    "decr_misses",
    "decr_hits",
    "cas_misses",
    "cas_hits",
    "cas_badval",
    "touch_hits",
    "touch_misses",
    "store_too_large",
    "store_no_memory",
)
ITEM_STAT_NAMES = (
    "total_items",
    "expired_unfetched",
    "evicted_unfetched",
    "evictions",
    "reclaimed",
)
STAT_NAMES = COMMAND_STAT_NAMES + ITEM_STAT_NAMES


class KvStore:
    """Items by key, in LRU order, within `memory_limit` bytes of item_total()."""

    def __init__(
        self,
        *,
        memory_limit: int = DEFAULT_MEMORY_LIMIT,
        item_size_max: int = DEFAULT_ITEM_SIZE_MAX,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if item_size_max < 1024:
            raise ValueError(f"item size limit must be at least 1024 bytes, got {item_size_max}")
        self.memory_limit = memory_limit
        self.item_size_max = item_size_max
        self.clock = clock
        self.started = clock()
        # Oldest first; a bump is move_to_end().
        self._items: OrderedDict[bytes, Item] = OrderedDict()
        self.bytes = 0
        self._cas = 0
        self._flush_at = 0.0  # a pending delayed flush_all, 0 when none
        self.stats: dict[str, int] = dict.fromkeys(STAT_NAMES, 0)

    # -- time ------------------------------------------------------------

    def expiry(self, exptime: int) -> float:
        """The absolute expiry time of a protocol exptime (memcached's realtime())."""
        if exptime == 0:
            return 0.0
        if exptime < 0:
            return EXPIRED
        if exptime > REALTIME_MAXDELTA:
            # An absolute unix time; one in the past expires at once.
            return float(exptime) if exptime > self.clock() else EXPIRED
        return self.clock() + exptime

    def _now(self) -> float:
        now = self.clock()
        if self._flush_at and now >= self._flush_at:
            self._flush_at = 0.0
            self._clear()
        return now

    # -- sizes -----------------------------------------------------------

    def item_size_ok(self, nkey: int, flags: int, vlen: int) -> bool:
        """Whether a value of `vlen` bytes is within the item size limit."""
        return item_total(nkey, flags, vlen + 2) <= self.item_size_max

    def memory_ok(self, nkey: int, flags: int, vlen: int) -> bool:
        """Whether the item could fit at all, evicting everything else."""
        return item_total(nkey, flags, vlen + 2) <= self.memory_limit

    def set_memory_limit(self, limit: int) -> None:
        self.memory_limit = limit
        self._make_room(0)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: bytes) -> bool:
        return self._live(key, self._now()) is not None

    # -- reading ---------------------------------------------------------

    def _live(self, key: bytes, now: float) -> Item | None:
        """The item under `key` unless it has expired (which drops it)."""
        it = self._items.get(key)
        if it is None:
            return None
        if it.exptime and it.exptime <= now:
            self._unlink(key, it)
            if not it.fetched:
                self.stats["expired_unfetched"] += 1
            return None
        return it

    def get(self, key: bytes) -> Item | None:
        """A get/gets of one key: the item (bumped), counted as a hit or a miss."""
        stats = self.stats
        stats["cmd_get"] += 1
        now = self._now()
        it = self._items.get(key)
        if it is not None and it.exptime and it.exptime <= now:
            stats["get_expired"] += 1
            it = self._live(key, now)
        if it is None:
            stats["get_misses"] += 1
            return None
        stats["get_hits"] += 1
        it.fetched = True
        self._items.move_to_end(key)
        return it

    def get_and_touch(self, key: bytes, exptime: float) -> Item | None:
        """A gat/gats of one key: the item with its new expiry, counted as a touch."""
        it = self._touch(key, exptime)
        if it is not None:
            it.fetched = True
        return it

    def touch(self, key: bytes, exptime: float) -> bool:
        """A touch of one key: whether it was there, counted as a touch."""
        return self._touch(key, exptime) is not None

    def _touch(self, key: bytes, exptime: float) -> Item | None:
        stats = self.stats
        stats["cmd_touch"] += 1
        it = self._live(key, self._now())
        if it is None:
            stats["touch_misses"] += 1
            return None
        stats["touch_hits"] += 1
        it.exptime = exptime
        self._items.move_to_end(key)
        return it

    # -- writing ---------------------------------------------------------

    def store(
        self,
        mode: StoreMode,
        key: bytes,
        data: bytes,
        flags: int,
        exptime: float,
        cas_unique: int = 0,
    ) -> StoreResult:
        """Store `data` (the value followed by CRLF) as memcached's do_store_item does.

        `cmd_set` is the caller's to count: memcached counts every data block
        it read, even one that ends badly and never reaches the store.
        """
        old = self._live(key, self._now())
        if old is None:
            if mode is StoreMode.CAS:
                self.stats["cas_misses"] += 1
                return StoreResult.NOT_FOUND
            if mode in (StoreMode.REPLACE, StoreMode.APPEND, StoreMode.PREPEND):
                return StoreResult.NOT_STORED
            return self._link(key, data, flags, exptime)
        if mode is StoreMode.ADD:
            # add only adds a missing item, but counts as a use of the old one.
            self._items.move_to_end(key)
            return StoreResult.NOT_STORED
        if mode is StoreMode.CAS:
            # cas 0 never matches: it is memcached's "no cas given".
            if cas_unique == 0 or cas_unique != old.cas:
                self.stats["cas_badval"] += 1
                return StoreResult.EXISTS
            self.stats["cas_hits"] += 1
        elif mode is StoreMode.APPEND or mode is StoreMode.PREPEND:
            joined = old.data[:-2] + data if mode is StoreMode.APPEND else data[:-2] + old.data
            # The old item's flags and expiry stay; a result over a limit is
            # memcached's failed allocation: NOT_STORED.
            size = item_total(len(key), old.flags, len(joined))
            if size > self.item_size_max or size > self.memory_limit:
                return StoreResult.NOT_STORED
            return self._link(key, joined, old.flags, old.exptime)
        return self._link(key, data, flags, exptime)

    def _link(self, key: bytes, data: bytes, flags: int, exptime: float) -> StoreResult:
        size = item_total(len(key), flags, len(data))
        old = self._items.pop(key, None)
        if old is not None:
            self.bytes -= old.size
        self._make_room(size)
        it = Item(data, flags, exptime, size)
        self._cas += 1
        it.cas = self._cas
        self._items[key] = it
        self.bytes += size
        self.stats["total_items"] += 1
        return StoreResult.STORED

    def _make_room(self, size: int) -> None:
        """Drop items from the old end of the LRU until `size` more bytes fit."""
        items = self._items
        limit = self.memory_limit - size
        now = self.clock()
        while self.bytes > limit and items:
            _, it = items.popitem(last=False)
            self.bytes -= it.size
            if it.exptime and it.exptime <= now:
                self.stats["reclaimed"] += 1
            else:
                self.stats["evictions"] += 1
                if not it.fetched:
                    self.stats["evicted_unfetched"] += 1

    def _unlink(self, key: bytes, it: Item) -> None:
        del self._items[key]
        self.bytes -= it.size

    def discard(self, key: bytes) -> None:
        """Drop `key` quietly: a set that failed must not leave stale data behind."""
        it = self._items.get(key)
        if it is not None:
            self._unlink(key, it)

    def delete(self, key: bytes) -> bool:
        it = self._live(key, self._now())
        if it is None:
            self.stats["delete_misses"] += 1
            return False
        self._unlink(key, it)
        self.stats["delete_hits"] += 1
        return True

    def delta(self, key: bytes, delta: int, incr: bool) -> bytes | DeltaError:
        """incr (wrapping at 2**64) or decr (stopping at 0); the new value's digits."""
        it = self._live(key, self._now())
        name = "incr" if incr else "decr"
        if it is None:
            self.stats[f"{name}_misses"] += 1
            return DeltaError.NOT_FOUND
        current = parse_counter(it.data)
        if current is None:
            return DeltaError.NON_NUMERIC
        # incr wraps at 2**64; decr stops at 0.
        value = (current + delta) % U64 if incr else max(current - delta, 0)
        self.stats[f"{name}_hits"] += 1
        digits = b"%d" % value
        nbytes = len(it.data)
        self._cas += 1
        if len(digits) + 2 <= nbytes:
            # In place, padded with spaces: the item keeps its length.
            it.data = digits + b" " * (nbytes - 2 - len(digits)) + b"\r\n"
            it.cas = self._cas
            self._items.move_to_end(key)
            return digits
        self._cas -= 1  # _link takes the id
        size = item_total(len(key), it.flags, len(digits) + 2)
        if size > self.memory_limit:
            return DeltaError.NO_MEMORY
        self._link(key, digits + b"\r\n", it.flags, it.exptime)
        return digits

    def flush_all(self, delay: int) -> None:
        """Invalidate every item now, or once `delay` (an exptime) has passed.

        `cmd_flush` is the caller's to count (memcached counts refused ones too).
        """
        now = self.clock()
        # memcached: oldest_live = realtime(delay) - 1, in effect once it is not
        # in the future.
        at = self.expiry(delay) - 1 if delay > 0 else now
        if at > now:
            self._flush_at = at
            return
        self._flush_at = 0.0
        self._clear()
        self._cas += 1  # memcached's oldest_cas = get_cas_id()

    def _clear(self) -> None:
        self._items.clear()
        self.bytes = 0

    def reset_stats(self) -> None:
        """`stats reset`: the command counters, not the state (items, bytes)."""
        for k in self.stats:
            self.stats[k] = 0


def parse_counter(data: bytes) -> int | None:
    """The unsigned 64-bit number at the start of `data`, as memcached's safe_strtoull.

    None when there is no number, it overflows, or it is negative (a '-'
    before a result that does not fit in a signed 64-bit integer).
    """
    m = _VALUE_NUMBER.match(data)
    if m is None:
        return None
    value = int(m.group(2))
    if value >= U64:
        return None  # ERANGE
    if m.group(1) == b"-":
        value = -value % U64
    if value >= 1 << 63:
        # strtoull negates silently; memcached rejects a '-' when the result
        # looks negative as a signed number (it searches up to a NUL).
        head = data.split(b"\x00", 1)[0]
        if b"-" in head:
            return None
    return value
