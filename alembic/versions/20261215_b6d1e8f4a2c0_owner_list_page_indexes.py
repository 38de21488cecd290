"""api keys and login sessions: an index for each owner's list, newest first, so a page seeks

Revision ID: b6d1e8f4a2c0
Revises: 9a3f5c7e1b28
Create Date: 2026-12-15 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "b6d1e8f4a2c0"
down_revision: str | None = "9a3f5c7e1b28"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Live rows only (what the lists show): revoked API keys are kept, and a page never walks them.
LIVE = sa.text("revoked_at IS NULL")
TABLES = ("api_keys", "login_sessions")


def upgrade() -> None:
    for table in TABLES:
        op.create_index(
            f"ix_{table}_user_id_created_at_id",
            table,
            ["user_id", "created_at", "id"],
            postgresql_where=LIVE,
            sqlite_where=LIVE,
        )


def downgrade() -> None:
    for table in reversed(TABLES):
        op.drop_index(f"ix_{table}_user_id_created_at_id", table_name=table)
