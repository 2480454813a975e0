"""TCP congestion control: a small pluggable interface, NewReno and CUBIC, sans-IO.

Owns the congestion window `cwnd` and slow-start threshold `ssthresh` of
one connection, in bytes, and how they react to acknowledgements, losses,
timeouts and idle periods.  Implements RFC 5681 (slow start, congestion
avoidance, loss reaction, restart after idle), RFC 3465 (appropriate byte
counting), RFC 6928 (initial window), RFC 6582 (NewReno's window at the end
of recovery) and RFC 9438 (CUBIC, the default, as on Linux).  It never reads
a clock: every input carries `now_us`, integer microseconds.

Theory of operation
-------------------

The control block decides *when* something happened; this module decides
*what it does to the window*.  The split for loss recovery: the control
block runs recovery itself (RFC 6675 pipe-based recovery with SACK, or a
NewReno equivalent that counts each duplicate ACK as one segment delivered,
RFC 6582), and sends while `pipe < cwnd`.  The module is asked only at the
two ends of recovery:

  on_enter_recovery(now_us, in_flight)
      Fast retransmit (three duplicate ACKs, or RFC 6675 loss detection).
      ssthresh = max(FlightSize * beta, 2 * SMSS) and cwnd = ssthresh, as
      RFC 6675 5 step 4.2 does (NewReno: beta = 1/2, RFC 5681 eq. 4; CUBIC:
      beta = 0.7, RFC 9438 4.6).  There is no "+ 3 * SMSS" inflation: the
      control block's pipe (or duplicate-ACK count) accounts for segments
      that have left the network.  A second call before `on_exit_recovery`
      does nothing: RFC 6582 allows one reduction per window of data.
  on_exit_recovery(now_us, in_flight=None)
      The full ACK (RFC 6582 3.2 step 3): cwnd = ssthresh ("deflating the
      window", the RFC's second option).  Pass `in_flight` to get its first
      option instead, cwnd = min(ssthresh, max(FlightSize, SMSS) + SMSS),
      which avoids a burst when little is left in flight.

While in recovery, `on_ack` changes nothing, so the control block may call
it for every ACK that advances SND.UNA.

  on_ack(acked_bytes, now_us, rtt_us, in_flight)
      New data acknowledged.  Slow start while cwnd < ssthresh (RFC 5681
      3.1), with byte counting limited to L = 2 * SMSS per ACK (RFC 3465
      2.2 and 2.3); the part of an ACK that carries cwnd past ssthresh
      goes on to congestion avoidance, which is the algorithm's own.
      `in_flight` is the data in flight just before this ACK was processed
      (Linux's prior_in_flight: FlightSize, or the RFC 6675 pipe, before
      SND.UNA moves).  `rtt_us` is the connection's smoothed RTT
      (`RttEstimator.srtt_us`), None while there is none; CUBIC needs it
      for its target W_cubic(t + RTT), NewReno ignores it.
  on_rto(now_us, in_flight)
      The retransmission timer expired: ssthresh as on entering recovery,
      cwnd = 1 * SMSS (the loss window, RFC 5681 3.1 and eq. 4).  If the
      window was already reduced for this loss (in recovery, or an RTO with
      no new data acknowledged since), ssthresh is held, as RFC 5681 asks
      for a segment retransmitted by the timer more than once and as Linux's
      tcp_enter_loss does for an RTO during recovery.  Recovery ends.
  on_idle_restart(now_us, idle_us, rto_us)
      Call before sending when nothing has been in flight for `idle_us`
      (the time since the connection last sent, as Linux measures it).  If
      idle_us > rto_us: cwnd = min(cwnd, IW), the restart window of RFC
      5681 4.1; ssthresh = max(ssthresh, 3/4 cwnd) beforehand so that slow
      start climbs back quickly (RFC 2861, Linux's tcp_cwnd_restart).
  on_handshake_loss()
      The SYN or SYN-ACK had to be retransmitted: the initial window is one
      segment (RFC 5681 3.1).  Call before any data is acknowledged.

Application-limited senders (RFC 7661's concern, RFC 9438 5.8): cwnd grows
only when the sender is cwnd-limited.  The rule follows Linux's
`tcp_is_cwnd_limited`, with this ACK's in_flight in place of Linux's
largest flight of the window:

  slow start:              grow if cwnd < 2 * in_flight (the flight used
                           more than half the window, so doubling it is
                           justified);
  congestion avoidance:    grow if in_flight + SMSS > cwnd (the window had
                           no room for another full segment; the slack of
                           one segment allows for a sender that sends only
                           full segments into a window that is not a
                           multiple of SMSS).

So an application that keeps the window half empty does not inflate cwnd to
a value the network never confirmed.

Initial window (RFC 6928 2): IW = min(10 * SMSS, max(2 * SMSS, 14600)).
`set_mss` changes SMSS; before any event it recomputes IW, afterwards it
keeps cwnd and ssthresh in bytes (RFC 5681 counts bytes) and only lifts
them to 1 * SMSS and 2 * SMSS if the segment size grew beyond them.

Invariants after any sequence of calls: cwnd >= 1 * SMSS, ssthresh >=
2 * SMSS, and cwnd >= 2 * SMSS while in recovery.

NewReno (RFC 5681 3.1, RFC 3465 2.1): congestion avoidance counts
acknowledged bytes and adds one SMSS each time a full cwnd has been
acknowledged, so cwnd grows by one segment per round trip however the ACKs
are spaced; at most one SMSS per ACK.

CUBIC (RFC 9438): see the `Cubic` docstring.  HyStart (or HyStart++, RFC
9406) is not implemented: slow start runs until the first loss; HyStart++
would be a worthwhile improvement for paths with deep buffers.  Neither are
ECN reactions, nor undo of spurious reductions (RFC 9438 4.9).

Everything on the per-ACK path is O(1): a few integer operations for
NewReno, a few float multiplications for CUBIC (no loops, no allocation).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import ClassVar, Final

SSTHRESH_INFINITE: Final = 0x7FFF_FFFF
"""ssthresh before the first congestion event (Linux's TCP_INFINITE_SSTHRESH)."""

DEFAULT_CONGESTION_CONTROL: Final = "cubic"


def initial_window(mss: int) -> int:
    """IW in bytes for segment size `mss` (RFC 6928 section 2)."""
    return min(10 * mss, max(2 * mss, 14_600))


class CongestionControl(ABC):
    """cwnd and ssthresh of one connection, in bytes; see the module docstring.

    Subclasses supply `name`, congestion avoidance and the reduction on a
    congestion event; slow start, recovery bookkeeping, the timeout and
    idle restart are shared.
    """

    name: ClassVar[str]

    __slots__ = (
        "_cwnd",
        "_handshake_lost",
        "_in_loss",
        "_in_recovery",
        "_mss",
        "_pristine",
        "_ssthresh",
    )

    def __init__(self, mss: int) -> None:
        if mss <= 0:
            raise ValueError(f"mss must be positive, got {mss}")
        self._mss = mss
        self._cwnd = initial_window(mss)
        self._ssthresh = SSTHRESH_INFINITE
        self._in_recovery = False
        self._in_loss = False  # an RTO reduced the window and no new data was ACKed since
        self._pristine = True  # nothing has happened yet: set_mss may recompute IW
        self._handshake_lost = False  # then IW is one segment

    # -- state --------------------------------------------------------------

    @property
    def cwnd(self) -> int:
        """Congestion window, bytes."""
        return self._cwnd

    @property
    def ssthresh(self) -> int:
        """Slow-start threshold, bytes (SSTHRESH_INFINITE before any congestion)."""
        return self._ssthresh

    @property
    def mss(self) -> int:
        """SMSS, bytes."""
        return self._mss

    @property
    def in_slow_start(self) -> bool:
        """cwnd < ssthresh (RFC 5681 3.1); at equality congestion avoidance runs."""
        return self._cwnd < self._ssthresh

    @property
    def in_recovery(self) -> bool:
        """Between `on_enter_recovery` and `on_exit_recovery` (or an RTO)."""
        return self._in_recovery

    def state(self) -> dict[str, int]:
        """Counters for an `ss -ti`-like view: bytes, and microseconds for times."""
        return {"cwnd": self._cwnd, "ssthresh": self._ssthresh, "mss": self._mss}

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v}" for k, v in self.state().items())
        return f"{type(self).__name__}({fields})"

    # -- inputs -------------------------------------------------------------

    def set_mss(self, mss: int) -> None:
        """Change SMSS (learned in the handshake, or from path MTU discovery)."""
        if mss <= 0:
            raise ValueError(f"mss must be positive, got {mss}")
        self._mss = mss
        if self._pristine:
            self._cwnd = mss if self._handshake_lost else initial_window(mss)
        else:
            floor = 2 * mss if self._in_recovery else mss
            if self._cwnd < floor:
                self._cwnd = floor
            if self._ssthresh < 2 * mss:
                self._ssthresh = 2 * mss
        self._restart_avoidance()

    def on_ack(self, acked_bytes: int, now_us: int, rtt_us: int | None, in_flight: int) -> None:
        """`acked_bytes` of new data were acknowledged (see the module docstring).

        `rtt_us` is the smoothed RTT or None; `in_flight` the bytes in flight
        just before this ACK.  Does nothing in recovery; grows cwnd only when
        the sender is cwnd-limited.
        """
        if acked_bytes <= 0:
            if acked_bytes < 0:
                raise ValueError(f"acked_bytes cannot be negative, got {acked_bytes}")
            return
        self._pristine = False
        self._in_loss = False
        if self._in_recovery:
            return
        cwnd = self._cwnd
        if cwnd < self._ssthresh:
            if 2 * in_flight <= cwnd:
                self._app_limited(now_us)
                return
            # RFC 5681 3.1 with RFC 3465 byte counting, L = 2 * SMSS.
            limit = 2 * self._mss
            cwnd += acked_bytes if acked_bytes < limit else limit
            if cwnd < self._ssthresh:
                self._cwnd = cwnd
                return
            # Crossed ssthresh: the rest of this ACK counts for congestion avoidance.
            acked_bytes -= self._ssthresh - self._cwnd
            self._cwnd = self._ssthresh
            if acked_bytes <= 0:
                return
        elif in_flight + self._mss <= cwnd:
            self._app_limited(now_us)
            return
        self._avoid(acked_bytes, now_us, rtt_us)

    def on_enter_recovery(self, now_us: int, in_flight: int) -> None:
        """Fast retransmit: reduce ssthresh and set cwnd = ssthresh (no-op if in recovery)."""
        if self._in_recovery:
            return
        self._pristine = False
        self._in_loss = False
        self._reduce(now_us, in_flight)
        self._cwnd = self._ssthresh
        self._in_recovery = True

    def on_exit_recovery(self, now_us: int, in_flight: int | None = None) -> None:
        """Full ACK: leave recovery with cwnd = ssthresh (RFC 6582 3.2 step 3).

        With `in_flight`, cwnd = min(ssthresh, max(in_flight, SMSS) + SMSS)
        instead (the RFC's first option).  No-op when not in recovery.
        """
        if not self._in_recovery:
            return
        self._in_recovery = False
        if in_flight is None:
            self._cwnd = self._ssthresh
        else:
            self._cwnd = min(self._ssthresh, max(in_flight, self._mss) + self._mss)
        self._restart_avoidance()

    def on_rto(self, now_us: int, in_flight: int) -> None:
        """Retransmission timeout: ssthresh (held if already reduced), cwnd = 1 * SMSS."""
        self._pristine = False
        if not (self._in_recovery or self._in_loss):
            self._reduce(now_us, in_flight)
        self._in_recovery = False
        self._in_loss = True
        self._cwnd = self._mss
        self._after_timeout()

    def on_idle_restart(self, now_us: int, idle_us: int, rto_us: int) -> None:
        """Sending resumes after `idle_us` with nothing in flight (RFC 5681 4.1)."""
        if idle_us <= rto_us:
            self._idle(idle_us, now_us)
            return
        restart = initial_window(self._mss)
        if self._cwnd > restart:
            self._pristine = False
            three_quarters = self._cwnd - (self._cwnd >> 2)
            if self._ssthresh < three_quarters:
                self._ssthresh = three_quarters
            self._cwnd = restart
        self._restart_avoidance()

    def on_handshake_loss(self) -> None:
        """The SYN or SYN-ACK was retransmitted: IW = 1 * SMSS (RFC 5681 3.1)."""
        if self._pristine:
            self._handshake_lost = True
            self._cwnd = self._mss

    # -- what an algorithm supplies ----------------------------------------

    @abstractmethod
    def _avoid(self, acked_bytes: int, now_us: int, rtt_us: int | None) -> None:
        """Congestion avoidance for `acked_bytes` while cwnd-limited and cwnd >= ssthresh."""

    @abstractmethod
    def _reduce(self, now_us: int, in_flight: int) -> None:
        """A congestion event: set ssthresh (>= 2 * SMSS) and the algorithm's memory of it."""

    def _restart_avoidance(self) -> None:  # noqa: B027 - optional hook, empty by default
        """Congestion avoidance starts afresh next time (cwnd changed under it)."""

    def _after_timeout(self) -> None:
        """An RTO has just set cwnd to the loss window."""
        self._restart_avoidance()

    def _app_limited(self, now_us: int) -> None:  # noqa: B027 - optional hook
        """An ACK arrived that may not grow cwnd: the sender is application-limited."""

    def _idle(self, idle_us: int, now_us: int) -> None:  # noqa: B027 - optional hook
        """The sender was idle for `idle_us`, not long enough to restart the window."""


