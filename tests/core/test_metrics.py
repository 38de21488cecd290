"""Metrics of several processes (`serve --workers N`), added up from PROMETHEUS_MULTIPROC_DIR."""

import subprocess
import sys
import threading
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


def test_concurrent_scrapes_forget_an_exited_process_without_tripping(tmp_path: Path) -> None:
    """Scrapes render in threads, and workers scrape at once: two may drop the same files."""
    exited = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    pid = int(exited.stdout)
    errors: list[BaseException] = []

    def forget() -> None:
        try:
            metrics._forget_exited_processes(str(tmp_path))
        except BaseException as exc:
            errors.append(exc)

    for _ in range(100):
        for mode in ("livesum", "liveall", "livemax", "livemin", "livemostrecent"):
            (tmp_path / f"gauge_{mode}_{pid}.db").touch()
        threads = [threading.Thread(target=forget) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not list(tmp_path.glob("gauge_live*"))
    assert errors == []
