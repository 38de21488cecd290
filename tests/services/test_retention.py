"""Retention: prune_history deletes what is old, in batches, and never what is live."""

import asyncio
import uuid
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import REGISTRY
from sqlalchemy import select

from app.core.config import Settings
from app.db.base import utcnow
from app.db.models import IdempotencyKey, Job, JobRun, JobStatus, LoginSession, RefreshToken
from app.services import retention
from app.services.dispatcher import Dispatcher
from app.services.job_registry import job, registry
from app.services.retention import NoPayload
from app.services.schedules import current_tick
from tests.conftest import MakeUser, SmtpSink

DAY = timedelta(days=1)
TABLES = ("jobs", "job_runs", "login_sessions", "refresh_tokens", "idempotency_keys")


def pruned_rows_total() -> dict[str, float]:
    """The pruned_rows_total counter of each table, as /metrics would show it."""
    return {
        table: REGISTRY.get_sample_value("pruned_rows_total", {"table": table}) or 0.0
        for table in TABLES
    }


def old_job(
    status: JobStatus, *, age: timedelta, finished: timedelta | None = None, **kw: object
) -> Job:
    now = utcnow()
    fields: dict[str, object] = {"name": "send_welcome_email", "attempts": 1, "max_attempts": 3}
    fields |= kw
    return Job(
        payload={},
        status=status,
        created_at=now - age,
        updated_at=now - (finished if finished is not None else age),
        **fields,
    )


async def test_prune_deletes_what_is_old_and_keeps_what_is_live_in_batches(
    app: FastAPI, settings: Settings, make_user: MakeUser
) -> None:
    await app.state.jobs.stop()
    now = utcnow()
    gone = [old_job(JobStatus.SUCCEEDED, age=20 * DAY) for _ in range(5)]
    gone += [
        old_job(JobStatus.DEAD, age=100 * DAY),
        old_job(JobStatus.FAILED, age=100 * DAY, attempts=3),  # out of attempts: never runs
    ]
    kept = [
        old_job(JobStatus.SUCCEEDED, age=DAY),
        old_job(JobStatus.SUCCEEDED, age=20 * DAY, finished=DAY),  # finished only yesterday
        old_job(JobStatus.DEAD, age=30 * DAY),
        old_job(JobStatus.FAILED, age=100 * DAY, attempts=1),  # will retry
        old_job(JobStatus.QUEUED, age=100 * DAY, attempts=0),
        old_job(JobStatus.RUNNING, age=100 * DAY),
    ]
    user = await make_user()
    live, expired, ended, just_ended = (uuid.uuid4() for _ in range(4))

    def session(id: uuid.UUID, expires: timedelta, revoked: timedelta | None) -> LoginSession:
        return LoginSession(
            id=id,
            user_id=user.id,
            expires_at=now + expires,
            revoked_at=None if revoked is None else now - revoked,
        )

    def token(session_id: uuid.UUID, expires: timedelta, revoked: timedelta | None) -> RefreshToken:
        return RefreshToken(
            user_id=user.id,
            session_id=session_id,
            token_hash=uuid.uuid4().hex,
            expires_at=now + expires,
            revoked_at=None if revoked is None else now - revoked,
        )

    live_token, fresh_rotated = (
        token(live, 10 * DAY, None),
        token(live, 10 * DAY, timedelta(hours=1)),
    )
    async with app.state.db.transaction() as db_session:
        db_session.add_all(gone + kept)
        await db_session.flush()
        db_session.add_all(JobRun(job_id=j.id, attempt=1, worker="w") for j in gone[:5] + kept[:1])
        db_session.add_all(
            [
                session(live, 10 * DAY, None),
                session(expired, -2 * DAY, None),
                session(ended, 10 * DAY, 2 * DAY),
                session(just_ended, 10 * DAY, timedelta(hours=1)),
            ]
        )
        await db_session.flush()
        db_session.add_all(
            [
                live_token,
                fresh_rotated,
                token(live, 10 * DAY, 2 * DAY),  # rotated two days ago
                token(live, -timedelta(hours=1), None),  # expired
                token(expired, -2 * DAY, None),
                token(ended, 10 * DAY, 2 * DAY),
            ]
        )
        db_session.add_all(
            [
                IdempotencyKey(key="old", fingerprint="f", created_at=now - timedelta(hours=25)),
                IdempotencyKey(key="new", fingerprint="f", created_at=now - timedelta(hours=23)),
            ]
        )

    counted = pruned_rows_total()
    pruned = await retention.prune(app.state.db, settings, batch_size=2)

    assert pruned.deleted == {
        "jobs": 7,
        "job_runs": 5,
        "login_sessions": 2,
        "refresh_tokens": 2,  # the expired session's token went with it
        "idempotency_keys": 1,
    }
    after = pruned_rows_total()
    assert {table: after[table] - counted[table] for table in TABLES} == pruned.deleted
    assert pruned.batches == 4 + 1 + 1 + 1  # at most 2 rows a batch
    async with app.state.db.transaction() as db_session:
        assert set(await db_session.scalars(select(Job.id))) == {j.id for j in kept}
        assert set(await db_session.scalars(select(JobRun.job_id))) == {kept[0].id}
        assert set(await db_session.scalars(select(LoginSession.id))) == {live, just_ended}
        tokens = set(await db_session.scalars(select(RefreshToken.id)))
        assert tokens == {live_token.id, fresh_rotated.id}
        assert list(await db_session.scalars(select(IdempotencyKey.key))) == ["new"]


