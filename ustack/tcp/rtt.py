"""TCP retransmission timeout: RTT estimation and back-off (RFC 6298), sans-IO.

Owns SRTT, RTTVAR, the retransmission timeout RTO and its exponential
back-off, for one connection.  It never reads a clock and never arms a
timer: the control block measures round-trip times (integer microseconds)
and feeds them in with `on_sample`, reads `rto_us` when it (re)starts its
retransmission timer, and calls `backoff` when that timer expires.

Theory of operation
-------------------

RFC 6298 section 2, with K = 4, alpha = 1/8, beta = 1/4:

  first sample R:   SRTT = R, RTTVAR = R/2                          (2.2)
  later sample R:   RTTVAR = 3/4 RTTVAR + 1/4 |SRTT - R|            (2.3)
                    SRTT   = 7/8 SRTT   + 1/8 R
  RTO = max(min_rto, SRTT + max(G, 4 RTTVAR)), at most max_rto       (2.4, 2.5)
  before any sample: RTO = initial_rto (1 s)                         (2.1)

The arithmetic is integer, as in Linux's `tcp_rtt_estimator`: SRTT is kept
scaled by 8 and RTTVAR scaled by 4, so each update is two additions and two
shifts, and `4 RTTVAR` is the scaled value itself.  `srtt_us` and
`rttvar_us` truncate the scaled values; the error is under a microsecond.

The lower bound is 200 ms, Linux's TCP_RTO_MIN, not RFC 6298's 1 s (2.4
makes that bound a SHOULD); it is a constructor argument.  Linux adds its
minimum to the variance term (RTO is about SRTT + max(200 ms, 4 RTTVAR));
this module follows the RFC's formula and clamps the result instead.

Back-off (5.5): each expiry of the retransmission timer doubles RTO, never
beyond max_rto.  A new RTT sample recomputes RTO from SRTT and RTTVAR and so
drops the back-off ("collapsing" RTO, the note after 5.7); `on_sample` does
that by itself.  `reset_backoff` drops it without a sample, for a caller
whose policy is to do so when new data is acknowledged.

RFC 6298 5.7: if the timer expired while waiting for the ACK of a SYN, the
RTO must be at least 3 s once data transfer begins; `on_handshake_retransmitted`
applies that when no RTT sample exists.

Karn's rule is the caller's job (RFC 6298 section 3): never call
`on_sample` with the RTT of a segment that was retransmitted, because the
ACK cannot say which transmission it answers.  With the timestamp option
(RFC 7323 section 4.2) the echoed TSval identifies the transmission, so
samples from retransmitted segments are valid then.  How many samples per
round trip to feed in (one per ACK, or one per window) is also the caller's
choice; with alpha = 1/8 per sample, many samples per window shorten the
estimator's memory to less than a round trip.

`min_rtt_us` is the smallest sample ever seen (no window), for statistics
and for congestion control that wants a propagation-delay estimate.
"""

from __future__ import annotations

from typing import Final

MIN_RTO_US: Final = 200_000
"""Linux's TCP_RTO_MIN."""
MAX_RTO_US: Final = 120_000_000
"""Linux's TCP_RTO_MAX; RFC 6298 2.5 asks for at least 60 s."""
INITIAL_RTO_US: Final = 1_000_000
"""RFC 6298 2.1."""
GRANULARITY_US: Final = 1_000
"""G of RFC 6298: the granularity of the timers that enforce RTO (1 ms)."""
SYN_FALLBACK_RTO_US: Final = 3_000_000
"""RFC 6298 5.7 (Linux's TCP_TIMEOUT_FALLBACK)."""


