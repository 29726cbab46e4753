"""Server-side commands: serve, ingest, worker, scheduler, migrate, tokens, openapi."""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import signal
import ssl
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import redis

from controller.cli import dead_letters
from controller.cli.errors import CliError
from controller.proctree import KeptChild, die_with_parent, watch_parent
from controller.settings import Settings, get_settings
from node_agent.wire import client_url

if TYPE_CHECKING:
    import uvicorn
    from fastapi import FastAPI
    from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)
# How long serve waits for its worker to stop (a warm shutdown finishes running steps).
CHILD_STOP_S = 15.0
# Open requests (live event streams end at once) get this long before uvicorn cancels them.
SHUTDOWN_GRACE_S = 10


def add_commands(sub: Any) -> None:
    serve = sub.add_parser("serve", help="migrate the database, then run the API and ingest")
    serve.add_argument("--no-ingest", action="store_true", help="without the ingest consumer")
    serve.add_argument(
        "--no-worker", action="store_true", help="without the controller worker (bootstrap)"
    )
    serve.add_argument(
        "--no-scheduler", action="store_true", help="without the schedule loop (run it elsewhere)"
    )
    serve.add_argument("--host", help="listen address (default from settings)")
    serve.add_argument("--port", type=int, help="listen port (default from settings)")
    serve.add_argument(
        "--tls-cert", type=Path, metavar="FILE", help="serve HTTPS: PEM certificate (chain)"
    )
    serve.add_argument("--tls-key", type=Path, metavar="FILE", help="its PEM private key")
    serve.add_argument(
        "--forwarded-allow-ips",
        metavar="IPS",
        help="proxies trusted for X-Forwarded-For/-Proto (comma-separated; default: none)",
    )
    serve.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="also serve /metrics without a token on this port (default: none; see --metrics-host)",
    )
    serve.add_argument(
        "--metrics-host", metavar="ADDR", help="the open metrics port's address (127.0.0.1)"
    )
    serve.set_defaults(func=cmd_serve)

    ingest = sub.add_parser(
        "ingest", help="run only the ingest consumer (scale out); `ingest dead-letters` lists"
    )
    ingest.add_argument(
        "--consumer", help="consumer name, unique per ingest process (default: <hostname>-<pid>)"
    )
    # Set by `serve` for the ingest process it starts: stop when that process is gone.
    ingest.add_argument("--parent", type=int, help=argparse.SUPPRESS)
    ingest.set_defaults(func=cmd_ingest)
    ingest_sub = ingest.add_subparsers(dest="ingest_command", required=False)
    dead_letters.add_command(ingest_sub)

    worker = sub.add_parser("worker", help="run the controller worker: SSH bootstrap tasks")
    worker.add_argument("--concurrency", type=int, help="tasks at once (default from settings)")
    # Set by `serve` for the worker it starts: stop when that process is gone.
    worker.add_argument("--parent", type=int, help=argparse.SUPPRESS)
    worker.set_defaults(func=cmd_worker)

    scheduler = sub.add_parser("scheduler", help="run only the schedule loop (any number at once)")
    scheduler.set_defaults(func=cmd_scheduler)

    migrate = sub.add_parser("migrate", help="bring the database schema up to date")
    migrate.set_defaults(func=cmd_migrate)

    tokens = sub.add_parser("tokens", help="manage API tokens directly in the database")
    tsub = tokens.add_subparsers(dest="tokens_command", required=True)
    create = tsub.add_parser("create", help="create a token and print it once")
    create.add_argument("--name", required=True)
    create.add_argument("--role", choices=["viewer", "operator", "admin"], default="admin")
    create.set_defaults(func=cmd_tokens_create)

    openapi = sub.add_parser("openapi", help="write the OpenAPI document")
    openapi.add_argument("--output", type=Path, default=Path("openapi/openapi.json"))
    openapi.set_defaults(func=cmd_openapi)


def _sessions(settings: Settings) -> sessionmaker[Session]:
    from controller.db import make_engine, make_sessionmaker

    return make_sessionmaker(make_engine(settings.database_url))


