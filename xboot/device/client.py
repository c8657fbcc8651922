"""The device and operator side of xboot: what XBoot.Client did, for Python devices.

A device makes its key (it never leaves), sends a CSR with CN = registration ID,
and accepts the certificate only once it matches the key and chains to the CA the
service named. Device files are written atomically, previous versions kept as
`.bak`. Reports are signed here and uploaded; operators manage the trust anchors.

A library: nothing here prints or exits. Only the standard library (urllib) and
`cryptography` are used, so it stays light on devices. Errors are `ClientError`s
whose messages are safe to show: they never contain keys or passwords.
"""

from __future__ import annotations

import base64
import datetime as dt
import email.utils
import http.client
import itertools
import json
import os
import random
import re
import secrets
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from xboot.device.smime import key_matches
from xboot.pki import KEY_TYPES, PrivateKey, common_name, generate_key, sha256_fingerprint, signature_hash
from xboot.pki import normalize_fingerprint as pki_normalize_fingerprint

__all__ = [
    "KEY_TYPES",
    "REPORT_KINDS",
    "REVOCATION_SELECTORS",
    "ClientError",
    "DeviceFiles",
    "DeviceIdentity",
    "DeviceResult",
    "Enrollment",
    "RetryNotice",
    "RetryPolicy",
    "ServerRefused",
    "ServerUnavailable",
    "VerificationFailed",
    "XbootClient",
    "build_csr",
    "enroll_device",
    "generate_key",
    "load_certificate_file",
    "load_key_file",
    "normalize_fingerprint",
    "renew_device",
    "renewal_due",
    "verify_enrollment",
]

REPORT_KINDS = ("system", "update")
REVOCATION_SELECTORS = ("serialNumber", "fingerprint", "registrationId", "certificate")
TRUST_SETTING = "soup.report.validation.trusted.cert.fingerprints"
MAX_RESPONSE_BYTES = 1024 * 1024
RETRY_STATUSES = frozenset({429, 502, 503, 504})
_UNSAFE_FILENAME = re.compile(r"[^A-Za-z0-9._-]")


class ClientError(Exception):
    """Something went wrong on this side: a file, an argument, a key."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code


class ServerRefused(ClientError):
    """The service answered 4xx: retrying the same request will not help."""


class ServerUnavailable(ClientError):
    """The service failed (5xx, 429) or could not be reached, after the retries allowed."""


class VerificationFailed(ClientError):
    """The service answered, but what it sent does not match our key or does not chain."""


# -- HTTP ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries for 429/502/503/504 and network errors: Retry-After when given, else backoff with jitter."""

    attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 30.0

    def delay(self, retry: int, retry_after: float | None) -> float:
        """Seconds to wait before retry number `retry` (1-based); Retry-After is honoured up to `max_delay`."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_delay)
        ceiling = min(self.max_delay, self.base_delay * 2 ** (retry - 1))
        return ceiling / 2 + random.uniform(0, ceiling / 2)


@dataclass(frozen=True)
class RetryNotice:
    """Passed to `on_retry` before each wait, so a caller can show progress."""

    what: str  # "POST /api/certificate"
    reason: str  # "503 backend_unavailable: ..." or the network error
    attempt: int  # the attempt that failed, 1-based
    attempts: int
    delay: float


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.body.decode("utf-8-sig"))
        except (UnicodeDecodeError, ValueError):
            return None

    def error(self) -> tuple[str | None, str]:
        """The service's `{"error", "message"}`, or a printable start of whatever else it sent."""
        document = self.json()
        if isinstance(document, dict) and ("error" in document or "message" in document):
            return str(document.get("error") or "") or None, str(document.get("message") or "")
        text = self.body[:200].decode("utf-8", "replace")
        return None, "".join(ch if ch.isprintable() else " " for ch in text).strip() or "(empty response)"


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def split_service_url(url: str) -> tuple[str, str | None]:
    """The app's base URL and any `code` in it.

    Accepts what the Azure portal's "Get Function URL" gives (`https://app/api/certificate?code=...`)
    as well as the bare app URL.
    """
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ClientError(f"--url must be an http(s) URL of the xboot service, got {parts.scheme or 'no'} scheme")
    code = dict(parse_qsl(parts.query)).get("code") or None
    path = parts.path.rstrip("/")
    cut = (path + "/").find("/api/")
    if cut >= 0:
        path = path[:cut]
    return urlunsplit((parts.scheme, parts.netloc, path, "", "")), code


