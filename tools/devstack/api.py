"""The few REST calls a local stack needs: health, hosts, jobs, results."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from devstack.config import DevstackError, HostSpec
from devstack.harness import wait_for

FINAL_JOB_STATES = {"succeeded", "partial", "failed", "cancelled"}


class Api:
    def __init__(self, url: str, token: str, timeout_s: float = 10.0) -> None:
        self.client = httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=timeout_s
        )

    def close(self) -> None:
        self.client.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise DevstackError(f"{method} {path}: {exc}") from None
        if response.status_code >= 400:
            raise DevstackError(f"{method} {path}: {response.status_code} {response.text[:500]}")
        return response.json() if response.content else None

    def healthy(self) -> bool:
        try:
            return self.client.get("/healthz").status_code == 200
        except httpx.HTTPError:
            return False

    def register(
        self, host: HostSpec, address: str, *, cgroup: str | None = None
    ) -> dict[str, str]:
        """Add the host; returns its join (its own Redis URL, shown this once)."""
        body: dict[str, Any] = {"name": host.name, "address": address, "labels": host.labels}
        if cgroup is not None:
            body["cgroup"] = cgroup
        join: dict[str, str] = self._call("POST", "/v1/hosts", json=body)["join"]
        return join

    def hosts(self) -> dict[str, dict[str, Any]]:
        return {h["name"]: h for h in self._call("GET", "/v1/hosts")["data"]}

    def wait_online(
        self,
        names: list[str],
        timeout_s: float,
        alive: Callable[[], None],
        online: Callable[[str], None] = lambda name: None,
    ) -> None:
        """Until every named host heartbeats with its probe; `alive` raises if the stack broke
        meanwhile; `online` is told each host's name as it comes online."""
        waiting = list(names)

        def all_online() -> bool:
            alive()
            hosts = self.hosts()
            # An agent's first beat comes before its probe: wait for the capabilities too.
            still = [
                n
                for n in names
                if hosts.get(n, {}).get("state") != "online" or not hosts[n].get("capabilities")
            ]
            for name in waiting:
                if name not in still:
                    online(name)
            waiting[:] = still
            return not waiting

        try:
            wait_for(all_online, timeout_s, "hosts online", every_s=0.3)
        except TimeoutError:
            raise DevstackError(
                f"hosts not online after {timeout_s:g}s: {', '.join(waiting)}"
            ) from None

    def submit(self, program: str, params: dict[str, Any], duration_s: float) -> dict[str, Any]:
        body = {
            "program": program,
            "params": params,
            "duration_s": duration_s,
            "targets": {"all": True},
        }
        job: dict[str, Any] = self._call("POST", "/v1/jobs", json=body)
        return job

    def wait_job(self, job_id: str, timeout_s: float) -> dict[str, Any]:
        job: dict[str, Any] = {}

        def final() -> dict[str, Any] | None:
            job.update(self._call("GET", f"/v1/jobs/{job_id}"))
            return job if job["state"] in FINAL_JOB_STATES else None

        try:
            return wait_for(final, timeout_s, f"job {job_id}", every_s=0.3)
        except TimeoutError:
            raise DevstackError(f"job {job_id} still {job['state']} after {timeout_s:g}s") from None

    def results(self, job_id: str) -> dict[str, Any]:
        results: dict[str, Any] = self._call("GET", f"/v1/jobs/{job_id}/results")
        return results

    def report(self, job_id: str) -> dict[str, Any]:
        report: dict[str, Any] = self._call("GET", f"/v1/jobs/{job_id}/report")
        return report

    def report_html(self, job_id: str) -> str:
        try:
            response = self.client.get(f"/v1/jobs/{job_id}/report", params={"format": "html"})
        except httpx.HTTPError as exc:
            raise DevstackError(f"GET report of {job_id}: {exc}") from None
        if response.status_code >= 400:
            raise DevstackError(f"GET report of {job_id}: {response.status_code}")
        return response.text
