"""Which objects each mutating route's audit record names: the per-route rule table.

Path parameters name their objects by themselves (PATH_OBJECTS); a rule adds the ids found in
the request body (known even when the call is refused) and in the answer (ids made by the call).
A test fails for a mutating route without a rule here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
PATH_OBJECTS = {"name": "host", "job_id": "job", "schedule_id": "schedule", "token_id": "token_id"}
# An object list (a job's hosts) is cut here; the count says how many there were.
MAX_LISTED = 50


@dataclass(frozen=True)
class Rule:
    """Object kind -> where its id is: `a.b`, `items[].id` (every item), `items[0].id`."""

    request: dict[str, str] = field(default_factory=dict)
    response: dict[str, str] = field(default_factory=dict)


RULES: dict[str, Rule] = {
    "create_host": Rule(request={"host": "name"}, response={"host": "name"}),
    "update_host": Rule(),
    "delete_host": Rule(),
    "issue_host_credential": Rule(),
    "bootstrap_hosts": Rule(
        request={"hosts": "hosts"}, response={"batch": "id", "hosts": "runs[].host"}
    ),
    "bootstrap_host": Rule(response={"bootstrap_run": "id"}),
    "uninstall_host": Rule(response={"bootstrap_run": "id"}),
    "create_job": Rule(request={"hosts": "targets.hosts"}, response={"job": "id"}),
    "cancel_job": Rule(),
    "create_schedule": Rule(request={"schedule_name": "name"}, response={"schedule": "id"}),
    "update_schedule": Rule(),
    "delete_schedule": Rule(),
    "pause_schedule": Rule(),
    "resume_schedule": Rule(),
    "run_schedule": Rule(response={"job": "recent[0].job_id"}),
    "create_token": Rule(request={"token_name": "name"}, response={"token_id": "id"}),
    "revoke_token": Rule(),
}
# A route without a rule still gets its record, with the objects its path names.
DEFAULT_RULE = Rule()


def objects_of(
    rule: Rule, path_params: dict[str, Any], request: Any, response: Any
) -> dict[str, Any]:
    """The ids a call was about: from its path, its request body, then its answer."""
    found: dict[str, Any] = {}
    for param, value in path_params.items():
        found[PATH_OBJECTS.get(param, param)] = str(value)
    for source, where in ((request, rule.request), (response, rule.response)):
        for kind, path in where.items():
            value = pick(source, path)
            if value is not None and value != []:
                found[kind] = value
    for kind, value in list(found.items()):
        if isinstance(value, list) and len(value) > MAX_LISTED:
            found[kind] = value[:MAX_LISTED]
            found[f"{kind}_count"] = len(value)
    return found


def pick(data: Any, path: str) -> Any:
    """The value at `path` in JSON data (None when absent); ids come back as strings."""
    head, _, rest = path.partition(".")
    name, bracket, index = head.partition("[")
    value = data.get(name) if isinstance(data, dict) else None
    if bracket:
        if not isinstance(value, list):
            return None
        index = index.rstrip("]")
        if index == "":
            picked = [pick(item, rest) if rest else _scalar(item) for item in value]
            return [p for p in picked if p is not None]
        position = int(index)
        value = value[position] if -len(value) <= position < len(value) else None
    if rest:
        return pick(value, rest)
    if isinstance(value, list):
        return [s for s in (_scalar(v) for v in value) if s is not None]
    return _scalar(value)


def _scalar(value: Any) -> str | None:
    if isinstance(value, str | int) and not isinstance(value, bool):
        return str(value)[:128]
    return None