def is_loopback_or_https(base_url: str) -> bool:
    """Plain HTTP sends keys in the clear: fine on this machine, not across a network."""
    parts = urlsplit(base_url)
    return parts.scheme == "https" or (parts.hostname or "") in ("localhost", "127.0.0.1", "::1")


def _multipart(field_name: str, filename: str, data: bytes) -> tuple[bytes, str]:
    """One file field, as `curl --form 'signedReport=@file'` sends it."""
    filename = _UNSAFE_FILENAME.sub("_", filename) or "report.signed"  # it goes into a header
    boundary = "xboot-" + secrets.token_hex(16)
    while boundary.encode() in data:
        boundary = "xboot-" + secrets.token_hex(16)
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field_name}"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect would carry the function key to wherever it points, and turn POST into GET: report it instead."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class XbootClient:
    """Calls to one xboot service. Thread-safe: each request is independent."""

    def __init__(
        self,
        url: str,
        *,
        function_key: str | None = None,
        admin_key: str | None = None,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        on_retry: Callable[[RetryNotice], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.base_url, code_in_url = split_service_url(url)
        self.function_key = function_key or code_in_url
        self.admin_key = admin_key
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.on_retry = on_retry
        self._sleep = sleep
        self._opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=ssl_context), _NoRedirects)

    # -- transport --

    def _send_once(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> Response:
        # The scheme was checked in split_service_url: only http and https reach here.
        request = urllib.request.Request(self.base_url + path, data=body, method=method, headers=headers)  # noqa: S310
        try:
            with self._opener.open(request, timeout=self.timeout) as reply:
                return Response(reply.status, {k.lower(): v for k, v in reply.headers.items()}, self._read(reply))
        except urllib.error.HTTPError as error:
            with error:
                return Response(error.code, {k.lower(): v for k, v in error.headers.items()}, self._read(error))

    @staticmethod
    def _read(reply: Any) -> bytes:
        data = reply.read(MAX_RESPONSE_BYTES + 1)
        if len(data) > MAX_RESPONSE_BYTES:
            raise ServerUnavailable(f"the service sent more than {MAX_RESPONSE_BYTES // 1024} KiB; refusing to read it")
        return data

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        content_type: str | None = None,
        admin: bool = False,
    ) -> Response:
        """One call, retried when the service says "later" or the network failed; 2xx or an exception."""
        what = f"{method} {path}"
        headers = {"Accept": "application/json", "User-Agent": "xboot-client"}
        if content_type:
            headers["Content-Type"] = content_type
        key = self.admin_key if admin else self.function_key
        if key:
            headers["x-functions-key"] = key
        attempts = max(1, self.retry.attempts)
        attempt = 0
        while True:
            attempt += 1
            status: int | None = None
            code: str | None = None
            retry_after: float | None = None
            try:
                response = self._send_once(method, path, body, headers)
            except urllib.error.URLError as error:
                if isinstance(error.reason, ssl.SSLCertVerificationError):  # not transient: do not retry
                    raise ServerUnavailable(
                        f"{what}: the service's TLS certificate did not verify: {error.reason.verify_message}"
                    ) from None
                reason = f"cannot reach {self.base_url}: {error.reason}"
            except (OSError, http.client.HTTPException) as error:  # timeouts, resets, bad status lines
                reason = f"network error talking to {self.base_url}: {error or type(error).__name__}"
            else:
                if 200 <= response.status < 300:
                    return response
                status = response.status
                if 300 <= status < 400:
                    location = response.headers.get("location", "elsewhere")
                    raise ServerRefused(
                        f"{what}: {status}: the service redirects to {location}; use that URL", status=status
                    )
                code, message = response.error()
                reason = f"{status}{' ' + code if code else ''}: {message}"
                if status not in RETRY_STATUSES:
                    failure = ServerRefused if 400 <= status < 500 else ServerUnavailable
                    raise failure(f"{what}: {reason}", status=status, code=code)
                retry_after = parse_retry_after(response.headers.get("retry-after"))
            if attempt >= attempts:
                raise ServerUnavailable(
                    f"{what}: {reason} (gave up after {attempts} attempts)", status=status, code=code
                )
            delay = self.retry.delay(attempt, retry_after)
            if self.on_retry is not None:
                self.on_retry(RetryNotice(what, reason, attempt, attempts, delay))
            self._sleep(delay)

    def _json(self, response: Response, what: str) -> Any:
        document = response.json()
        if document is None:
            raise ServerUnavailable(f"{what}: the service answered {response.status} without valid JSON")
        return document

    # -- enrollment --

    def enroll(self, registration_id: str, key: PrivateKey, anchors: Sequence[x509.Certificate] = ()) -> Enrollment:
        """POST /api/certificate with a CSR for `key`; the answer is verified before it is returned."""
        csr = build_csr(key, registration_id)
        body = json.dumps(
            {
                "RegistrationId": registration_id,
                "Csr": base64.b64encode(csr.public_bytes(serialization.Encoding.DER)).decode("ascii"),
            }
        ).encode()
        response = self.request("POST", "/api/certificate", body, "application/json")
        enrollment = parse_enrollment(response.json(), registration_id)
        verify_enrollment(key, enrollment, anchors=anchors)
        return enrollment

    # -- reports --

    def upload_report(self, signed: bytes, kind: str, filename: str = "report.signed") -> Any:
        """POST the signed report as the form field `signedReport`, like the guide's curl --form."""
        if kind not in REPORT_KINDS:
            raise ClientError(f"report kind must be one of {', '.join(REPORT_KINDS)}, not {kind!r}")
        body, content_type = _multipart("signedReport", filename, signed)
        path = f"/api/install/v1/{kind}-reports"
        response = self.request("POST", path, body, content_type)
        return response.json() if response.body.strip() else {}

    # -- trust anchors --

    def trusted_fingerprints(self) -> list[str]:
        path = f"/api/mgmt/v1/tenant-config/{TRUST_SETTING}"
        return self._fingerprint_list(self._json(self.request("GET", path, admin=True), f"GET {path}"), path)

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

    def certificates(self, registration_id: str) -> dict[str, Any]:
        """What was issued to a device, each with its revocation state, following the pages."""
        first, items = self._pages("/api/mgmt/v1/certificates", {"registrationId": registration_id}, "certificates")
        return {**first, "certificates": items}

    def crl(self) -> x509.CertificateRevocationList:
        path = "/api/crl"
        response = self.request("GET", path)
        try:
            return x509.load_der_x509_crl(response.body)
        except ValueError:
            raise VerificationFailed(f"GET {path}: the service did not answer with a DER CRL") from None

    def _object(self, response: Response, what: str) -> dict[str, Any]:
        document = self._json(response, what)
        if not isinstance(document, dict):
            raise ServerUnavailable(f"{what}: the service did not answer with a JSON object")
        return document

    def _pages(self, path: str, query: dict[str, str], field: str) -> tuple[dict[str, Any], list[Any]]:
        """The first page's document and the `field` items of every page, via continuationToken."""
        first: dict[str, Any] | None = None
        items: list[Any] = []
        token = None
        while True:
            parameters = {**query, **({"continuationToken": token} if token else {})}
            url = f"{path}?{urlencode(parameters)}" if parameters else path
            document = self._object(self.request("GET", url, admin=True), f"GET {path}")
            page = document.get(field)
            if not isinstance(page, list):
                raise ServerUnavailable(f"GET {path}: the answer has no {field} list")
            first = first or document
            items += page
            token = document.get("continuationToken")
            if not token:
                return first, items


