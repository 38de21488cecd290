"""The declared jobs: which modules define them, and what each one is.

A job is an async function decorated with `@job()`. Its first parameter is its payload, a
pydantic model defined beside it (what the job row stores, as JSON); every keyword-only
parameter is a resource it asks for by type (`session: AsyncSession`, `mailer: Mailer`,
`settings: Settings`, `info: JobInfo` ...), given by the runner (see JobRunner).

A job declared with `every=` or `cron=` is periodic: the scheduler enqueues it once per tick
across the fleet (see scheduler). `every` is a timedelta, or a function of the settings (None:
off); `cron` a cron expression, in UTC ("0 3 * * *": every day at 03:00).

The API, the embedded dispatcher and the Celery worker all call `load_jobs()`, which imports
JOB_MODULES, so every process knows the same jobs whatever else it happens to import.
"""

import importlib
import inspect
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from functools import cached_property
from typing import Any, Concatenate, Generic, TypeVar, cast, get_type_hints

from pydantic import BaseModel, ValidationError

from app.core.config import Settings
from app.services.schedules import Cron, Interval, Schedule

# Every module that defines jobs. A job defined elsewhere is unknown to the workers.
JOB_MODULES: tuple[str, ...] = (
    "app.services.tasks",
    "app.services.api_keys",
    "app.services.retention",
)

# Errors that no retry can fix: a payload that does not fit the job (pydantic's
# ValidationError is a ValueError), a call that does not fit its signature.
PERMANENT_ERRORS: tuple[type[Exception], ...] = (TypeError, ValueError)

Payload = TypeVar("Payload", bound=BaseModel)
Every = timedelta | Callable[[Settings], timedelta | None]


@dataclass(frozen=True)
class JobInfo:
    """A resource: which job and attempt is running, and the request that enqueued it."""

    id: uuid.UUID
    name: str
    attempt: int
    request_id: str | None


@dataclass(frozen=True, eq=False)
class JobDefinition(Generic[Payload]):
    name: str
    run: Callable[..., Awaitable[None]]
    payload_type: type[Payload]
    max_attempts: int = 8
    # Errors that make the job dead at once instead of being retried.
    permanent_errors: tuple[type[Exception], ...] = PERMANENT_ERRORS
    every: Every | None = None
    cron: Cron | None = None

    def schedule(self, settings: Settings) -> Schedule | None:
        """When a periodic job's ticks start under these settings; None when it is not periodic."""
        if self.cron is not None:
            return self.cron
        every = self.every(settings) if callable(self.every) else self.every
        return Interval(every) if every is not None and every > timedelta(0) else None

    @cached_property
    def resources(self) -> dict[str, type]:
        """The resources the job asks for: keyword-only parameter name -> type."""
        hints = get_type_hints(self.run)
        return {
            name: hints[name]
            for name, parameter in inspect.signature(self.run).parameters.items()
            if parameter.kind is inspect.Parameter.KEYWORD_ONLY
        }


@dataclass
class Registry:
    definitions: dict[str, JobDefinition[Any]] = field(default_factory=dict)

    def add(self, definition: JobDefinition[Any]) -> None:
        known = self.definitions.get(definition.name)
        if known is not None and known.run is not definition.run:
            raise ValueError(f"job {definition.name!r} is defined twice")
        self.definitions[definition.name] = definition

    def get(self, name: str) -> JobDefinition[Any] | None:
        return self.definitions.get(name)


registry = Registry()


def job(
    *,
    max_attempts: int = 8,
    permanent_errors: tuple[type[Exception], ...] = PERMANENT_ERRORS,
    every: Every | None = None,
    cron: str | None = None,
) -> Callable[[Callable[Concatenate[Payload, ...], Awaitable[None]]], JobDefinition[Payload]]:
    """Declare an async function `(payload: SomeModel, *, resource: Type, ...)` as a job; with
    `every` or `cron`, a periodic one, whose payload model must need no values (it is made
    empty). A cron expression that does not parse is refused here, at import."""
    if every is not None and cron is not None:
        raise TypeError("a periodic job takes every= or cron=, not both")
    schedule = Cron(cron) if cron is not None else None

    def declare(
        run: Callable[Concatenate[Payload, ...], Awaitable[None]],
    ) -> JobDefinition[Payload]:
        first = next(iter(inspect.signature(run).parameters.values()), None)
        payload_type = get_type_hints(run).get(first.name) if first is not None else None
        if not (isinstance(payload_type, type) and issubclass(payload_type, BaseModel)):
            raise TypeError(f"job {run.__name__}: its first parameter must be a pydantic model")
        if every is not None or schedule is not None:
            try:
                payload_type()
            except ValidationError:
                raise TypeError(f"periodic job {run.__name__}: its payload needs values") from None
        definition = JobDefinition(
            run.__name__,
            run,
            cast(type[Payload], payload_type),
            max_attempts,
            tuple(permanent_errors),
            every,
            schedule,
        )
        registry.add(definition)
        return definition

    return declare


def load_jobs(modules: tuple[str, ...] = JOB_MODULES) -> Registry:
    """Import the job modules (once per process) and return the registry they filled."""
    for module in modules:
        importlib.import_module(module)
    return registry
