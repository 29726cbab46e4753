"""Signing in to the console: sessions, cookies, CSRF, expiry, revocation."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from controller.audit.models import AuditRecord
from controller.auth import service as auth_service
from controller.console.sessions import ConsoleSession
from controller.db import utcnow
from controller.hosts.models import Host
from tests.controller.conftest import Tokens
from tests.controller.console.conftest import csrf_of

Browser = Callable[[str], tuple[TestClient, str]]


def test_a_page_without_a_session_sends_to_sign_in_and_back(app: FastAPI, tokens: Tokens) -> None:
    with TestClient(app) as client:
        first = client.get("/fleet?selector=role%3Dweb", follow_redirects=False)
        assert first.status_code == 303
        assert first.headers["location"] == "/signin?next=/fleet%3Fselector%3Drole%253Dweb"
        form = client.get(first.headers["location"])
        assert 'name="next" value="/fleet?selector=role%3Dweb"' in form.text
        done = client.post(
            "/signin",
            data={
                "token": tokens.token("viewer"),
                "csrf": csrf_of(form.text),
                "next": "/fleet?selector=role%3Dweb",
            },
            follow_redirects=False,
        )
        assert done.status_code == 303
        assert done.headers["location"] == "/fleet?selector=role%3Dweb"
        cookie = done.headers["set-cookie"]
        assert "ft_session=" in cookie
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Secure" not in cookie
        page = client.get("/fleet")
        assert page.status_code == 200 and "test-viewer" in page.text
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert page.headers["cache-control"] == "no-store"


def test_the_cookie_is_secure_over_https(app: FastAPI, tokens: Tokens) -> None:
    with TestClient(app, base_url="https://console.test") as client:
        form = client.get("/signin")
        done = client.post(
            "/signin",
            data={"token": tokens.token("viewer"), "csrf": csrf_of(form.text)},
            follow_redirects=False,
        )
        assert done.status_code == 303
        assert "Secure" in done.headers["set-cookie"]


def test_a_bad_token_is_refused_with_a_message(app: FastAPI, tokens: Tokens) -> None:
    with TestClient(app) as client:
        form = client.get("/signin")
        for raw in ("ft_not-a-token", tokens.make("viewer", revoked=True), "x" * 256):
            done = client.post(
                "/signin", data={"token": raw, "csrf": csrf_of(form.text)}, follow_redirects=False
            )
            assert done.status_code == 401
            assert "Unknown or revoked API token." in done.text
            assert "ft_session" not in done.headers.get("set-cookie", "")
        too_long = client.post("/signin", data={"token": "x" * 300, "csrf": csrf_of(form.text)})
        assert too_long.status_code == 422 and "token" in too_long.text


def test_sign_in_needs_the_forms_csrf_token(app: FastAPI, tokens: Tokens) -> None:
    with TestClient(app) as client:
        # A cross-site form post has neither the cookie nor its value.
        forged = client.post("/signin", data={"token": tokens.token("admin"), "csrf": "guess"})
        assert forged.status_code == 403
        form = client.get("/signin")
        wrong = client.post(
            "/signin", data={"token": tokens.token("admin"), "csrf": csrf_of(form.text) + "x"}
        )
        assert wrong.status_code == 403
        assert "ft_session" not in wrong.headers.get("set-cookie", "")


def test_next_never_leaves_the_site(app: FastAPI, tokens: Tokens) -> None:
    with TestClient(app) as client:
        for hostile in ("//evil.example/x", "https://evil.example/", "/\\evil.example", "fleet"):
            form = client.get("/signin", params={"next": hostile})
            done = client.post(
                "/signin",
                data={"token": tokens.token("viewer"), "csrf": csrf_of(form.text), "next": hostile},
                follow_redirects=False,
            )
            assert done.headers["location"] == "/", hostile


def test_sign_out_needs_csrf_and_ends_the_session(browser: Browser) -> None:
    client, csrf = browser("viewer")
    forged = client.post("/signout", data={}, follow_redirects=False)
    assert forged.status_code == 403
    assert client.get("/fleet", follow_redirects=False).status_code == 200
    done = client.post("/signout", data={"csrf": csrf}, follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == "/signin"
    assert client.get("/fleet", follow_redirects=False).status_code == 303


def test_an_idle_session_expires(browser: Browser, sessions: sessionmaker[Session]) -> None:
    client, _ = browser("viewer")
    with sessions() as session:
        session.execute(
            update(ConsoleSession).values(last_seen_at=utcnow() - timedelta(minutes=31))
        )
        session.commit()
    assert client.get("/fleet", follow_redirects=False).status_code == 303


def test_signing_in_deletes_sessions_left_to_expire(
    browser: Browser, sessions: sessionmaker[Session]
) -> None:
    browser("viewer")
    with sessions() as session:
        session.execute(update(ConsoleSession).values(last_seen_at=utcnow() - timedelta(days=2)))
        session.commit()
    browser("viewer")
    with sessions() as session:
        left = session.scalars(select(ConsoleSession.last_seen_at)).all()
    assert len(left) == 1 and left[0] > utcnow() - timedelta(minutes=1)


def test_revoking_the_token_ends_its_sessions(
    app: FastAPI, tokens: Tokens, sessions: sessionmaker[Session]
) -> None:
    raw = tokens.make("operator")
    with TestClient(app) as client:
        form = client.get("/signin")
        client.post("/signin", data={"token": raw, "csrf": csrf_of(form.text)})
        assert client.get("/fleet", follow_redirects=False).status_code == 200
        with sessions() as session:
            token = auth_service.authenticate(session=session, raw=raw)
            assert token is not None
            auth_service.revoke(session=session, token_id=token.id)
            session.commit()
        assert client.get("/fleet", follow_redirects=False).status_code == 303


def test_what_a_host_says_about_itself_is_shown_as_text(
    browser: Browser, sessions: sessionmaker[Session]
) -> None:
    hostile = '<script>alert(1)</script>"><img src=x onerror=alert(2)>'
    with sessions() as session:
        session.add(
            Host(
                name="hostile-fleet-1",
                labels={"role": "web"},
                agent_version=hostile,
                capabilities={"kernel": hostile},
                last_heartbeat=utcnow(),
            )
        )
        session.commit()
    client, _ = browser("viewer")
    page = client.get("/fleet")
    assert page.status_code == 200
    assert "<script>alert(1)" not in page.text and "<img src=x" not in page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text


def test_console_forms_are_audited_without_their_secrets(
    app: FastAPI, tokens: Tokens, sessions: sessionmaker[Session]
) -> None:
    raw = tokens.make("operator")
    with TestClient(app) as client:
        form = client.get("/signin")
        csrf = csrf_of(form.text)
        client.post("/signin", data={"token": "ft_wrong", "csrf": csrf})
        client.post("/signin", data={"token": raw, "csrf": csrf})
        session_csrf = csrf_of(client.get("/fleet").text)
        client.post("/signout", data={"csrf": session_csrf})
    with sessions() as session:
        rows = session.scalars(
            select(AuditRecord)
            .where(AuditRecord.action.in_(["console_signin", "console_signout"]))
            .order_by(AuditRecord.id.desc())
            .limit(3)
        ).all()
    seen = [(r.action, r.actor, r.status) for r in reversed(rows)]
    assert seen == [
        ("console_signin", None, 401),
        ("console_signin", "test-operator", 303),
        ("console_signout", "test-operator", 303),
    ]
    for row in rows:
        text = json.dumps(row.summary)
        assert raw not in text and "ft_wrong" not in text
        assert csrf not in text and session_csrf not in text


def test_a_page_that_does_not_exist_is_a_page_and_the_api_stays_json(browser: Browser) -> None:
    client, _ = browser("viewer")
    for path in ("/no-such-page", "/jobs/not-a-uuid", "/hosts-in/nothing/here"):
        got = client.get(path)
        assert got.status_code == 404, path
        assert got.headers["content-type"].startswith("text/html") and "no such page" in got.text
    api = client.get("/v1/no-such-route")
    assert api.status_code == 404 and api.json() == {"detail": "Not Found"}
    assert client.get("/static/no-such.css").status_code == 404
    assert client.put("/fleet").status_code == 405
