"""The ARP neighbour cache: IPv4 address -> Ethernet address (RFC 826, RFC 1122 2.3.2).

Owns the table of neighbours on one link, their reachability states and
timers, the request retry schedule, and the bounded queues of packets that
wait for an address to resolve.  Sans-IO: it never reads a clock (time is
`now_us`, an int of microseconds, passed to every call that needs it) and
never sends anything.  Each call returns what the caller must do: which IPs
to send an ARP request for, whether to answer a request, which queued items
may now go out (with the MAC to use) and which must be freed.  Parsing and
emitting ARP packets, and the gratuitous ARP at start, belong to the stack.

Theory of operation
-------------------

An entry is in one of four states (printed as Linux prints them):

  INCOMPLETE  We need the MAC and have none.  Holds the queue of items
              waiting for it.  A request is due at once, then again after
              retry_us, 2*retry_us, 4*retry_us, ... (RFC 1122 2.3.2.1 asks
              that requests for one address be rate-limited; the doubling
              interval does that).  After `retries` requests, one more
              interval passes; if no answer came by then the entry fails:
              it is removed and its queued items go back to the caller as
              failed.  With the defaults (3 requests, 1 s) requests go out
              at 0, 1 and 3 s and the entry fails at 7 s.
  REACHABLE   The MAC was confirmed recently.  `lookup` returns it with one
              dict lookup and one comparison: this is the per-packet path.
  STALE       The confirmation is older than reachable_us.  The MAC is
              still used (as Linux does), but the first `lookup` moves the
              entry to PROBE.  An unused STALE entry is removed stale_us
              after it became STALE.
  PROBE       Re-validation of a MAC in use: `lookup` still returns the MAC,
              and requests follow the INCOMPLETE schedule.  No answer: the
              entry is removed, so the next `lookup` misses and the caller
              resolves afresh with broadcast requests.  Linux waits in a
              DELAY state first, for hints from upper layers; ustack has no
              such hints yet, so it probes at once.

There is no FAILED state: a failed entry is removed on the spot, so the
state could never be observed.

Transitions on an ARP packet with sender (sha, spa) and target tpa.  The
rule for reachability: only a packet addressed to us (tpa == our_ip),
request or reply, confirms that spa is reachable at sha.  A reply to us
answers our request; a request for us shows the host is up and about to
talk to us, and treating it as confirmation spares a probe before our
first answer to it.  Anything else only says where spa was a moment ago.

  request for us, no entry     -> REACHABLE (learning; RFC 826 "Am I the
                                  target protocol address?" -> add the triplet)
  reply to us, no entry        -> nothing: we did not ask (Linux, arp_accept=0)
  addressed to us, any entry   -> REACHABLE with sha (RFC 826 merge)
  not to us, no entry          -> nothing: ARP chatter between other hosts,
                                  gratuitous ARP included, never grows the table
  not to us, INCOMPLETE        -> STALE with sha; queued items released
  not to us, MAC differs       -> STALE with sha (RFC 826 merge; e.g. a
                                  gratuitous ARP after a NIC swap)
  not to us, same MAC          -> unchanged: no news
  spa == 0                     -> nothing (RFC 5227 probe); a probe for our
                                  address still needs a reply (RFC 5227 2.4)
  spa == our_ip                -> nothing; counted as an address conflict
  spa martian (0/8, 127/8, multicast, class E, broadcast), or sha
  broadcast, multicast or zero -> the whole packet is dropped and counted

Whenever an INCOMPLETE entry gets a MAC its queue is released, in the order
the items were queued.

Bounds (ARCHITECTURE.md rule 8): at most max_entries entries, at most
max_queued_per_entry items per entry and max_queued_total items in all.
When the table is full and a new entry is wanted, expired entries are
removed first, then the STALE entry that went stale earliest is evicted;
if none is STALE (all REACHABLE, PROBE or INCOMPLETE) the new entry is
refused: `queue` drops its item (drop_arp_table_full), learning is skipped
(we still answer the request).  INCOMPLETE and PROBE entries are never
evicted, so `queue` never has to drop other items; its `evicted` list stays
empty under this policy and is there so the policy can change without
changing callers.  A full queue drops the new item (tail drop).

Timers: each entry has one deadline (REACHABLE: end of reachable_us; STALE:
removal; INCOMPLETE, PROBE: next request or failure).  The cache keeps a
lower bound of the earliest deadline, so `poll` returns at once when
nothing is due and walks the table only when something is.

Every drop is counted in `counters` here; the caller only frees the items
it gets back.
"""

