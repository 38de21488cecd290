"""When a periodic job's ticks start: every so long, or as a cron expression says (in UTC).

Both are pure functions of the time, so every process works out the same ticks; the
scheduler enqueues each one once (see scheduler).
"""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from croniter import croniter


class Schedule(Protocol):
    def tick(self, now: datetime) -> datetime:
        """The start of the tick `now` falls in."""
        ...

    def next_tick(self, now: datetime) -> datetime:
        """The start of the tick after it."""
        ...


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def current_tick(every: timedelta, now: datetime) -> datetime:
    """The start of the interval `now` falls in, counted from the epoch (every hour on the
    hour): the same in every process. In whole microseconds, so a start is its own tick."""
    step = every // _MICROSECOND
    since = (now - EPOCH) // _MICROSECOND
    return EPOCH + (since - since % step) * _MICROSECOND


@dataclass(frozen=True)
class Interval:
    every: timedelta

    def tick(self, now: datetime) -> datetime:
        return current_tick(self.every, now)

    def next_tick(self, now: datetime) -> datetime:
        return self.tick(now) + self.every


@dataclass(frozen=True)
class Cron:
    """Five fields (minute hour day month weekday), or six with seconds last, as croniter
    reads them: "0 3 * * *" is every day at 03:00 UTC."""

    expression: str

    def __post_init__(self) -> None:
        if not croniter.is_valid(self.expression):
            raise ValueError(f"not a cron expression: {self.expression!r}")

    def tick(self, now: datetime) -> datetime:
        # The latest start at or before `now`: the one before the next (croniter's steps are
        # strict, so `now` on a start is that start's tick).
        return self._step(self.next_tick(now), backwards=True)

    def next_tick(self, now: datetime) -> datetime:
        return self._step(now, backwards=False)

    def _step(self, start: datetime, *, backwards: bool) -> datetime:
        steps = croniter(self.expression, start.astimezone(UTC))
        found: datetime = steps.get_prev(datetime) if backwards else steps.get_next(datetime)
        return found
