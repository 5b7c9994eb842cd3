"""The daily spend a cap is checked against: a small protocol the activity store implements."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol, runtime_checkable


@runtime_checkable
class SpendSource(Protocol):
    """Where spend is recorded (the activity store)."""

    async def spent_today(self, key_name: str | None) -> float | None:
        """USD spent since 00:00 UTC by one key (None: by all traffic), or None when unknown."""


def seconds_until_utc_midnight(now: datetime | None = None) -> float:
    """Seconds until the daily spend resets (00:00 UTC)."""
    now = now or datetime.now(UTC)
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return (midnight - now).total_seconds()
