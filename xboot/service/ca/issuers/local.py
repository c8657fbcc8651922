"""Issuer Local: this service signs, with the CA key and certificate from `Location` (XBoot's behaviour)."""

from __future__ import annotations

from cryptography import x509

from xboot.errors import ConfigurationError
from xboot.service.ca.authority import IssuingCa
from xboot.service.ca.issuance import build_certificate, issued_subject
from xboot.service.ca.issuers import Order
from xboot.service.ca.signer import Signer, load_signer
from xboot.service.settings import Settings


def crl_distribution_point(settings: Settings) -> str | None:
    url = settings.get("CrlDistributionPointUrl")
    if url is not None and not url.startswith(("http://", "https://")):
        raise ConfigurationError("setting CrlDistributionPointUrl must be an http:// or https:// URL")
    return url


class LocalIssuer:
    name = "Local"

    def authority(self, settings: Settings) -> Signer:
        return load_signer(settings)

    def issue(self, order: Order, ca: IssuingCa, settings: Settings) -> x509.Certificate:
        assert isinstance(ca, Signer)
        crl_url = crl_distribution_point(settings)
        if crl_url is not None:
            ca.require_crl_sign("sign the CRL that CrlDistributionPointUrl points at")
        subject = issued_subject(order.registration_id, settings)
        return build_certificate(subject, order.key, ca, order.validity, order.now, crl_url)

    def forward_revocation(self, serials: tuple[str, ...], issuer: str | None, reason: str, settings: Settings) -> None:
        return None  # xboot's entry is the revocation: its CRL lists it


ISSUER = LocalIssuer()
