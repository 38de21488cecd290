"""Which service code a measurement ran: others may be changing app/ while the bench runs."""

import hashlib
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def app_digest() -> str:
    """A digest of app/ as it is on disk now."""
    digest = hashlib.sha256()
    for path in sorted((ROOT / "app").rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(ROOT)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def fingerprint() -> dict[str, Any]:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return done.stdout.strip()

    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "app_changed_since_commit": bool(git("status", "--porcelain", "app")),
        "app_sha256": app_digest(),
    }
