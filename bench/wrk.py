"""Running wrk (Debian's package, installed on first use) with bench/lua/bench.lua."""

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

LUA = Path(__file__).parent / "lua" / "bench.lua"
MARKER = "BENCH_JSON "


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    print("wrk is missing: apt-get install -y wrk", flush=True)
    install = ["apt-get", "install", "-y", "-q", "wrk"]
    if subprocess.run(install, check=False).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], check=True)
        subprocess.run(install, check=True)
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("wrk could not be installed")
    return found


@dataclass(frozen=True)
class Load:
    """What to send: a mode of bench.lua and its arguments."""

    mode: str  # get | register | insert | token
    path: str = "/"
    file: str = "-"  # requests (get) or emails (token)
    password: str = "-"


@dataclass(frozen=True)
class WrkResult:
    requests: int
    duration_s: float
    connect_errors: int
    read_errors: int
    write_errors: int
    status_errors: int  # responses with a status of 400 or more
    timeouts: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float

    @property
    def errors(self) -> int:
        return (
            self.connect_errors
            + self.read_errors
            + self.write_errors
            + self.status_errors
            + self.timeouts
        )

    @property
    def rps(self) -> float:
        """Successful (2xx/3xx) responses per second."""
        return (self.requests - self.status_errors) / self.duration_s


def run_wrk(
    url: str,
    load: Load,
    *,
    connections: int,
    duration_s: float,
    nonce: str,
    threads: int = 2,
    timeout_s: int = 10,
) -> WrkResult:
    """One wrk run. A long --timeout keeps slow answers in the latency figures: with wrk's
    default of 2 s they would count only as timeouts, and the p99 would look better."""
    command = [
        ensure_wrk(),
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration_s:g}s",
        f"--timeout={timeout_s}s",
        "-s",
        str(LUA),
        url,
        "--",
        load.mode,
        load.path,
        load.file,
        nonce,
        load.password,
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    line = next((x for x in done.stdout.splitlines() if x.startswith(MARKER)), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    raw = json.loads(line.removeprefix(MARKER))
    return WrkResult(
        requests=raw["requests"],
        duration_s=raw["duration_us"] / 1e6,
        connect_errors=raw["connect_errors"],
        read_errors=raw["read_errors"],
        write_errors=raw["write_errors"],
        status_errors=raw["status_errors"],
        timeouts=raw["timeouts"],
        p50_ms=raw["p50_us"] / 1000,
        p90_ms=raw["p90_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        max_ms=raw["max_us"] / 1000,
        mean_ms=raw["mean_us"] / 1000,
    )
