"""jobs: a periodic job's tick, unique per job name; indexes for the retention job

Revision ID: 4d8a6b2e9f17
Revises: 7c4e2a91d3b5
Create Date: 2026-12-10 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "4d8a6b2e9f17"
down_revision: str | None = "7c4e2a91d3b5"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TICKED = sa.text("tick_at IS NOT NULL")
REVOKED = sa.text("revoked_at IS NOT NULL")


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("tick_at", sa.DateTime(timezone=True), nullable=True))
    # Only periodic jobs have a tick: the index stays as small as their history.
    op.create_index(
        "ux_jobs_name_tick_at",
        "jobs",
        ["name", "tick_at"],
        unique=True,
        postgresql_where=TICKED,
        sqlite_where=TICKED,
    )
    for table in ("login_sessions", "refresh_tokens"):
        op.create_index(f"ix_{table}_expires_at", table, ["expires_at"])
        op.create_index(
            f"ix_{table}_revoked_at",
            table,
            ["revoked_at"],
            postgresql_where=REVOKED,
            sqlite_where=REVOKED,
        )
    op.create_index("ix_idempotency_keys_created_at", "idempotency_keys", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_idempotency_keys_created_at", table_name="idempotency_keys")
    for table in ("refresh_tokens", "login_sessions"):
        op.drop_index(f"ix_{table}_revoked_at", table_name=table)
        op.drop_index(f"ix_{table}_expires_at", table_name=table)
    op.drop_index("ux_jobs_name_tick_at", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("tick_at")
