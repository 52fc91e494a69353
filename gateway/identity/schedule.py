"""When the gateway renews its certificate, and how it retries: pure arithmetic on Unix times.

Renewal is due two thirds into the certificate's validity (not_before to not_after), moved by up
to 5% of the validity either way, so that a fleet registered in one afternoon, or re-issued in
one CA rollover, does not come back to the plane in the same second. The delays scale with the
validity: a 90-day certificate retries after 30 s, then up to an hour apart; the few-second
certificates of the tests retry within a second. Nothing here reads a clock or a random source.
"""

from __future__ import annotations

RENEW_FRACTION = 2 / 3
JITTER = 0.05  # of the validity, either way
BASE_FRACTION = 0.01  # first retry delay: 1% of the validity ...
BASE_MAX = 30.0  # ... at most 30 s
CAP_FRACTION = 0.05  # longest retry delay: 5% of the validity ...
CAP_MAX = 3600.0  # ... at most an hour
SPREAD_FRACTION = 0.05  # a renewal the plane asks for comes within 5% of the validity ...
SPREAD_MAX = 600.0  # ... and at most ten minutes
MIN_DELAY = 0.05


def validity(not_before: float, not_after: float) -> float:
    """The certificate's validity period in seconds (0 for a nonsensical one)."""
    return max(0.0, not_after - not_before)


def renew_at(not_before: float, not_after: float, rand: float) -> float:
    """When to renew: two thirds into the validity, +-5% of it; `rand` is uniform in [0, 1)."""
    period = validity(not_before, not_after)
    return not_before + period * (RENEW_FRACTION + JITTER * (2 * rand - 1))


def retry_delay(attempt: int, period: float, rand: float, floor: float = 0.0) -> float:
    """The wait before renewal attempt `attempt` + 1 (attempt >= 1 failed so far), "equal jitter".

    Half the capped exponential delay is fixed and half random: never a tight loop, never a herd.
    """
    base = max(MIN_DELAY, min(BASE_MAX, period * BASE_FRACTION))
    cap = max(base, min(CAP_MAX, period * CAP_FRACTION))
    delay = min(cap, base * float(2 ** max(0, min(attempt - 1, 30))))
    return max(floor, delay / 2 + rand * delay / 2)


def rate_limited_floor(period: float) -> float:
    """The least wait after the plane answered `rate-limited`."""
    return max(MIN_DELAY, min(CAP_MAX, period * CAP_FRACTION))


def soon(now: float, period: float, rand: float) -> float:
    """A renewal the plane asked for (its signing CA changed): spread over a short window."""
    return now + rand * min(SPREAD_MAX, period * SPREAD_FRACTION)
