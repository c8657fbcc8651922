"""What every upstream CA shares: its CA chain pinned to a fingerprint, and the check of what it issued.

The upstream signs; xboot still vouches for the result. Before a certificate is recorded or returned it
must certify the CSR's key, name the registration ID as its only CN, be a leaf with clientAuth, be
signed by the upstream's issuing CA (whose chain leads to `IssuerTrustedFingerprint`), use no broken
hash, and be valid now for no longer than `CertificateValidityDays`. Any failure is a 502 and nothing
is kept.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID

from xboot.errors import BackendUnavailable, BadGateway, BadRequest, ConfigurationError, XbootError
from xboot.pki import (
    common_name,
    is_pem,
    issued_by,
    load_certificates,
    normalize_fingerprint,
    sha256_fingerprint,
    spki_der,
)
from xboot.service.ca.authority import IssuingCa
from xboot.service.ca.issuers import SETTING, Forwarded, Order
from xboot.service.ca.signer import DEFAULT_CACHE_SECONDS
from xboot.service.settings import Settings

log = logging.getLogger(__name__)

TRUSTED_FINGERPRINT = "IssuerTrustedFingerprint"
CA_CERTIFICATES = "IssuerCaCertificates"
COMMON_SETTINGS = (SETTING, TRUSTED_FINGERPRINT, CA_CERTIFICATES, "SignerCacheSeconds")
LOCAL_ONLY = ("SubjectAttributes", "CrlDistributionPointUrl")  # what only a CA signing here can honour
CLOCK_SKEW = dt.timedelta(minutes=5)
VALIDITY_SLACK = dt.timedelta(days=1)  # upstream profiles count in hours and backdate; a day's leeway
MAX_CHAIN = 8
WEAK_HASHES = (hashes.MD5, hashes.SHA1)

FetchCa = Callable[[Settings], Sequence[x509.Certificate]]
Sign = Callable[[Order, Settings], Sequence[x509.Certificate]]
Revoke = Callable[[str, str, IssuingCa, Settings], None]  # serial (hex), reason, the issuing CA; raises on failure


def _bad(issuer: str, what: str, code: str) -> BadGateway:
    return BadGateway(f"the upstream CA (Issuer {issuer}) {what}; nothing was issued", code=code)


def _extension(certificate: x509.Certificate, kind: type[x509.ExtensionType]) -> x509.ExtensionType | None:
    try:
        return certificate.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def _key_der(certificate: x509.Certificate) -> bytes | None:
    try:
        return spki_der(certificate.public_key())
    except (UnsupportedAlgorithm, ValueError):
        return None


def build_authority(
    certificates: Sequence[x509.Certificate], trusted: str, now: dt.datetime, fail: Callable[[str], XbootError]
) -> IssuingCa:
    """The issuing CA is the one certificate no other in the set was issued by; from it, link by link
    (each signature verified), the path must reach the certificate with the trusted fingerprint."""
    certificates = list(dict.fromkeys(certificates))
    if not certificates or len(certificates) > MAX_CHAIN:
        raise fail(f"its CA chain must hold 1 to {MAX_CHAIN} certificates")
    bottoms = [c for c in certificates if not any(o is not c and o.issuer == c.subject for o in certificates)]
    if len(bottoms) != 1:
        raise fail("its CA chain has no single issuing CA (certificates from unrelated chains?)")
    path = [bottoms[0]]
    while sha256_fingerprint(path[-1]) != trusted:
        current = path[-1]
        parents = [c for c in certificates if c not in path and c.subject == current.issuer and issued_by(current, c)]
        if not parents:
            raise fail(f"its CA chain does not lead to {TRUSTED_FINGERPRINT}")
        path.append(parents[0])
    for certificate in path:
        constraints = _extension(certificate, x509.BasicConstraints)
        usage = _extension(certificate, x509.KeyUsage)
        if not isinstance(constraints, x509.BasicConstraints) or not constraints.ca:
            raise fail("its CA chain holds a certificate that is not a CA")
        if isinstance(usage, x509.KeyUsage) and not usage.key_cert_sign:
            raise fail("its CA chain holds a CA certificate without keyCertSign")
        if not certificate.not_valid_before_utc <= now < certificate.not_valid_after_utc:
            raise fail("its CA chain holds a certificate that is expired or not valid yet")
    above = [c for c in certificates if c is not path[0] and c not in path]
    return IssuingCa(path[0], (*path[1:], *above))


def trusted_fingerprint(settings: Settings, issuer: str) -> str:
    value = settings.require(TRUSTED_FINGERPRINT, f"for Issuer {issuer} (SHA-256 of the upstream's root CA)")
    fingerprint = normalize_fingerprint(value)
    if fingerprint is None:
        raise ConfigurationError(f"setting {TRUSTED_FINGERPRINT} must be a SHA-256 fingerprint (64 hex digits)")
    return fingerprint


def configured_ca_certificates(settings: Settings) -> list[x509.Certificate] | None:
    """`IssuerCaCertificates`: PEM inline, or the path of a PEM file."""
    value = settings.raw(CA_CERTIFICATES)
    if value is None or not value.strip():
        return None
    data = value.encode("utf-8", "replace")
    if not is_pem(data):
        try:
            data = Path(value.strip()).expanduser().read_bytes()
        except OSError:
            raise ConfigurationError(f"setting {CA_CERTIFICATES}: neither PEM nor a readable file") from None
    return load_certificates(data, CA_CERTIFICATES)


class _AuthorityCache:
    """One CA chain per process and TTL (`SignerCacheSeconds`); when a refresh fails the last good chain
    is kept, so an upstream outage does not stop report verification or renewal checks."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[tuple[str | None, ...], tuple[float, IssuingCa]] = {}

    def get(self, upstream: Upstream, settings: Settings) -> IssuingCa:
        cache_key = (upstream.name, *settings.snapshot((*COMMON_SETTINGS, *upstream.settings)))
        entry = self._entries.get(cache_key)
        if entry is not None and time.monotonic() < entry[0]:
            return entry[1]
        with self._lock:
            entry = self._entries.get(cache_key)
            if entry is not None and time.monotonic() < entry[0]:
                return entry[1]
            ttl = settings.integer("SignerCacheSeconds", DEFAULT_CACHE_SECONDS, minimum=0, maximum=86_400)
            try:
                ca = upstream.load_authority(settings)
            except BackendUnavailable:
                if entry is None:
                    raise
                log.warning("upstream %s: CA chain refresh failed; keeping the last one", upstream.name)
                self._entries[cache_key] = (time.monotonic() + min(ttl, 30), entry[1])
                return entry[1]
            log.info("upstream %s: issuing CA %s (%s)", upstream.name, ca.subject_text, ca.fingerprint)
            if len(self._entries) > 16:
                self._entries.clear()
            self._entries[cache_key] = (time.monotonic() + ttl, ca)
            return ca

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


