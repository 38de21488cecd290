"""accounts: login sessions (refresh-token families as rows) and personal API keys

Revision ID: 7c4e2a91d3b5
Revises: 7e2f4c1a9b30
Create Date: 2026-12-01 11:50:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "7c4e2a91d3b5"
down_revision: str | None = "7e2f4c1a9b30"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Every family of refresh tokens becomes a session: live while any of its tokens is.
SESSIONS_FROM_FAMILIES = """
INSERT INTO login_sessions (id, user_id, created_at, last_used_at, expires_at, revoked_at)
SELECT family_id, user_id, min(created_at), max(created_at), max(expires_at),
       CASE WHEN count(*) = count(revoked_at) THEN max(revoked_at) END
FROM refresh_tokens
GROUP BY family_id, user_id
"""


def upgrade() -> None:
    op.create_table(
        "login_sessions",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("user_agent", sa.String(length=255), nullable=True),
        sa.Column("ip", sa.String(length=45), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_login_sessions_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_login_sessions")),
    )
    op.create_index(op.f("ix_login_sessions_user_id"), "login_sessions", ["user_id"])
    op.execute(SESSIONS_FROM_FAMILIES)

    # Tokens issued before this migration carry version 0: a user whose version moved on
    # since has had every one of them revoked already.
    with op.batch_alter_table("refresh_tokens") as batch:
        batch.add_column(
            sa.Column("token_version", sa.Integer(), nullable=False, server_default="0")
        )
        batch.drop_index("ix_refresh_tokens_family_id")
        batch.alter_column("family_id", new_column_name="session_id")
    with op.batch_alter_table("refresh_tokens") as batch:
        batch.create_index(op.f("ix_refresh_tokens_session_id"), ["session_id"])
        batch.create_foreign_key(
            op.f("fk_refresh_tokens_session_id_login_sessions"),
            "login_sessions",
            ["session_id"],
            ["id"],
            ondelete="CASCADE",
        )
    op.execute(
        "UPDATE refresh_tokens SET token_version = "
        "(SELECT token_version FROM users WHERE users.id = refresh_tokens.user_id)"
    )
    with op.batch_alter_table("refresh_tokens") as batch:
        batch.alter_column("token_version", server_default=None)

    op.create_table(
        "api_keys",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_api_keys_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_api_keys_key_hash")),
    )
    op.create_index(op.f("ix_api_keys_user_id"), "api_keys", ["user_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_api_keys_user_id"), table_name="api_keys")
    op.drop_table("api_keys")
    with op.batch_alter_table("refresh_tokens") as batch:
        batch.drop_constraint(
            op.f("fk_refresh_tokens_session_id_login_sessions"), type_="foreignkey"
        )
        batch.drop_index(op.f("ix_refresh_tokens_session_id"))
        batch.alter_column("session_id", new_column_name="family_id")
        batch.drop_column("token_version")
    with op.batch_alter_table("refresh_tokens") as batch:
        batch.create_index("ix_refresh_tokens_family_id", ["family_id"])
    op.drop_index(op.f("ix_login_sessions_user_id"), table_name="login_sessions")
    op.drop_table("login_sessions")
