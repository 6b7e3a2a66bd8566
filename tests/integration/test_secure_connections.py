"""Secured connections: TLS to Temporal (own CA, server name, mTLS, API key), PostgreSQL and RabbitMQ TLS
parameters passed through, and secrets kept out of reprs and logs.

The Temporal CLI's dev server has no TLS options (`temporal server start-dev --help` lists none), so the
TLS tests put a TLS-terminating TCP proxy in front of it, as an ingress or a sidecar does in front of a real
cluster: the handshake, the certificate checks and mTLS are real (Python's `ssl` on the server side, the
SDK's Rust TLS stack on the client side); behind the proxy the bytes go to the dev server in plain HTTP/2.
The certificates are made here with the `openssl` command (a CA, a server certificate for
`temporal.internal` and 127.0.0.1, a client certificate). The dev server ignores the API key, so the key is
checked as far as the client configuration goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aio_pika
import aiormq
import pytest
from sqlalchemy import text
from temporalio.service import TLSConfig
from temporalio.testing import WorkflowEnvironment

from infra.db import create_engine, postgres_tls_arguments
from infra.settings import Settings, load_settings, masked_url
from observability.logs import log_handler
from orchestrator.client import connect_temporal, temporal_connection

SERVER_NAME = "temporal.internal"


@dataclass(frozen=True)
class Certificates:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed nothing here


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _make_ca(directory: Path, name: str) -> None:
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.pem",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign",
        cwd=directory,
    )  # fmt: skip


def _issue(directory: Path, name: str, extensions: str) -> None:
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=directory)  # fmt: skip
    (directory / f"{name}.ext").write_text(extensions)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "2", "-out", f"{name}.pem", "-extfile", f"{name}.ext", cwd=directory)  # fmt: skip


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    directory = tmp_path_factory.mktemp("tls")
    _make_ca(directory, "ca")
    _make_ca(directory, "other-ca")
    _issue(
        directory,
        "server",
        f"subjectAltName=DNS:{SERVER_NAME},IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    _issue(directory, "client", "extendedKeyUsage=clientAuth\n")
    return Certificates(
        ca=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
        other_ca=directory / "other-ca.pem",
    )


@contextlib.asynccontextmanager
async def tls_proxy(
    certificates: Certificates, upstream: str, *, require_client_cert: bool = False
) -> AsyncIterator[str]:
    """A TLS-terminating proxy to `upstream` (host:port) on a free loopback port; yields its address."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificates.server_cert, certificates.server_key)
    context.set_alpn_protocols(["h2"])  # gRPC
    if require_client_cert:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(certificates.ca)
    host, _, port = upstream.rpartition(":")
    tasks: set[asyncio.Task[None]] = set()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def handle(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection(host, int(port))
        for task in (
            asyncio.create_task(pipe(client_reader, server_writer)),
            asyncio.create_task(pipe(server_reader, client_writer)),
        ):
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    try:
        yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def temporal_settings(address: str, **tls: object) -> Settings:
    return load_settings(_env_file=None, temporal_address=address, **tls)


async def reaches_temporal(settings: Settings) -> bool:
    """Whether a client built by connect_temporal completes a call through the connection."""
    try:
        client = await asyncio.wait_for(connect_temporal(settings, wait_seconds=0), 30)
    except (RuntimeError, TimeoutError):
        return False
    return await client.service_client.check_health()


# --- Temporal ---------------------------------------------------------------------------------------------


@pytest.mark.workflow
async def test_temporal_over_tls_needs_the_servers_ca(
    temporal_env: WorkflowEnvironment, certificates: Certificates
) -> None:
    upstream = temporal_env.client.service_client.config.target_host
    async with tls_proxy(certificates, upstream) as address:
        assert await reaches_temporal(
            temporal_settings(address, temporal_tls_server_ca_cert_path=certificates.ca)
        )
        inline = certificates.ca.read_text()
        assert await reaches_temporal(temporal_settings(address, temporal_tls_server_ca_cert_data=inline))
        # The system's CAs do not know the self-signed CA, another CA did not sign it, plain text is refused.
        assert not await reaches_temporal(temporal_settings(address, temporal_tls=True))
        assert not await reaches_temporal(
            temporal_settings(address, temporal_tls_server_ca_cert_path=certificates.other_ca)
        )
        assert not await reaches_temporal(temporal_settings(address))


@pytest.mark.workflow
async def test_temporal_server_name_override(
    temporal_env: WorkflowEnvironment, certificates: Certificates
) -> None:
    """The certificate names temporal.internal: dialled as localhost, only the override makes it match."""
    upstream = temporal_env.client.service_client.config.target_host
    async with tls_proxy(certificates, upstream) as address:
        as_localhost = address.replace("127.0.0.1", "localhost")
        ca = {"temporal_tls_server_ca_cert_path": certificates.ca}
        assert not await reaches_temporal(temporal_settings(as_localhost, **ca))
        assert await reaches_temporal(
            temporal_settings(as_localhost, temporal_tls_server_name=SERVER_NAME, **ca)
        )


@pytest.mark.workflow
async def test_temporal_mtls_needs_the_client_certificate(
    temporal_env: WorkflowEnvironment, certificates: Certificates
) -> None:
    upstream = temporal_env.client.service_client.config.target_host
    async with tls_proxy(certificates, upstream, require_client_cert=True) as address:
        ca = {"temporal_tls_server_ca_cert_path": certificates.ca}
        assert not await reaches_temporal(temporal_settings(address, **ca))
        assert await reaches_temporal(
            temporal_settings(
                address,
                temporal_tls_client_cert_path=certificates.client_cert,
                temporal_tls_client_key_path=certificates.client_key,
                **ca,
            )
        )
        # The key inline (a secret in the environment) works the same.
        assert await reaches_temporal(
            temporal_settings(
                address,
                temporal_tls_client_cert_data=certificates.client_cert.read_text(),
                temporal_tls_client_key_data=certificates.client_key.read_text(),
                **ca,
            )
        )


@pytest.mark.unit
def test_temporal_connection_is_built_from_the_settings_only(tmp_path: Path) -> None:
    plain = temporal_connection(load_settings(_env_file=None))
    assert (plain.target_host, plain.namespace, plain.tls, plain.api_key) == (
        "localhost:7233",
        "default",
        False,
        None,
    )
    cloud = temporal_connection(
        load_settings(
            _env_file=None,
            temporal_address="orders.a1b2c.tmprl.cloud:7233",
            temporal_namespace="orders.a1b2c",
            temporal_api_key="cloud-api-key-value",
        )
    )
    assert cloud.tls is True and cloud.api_key == "cloud-api-key-value"
    assert cloud.namespace == "orders.a1b2c"
    (tmp_path / "ca.pem").write_bytes(b"CA PEM")
    (tmp_path / "key.pem").write_bytes(b"KEY PEM")
    mtls = temporal_connection(
        load_settings(
            _env_file=None,
            temporal_tls_server_ca_cert_path=tmp_path / "ca.pem",
            temporal_tls_client_cert_data="CERT PEM",
            temporal_tls_client_key_path=tmp_path / "key.pem",
            temporal_tls_server_name="frontend.internal",
        )
    )
    assert mtls.tls == TLSConfig(
        server_root_ca_cert=b"CA PEM",
        domain="frontend.internal",
        client_cert=b"CERT PEM",
        client_private_key=b"KEY PEM",
    )
    assert "KEY PEM" not in repr(mtls) and "cloud-api-key-value" not in repr(cloud)


@pytest.mark.unit
@pytest.mark.parametrize(
    "options",
    [
        {"temporal_tls_client_cert_data": "CERT"},  # a certificate without its key
        {"temporal_tls_client_key_data": "KEY"},
        {"temporal_tls_server_ca_cert_data": "CA", "temporal_tls_server_ca_cert_path": "/ca.pem"},
    ],
)
def test_inconsistent_tls_options_are_refused(options: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="TEMPORAL_TLS"):
        load_settings(_env_file=None, **options)


# --- PostgreSQL and RabbitMQ ------------------------------------------------------------------------------


@pytest.mark.unit
def test_postgres_tls_parameters_reach_asyncpg_through_a_dsn() -> None:
    from sqlalchemy.engine import make_url

    assert postgres_tls_arguments(make_url("postgresql+asyncpg://orders@db/orders")) == {}
    url = "postgresql+asyncpg://orders:pw@db/orders?sslmode=verify-full&sslrootcert=/etc/ca.pem"
    assert set(postgres_tls_arguments(make_url(url))) == {"async_creator"}


@pytest.mark.integration
async def test_postgres_sslmode_is_honoured() -> None:
    """The local PostgreSQL serves no TLS: `disable` connects in plain text, `require` is refused by it,
    which shows the mode reached the driver (the URL's query is not silently dropped)."""
    base = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
    engine = create_engine(base + "?sslmode=disable")
    try:
        async with engine.connect() as connection:
            assert (await connection.execute(text("select 1"))).scalar() == 1
    finally:
        await engine.dispose()
    engine = create_engine(base + "?sslmode=require")
    try:
        with pytest.raises(ConnectionError, match="SSL"):
            async with engine.connect():
                pass
    finally:
        await engine.dispose()


@pytest.mark.unit
async def test_amqps_url_carries_the_ca_and_client_certificate() -> None:
    # Built on a running loop: aiormq takes the current one (a sync test would depend on leftover state).
    connection = aiormq.Connection(
        "amqps://relay:pw@broker.internal/?cafile=/etc/ca.pem&certfile=/etc/c.pem&keyfile=/etc/c.key"
    )
    assert connection.url.port == 5671
    assert connection.ssl_certs.cafile == "/etc/ca.pem"
    assert (connection.ssl_certs.cert, connection.ssl_certs.key) == ("/etc/c.pem", "/etc/c.key")
    assert connection.ssl_certs.verify


@pytest.mark.integration
async def test_amqps_verifies_the_broker_with_the_ca_file(certificates: Certificates) -> None:
    """An amqps:// URL with a CA file handshakes TLS with that CA: against a TLS endpoint whose certificate
    another CA signed, the connection is refused at the handshake (the local broker speaks plain AMQP, so
    the TLS endpoint here is the proxy; no AMQP exchange happens)."""
    async with tls_proxy(certificates, "127.0.0.1:5672") as address:
        url = f"amqps://guest:guest@{address}/?cafile={certificates.other_ca}"
        with pytest.raises((ssl.SSLError, aiormq.exceptions.AMQPConnectionError)) as failure:
            await aio_pika.connect(url, timeout=10)
        assert "CERTIFICATE_VERIFY_FAILED" in repr(failure.value) or "certificate" in repr(failure.value)
        url = f"amqps://guest:guest@{address}/?cafile={certificates.ca}"
        connection = await aio_pika.connect(url, timeout=10)
        await connection.close()


# --- secrets ----------------------------------------------------------------------------------------------


SECRETS = {
    "database_password": "db-secret-0001",
    "rabbitmq_password": "broker-secret-0002",
    "smtp_password": "smtp-secret-0003",
    "temporal_api_key": "temporal-key-0004",
    "temporal_tls_client_key_data": "-----BEGIN PRIVATE KEY-----client-key-0005",
    "temporal_tls_client_cert_data": "CERT",
}


@pytest.fixture
def secret_settings() -> Iterator[Settings]:
    yield load_settings(
        _env_file=None,
        database_url="postgresql+asyncpg://orders:url-secret-0006@db/orders",
        api_keys={"shop": "api-key-secret-0007"},
        api_key_scopes={"shop": ["orders:read"]},
        **SECRETS,
    )


def _secret_values() -> list[str]:
    values = [value for name, value in SECRETS.items() if name != "temporal_tls_client_cert_data"]
    return [*values, "url-secret-0006", "api-key-secret-0007"]


@pytest.mark.unit
def test_settings_repr_shows_no_secret(secret_settings: Settings) -> None:
    assert "broker-secret-0002" in secret_settings.rabbitmq_url  # the password is in the URL it connects with
    assert "db-secret-0001" in secret_settings.database_url
    shown = repr(secret_settings) + str(secret_settings) + repr(temporal_connection(secret_settings))
    for secret in _secret_values():
        assert secret not in shown, secret
    assert masked_url(secret_settings.database_url) == "postgresql+asyncpg://orders:***@db/orders"


@pytest.mark.unit
def test_a_refused_database_url_is_reported_without_its_password() -> None:
    with pytest.raises(ValueError) as refused:
        load_settings(_env_file=None, database_url="mysql://orders:url-secret-0008@db/orders")
    assert "url-secret-0008" not in str(refused.value)


@pytest.mark.unit
@pytest.mark.parametrize("log_format", ["text", "json"])
def test_logged_settings_show_no_secret(
    secret_settings: Settings, log_format: str, capsys: pytest.CaptureFixture[str]
) -> None:
    logger = logging.getLogger("test.secrets." + log_format)
    logger.propagate = False
    handler = log_handler(secret_settings.model_copy(update={"log_format": log_format}))
    logger.addHandler(handler)
    try:
        logger.warning("starting with %s and %r", secret_settings, secret_settings)
    finally:
        logger.removeHandler(handler)
    logged = capsys.readouterr().err
    assert "starting with" in logged
    for secret in _secret_values():
        assert secret not in logged, secret


@pytest.mark.unit
def test_empty_variables_leave_tls_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """`VAR=` lines (as an env file leaves them) mean unset: no empty CA path turning TLS on."""
    for name in ("TEMPORAL_TLS_SERVER_CA_CERT_PATH", "TEMPORAL_API_KEY", "TEMPORAL_TLS_SERVER_NAME"):
        monkeypatch.setenv(name, "")
    settings = load_settings(_env_file=None)
    assert not settings.temporal_uses_tls
    assert temporal_connection(settings).tls is False
