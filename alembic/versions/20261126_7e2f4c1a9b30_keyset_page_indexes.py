"""users and jobs: an index for each list's keyset order, so a page seeks instead of skipping

Revision ID: 7e2f4c1a9b30
Revises: 5b1c9e07d2a4
Create Date: 2026-11-26 09:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "7e2f4c1a9b30"
down_revision: str | None = "5b1c9e07d2a4"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (name, table, columns): users oldest first; jobs newest first (the same index read backwards),
# unfiltered, by status and by name. The trailing id makes the order total, as the cursor needs.
INDEXES = (
    ("ix_users_created_at_id", "users", ["created_at", "id"]),
    ("ix_jobs_created_at_id", "jobs", ["created_at", "id"]),
    ("ix_jobs_status_created_at_id", "jobs", ["status", "created_at", "id"]),
    ("ix_jobs_name_created_at_id", "jobs", ["name", "created_at", "id"]),
)


def upgrade() -> None:
    for name, table, columns in INDEXES:
        op.create_index(name, table, columns)


def downgrade() -> None:
    for name, table, _ in reversed(INDEXES):
        op.drop_index(name, table_name=table)
