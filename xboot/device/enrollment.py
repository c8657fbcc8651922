"""A device's key, its CSR, and the checks a certificate must pass before the device accepts it."""

from __future__ import annotations

import base64
import datetime as dt
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from xboot.device.errors import ClientError, VerificationFailed
from xboot.device.smime import key_matches
from xboot.pki import PrivateKey, common_name, issued_by, sha256_fingerprint, signature_hash


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
            parent = next((a for a in anchors if issued_by(path[-1], a)), None)
            if parent is None:
                raise VerificationFailed("the certificate does not chain to the expected root CA")
            path.append(parent)
    for position, (child, parent) in enumerate(itertools.pairwise(path)):
        if not issued_by(child, parent):
            raise VerificationFailed(
                f"{child.subject.rfc4514_string()} is not signed by {parent.subject.rfc4514_string()}: "
                "the chain is broken"
            )
        _check_issuer(parent, cas_below=position)
    top = path[-1]
    if not anchors and top.issuer == top.subject and not issued_by(top, top):
        raise VerificationFailed(f"the root {top.subject.rfc4514_string()} has an invalid self-signature")
    for member in path:
        if not member.not_valid_before_utc <= now <= member.not_valid_after_utc:
            window = f"{member.not_valid_before_utc:%Y-%m-%d %H:%M} to {member.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
            raise VerificationFailed(
                f"{member.subject.rfc4514_string()} is not valid now ({window}); is the device clock right?"
            )


def renewal_due(certificate: x509.Certificate, within: dt.timedelta, now: dt.datetime | None = None) -> bool:
    return certificate.not_valid_after_utc - (now or dt.datetime.now(dt.UTC)) <= within
