"""How the CLI reaches the controller: HTTPS served by `fleettrace serve --tls-cert --tls-key`
(a throwaway CA made here), the CLI verifying it with --ca / FLEETTRACE_CA, no token over plain
HTTP except to loopback, and the audit's client address from trusted proxies only.
"""

from __future__ import annotations

import datetime as dt
import importlib
import ipaddress
import json
import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from controller.cli.common import api
from controller.cli.errors import CliError
from controller.cli.http import ApiClient, is_loopback
from controller.cli.main import build_parser
from controller.cli.server import _tls
from controller.cli.text import plural
from controller.settings import Settings
from tests.controller.support import clean_env, free_port, stop_process, wait_for

BIN = Path(sys.executable).parent
main_module = importlib.import_module("controller.cli.main")


# -- a throwaway PKI --------------------------------------------------------------------------


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _ca(common: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common))
        .issuer_name(_name(common))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _server_cert(
    ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("fleettrace test controller"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass
class Pki:
    ca: Path
    other_ca: Path
    cert: Path
    key: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    where = tmp_path_factory.mktemp("pki")
    ca_key, ca = _ca("fleettrace test CA")
    _, other = _ca("someone else's CA")
    key, cert = _server_cert(ca_key, ca)
    paths = Pki(where / "ca.pem", where / "other-ca.pem", where / "server.pem", where / "key.pem")
    paths.ca.write_bytes(_pem(ca))
    paths.other_ca.write_bytes(_pem(other))
    paths.cert.write_bytes(_pem(cert))
    paths.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    paths.key.chmod(0o600)
    return paths


# -- `fleettrace serve`, for real --------------------------------------------------------------


@dataclass
class Served:
    url: str
    token: str
    proc: subprocess.Popen[bytes]
    log: Path


def _serve(
    where: Path, redis_url: str, *flags: str, tls: Pki | None = None, **env: str
) -> Iterator[Served]:
    port = free_port()
    scheme = "https" if tls else "http"
    environ = clean_env(
        FLEETTRACE_DATABASE_URL=f"sqlite:///{where / 'controller.db'}",
        FLEETTRACE_REDIS_URL=redis_url,
        **env,
    )
    token = subprocess.run(
        [str(BIN / "fleettrace"), "tokens", "create", "--name", "tls-admin", "--role", "admin"],
        env=environ,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    argv = [str(BIN / "fleettrace"), "serve", "--no-ingest", "--no-worker", "--no-scheduler"]
    argv += ["--port", str(port), *flags]
    if tls:
        argv += ["--tls-cert", str(tls.cert), "--tls-key", str(tls.key)]
    log = where / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=environ, stdout=out, stderr=subprocess.STDOUT)
    url = f"{scheme}://127.0.0.1:{port}"
    verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=tls.ca) if tls else True

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            return httpx.get(f"{url}/healthz", verify=verify, timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for(up, 120, "fleettrace serve to answer")  # a loaded CI machine starts slowly
        yield Served(url, token, proc, log)
    finally:
        stop_process(proc)


@pytest.fixture(scope="module")
def https(pki: Pki, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    where = tmp_path_factory.mktemp("https")
    yield from _serve(where, redis_url, tls=pki, FLEETTRACE_FORWARDED_ALLOW_IPS="127.0.0.1")


@pytest.fixture(scope="module")
def plain(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """Plain HTTP on loopback, with no trusted proxy."""
    yield from _serve(tmp_path_factory.mktemp("plain"), redis_url)


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Any:
    """`fleettrace ARGS...` through the real main() and a real connection: (code, out, err)."""
    for name in ("FLEETTRACE_URL", "FLEETTRACE_TOKEN", "FLEETTRACE_CA", "FLEETTRACE_INSECURE_HTTP"):
        monkeypatch.delenv(name, raising=False)

    def call(*argv: str, **env: str) -> tuple[int, str, str]:
        with monkeypatch.context() as scoped:
            for name, value in env.items():
                scoped.setenv(name, value)
            code = main_module.main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return call


def test_the_cli_talks_https_with_the_ca_it_is_given(cli: Any, https: Served, pki: Pki) -> None:
    base = ["--url", https.url, "--token", https.token]
    code, out, err = cli("hosts", "add", "tls-1", *base, "--ca", str(pki.ca))
    assert (code, err) == (0, ""), err
    assert "added host tls-1" in out
    code, out, err = cli("hosts", "list", *base, FLEETTRACE_CA=str(pki.ca))
    assert code == 0, err
    assert "tls-1" in out


@pytest.mark.parametrize("ca", ["none", "other"])
def test_an_unverified_certificate_is_one_line_and_exit_1(
    cli: Any, https: Served, pki: Pki, ca: str
) -> None:
    argv = ["hosts", "list", "--url", https.url, "--token", https.token]
    if ca == "other":
        argv += ["--ca", str(pki.other_ca)]
    code, out, err = cli(*argv)
    assert (code, out) == (1, "")
    assert err.startswith(f"fleettrace: error: cannot reach the controller at {https.url}")
    assert "CERTIFICATE_VERIFY_FAILED" in err and "--ca" in err
    assert err.count("\n") == 1


def test_a_bad_ca_file_is_one_line(cli: Any, https: Served, tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    for ca, why in ((junk, "cannot use the CA file"), (tmp_path / "gone.pem", "No such file")):
        code, _, err = cli("hosts", "list", "--url", https.url, "--ca", str(ca))
        assert code == 2
        assert why in err and err.count("\n") == 1, err


def test_the_audit_takes_the_client_address_from_trusted_proxies_only(
    https: Served, plain: Served, pki: Pki
) -> None:
    forwarded = {"X-Forwarded-For": "203.0.113.7"}
    verify = ssl.create_default_context(cafile=pki.ca)
    seen: dict[str, str] = {}
    for server in (https, plain):
        auth = {"Authorization": f"Bearer {server.token}"}
        with httpx.Client(base_url=server.url, verify=verify, headers=auth) as client:
            name = "via-proxy"
            answer = client.post("/v1/hosts", json={"name": name}, headers=forwarded)
            assert answer.status_code == 201, answer.text
            records = client.get("/v1/audit", params={"action": "create_host"}).json()["data"]
            seen[server.url] = records[0]["client"]
    # 127.0.0.1 is a trusted proxy of the HTTPS server, and nobody's for the plain one.
    assert seen == {https.url: "203.0.113.7", plain.url: "127.0.0.1"}


def test_fleettrace_audit_lists_records_as_a_table_and_as_json(
    cli: Any, https: Served, pki: Pki
) -> None:
    base = ["--url", https.url, "--token", https.token, "--ca", str(pki.ca)]
    assert cli("hosts", "add", "audited-1", *base)[0] == 0
    code, out, err = cli("audit", *base, "--action", "create_host", "--since", "1h")
    assert code == 0, err
    header, *rows, total = out.splitlines()
    assert header.split() == [
        *("TIME", "ACTOR", "ROLE", "ACTION", "STATUS", "OBJECTS", "CLIENT", "WHY")
    ]
    assert "tls-admin" in rows[0] and "create_host" in rows[0] and "host=audited-1" in rows[0]
    assert total == plural(len(rows), "record")
    code, out, _ = cli("audit", *base, "--host", "audited-1", "--json")
    data = json.loads(out)
    assert [r["action"] for r in data["data"]] == ["create_host"]
    assert data["data"][0]["status"] == 201
    code, out, err = cli("audit", *base, "--since", "soon")
    assert code == 2 and "bad time 'soon'" in err
    # Only admins read it.
    answer = httpx.post(
        f"{https.url}/v1/tokens",
        json={"name": "looker", "role": "operator"},
        headers={"Authorization": f"Bearer {https.token}"},
        verify=ssl.create_default_context(cafile=pki.ca),
    )
    code, _, err = cli("audit", *base[:2], "--token", answer.json()["token"], "--ca", str(pki.ca))
    assert code == 2 and "this needs the admin role" in err


@pytest.mark.parametrize(
    ("flags", "line"),
    [
        (["--tls-cert", "/nonexistent.pem"], "--tls-cert and --tls-key go together"),
        (["--tls-cert", "/etc/hostname", "--tls-key", "/etc/hostname"], "cannot serve HTTPS with"),
    ],
)
def test_serve_refuses_a_bad_tls_setup_in_one_line(
    tmp_path: Path, flags: list[str], line: str
) -> None:
    done = subprocess.run(
        [str(BIN / "fleettrace"), "serve", "--no-ingest", "--no-worker", "--no-scheduler", *flags],
        env=clean_env(FLEETTRACE_DATABASE_URL=f"sqlite:///{tmp_path / 'x.db'}"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    errors = [e for e in done.stderr.splitlines() if e.startswith("fleettrace: error: ")]
    assert len(errors) == 1 and line in errors[0], done.stderr
    assert not (tmp_path / "x.db").exists(), "refused before touching the database"


# -- no token over plain HTTP except to loopback ------------------------------------------------


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("10.1.2.3", False),
        ("0.0.0.0", False),
        ("::", False),
        ("localhost.example.com", False),
        ("127.0.0.1.nip.io", False),
        ("ctl", False),
    ],
)
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


class Recorder(httpx.BaseTransport):
    """Remembers whatever would have been sent."""

    def __init__(self) -> None:
        self.sent: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(request)
        return httpx.Response(200, json={"data": [], "count": 0})


@pytest.mark.parametrize(
    "url",
    [
        "http://10.1.2.3:8700",
        "http://ctl.example.com",
        "HTTP://[2001:db8::1]:8700",
        "http://0.0.0.0",
    ],
)
def test_a_token_is_not_sent_over_plain_http_beyond_loopback(
    url: str, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = Recorder()
    real = main_module.build_parser

    def recording() -> Any:
        parser = real()
        parser.set_defaults(http=httpx.Client(transport=recorder, base_url=url))
        return parser

    monkeypatch.setattr(main_module, "build_parser", recording)
    code, out, err = cli("hosts", "list", "--url", url, "--token", "ft_secret")
    assert (code, out) == (2, "")
    assert err.startswith("fleettrace: error: refusing to send the API token over plain http://")
    assert "--insecure-http" in err and err.count("\n") == 1
    assert recorder.sent == []
    # Told to: it goes.
    assert cli("hosts", "list", "--url", url, "--token", "ft_x", "--insecure-http")[0] == 0
    assert (
        cli("hosts", "list", "--url", url, "--token", "ft_x", FLEETTRACE_INSECURE_HTTP="1")[0] == 0
    )
    assert [r.headers["authorization"] for r in recorder.sent] == ["Bearer ft_x"] * 2


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8700",
        "http://127.1.2.3:1",
        "http://[::1]:8700",
        "http://localhost:8700",
        "https://10.1.2.3:8700",
    ],
)
def test_loopback_and_https_need_no_opt_in(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLEETTRACE_INSECURE_HTTP", raising=False)
    args = build_parser().parse_args(["hosts", "list", "--url", url, "--token", "ft_x"])
    with api(args) as client:
        assert client.headers["Authorization"] == "Bearer ft_x"


def test_without_a_token_plain_http_is_allowed() -> None:
    with ApiClient("http://10.1.2.3:8700") as client:
        assert "Authorization" not in client.headers
    with pytest.raises(CliError, match="refusing to send the API token"):
        ApiClient("http://10.1.2.3:8700", "ft_x", insecure_http=False)
    assert os.environ.get("FLEETTRACE_INSECURE_HTTP") is None


def test_serve_takes_the_tls_pair_from_settings_too(pki: Pki) -> None:
    args = build_parser().parse_args(["serve"])
    settings = Settings(database_url="sqlite:///:memory:", tls_cert=pki.cert, tls_key=pki.key)
    assert _tls(args, settings) == (pki.cert, pki.key)
    assert _tls(args, Settings(database_url="sqlite:///:memory:")) == (None, None)
    swapped = build_parser().parse_args(
        ["serve", "--tls-cert", str(pki.key), "--tls-key", str(pki.cert)]
    )
    with pytest.raises(CliError, match="cannot serve HTTPS with"):
        _tls(swapped, settings)
    with pytest.raises(ValueError, match="tls_cert and tls_key go together"):
        Settings(database_url="sqlite:///:memory:", tls_cert=pki.cert)
