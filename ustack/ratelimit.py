"""Token bucket for rate limits that protocol machines need.

Used for ICMP errors (RFC 1812 4.3.2.8, RFC 1122 3.2.2; the defaults follow
Linux: net.ipv4.icmp_msgs_per_sec = 1000, icmp_msgs_burst = 50) and for
TCP challenge ACKs (RFC 5961 7).  Time is passed in, in microseconds;
nothing here imports the rest of ustack.
"""

from __future__ import annotations


class TokenBucket:
    """`take(now_us)` is True while tokens last; they refill at `rate_per_s`."""

    def __init__(self, rate_per_s: int = 1000, burst: int = 50) -> None:
        if rate_per_s <= 0 or burst <= 0:
            raise ValueError("token bucket rate and burst must be positive")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._tokens_us = burst * 1_000_000  # tokens scaled by 1e6 to stay integral
        self._last_us: int | None = None

    def take(self, now_us: int) -> bool:
        if self._last_us is not None and now_us > self._last_us:
            refill = (now_us - self._last_us) * self.rate_per_s
            self._tokens_us = min(self.burst * 1_000_000, self._tokens_us + refill)
        self._last_us = now_us if self._last_us is None else max(now_us, self._last_us)
        if self._tokens_us >= 1_000_000:
            self._tokens_us -= 1_000_000
            return True
        return False
