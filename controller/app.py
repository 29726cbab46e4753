"""The FastAPI application: routers, error mapping, shared state."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response

from controller.api.responses import SafeJSONResponse
from controller.audit.middleware import AuditMiddleware
from controller.audit.routes import router as audit_router
from controller.auth.routes import router as tokens_router
from controller.bootstrap.routes import router as bootstrap_router
from controller.bootstrap.service import BootstrapQueue
from controller.bootstrap.tasks import CeleryBootstrapQueue
from controller.console.mount import console_error, mount
from controller.db import make_engine, make_sessionmaker
from controller.dispatch import CeleryDispatcher, Dispatcher
from controller.errors import ControllerError
from controller.hosts.identity import Identities
from controller.hosts.routes import router as hosts_router
from controller.ingest.routes import router as ingest_router
from controller.jobs.events import EventHub
from controller.jobs.routes import router as jobs_router
from controller.jobs.streams import StreamSlots
from controller.keys.store import KeyStore
from controller.metrics import tally
from controller.metrics.http import LatencyMiddleware
from controller.metrics.registry import Metrics
from controller.metrics.routes import router as metrics_router
from controller.programs_routes import router as programs_router
from controller.reports.routes import router as reports_router
from controller.schedules.routes import router as schedules_router
from controller.settings import Settings, get_settings
from node_agent import __version__

log = logging.getLogger(__name__)


def create_app(
    settings: Settings | None = None,
    dispatcher: Dispatcher | None = None,
    bootstrap_queue: BootstrapQueue | None = None,
) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(
        title="fleettrace",
        version=__version__,
        description="Run eBPF traces across a fleet of Linux hosts and compare them.",
        default_response_class=SafeJSONResponse,
    )
    engine = make_engine(settings.database_url)
    app.state.settings = settings
    app.state.engine = engine
    app.state.sessions = make_sessionmaker(engine)
    app.state.events = EventHub(app.state.sessions, threads=settings.sse_poll_threads)
    app.state.stream_slots = StreamSlots(settings.sse_streams_per_token)
    app.state.dispatcher = dispatcher or CeleryDispatcher(
        settings.redis_url, KeyStore(settings.keys_dir)
    )
    app.state.bootstrap_queue = bootstrap_queue or CeleryBootstrapQueue(settings.redis_url)
    app.state.identities = Identities(settings.redis_url, settings.agent_redis_url or "")
    tally.attach(app.state.sessions, settings.redis_url)
    app.state.metrics = Metrics(
        settings=settings, sessions=app.state.sessions, engine=engine, slots=app.state.stream_slots
    )

    @app.exception_handler(ControllerError)
    async def _controller_error(request: Request, exc: ControllerError) -> Response:
        if (shown := console_error(request, exc)) is not None:
            return shown
        return SafeJSONResponse(
            status_code=exc.status, content={"detail": exc.detail}, headers=exc.headers
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        if (shown := console_error(request, exc)) is not None:
            return shown
        # FastAPI's own answer, but it echoes the input: a lone surrogate there was a 500.
        return SafeJSONResponse(status_code=422, content={"detail": jsonable_encoder(exc.errors())})

    @app.get("/healthz", operation_id="health", tags=["meta"])
    def health() -> dict[str, str]:
        """Liveness for load balancers: no token, no data."""
        return {"status": "ok"}

    for router in (hosts_router, bootstrap_router, jobs_router, programs_router, tokens_router):
        app.include_router(router)
    app.include_router(schedules_router)
    app.include_router(reports_router)
    app.include_router(audit_router)
    app.include_router(ingest_router)
    app.include_router(metrics_router)
    mount(app)
    app.add_middleware(AuditMiddleware)
    # Outermost: the time includes the audit record's write.
    app.add_middleware(LatencyMiddleware, histogram=app.state.metrics.requests)
    return app
