"""jobs: an index of pending jobs by run_at, so a claim reads the next few, not the backlog

Revision ID: 5b1c9e07d2a4
Revises: 3da49b778cdc
Create Date: 2026-11-25 07:55:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "5b1c9e07d2a4"
down_revision: str | None = "3da49b778cdc"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PENDING = "status IN ('queued', 'failed')"


def upgrade() -> None:
    op.create_index(
        "ix_jobs_pending_run_at",
        "jobs",
        ["run_at"],
        postgresql_where=sa.text(PENDING),
        sqlite_where=sa.text(PENDING),
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_pending_run_at", table_name="jobs")
