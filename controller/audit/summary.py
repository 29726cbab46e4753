"""What an audit record keeps of a request: its shape and values, without secrets, bounded."""

from __future__ import annotations

import json
import re
from typing import Any

from controller.bootstrap.redact import MASK, redact

# Field names whose values are never kept, whatever they hold.
_SECRET_NAME = re.compile(
    r"token|passw|passphrase|secret|private|credential|authori[sz]ation|cookie|(^|_)key$|ssh_?key",
    re.I,
)
# SSH keys in any value (a private one is caught by redact() as a PEM block).
_SSH_KEY = re.compile(
    r"\b((?:ssh|sk)-(?:rsa|dss|ed25519)(?:@openssh\.com)?|ecdsa-sha2-nistp\d+)\s+[A-Za-z0-9+/=]{16,}"
)
MAX_SUMMARY_CHARS = 4096
# (longest string, longest list, deepest nesting): tried in turn until the summary fits.
_LIMITS = ((256, 20, 5), (64, 5, 3))
MASKED_CHARS = 16_384


def summarize(body: Any, query: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """The request body and query, secrets masked, cut to at most MAX_SUMMARY_CHARS of JSON."""
    whole: dict[str, Any] = {}
    if body is not None:
        whole["body"] = body
    if query:
        whole["query"] = {k: v[0] if len(v) == 1 else v for k, v in query.items()}
    for limits in _LIMITS:
        summary = _clean(whole, *limits)
        if len(json.dumps(summary)) <= MAX_SUMMARY_CHARS:
            return dict(summary)
    return {"truncated": True, "fields": sorted(str(k) for k in _fields(whole))[:50]}


def refusal_reason(answer: Any, limit: int = 256) -> str | None:
    """Why the API refused a call, from its error answer: messages and fields, never inputs."""
    detail = answer.get("detail") if isinstance(answer, dict) else None
    if isinstance(detail, str):
        return clean_text(detail, limit)
    if not isinstance(detail, list):
        return None
    parts = []
    for item in detail[:3]:
        if isinstance(item, dict):
            loc = [str(p) for p in item.get("loc", [])][1:]
            message = str(item.get("msg", "invalid"))
            parts.append(f"{'.'.join(loc)}: {message}" if loc else message)
    return clean_text("; ".join(parts), limit) if parts else None


def clean_text(text: str, limit: int = 1024) -> str:
    """Free text (an agent's refusal detail) with secret-looking values masked, bounded."""
    return _cut(_masked(text), limit)


def _clean(value: Any, longest: int, items: int, depth: int) -> Any:
    if isinstance(value, dict):
        if depth <= 0:
            return f"{{{len(value)} fields}}"
        out: dict[str, Any] = {}
        for i, (key, inner) in enumerate(value.items()):
            if i >= items * 2:
                out["..."] = f"{len(value) - i} more fields"
                break
            name = _cut(str(key), 64)
            secret = _SECRET_NAME.search(name) and inner not in (None, "", False)
            out[name] = MASK if secret else _clean(inner, longest, items, depth - 1)
        return out
    if isinstance(value, list):
        if depth <= 0:
            return f"[{len(value)} items]"
        kept = [_clean(v, longest, items, depth - 1) for v in value[:items]]
        if len(value) > items:
            kept.append(f"... {len(value) - items} more")
        return kept
    if isinstance(value, str):
        # Only what is kept is masked (a body may be 1 MB), with room for a secret that starts
        # in the kept part and ends after it.
        return _cut(_masked(value[:MASKED_CHARS]), longest)
    if value is None or isinstance(value, bool | int | float):
        return value
    return _cut(_masked(str(value)), longest)


def _masked(text: str) -> str:
    return _SSH_KEY.sub(lambda m: f"{m.group(1)} {MASK}", redact(text))


def _fields(value: Any) -> list[str]:
    body = value.get("body") if isinstance(value, dict) else None
    return list(body) if isinstance(body, dict) else list(value) if isinstance(value, dict) else []


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
