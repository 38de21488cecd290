"""Handing committed jobs to whoever runs them in this process, on SQLAlchemy's session events.

Enqueueing is an INSERT in the caller's transaction (the outbox). Listeners on the Session
class see every commit of every session of this process, the request's, sqladmin's, a
script's: just before a commit that adds jobs, the receiver attached to that session's engine
(the embedded dispatcher, or the relay to Celery) may take the jobs it can start, changing
them before the final flush; once the commit went through, it starts them. A job added inside
a savepoint that was rolled back is no longer in the session and is not handed over; a
transaction that rolls back, or fails to commit, hands nothing over. A transaction that made
jobs due again (an operator's retry) says so with `jobs_due()`.
"""

from collections.abc import Callable
from typing import Protocol
from weakref import WeakKeyDictionary

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import UnboundExecutionError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session, SessionTransaction, UOWTransaction
from sqlalchemy.pool import Pool

from app.db.base import utcnow
from app.db.models import Job, JobStatus
from app.db.session import Database

# Session.info keys.
_ADDED = "outbox_added"  # the jobs flushed so far in this transaction
_DUE = "outbox_due"  # this transaction made jobs due again
_COMMITTING = "outbox_committing"  # what to tell once the commit went through, or did not


class Receiver(Protocol):
    """Whoever runs jobs in this process: the embedded dispatcher, or the relay to Celery."""

    def committing(self, session: Session, jobs: list[Job]) -> Callable[[bool], None]:
        """Called just before a transaction that adds `jobs` commits. It may take some for
        itself, changing them before they are written; what it returns is told whether the
        commit went through."""
        ...

    def wake(self) -> None:
        """Jobs may be due in the table."""
        ...


# Keyed by the engine's pool: every session of one Database shares it, whatever options
# (isolation level, SQLite writer) its factory adds to the engine.
_receivers: WeakKeyDictionary[Pool, Receiver] = WeakKeyDictionary()


def attach(db: Database, receiver: Receiver) -> None:
    """From now on, the commits of sessions on `db` hand their jobs to `receiver`."""
    if not event.contains(Session, "before_commit", _before_commit):
        event.listen(Session, "before_flush", _before_flush)
        event.listen(Session, "before_commit", _before_commit)
        event.listen(Session, "after_commit", _after_commit)
        event.listen(Session, "after_transaction_end", _after_transaction_end)
    _receivers[db.engine.sync_engine.pool] = receiver


def detach(db: Database, receiver: Receiver) -> None:
    """Commits on `db` no longer hand jobs to `receiver` (if it was still the one attached)."""
    pool = db.engine.sync_engine.pool
    if _receivers.get(pool) is receiver:
        del _receivers[pool]


def jobs_due(session: AsyncSession | Session) -> None:
    """Jobs became due in this transaction: the receiver looks at the table once it commits."""
    sync = session.sync_session if isinstance(session, AsyncSession) else session
    sync.info[_DUE] = True


def _receiver(session: Session) -> Receiver | None:
    try:
        bind = session.get_bind()
    except UnboundExecutionError:
        return None
    engine = bind.engine if isinstance(bind, Connection | Engine) else None
    return None if engine is None else _receivers.get(engine.pool)


def _before_flush(session: Session, _flush: UOWTransaction, _instances: object) -> None:
    added = [obj for obj in session.new if isinstance(obj, Job)]
    if added:
        session.info.setdefault(_ADDED, []).extend(added)


def _ready(session: Session, job: Job) -> bool:
    """Still in the session (one of a rolled-back savepoint was expunged), not deleted, queued
    (or not yet given its default status), and not scheduled for later."""
    if job not in session or job in session.deleted:
        return False
    return job.status in (None, JobStatus.QUEUED) and (job.run_at is None or job.run_at <= utcnow())


def _before_commit(session: Session) -> None:
    if session.in_nested_transaction():
        return  # a savepoint released: its jobs commit with the outer transaction
    candidates = session.info.pop(_ADDED, [])
    candidates += [obj for obj in session.new if isinstance(obj, Job)]
    jobs = [job for job in dict.fromkeys(candidates) if _ready(session, job)]
    due = session.info.pop(_DUE, False)
    if not jobs and not due:
        return
    receiver = _receiver(session)
    if receiver is None:
        return
    committed = receiver.committing(session, jobs) if jobs else None
    session.info[_COMMITTING] = (receiver, committed, due)


def _after_commit(session: Session) -> None:
    pending = session.info.pop(_COMMITTING, None)
    if pending is None:
        return
    receiver, committed, due = pending
    if committed is not None:
        committed(True)
    if due:
        receiver.wake()


def _after_transaction_end(session: Session, transaction: SessionTransaction) -> None:
    """The end of every transaction, rolled back or closed too: what a failed commit or a
    rollback had collected is dropped."""
    if transaction.parent is not None:
        return  # a savepoint: its jobs were expunged if it rolled back
    session.info.pop(_ADDED, None)
    session.info.pop(_DUE, None)
    pending = session.info.pop(_COMMITTING, None)
    if pending is not None and pending[1] is not None:
        pending[1](False)  # the commit did not go through
