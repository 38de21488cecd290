"""The outbox and the embedded dispatcher, on each backend."""

import asyncio
import uuid
from collections import Counter
from datetime import timedelta

import pytest
from fastapi import FastAPI
from pydantic import BaseModel
from sqlalchemy import func, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.config import Settings
from app.db.base import utcnow
from app.db.models import Job, JobRun, JobStatus, User
from app.db.session import Database
from app.main import create_app
from app.services import job_registry, job_runner, job_store, jobs
from app.services.dispatcher import Dispatcher
from app.services.job_registry import JobDefinition, JobInfo, Payload, Registry, job, load_jobs
from app.services.job_runner import JobRunner
from app.services.job_store import ClaimedJob
from tests.conftest import MakeUser, empty_tables
from tests.jobs import wait_for_job

# Jobs that exist for these tests only.
runs: Counter[str] = Counter()
gate = asyncio.Event()
active = {"now": 0, "most": 0}


class Key(BaseModel):
    key: str


class Nothing(BaseModel):
    pass


@job(max_attempts=3)
async def record_run(payload: Key) -> None:
    runs[payload.key] += 1


@job(max_attempts=3)
async def always_fail(payload: Nothing) -> None:
    raise RuntimeError("this job always fails")


@job(max_attempts=3)
async def wait_for_gate(payload: Key) -> None:
    key = payload.key
    active["now"] += 1
    active["most"] = max(active["most"], active["now"])
    try:
        await gate.wait()
        runs[key] += 1
    finally:
        active["now"] -= 1


@pytest.fixture(autouse=True)
def _reset_test_jobs() -> None:
    runs.clear()
    gate.clear()
    active.update(now=0, most=0)


async def enqueue(db: Database, definition: JobDefinition[Payload], payload: Payload) -> uuid.UUID:
    async with db.transaction() as session:
        job = await jobs.enqueue(session, definition, payload)
    return job.id


async def test_a_committed_job_runs(app: FastAPI) -> None:
    job_id = await enqueue(app.state.db, record_run, Key(key="committed"))
    job = await wait_for_job(app.state.db, job_id, JobStatus.SUCCEEDED)
    assert runs["committed"] == 1
    assert job.attempts == 1
    assert job.locked_by is None


async def test_a_rolled_back_job_never_exists(app: FastAPI) -> None:
    db: Database = app.state.db

    async def fail_after_enqueueing() -> None:
        async with db.transaction() as session:
            await jobs.enqueue(session, record_run, Key(key="rolled-back"))
            await session.flush()
            raise RuntimeError("the request failed after enqueueing")

    with pytest.raises(RuntimeError):
        await fail_after_enqueueing()
    async with db.transaction() as session:
        assert await session.scalar(select(func.count()).select_from(Job)) == 0
    assert runs["rolled-back"] == 0


async def test_the_dispatcher_is_woken_by_the_commit_not_by_polling(
    database_url: str, tmp_path: object, settings: Settings
) -> None:
    """With a one-minute poll, only the after-commit wake can make the job run promptly."""
    slow_poll = settings.model_copy(update={"job_poll_seconds": 60.0})
    app = await asyncio.to_thread(create_app, slow_poll)  # building an app is sync work
    async with app.router.lifespan_context(app):
        job_id = await enqueue(app.state.db, record_run, Key(key="woken"))
        async with asyncio.timeout(5):
            await wait_for_job(app.state.db, job_id, JobStatus.SUCCEEDED)
        await app.state.jobs.stop()
        await empty_tables(app)


def count_claims(monkeypatch: pytest.MonkeyPatch) -> list[list[uuid.UUID]]:
    """The ids each claim statement took, from now on."""
    claims: list[list[uuid.UUID]] = []
    claim_due = job_store.claim_due

    async def counted(*args: object, **kwargs: object) -> list[job_store.ClaimedJob]:
        claimed = await claim_due(*args, **kwargs)  # type: ignore[arg-type]
        claims.append([job.id for job in claimed])
        return claimed

    monkeypatch.setattr(job_store, "claim_due", counted)
    return claims


