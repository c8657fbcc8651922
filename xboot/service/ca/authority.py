"""The issuing CA as the rest of the service sees it, whoever signs: its certificate and the chain above.

Enrollment records it, EST's `/cacerts` and every JSON enrollment answer hand its chain to devices,
renewal and revocation recognise its certificates, and reports trust it. A local `Signer` is one
(with a key); an upstream CA is one without.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from cryptography import x509

from xboot.pki import certificates_to_pem, sha256_fingerprint


@dataclass(frozen=True)
class IssuingCa:
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]  # above the issuing CA, towards (and perhaps including) the root

    @cached_property
    def chain_pem(self) -> str:
        """The issuing CA and everything above it, as PEM (what devices append after their leaf)."""
        return certificates_to_pem((self.certificate, *self.chain))

    @cached_property
    def fingerprint(self) -> str:
        return sha256_fingerprint(self.certificate)

    @cached_property
    def subject_text(self) -> str:
        """The CA's subject as RFC 4514 text: every leaf's issuer, rendered once per CA, not per certificate."""
        return self.certificate.subject.rfc4514_string()