_cache = _AuthorityCache()


def clear_authority_cache() -> None:
    _cache.clear()


@dataclass(frozen=True)
class Upstream:
    """An upstream CA: `fetch_ca` asks it for its CA chain (None: only `IssuerCaCertificates` says),
    `sign` sends it the order and returns what it answered (leaf first)."""

    name: str
    settings: tuple[str, ...]  # the module's own settings: a change to any reloads the CA chain
    sign: Sign
    fetch_ca: FetchCa | None = None
    revoke: Revoke | None = None

    def authority(self, settings: Settings) -> IssuingCa:
        return _cache.get(self, settings)

    def load_authority(self, settings: Settings) -> IssuingCa:
        trusted = trusted_fingerprint(settings, self.name)
        configured = configured_ca_certificates(settings)
        now = dt.datetime.now(dt.UTC)
        if configured is not None:
            return build_authority(configured, trusted, now, lambda what: ConfigurationError(
                f"setting {CA_CERTIFICATES}: {what.replace('its CA chain', 'the chain')}"))  # fmt: skip
        if self.fetch_ca is None:
            raise ConfigurationError(f"setting {CA_CERTIFICATES} is required for Issuer {self.name}")
        fetched = self.fetch_ca(settings)
        return build_authority(fetched, trusted, now, lambda what: _bad(self.name, what, "upstream_untrusted"))

    def forward_revocation(
        self, serials: tuple[str, ...], issuer: str | None, reason: str, settings: Settings
    ) -> Forwarded | None:
        if self.revoke is None or not serials:
            return None
        ca = self.authority(settings)
        if issuer != ca.fingerprint:  # serials of another CA (an earlier one, or Local's)
            return None
        revoked, failed = [], []
        for serial in serials:
            try:
                self.revoke(serial, reason, ca, settings)
            except XbootError as error:
                log.warning("upstream %s: revoking %s failed: %s", self.name, serial, error.code)
                failed.append(serial)
            else:
                revoked.append(serial)
        return Forwarded(self.name, tuple(revoked), tuple(failed))

    def issue(self, order: Order, ca: IssuingCa, settings: Settings) -> x509.Certificate:
        for name in LOCAL_ONLY:
            if settings.get(name) is not None:
                raise ConfigurationError(
                    f"setting {name} applies only to Issuer Local (the upstream's profile decides it); unset it"
                )
        check_forwardable(order.csr, self.name)
        answered = self.sign(order, settings)
        return check_issued(answered, order, ca, self.name)


