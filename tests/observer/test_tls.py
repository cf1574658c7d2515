"""The Observer API on TCP with TLS: server-only TLS, and mutual TLS that refuses clients without a cert.

Certificates are made in the test with the `cryptography` package; traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from meshagent.observer.client import ClientTls, ObserverClient
from meshagent.observer.proto.observer import observer_pb2 as opb
from meshagent.observer.server import ObserverServer, ServerConfig, ServerConfigError, TlsConfig
from meshagent.observer.service import ObserverService

from tests.observer import helpers as h

SERVER_NAME = "node-a.hubble-grpc.meshagent.local"


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write(path: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> tuple[Path, Path]:
    key_path = path.with_suffix(".key")
    cert_path = path.with_suffix(".crt")
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    sans: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)  # noqa: UP017 - cryptography 38 wants a tz-aware datetime
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    b = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pki")
    ca_key = _key()
    ca = _cert("meshagent test CA", ca_key, None, ca_key, ca=True)
    ca_crt, _ = _write(d / "ca", ca_key, ca)
    srv_key = _key()
    srv = _cert(
        SERVER_NAME,
        srv_key,
        ca.subject,
        ca_key,
        sans=[x509.DNSName(SERVER_NAME), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    srv_crt, srv_k = _write(d / "server", srv_key, srv)
    cli_key = _key()
    cli = _cert("operator", cli_key, ca.subject, ca_key)
    cli_crt, cli_k = _write(d / "client", cli_key, cli)
    other_key = _key()
    other_ca = _cert("someone else", other_key, None, other_key, ca=True)
    rogue_key = _key()
    rogue = _cert("rogue", rogue_key, other_ca.subject, other_key)
    rogue_crt, rogue_k = _write(d / "rogue", rogue_key, rogue)
    return {
        "ca": ca_crt,
        "srv_crt": srv_crt,
        "srv_key": srv_k,
        "cli_crt": cli_crt,
        "cli_key": cli_k,
        "rogue_crt": rogue_crt,
        "rogue_key": rogue_k,
    }


def _serve(pki: dict[str, Path], *, mutual: bool, front_process: bool) -> Iterator[int]:
    pipeline = h.make_pipeline()
    pipeline.on_events(h.sample_events())
    tls = TlsConfig(pki["srv_crt"], pki["srv_key"], pki["ca"] if mutual else None)
    server = ObserverServer(
        ObserverService(pipeline, tls_server_name=SERVER_NAME),
        ServerConfig(unix_socket=None, tcp_address="127.0.0.1:0", tls=tls, front_process=front_process),
    )
    server.start()
    try:
        assert server.tcp_port
        yield server.tcp_port
    finally:
        server.stop(grace=None)


@pytest.fixture
def tls_port(pki: dict[str, Path], serving_mode: bool) -> Iterator[int]:
    yield from _serve(pki, mutual=False, front_process=serving_mode)


@pytest.fixture
def mtls_port(pki: dict[str, Path], serving_mode: bool) -> Iterator[int]:
    yield from _serve(pki, mutual=True, front_process=serving_mode)


def _flows(port: int, tls: ClientTls) -> int:
    with ObserverClient(f"127.0.0.1:{port}", tls=tls, timeout_s=5) as c:
        return sum(1 for r in c.get_flows(opb.GetFlowsRequest(number=5)) if r.HasField("flow"))


def test_server_tls_without_client_cert(tls_port: int, pki: dict[str, Path]) -> None:
    assert _flows(tls_port, ClientTls(pki["ca"], server_name=SERVER_NAME)) == 5
    with ObserverClient(f"127.0.0.1:{tls_port}", tls=ClientTls(pki["ca"]), timeout_s=5) as c:
        node = c.get_nodes().nodes[0]
    assert node.tls.enabled and node.tls.server_name == SERVER_NAME


def test_server_tls_refuses_plaintext_client(tls_port: int) -> None:
    with ObserverClient(f"127.0.0.1:{tls_port}", timeout_s=2) as c, pytest.raises(grpc.RpcError) as info:
        c.server_status()
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_server_tls_unknown_ca_is_refused(tls_port: int, pki: dict[str, Path]) -> None:
    with pytest.raises(grpc.RpcError) as info:
        _flows(tls_port, ClientTls(pki["rogue_crt"], server_name=SERVER_NAME))  # not our CA
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_with_client_cert(mtls_port: int, pki: dict[str, Path]) -> None:
    tls = ClientTls(pki["ca"], pki["cli_crt"], pki["cli_key"], SERVER_NAME)
    assert _flows(mtls_port, tls) == 5


def test_mutual_tls_without_or_with_foreign_client_cert_is_refused(
    mtls_port: int, pki: dict[str, Path]
) -> None:
    for tls in (
        ClientTls(pki["ca"], server_name=SERVER_NAME),
        ClientTls(pki["ca"], pki["rogue_crt"], pki["rogue_key"], SERVER_NAME),
    ):
        with pytest.raises(grpc.RpcError) as info:
            _flows(mtls_port, tls)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_plaintext_tcp_needs_explicit_opt_in() -> None:
    with pytest.raises(ServerConfigError, match="allow_insecure_tcp"):
        ObserverServer(
            ObserverService(h.make_pipeline()), ServerConfig(unix_socket=None, tcp_address="127.0.0.1:0")
        )
