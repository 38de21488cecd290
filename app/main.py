"""The application factory: routers, error handlers and the lifespan."""

import collections
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, routing
from fastapi.middleware.cors import CORSMiddleware
from fastapi.middleware.trustedhost import TrustedHostMiddleware
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.utils import generate_unique_id
from sqlalchemy import exc as sa_exc

from app.admin import mount_admin
from app.api import metrics as metrics_route
from app.api.docs import mount_docs
from app.api.v1 import health
from app.api.v1 import router as api_v1_router
from app.core import metrics, tracing
from app.core.config import Settings, load_settings
from app.core.errors import AppError, DatabaseUnavailable
from app.core.logging import configure_logging
from app.db.errors import DRIVER_ERRORS, is_unavailable
from app.db.session import Database
from app.middleware import (
    AdmissionMiddleware,
    RequestBodyMiddleware,
    RequestIdMiddleware,
    RequestMetricsMiddleware,
)
from app.pages import routes as pages
from app.services import health as health_service
from app.services import job_stats, startup
from app.services.dispatcher import Dispatcher
from app.services.job_registry import load_jobs
from app.services.rate_limits import RateLimits
from app.services.relay import Relay

logger = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    configure_logging(level=settings.log_level, json=settings.log_json)
    tracing.configure()  # once per process, from the OTEL_* variables

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db: Database = app.state.db
        await startup.ensure_first_superuser(db, settings)
        runner: Dispatcher | Relay = app.state.jobs
        runner.start()  # from now on, commits hand their jobs to it
        # What exists now lives as long as the process. Left to the collector, each full
        # collection scans it all, about 90 ms with the loop stopped: the p99 of every request
        # that waits behind it. Frozen, a full collection looks at newer objects only.
        gc.freeze()
        try:
            yield
        finally:
            gc.unfreeze()  # collectable again once the app is gone (tests start many)
            await runner.stop()
            await db.dispose()
            await app.state.rate_limits.close()

    app = FastAPI(
        title="Accounts service",
        version="1.0.0",
        summary="User accounts with durable background work.",
        lifespan=lifespan,
        openapi_url=None,  # mount_docs serves the schema and the pages, with local assets
        docs_url=None,
        redoc_url=None,
        generate_unique_id_function=_operation_id,
    )
    mount_docs(app)
    app.state.settings = settings
    app.state.db = Database.from_settings(settings)
    tracing.instrument_engine(app.state.db.engine)
    # Built here, not in the lifespan: creating a Celery app is synchronous work.
    app.state.jobs = _job_runner(app.state.db, settings)
    app.state.rate_limits = RateLimits(settings)
    metrics.track_pool(app.state.db.engine, limit=settings.db_pool_size + settings.db_max_overflow)
    app.state.head_revision = startup.head_revision()  # read the migration files once
    load_jobs()  # the API knows the jobs the workers know
    app.state.readiness = health_service.shared_readiness(
        app.state.db, settings, head=app.state.head_revision
    )
    app.state.job_stats = job_stats.cached(app.state.db)
    app.include_router(api_v1_router)
    app.include_router(health.router)
    app.include_router(pages.router)
    mount_admin(app, app.state.db, settings)
    if settings.metrics_enabled and settings.metrics_withheld:
        logger.warning("METRICS_TOKEN is not set: /metrics is off in production")
    elif settings.metrics_enabled:
        app.include_router(metrics_route.router)
    app.add_middleware(
        AdmissionMiddleware,
        limit=settings.db_pool_size + settings.db_max_overflow,
        timeout=settings.db_pool_timeout,
        exempt=("/health", "/metrics"),
    )
    # Outside the gate: a slow upload waits for its body here, without holding a slot.
    app.add_middleware(
        RequestBodyMiddleware,
        max_bytes=settings.max_body_bytes,
        timeout=settings.request_body_timeout_seconds,
    )
    # Added last, so it runs first: the metrics and access log lines see the request id.
    app.add_middleware(
        RequestMetricsMiddleware, routes=app.router.routes, access_log=settings.access_log
    )
    app.add_middleware(RequestIdMiddleware)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["*"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Retry-After"],
        )
    if settings.trusted_hosts != ["*"]:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=settings.trusted_hosts)
    _add_error_handlers(app)
    tracing.instrument_app(app)
    _resolve_routes(app)
    return app


def _resolve_routes(app: FastAPI) -> None:
    """FastAPI resolves an included router's routes at the first request that reaches them:
    60-80 ms here with the event loop stopped, a stall of every request in flight. Resolving
    them now leaves the first request as fast as the next."""
    collections.deque(routing.iter_route_contexts(app.router.routes), maxlen=0)


def _operation_id(route: APIRoute) -> str:
    """`auth-register`, `users-read_me`: short and unique, so a generated client reads well.

    Every route in the schema has a tag (its router's); one without fails here, at startup."""
    if not route.include_in_schema:
        return generate_unique_id(route)  # never published
    if not route.tags:
        raise ValueError(f"the route {route.path} needs a tag: its operation id starts with it")
    return f"{route.tags[0]}-{route.name}"


def _job_runner(db: Database, settings: Settings) -> Dispatcher | Relay:
    """Without a broker jobs run in this process; with one, this process relays them to Celery."""
    if not settings.broker_url:
        return Dispatcher(db, settings)
    from app.worker import create_celery, publisher  # Celery is only imported when used

    return Relay(db, settings, publisher(create_celery(settings)))


def _add_error_handlers(app: FastAPI) -> None:
    async def app_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, AppError)
        return JSONResponse({"detail": exc.message}, exc.status_code, headers=exc.response_headers)

    async def database_error(request: Request, exc: Exception) -> JSONResponse:
        if not is_unavailable(exc):
            raise exc  # a genuine bug (bad SQL, a constraint we did not expect): a 500
        logger.warning("database unavailable on %s %s: %r", request.method, request.url.path, exc)
        return await app_error(request, DatabaseUnavailable())

    app.add_exception_handler(AppError, app_error)
    database_errors = (sa_exc.TimeoutError, sa_exc.DBAPIError, ConnectionError, TimeoutError)
    for error in (*database_errors, *DRIVER_ERRORS):
        app.add_exception_handler(error, database_error)