class NewReno(CongestionControl):
    """RFC 5681 with RFC 6582's recovery exit, byte-counted (RFC 3465)."""

    name: ClassVar[str] = "newreno"

    __slots__ = ("_bytes_acked",)

    def __init__(self, mss: int) -> None:
        super().__init__(mss)
        self._bytes_acked = 0  # RFC 3465's bytes_acked, in congestion avoidance

    def _avoid(self, acked_bytes: int, now_us: int, rtt_us: int | None) -> None:
        # RFC 3465 2.1: once a whole cwnd is acknowledged, subtract it and add
        # one SMSS; at most one SMSS per ACK (RFC 5681 3.1).
        acked = self._bytes_acked + acked_bytes
        if acked >= self._cwnd:
            acked -= self._cwnd
            self._cwnd += self._mss
        self._bytes_acked = acked

    def _reduce(self, now_us: int, in_flight: int) -> None:
        # RFC 5681 eq. 4: ssthresh = max(FlightSize / 2, 2 * SMSS).
        self._ssthresh = max(in_flight >> 1, 2 * self._mss)
        self._bytes_acked = 0

    def _restart_avoidance(self) -> None:
        self._bytes_acked = 0


C_CUBIC: Final = 0.4
"""RFC 9438 4.1: C, in segments per second cubed."""
BETA_CUBIC: Final = 0.7
"""RFC 9438 4.6."""
ALPHA_CUBIC: Final = 3.0 * (1.0 - BETA_CUBIC) / (1.0 + BETA_CUBIC)
"""RFC 9438 4.3: the Reno-friendly additive factor (about 0.53)."""


