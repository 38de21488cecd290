"""When periodic jobs' ticks start: intervals from the epoch, cron expressions in UTC."""

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest

from app.services.job_registry import job, registry
from app.services.retention import NoPayload
from app.services.schedules import Cron, Interval

DAILY_AT_3 = Cron("0 3 * * *")


def at(hour: int, minute: int = 0, second: int = 0, day: int = 1) -> datetime:
    return datetime(2026, 12, day, hour, minute, second, tzinfo=UTC)


def test_a_cron_tick_is_the_latest_start_at_or_before_now() -> None:
    assert DAILY_AT_3.tick(at(3)) == at(3)  # on the start: that tick
    assert DAILY_AT_3.tick(at(3, 0, 1)) == at(3)
    assert DAILY_AT_3.tick(at(23, 59, 59)) == at(3)
    assert DAILY_AT_3.tick(at(2, 59, 59)) == at(3, day=0 + 30) - timedelta(
        days=30
    )  # the day before


def test_the_next_cron_tick_is_the_first_start_after_now() -> None:
    assert DAILY_AT_3.next_tick(at(3)) == at(3, day=2)
    assert DAILY_AT_3.next_tick(at(2, 59, 59)) == at(3)


def test_cron_reads_its_expression_in_utc_whatever_the_zone_of_now() -> None:
    paris = timezone(timedelta(hours=1))
    now = datetime(2026, 12, 1, 4, 30, tzinfo=paris)  # 03:30 UTC
    assert DAILY_AT_3.tick(now) == at(3)


def test_cron_takes_a_seconds_field() -> None:
    each_other_second = Cron("* * * * * */2")
    assert each_other_second.tick(at(3, 0, 3)) == at(3, 0, 2)
    assert each_other_second.next_tick(at(3, 0, 3)) == at(3, 0, 4)


def test_an_interval_counts_from_the_epoch() -> None:
    hourly = Interval(timedelta(hours=1))
    assert hourly.tick(at(3, 59, 59)) == at(3)
    assert hourly.next_tick(at(3, 0, 0)) == at(4)


@pytest.fixture
def _forget_declared() -> Iterator[None]:
    yield
    registry.definitions.pop("nightly", None)


@pytest.mark.usefixtures("_forget_declared")
@pytest.mark.parametrize("expression", ["61 * * * *", "every night", "", "* * *"])
def test_a_job_with_a_cron_expression_that_does_not_parse_is_refused(expression: str) -> None:
    async def nightly(payload: NoPayload) -> None:
        pass

    with pytest.raises(ValueError, match="not a cron expression"):
        job(cron=expression)(nightly)
    assert "nightly" not in registry.definitions


@pytest.mark.usefixtures("_forget_declared")
def test_a_job_takes_every_or_cron_not_both() -> None:
    async def nightly(payload: NoPayload) -> None:
        pass

    with pytest.raises(TypeError, match="not both"):
        job(every=timedelta(days=1), cron="0 3 * * *")(nightly)
