"""`python -m app worker`'s metrics on WORKER_METRICS_PORT, on the rules of the API's /metrics.

Celery's prefork pool runs the jobs in child processes. The worker's main process points
PROMETHEUS_MULTIPROC_DIR at a fresh directory before anything imports prometheus_client (which
picks how samples are stored at import) and so before the pool forks: every pool process writes
its samples there, and a scrape adds them up with metrics.render(), as the API does for
`serve --workers N`. A scrape answers from a daemon thread of the main process, which runs no
job; the database gauges are the API's to report.
"""

import contextlib
import logging
import os
import socket
import sys
import tempfile
import threading
from collections.abc import Iterable, Iterator
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from app.core.config import ConfigError, Settings

logger = logging.getLogger(__name__)


def allowed(settings: Settings) -> bool:
    """A port is set, metrics are on, and production has a METRICS_TOKEN to ask for."""
    if not settings.worker_metrics_port or not settings.metrics_enabled:
        return False
    if settings.metrics_withheld:
        logger.warning("METRICS_TOKEN is not set: the worker serves no metrics in production")
        return False
    return True


@contextlib.contextmanager
def serving(settings: Settings) -> Iterator[None]:
    """Serve the metrics of this process and the ones it forks, if allowed, while inside."""
    if not allowed(settings):
        yield
        return
    if "prometheus_client" in sys.modules:
        raise RuntimeError("serving() must start before prometheus_client is imported")
    with tempfile.TemporaryDirectory(prefix="accounts-worker-metrics-") as path:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
        address = (settings.host, settings.worker_metrics_port)
        try:
            server = _Server(address, _QuietHandler)
        except OSError as exc:
            raise ConfigError(f"WORKER_METRICS_PORT: cannot listen on {address}: {exc}") from None
        server.set_app(_metrics_app(settings.metrics_token))
        # A forked pool process must not hold the listening socket once this process is gone.
        os.register_at_fork(after_in_child=server.socket.close)
        threading.Thread(target=server.serve_forever, name="worker-metrics", daemon=True).start()
        logger.info("worker metrics on http://%s:%d/metrics", *server.server_address[:2])
        try:
            yield
        finally:
            server.shutdown()
            server.server_close()


def _metrics_app(token: str) -> WSGIApplication:
    # Imported here, after serving() set PROMETHEUS_MULTIPROC_DIR.
    from app.core import metrics

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        headers = [("Content-Type", "application/json")]
        if environ.get("PATH_INFO") != "/metrics":
            status, body = "404 Not Found", b'{"detail":"Not Found"}'
        elif not metrics.scrape_authorized(environ.get("HTTP_AUTHORIZATION", ""), token):
            status, body = "401 Unauthorized", b'{"detail":"Not authenticated"}'
            headers.append(("WWW-Authenticate", "Bearer"))
        else:
            status, body = "200 OK", metrics.render(only=metrics.JOB_FAMILIES)
            headers = [("Content-Type", metrics.CONTENT_TYPE)]
        start_response(status, [*headers, ("Content-Length", str(len(body)))])
        return [body]

    return app


class _Server(ThreadingMixIn, WSGIServer):
    """A thread per scrape; IPv6 when HOST is an IPv6 address."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[WSGIRequestHandler]) -> None:
        infos = socket.getaddrinfo(*address, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        self.address_family = infos[0][0]
        super().__init__(address, handler)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """Scrapes leave no line on stderr."""