import enum
from typing import Generic, TypeVar

T = TypeVar("T")

_OP_REQUEST = 1
_OP_REPLY = 2

# Sentinels for "never" in both directions; kept as ints so the hot path
# compares two ints and never tests for None.
_FOREVER = 1 << 63
_NEVER_REACHABLE = -(1 << 63)

_ZERO_MAC = bytes(6)


class NeighbourState(enum.Enum):
    """Neighbour states, spelt as Linux's `ip neigh` prints them."""

    INCOMPLETE = "INCOMPLETE"
    REACHABLE = "REACHABLE"
    STALE = "STALE"
    PROBE = "PROBE"

    def __str__(self) -> str:
        return self.value


_INCOMPLETE = NeighbourState.INCOMPLETE
_REACHABLE = NeighbourState.REACHABLE
_STALE = NeighbourState.STALE
_PROBE = NeighbourState.PROBE


class _Entry(Generic[T]):
    __slots__ = ("deadline_us", "mac", "queue", "reachable_until_us", "requests_sent", "state")

    def __init__(self, state: NeighbourState, mac: bytes | None, deadline_us: int) -> None:
        self.state = state
        self.mac = mac
        # The one timer of this entry; see the module docstring.
        self.deadline_us = deadline_us
        # deadline_us while REACHABLE, _NEVER_REACHABLE otherwise, so that
        # `lookup` needs a single comparison.
        self.reachable_until_us = deadline_us if state is _REACHABLE else _NEVER_REACHABLE
        # Requests sent in the current INCOMPLETE or PROBE round.
        self.requests_sent = 0
        # Items waiting for the MAC; only INCOMPLETE entries hold any.
        self.queue: list[T] = []


def _is_martian(ip: int) -> bool:
    """True for sender addresses no neighbour may claim (RFC 1122 3.2.1.3, RFC 5735)."""
    top = ip >> 24
    return top == 0 or top == 127 or top >= 224