def normalize_fingerprint(text: str) -> str:
    """`bb:ea:...`, `BBEA...` or `sha256 Fingerprint=BB:EA:...` to the `BB:EA:...` form the trust API takes."""
    value = text.strip().rsplit("=", 1)[-1].replace(" ", "")
    normalized = pki_normalize_fingerprint(value)
    if normalized is None:
        raise ClientError(f"not a SHA-256 fingerprint (64 hex digits, colons optional): {text.strip()[:80]!r}")
    return normalized


# -- keys and CSRs ---------------------------------------------------------------------------------


def key_type_of(key: PrivateKey) -> str:
    """The KEY_TYPES name of a key, so that --rekey makes a key like the one it replaces."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        name = {"secp256r1": "ec-p256", "secp384r1": "ec-p384"}.get(key.curve.name)
    else:
        name = {2048: "rsa-2048", 3072: "rsa-3072"}.get(key.key_size)
    if name is None:
        raise ClientError("the device key is neither EC P-256/P-384 nor RSA-2048/3072; use --key-type with --rekey")
    return name


def build_csr(key: PrivateKey, registration_id: str) -> x509.CertificateSigningRequest:
    """A PKCS#10 request with CN = registration ID (what Azure DPS matches) and nothing else."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, registration_id)])
    try:
        return x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, signature_hash(key))
    except ValueError as error:  # e.g. a registration ID longer than CN allows
        raise ClientError(f"cannot build a CSR for registration ID {registration_id!r}: {error}") from None