async def test_a_job_enqueued_here_is_claimed_by_its_own_transaction(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The committing transaction writes the job as running, with its lease and first run, and
    it starts as the commit returns: no claim statement has to find it, and a round that only
    records its outcome asks for no more."""
    claims = count_claims(monkeypatch)
    slow_poll = settings.model_copy(update={"job_poll_seconds": 60.0})
    app = await asyncio.to_thread(create_app, slow_poll)  # building an app is sync work
    async with app.router.lifespan_context(app):
        db: Database = app.state.db
        dispatcher: Dispatcher = app.state.jobs
        try:
            async with asyncio.timeout(5):
                while not claims:  # the look at start, so it cannot overlap the commit below
                    await asyncio.sleep(0.01)
            await asyncio.sleep(0.3)  # on PostgreSQL, the look once it listens for announcements
            claims.clear()
            job_id = await enqueue(db, wait_for_gate, Key(key="handed-over"))
            assert active["now"] == 1  # started with the commit, not by a later round
            async with db.transaction() as session:
                job = await session.get(Job, job_id)
                [run] = await session.scalars(select(JobRun).where(JobRun.job_id == job_id))
            assert job is not None
            assert (job.status, job.attempts, job.locked_by) == (
                JobStatus.RUNNING,
                1,
                dispatcher.worker,
            )
            assert job.locked_until is not None
            assert job.locked_until > utcnow()
            assert (run.attempt, run.worker, run.outcome) == (1, dispatcher.worker, None)
            gate.set()
            job = await wait_for_job(db, job_id, JobStatus.SUCCEEDED)
            assert (job.attempts, job.locked_by) == (1, None)
            await asyncio.sleep(0.2)  # the round that recorded it is over
            assert claims == []
            async with db.transaction() as session:
                [run] = await session.scalars(select(JobRun).where(JobRun.job_id == job_id))
            assert run.outcome == "succeeded"
            assert runs["handed-over"] == 1
        finally:
            await dispatcher.stop()
            await empty_tables(app)


async def test_jobs_beyond_the_free_slots_are_claimed_in_rounds(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    claims = count_claims(monkeypatch)
    one_slot = settings.model_copy(update={"job_concurrency": 1, "job_poll_seconds": 60.0})
    app = await asyncio.to_thread(create_app, one_slot)
    async with app.router.lifespan_context(app):
        db: Database = app.state.db
        try:
            async with db.transaction() as session:
                first = await jobs.enqueue(session, wait_for_gate, Key(key="first"))
                second = await jobs.enqueue(session, record_run, Key(key="second"))
            await wait_for_job(db, second.id, JobStatus.QUEUED)  # no slot for it yet
            assert runs["second"] == 0
            gate.set()
            await wait_for_job(db, first.id, JobStatus.SUCCEEDED)
            await wait_for_job(db, second.id, JobStatus.SUCCEEDED)
            assert [second.id] in claims  # the round after the first finished took it
        finally:
            await app.state.jobs.stop()
            await empty_tables(app)


async def test_a_transaction_that_fails_to_commit_gives_its_slots_back(
    app: FastAPI, make_user: MakeUser
) -> None:
    """Each failed commit had claimed a slot for its job; were the slots not given back, the
    last job would find none and wait in the queue forever."""
    db: Database = app.state.db
    taken = await make_user(email="taken@example.com")

    async def enqueue_with_a_duplicate_email(attempt: int) -> None:
        async with db.transaction() as session:
            await jobs.enqueue(session, record_run, Key(key=f"lost-{attempt}"))
            # Flushed by the commit, where the unique email fails it.
            session.add(User(email=taken.email, name="Twin", hashed_password="x"))

    for attempt in range(app.state.settings.job_concurrency + 1):
        with pytest.raises(IntegrityError):
            await enqueue_with_a_duplicate_email(attempt)
    async with db.transaction() as session:
        lost = select(func.count()).select_from(Job).where(Job.name == record_run.name)
        assert await session.scalar(lost) == 0
    job_id = await enqueue(db, record_run, Key(key="after"))
    await wait_for_job(db, job_id, JobStatus.SUCCEEDED)
    assert sum(runs.values()) == 1


async def test_a_failing_job_is_retried_then_dead_with_its_error(app: FastAPI) -> None:
    job_id = await enqueue(app.state.db, always_fail, Nothing())
    job = await wait_for_job(app.state.db, job_id, JobStatus.DEAD)
    assert job.attempts == 3
    assert job.last_error == "RuntimeError: this job always fails"
    async with app.state.db.transaction() as session:
        outcomes = list(await session.scalars(select(JobRun.outcome).order_by(JobRun.attempt)))
    assert outcomes == ["failed", "failed", "dead"]


async def run_added_later(payload: Key) -> None:
    runs[payload.key] += 1


# A job of newer code, in no registry until a test adds it: as an older process meets it
# mid rolling deploy.
added_later = JobDefinition("added_later", run_added_later, Key, max_attempts=2)
UNKNOWN_HERE = "UnknownJob: no job named 'added_later' here"


async def add_job_of_newer_code(db: Database) -> uuid.UUID:
    async with db.transaction() as session:
        job = Job(name=added_later.name, payload={"key": "later"}, max_attempts=2)
        session.add(job)
    return job.id


async def runs_of(db: Database, job_id: uuid.UUID) -> list[tuple[int, str | None]]:
    """(attempt, outcome) of the job's finished runs, oldest first."""
    async with db.transaction() as session:
        rows = await session.execute(
            select(JobRun.attempt, JobRun.outcome)
            .where(JobRun.job_id == job_id, JobRun.finished_at.is_not(None))
            .order_by(JobRun.started_at)
        )
        return [(attempt, outcome) for attempt, outcome in rows]


async def test_the_dispatcher_queues_an_unknown_job_until_its_process_knows_it(
    app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """However often the name is unknown, no attempt is spent: it never goes dead for that."""
    db: Database = app.state.db
    job_id = await add_job_of_newer_code(db)
    tries = 3 * added_later.max_attempts
    async with asyncio.timeout(15):
        while len(await runs_of(db, job_id)) < tries:
            app.state.jobs.wake()  # a round now, not at the next poll: its retry is due soon
            await asyncio.sleep(0.05)
    monkeypatch.setitem(job_registry.registry.definitions, added_later.name, added_later)
    done = await wait_for_job(db, job_id, JobStatus.SUCCEEDED)
    assert done.attempts == 1
    assert runs == {"later": 1}
    finished = await runs_of(db, job_id)
    assert len(finished) > tries
    assert finished[:-1] == [(1, "queued")] * (len(finished) - 1)
    assert finished[-1] == (1, "succeeded")


async def test_a_celery_delivery_of_an_unknown_job_puts_it_back_uncounted(
    app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """run_one is what the Celery worker runs for each delivery."""
    db: Database = app.state.db
    await app.state.jobs.stop()  # only the runners below take the job
    job_id = await add_job_of_newer_code(db)
    older = JobRunner(db, app.state.settings)
    try:
        for _ in range(5 * added_later.max_attempts):
            tried_at = utcnow()
            assert await older.run_one(job_id, worker="celery:older")
            async with db.transaction() as session:
                job = await session.get(Job, job_id)
                assert job is not None
                assert (job.status, job.attempts) == (JobStatus.QUEUED, 0)
                assert (job.last_error or "").startswith(UNKNOWN_HERE)
                assert job.run_at.replace(tzinfo=tried_at.tzinfo) > tried_at
                assert job.published_at is None  # the relay publishes it again once due
                job.run_at = utcnow()  # time passes
    finally:
        await older.close()
    monkeypatch.setitem(job_registry.registry.definitions, added_later.name, added_later)
    newer = JobRunner(db, app.state.settings)
    try:
        assert await newer.run_one(job_id, worker="celery:newer")
    finally:
        await newer.close()
    done = await wait_for_job(db, job_id, JobStatus.SUCCEEDED)
    assert done.attempts == 1
    assert runs == {"later": 1}


async def test_a_payload_that_does_not_fit_the_job_is_dead_at_once(app: FastAPI) -> None:
    async with app.state.db.transaction() as session:
        job = Job(name=record_run.name, payload={"key": ["not", "a", "string"]}, max_attempts=3)
        session.add(job)
    done = await wait_for_job(app.state.db, job.id, JobStatus.DEAD)
    assert done.attempts == 1
    assert (done.last_error or "").startswith("ValidationError")
    assert runs == {}


@job(max_attempts=5, permanent_errors=(PermissionError,))
async def refused_for_good(payload: Nothing) -> None:
    raise PermissionError("the mailbox refuses us")


async def test_a_job_names_the_errors_that_no_retry_can_fix(app: FastAPI) -> None:
    job_id = await enqueue(app.state.db, refused_for_good, Nothing())
    done = await wait_for_job(app.state.db, job_id, JobStatus.DEAD)
    assert done.attempts == 1
    assert done.last_error == "PermissionError: the mailbox refuses us"


class Rename(BaseModel):
    user_id: uuid.UUID


@job(max_attempts=1)
async def rename_user(
    payload: Rename, *, session: AsyncSession, info: JobInfo, settings: Settings
) -> None:
    user = await session.get(User, payload.user_id)
    assert user is not None
    user.name = f"{info.name} attempt {info.attempt} for {settings.environment}"


async def test_a_job_gets_the_resources_its_signature_asks_for(
    app: FastAPI, make_user: MakeUser
) -> None:
    """Its session commits when the job returns, as a request's does."""
    user = await make_user(email="renamed@example.com")
    job_id = await enqueue(app.state.db, rename_user, Rename(user_id=user.id))
    await wait_for_job(app.state.db, job_id, JobStatus.SUCCEEDED)
    async with app.state.db.transaction() as session:
        renamed = await session.get(User, user.id)
    assert renamed is not None
    assert renamed.name == "rename_user attempt 1 for test"


class Unheard:
    """A resource no process provides."""


async def test_a_job_asking_for_a_resource_nobody_provides_is_refused_at_start(
    app: FastAPI,
) -> None:
    async def needs_unheard(payload: Nothing, *, client: Unheard) -> None:
        return None

    definition = JobDefinition("needs_unheard", needs_unheard, Nothing)
    with pytest.raises(TypeError, match="Unheard"):
        app.state.jobs.runner.check(definition)


class Weather:
    """A process resource no job of the service asks for (as an HTTP client would be)."""

    def __init__(self) -> None:
        self.closed = False

    async def close(self) -> None:
        self.closed = True


async def test_a_new_process_resource_reaches_the_job_that_asks_for_it_by_type(
    app: FastAPI, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given to the runner beside the usual ones; no context class edited. It is closed with
    the runner."""
    given: list[tuple[str, Weather]] = []
    monkeypatch.setattr(job_registry, "registry", Registry(dict(load_jobs().definitions)))

    @job(max_attempts=1)
    async def forecast(payload: Key, *, weather: Weather) -> None:
        given.append((payload.key, weather))

    weather = Weather()
    resources = [*job_runner.process_resources(settings), weather]
    runner = JobRunner(app.state.db, settings, resources=resources)
    claimed = ClaimedJob(uuid.uuid4(), forecast.name, {"key": "oslo"}, 1, 1, None)
    try:
        outcome = await runner.run(claimed)
    finally:
        await runner.close()

    assert (outcome.status, outcome.error) == (JobStatus.SUCCEEDED, None)
    assert given == [("oslo", weather)]
    assert weather.closed
    with pytest.raises(TypeError, match="forecast asks for \\['Weather'\\]"):
        JobRunner(app.state.db, settings)  # a process without it refuses at start


async def test_backoff_grows_exponentially_with_jitter(settings: Settings) -> None:
    base = settings.model_copy(update={"job_retry_base_seconds": 1, "job_retry_max_seconds": 60})
    delays = [job_runner.backoff(attempt, base).total_seconds() for attempt in (1, 2, 3, 4)]
    for attempt, delay in enumerate(delays, start=1):
        ceiling = 2 ** (attempt - 1)
        assert ceiling / 2 <= delay <= ceiling
    assert job_runner.backoff(20, base).total_seconds() <= 60


async def test_a_job_whose_lease_expired_runs_again(app: FastAPI) -> None:
    """A process that died mid-job leaves a running row behind; its lease runs out."""
    db: Database = app.state.db
    await app.state.jobs.stop()  # claim by hand, as a process that then dies
    job_id = await enqueue(db, record_run, Key(key="crashed"))
    [claimed] = await job_store.claim(
        db, worker="crashed-worker", limit=1, lease=timedelta(seconds=30)
    )
    async with db.transaction() as session:
        await session.execute(
            update(Job).where(Job.id == job_id).values(locked_until=utcnow() - timedelta(seconds=1))
        )
    survivor = Dispatcher(db, app.state.settings)
    survivor.start()
    try:
        job = await wait_for_job(db, job_id, JobStatus.SUCCEEDED)
    finally:
        await survivor.stop()
    assert claimed.id == job_id
    assert job.attempts == 2
    assert runs["crashed"] == 1
    async with db.transaction() as session:
        workers = list(await session.scalars(select(JobRun.worker).order_by(JobRun.attempt)))
    assert workers == ["crashed-worker", survivor.worker]


async def test_a_claim_takes_abandoned_jobs_first_then_pending_ones_as_they_fell_due(
    app: FastAPI,
) -> None:
    """Pending jobs come in run_at order (from ix_jobs_pending_run_at), never more than the
    limit; jobs whose lease ran out are taken over when the claim asks for them."""
    db: Database = app.state.db
    await app.state.jobs.stop()
    now = utcnow()
    newest, oldest, middle, crashed = [
        await enqueue(db, record_run, Key(key=key))
        for key in ("newest", "oldest", "middle", "crashed")
    ]
    async with db.transaction() as session:
        for job_id, age in ((newest, 1), (oldest, 30), (middle, 10)):
            await session.execute(
                update(Job).where(Job.id == job_id).values(run_at=now - timedelta(seconds=age))
            )
        await session.execute(
            update(Job)
            .where(Job.id == crashed)
            .values(
                status=JobStatus.RUNNING,
                attempts=1,
                locked_by="gone",
                locked_until=now - timedelta(seconds=1),
            )
        )
    lease = timedelta(seconds=30)
    async with db.statement() as connection:
        pending_only = await job_store.claim_due(connection, worker="w", limit=2, lease=lease)
    assert {job.id for job in pending_only} == {oldest, middle}  # RETURNING has no order
    async with db.statement() as connection:
        both = await job_store.claim_due(
            connection, worker="w", limit=2, lease=lease, include_abandoned=True
        )
    assert {job.id: job.attempts for job in both} == {crashed: 2, newest: 1}


async def test_an_abandoned_last_attempt_is_dead(app: FastAPI) -> None:
    db: Database = app.state.db
    await app.state.jobs.stop()
    job_id = await enqueue(db, record_run, Key(key="abandoned"))
    async with db.transaction() as session:
        await session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(
                status=JobStatus.RUNNING,
                attempts=3,
                locked_by="gone",
                locked_until=utcnow() - timedelta(seconds=1),
            )
        )
    await job_store.bury_abandoned(db)
    async with db.transaction() as session:
        job = await session.get(Job, job_id)
    assert job is not None
    assert job.status == JobStatus.DEAD
    assert runs["abandoned"] == 0


async def test_running_jobs_never_exceed_the_concurrency_limit(app: FastAPI) -> None:
    limit = app.state.settings.job_concurrency
    ids = [
        await enqueue(app.state.db, wait_for_gate, Key(key=f"gate-{n}")) for n in range(limit + 4)
    ]
    async with asyncio.timeout(10):
        while active["now"] < limit:
            await asyncio.sleep(0.02)
    assert active["most"] == limit
    gate.set()
    for job_id in ids:
        await wait_for_job(app.state.db, job_id, JobStatus.SUCCEEDED)
    assert active["most"] == limit


async def test_stopping_returns_unfinished_jobs_to_the_queue(app: FastAPI) -> None:
    db: Database = app.state.db
    settings = app.state.settings.model_copy(update={"job_shutdown_grace_seconds": 0.1})
    await app.state.jobs.stop()
    dispatcher = Dispatcher(db, settings)
    dispatcher.start()
    job_id = await enqueue(db, wait_for_gate, Key(key="interrupted"))
    dispatcher.wake()
    await wait_for_job(db, job_id, JobStatus.RUNNING)
    await dispatcher.stop()
    async with db.transaction() as session:
        job = await session.get(Job, job_id)
        run = await session.scalar(select(JobRun).where(JobRun.job_id == job_id))
    assert job is not None
    assert (job.status, job.attempts, job.locked_by) == (JobStatus.QUEUED, 0, None)
    assert run is not None
    assert run.outcome == "interrupted"


async def test_two_dispatchers_never_run_the_same_job(app: FastAPI, settings: Settings) -> None:
    """Two processes' dispatchers on one database, each with its own engine."""
    await app.state.jobs.stop()
    keys = [f"shared-{n}" for n in range(60)]
    for key in keys:
        await enqueue(app.state.db, record_run, Key(key=key))
    other_db = Database.from_settings(settings)
    first = Dispatcher(app.state.db, settings)
    second = Dispatcher(other_db, settings)
    first.start()
    second.start()
    try:
        async with asyncio.timeout(20):
            while sum(runs.values()) < len(keys):
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)  # a double run would show up by now
    finally:
        await first.stop()
        await second.stop()
        await other_db.dispose()
    assert all(runs[key] == 1 for key in keys), runs
    async with app.state.db.transaction() as session:
        workers = set(await session.scalars(select(JobRun.worker)))
        run_count = await session.scalar(select(func.count()).select_from(JobRun))
    assert run_count == len(keys)
    assert workers <= {first.worker, second.worker}


async def test_retry_requeues_a_dead_job_with_fresh_attempts(app: FastAPI) -> None:
    job_id = await enqueue(app.state.db, always_fail, Nothing())
    await wait_for_job(app.state.db, job_id, JobStatus.DEAD)
    async with app.state.db.transaction() as session:
        job = await jobs.retry(session, job_id)
        assert (job.status, job.attempts) == (JobStatus.QUEUED, 0)
    job = await wait_for_job(app.state.db, job_id, JobStatus.DEAD)
    assert job.attempts == 3


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_a_retry_from_another_process_wakes_the_dispatcher_at_once(
    settings: Settings,
) -> None:
    """An operator's retry from the CLI commits in a process that runs no jobs: its NOTIFY
    wakes the dispatchers, which would otherwise find the job at their next poll."""
    slow_poll = settings.model_copy(update={"job_poll_seconds": 60.0})
    app = await asyncio.to_thread(create_app, slow_poll)  # building an app is sync work
    cli = Database.from_settings(settings)  # the CLI's process: no dispatcher
    async with app.router.lifespan_context(app):
        try:
            await asyncio.sleep(0.5)  # the dispatcher's look at start, and it listens
            async with cli.transaction() as session:
                job = Job(name=record_run.name, payload={"key": "retried"}, max_attempts=3)
                job.status, job.attempts = JobStatus.DEAD, 3
                session.add(job)
            async with cli.transaction() as session:
                await jobs.retry(session, job.id)
            async with asyncio.timeout(5):
                await wait_for_job(app.state.db, job.id, JobStatus.SUCCEEDED)
            assert runs["retried"] == 1
        finally:
            await app.state.jobs.stop()
            await cli.dispose()
            await empty_tables(app)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_the_dispatcher_listens_again_after_losing_its_connection(
    settings: Settings,
) -> None:
    slow_poll = settings.model_copy(update={"job_poll_seconds": 60.0})
    app = await asyncio.to_thread(create_app, slow_poll)
    producer = Database.from_settings(settings)  # a producer outside the service
    async with app.router.lifespan_context(app):
        try:
            await asyncio.sleep(0.5)
            async with producer.transaction() as session:
                killed = await session.scalar(
                    text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE query = 'LISTEN \"jobs_due\"' AND datname = current_database()"
                    )
                )
            assert killed == 1
            await asyncio.sleep(jobs.LISTEN_RETRY_S + 0.5)  # listening again
            async with producer.transaction() as session:
                job = Job(name=record_run.name, payload={"key": "announced"}, max_attempts=3)
                session.add(job)
                await jobs.announce(session)
            async with asyncio.timeout(5):
                await wait_for_job(app.state.db, job.id, JobStatus.SUCCEEDED)
        finally:
            await app.state.jobs.stop()
            await producer.dispose()
            await empty_tables(app)
