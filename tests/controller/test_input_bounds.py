"""Every query and body field is bounded: what once was a 500 (or was stored to bite later) is a
422 naming the field; a deleted host's task queue goes with it."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from node_agent.wire import host_queue
from tests.controller.conftest import RecordingDispatcher, Tokens
from tests.controller.support import field_paths, register_host, submit

HOST = "bounds-host"
HUGE = 9223372036854775808  # 2**63: past SQLite's integer


def schedule(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "bounds",
        "interval_s": 60,
        "template": {"program": "syscalls", "duration_s": 1, "targets": {"hosts": [HOST]}},
    }
    body.update(changes)
    return body


def job_with(program: str, params: dict[str, Any]) -> dict[str, Any]:
    return {"program": program, "duration_s": 1, "targets": {"hosts": [HOST]}, "params": params}


BAD: dict[str, tuple[str, str, Any, str]] = {
    "an attach option the program lacks": (
        "POST",
        "/v1/jobs",
        job_with("offcputime", {"attach": "kprobe"}),
        "params.attach",
    ),
    "attach on a program with one way to attach": (
        "POST",
        "/v1/jobs",
        job_with("syscalls", {"attach": "tracepoint"}),
        "params.attach",
    ),
    "jobs offset past 2**63": ("GET", f"/v1/jobs?offset={HUGE}", None, "query.offset"),
    "schedules offset past 2**63": ("GET", f"/v1/schedules?offset={HUGE}", None, "query.offset"),
    "token id past 2**63": ("DELETE", f"/v1/tokens/{HUGE}", None, "path.token_id"),
    "schedule interval 1e-300": (
        "POST",
        "/v1/schedules",
        schedule(interval_s=1e-300),
        "interval_s",
    ),
    "schedule interval 1e300": ("POST", "/v1/schedules", schedule(interval_s=1e300), "interval_s"),
    "schedule interval under 1 s": (
        "POST",
        "/v1/schedules",
        schedule(interval_s=0.5),
        "interval_s",
    ),
    "schedule interval as a string inf": (
        "POST",
        "/v1/schedules",
        schedule(interval_s="inf"),
        "interval_s",
    ),
    "retention max_runs 2**70": (
        "POST",
        "/v1/schedules",
        schedule(retention={"max_runs": 2**70}),
        "retention.max_runs",
    ),
    "retention max_age 1e300": (
        "POST",
        "/v1/schedules",
        schedule(retention={"max_age_s": 1e300}),
        "retention.max_age_s",
    ),
    "misfire grace 1e300": (
        "POST",
        "/v1/schedules",
        schedule(misfire_grace_s=1e300),
        "misfire_grace_s",
    ),
    "job duration nan": (
        "POST",
        "/v1/jobs",
        {"program": "syscalls", "duration_s": "nan", "targets": {"hosts": [HOST]}},
        "duration_s",
    ),
    "job selector with a control character": (
        "POST",
        "/v1/jobs",
        {"program": "syscalls", "duration_s": 1, "targets": {"selector": {"role": "\x1b[2J"}}},
        "targets.selector.role",
    ),
    "job selector with a bad key": (
        "POST",
        "/v1/jobs",
        {"program": "syscalls", "duration_s": 1, "targets": {"selector": {"a b": "x"}}},
        "targets.selector.a b.[key]",
    ),
    "host list selector without =": ("GET", "/v1/hosts?selector=garbage", None, "query.selector"),
    "host list selector without key": ("GET", "/v1/hosts?selector==web", None, "query.selector"),
    "host list selector with markup": (
        "GET",
        "/v1/hosts?selector=role=<img>",
        None,
        "query.selector",
    ),
    "host label value with a control character": (
        "POST",
        "/v1/hosts",
        {"name": "lbl-1", "labels": {"role": "web\x07"}},
        "labels.role",
    ),
    "host label key with a space": (
        "POST",
        "/v1/hosts",
        {"name": "lbl-2", "labels": {"a b": "x"}},
        "labels.a b.[key]",
    ),
    "host label value too long": (
        "PATCH",
        f"/v1/hosts/{HOST}",
        {"labels": {"role": "x" * 129}},
        "labels.role",
    ),
    "too many labels": (
        "PATCH",
        f"/v1/hosts/{HOST}",
        {"labels": {f"k{i}": "v" for i in range(65)}},
        "labels",
    ),
    "host address with a newline": (
        "POST",
        "/v1/hosts",
        {"name": "lbl-3", "address": "10.0.0.1\nx"},
        "address",
    ),
    "host name in a path": ("GET", "/v1/hosts/bad%20name%21", None, "path.name"),
    "host name in a job filter": ("GET", "/v1/jobs?host=bad%0Aname", None, "query.host"),
    "host name in a report": (
        "GET",
        "/v1/jobs/{job}/report?host=%1b",
        None,
        "query.host",
    ),
}


@pytest.fixture(scope="module")
def host(client: TestClient, tokens: Tokens) -> str:
    register_host(client, tokens.headers("admin"), HOST, role="web")
    return HOST


@pytest.fixture(scope="module")
def job(client: TestClient, tokens: Tokens, host: str) -> str:
    """A job that exists: a route looks its resource up before it reads its query."""
    found: str = submit(client, tokens.headers("operator"), targets={"hosts": [host]})["id"]
    return found


@pytest.mark.parametrize(("method", "url", "body", "field"), list(BAD.values()), ids=list(BAD))
def test_an_out_of_bounds_field_is_a_422_naming_it(
    client: TestClient,
    tokens: Tokens,
    job: str,
    method: str,
    url: str,
    body: Any,
    field: str,
) -> None:
    url = url.replace("{job}", job)
    answer = client.request(method, url, json=body, headers=tokens.headers("admin"))
    assert answer.status_code == 422, answer.text
    assert field in field_paths(answer), answer.text


def test_the_bounds_themselves_are_accepted(client: TestClient, tokens: Tokens, host: str) -> None:
    admin = tokens.headers("admin")
    assert client.get("/v1/jobs?offset=2147483647", headers=admin).status_code == 200
    for name, interval in (("every-second", 1), ("every-leap-year", 366 * 86400)):
        answer = client.post(
            "/v1/schedules", json=schedule(name=name, interval_s=interval), headers=admin
        )
        assert answer.status_code == 201, answer.text
    labels = {"role": "web", "zone": "eu-west-1a", "rack": "r1/u2", "owner": "ops@example"}
    answer = client.patch(f"/v1/hosts/{HOST}", json={"labels": labels}, headers=admin)
    assert answer.status_code == 200, answer.text
    answer = client.get("/v1/hosts?selector=zone=eu-west-1a", headers=admin)
    assert [h["name"] for h in answer.json()["data"]] == [HOST]


def test_deleting_a_host_drops_its_queued_tasks(
    client: TestClient,
    tokens: Tokens,
    dispatcher: RecordingDispatcher,
    redis_client: redis.Redis,
) -> None:
    admin = tokens.headers("admin")
    register_host(client, admin, "never-runs")
    job = {"program": "syscalls", "duration_s": 1, "targets": {"hosts": ["never-runs"]}}
    assert client.post("/v1/jobs", json=job, headers=tokens.headers("operator")).status_code == 201
    queue = host_queue("never-runs")
    assert redis_client.llen(queue) == 1  # no agent will ever take it
    assert client.delete("/v1/hosts/never-runs", headers=admin).status_code == 204
    assert not redis_client.keys(f"{queue}*") and not redis_client.keys(f"*binding.{queue}")
    # A job can only target hosts that exist: a deleted host is unknown again.
    answer = client.post("/v1/jobs", json=job, headers=tokens.headers("operator"))
    assert answer.status_code == 422 and "targets.hosts" in field_paths(answer)
    assert redis_client.llen(queue) == 0


def _unbounded(where: str, schema: dict[str, Any], found: list[str]) -> None:
    for alternative in schema.get("anyOf", []):
        _unbounded(where, alternative, found)
    kind = schema.get("type")
    limits = set(schema)
    if kind in ("integer", "number") and not limits & {"maximum", "exclusiveMaximum", "enum"}:
        found.append(f"{where}: {kind} without a maximum")
    if kind == "string" and not limits & {"maxLength", "pattern", "enum", "const", "format"}:
        found.append(f"{where}: string without a length or pattern")
    if kind == "array":
        if "maxItems" not in schema:
            found.append(f"{where}: array without maxItems")
        _unbounded(f"{where}[]", schema.get("items", {}), found)
    if kind == "object" and "properties" not in schema and "maxProperties" not in schema:
        found.append(f"{where}: object without maxProperties")
    if isinstance(schema.get("additionalProperties"), dict):
        _unbounded(f"{where}{{}}", schema["additionalProperties"], found)


def test_every_input_in_the_openapi_document_is_bounded() -> None:
    """Numbers have a maximum, strings a length or pattern, lists and maps a size: nothing a
    client sends can overflow a column, a datetime or an integer (the fuzz checks the rest)."""
    from controller.cli.server import openapi_document

    document: Any = openapi_document()
    schemas = document["components"]["schemas"]
    request_schemas: set[str] = set()

    def referenced(node: Any) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if ref and ref.split("/")[-1] not in request_schemas:
                request_schemas.add(ref.split("/")[-1])
                referenced(schemas[ref.split("/")[-1]])
            for value in node.values():
                referenced(value)
        elif isinstance(node, list):
            for value in node:
                referenced(value)

    found: list[str] = []
    for methods in document["paths"].values():
        for operation in methods.values():
            for parameter in operation.get("parameters", []):
                where = f"{operation['operationId']} {parameter['in']}.{parameter['name']}"
                _unbounded(where, parameter["schema"], found)
            referenced(operation.get("requestBody", {}))
    for name in sorted(request_schemas):
        for prop, schema in schemas[name].get("properties", {}).items():
            _unbounded(f"{name}.{prop}", schema, found)
    assert not found, "\n".join(found)