# -- verification ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Enrollment:
    """What the service issued: the device certificate, and the CA certificates above it."""

    registration_id: str
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]  # issuing CA first, then up towards the root
    serial_number: str

    @property
    def not_after(self) -> dt.datetime:
        return self.certificate.not_valid_after_utc

    @property
    def fingerprint(self) -> str:
        return sha256_fingerprint(self.certificate)


def _der(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.DER)


def parse_enrollment(document: Any, registration_id: str) -> Enrollment:
    """The 200 answer of /api/certificate; anything malformed is a verification failure, never trusted."""
    if not isinstance(document, dict) or not isinstance(document.get("certificate"), str):
        raise VerificationFailed("the service's answer has no `certificate`: not an xboot /api/certificate response")
    try:
        certificate = x509.load_der_x509_certificate(base64.b64decode(document["certificate"], validate=True))
    except ValueError:
        raise VerificationFailed("`certificate` in the service's answer is not base64 DER X.509") from None
    chain_pem = document.get("certificateChain")
    if not isinstance(chain_pem, str) or "-----BEGIN CERTIFICATE-----" not in chain_pem:
        raise VerificationFailed("the service's answer has no `certificateChain`: cannot check who issued it")
    try:
        listed = x509.load_pem_x509_certificates(chain_pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise VerificationFailed("`certificateChain` in the service's answer is not PEM certificates") from None
    chain = tuple(c for c in listed if _der(c) != _der(certificate))
    return Enrollment(registration_id, certificate, chain, format(certificate.serial_number, "X"))


def _constraints(certificate: x509.Certificate) -> x509.BasicConstraints | None:
    try:
        return certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return None


def _is_ca(certificate: x509.Certificate) -> bool:
    """CA:TRUE, or a self-signed v1 certificate (old roots, as OpenSSL accepts them)."""
    constraints = _constraints(certificate)
    if constraints is not None:
        return constraints.ca
    return certificate.version == x509.Version.v1 and certificate.issuer == certificate.subject


def _issued_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(parent)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def _check_issuer(issuer: x509.Certificate, cas_below: int) -> None:
    name = issuer.subject.rfc4514_string()
    if not _is_ca(issuer):
        raise VerificationFailed(f"{name} is in the chain but is not a CA certificate")
    constraints = _constraints(issuer)
    if constraints is not None and constraints.path_length is not None and cas_below > constraints.path_length:
        raise VerificationFailed(f"{name} allows {constraints.path_length} CAs below it; the chain has more")
    try:
        if not issuer.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign:
            raise VerificationFailed(f"{name} is not allowed to sign certificates (keyUsage)")
    except x509.ExtensionNotFound:
        pass


def verify_enrollment(
    key: PrivateKey,
    enrollment: Enrollment,
    anchors: Sequence[x509.Certificate] = (),
    now: dt.datetime | None = None,
) -> None:
    """Accept the certificate only if it is ours and chains, signature by signature, to a CA.

    The chain is the one the service sent (issuing CA first), so there is no path
    building: each certificate must be signed by the next, each issuer must be a CA
    within its path length, and every certificate must be valid now. It must end in a
    self-signed root, or, with no root sent, in the top CA the service named. With
    `anchors` (a root the device already trusts), the chain must lead to one of them.
    Deliberately not cryptography's WebPKI verifier: it refuses v1 roots and
    non-critical basicConstraints, which real device PKIs (and the report guide) use.
    """
    now = now or dt.datetime.now(dt.UTC)
    certificate = enrollment.certificate
    if not key_matches(certificate, key):
        raise VerificationFailed("the certificate returned is not for this device's key")
    if common_name(certificate.subject) != enrollment.registration_id:
        raise VerificationFailed(
            f"the certificate returned is for {certificate.subject.rfc4514_string()}, "
            f"not CN={enrollment.registration_id}"
        )
    constraints = _constraints(certificate)
    if constraints is not None and constraints.ca:
        raise VerificationFailed("the certificate returned is a CA certificate, not a device certificate")
    if not enrollment.chain:
        raise VerificationFailed("the service sent no CA certificate: cannot check who issued this certificate")
    path = [certificate, *enrollment.chain]
    anchor_ders = {_der(a) for a in anchors}
    if anchors:
        # Stop at the first anchor in the chain; or, if the chain stops short of the root, add the anchor.
        cut = next((i for i, c in enumerate(path[1:], 1) if _der(c) in anchor_ders), None)
        if cut is not None:
            path = path[: cut + 1]
        else:
            parent = next((a for a in anchors if _issued_by(path[-1], a)), None)
            if parent is None:
                raise VerificationFailed("the certificate does not chain to the expected root CA")
            path.append(parent)
    for position, (child, parent) in enumerate(itertools.pairwise(path)):
        if not _issued_by(child, parent):
            raise VerificationFailed(
                f"{child.subject.rfc4514_string()} is not signed by {parent.subject.rfc4514_string()}: "
                "the chain is broken"
            )
        _check_issuer(parent, cas_below=position)
    top = path[-1]
    if not anchors and top.issuer == top.subject and not _issued_by(top, top):
        raise VerificationFailed(f"the root {top.subject.rfc4514_string()} has an invalid self-signature")
    for member in path:
        if not member.not_valid_before_utc <= now <= member.not_valid_after_utc:
            window = f"{member.not_valid_before_utc:%Y-%m-%d %H:%M} to {member.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
            raise VerificationFailed(
                f"{member.subject.rfc4514_string()} is not valid now ({window}); is the device clock right?"
            )


def renewal_due(certificate: x509.Certificate, within: dt.timedelta, now: dt.datetime | None = None) -> bool:
    return certificate.not_valid_after_utc - (now or dt.datetime.now(dt.UTC)) <= within


# -- device files ----------------------------------------------------------------------------------


def load_certificate_file(path: Path) -> list[x509.Certificate]:
    """PEM (one or more certificates) or DER; a ClientError naming the file otherwise."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ClientError(f"cannot read {path}: {error.strerror}") from None
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificates(data)
        return [x509.load_der_x509_certificate(data)]
    except ValueError:
        raise ClientError(f"{path} is not a PEM or DER X.509 certificate") from None


def load_key_file(path: Path) -> PrivateKey:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ClientError(f"cannot read {path}: {error.strerror}") from None
    try:
        if b"-----BEGIN" in data:
            key = serialization.load_pem_private_key(data, None)
        else:
            key = serialization.load_der_private_key(data, None)
    except TypeError:
        raise ClientError(f"{path} is an encrypted key; xboot needs it unencrypted") from None
    except ValueError:
        raise ClientError(f"{path} is not a PEM or DER private key") from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise ClientError(f"{path}: only RSA and EC keys are supported")
    return key


def write_atomically(path: Path, data: bytes, mode: int) -> None:
    """Temp file in the same folder, fsync, rename: readers see the old file or the new one, never half."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, mode)  # O_CREAT's mode is filtered by the umask
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class DeviceIdentity:
    key: PrivateKey
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...] = ()

    @property
    def registration_id(self) -> str:
        name = common_name(self.certificate.subject)
        if name is None:
            raise ClientError("the device certificate has no single CN to take the registration ID from")
        return name


