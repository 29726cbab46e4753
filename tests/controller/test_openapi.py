"""openapi/openapi.json is exported from the app and must not go stale."""

from __future__ import annotations

import json
from pathlib import Path

from controller.cli.server import openapi_document

SPEC = Path(__file__).resolve().parents[2] / "openapi" / "openapi.json"


def test_committed_openapi_matches_the_app() -> None:
    committed = json.loads(SPEC.read_text())
    assert committed == json.loads(json.dumps(openapi_document())), (
        "openapi/openapi.json is stale: run `.venv/bin/fleettrace openapi`"
    )


def test_every_operation_has_a_readable_stable_id() -> None:
    for path, methods in openapi_document()["paths"].items():  # type: ignore[attr-defined]
        for method, operation in methods.items():
            op_id = operation["operationId"]
            assert op_id.replace("_", "").isalpha() and op_id.islower(), (path, method, op_id)
