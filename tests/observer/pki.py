"""Certificates for the TLS tests, made with the `cryptography` package."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

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


def make_pki(d: Path) -> dict[str, Path]:
    """A CA, a server certificate for SERVER_NAME and 127.0.0.1, a client one, and a rogue one."""
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
