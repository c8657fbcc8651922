"""The calls a device or an operator makes to an xboot service, on top of `Transport`.

Enrollment answers are verified (key, CN, chain) before they are returned; nothing here
prints or exits, and errors are `ClientError`s whose messages are safe to show.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import quote

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from xboot.device.credentials import Credentials
from xboot.device.enrollment import Enrollment, build_csr, parse_enrollment, verify_enrollment
from xboot.device.errors import ClientError, ServerUnavailable, VerificationFailed
from xboot.device.transport import Transport, multipart
from xboot.pki import PrivateKey
from xboot.pki import normalize_fingerprint as pki_normalize_fingerprint

REPORT_KINDS = ("system", "update")
REVOCATION_SELECTORS = ("serialNumber", "fingerprint", "registrationId", "certificate")
TRUST_SETTING = "soup.report.validation.trusted.cert.fingerprints"


class XbootClient(Transport):
    """Calls to one xboot service: enrollment, reports, and the operator's trust and lifecycle calls."""

    # -- enrollment --

    def enroll(
        self,
        registration_id: str,
        key: PrivateKey,
        anchors: Sequence[x509.Certificate] = (),
        credentials: Credentials | None = None,
    ) -> Enrollment:
        """POST /api/certificate with a CSR for `key`; the answer is verified before it is returned."""
        csr = build_csr(key, registration_id)
        der = csr.public_bytes(serialization.Encoding.DER)
        document: dict[str, Any] = {"RegistrationId": registration_id, "Csr": base64.b64encode(der).decode("ascii")}
        headers = {}
        if credentials is not None:
            attestation = credentials.attestation(der)
            if attestation is not None:
                document["Attestation"] = attestation
            if credentials.authorization is not None:
                headers["Authorization"] = credentials.authorization
        body = json.dumps(document).encode()
        response = self.request("POST", "/api/certificate", body, "application/json", headers=headers)
        enrollment = parse_enrollment(response.json(), registration_id)
        verify_enrollment(key, enrollment, anchors=anchors)
        return enrollment

    # -- reports --

    def upload_report(self, signed: bytes, kind: str, filename: str = "report.signed") -> Any:
        """POST the signed report as the form field `signedReport`, like the guide's curl --form."""
        if kind not in REPORT_KINDS:
            raise ClientError(f"report kind must be one of {', '.join(REPORT_KINDS)}, not {kind!r}")
        body, content_type = multipart("signedReport", filename, signed)
        path = f"/api/install/v1/{kind}-reports"
        response = self.request("POST", path, body, content_type)
        return response.json() if response.body.strip() else {}

    # -- trust anchors --

    def trusted_fingerprints(self) -> list[str]:
        path = f"/api/mgmt/v1/tenant-config/{TRUST_SETTING}"
        return self._fingerprint_list(self._json(self.request("GET", path, admin=True), f"GET {path}"), path)

    def issuing_ca_trusted(self) -> bool:
        """Whether the service trusts its own issuing CA for reports beside the list (TrustIssuingCa)."""
        path = f"/api/mgmt/v1/tenant-config/{TRUST_SETTING}"
        return bool(self._object(self.request("GET", path, admin=True), f"GET {path}").get("issuingCaTrusted"))

    def set_trusted_fingerprints(self, fingerprints: Iterable[str]) -> list[str]:
        """Replace the whole list (the API has no "add"): read it first to keep what is there."""
        path = f"/api/mgmt/v1/tenant-config/{TRUST_SETTING}"
        body = json.dumps({"value": [normalize_fingerprint(f) for f in fingerprints]}).encode()
        response = self.request("POST", path, body, "application/json", admin=True)
        if not response.body.strip():
            return self.trusted_fingerprints()
        return self._fingerprint_list(self._json(response, f"POST {path}"), path)

    @staticmethod
    def _fingerprint_list(document: Any, path: str) -> list[str]:
        value = document.get("value") if isinstance(document, dict) else None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ServerUnavailable(f'{path}: the service did not answer with {{"value": [fingerprints]}}')
        return value

    # -- device lifecycle (admin), CRL (public) --

    def revoke(self, selector: str, value: str, reason: str = "unspecified") -> dict[str, Any]:
        """Revoke by one of REVOCATION_SELECTORS; retrying is safe (the same revocation answers 200, not twice)."""
        if selector not in REVOCATION_SELECTORS:
            raise ClientError(f"revoke by one of {', '.join(REVOCATION_SELECTORS)}, not {selector!r}")
        path = "/api/mgmt/v1/revocations"
        body = json.dumps({selector: value, "reason": reason}).encode()
        return self._object(self.request("POST", path, body, "application/json", admin=True), f"POST {path}")

    def revocations(self) -> list[dict[str, Any]]:
        """Every entry, oldest first, following the pages."""
        return self._pages("/api/mgmt/v1/revocations", {}, "revocations")[1]

    def remove_revocation(self, revocation_id: str) -> dict[str, Any]:
        """End a certificateHold (the service refuses to remove any other revocation: 409)."""
        path = f"/api/mgmt/v1/revocations/{quote(revocation_id, safe='')}"
        return self._object(self.request("DELETE", path, admin=True), f"DELETE {path}")

    def certificates(
        self, registration_id: str | None = None, *, expiring_within_days: int | None = None, status: str | None = None
    ) -> dict[str, Any]:
        """What was issued to a device, or (without one) to the whole fleet by notAfter, optionally only
        those valid now that expire within that many days, or in one `status` (valid, expired, revoked);
        each with its revocation state, following the pages."""
        query = {"registrationId": registration_id} if registration_id else {}
        if expiring_within_days is not None:
            query["expiringWithinDays"] = str(expiring_within_days)
        if status:
            query["status"] = status
        first, items = self._pages("/api/mgmt/v1/certificates", query, "certificates")
        return {**first, "certificates": items}

    def reports(
        self, kind: str, *, gateway_id: str | None = None, since: str | None = None, until: str | None = None
    ) -> dict[str, Any]:
        """One gateway's reports newest first, or every gateway's received in [since, until) oldest first
        (`until` defaults to now, fixed for every page); following the pages."""
        if gateway_id:
            query = {"gatewayId": gateway_id}
        else:
            now = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
            query = {"since": since or "", "until": until or now}
        first, items = self._pages(f"/api/install/v1/{kind}-reports", query, "reports")
        return {**first, "reports": items}

    def crl(self) -> x509.CertificateRevocationList:
        path = "/api/crl"
        response = self.request("GET", path)
        try:
            return x509.load_der_x509_crl(response.body)
        except ValueError:
            raise VerificationFailed(f"GET {path}: the service did not answer with a DER CRL") from None


def normalize_fingerprint(text: str) -> str:
    """`bb:ea:...`, `BBEA...` or `sha256 Fingerprint=BB:EA:...` to the `BB:EA:...` form the trust API takes."""
    value = text.strip().rsplit("=", 1)[-1].replace(" ", "")
    normalized = pki_normalize_fingerprint(value)
    if normalized is None:
        raise ClientError(f"not a SHA-256 fingerprint (64 hex digits, colons optional): {text.strip()[:80]!r}")
    return normalized
