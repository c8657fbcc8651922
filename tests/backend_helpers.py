"""Helpers shared by the real-backend tests (Azurite, the Key Vault double): enroll, then let openssl judge."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.conftest import Functions, Reply
from tests.fixtures.xboot_pki import OpensslCa
from tests.helpers import make_csr, openssl
from xboot.pki import PrivateKey, load_private_key


@dataclass(frozen=True)
class CaFiles:
    """An openssl-made intermediate (the issuing CA), its key and the root above it."""

    certificate: x509.Certificate
    key: PrivateKey
    root: x509.Certificate
    root_path: Path

    @classmethod
    def load(cls, ca: OpensslCa) -> CaFiles:
        return cls(
            x509.load_pem_x509_certificate(ca.cert.read_bytes()),
            load_private_key(ca.key.read_bytes(), None, "test"),
            x509.load_pem_x509_certificate(ca.root_cert.read_bytes()),
            ca.root_cert,
        )


def enroll(functions: Functions, directory: Path, registration_id: str) -> Reply:
    """What a device does: an openssl-made key and CSR, posted to /api/certificate."""
    csr = make_csr(directory, registration_id)
    return functions.call("POST", "/api/certificate", {"RegistrationId": registration_id, "Csr": csr.b64})


def verify_issued(body: dict, root: Path, directory: Path) -> x509.Certificate:
    """`openssl verify` of the returned leaf against the root, through the returned chain."""
    directory.mkdir(parents=True, exist_ok=True)
    leaf = x509.load_der_x509_certificate(base64.b64decode(body["certificate"]))
    (directory / "leaf.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    (directory / "chain.pem").write_text(body["certificateChain"])
    out = openssl(
        "verify", "-CAfile", str(root), "-untrusted", str(directory / "chain.pem"), str(directory / "leaf.pem")
    )
    assert out.strip().endswith(b": OK"), out
    return leaf
