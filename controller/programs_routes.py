"""The catalog, as the API shows it."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from controller.api.deps import Viewer
from controller.api.responses import AUTHENTICATED
from node_agent.programs import catalog

router = APIRouter(prefix="/v1/programs", tags=["programs"], responses=AUTHENTICATED)


@router.get("", operation_id="list_programs")
def list_programs(_: Viewer) -> list[dict[str, Any]]:
    """The program catalog: names, parameters with bounds, outputs, kernel needs."""
    return [spec.describe() for spec in catalog().values()]
