"""Who signs device certificates, chosen by the `Issuer` setting.

`Local` (the default) signs here with the CA key from `Location`. The others are upstream CAs the
customer already runs: xboot stays the device's front door (wire formats, authorization, registration
policy, revocation checks, audit, reports) and forwards only the checked CSR. One module per issuer,
each exposing `ISSUER`; this registry is the only place that knows them all, and a module is imported
only when selected.
"""

from __future__ import annotations

import datetime as dt
import importlib
from dataclasses import dataclass
from typing import Protocol

from cryptography import x509

from xboot.errors import ConfigurationError, NotFound
from xboot.pki import PublicKey
from xboot.service.ca.authority import IssuingCa
from xboot.service.settings import Settings

SETTING = "Issuer"
DEFAULT = "Local"


@dataclass(frozen=True)
class Order:
    """What to certify, after every check of the request has passed."""

    registration_id: str
    csr: x509.CertificateSigningRequest
    key: PublicKey  # the CSR's key, already held to the device key rules
    validity: dt.timedelta  # CertificateValidityDays: what Local grants, the most an upstream may grant
    now: dt.datetime


class Issuer(Protocol):
    name: str

    def authority(self, settings: Settings) -> IssuingCa:
        """The issuing CA and its chain (cached per process)."""
        ...

    def issue(self, order: Order, ca: IssuingCa, settings: Settings) -> x509.Certificate:
        """The device's certificate, issued by `ca`; raises rather than return one that fails a check."""
        ...

    def forward_revocation(
        self, serials: tuple[str, ...], issuer: str | None, reason: str, settings: Settings
    ) -> Forwarded | None:
        """Revoke these serials at the upstream too, where it has an API and they are of its issuing CA (SHA-256
        fingerprint `issuer`); None where there is nothing to forward."""
        ...


@dataclass(frozen=True)
class Forwarded:
    """What the upstream said to a forwarded revocation: serials it revoked, and those it did not (retry
    by sending the same revocation again; xboot's own entry applies either way)."""

    issuer: str
    revoked: tuple[str, ...]
    failed: tuple[str, ...]

    def to_json(self) -> dict[str, object]:
        return {"issuer": self.issuer, "revoked": list(self.revoked), "failed": list(self.failed)}


# name (as written in the setting) -> module beside this file
REGISTRY: dict[str, str] = {"Local": "local", "EST": "est", "CFSSL": "cfssl", "Custom": "custom"}


def issuer_name(settings: Settings) -> str:
    value = settings.get(SETTING, DEFAULT)
    assert value is not None
    for name in REGISTRY:
        if value.lower() == name.lower():
            return name
    raise ConfigurationError(f"setting {SETTING}: unknown issuer; use one of {', '.join(REGISTRY)}")


def resolve(settings: Settings) -> Issuer:
    issuer: Issuer = importlib.import_module(f"{__name__}.{REGISTRY[issuer_name(settings)]}").ISSUER
    return issuer


def load_issuing_ca(settings: Settings) -> IssuingCa:
    """The CA whose certificates this service hands out, whoever signs them."""
    return resolve(settings).authority(settings)


def require_local(settings: Settings, what: str) -> None:
    """Refuse what only a CA with its key here can do (sign a CRL), naming who signs instead."""
    name = issuer_name(settings)
    if name != DEFAULT:
        raise NotFound(
            f"no {what} here: certificates are issued by the upstream CA (Issuer {name}), whose own CRL or OCSP "
            "relying parties use; xboot's revocation list still applies to enrollment and reports",
            code="no_crl",
        )
