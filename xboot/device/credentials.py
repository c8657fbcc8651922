"""What a device shows to be allowed to enroll: a DPS device key, an enrollment token, or a certificate it holds.

Exactly the server's `EnrollmentAuthorization` methods, seen from the device: `Credentials.device_key`
sends DPS's SAS token, `Credentials.token` a Bearer JWT, `Credentials.certificate` an Attestation that
signs the CSR's DER bytes with a certificate's key (a birth certificate, or the current xboot certificate
on renewal). Standard library and `cryptography` only.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding

from xboot import dps
from xboot.device.errors import ClientError
from xboot.pki import PrivateKey

SAS_SECONDS = 600  # a SAS token made for one request lives ten minutes


@dataclass(frozen=True)
class Credentials:
    authorization: str | None = None  # the Authorization header
    certificates: tuple[x509.Certificate, ...] = ()  # the attestation: signer first, then intermediates
    key: PrivateKey | None = None  # the signer certificate's key, which signs the CSR

    @classmethod
    def device_key(cls, device_key: str, registration_id: str, now: float | None = None) -> Credentials:
        expiry = int(now if now is not None else time.time()) + SAS_SECONDS
        try:
            return cls(authorization=dps.sas_token(device_key, registration_id, expiry))
        except ValueError as error:
            raise ClientError(f"--device-key: {error}") from None

    @classmethod
    def token(cls, token: str) -> Credentials:
        if not token.strip() or any(c.isspace() for c in token.strip()):
            raise ClientError("--token must be one JWT (three base64url parts joined by dots)")
        return cls(authorization=f"Bearer {token.strip()}")

    @classmethod
    def certificate(cls, certificates: Sequence[x509.Certificate], key: PrivateKey) -> Credentials:
        if not certificates:
            raise ClientError("an attestation needs the certificate that signs")
        return cls(certificates=tuple(certificates), key=key)

    def attestation(self, csr_der: bytes) -> dict[str, Any] | None:
        """The XBoot JSON `Attestation` field: the certificates and a SHA-256 signature over the CSR's DER."""
        if self.key is None:
            return None
        if isinstance(self.key, ec.EllipticCurvePrivateKey):
            signature = self.key.sign(csr_der, ec.ECDSA(hashes.SHA256()))
        else:
            signature = self.key.sign(csr_der, padding.PKCS1v15(), hashes.SHA256())
        return {
            "Certificates": [
                base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode("ascii") for c in self.certificates
            ],
            "Signature": base64.b64encode(signature).decode("ascii"),
        }