def cmd_migrate(args: argparse.Namespace) -> int:
    from controller.migrate import upgrade

    upgrade(get_settings().database_url)
    return 0


def cmd_tokens_create(args: argparse.Namespace) -> int:
    from controller.auth import service
    from controller.auth.models import Role
    from controller.migrate import upgrade

    settings = get_settings()
    upgrade(settings.database_url)
    with _sessions(settings)() as session:
        token, raw = service.create(session=session, name=args.name, role=Role(args.role))
        session.commit()
    sys.stdout.write(raw + "\n")
    log.info("created %s token %r (id %s)", args.role, args.name, token.id)
    return 0


def openapi_document() -> dict[str, object]:
    from controller.app import create_app

    settings = Settings(database_url="sqlite:///:memory:")
    return create_app(settings).openapi()


def cmd_openapi(args: argparse.Namespace) -> int:
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(openapi_document(), indent=2, sort_keys=True) + "\n")
    return 0


def _until_signalled() -> threading.Event:
    """Set by SIGTERM or SIGINT: the loop that watches it ends cleanly instead of dying."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def _follow_parent(args: argparse.Namespace) -> None:
    """As serve's child (`--parent PID`): end when serve ends, however it ends."""
    if args.parent:
        die_with_parent(args.parent)
        watch_parent(args.parent, grace_s=CHILD_STOP_S)


def _run_ingest(settings: Settings, stop: threading.Event) -> None:
    from controller.ingest.consumer import Ingest

    client = redis.Redis.from_url(client_url(settings.redis_url))
    Ingest(settings, _sessions(settings), client).run_forever(stop)


def cmd_ingest(args: argparse.Namespace) -> int:
    from controller.migrate import upgrade

    _follow_parent(args)
    settings = get_settings()
    if args.consumer:
        settings = settings.model_copy(update={"ingest_consumer": args.consumer})
    upgrade(settings.database_url)
    _run_ingest(settings, _until_signalled())
    return 0


def _run_scheduler(settings: Settings, stop: threading.Event) -> None:
    from controller.dispatch import CeleryDispatcher
    from controller.keys.store import KeyStore
    from controller.schedules.scheduler import Scheduler

    dispatcher = CeleryDispatcher(settings.redis_url, KeyStore(settings.keys_dir))
    Scheduler(settings, _sessions(settings), dispatcher).run_forever(stop)


def cmd_scheduler(args: argparse.Namespace) -> int:
    from controller.migrate import upgrade

    settings = get_settings()
    upgrade(settings.database_url)
    _run_scheduler(settings, _until_signalled())
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from controller.bootstrap.tasks import serve_worker
    from controller.migrate import upgrade

    _follow_parent(args)
    settings = get_settings()
    upgrade(settings.database_url)
    serve_worker(settings, concurrency=args.concurrency)
    return 0


def _child(name: str, *argv: str) -> KeptChild:
    """A `fleettrace` command as serve's child process, kept running, stopping with serve."""
    code = "import sys; from controller.cli import main; sys.exit(main(sys.argv[1:]))"
    command = [sys.executable, "-c", code, *argv, "--parent", str(os.getpid())]
    return KeptChild(command, name=name, stop_timeout_s=CHILD_STOP_S)


