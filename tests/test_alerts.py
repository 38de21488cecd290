"""The alerts, their unit tests and the dashboard, checked with promtool against a live server.

promtool comes from Debian's `prometheus` package (.ci/run installs it); CI fails without it.
The live /metrics is scraped from a real `python -m app serve`, with one process and with two
(whose samples are added up from PROMETHEUS_MULTIPROC_DIR), after some traffic and a job.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml  # type: ignore[import-untyped]  # installed with uvicorn[standard], no stubs

from app.core.config import Settings
from tests.conftest import IN_CI, PASSWORD
from tests.test_graceful_shutdown import start_server

ROOT = Path(__file__).parents[1]
PROMETHEUS = ROOT / "deploy" / "prometheus"
ALERTS = PROMETHEUS / "alerts.yml"
ALERT_TESTS = PROMETHEUS / "alerts.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "accounts-service.json"
TOKEN = "scrape-" + "s" * 40
# Made by Prometheus itself, not by the service.
PROMETHEUS_SERIES = {"up"}


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        message = "promtool is missing: apt-get install prometheus"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return found


def run(*command: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, input=stdin, capture_output=True, text=True, timeout=60, check=False
    )


def rules() -> list[dict[str, Any]]:
    loaded = yaml.safe_load(ALERTS.read_text())
    return [rule for group in loaded["groups"] for rule in group["rules"]]


# --- the rules and their unit tests -----------------------------------------------------------


def test_the_alert_rules_are_valid(promtool: str) -> None:
    result = run(promtool, "check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_alerts_pass_their_unit_tests(promtool: str) -> None:
    result = run(promtool, "test", "rules", str(ALERT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_scrape_configuration_is_valid(promtool: str) -> None:
    # Syntax only: the token file it names exists on the Prometheus server, not here.
    result = run(promtool, "check", "config", "--syntax-only", str(PROMETHEUS / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_seen_firing_in_the_unit_tests() -> None:
    tests = yaml.safe_load(ALERT_TESTS.read_text())["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test["alert_rule_test"]
        if case.get("exp_alerts")
    }
    assert {rule["alert"] for rule in rules()} == fired


def test_every_alert_has_a_severity_a_summary_and_a_runbook_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    runbooks = readme[readme.index("### Metrics and alerts") :]
    for rule in rules():
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert set(rule["annotations"]) == {"summary", "runbook"}, rule["alert"]
        assert f"`{rule['alert']}`" in runbooks, f"{rule['alert']} has no runbook line in README"


# --- metric names in PromQL -------------------------------------------------------------------

_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_VARIABLES = re.compile(r"\$\w+")
# A whole identifier not followed by "(": a function is followed by one.
_NAME = re.compile(r"(?<![\w:.])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()")
_OPERATORS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects."""
    for pattern in (_STRINGS, _MATCHERS, _RANGES, _GROUPING, _VARIABLES):
        expr = pattern.sub(" ", expr)
    return {name for name in _NAME.findall(expr) if name.lower() not in _OPERATORS}


def test_metric_names_are_read_from_promql() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (job, le) (rate(a_bucket{route!~"/x|y", le="+Inf"}'
        "[$__rate_interval]))) / on (job) group_left (x) b_total > 0.5 and c or vector(0)"
    )
    assert metric_names(expr) == {"a_bucket", "b_total", "c"}


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in panels(dashboard) for target in panel.get("targets", [])]


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row holds its panels


def exposed_names(text: str) -> set[str]:
    """Every series name the exposition has, or would have once a labelled family has samples."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            names.add(name)
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


# --- a live server ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def live_metrics(tmp_path_factory: pytest.TempPathFactory) -> dict[int, str]:
    """/metrics of a real server after registrations, errors, probes and a job that ran, by
    number of processes. One process lists every family, labelled ones without samples too;
    several list those that have samples in one of them."""
    return {workers: _serve_and_scrape(tmp_path_factory, workers) for workers in (1, 2)}


def _serve_and_scrape(tmp_path_factory: pytest.TempPathFactory, workers: int) -> str:
    tmp = tmp_path_factory.mktemp(f"serve-{workers}")
    (tmp / "multiproc").mkdir()
    app_variables = {name.upper() for name in Settings.model_fields}
    env = {name: value for name, value in os.environ.items() if name not in app_variables}
    env |= {
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp / 'app.db'}",
        "DATA_DIR": str(tmp / "data"),
        "METRICS_TOKEN": TOKEN,
        "PYTHONPATH": str(ROOT),
        "RATE_LIMIT_ENABLED": "false",
        "ACCESS_LOG": "false",
    }
    if workers > 1:
        env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp / "multiproc")
    process, base_url = start_server(env, tmp, tmp / "serve.log", workers)
    try:
        return _scrape_after_traffic(base_url)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _scrape_after_traffic(base_url: str) -> str:
    with httpx.Client(base_url=base_url, timeout=10) as client:
        for i in range(3):
            registered = client.post(
                "/api/v1/auth/register",
                json={"email": f"scraped{i}@example.com", "name": "S", "password": PASSWORD},
            )
            assert registered.status_code == 201, registered.text
        assert client.post("/api/v1/auth/register", json={}).status_code == 422
        assert client.get("/no/such/page").status_code == 404
        assert client.get("/health/ready").status_code == 200
        scrape = {"Authorization": f"Bearer {TOKEN}"}
        deadline = time.monotonic() + 30
        while True:  # until a welcome email's run is counted (mail goes to DATA_DIR/mail)
            response = client.get("/metrics", headers=scrape)
            assert response.status_code == 200
            if 'job_name="send_welcome_email",outcome="succeeded"' in response.text:
                return response.text
            assert time.monotonic() < deadline, response.text
            time.sleep(0.2)


@pytest.mark.parametrize("workers", [1, 2])
def test_the_live_metrics_pass_promtool_check_metrics(
    promtool: str, live_metrics: dict[int, str], workers: int
) -> None:
    result = run(promtool, "check", "metrics", stdin=live_metrics[workers])
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == ""


def test_the_live_metrics_have_what_the_alerts_and_the_dashboard_read(
    live_metrics: dict[int, str],
) -> None:
    exposed = exposed_names(live_metrics[1]) | PROMETHEUS_SERIES
    for rule in rules():
        used = metric_names(rule["expr"])
        assert used, rule["alert"]
        assert used <= exposed, f"{rule['alert']} reads {used - exposed}, which /metrics lacks"
    for expr in dashboard_exprs():
        used = metric_names(expr)
        assert used, expr
        assert used <= exposed, f"the dashboard reads {used - exposed}, which /metrics lacks"


# --- the dashboard ----------------------------------------------------------------------------


def test_the_dashboard_is_a_grafana_dashboard_with_unique_panels() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "accounts-service"
    assert {variable["name"] for variable in dashboard["templating"]["list"]} == {
        "datasource",
        "job",
        "instance",
    }
    ids = [panel["id"] for panel in panels(dashboard)]
    assert len(ids) == len(set(ids))
    for panel in panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]


def test_the_dashboard_shows_every_metric_of_the_service(live_metrics: dict[int, str]) -> None:
    """Every family the app defines (not the client library's process_ and python_ ones)."""
    families = {
        line.split(" ")[2] for line in live_metrics[1].splitlines() if line.startswith("# TYPE ")
    }
    defined = {
        name
        for name in families
        if not name.startswith(("process_", "python_")) and not name.endswith("_created")
    }
    shown = {
        re.sub(r"_(bucket|count|sum)$", "", name)
        for expr in dashboard_exprs()
        for name in metric_names(expr)
    }
    assert defined - shown == set()
