"""`python -m reliability.summary`: the README's tables from reliability/results/*.json."""

import json
from typing import Any

from reliability.results import RESULTS

FAULTS = [
    ("a-broker-outage", "a. Redis broker SIGKILLed, back empty 10 s later (Celery)"),
    ("b-worker-killed", "b. Celery worker SIGKILLed mid-delivery, new one 2 s later"),
    ("c-api-killed", "c. API SIGKILLed mid-request and mid-delivery, restarted (embedded)"),
    ("d-smtp-451", "d. SMTP answers 451 for 30 s (embedded)"),
    ("e-postgres-restart", "e. PostgreSQL stopped 5 s and started; embedded, not restarted"),
    ("f-sigterm", "f. SIGTERM under load (32 clients), new process once it exited"),
    ("g-postgres-restart-celery", "g. PostgreSQL stopped 5 s and started; Celery on Redis"),
]
COLUMNS = [
    ("accepted", "accepted"),
    ("delivered", "delivered"),
    ("lost", "lost"),
    ("duplicated", "duplicated"),
    ("resent_same_message_id", "resent (same Message-ID)"),
    ("answers_5xx_other", "5xx but 503"),
    ("answers_503", "503"),
    ("transport_errors", "conn. errors"),
    ("retries", "retries"),
    ("mail_delay_p50_s", "mail delay after the fault p50 (s)"),
    ("mail_delay_max_s", "max (s)"),
]


def load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _cell(value: Any) -> str:
    return "-" if value is None else f"{value:,}"


def faults_table() -> list[str]:
    rows = [
        "| scenario | " + " | ".join(title for _, title in COLUMNS) + " |",
        "|---" * (len(COLUMNS) + 1) + "|",
    ]
    for name, title in FAULTS:
        figures = load(name)
        if figures:
            cells = " | ".join(_cell(figures.get(key)) for key, _ in COLUMNS)
            rows.append(f"| {title} | {cells} |")
    return rows


def other_lines() -> list[str]:
    lines = []
    if contract := load("schemathesis"):
        lines.append(
            f"- schemathesis: {contract['cases']:,} generated cases over "
            f"{contract['operations_tested']} operations, {contract['server_errors']} 5xx, "
            f"{contract['failing_cases']} failing case(s): {contract['verdict']}"
        )
    if race := load("registration-race"):
        lines.append(
            f"- same-email race: {race['rounds']} rounds of {race['clients_per_round']} clients, "
            f"{race['rounds_with_one_account']} with exactly one account; answers {race['answers']}"
        )
    scaled, baseline = load("scale-2api-2worker"), load("scale-1api-1worker")
    for figures in (scaled, baseline):
        if figures:
            lines.append(
                f"- {figures['api_processes']} API + {figures['worker_processes']} worker(s): "
                f"{figures['accepted']:,} accepted, {figures['delivered']:,} delivered, "
                f"{figures['lost']} lost, {figures['duplicated']} duplicated, "
                f"{figures['evidence']['runs']:,} job runs, "
                f"{figures['overlapping_runs']} overlapping; "
                f"{figures['registrations_per_s']} registrations/s, "
                f"email {figures['email_after_201_seconds']} s after its 201"
            )
    return lines


def main() -> None:
    print("\n".join([*faults_table(), "", *other_lines()]))


if __name__ == "__main__":
    main()