def _server(app: FastAPI, host: str, port: int, **options: Any) -> uvicorn.Server:
    """uvicorn for `app`; `options` are more uvicorn.Config arguments (e.g. ssl_certfile)."""
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn, also ending the live event streams at once when told to stop."""

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            super().handle_exit(sig, frame)
            app.state.events.close()

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="info",
        timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
        **options,
    )
    return Server(config)


def _tls(args: argparse.Namespace, settings: Settings) -> tuple[Path | None, Path | None]:
    """The certificate and key to serve HTTPS with, checked before anything starts."""
    cert = args.tls_cert or settings.tls_cert
    key = args.tls_key or settings.tls_key
    if (cert is None) != (key is None):
        raise CliError("--tls-cert and --tls-key go together: give both or neither")
    if cert is not None and key is not None:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise CliError(f"cannot serve HTTPS with {cert} and {key}: {reason}") from None
    return cert, key


def _open_metrics(args: argparse.Namespace, settings: Settings, app: FastAPI) -> Any:
    """The open /metrics port when one is configured (checked before anything starts)."""
    from controller.metrics.routes import serve_open_port

    port = args.metrics_port or settings.metrics_port
    if port is None:
        return None
    host = args.metrics_host or settings.metrics_host
    if not 1 <= port <= 65535:
        raise CliError(f"--metrics-port must be 1-65535, not {port}")
    try:
        server, _ = serve_open_port(app.state.metrics, host=host, port=port)
    except OSError as exc:
        raise CliError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from None
    return server


def ensure_keys(settings: Settings) -> None:
    """The first `serve` makes the signing key (as `fleettrace keys init` would)."""
    from controller.keys.store import KeyStore

    store = KeyStore(settings.keys_dir)
    kid, created = store.init()
    if created:
        log.warning(
            "created signing key %s in %s: install `fleettrace keys export` on hosts"
            " as /etc/fleettrace/controller-keys.pub (bootstrap does it)",
            kid,
            settings.keys_dir,
        )
    else:
        log.info("signing with key %s from %s", kid, settings.keys_dir)


# Young-generation size: a report of 1,000 hosts makes ~1 M containers that it keeps until the
# answer is sent; at the default 700 the growth rule ran ~7 full collections per report (+60 %
# to its GET, bench/README.md). Cyclic garbage waits at most this many allocations longer.
GC_YOUNG = 50_000


def tune_gc() -> None:
    """Collector settings for a long-lived server, set once at start-up for the whole process."""
    gc.freeze()  # start-up's objects live forever: full collections skip them
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG, middle, old)


def cmd_serve(args: argparse.Namespace) -> int:
    from controller.app import create_app
    from controller.cli.http import is_loopback
    from controller.migrate import upgrade

    settings = get_settings()
    cert, key = _tls(args, settings)
    host = args.host or settings.api_host
    proxies = args.forwarded_allow_ips or settings.forwarded_allow_ips
    if cert is None and not is_loopback(host):
        log.warning(
            "serving plain HTTP on %s: tokens cross the network in clear"
            " (use --tls-cert/--tls-key, or listen on loopback behind a TLS proxy)",
            host,
        )
    upgrade(settings.database_url)
    ensure_keys(settings)
    app = create_app(settings)
    metrics_server = _open_metrics(args, settings, app)
    tune_gc()
    server = _server(
        app,
        host,
        args.port or settings.api_port,
        ssl_certfile=cert,
        ssl_keyfile=key,
        # Only trusted proxies may set the client address the audit log records.
        proxy_headers=bool(proxies),
        forwarded_allow_ips=proxies or None,
    )
    # uvicorn takes SIGTERM and SIGINT while it runs and re-raises them when it is done: to this
    # handler, not the default one that would kill this process before its children.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, server.handle_exit)
    stop = threading.Event()
    threads = []
    if not args.no_scheduler:
        threads.append(
            threading.Thread(target=_run_scheduler, args=(settings, stop), name="scheduler")
        )
    for thread in threads:
        thread.start()
    # Processes of their own: ingest would otherwise share the API's interpreter lock (a
    # 1,000-host job's events slowed its own submission), Celery wants its main thread.
    children = []
    if not args.no_ingest:
        children.append(_child("the ingest consumer", "ingest"))
    if not args.no_worker:
        children.append(_child("the bootstrap worker", "worker"))
    for child in children:
        child.start()
    try:
        server.run()
    finally:
        stop.set()
        if metrics_server is not None:
            metrics_server.shutdown()
        for child in children:
            child.stop()
        for thread in threads:
            thread.join(timeout=5)
    log.info("serve stopped: no child left")
    return 0
