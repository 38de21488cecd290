"""Metrics of several processes (`serve --workers N`), added up from PROMETHEUS_MULTIPROC_DIR."""

import subprocess
import sys
from pathlib import Path

import pytest

from app.core import metrics
from tests.api.test_operations import samples

ROOT = Path(__file__).parents[2]
# A worker process: sets its admission limit, says so, and lives until its stdin closes.
WORKER = """
import sys
from app.core import metrics
metrics.ADMISSION_LIMIT.set(7)
print("set", flush=True)
sys.stdin.read()
"""


def test_the_live_gauges_of_an_exited_process_are_no_longer_summed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        for worker in workers:
            assert worker.stdout is not None
            assert worker.stdout.readline() == "set\n"
        monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
        assert samples(metrics.render().decode(), "admission_requests_limit") == {(): 14}
        exited = workers.pop()
        exited.communicate(timeout=30)  # closes its stdin: it exits
        assert samples(metrics.render().decode(), "admission_requests_limit") == {(): 7}
    finally:
        for worker in workers:
            worker.communicate(timeout=30)