@dataclass(frozen=True)
class DeviceFiles:
    """A device's folder: device.key (0600), device.crt, chain.pem (CA certificates) and device.pfx (0600)."""

    directory: Path

    @property
    def key(self) -> Path:
        return self.directory / "device.key"

    @property
    def certificate(self) -> Path:
        return self.directory / "device.crt"

    @property
    def chain(self) -> Path:
        return self.directory / "chain.pem"

    @property
    def pfx(self) -> Path:
        return self.directory / "device.pfx"

    def exists(self) -> bool:
        return self.key.exists() or self.certificate.exists()

    def check_pfx_password(self, pfx_password: str | None) -> None:
        """A device.pfx left behind would hold the old certificate: it is replaced too, so its password is needed."""
        if self.pfx.exists() and not pfx_password:
            raise ClientError(f"{self.pfx} exists: give its password so that it is replaced along with the certificate")

    def load(self) -> DeviceIdentity:
        key = load_key_file(self.key)
        certificate = load_certificate_file(self.certificate)[0]
        chain = tuple(load_certificate_file(self.chain)) if self.chain.exists() else ()
        if not key_matches(certificate, key):
            raise ClientError(f"{self.certificate} does not belong to {self.key}")
        return DeviceIdentity(key, certificate, chain)

    def save(self, identity: DeviceIdentity, pfx_password: str | None = None) -> list[Path]:
        """Write every file, each atomically; a file being replaced is kept first as NAME.bak (same mode)."""
        self.check_pfx_password(pfx_password)
        pem = serialization.Encoding.PEM
        outputs: list[tuple[Path, bytes, int]] = [
            (
                self.key,
                identity.key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
                0o600,
            ),
            (self.certificate, identity.certificate.public_bytes(pem), 0o644),
            (self.chain, b"".join(c.public_bytes(pem) for c in identity.chain), 0o644),
        ]
        if pfx_password:
            pfx = pkcs12.serialize_key_and_certificates(
                identity.registration_id.encode(),
                identity.key,
                identity.certificate,
                list(identity.chain) or None,
                serialization.BestAvailableEncryption(pfx_password.encode()),
            )
            outputs.append((self.pfx, pfx, 0o600))
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        for path, _, mode in outputs:
            if path.exists():
                write_atomically(path.with_name(path.name + ".bak"), path.read_bytes(), mode)
        for path, data, mode in outputs:
            write_atomically(path, data, mode)
        return [path for path, _, _ in outputs]


