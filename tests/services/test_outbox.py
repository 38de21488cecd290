"""Jobs are handed over on the session's own events: every commit of every session, savepoints
respected, nothing on rollback. A receiver that records stands in for the dispatcher."""

import uuid
from collections.abc import AsyncIterator, Callable
from datetime import timedelta

import pytest
from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.db.base import utcnow
from app.db.models import Job, JobStatus, User
from app.db.session import Database
from app.services import jobs, outbox, tasks


class Receiver:
    def __init__(self) -> None:
        self.offered: list[list[uuid.UUID]] = []
        self.committed: list[bool] = []
        self.woken = 0

    def committing(self, session: Session, enqueued: list[Job]) -> Callable[[bool], None]:
        self.offered.append([job.id for job in enqueued])
        return self.committed.append

    def wake(self) -> None:
        self.woken += 1


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[Database]:
    database = Database.from_settings(settings)
    yield database
    async with database.transaction() as session:
        await session.execute(delete(Job))
        await session.execute(delete(User))
    await database.dispose()


@pytest.fixture
def receiver(db: Database) -> Receiver:
    receiver = Receiver()
    outbox.attach(db, receiver)
    return receiver


def welcome() -> tasks.UserMail:
    return tasks.UserMail(user_id=uuid.uuid4())


async def test_a_plain_session_commit_hands_its_jobs_over(db: Database, receiver: Receiver) -> None:
    """As sqladmin or a script commits: a factory of their own, no Database.transaction()."""
    async with async_sessionmaker(db.engine)() as session:
        job = await jobs.enqueue(session, tasks.send_welcome_email, welcome())
        job_id = job.id  # expired by the commit
        await session.commit()
    assert receiver.offered == [[job_id]]
    assert receiver.committed == [True]


async def test_a_job_added_without_enqueue_is_handed_over_too(
    db: Database, receiver: Receiver
) -> None:
    async with db.transaction() as session:
        job = Job(name="added_by_hand", payload={}, max_attempts=1)
        session.add(job)
        await session.flush()  # flushed before the commit: still found
    assert receiver.offered == [[job.id]]


async def test_jobs_not_ready_to_run_are_left_to_the_table(
    db: Database, receiver: Receiver
) -> None:
    """A row put straight into another status, or scheduled for later, is not to start now."""
    async with db.transaction() as session:
        dead = Job(name="dead_one", payload={}, max_attempts=1, status=JobStatus.DEAD)
        later = Job(name="later", payload={}, max_attempts=1, run_at=utcnow() + timedelta(hours=1))
        session.add_all([dead, later])
    assert receiver.offered == []


async def test_a_rolled_back_savepoint_hands_nothing_of_its_own_over(
    db: Database, receiver: Receiver
) -> None:
    async with db.transaction() as session:
        kept = await jobs.enqueue(session, tasks.send_welcome_email, welcome())
        savepoint = await session.begin_nested()
        await jobs.enqueue(session, tasks.send_welcome_email, welcome())
        await session.flush()
        await savepoint.rollback()
        savepoint = await session.begin_nested()
        await jobs.enqueue(session, tasks.send_welcome_email, welcome())  # never flushed
        await savepoint.rollback()
    assert receiver.offered == [[kept.id]]
    assert receiver.committed == [True]


async def test_a_released_savepoint_hands_its_jobs_over_with_the_commit(
    db: Database, receiver: Receiver
) -> None:
    async with db.transaction() as session:
        async with session.begin_nested():
            job = await jobs.enqueue(session, tasks.send_welcome_email, welcome())
        assert receiver.offered == []  # not yet: the outer transaction has not committed
    assert receiver.offered == [[job.id]]


async def test_a_rollback_hands_nothing_over(db: Database, receiver: Receiver) -> None:
    async def fail_after_enqueueing() -> None:
        async with db.transaction() as session:
            await jobs.enqueue(session, tasks.send_welcome_email, welcome())
            await session.flush()
            raise RuntimeError("the request failed")

    with pytest.raises(RuntimeError):
        await fail_after_enqueueing()
    assert (receiver.offered, receiver.committed, receiver.woken) == ([], [], 0)
    async with db.transaction():
        pass  # the next transaction of the process starts clean
    assert receiver.offered == []


async def test_a_commit_that_fails_tells_the_receiver(db: Database, receiver: Receiver) -> None:
    """The receiver had taken the jobs as the commit began; it must hear they were lost."""
    async with db.transaction() as session:
        session.add(User(email="taken@example.com", name="T", hashed_password="x"))

    async def enqueue_with_a_duplicate_email() -> None:
        async with db.transaction() as session:
            await jobs.enqueue(session, tasks.send_welcome_email, welcome())
            session.add(User(email="taken@example.com", name="Twin", hashed_password="x"))

    with pytest.raises(IntegrityError):
        await enqueue_with_a_duplicate_email()
    assert len(receiver.offered) == 1
    assert receiver.committed == [False]


async def test_a_retry_says_jobs_became_due_once_it_commits(
    db: Database, receiver: Receiver
) -> None:
    async with db.transaction() as session:
        job = Job(name="dead_one", payload={}, max_attempts=1)
        job.status, job.attempts = JobStatus.DEAD, 1
        session.add(job)
    receiver.offered.clear()

    async def retry_then_fail() -> None:
        async with db.transaction() as session:
            await jobs.retry(session, job.id)
            raise RuntimeError("rolled back")

    with pytest.raises(RuntimeError):
        await retry_then_fail()
    assert receiver.woken == 0
    async with db.transaction() as session:
        await jobs.retry(session, job.id)
        assert receiver.woken == 0
    assert (receiver.offered, receiver.woken) == ([], 1)


async def test_sessions_of_another_database_hand_nothing_to_this_receiver(
    db: Database, receiver: Receiver, settings: Settings
) -> None:
    other = Database.from_settings(settings)
    try:
        async with other.transaction() as session:
            await jobs.enqueue(session, tasks.send_welcome_email, welcome())
    finally:
        await other.dispose()
    assert receiver.offered == []