async def test_a_fractional_job_retention_days_keeps_jobs_for_that_many_hours(
    app: FastAPI, settings: Settings
) -> None:
    await app.state.jobs.stop()
    hour = timedelta(hours=1)
    older, younger = (old_job(JobStatus.SUCCEEDED, age=hours * hour) for hours in (13, 11))
    async with app.state.db.transaction() as session:
        session.add_all([older, younger])
    half_a_day = settings.model_copy(update={"job_retention_days": 0.5})
    pruned = await retention.prune(app.state.db, half_a_day)
    assert pruned.deleted["jobs"] == 1
    async with app.state.db.transaction() as session:
        assert list(await session.scalars(select(Job.id))) == [younger.id]


async def test_prune_keeps_a_periodic_jobs_current_tick(app: FastAPI, settings: Settings) -> None:
    """Deleting it would let another process enqueue the same tick again."""
    await app.state.jobs.stop()

    async def hourly_test_job(payload: NoPayload) -> None:
        pass

    definition = job(every=timedelta(hours=1))(hourly_test_job)
    try:
        tick = current_tick(timedelta(hours=1), utcnow())
        rows = [
            old_job(JobStatus.SUCCEEDED, age=timedelta(0), name=definition.name, tick_at=t)
            for t in (tick, tick - timedelta(hours=1))
        ]
        async with app.state.db.transaction() as session:
            session.add_all(rows)
        retain_nothing = settings.model_copy(update={"job_retention_days": 0})
        pruned = await retention.prune(app.state.db, retain_nothing)
    finally:
        registry.definitions.pop(definition.name)
    assert pruned.deleted["jobs"] == 1
    async with app.state.db.transaction() as session:
        assert list(await session.scalars(select(Job.tick_at))) == [tick]


async def test_pruning_under_concurrent_registrations_loses_no_live_job(
    app: FastAPI, settings: Settings, client: httpx.AsyncClient, smtp: SmtpSink
) -> None:
    retain_nothing = settings.model_copy(update={"job_retention_days": 0})
    count = 20
    registered = asyncio.Event()
    deleted = 0

    async def prune_all_along() -> None:
        """Until every registration's welcome job has been pruned, each once it had finished."""
        nonlocal deleted
        while not registered.is_set() or deleted < count:
            deleted += (await retention.prune(app.state.db, retain_nothing, batch_size=3)).deleted[
                "jobs"
            ]
            await asyncio.sleep(0.01)

    async def register(n: int) -> None:
        body = {"email": f"user{n}@example.com", "name": "N", "password": "correct horse battery"}
        response = await client.post("/api/v1/auth/register", json=body)
        assert response.status_code == 201, response.text

    pruner = asyncio.create_task(prune_all_along())
    await asyncio.gather(*(register(n) for n in range(count)))
    registered.set()
    messages = await smtp.wait_for(count)
    async with asyncio.timeout(10):
        await pruner
    assert sorted(m["To"] for m in messages) == sorted(f"user{n}@example.com" for n in range(count))
    assert deleted == count  # each job pruned once, after it had finished
    async with app.state.db.transaction() as session:
        assert list(await session.scalars(select(Job.status))) == []


async def test_prune_history_is_enqueued_and_run_every_prune_interval(
    app: FastAPI, settings: Settings
) -> None:
    await app.state.jobs.stop()
    hourly = settings.model_copy(update={"prune_interval_seconds": 3600})
    dispatcher = Dispatcher(app.state.db, hourly)
    dispatcher.start()
    try:
        async with asyncio.timeout(15):
            while True:
                async with app.state.db.transaction() as session:
                    status = await session.scalar(
                        select(Job.status).where(Job.name == "prune_history")
                    )
                if status == JobStatus.SUCCEEDED:
                    break
                await asyncio.sleep(0.05)
    finally:
        await dispatcher.stop()
    async with app.state.db.transaction() as session:
        tick = await session.scalar(select(Job.tick_at).where(Job.name == "prune_history"))
    assert tick == current_tick(timedelta(hours=1), utcnow())


async def test_pruning_keeps_the_jobs_waiting_for_a_retry_under_concurrent_registrations(
    app: FastAPI,
    settings: Settings,
    client: httpx.AsyncClient,
    smtp: SmtpSink,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every welcome job fails its first attempt (the SMTP server refuses it once), so each is
    running, then failed and waiting, then running again while prune loops with a retention
    of nothing: deleting any of them in between would lose its email."""
    retain_nothing = settings.model_copy(update={"job_retention_days": 0})
    count = 12
    refused: set[str] = set()
    accept = smtp.handle_DATA

    async def refuse_each_first_attempt(server: object, session: object, envelope: Any) -> str:
        recipient = envelope.rcpt_tos[0]
        if recipient not in refused:
            refused.add(recipient)
            return "451 4.3.0 Try again later"
        return await accept(server, session, envelope)

    monkeypatch.setattr(smtp, "handle_DATA", refuse_each_first_attempt)
    registered = asyncio.Event()
    deleted = 0

    async def prune_all_along() -> None:
        nonlocal deleted
        # Until every email went out and the finished jobs were pruned too.
        while not registered.is_set() or len(smtp.messages) < count or not deleted:
            pruned = await retention.prune(app.state.db, retain_nothing, batch_size=2)
            deleted += pruned.deleted["jobs"]
            await asyncio.sleep(0.005)

    async def register(n: int) -> None:
        body = {"email": f"retry{n}@example.com", "name": "N", "password": "correct horse battery"}
        response = await client.post("/api/v1/auth/register", json=body)
        assert response.status_code == 201, response.text

    pruner = asyncio.create_task(prune_all_along())
    await asyncio.gather(*(register(n) for n in range(count)))
    registered.set()
    messages = await smtp.wait_for(count)
    async with asyncio.timeout(10):
        await pruner
    expected = sorted(f"retry{n}@example.com" for n in range(count))
    assert sorted(m["To"] for m in messages) == expected
    assert sorted(refused) == expected  # each was refused once, so each waited for a retry
    assert deleted > 0
