"""A development CA: the XBoot README's openssl steps (root, then intermediate), done in Python.

For trying xboot out and for tests. Production CAs belong in Key Vault.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from xboot.pki import PrivateKey, generate_key, signature_hash
from xboot.service.ca.issuance import random_serial


def ca_certificate(
    subject: str,
    key: PrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: PrivateKey | None,
    days: int,
    path_length: int | None,
    now: dt.datetime,
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    signing_key = issuer_key or key
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(random_serial())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signing_key.public_key()), critical=False)
    )
    return builder.sign(signing_key, signature_hash(signing_key))


@dataclass(frozen=True)
class DevelopmentCa:
    directory: Path

    @property
    def root_certificate(self) -> Path:
        return self.directory / "ca.cer"

    @property
    def root_key(self) -> Path:
        return self.directory / "ca.key"

    @property
    def certificate(self) -> Path:
        return self.directory / "ia.cer"

    @property
    def key(self) -> Path:
        return self.directory / "ia.key"

    def exists(self) -> bool:
        return self.certificate.exists() and self.key.exists() and self.root_certificate.exists()

    def settings(self) -> dict[str, str]:
        """The Location File settings that serve this CA."""
        return {
            "Location": "File",
            "CertificateFile": str(self.certificate),
            "PrivateKeyFile": str(self.key),
            "CertificateChainFile": str(self.root_certificate),
        }


def _write(path: Path, data: bytes, private: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def create_development_ca(directory: Path, key_type: str = "ec-p256") -> DevelopmentCa:
    """Root (10 years) and intermediate (5 years, pathlen 0) in `directory`; never overwrites."""
    ca = DevelopmentCa(directory)
    if any(p.exists() for p in (ca.root_certificate, ca.root_key, ca.certificate, ca.key)):
        raise FileExistsError(f"{directory} already holds a CA; choose an empty folder")
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    root_key = generate_key(key_type)
    root = ca_certificate("xboot development root CA", root_key, None, None, 3650, None, now)
    intermediate_key = generate_key(key_type)
    intermediate = ca_certificate("xboot development intermediate CA", intermediate_key, root, root_key, 1825, 0, now)
    pem = serialization.Encoding.PEM
    private = serialization.PrivateFormat.PKCS8
    none = serialization.NoEncryption()
    _write(ca.root_key, root_key.private_bytes(pem, private, none), private=True)
    _write(ca.root_certificate, root.public_bytes(pem), private=False)
    _write(ca.key, intermediate_key.private_bytes(pem, private, none), private=True)
    _write(ca.certificate, intermediate.public_bytes(pem), private=False)
    return ca