class RttEstimator:
    """SRTT, RTTVAR and RTO of one connection (RFC 6298); see the module docstring."""

    __slots__ = (
        "_backoffs",
        "_base_rto_us",
        "_granularity_us",
        "_max_rto_us",
        "_min_rto_us",
        "_min_rtt_us",
        "_rto_us",
        "_rttvar4",
        "_samples",
        "_srtt8",
    )

    def __init__(
        self,
        *,
        min_rto_us: int = MIN_RTO_US,
        max_rto_us: int = MAX_RTO_US,
        initial_rto_us: int = INITIAL_RTO_US,
        granularity_us: int = GRANULARITY_US,
    ) -> None:
        if not 0 < min_rto_us <= max_rto_us:
            raise ValueError(
                f"need 0 < min_rto_us <= max_rto_us, got {min_rto_us} and {max_rto_us}"
            )
        if not min_rto_us <= initial_rto_us <= max_rto_us:
            raise ValueError(
                f"initial_rto_us {initial_rto_us} must lie in [min_rto_us, max_rto_us]"
                f" = [{min_rto_us}, {max_rto_us}]"
            )
        if granularity_us < 0:
            raise ValueError(f"granularity_us must be >= 0, got {granularity_us}")
        self._min_rto_us = min_rto_us
        self._max_rto_us = max_rto_us
        self._granularity_us = granularity_us
        self._srtt8 = 0  # SRTT * 8; meaningless while _samples == 0
        self._rttvar4 = 0  # RTTVAR * 4
        self._samples = 0
        self._min_rtt_us = 0
        self._base_rto_us = initial_rto_us  # RTO before back-off
        self._backoffs = 0
        self._rto_us = initial_rto_us  # cached min(base << backoffs, max)

    # -- inputs -------------------------------------------------------------

    def on_sample(self, rtt_us: int) -> None:
        """Take one valid RTT measurement (RFC 6298 2.2 / 2.3) and recompute RTO.

        The caller applies Karn's rule (module docstring).  A new sample also
        clears the back-off.  A negative RTT is a caller bug: ValueError.
        """
        if rtt_us < 0:
            raise ValueError(f"an RTT sample cannot be negative, got {rtt_us} us")
        if self._samples:
            err = rtt_us - (self._srtt8 >> 3)
            self._srtt8 += err  # SRTT += (R - SRTT) / 8
            if err < 0:
                err = -err
            self._rttvar4 += err - (self._rttvar4 >> 2)  # RTTVAR += (|R - SRTT| - RTTVAR) / 4
            if rtt_us < self._min_rtt_us:
                self._min_rtt_us = rtt_us
        else:
            self._srtt8 = rtt_us << 3
            self._rttvar4 = rtt_us << 1  # RTTVAR = R / 2, times 4
            self._min_rtt_us = rtt_us
        self._samples += 1
        rto = (self._srtt8 >> 3) + max(self._granularity_us, self._rttvar4)
        if rto < self._min_rto_us:
            rto = self._min_rto_us
        elif rto > self._max_rto_us:
            rto = self._max_rto_us
        self._base_rto_us = rto
        self._backoffs = 0
        self._rto_us = rto

    def backoff(self) -> int:
        """The retransmission timer expired: double RTO, at most max_rto (5.5).

        Returns the new `rto_us`, the value to restart the timer with (5.6).
        """
        if self._rto_us < self._max_rto_us:
            self._backoffs += 1
            self._rto_us = min(self._base_rto_us << self._backoffs, self._max_rto_us)
        return self._rto_us

    def reset_backoff(self) -> None:
        """Drop the back-off: RTO returns to its value from SRTT and RTTVAR."""
        self._backoffs = 0
        self._rto_us = self._base_rto_us

    def on_handshake_retransmitted(self) -> None:
        """The SYN (or SYN-ACK) had to be retransmitted; call when the handshake completes.

        RFC 6298 5.7: with no RTT sample yet, RTO becomes at least 3 s (and
        the handshake's back-off is dropped).  With a sample (possible with
        timestamps) RTO comes from it as usual and nothing changes.
        """
        if self._samples:
            return
        self._base_rto_us = min(max(self._base_rto_us, SYN_FALLBACK_RTO_US), self._max_rto_us)
        self.reset_backoff()

    # -- state --------------------------------------------------------------

    @property
    def rto_us(self) -> int:
        """The retransmission timeout to arm now, back-off included."""
        return self._rto_us

    @property
    def srtt_us(self) -> int | None:
        """Smoothed RTT, or None before the first sample."""
        return self._srtt8 >> 3 if self._samples else None

    @property
    def rttvar_us(self) -> int | None:
        """RTT variation, or None before the first sample."""
        return self._rttvar4 >> 2 if self._samples else None

    @property
    def min_rtt_us(self) -> int | None:
        """Smallest sample seen over the connection's life, or None before the first."""
        return self._min_rtt_us if self._samples else None

    @property
    def samples(self) -> int:
        """How many samples `on_sample` has taken."""
        return self._samples

    @property
    def backoffs(self) -> int:
        """Doublings applied since the last sample or reset."""
        return self._backoffs

    @property
    def min_rto_us(self) -> int:
        return self._min_rto_us

    @property
    def max_rto_us(self) -> int:
        return self._max_rto_us

    def __repr__(self) -> str:
        return (
            f"RttEstimator(srtt_us={self.srtt_us}, rttvar_us={self.rttvar_us},"
            f" rto_us={self._rto_us}, backoffs={self._backoffs}, samples={self._samples})"
        )