FORWARDABLE_EXTENSIONS = (x509.KeyUsage, x509.ExtendedKeyUsage, x509.BasicConstraints, x509.SubjectKeyIdentifier)


def check_forwardable(csr: x509.CertificateSigningRequest, issuer: str) -> None:
    """The upstream sees the CSR as the device signed it, and CAs copy from it: so it may hold nothing xboot
    has not checked, just CN = the registration ID, and ask for no names or CA powers."""
    refusal = BadRequest(
        f"Issuer {issuer} forwards the CSR as signed: its subject must be only CN=<registration ID> and it may "
        "request no extensions but keyUsage, extendedKeyUsage, subjectKeyIdentifier and basicConstraints CA:FALSE",
        code="csr_not_forwardable",
    )
    if len(csr.subject) != 1:
        raise refusal
    try:
        extensions = list(csr.extensions)
    except ValueError:
        raise refusal from None
    for extension in extensions:
        value = extension.value
        if not isinstance(value, FORWARDABLE_EXTENSIONS) or (isinstance(value, x509.BasicConstraints) and value.ca):
            raise refusal


def check_issued(answered: Sequence[x509.Certificate], order: Order, ca: IssuingCa, issuer: str) -> x509.Certificate:
    """The leaf the upstream answered, held to what xboot itself would issue (module docstring)."""
    if not answered:
        raise _bad(issuer, "answered without a certificate", "upstream_invalid_answer")
    wanted = spki_der(order.key)
    leaves = [c for c in answered if _key_der(c) == wanted]
    if not leaves:
        raise _bad(issuer, "certified a key other than the CSR's", "upstream_wrong_key")
    leaf = leaves[0]
    if common_name(leaf.subject) != order.registration_id:
        raise _bad(issuer, "issued a certificate whose CN is not the registration ID", "upstream_wrong_subject")
    constraints = _extension(leaf, x509.BasicConstraints)
    if isinstance(constraints, x509.BasicConstraints) and constraints.ca:
        raise _bad(issuer, "issued a CA certificate", "upstream_wrong_profile")
    usages = _extension(leaf, x509.ExtendedKeyUsage)
    if not isinstance(usages, x509.ExtendedKeyUsage) or ExtendedKeyUsageOID.CLIENT_AUTH not in usages:
        raise _bad(issuer, "issued a certificate without the clientAuth extended key usage", "upstream_wrong_profile")
    usage = _extension(leaf, x509.KeyUsage)
    if isinstance(usage, x509.KeyUsage) and not usage.digital_signature:
        raise _bad(issuer, "issued a certificate without digitalSignature", "upstream_wrong_profile")
    try:
        algorithm = leaf.signature_hash_algorithm
    except UnsupportedAlgorithm:
        algorithm = None
    if isinstance(algorithm, WEAK_HASHES) or not issued_by(leaf, ca.certificate):
        raise _bad(issuer, "issued a certificate its issuing CA did not (validly) sign", "upstream_untrusted")
    if not leaf.not_valid_before_utc <= order.now + CLOCK_SKEW or leaf.not_valid_after_utc <= order.now:
        raise _bad(issuer, "issued a certificate that is not valid now", "upstream_wrong_validity")
    if leaf.not_valid_after_utc - leaf.not_valid_before_utc > order.validity + VALIDITY_SLACK:
        raise _bad(issuer, "issued a certificate valid longer than CertificateValidityDays", "upstream_wrong_validity")
    if not 0 < leaf.serial_number < 2**159:
        raise _bad(issuer, "issued a certificate with an invalid serial number", "upstream_wrong_profile")
    return leaf
