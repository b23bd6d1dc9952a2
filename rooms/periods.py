"""Leaderboard periods, pure: which day, ISO week and month a moment falls in.

Boards roll over at local midnight, local Monday 00:00 and the local first of
the month in the configured zone (default Asia/Shanghai). Time is passed in,
never read here, so tests can stand at 23:59:59.
"""

from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo

BOARD_TTL_S = 100 * 24 * 3600  # a period board is kept ~3 months after it is last bumped


PERIOD_KINDS = ("day", "week", "month")


def period_of(kind: str, local_date: date) -> str:
    """The period name of `kind` containing a local calendar date."""
    iso_year, iso_week, _ = local_date.isocalendar()
    if kind == "day":
        return f"d{local_date:%Y%m%d}"
    if kind == "week":
        return f"w{iso_year}-{iso_week:02d}"
    if kind == "month":
        return f"m{local_date:%Y%m}"
    raise ValueError(f"unknown period kind {kind!r}")


def periods(now_ms: int, tz: ZoneInfo) -> tuple[str, str, str]:
    """(day, week, month) period names, e.g. ('d20261125', 'w2026-48', 'm202611')."""
    local = datetime.fromtimestamp(now_ms / 1000, tz)
    iso_year, iso_week, _ = local.isocalendar()
    return (
        f"d{local:%Y%m%d}",
        f"w{iso_year}-{iso_week:02d}",
        f"m{local:%Y%m}",
    )
