"""Console tests: a signed-in browser is a TestClient holding the session cookie."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.controller.conftest import Tokens

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(html: str) -> str:
    found = CSRF.search(html)
    assert found, "no CSRF field on the page"
    return found.group(1)


def sign_in(client: TestClient, raw_token: str) -> str:
    """Sign in through the form; the session's CSRF token (from the next page)."""
    form = client.get("/signin")
    assert form.status_code == 200
    done = client.post(
        "/signin",
        data={"token": raw_token, "csrf": csrf_of(form.text), "next": "/fleet"},
        follow_redirects=False,
    )
    assert done.status_code == 303, done.text
    page = client.get("/fleet")
    assert page.status_code == 200, page.text
    return csrf_of(page.text)


@pytest.fixture
def browser(app: FastAPI, tokens: Tokens) -> Iterator[Callable[[str], tuple[TestClient, str]]]:
    """browser(role) -> (a client signed in with that role's token, its CSRF token)."""
    made: list[TestClient] = []

    def open_as(role: str) -> tuple[TestClient, str]:
        client = TestClient(app, base_url="http://testserver")
        made.append(client)
        return client, sign_in(client, tokens.token(role))

    yield open_as
    for client in made:
        client.close()
