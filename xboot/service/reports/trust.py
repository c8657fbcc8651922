"""Trust anchors for signed reports: SHA-256 certificate fingerprints.

The list is the tenant configuration `soup.report.validation.trusted.cert.fingerprints`
of the report guide. It is kept in the data store (File or Blob, like the audit log)
so every instance reads the same list. Until it is first set through the API, the
app setting `TrustedFingerprints` (comma-separated) seeds it.

With `TrustIssuingCa` (default true) the service's own issuing CA is trusted as
well, so devices enrolled through `/api/certificate` can sign reports with the
certificate they received. Only the issuing CA counts, not the chain above it: a
root usually signs other CAs too, and trusting it would admit their devices.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

from cryptography import x509

from xboot.errors import BadRequest, ConfigurationError
from xboot.pki import normalize_fingerprint
from xboot.service.ca.issuers import load_issuing_ca
from xboot.service.settings import Settings
from xboot.service.storage import ObjectStore

CONFIG_NAME = "soup.report.validation.trusted.cert.fingerprints"
CONFIG_KEY = f"tenant-config/{CONFIG_NAME}.json"
MAX_FINGERPRINTS = 100


@dataclass(frozen=True)
class TrustAnchors:
    """What verification trusts: fingerprints, plus anchor certificates a sender need not embed."""

    fingerprints: frozenset[str]
    certificates: tuple[x509.Certificate, ...] = ()


@dataclass(frozen=True)
class TrustList:
    fingerprints: tuple[str, ...]
    source: str  # "tenant-config", "setting" or "none"
    updated_at: str | None = None


def _dedupe(values: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(values))


def parse_fingerprint_list(value: object) -> tuple[str, ...]:
    """The API's `value` array; every entry must be valid or nothing is accepted."""
    if not isinstance(value, list):
        raise BadRequest('send {"value": ["<SHA-256 fingerprint>", ...]}', code="invalid_fingerprints")
    if len(value) > MAX_FINGERPRINTS:
        raise BadRequest(f"at most {MAX_FINGERPRINTS} fingerprints", code="invalid_fingerprints")
    normalized = [normalize_fingerprint(v) for v in value]
    bad = [i for i, v in enumerate(normalized) if v is None]
    if bad:
        raise BadRequest(
            f"value[{bad[0]}] is not a SHA-256 fingerprint (64 hex digits, colons optional); nothing was changed",
            code="invalid_fingerprints",
        )
    return _dedupe([v for v in normalized if v is not None])


def _from_setting(settings: Settings) -> tuple[str, ...]:
    text = settings.get("TrustedFingerprints")
    if text is None:
        return ()
    entries = [e for e in text.split(",") if e.strip()]
    normalized = [normalize_fingerprint(e) for e in entries]
    if any(v is None for v in normalized):
        raise ConfigurationError("setting TrustedFingerprints: every entry must be a SHA-256 fingerprint")
    return _dedupe([v for v in normalized if v is not None])


def read_trust_list(store: ObjectStore, settings: Settings) -> TrustList:
    """The stored list if one was ever set, else the `TrustedFingerprints` seed."""
    data = store.read(CONFIG_KEY)
    if data is None:
        seeded = _from_setting(settings)
        return TrustList(seeded, "setting" if seeded else "none")
    try:
        document = json.loads(data)
        fingerprints = parse_fingerprint_list(document["value"])
        updated_at = document.get("updatedAt")
    except (ValueError, KeyError, TypeError, AttributeError, BadRequest):
        raise ConfigurationError(f"the stored trust list {CONFIG_KEY} is unreadable; set it again") from None
    return TrustList(fingerprints, "tenant-config", updated_at if isinstance(updated_at, str) else None)


def replace_trust_list(store: ObjectStore, fingerprints: tuple[str, ...], now: dt.datetime) -> TrustList:
    updated_at = now.isoformat()
    document = {"key": CONFIG_NAME, "value": list(fingerprints), "updatedAt": updated_at}
    store.replace(CONFIG_KEY, json.dumps(document, indent=1).encode("utf-8"))
    return TrustList(fingerprints, "tenant-config", updated_at)


def trusts_issuing_ca(settings: Settings) -> bool:
    return settings.boolean("TrustIssuingCa", True)


def load_trust_anchors(store: ObjectStore, settings: Settings) -> TrustAnchors:
    fingerprints = set(read_trust_list(store, settings).fingerprints)
    certificates: tuple[x509.Certificate, ...] = ()
    if trusts_issuing_ca(settings):
        try:
            ca = load_issuing_ca(settings)
        except ConfigurationError as error:
            raise ConfigurationError(
                f"TrustIssuingCa is on but the issuing CA could not be loaded ({error.message}); "
                "configure it or set TrustIssuingCa=false"
            ) from None
        fingerprints.add(ca.fingerprint)
        certificates = (ca.certificate,)
    return TrustAnchors(frozenset(fingerprints), certificates)
