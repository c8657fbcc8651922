"""What an operator (or a load balancer) needs to know is working: the CA, the data store, who may enroll.

One set of checks for `xboot serve`'s start (which refuses to listen when one fails) and for
`GET /api/health`. What they report is safe to show anyone: names, fingerprints and dates, never a
setting's value, a path or an exception's text (those go to the log).
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import Any

from xboot import __version__
from xboot.errors import XbootError
from xboot.service.ca import issuers, locations
from xboot.service.ca.signer import Signer
from xboot.service.enrollment.authorization import accepted_methods
from xboot.service.enrollment.authorization.function_key import WARNING
from xboot.service.settings import Settings
from xboot.service.storage import data_store_kind, open_data_store

log = logging.getLogger(__name__)

PROBE = "health/probe.json"


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    details: dict[str, Any] = field(default_factory=dict)
    message: str | None = None  # for the log and the operator at the console; not in /api/health

    def public(self) -> dict[str, Any]:
        return {"status": "ok" if self.ok else "error", **self.details}


def _failed(name: str, error: XbootError) -> Check:
    return Check(name, False, {"error": error.code}, error.message)


def check_ca(settings: Settings, now: dt.datetime | None = None) -> Check:
    """The issuing CA loads and passes its checks (an upstream answers, its chain leads to the pinned root):
    who issues, subject, fingerprint, notAfter and days left."""
    now = now or dt.datetime.now(dt.UTC)
    try:
        issuer = issuers.resolve(settings)
        ca = issuer.authority(settings)
        where = {"location": locations.resolve(settings).name} if isinstance(ca, Signer) else {}
    except XbootError as error:
        return _failed("ca", error)
    not_after = ca.certificate.not_valid_after_utc
    details: dict[str, Any] = {
        "issuer": issuer.name,
        **where,
        "subject": ca.subject_text,
        "sha256Fingerprint": ca.fingerprint,
        "notAfter": not_after.isoformat().replace("+00:00", "Z"),
        "daysLeft": (not_after - now).days,
    }
    if isinstance(ca, Signer):
        details["crlSign"] = ca.crl_sign
    return Check("ca", True, details)


def check_data_store(settings: Settings) -> Check:
    """The data store answers and takes a write (what every enrollment's audit record needs)."""
    try:
        kind = data_store_kind(settings)
        store = open_data_store(settings)
        store.replace(PROBE, b'{"probe": true}')
        store.read(PROBE)
    except XbootError as error:
        return _failed("dataStore", error)
    return Check("dataStore", True, {"kind": "Blob" if kind == "blob" else "File"})


def check_enrollment(settings: Settings) -> Check:
    try:
        methods = [m.name for m in accepted_methods(settings)]
    except XbootError as error:
        return _failed("enrollmentAuthorization", error)
    details: dict[str, Any] = {"methods": methods}
    if "FunctionKey" in methods:
        details["warning"] = WARNING
    return Check("enrollmentAuthorization", True, details)


def run_checks(settings: Settings) -> list[Check]:
    return [check_ca(settings), check_data_store(settings), check_enrollment(settings)]


def report(checks: list[Check]) -> tuple[int, dict[str, Any]]:
    """200 when every part works, 503 naming the part that does not; failures are logged with their cause."""
    for check in checks:
        if not check.ok:
            log.error("health: %s: %s", check.name, check.message)
    healthy = all(c.ok for c in checks)
    body = {"status": "ok" if healthy else "unavailable", "version": __version__}
    body.update({c.name: c.public() for c in checks})
    return (200 if healthy else 503), body