class NeighbourCache(Generic[T]):
    """ARP cache for one interface; items of type T wait in it for resolution."""

    def __init__(
        self,
        *,
        max_entries: int = 256,
        max_queued_per_entry: int = 8,
        max_queued_total: int = 256,
        reachable_us: int = 30_000_000,
        stale_us: int = 60_000_000,
        retries: int = 3,
        retry_us: int = 1_000_000,
    ) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, got {max_entries}")
        if max_queued_per_entry < 0 or max_queued_total < 0:
            raise ValueError(
                "queue bounds must be 0 or more, got "
                f"max_queued_per_entry={max_queued_per_entry}, max_queued_total={max_queued_total}"
            )
        if reachable_us < 1 or stale_us < 0:
            raise ValueError(
                f"reachable_us must be positive and stale_us not negative, got "
                f"reachable_us={reachable_us}, stale_us={stale_us}"
            )
        if retries < 1 or retry_us < 1:
            raise ValueError(
                f"retries and retry_us must be positive, got retries={retries}, retry_us={retry_us}"
            )
        self.max_entries = max_entries
        self.max_queued_per_entry = max_queued_per_entry
        self.max_queued_total = max_queued_total
        self.reachable_us = reachable_us
        self.stale_us = stale_us
        self.retries = retries
        self.retry_us = retry_us

        self._entries: dict[int, _Entry[T]] = {}
        self._queued_total = 0
        # A lower bound of the earliest entry deadline (_FOREVER when empty);
        # exact when _deadline_dirty is False.
        self._deadline_us = _FOREVER
        self._deadline_dirty = False
        # When the table is full and nothing in it could be evicted, the
        # earliest time something could be (a REACHABLE entry going STALE):
        # until then a full table refuses new entries without a walk.
        self._no_room_until_us = _NEVER_REACHABLE

        self.counters: dict[str, int] = {
            "arp_requests_sent": 0,  # IPs returned by poll() to send a request for
            "arp_resolved": 0,  # INCOMPLETE entries that got a MAC
            "arp_learned": 0,  # entries created from ARP addressed to us
            "arp_learned_from_ip": 0,  # entries created by confirm() (workers)
            "arp_failed": 0,  # INCOMPLETE or PROBE entries removed after `retries` requests
            "arp_entries_expired": 0,  # STALE entries removed after stale_us
            "arp_entries_evicted": 0,  # STALE entries removed early to make room
            "arp_table_full": 0,  # new entries refused: table full, nothing evictable
            "arp_address_conflicts": 0,  # ARP from another host with our address as sender
            "drop_arp_queue_full": 0,  # items refused: per-entry or total queue bound
            "drop_arp_unresolved": 0,  # queued items returned because resolution failed
            "drop_arp_table_full": 0,  # items refused because no entry could be made
            "drop_arp_bad_sha": 0,  # ARP packets with a broadcast, multicast or zero sha
            "drop_arp_bad_spa": 0,  # ARP packets with a martian sender address
        }

    # ---- queries ---------------------------------------------------------

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def queued_total(self) -> int:
        """Items held, over all entries."""
        return self._queued_total

    def entries(self) -> list[tuple[int, bytes | None, str]]:
        """(ip, mac, state name) for each entry, oldest first.

        States are as of the last call that passed a clock: a REACHABLE
        entry whose time ran out shows as STALE only after lookup or poll.
        """
        return [(ip, e.mac, e.state.value) for ip, e in self._entries.items()]

    def next_deadline_us(self) -> int | None:
        """Earliest time at which poll() has something to do; None if never."""
        if self._deadline_dirty:
            self._recompute_deadline()
        return None if self._deadline_us == _FOREVER else self._deadline_us

    def request_target(self, ip: int) -> bytes | None:
        """The MAC to unicast a request for `ip` to, or None to broadcast it.

        A PROBE re-validates a MAC we hold, so its request may be unicast
        (RFC 1122 2.3.2.1, "unicast poll"); an INCOMPLETE entry has no MAC.
        """
        entry = self._entries.get(ip)
        if entry is not None and entry.state is _PROBE:
            return entry.mac
        return None

    # ---- per-packet path -------------------------------------------------

    def lookup(self, ip: int, now_us: int) -> bytes | None:
        """The MAC for `ip`, or None: then queue() the packet.

        REACHABLE, STALE and PROBE entries give their MAC; using a STALE one
        starts a PROBE (a request for `ip` comes out of the next poll()).
        """
        entry = self._entries.get(ip)
        if entry is not None and now_us < entry.reachable_until_us:
            return entry.mac
        if entry is None:
            return None
        return self._lookup_slow(ip, entry, now_us)

    def _lookup_slow(self, ip: int, entry: _Entry[T], now_us: int) -> bytes | None:
        if not self._age(ip, entry, now_us):
            return None
        state = entry.state
        if state is _STALE:
            entry.state = _PROBE
            entry.requests_sent = 0
            self._set_deadline(entry, now_us)
        elif state is _INCOMPLETE:
            return None
        return entry.mac

    def queue(self, ip: int, item: T, now_us: int) -> tuple[bool, list[T]]:
        """Hold `item` until `ip` resolves; call only after lookup() gave None.

        Returns (accepted, evicted).  accepted=False: `item` was dropped and
        counted; the caller frees it.  `evicted`: other items the cache
        dropped to make room, for the caller to free (see the module
        docstring: empty under the present policy).
        """
        entry = self._entries.get(ip)
        if entry is not None and entry.state is not _INCOMPLETE and self._age(ip, entry, now_us):
            raise ValueError(
                f"queue() for {_dotted(ip)}, which has a usable MAC "
                f"({entry.state.value}); call lookup() first and send when it gives a MAC"
            )
        if entry is None or entry.state is not _INCOMPLETE:
            if len(self._entries) >= self.max_entries and not self._make_room(now_us):
                self.counters["arp_table_full"] += 1
                self.counters["drop_arp_table_full"] += 1
                return False, []
            # The first request is due at once.
            entry = _Entry(_INCOMPLETE, None, now_us)
            self._entries[ip] = entry
            if now_us < self._deadline_us:
                self._deadline_us = now_us
        if (
            len(entry.queue) >= self.max_queued_per_entry
            or self._queued_total >= self.max_queued_total
        ):
            self.counters["drop_arp_queue_full"] += 1
            return False, []
        entry.queue.append(item)
        self._queued_total += 1
        return True, []

    # ---- input -----------------------------------------------------------

    def on_arp(
        self, op: int, sha: bytes, spa: int, tpa: int, our_ip: int, now_us: int
    ) -> tuple[bool, list[tuple[bytes, T]]]:
        """Take in an ARP packet (op 1 request, 2 reply) that arrived at `now_us`.

        Returns (reply_needed, released): reply_needed is True for a request
        for `our_ip` (the caller sends the reply to sha/spa); released are
        the queued items now sendable, each with the MAC to use, in the order
        they were queued.  The rules are in the module docstring.
        """
        if op != _OP_REQUEST and op != _OP_REPLY:
            raise ValueError(f"ARP op must be {_OP_REQUEST} or {_OP_REPLY}, got {op}")
        if len(sha) != 6:
            raise ValueError(f"sha must be 6 bytes, got {sha!r}")
        if sha[0] & 1 or sha == _ZERO_MAC:
            self.counters["drop_arp_bad_sha"] += 1
            return False, []
        for_us = tpa == our_ip
        reply_needed = for_us and op == _OP_REQUEST
        if spa == 0:
            # RFC 5227 probe: the sender has no address yet; nothing to learn.
            return reply_needed, []
        if spa == our_ip:
            self.counters["arp_address_conflicts"] += 1
            return reply_needed, []
        if _is_martian(spa):
            self.counters["drop_arp_bad_spa"] += 1
            return False, []

        entry = self._entries.get(spa)
        if entry is None:
            # Only a request for us creates an entry; an unsolicited reply
            # does not (Linux's arp_accept=0), so nobody can fill the table
            # by answering questions we never asked.
            if not reply_needed:
                return reply_needed, []
            if len(self._entries) >= self.max_entries and not self._make_room(now_us):
                self.counters["arp_table_full"] += 1
                return reply_needed, []
            until_us = now_us + self.reachable_us
            self._entries[spa] = _Entry(_REACHABLE, bytes(sha), until_us)
            if until_us < self._deadline_us:
                self._deadline_us = until_us
            self.counters["arp_learned"] += 1
            return reply_needed, []

        was_incomplete = entry.state is _INCOMPLETE
        if for_us:
            entry.mac = bytes(sha)
            entry.state = _REACHABLE
            until_us = now_us + self.reachable_us
            entry.reachable_until_us = until_us
            self._set_deadline(entry, until_us)
        elif was_incomplete or entry.mac != sha:
            entry.mac = bytes(sha)
            self._become_stale(entry, now_us)
            self._no_room_until_us = _NEVER_REACHABLE  # an evictable entry appeared
        else:
            return reply_needed, []
        entry.requests_sent = 0

        if not was_incomplete:
            return reply_needed, []
        self.counters["arp_resolved"] += 1
        mac = entry.mac
        released = [(mac, item) for item in entry.queue]
        self._queued_total -= len(entry.queue)
        entry.queue = []
        return reply_needed, released

    def confirm(self, ip: int, mac: bytes, now_us: int) -> list[tuple[bytes, T]]:
        """IPv4 traffic from on-link `ip` arrived from Ethernet address `mac`.

        Used when several stacks share one address and one link (workers on
        the queues of one multi-queue TAP): an ARP reply lands on whichever
        queue the kernel picks, so a worker may never see the answer to its
        own request, while the frames of its own flows always reach it.
        Such a frame is taken as confirmation, like a request for us
        (REACHABLE, learning if absent; Linux's upper-layer confirmation).
        Returns the queued items released, as `on_arp` does.  Callers must
        already have dropped martian, broadcast and multicast sources.
        """
        entry = self._entries.get(ip)
        if entry is not None and now_us < entry.reachable_until_us and entry.mac == mac:
            return []
        if entry is None:
            if len(self._entries) >= self.max_entries and not self._make_room(now_us):
                self.counters["arp_table_full"] += 1
                return []
            until_us = now_us + self.reachable_us
            self._entries[ip] = _Entry(_REACHABLE, bytes(mac), until_us)
            if until_us < self._deadline_us:
                self._deadline_us = until_us
            self.counters["arp_learned_from_ip"] += 1
            return []
        was_incomplete = entry.state is _INCOMPLETE
        entry.mac = bytes(mac)
        entry.state = _REACHABLE
        until_us = now_us + self.reachable_us
        entry.reachable_until_us = until_us
        entry.requests_sent = 0
        self._set_deadline(entry, until_us)
        if not was_incomplete:
            return []
        self.counters["arp_resolved"] += 1
        released = [(entry.mac, item) for item in entry.queue]
        self._queued_total -= len(entry.queue)
        entry.queue = []
        return released

    # ---- timers ----------------------------------------------------------

    def poll(self, now_us: int) -> tuple[list[int], list[T]]:
        """Run the timers due at `now_us`.

        Returns (ips_to_request, failed_items): send one ARP request for each
        IP (to request_target(ip), else broadcast); free the failed items
        (already counted in drop_arp_unresolved).
        """
        requests: list[int] = []
        failed: list[T] = []
        if now_us < self._deadline_us:
            return requests, failed
        removed: list[int] = []
        earliest = _FOREVER
        for ip, entry in self._entries.items():
            if now_us >= entry.deadline_us:
                state = entry.state
                if state is _REACHABLE:
                    self._become_stale(entry, entry.reachable_until_us)
                    state = _STALE
                if state is _STALE:
                    if now_us >= entry.deadline_us:
                        removed.append(ip)
                        self.counters["arp_entries_expired"] += 1
                        continue
                elif entry.requests_sent >= self.retries:
                    removed.append(ip)
                    self.counters["arp_failed"] += 1
                    if entry.queue:
                        failed.extend(entry.queue)
                        self.counters["drop_arp_unresolved"] += len(entry.queue)
                        self._queued_total -= len(entry.queue)
                    continue
                else:
                    # Interval after request k (k from 1) is retry_us * 2**(k-1),
                    # counted from now so a late poll does not bunch requests.
                    requests.append(ip)
                    entry.deadline_us = now_us + (self.retry_us << entry.requests_sent)
                    entry.requests_sent += 1
            if entry.deadline_us < earliest:
                earliest = entry.deadline_us
        for ip in removed:
            del self._entries[ip]
        self.counters["arp_requests_sent"] += len(requests)
        self._deadline_us = earliest
        self._deadline_dirty = False
        return requests, failed

    # ---- internals -------------------------------------------------------

    def _become_stale(self, entry: _Entry[T], since_us: int) -> None:
        entry.state = _STALE
        entry.reachable_until_us = _NEVER_REACHABLE
        self._set_deadline(entry, since_us + self.stale_us)

    def _set_deadline(self, entry: _Entry[T], deadline_us: int) -> None:
        old_us = entry.deadline_us
        entry.deadline_us = deadline_us
        if deadline_us < self._deadline_us:
            self._deadline_us = deadline_us
        elif old_us == self._deadline_us and deadline_us != old_us:
            # This entry may have been the earliest; the cached bound stays a
            # valid lower bound, next_deadline_us() makes it exact.
            self._deadline_dirty = True

    def _recompute_deadline(self) -> None:
        earliest = _FOREVER
        for entry in self._entries.values():
            if entry.deadline_us < earliest:
                earliest = entry.deadline_us
        self._deadline_us = earliest
        self._deadline_dirty = False

    def _remove(self, ip: int, entry: _Entry[T]) -> None:
        del self._entries[ip]
        if entry.deadline_us == self._deadline_us:
            self._deadline_dirty = True

    def _age(self, ip: int, entry: _Entry[T], now_us: int) -> bool:
        """Apply lazy aging to a REACHABLE or STALE entry; False if it expired (now removed)."""
        if entry.state is _REACHABLE and now_us >= entry.reachable_until_us:
            self._become_stale(entry, entry.reachable_until_us)
        if entry.state is _STALE and now_us >= entry.deadline_us:
            self._remove(ip, entry)
            self.counters["arp_entries_expired"] += 1
            return False
        return True

    def _make_room(self, now_us: int) -> bool:
        """Free one slot in a full table; False if nothing may be evicted."""
        if now_us < self._no_room_until_us:
            return False
        oldest_ip = -1
        oldest_us = _FOREVER
        next_stale_us = _FOREVER
        expired: list[int] = []
        for ip, entry in self._entries.items():
            if entry.state is _REACHABLE:
                if now_us < entry.reachable_until_us:
                    next_stale_us = min(next_stale_us, entry.reachable_until_us)
                    continue
                self._become_stale(entry, entry.reachable_until_us)
            if entry.state is _STALE:
                if now_us >= entry.deadline_us:
                    expired.append(ip)
                elif entry.deadline_us < oldest_us:
                    oldest_ip, oldest_us = ip, entry.deadline_us
        for ip in expired:
            self._remove(ip, self._entries[ip])
            self.counters["arp_entries_expired"] += 1
        if expired:
            return True
        if oldest_us != _FOREVER:
            self._remove(oldest_ip, self._entries[oldest_ip])
            self.counters["arp_entries_evicted"] += 1
            return True
        self._no_room_until_us = next_stale_us
        return False


def _dotted(ip: int) -> str:
    return f"{ip >> 24 & 255}.{ip >> 16 & 255}.{ip >> 8 & 255}.{ip & 255}"
