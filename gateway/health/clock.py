"""Clock skew, noticed and explained before TLS fails over it (pure).

Three witnesses, each cheap: the plane's clock (its answer to every health record carries its
time; the offset is measured NTP-style over that round trip), timesyncd (synchronised or not,
its last offset), and our own certificate's validity window (the plane signed it with its
clock, backdated 10 minutes: a local clock before its start is certainly behind). TLS itself
fails only once the skew passes a certificate's edge, which for a freshly issued certificate is
those 10 minutes; the explanation comes as soon as the skew passes SKEW_WARN.
"""

from __future__ import annotations

from gwcore.status_file import format_age

SKEW_WARN = 30.0  # seconds; the plane's clock-skew event uses the same threshold
NTP_ADVICE = "check the NTP servers (network.ntp) and that UDP port 123 reaches them"


def plane_offset(sent: float, received: float, plane_time: float) -> float:
    """How far our clock is ahead (+) of the plane's: the midpoint of our send and receive times
    against the time the plane put in its reply (exact to half the round trip)."""
    return (sent + received) / 2 - plane_time


def _direction(offset: float) -> str:
    return f"{format_age(abs(offset))} {'ahead of' if offset > 0 else 'behind'}"


def explain(
    now: float,
    *,
    offset: float | None,
    ntp_synced: bool | None,
    cert_not_before: float | None,
    cert_not_after: float | None,
) -> str | None:
    """What is wrong with the clock and what to do, in one line; None when nothing is."""
    ntp = "" if ntp_synced is None else (" (NTP synchronised)" if ntp_synced else " (NTP not synchronised)")
    if cert_not_before is not None and now < cert_not_before - 60:
        behind = cert_not_before - now
        return (
            f"the clock is at least {format_age(behind)} behind: it is before the start of this"
            f" gateway's certificate{ntp}; TLS to the plane fails until the time is right: {NTP_ADVICE}"
        )
    if offset is not None and abs(offset) > SKEW_WARN:
        return (
            f"the clock is {_direction(offset)} the plane's{ntp}; TLS fails once the skew passes a"
            f" certificate's validity (10 min for a new one): {NTP_ADVICE}"
        )
    if cert_not_after is not None and now > cert_not_after and offset is None:
        return (
            f"this gateway's certificate expired {format_age(now - cert_not_after)} ago by this clock;"
            f" if the clock is wrong{ntp}: {NTP_ADVICE}"
        )
    return None