# -- device flows ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceResult:
    """What `enroll_device` / `renew_device` did; `enrollment` is None when renewal was not due."""

    directory: Path
    registration_id: str
    enrollment: Enrollment | None
    files: tuple[Path, ...] = ()
    previous_not_after: dt.datetime | None = None
    rekeyed: bool = False


def _no_steps(message: str) -> None:
    """Default progress sink: the library does not print."""


def enroll_device(
    client: XbootClient,
    files: DeviceFiles,
    registration_id: str,
    key_type: str = "ec-p256",
    *,
    anchors: Sequence[x509.Certificate] = (),
    pfx_password: str | None = None,
    force: bool = False,
    on_step: Callable[[str], None] = _no_steps,
) -> DeviceResult:
    """First enrollment: a new key made here, a verified certificate, files written only after verification."""
    if files.exists() and not force:
        raise ClientError(f"{files.directory} already holds a device identity: use renew (or force to replace it)")
    if key_type not in KEY_TYPES:
        raise ClientError(f"unknown key type {key_type}; use one of {', '.join(KEY_TYPES)}")
    files.check_pfx_password(pfx_password)
    on_step(f"generating the device key ({key_type})")
    key = generate_key(key_type)
    on_step(f"requesting a certificate for {registration_id} from {client.base_url}")
    enrollment = client.enroll(registration_id, key, anchors)
    on_step(f"certificate {enrollment.serial_number} verified; writing {files.directory}")
    written = files.save(DeviceIdentity(key, enrollment.certificate, enrollment.chain), pfx_password)
    return DeviceResult(files.directory, registration_id, enrollment, tuple(written))


def renew_device(
    client: XbootClient,
    files: DeviceFiles,
    *,
    within: dt.timedelta = dt.timedelta(days=30),
    force: bool = False,
    rekey: bool = False,
    key_type: str | None = None,
    anchors: Sequence[x509.Certificate] | None = None,
    pfx_password: str | None = None,
    on_step: Callable[[str], None] = _no_steps,
) -> DeviceResult:
    """Re-enroll with the same registration ID once the certificate is within `within` of expiry.

    The current key is reused unless `rekey`. Without `anchors`, the new chain must lead to the
    top certificate of the current chain.pem: a renewal cannot silently move the device to
    another root. Nothing is written until the new certificate has been verified.
    """
    current = files.load()
    registration_id = current.registration_id
    previous = current.certificate.not_valid_after_utc
    files.check_pfx_password(pfx_password)
    if not force and not renewal_due(current.certificate, within):
        return DeviceResult(files.directory, registration_id, None, previous_not_after=previous)
    if anchors is None:
        anchors = current.chain[-1:]
    key = current.key
    if rekey:
        new_type = key_type or key_type_of(current.key)
        on_step(f"generating a new device key ({new_type})")
        key = generate_key(new_type)
    on_step(f"renewing {registration_id} (expires {previous:%Y-%m-%d %H:%M} UTC) at {client.base_url}")
    enrollment = client.enroll(registration_id, key, anchors)
    on_step(f"certificate {enrollment.serial_number} verified; replacing files in {files.directory} (old kept as .bak)")
    written = files.save(DeviceIdentity(key, enrollment.certificate, enrollment.chain), pfx_password)
    return DeviceResult(files.directory, registration_id, enrollment, tuple(written), previous, rekey)