class Cubic(CongestionControl):
    """CUBIC (RFC 9438): cwnd follows W_cubic(t) = C (t - K)^3 + W_max.

    Windows are in bytes: W_cubic(t) = C * SMSS * (t - K)^3 + W_max, with t
    and K in seconds, which is RFC 9438's function in segments times SMSS.

    A congestion-avoidance stage (an *epoch*) starts at the first ACK that
    reaches congestion avoidance after slow start, recovery, an RTO, idle
    restart or an SMSS change.  At its start, with cwnd_epoch = cwnd:

      K = cbrt((W_max - cwnd_epoch) / C)                 (RFC 9438 eq. 2)
      W_est = cwnd_epoch                                 (4.3)

    and if W_max <= cwnd_epoch (no congestion event yet, or the first stage
    after a timeout, 4.8), W_max = cwnd_epoch and K = 0: cwnd probes upwards
    from where it is, convex from the start.

    On each ACK of `acked` bytes, with t the epoch's age (4.2):

      W_est += alpha * acked * SMSS / cwnd     (eq. 4, byte-counted; alpha =
                                                ALPHA_CUBIC, or 1 once W_est >=
                                                cwnd_prior, the cwnd before the
                                                last reduction)
      if W_cubic(t) < W_est: cwnd = W_est      (Reno-friendly region, 4.3)
      else: target = W_cubic(t + RTT) clamped to [cwnd, 1.5 cwnd]   (4.2)
            cwnd += (target - cwnd) * acked / cwnd   (concave 4.4, convex 4.5)

    The fractional part of each increase is carried to the next ACK, so
    cwnd moves in whole bytes without losing growth.  t excludes time the
    sender was not cwnd-limited (4.2 and 5.8): an application-limited ACK
    moves the epoch forward by the time since the previous ACK, and an idle
    period shorter than RTO moves it by the idle time since the last ACK
    (Linux does the latter in bictcp_cwnd_event).

    On a congestion event (4.6, 4.7): cwnd_prior = cwnd; W_max = cwnd *
    (1 + beta) / 2 if cwnd < W_max and fast convergence is on (the default),
    else W_max = cwnd; ssthresh = max(FlightSize * 0.7, 2 * SMSS).  RFC 9438
    says fast convergence SHOULD be disabled for a lone flow; like Linux we
    cannot know that and keep it on (`fast_convergence=False` to change).  On a
    timeout, ssthresh likewise, cwnd = 1 * SMSS, and the next stage uses K =
    0 and W_max = its starting cwnd (4.8).
    """

    name: ClassVar[str] = "cubic"

    __slots__ = (
        "_c_bytes",
        "_credit",
        "_cwnd_prior",
        "_epoch_start_us",
        "_fast_convergence",
        "_k_s",
        "_last_ack_us",
        "_rtt_s",
        "_w_est",
        "_w_max",
    )

    def __init__(self, mss: int, *, fast_convergence: bool = True) -> None:
        super().__init__(mss)
        self._fast_convergence = fast_convergence
        self._c_bytes = C_CUBIC * mss  # C scaled to bytes per second cubed
        self._w_max = 0.0  # bytes; 0 = no congestion event remembered
        self._cwnd_prior = 0  # bytes; cwnd before the last reduction
        self._epoch_start_us: int | None = None  # None: no epoch running
        self._last_ack_us = 0
        self._k_s = 0.0
        self._w_est = 0.0  # bytes
        self._credit = 0.0  # fractional bytes of growth not yet applied
        self._rtt_s = 0.0  # last smoothed RTT given to on_ack, seconds

    # -- state --------------------------------------------------------------

    @property
    def w_max(self) -> int:
        """W_max in bytes (0 before the first congestion event)."""
        return int(self._w_max)

    @property
    def k_us(self) -> int:
        """K of the current epoch, microseconds (0 when no epoch runs)."""
        return round(self._k_s * 1e6) if self._epoch_start_us is not None else 0

    @property
    def epoch_start_us(self) -> int | None:
        """When the current congestion-avoidance stage began (shifted past app-limited time)."""
        return self._epoch_start_us

    @property
    def w_est(self) -> int:
        """The Reno-friendly estimate W_est, bytes."""
        return int(self._w_est)

    def w_cubic(self, t_us: int) -> float:
        """W_cubic at `t_us` after the epoch start, bytes (RFC 9438 eq. 1)."""
        d = t_us * 1e-6 - self._k_s
        return self._c_bytes * d * d * d + self._w_max

    def state(self) -> dict[str, int]:
        s = super().state()
        s["w_max"] = self.w_max
        s["k_us"] = self.k_us
        s["w_est"] = self.w_est
        return s

    def set_mss(self, mss: int) -> None:
        self._c_bytes = C_CUBIC * mss
        super().set_mss(mss)

    # -- the algorithm ------------------------------------------------------

    def _start_epoch(self, now_us: int) -> None:
        cwnd = self._cwnd
        self._epoch_start_us = now_us
        self._last_ack_us = now_us
        self._w_est = float(cwnd)
        self._credit = 0.0
        if self._w_max > cwnd:
            self._k_s = math.cbrt((self._w_max - cwnd) / self._c_bytes)
        else:
            self._k_s = 0.0
            self._w_max = float(cwnd)

    def _avoid(self, acked_bytes: int, now_us: int, rtt_us: int | None) -> None:
        if rtt_us is not None:
            self._rtt_s = rtt_us * 1e-6
        start = self._epoch_start_us
        if start is None:
            self._start_epoch(now_us)
            start = now_us
        self._last_ack_us = now_us
        cwnd = self._cwnd
        alpha = 1.0 if self._w_est >= self._cwnd_prior else ALPHA_CUBIC
        w_est = self._w_est + alpha * acked_bytes * self._mss / cwnd
        self._w_est = w_est
        t = (now_us - start) * 1e-6
        d = t - self._k_s
        if self._c_bytes * d * d * d + self._w_max < w_est:
            # Reno-friendly region (RFC 9438 4.3).
            if w_est >= cwnd + 1:
                self._cwnd = int(w_est)
                self._credit = 0.0
            return
        d += self._rtt_s
        target = self._c_bytes * d * d * d + self._w_max
        if target <= cwnd:
            return
        if target > 1.5 * cwnd:
            target = 1.5 * cwnd
        credit = self._credit + (target - cwnd) * acked_bytes / cwnd
        grow = int(credit)
        self._credit = credit - grow
        self._cwnd = cwnd + grow

    def _reduce(self, now_us: int, in_flight: int) -> None:
        cwnd = self._cwnd
        self._cwnd_prior = cwnd
        if self._fast_convergence and cwnd < self._w_max:
            self._w_max = cwnd * (1.0 + BETA_CUBIC) / 2.0  # RFC 9438 4.7
        else:
            self._w_max = float(cwnd)
        # RFC 9438 4.6: ssthresh = max(flight_size * beta_cubic, 2 * SMSS).
        self._ssthresh = max(in_flight * 7 // 10, 2 * self._mss)
        self._epoch_start_us = None

    def _restart_avoidance(self) -> None:
        self._epoch_start_us = None

    def _after_timeout(self) -> None:
        # RFC 9438 4.8: the next stage starts with K = 0 and W_max = its cwnd.
        self._w_max = 0.0
        self._epoch_start_us = None

    def _app_limited(self, now_us: int) -> None:
        if self._epoch_start_us is not None:
            self._epoch_start_us += now_us - self._last_ack_us
            self._last_ack_us = now_us

    def _idle(self, idle_us: int, now_us: int) -> None:
        # Nothing was in flight since the last ACK at the latest, so the idle
        # time to skip is at most the time since that ACK.
        if self._epoch_start_us is not None:
            skip = min(idle_us, now_us - self._last_ack_us)
            if skip > 0:
                self._epoch_start_us += skip
                self._last_ack_us = now_us


CONGESTION_CONTROLS: Final[dict[str, type[CongestionControl]]] = {
    Cubic.name: Cubic,
    NewReno.name: NewReno,
}


def make_congestion_control(name: str, mss: int) -> CongestionControl:
    """A fresh `name` controller for segment size `mss`; ValueError for an unknown name."""
    cls = CONGESTION_CONTROLS.get(name)
    if cls is None:
        valid = ", ".join(sorted(CONGESTION_CONTROLS))
        raise ValueError(f"unknown congestion control {name!r}; valid: {valid}")
    return cls(mss)
