"""Issuance policy: from a device's CSR to its certificate.

Everything the device asks for beyond its key and its subject is ignored: the
extensions are ours, so a CSR requesting CA:TRUE still yields a leaf.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import functools
import hashlib
import secrets
from dataclasses import dataclass
from functools import cached_property

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from xboot.errors import BadRequest, ConfigurationError
from xboot.pki import PublicKey, common_name, describe_key, is_pem
from xboot.service.ca.authority import IssuingCa
from xboot.service.ca.signer import Signer
from xboot.service.settings import Settings

BACKDATE = dt.timedelta(minutes=5)
MIN_RSA_BITS = 2048
MAX_RSA_BITS = 8192
DEVICE_CURVES = (ec.SECP256R1, ec.SECP384R1)
WEAK_HASHES = (hashes.MD5, hashes.SHA1)


def parse_csr(text: str) -> x509.CertificateSigningRequest:
    """A PKCS#10 CSR as base64 DER (what XBoot.Client sends) or PEM."""
    data = text.strip().encode("ascii", "replace")
    try:
        if is_pem(data):
            return x509.load_pem_x509_csr(data)
        return x509.load_der_x509_csr(base64.b64decode(data, validate=True))
    except (ValueError, binascii.Error):
        raise BadRequest("Csr is not a base64 DER or PEM PKCS#10 request", code="invalid_csr") from None


def check_device_key(key: PublicKey | object) -> PublicKey:
    if isinstance(key, rsa.RSAPublicKey):
        if not MIN_RSA_BITS <= key.key_size <= MAX_RSA_BITS:
            raise BadRequest(
                f"device key {describe_key(key)} refused: RSA keys must be {MIN_RSA_BITS}-{MAX_RSA_BITS} bits",
                code="weak_key",
            )
        # Even exponents never get here: cryptography refuses to load them (check_csr: unsupported key).
        if key.public_numbers().e < 65537:
            raise BadRequest("device key refused: RSA public exponent must be at least 65537", code="weak_key")
        return key
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, DEVICE_CURVES):
            raise BadRequest(f"device key {describe_key(key)} refused: EC keys must be P-256 or P-384", code="weak_key")
        return key
    raise BadRequest("device key refused: only RSA (2048+) and EC P-256/P-384 keys are accepted", code="weak_key")


def check_csr(csr: x509.CertificateSigningRequest, registration_id: str) -> PublicKey:
    """Proof of possession, key strength, and CN = registration ID (what Azure DPS requires)."""
    try:
        key = csr.public_key()
    except Exception:  # noqa: BLE001 - unsupported key algorithms raise UnsupportedAlgorithm
        raise BadRequest("device key refused: unsupported public key algorithm", code="weak_key") from None
    checked = check_device_key(key)
    try:
        algorithm = csr.signature_hash_algorithm
    except UnsupportedAlgorithm:
        algorithm = None  # then is_signature_valid below cannot verify it either
    if isinstance(algorithm, WEAK_HASHES):
        raise BadRequest(
            f"the CSR is signed with {algorithm.name.upper()}, which is broken; sign it with SHA-256 or stronger",
            code="weak_signature",
        )
    try:
        valid = csr.is_signature_valid
    except Exception:  # noqa: BLE001 - unsupported signature algorithms
        valid = False
    if not valid:
        raise BadRequest("the CSR signature does not verify (proof of possession failed)", code="bad_csr_signature")
    if common_name(csr.subject) != registration_id:
        raise BadRequest("the CSR subject must have exactly one CN, equal to RegistrationId", code="cn_mismatch")
    return checked


# Subject attributes an operator may add to every issued certificate (SubjectAttributes): the CA vouches
# for them because the operator configured them, not because a device asked.
SUBJECT_ATTRIBUTES = {
    "C": NameOID.COUNTRY_NAME,
    "ST": NameOID.STATE_OR_PROVINCE_NAME,
    "L": NameOID.LOCALITY_NAME,
    "O": NameOID.ORGANIZATION_NAME,
    "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
}


@functools.lru_cache(maxsize=8)
def _subject_attributes(text: str) -> tuple[x509.NameAttribute, ...]:
    attributes = []
    for part in text.split(","):
        name, _, value = part.partition("=")
        label = name.strip().upper()
        oid = SUBJECT_ATTRIBUTES.get(label)
        if oid is None or not value.strip():
            raise ConfigurationError(
                "setting SubjectAttributes: use NAME=value pairs separated by commas, "
                f"NAME one of {', '.join(SUBJECT_ATTRIBUTES)}"
            )
        try:
            attributes.append(x509.NameAttribute(oid, value.strip()))
        except ValueError:  # e.g. C must be two letters
            raise ConfigurationError(
                f"setting SubjectAttributes: {name.strip().upper()} has an invalid value"
            ) from None
    return tuple(attributes)


def issued_subject(registration_id: str, settings: Settings) -> x509.Name:
    """CN = registration ID, after the attributes of SubjectAttributes; nothing from the (unauthenticated) CSR."""
    configured = settings.get("SubjectAttributes")
    prefix = _subject_attributes(configured) if configured else ()
    return x509.Name([*prefix, x509.NameAttribute(NameOID.COMMON_NAME, registration_id)])


def random_serial() -> int:
    """128 bits from the OS CSPRNG, never zero."""
    return 1 + secrets.randbelow(2**128 - 1)


def build_certificate(
    subject: x509.Name,
    key: PublicKey,
    signer: Signer,
    validity: dt.timedelta,
    now: dt.datetime,
    crl_url: str | None = None,
) -> x509.Certificate:
    not_after = min(now + validity, signer.certificate.not_valid_after_utc)
    if not_after <= now:
        raise ConfigurationError("the issuing CA certificate expired")
    usage_encipher = isinstance(key, rsa.RSAPublicKey)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(signer.certificate.subject)
        .public_key(key)
        .serial_number(random_serial())
        .not_valid_before(max(now - BACKDATE, signer.certificate.not_valid_before_utc))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=usage_encipher,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key), critical=False)
        .add_extension(signer.authority_key_identifier, critical=False)
    )
    if crl_url is not None:  # where relying parties fetch /api/crl: revocation then bites there too
        point = x509.DistributionPoint([x509.UniformResourceIdentifier(crl_url)], None, None, None)
        builder = builder.add_extension(x509.CRLDistributionPoints([point]), critical=False)
    return signer.sign(builder)


@dataclass(frozen=True)
class IssuedCertificate:
    registration_id: str
    certificate: x509.Certificate
    ca: IssuingCa  # who issued it: the local signer or an upstream CA
    issuer: str = "Local"  # the Issuer setting's name for it

    @property
    def serial_number(self) -> str:
        return format(self.certificate.serial_number, "X")

    @cached_property
    def der(self) -> bytes:
        """Encoded once: the fingerprint, the PEM and the response's base64 all derive from it."""
        return self.certificate.public_bytes(serialization.Encoding.DER)

    @cached_property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.der).digest().hex(":").upper()

    @cached_property
    def pem(self) -> str:
        encoded = base64.b64encode(self.der).decode("ascii")
        lines = "\n".join(encoded[i : i + 64] for i in range(0, len(encoded), 64))  # RFC 7468: 64 columns
        return f"-----BEGIN CERTIFICATE-----\n{lines}\n-----END CERTIFICATE-----\n"

    @property
    def not_after(self) -> dt.datetime:
        return self.certificate.not_valid_after_utc

    def certificate_der_b64(self) -> str:
        return base64.b64encode(self.der).decode("ascii")

    def chain_pem(self) -> str:
        return self.pem + self.ca.chain_pem
