"""A real PgBouncer (Debian's `pgbouncer`) in transaction mode, started for one test run.

The tests' PgBouncer run (`make test-pgbouncer`), the scale test and the benchmark put one in
front of their PostgreSQL, with fewer server connections than the clients open, so that
statements of different clients do share server connections. deploy/pgbouncer/pgbouncer.ini is
the configuration an operator starts from; this one differs only in where it listens, logs and
authenticates.
"""

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from sqlalchemy.engine import make_url

START_TIMEOUT_S = 15.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class PgBouncer:
    """`pgbouncer` in front of the PostgreSQL server of `server_url`, on a port of its own.

    Every database of that server is reachable through it (a wildcard entry), as the same
    user, with `pool_size` server connections per database and user however many clients come.
    """

    def __init__(self, server_url: str, *, pool_size: int = 10, max_clients: int = 2000) -> None:
        binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
        if not Path(binary).exists():
            raise FileNotFoundError("pgbouncer is not installed (apt-get install pgbouncer)")
        self.binary = binary
        server = make_url(server_url)
        self.user = server.username or "postgres"
        self.port = _free_port()
        self.root = Path(tempfile.mkdtemp(prefix="pgbouncer-"))
        self.log = self.root / "pgbouncer.log"
        (self.root / "userlist.txt").write_text(f'"{self.user}" ""\n')
        (self.root / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = host={server.host or '127.0.0.1'} port={server.port or 5432}\n"
            "[pgbouncer]\n"
            "pool_mode = transaction\n"
            f"default_pool_size = {pool_size}\n"
            "reserve_pool_size = 0\n"
            f"max_client_conn = {max_clients}\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {self.root / 'userlist.txt'}\n"
            f"admin_users = {self.user}\n"
            f"logfile = {self.log}\n"
            f"pidfile = {self.root / 'pgbouncer.pid'}\n"
            # A test database is dropped WITH (FORCE) while the pool may hold connections to
            # it: those fail once, and the next client gets a fresh one.
            "server_login_retry = 1\n"
        )
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def url(self, database: str) -> str:
        """The SQLAlchemy URL of `database` through this PgBouncer."""
        return f"postgresql+asyncpg://{self.user}@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        argv = [self.binary]
        # PgBouncer refuses to run as root; it drops to the `postgres` account itself.
        if os.geteuid() == 0:
            account = pwd.getpwnam("postgres")
            for path in [self.root, *self.root.iterdir()]:
                os.chown(path, account.pw_uid, account.pw_gid)
            argv += ["-u", "postgres"]
        self._process = subprocess.Popen(
            [*argv, str(self.root / "pgbouncer.ini")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"pgbouncer exited at start:\n{self.log_tail()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"pgbouncer did not listen in {START_TIMEOUT_S} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is not None:
            # It ended before it was asked to: keep its log for whoever looks into it.
            print(f"pgbouncer had exited ({self._process.returncode}); its log: {self.log}")
            return
        if self._process is not None:
            self._process.terminate()  # SIGTERM: immediate shutdown
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def __enter__(self) -> "PgBouncer":
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
