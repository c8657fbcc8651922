"""Signing reports the way the report-signing guide's `openssl cms -sign -text` does.

The result is a detached S/MIME message (`multipart/signed`) whose first part is the
report behind a `Content-Type: text/plain` header, and whose signature carries the
signer's certificate and the chain above it, so that the service can check the chain
against its trust anchors and `openssl cms -verify` accepts it.
"""

from __future__ import annotations

from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs7

from xboot.pki import PrivateKey, spki_der


def key_matches(certificate: x509.Certificate, key: PrivateKey) -> bool:
    """Whether `key` is the private half of the certificate's public key."""
    return spki_der(certificate.public_key()) == spki_der(key.public_key())


def sign_report(
    data: bytes, certificate: x509.Certificate, key: PrivateKey, chain: Sequence[x509.Certificate] = ()
) -> bytes:
    """S/MIME detached signature over `data` (SHA-256), with the signer certificate and `chain` included.

    Raises ValueError when the key does not belong to the certificate: a signature that
    cannot verify is better refused here than by the service.
    """
    if not key_matches(certificate, key):
        raise ValueError("the private key does not belong to the signing certificate")
    builder = pkcs7.PKCS7SignatureBuilder().set_data(data).add_signer(certificate, key, hashes.SHA256())
    # add_certificate() last: set_data()/add_signer() return builders without earlier certificates.
    seen = {certificate.fingerprint(hashes.SHA256())}
    for extra in chain:
        fingerprint = extra.fingerprint(hashes.SHA256())
        if fingerprint not in seen:
            seen.add(fingerprint)
            builder = builder.add_certificate(extra)
    return builder.sign(serialization.Encoding.SMIME, [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.Text])
