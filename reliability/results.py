"""Each scenario's figures: one line on the terminal and a JSON file under reliability/results/."""

import json
import os
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
# Collected for the terminal summary that conftest prints after the run.
LINES: list[str] = []


def _commit() -> str:
    result = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=RESULTS.parent,
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stdout.strip() or "unknown"


def line(name: str, figures: dict[str, Any]) -> str:
    keys = [
        ("accepted", "accepted"),
        ("delivered", "delivered"),
        ("lost", "lost"),
        ("duplicated", "duplicated"),
        ("resent_same_message_id", "resent"),
        ("answers_5xx_other", "5xx"),
        ("answers_503", "503"),
        ("transport_errors", "conn errors"),
        ("retries", "retries"),
        ("mail_delay_max_s", "s max mail delay after the fault"),
        ("mail_delay_p99_s", "s p99"),
        ("mail_delay_p50_s", "s p50"),
        ("registrations_per_s", "registrations/s"),
        ("emails_per_s_end_to_end", "emails/s end to end"),
        ("speedup_registrations", "x the 1 API + 1 worker rate"),
        ("cases", "generated cases"),
        ("server_errors", "5xx"),
        ("failing_cases", "failing cases"),
        ("rounds", "rounds"),
        ("rounds_with_one_account", "rounds with exactly one account"),
    ]
    parts = [f"{figures[key]} {label}" for key, label in keys if key in figures]
    verdict = figures.get("verdict", "")
    return f"{name}: " + ", ".join(parts) + (f" [{verdict}]" if verdict else "")


def record(name: str, figures: dict[str, Any]) -> Path:
    """Write reliability/results/NAME.json and print the scenario's line."""
    RESULTS.mkdir(exist_ok=True)
    document = {
        "scenario": name,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": _commit(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        **figures,
    }
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
    text = line(name, figures)
    LINES.append(text)
    print(f"\n[reliability] {text}")
    return path
