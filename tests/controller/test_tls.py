"""Redis over TLS (rediss://) with a CA, for the controller and agents, on a real redis-server.

The server has no plaintext port at all: the controller, ingest, Celery and a real agent all
speak TLS to it, verifying its certificate against a throwaway CA; a client certificate is
optional (`tls-auth-clients optional`) and, when given in the URL, is presented and checked.
"""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fastapi.testclient import TestClient
from kombu import Connection

from devstack import harness
from node_agent.wire import broker_url, client_url
from tests.controller.conftest import AgentProcess, Agents, Tokens
from tests.controller.support import free_port, job_final, missing, submit, wait_job

Key = ec.EllipticCurvePrivateKey


@dataclass
class Pki:
    directory: Path
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    stranger_ca: Path


def _write_key(path: Path, key: Key) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _cert(
    subject: str, key: Key, issuer: tuple[x509.Certificate, Key] | None, *, server: bool = False
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer[0].subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if server:
        names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256())


def make_pki(directory: Path) -> Pki:
    """A throwaway CA, a server certificate for 127.0.0.1, a client certificate, and a CA
    that signed neither (what a client that trusts the wrong CA holds)."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("fleettrace test CA", ca_key, None)
    paths: dict[str, Path] = {}
    for role, server in (("server", True), ("client", False)):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _cert(f"fleettrace test {role}", key, (ca, ca_key), server=server)
        paths[f"{role}_cert"] = directory / f"{role}.pem"
        paths[f"{role}_key"] = directory / f"{role}.key"
        paths[f"{role}_cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(paths[f"{role}_key"], key)
    stranger_key = ec.generate_private_key(ec.SECP256R1())
    stranger = _cert("someone else's CA", stranger_key, None)
    (directory / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (directory / "stranger-ca.pem").write_bytes(stranger.public_bytes(serialization.Encoding.PEM))
    return Pki(directory, directory / "ca.pem", stranger_ca=directory / "stranger-ca.pem", **paths)


@dataclass
class TlsRedis:
    pki: Pki
    port: int
    password: str

    def url(self, *, user: str = harness.REDIS_USER, **tls: Path) -> str:
        options = {"ssl_ca_certs": str(self.pki.ca), **{k: str(v) for k, v in tls.items()}}
        query = urlencode(options, safe="/")
        return f"rediss://{user}:{self.password}@127.0.0.1:{self.port}/0?{query}"


@pytest.fixture(scope="module")
def tls_redis() -> Iterator[TlsRedis]:
    if not harness.REDIS_SERVER.exists():
        missing(f"{harness.REDIS_SERVER} (apt install redis-server)")
    workdir = Path(tempfile.mkdtemp(prefix="ft-redis-tls-"))
    pki = make_pki(workdir)
    port = free_port()
    tls = (
        "bind 127.0.0.1",
        f"tls-port {port}",
        f"tls-cert-file {pki.server_cert}",
        f"tls-key-file {pki.server_key}",
        f"tls-ca-cert-file {pki.ca}",
        "tls-auth-clients optional",
    )
    redis_server = harness.RedisServer(workdir, unix_socket=False, extra=tls)
    assert redis_server.password is not None
    server = TlsRedis(pki, port, redis_server.password)
    redis_server.ping_url = server.url()
    try:
        redis_server.start(timeout_s=10)
        yield server
    finally:
        redis_server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def redis_url(tls_redis: TlsRedis) -> str:
    """This module's controller, ingest, Celery and agents all use the TLS Redis."""
    return tls_redis.url()


@pytest.mark.bcc
def test_a_job_runs_end_to_end_over_tls(
    agent: Agents, client: TestClient, tokens: Tokens, tls_redis: TlsRedis
) -> None:
    web: AgentProcess = agent.start("tls-1")
    assert web.redis_url.startswith("rediss://ft-host-tls-1:")
    assert f"ssl_ca_certs={tls_redis.pki.ca}" in web.redis_url
    operator, viewer = tokens.headers("operator"), tokens.headers("viewer")
    job = submit(client, operator, duration_s=2, interval_s=0.5, targets={"hosts": ["tls-1"]})
    done = wait_job(client, viewer, job["id"], job_final, 60, "the job over TLS")
    assert done["state"] == "succeeded", done
    results = client.get(f"/v1/jobs/{job['id']}/results", headers=viewer).json()
    (host,) = results["hosts"]
    assert host["host"] == "tls-1" and host["final"]


def test_a_client_certificate_is_presented_when_given(tls_redis: TlsRedis) -> None:
    pki = tls_redis.pki
    url = tls_redis.url(ssl_certfile=pki.client_cert, ssl_keyfile=pki.client_key)
    with redis.Redis.from_url(client_url(url)) as client:
        assert client.ping()
    # kombu (the agents' Celery) takes the same options from the same URL.
    with Connection(broker_url(url), connect_timeout=5) as conn:
        conn.ensure_connection(max_retries=1)
        assert conn.transport.driver_name == "redis"
        channel = conn.default_channel
        assert channel.client.ping()
        assert channel.client.connection_pool.connection_kwargs["ssl_certfile"] == str(
            pki.client_cert
        )


@pytest.mark.parametrize(
    "why", ["trusts another CA", "plaintext to the TLS port", "a certificate of another CA"]
)
def test_a_client_that_cannot_verify_or_be_verified_is_refused(
    tls_redis: TlsRedis, why: str
) -> None:
    pki = tls_redis.pki
    if why == "trusts another CA":
        url = tls_redis.url().replace(str(pki.ca), str(pki.stranger_ca))
        assert str(pki.stranger_ca) in url
    elif why == "plaintext to the TLS port":
        url = tls_redis.url().replace("rediss://", "redis://", 1).split("?", 1)[0]
    else:
        # A client certificate the server's CA did not sign: refused, though optional.
        url = _intruder(tls_redis.url(), pki)
    client = redis.Redis.from_url(client_url(url), socket_timeout=5, socket_connect_timeout=5)
    try:
        with pytest.raises(redis.ConnectionError):
            client.ping()
    finally:
        client.close()


def _intruder(url: str, pki: Pki) -> str:
    """The URL with a client certificate (and key) signed by the stranger CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    stranger_key = ec.generate_private_key(ec.SECP256R1())
    stranger = _cert("someone else's CA", stranger_key, None)
    cert = _cert("intruder", key, (stranger, stranger_key))
    cert_path, key_path = pki.directory / "intruder.pem", pki.directory / "intruder.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key_path, key)
    base = urlsplit(url)
    options = {"ssl_ca_certs": pki.ca, "ssl_certfile": cert_path, "ssl_keyfile": key_path}
    query = urlencode({k: str(v) for k, v in options.items()}, safe="/")
    return f"{base.scheme}://{base.netloc}{base.path}?{query}"
