import secrets
import stat
from pathlib import Path

import pytest

from app.core.config import ConfigError, Settings, load_settings

APP_VARIABLES = (
    "HOST",
    "PORT",
    "DATABASE_URL",
    "ENVIRONMENT",
    "SECRET_KEY",
    "SMTP_HOST",
    "DATA_DIR",
    "FIRST_SUPERUSER_EMAIL",
    "FIRST_SUPERUSER_PASSWORD",
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No variable or .env of the machine running the tests leaks into them."""
    for name in APP_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


def test_defaults_match_the_design() -> None:
    settings = Settings(_env_file=None)
    assert settings.host == "127.0.0.1"
    assert settings.port == 8000
    assert settings.database_url == "sqlite+aiosqlite:///./data/app.db"
    assert settings.environment == "development"
    assert settings.data_dir == Path("data")


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOST", "0.0.0.0")
    monkeypatch.setenv("PORT", "9001")
    monkeypatch.setenv("DATABASE_URL", "postgresql+asyncpg://app@db:5432/accounts")
    settings = load_settings()
    assert (settings.host, settings.port, settings.database_url) == (
        "0.0.0.0",
        9001,
        "postgresql+asyncpg://app@db:5432/accounts",
    )


def test_env_file_in_the_working_directory_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("PORT=9002\nDATABASE_URL=sqlite+aiosqlite:///./elsewhere.db\n")
    settings = load_settings()
    assert settings.port == 9002
    assert settings.database_url == "sqlite+aiosqlite:///./elsewhere.db"


def test_environment_variables_override_the_env_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text("PORT=9002\n")
    monkeypatch.setenv("PORT", "9003")
    assert load_settings().port == 9003


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://postgres@localhost/app",
        "postgresql+psycopg2://postgres@localhost/app",
        "sqlite:///./data/app.db",
        "mysql+aiomysql://root@localhost/app",
        "not a database url",
    ],
    ids=["postgresql-sync", "psycopg2", "sqlite-sync", "mysql", "garbage"],
)
def test_unusable_database_url_is_one_line_naming_database_url(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.setenv("DATABASE_URL", url)
    with pytest.raises(ConfigError) as raised:
        load_settings()
    message = str(raised.value)
    assert "DATABASE_URL" in message
    assert "\n" not in message


def test_sync_driver_error_names_the_async_driver_to_use(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://postgres@localhost/app")
    with pytest.raises(ConfigError, match=r"postgresql\+asyncpg://"):
        load_settings()


def test_a_listen_url_that_is_not_postgresql_is_refused_without_echoing_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DATABASE_LISTEN_URL", "mysql://app:s3cret@db/app")
    with pytest.raises(ConfigError, match="DATABASE_LISTEN_URL") as raised:
        load_settings()
    assert "s3cret" not in str(raised.value)


def test_invalid_port_is_one_line_naming_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "70000")
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert str(raised.value).startswith("PORT")
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(
    "secret_key", [None, "", "changethis", "short-but-not-a-placeholder"], ids=repr
)
def test_production_refuses_a_missing_placeholder_or_short_secret_key(
    monkeypatch: pytest.MonkeyPatch, secret_key: str | None
) -> None:
    monkeypatch.setenv("ENVIRONMENT", "production")
    if secret_key is not None:
        monkeypatch.setenv("SECRET_KEY", secret_key)
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert "SECRET_KEY" in str(raised.value)
    assert "\n" not in str(raised.value)


def test_production_accepts_a_long_random_secret_key(monkeypatch: pytest.MonkeyPatch) -> None:
    key = secrets.token_urlsafe(36)
    assert len(key) == 48
    monkeypatch.setenv("ENVIRONMENT", "production")
    monkeypatch.setenv("SECRET_KEY", key)
    monkeypatch.setenv("SMTP_HOST", "smtp.example.com")
    settings = load_settings()
    assert settings.signing_key == key


def test_production_refuses_to_start_without_an_smtp_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENVIRONMENT", "production")
    monkeypatch.setenv("SECRET_KEY", secrets.token_urlsafe(36))
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert str(raised.value) == "SMTP_HOST must be set in production: emails carry login links"
    monkeypatch.setenv("ENVIRONMENT", "development")
    assert load_settings().smtp_host == ""  # development writes mail to files instead


def test_development_without_secret_key_generates_one_under_data_dir(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path / "data")
    key = settings.signing_key
    assert len(key) >= 32
    assert (tmp_path / "data" / "secret_key").read_text().strip() == key


def test_generated_secret_key_is_stable_across_settings_instances(tmp_path: Path) -> None:
    first = Settings(_env_file=None, data_dir=tmp_path / "data").signing_key
    second = Settings(_env_file=None, data_dir=tmp_path / "data").signing_key
    assert first == second


def test_generated_secret_key_file_is_readable_only_by_its_owner(tmp_path: Path) -> None:
    Settings(_env_file=None, data_dir=tmp_path / "data").signing_key  # noqa: B018
    mode = stat.S_IMODE((tmp_path / "data" / "secret_key").stat().st_mode)
    assert mode == 0o600


def test_generating_the_secret_key_leaves_no_draft_files(tmp_path: Path) -> None:
    Settings(_env_file=None, data_dir=tmp_path / "data").signing_key  # noqa: B018
    assert [path.name for path in (tmp_path / "data").iterdir()] == ["secret_key"]


def test_explicit_secret_key_is_used_and_nothing_is_written(tmp_path: Path) -> None:
    key = secrets.token_urlsafe(36)
    settings = Settings(_env_file=None, secret_key=key, data_dir=tmp_path / "data")
    assert settings.signing_key == key
    assert not (tmp_path / "data").exists()
