"""Declaring a job: what `@job()` refuses as the module is imported, before any process runs it."""

import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, cast

import pytest
from pydantic import BaseModel

from app.services import job_registry
from app.services.job_registry import Registry, job


class Empty(BaseModel):
    pass


class Target(BaseModel):
    user_id: uuid.UUID


@pytest.fixture(autouse=True)
def scratch_registry(monkeypatch: pytest.MonkeyPatch) -> Registry:
    """A registry of the test's own: the jobs declared here reach no process."""
    fresh = Registry()
    monkeypatch.setattr(job_registry, "registry", fresh)
    return fresh


def test_a_job_whose_first_parameter_is_not_a_pydantic_model_is_refused(
    scratch_registry: Registry,
) -> None:
    async def takes_an_id(user_id: uuid.UUID) -> None:
        return None

    async def takes_a_dict(payload: dict[str, str]) -> None:
        return None

    async def takes_nothing() -> None:
        return None

    async def unannotated(payload) -> None:  # type: ignore[no-untyped-def]  # the mistake tested
        return None

    # mypy refuses these too; this is what refuses them where nothing is type-checked.
    declare = cast(Callable[[Callable[..., Awaitable[None]]], Any], job())
    for run in (takes_an_id, takes_a_dict, takes_nothing, unannotated):
        expected = f"job {run.__name__}: its first parameter must be a pydantic model"
        with pytest.raises(TypeError, match=expected):
            declare(run)
    assert scratch_registry.definitions == {}


def _send_report() -> Callable[[Empty], Awaitable[None]]:
    """A new function named send_report each time, as two modules would each define one."""

    async def send_report(payload: Empty) -> None:
        return None

    return send_report


def test_a_job_name_defined_twice_is_refused(scratch_registry: Registry) -> None:
    first, other = _send_report(), _send_report()
    job()(first)
    job()(first)  # the same function declared again (its module imported twice): the same job

    with pytest.raises(ValueError, match="job 'send_report' is defined twice"):
        job()(other)

    known = scratch_registry.get("send_report")
    assert known is not None
    assert known.run is first


def test_a_periodic_job_whose_payload_needs_values_is_refused(scratch_registry: Registry) -> None:
    async def remind(payload: Target) -> None:
        return None

    async def tidy(payload: Empty) -> None:
        return None

    with pytest.raises(TypeError, match="periodic job remind: its payload needs values"):
        job(every=timedelta(hours=1))(remind)
    assert scratch_registry.definitions == {}

    job()(remind)  # not periodic: each enqueue gives its payload
    job(every=timedelta(hours=1))(tidy)  # periodic, with a payload made empty
    assert set(scratch_registry.definitions) == {"remind", "tidy"}
