"""A job's results with the hosts side by side: the client's view (`fleettrace jobs results`).

fleettrace-dev depends on the controller's distribution, so its view is always there; the
histogram and table math is the kinds' own (node_agent.kinds, controller.kinds)."""

from __future__ import annotations

from typing import Any

from controller.cli.sidebyside import render_results
from controller.cli.text import emit, terminal_width
from controller.jobs.models import JobPublic, JobResults


def show(job: dict[str, Any], results: dict[str, Any]) -> None:
    """Print `results` (GET /v1/jobs/{id}/results) of `job` (GET /v1/jobs/{id}) on stdout."""
    runs = JobPublic.model_validate(job).runs
    emit(render_results(JobResults.model_validate(results), runs=runs, width=terminal_width()))
