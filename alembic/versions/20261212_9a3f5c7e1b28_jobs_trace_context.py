"""jobs: the trace context of the request that enqueued the job

Revision ID: 9a3f5c7e1b28
Revises: 4d8a6b2e9f17
Create Date: 2026-12-12 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "9a3f5c7e1b28"
down_revision: str | None = "4d8a6b2e9f17"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # W3C traceparent/tracestate as a propagator writes them; empty when tracing is off.
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("trace_context", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("trace_context")
