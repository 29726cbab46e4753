"""Secrets out of text: what a step records or logs goes through redact() first."""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import unquote, urlsplit

MASK = "***"

_PRIVATE_KEY = re.compile(
    r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)", re.S
)
# Every repetition below is bounded and the URL's scheme must start a word: the text is
# often hostile (a request body of 1 MB), and an unbounded pattern was quadratic in it.
# scheme://user:password@host -> scheme://user:***@host (also a bare ://:password@).
# (Possessive: each run is taken whole, never given back char by char; none of them can
# contain the character that must follow it, so no match is lost.)
_URL_PASSWORD = re.compile(
    r"(?P<head>(?<![A-Za-z0-9+.-])[A-Za-z][A-Za-z0-9+.-]{0,31}+://[^:/@\s]{0,256}+:)"
    r"[^@\s/?#]{1,1024}+(?=@)"  # a URL's password has no raw / ? # (RFC 3986 userinfo)
)
# NAME_PASSWORD=..., password: ..., ?password=... in URLs and env files.
_ASSIGNMENT = re.compile(
    r"(?P<head>(?:\b[A-Za-z0-9_]{0,64}(?:PASSWORD|PASSWD|SECRET|TOKEN|CREDENTIALS?)"
    r"[A-Za-z0-9_]{0,64}|\bpassword|\bpasswd|\bsecret|\btoken)\s{0,16}[=:]\s{0,16})"
    r"(?P<value>[^\s&'\"]+)",
    re.I,
)
_API_TOKEN = re.compile(r"\bft_[A-Za-z0-9_-]{20,}")


def url_secrets(url: str | None) -> list[str]:
    """The parts of a URL that are secret: its password (raw and decoded)."""
    if not url:
        return []
    try:
        password = urlsplit(url).password
    except ValueError:
        return []
    if not password:
        return []
    return sorted({password, unquote(password)}, key=len, reverse=True)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Text with known secret values, URL passwords, private keys and token-like values masked."""
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        # Short values would mask ordinary words; the patterns below still catch them in place.
        if len(secret) >= 4:
            text = text.replace(secret, MASK)
    text = _PRIVATE_KEY.sub("-----PRIVATE KEY " + MASK + "-----", text)
    text = _URL_PASSWORD.sub(lambda m: m.group("head") + MASK, text)
    text = _ASSIGNMENT.sub(lambda m: m.group("head") + MASK, text)
    return _API_TOKEN.sub("ft_" + MASK, text)


class Redactor:
    """redact() bound to the secrets of one run (the broker URLs' passwords)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets = [s for s in secrets if s]

    def add_url(self, url: str | None) -> None:
        self.secrets += url_secrets(url)

    def __call__(self, text: str) -> str:
        return redact(text, self.secrets)
