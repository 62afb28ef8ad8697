"""A self-signed listener certificate, made at start when the config asks for one
(`tls.self_signed`) and none is there yet."""

from __future__ import annotations

import datetime
import ipaddress
import logging
from pathlib import Path

from control_plane.config.schema import TlsConfig

log = logging.getLogger("control_plane.secrets")


def make_self_signed(tls: TlsConfig) -> bool:
    """A self-signed certificate for localhost / 127.0.0.1 at the configured paths, when
    they are absent (examples/secure.yaml). True when one was made."""
    cert, key = Path(tls.cert_file), Path(tls.key_file)
    if cert.exists() and key.exists():
        return False
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "whisper-gateway (self-signed)")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        )
        .sign(private, hashes.SHA256())
    )
    for p in (cert, key):
        p.parent.mkdir(parents=True, exist_ok=True)
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key.chmod(0o600)
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    log.warning("made a self-signed certificate at %s (clients must trust it or skip checks)", cert)
    return True
