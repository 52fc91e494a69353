"""When the gateway renews, and how it waits after a failure (gateway.identity.schedule)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.identity import schedule

DAY = 86400.0


@pytest.mark.parametrize(
    ("rand", "fraction"),
    [(0.0, 2 / 3 - 0.05), (0.5, 2 / 3), (0.999999, 2 / 3 + 0.05)],
)
def test_renewal_is_two_thirds_into_the_validity_with_five_percent_jitter(
    rand: float, fraction: float
) -> None:
    not_before = 1_000_000.0
    at = schedule.renew_at(not_before, not_before + 90 * DAY, rand)
    assert at == pytest.approx(not_before + 90 * DAY * fraction, abs=1.0)


@given(
    st.floats(0, 2e9),
    st.floats(2, 3650 * DAY),
    st.floats(0, 1, exclude_max=True),
)
def test_renewal_always_falls_between_60_and_72_percent_of_the_life(
    start: float, period: float, rand: float
) -> None:
    at = schedule.renew_at(start, start + period, rand)
    assert start + 0.6 * period <= at + 1e-6 and at <= start + 0.72 * period + 1e-6


def test_a_nonsensical_certificate_is_due_at_once() -> None:
    assert schedule.renew_at(100.0, 50.0, 0.5) == 100.0  # not_after before not_before: validity 0


def test_retries_back_off_from_thirty_seconds_to_an_hour_for_ninety_days() -> None:
    period = 90 * DAY
    lows = [schedule.retry_delay(n, period, 0.0) for n in range(1, 12)]
    highs = [schedule.retry_delay(n, period, 0.999) for n in range(1, 12)]
    assert lows[0] == 15.0 and highs[0] == pytest.approx(30.0, rel=0.01)
    assert lows == sorted(lows)  # never shorter than the attempt before
    assert highs[-1] == pytest.approx(3600.0, rel=0.01) and lows[-1] == 1800.0  # capped, still jittered


def test_test_certificates_retry_within_a_second() -> None:
    assert schedule.retry_delay(1, 6.0, 0.5) == pytest.approx(0.045)
    assert max(schedule.retry_delay(n, 6.0, 0.999) for n in range(1, 60)) <= 0.3


def test_a_floor_wins_and_a_huge_attempt_count_is_harmless() -> None:
    assert schedule.retry_delay(1, 90 * DAY, 0.0, floor=7 * 3600.0) == 7 * 3600.0
    assert schedule.retry_delay(10**9, 90 * DAY, 0.5) <= 3600.0
    assert schedule.rate_limited_floor(90 * DAY) == 3600.0
    assert schedule.rate_limited_floor(6.0) == pytest.approx(0.3)


def test_a_renewal_the_plane_asks_for_is_spread_over_at_most_ten_minutes() -> None:
    assert schedule.soon(1000.0, 90 * DAY, 0.999) == pytest.approx(1600.0, abs=1)
    assert schedule.soon(1000.0, 60.0, 0.999) == pytest.approx(1003.0, abs=0.01)
    assert schedule.soon(1000.0, 60.0, 0.0) == 1000.0
