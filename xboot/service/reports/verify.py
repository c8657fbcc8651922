"""Verification of a signed report: the CMS signature, then a certificate path up to a trusted fingerprint.

asn1crypto reads the CMS structure into plain values (`parse_cms`); everything that
decides trust uses `cryptography`. Path validation is written out here because
`cryptography.x509.verification` refuses what the report guide's openssl steps
produce (v1 gateway certificates, non-critical basicConstraints on the
intermediate). It is deliberately strict: every link's signature, every
certificate's validity at receipt, CA and keyCertSign on every issuer, path
length constraints, no unknown critical extension. The fingerprint test runs only
on certificates of a path whose links all verified.
"""

from __future__ import annotations

import datetime as dt
import functools
import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TypeVar

from asn1crypto import cms, core
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

from xboot.errors import BadRequest, Unprocessable, XbootError
from xboot.pki import UNDECODABLE_EXTENSION, PublicKey, common_name, sha256_fingerprint
from xboot.service.reports import names
from xboot.service.reports.smime import SignedMessage
from xboot.service.reports.trust import TrustAnchors

MAX_PATH_LENGTH = 8  # certificates from signer to anchor, anchor included
MAX_CERTIFICATES = 16
MAX_LINK_CHECKS = 32  # bounds the search: certificates sharing names and keys could otherwise branch factorially
MIN_RSA_BITS = 2048
EC_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)

_DATA = "1.2.840.113549.1.7.1"
_SIGNED_DATA = "1.2.840.113549.1.7.2"
_ATTR_CONTENT_TYPE = "1.2.840.113549.1.9.3"
_ATTR_MESSAGE_DIGEST = "1.2.840.113549.1.9.4"
_ATTR_SIGNING_TIME = "1.2.840.113549.1.9.5"
_MGF1 = "1.2.840.113549.1.1.8"
_RSA_PSS = "1.2.840.113549.1.1.10"
_DIGESTS: dict[str, Callable[[], hashes.HashAlgorithm]] = {
    "2.16.840.1.101.3.4.2.1": hashes.SHA256,
    "2.16.840.1.101.3.4.2.2": hashes.SHA384,
    "2.16.840.1.101.3.4.2.3": hashes.SHA512,
}
# Signature algorithm OID -> (scheme, hash OID it implies; None: the SignerInfo's digest algorithm).
_SIGNATURES: dict[str, tuple[str, str | None]] = {
    "1.2.840.10045.4.3.2": ("ecdsa", "2.16.840.1.101.3.4.2.1"),
    "1.2.840.10045.4.3.3": ("ecdsa", "2.16.840.1.101.3.4.2.2"),
    "1.2.840.10045.4.3.4": ("ecdsa", "2.16.840.1.101.3.4.2.3"),
    "1.2.840.113549.1.1.1": ("rsa-pkcs1", None),  # rsaEncryption, what openssl writes for RSA signers
    "1.2.840.113549.1.1.11": ("rsa-pkcs1", "2.16.840.1.101.3.4.2.1"),
    "1.2.840.113549.1.1.12": ("rsa-pkcs1", "2.16.840.1.101.3.4.2.2"),
    "1.2.840.113549.1.1.13": ("rsa-pkcs1", "2.16.840.1.101.3.4.2.3"),
    _RSA_PSS: ("rsa-pss", None),
}
# Where this validator is more lenient than RFC 5280 and common verifiers, and why: only what the
# report-signing guide's openssl steps produce, which real gateways carry.
#   1. X.509 v1 signer certificates (`openssl x509 -req` without -extfile makes v1 on OpenSSL 3.0/3.1):
#      no extensions, so none of the v3 rules (AKI, SKI, keyUsage, EKU) can apply to them.
#   2. basicConstraints CA:TRUE not marked critical on CAs (the guide's ca-config.ext).
#   3. CAs without keyUsage (a root made by `openssl req -x509` has none): keyCertSign is required only
#      when keyUsage is present.
# Everything else is refused as RFC 5280 requires: see _check_profile, _check_signer, _check_issuer.
LENIENCY = ("v1 signer certificates", "non-critical basicConstraints on CAs", "CAs without keyUsage")
MAX_SERIAL_BITS = 159  # 20 octets of a positive DER INTEGER
# Critical extensions this validator acts on (or that carry no constraint for it).
_UNDERSTOOD = (
    x509.BasicConstraints,
    x509.KeyUsage,
    x509.ExtendedKeyUsage,
    x509.SubjectAlternativeName,
    x509.SubjectKeyIdentifier,
    x509.AuthorityKeyIdentifier,
    x509.NameConstraints,
)
_SIGNER_USAGES = (
    ExtendedKeyUsageOID.EMAIL_PROTECTION,
    ExtendedKeyUsageOID.CLIENT_AUTH,
    ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE,
)
_WEAK_HASHES = (hashes.SHA1, hashes.MD5)

T = TypeVar("T")


def _malformed(message: str) -> BadRequest:
    return BadRequest(message, code="invalid_message")


def _refused(code: str, message: str) -> Unprocessable:
    return Unprocessable(message, code=code)


@dataclass(frozen=True)
class PssParameters:
    hash_oid: str
    mgf_oid: str
    mgf_hash_oid: str
    salt_length: int
    trailer_is_bc: bool


@dataclass(frozen=True)
class ParsedCms:
    """The parts of a CMS SignedData that verification reads; attribute values stay lazy (`_attribute_value`)."""

    content_type: str
    content: bytes | None
    certificates: tuple[bytes, ...]
    issuer: bytes | None  # sid issuerAndSerialNumber: issuer Name DER
    serial: int | None
    key_identifier: bytes | None  # sid subjectKeyIdentifier
    digest_oid: str
    signed_attributes: bytes | None  # DER SET OF Attribute, as signed (tag 0x31)
    attributes: tuple[tuple[str, tuple[core.Asn1Value, ...]], ...]
    signature_oid: str
    pss: PssParameters | None
    signature: bytes


def _pss(parameters: core.Asn1Value) -> PssParameters:
    mgf = parameters["mask_gen_algorithm"]
    return PssParameters(
        hash_oid=parameters["hash_algorithm"]["algorithm"].dotted,
        mgf_oid=mgf["algorithm"].dotted,
        mgf_hash_oid=mgf["parameters"]["algorithm"].dotted,
        salt_length=int(parameters["salt_length"].native),
        trailer_is_bc=parameters["trailer_field"].native == "trailer_field_bc",
    )


def _parse(der: bytes) -> ParsedCms:
    info = cms.ContentInfo.load(der, strict=True)
    if info["content_type"].dotted != _SIGNED_DATA:
        raise _malformed("the CMS message is not SignedData")
    signed = info["content"]
    signers = signed["signer_infos"]
    if len(signers) != 1:
        raise _refused("signature_invalid", f"exactly one signer is required; the message has {len(signers)}")
    signer = signers[0]
    encapsulated = signed["encap_content_info"]
    content = encapsulated["content"]
    certificates = signed["certificates"]
    choices = [] if isinstance(certificates, core.Void) else list(certificates)
    if len(choices) > MAX_CERTIFICATES:
        raise _malformed(f"the message embeds more than {MAX_CERTIFICATES} certificates")
    sid = signer["sid"]
    by_issuer = sid.name == "issuer_and_serial_number"
    attributes = signer["signed_attrs"]
    signed_attributes = None
    parsed_attributes: tuple[tuple[str, tuple[core.Asn1Value, ...]], ...] = ()
    if not isinstance(attributes, core.Void):
        encoded = attributes.dump()
        signed_attributes = b"\x31" + encoded[1:]  # [0] IMPLICIT in the SignerInfo, a SET OF when signed
        parsed_attributes = tuple((a["type"].dotted, tuple(a["values"])) for a in attributes)
    algorithm = signer["signature_algorithm"]
    signature_oid = algorithm["algorithm"].dotted
    return ParsedCms(
        content_type=encapsulated["content_type"].dotted,
        content=None if isinstance(content, core.Void) else bytes(content.native),
        certificates=tuple(c.chosen.dump() for c in choices if c.name == "certificate"),
        issuer=sid.chosen["issuer"].dump() if by_issuer else None,
        serial=int(sid.chosen["serial_number"].native) if by_issuer else None,
        key_identifier=None if by_issuer else bytes(sid.chosen.native),
        digest_oid=signer["digest_algorithm"]["algorithm"].dotted,
        signed_attributes=signed_attributes,
        attributes=parsed_attributes,
        signature_oid=signature_oid,
        pss=_pss(algorithm["parameters"]) if signature_oid == _RSA_PSS else None,
        signature=bytes(signer["signature"].native),
    )


def parse_cms(der: bytes) -> ParsedCms:
    """Untrusted DER in, plain values out: any parsing failure is the sender's (400), never ours (500)."""
    try:
        return _parse(der)
    except XbootError:
        raise
    except Exception:  # noqa: BLE001 - asn1crypto parses lazily and raises ValueError, TypeError, KeyError, ...
        raise _malformed("the CMS signature is not well-formed (DER SignedData expected)") from None


def _attribute_value(parsed: ParsedCms, oid: str, name: str, read: Callable[[core.Asn1Value], T]) -> T | None:
    """The single value of a signed attribute that may appear at most once."""
    found = [values for attribute_oid, values in parsed.attributes if attribute_oid == oid]
    if not found:
        return None
    if len(found) > 1 or len(found[0]) != 1:
        raise _refused("signature_invalid", f"the signed attribute {name} must appear once with one value")
    try:
        return read(found[0][0])
    except Exception:  # noqa: BLE001 - a malformed attribute value surfaces here, lazily
        raise _malformed(f"the signed attribute {name} is malformed") from None


def _digest(oid: str) -> hashes.HashAlgorithm:
    factory = _DIGESTS.get(oid)
    if factory is None:
        raise _refused("unsupported_algorithm", "the digest algorithm must be SHA-256, SHA-384 or SHA-512")
    return factory()


@dataclass(frozen=True)
class _Scheme:
    name: str
    hash: hashes.HashAlgorithm
    pss_salt: int | None = None


def _scheme(parsed: ParsedCms) -> _Scheme:
    digest = _digest(parsed.digest_oid)
    entry = _SIGNATURES.get(parsed.signature_oid)
    if entry is None:
        raise _refused("unsupported_algorithm", "the signature algorithm must be ECDSA, RSA PKCS#1 v1.5 or RSA-PSS")
    name, implied = entry
    if implied is not None and implied != parsed.digest_oid:
        raise _refused("signature_invalid", "the signature algorithm's hash differs from the digest algorithm")
    if parsed.pss is None:
        return _Scheme(name, digest)
    pss = parsed.pss
    if not (pss.hash_oid == pss.mgf_hash_oid == parsed.digest_oid and pss.mgf_oid == _MGF1 and pss.trailer_is_bc):
        raise _refused("unsupported_algorithm", "RSA-PSS parameters must use MGF1 with the digest algorithm's hash")
    if not 0 <= pss.salt_length <= 512:
        raise _refused("unsupported_algorithm", "RSA-PSS salt length out of range")
    return _Scheme(name, digest, pss.salt_length)


def _check_key(certificate: x509.Certificate, role: str) -> PublicKey:
    try:
        key = certificate.public_key()
    except (UnsupportedAlgorithm, ValueError):
        raise _refused("unsupported_algorithm", f"the {role} certificate has an unsupported public key") from None
    if isinstance(key, rsa.RSAPublicKey) and key.key_size >= MIN_RSA_BITS:
        return key
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, EC_CURVES):
        return key
    raise _refused(
        "unsupported_algorithm", f"the {role} certificate's key must be RSA-{MIN_RSA_BITS}+ or EC P-256/P-384/P-521"
    )


def _verify_cms_signature(certificate: x509.Certificate, scheme: _Scheme, signature: bytes, data: bytes) -> None:
    key = certificate.public_key()
    try:
        if scheme.name == "ecdsa" and isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, data, ec.ECDSA(scheme.hash))
        elif scheme.name == "rsa-pkcs1" and isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, data, padding.PKCS1v15(), scheme.hash)
        elif scheme.name == "rsa-pss" and isinstance(key, rsa.RSAPublicKey) and scheme.pss_salt is not None:
            key.verify(signature, data, padding.PSS(padding.MGF1(scheme.hash), scheme.pss_salt), scheme.hash)
        else:
            raise _refused("signature_invalid", "the signature algorithm does not match the signer's key type")
    except InvalidSignature:
        raise _refused("signature_invalid", "the signature does not verify with the signer certificate") from None


def _name(certificate: x509.Certificate) -> str:
    """The subject for messages: the sender's own text, so shortened."""
    name = certificate.subject.rfc4514_string() or "(empty subject)"
    return name if len(name) <= 160 else name[:157] + "..."


ExtensionTable = Mapping[type, x509.Extension[x509.ExtensionType]]


@functools.lru_cache(maxsize=512)
def _extensions(certificate: x509.Certificate) -> ExtensionTable:
    """The extensions by type, refusing malformed ones and critical ones this validator would ignore.

    Built once per certificate (a gateway's chain repeats on every report): every rule reads this table.
    """
    try:
        extensions = certificate.extensions
    except UNDECODABLE_EXTENSION:
        raise _refused("certificate_invalid", f"certificate {_name(certificate)} has malformed extensions") from None
    for extension in extensions:
        if extension.critical and not isinstance(extension.value, _UNDERSTOOD):
            raise _refused(
                "certificate_invalid",
                f"certificate {_name(certificate)} has an unsupported critical extension {extension.oid.dotted_string}",
            )
    return MappingProxyType({type(extension.value): extension for extension in extensions})


def _extension(extensions: ExtensionTable, kind: type[T]) -> T | None:
    found = extensions.get(kind)
    return None if found is None else found.value  # type: ignore[return-value]


def _explicit_curve(certificate: x509.Certificate) -> bool:
    """An EC key given with explicit curve parameters (the CurveBall shape); `cryptography` would quietly
    treat a matching set as the named curve, so the certificate's own encoding is read."""
    return _explicit_curve_der(certificate.public_bytes(Encoding.DER))


@functools.lru_cache(maxsize=1024)
def _explicit_curve_der(der: bytes) -> bool:
    """Per DER encoding: a gateway's chain repeats on every report, and a fleet shares its CAs."""
    tbs = asn1_x509.Certificate.load(der)["tbs_certificate"]
    return str(tbs["subject_public_key_info"]["algorithm"]["parameters"].name) != "named"


def _check_profile(
    certificate: x509.Certificate, key: PublicKey, role: str, extensions: ExtensionTable, ca: bool
) -> None:
    """RFC 5280's structural rules for one certificate of the path (v1 signers: LENIENCY 1)."""
    name = _name(certificate)
    if not certificate.serial_number > 0 or certificate.serial_number.bit_length() > MAX_SERIAL_BITS:
        raise _refused("certificate_invalid", f"the {role} certificate {name} has a zero, negative or over-long serial")
    if not len(certificate.issuer):
        raise _refused("certificate_invalid", f"the {role} certificate {name} has an empty issuer name")
    if not len(certificate.subject) and (ca or _extension(extensions, x509.SubjectAlternativeName) is None):
        raise _refused("certificate_invalid", f"the {role} certificate has an empty subject name")
    if isinstance(key, rsa.RSAPublicKey) and key.key_size % 8:
        raise _refused("certificate_invalid", f"the {role} certificate {name} has an RSA modulus of odd length")
    if isinstance(key, ec.EllipticCurvePublicKey) and _explicit_curve(certificate):
        raise _refused("certificate_invalid", f"the {role} certificate {name} gives explicit EC curve parameters")
    if certificate.version is not x509.Version.v3:
        return
    for kind in (x509.SubjectKeyIdentifier, x509.AuthorityKeyIdentifier):
        found = extensions.get(kind)
        if found is not None and found.critical:
            raise _refused("certificate_invalid", f"the {role} certificate {name} marks {kind.__name__} critical")
    subject_key = _extension(extensions, x509.SubjectKeyIdentifier)
    authority_key = _extension(extensions, x509.AuthorityKeyIdentifier)
    if ca and subject_key is None:
        raise _refused("certificate_invalid", f"the CA certificate {name} has no subjectKeyIdentifier")
    if authority_key is None and not _self_issued(certificate):
        raise _refused("certificate_invalid", f"the {role} certificate {name} has no authorityKeyIdentifier")
    if (
        _self_issued(certificate)
        and authority_key is not None
        and authority_key.key_identifier is not None
        and subject_key is not None
        and authority_key.key_identifier != subject_key.digest
    ):
        raise _refused("certificate_invalid", f"the self-issued certificate {name}'s AKI does not match its SKI")
    policy = extensions.get(x509.PolicyConstraints)
    if policy is not None and not policy.critical:
        raise _refused("certificate_invalid", f"the {role} certificate {name} has a non-critical policyConstraints")


def _check_validity(certificate: x509.Certificate, role: str, now: dt.datetime) -> None:
    if now < certificate.not_valid_before_utc:
        raise _refused("certificate_invalid", f"the {role} certificate {_name(certificate)} is not valid yet")
    if now > certificate.not_valid_after_utc:
        raise _refused("certificate_invalid", f"the {role} certificate {_name(certificate)} has expired")


def _check_signer(certificate: x509.Certificate, key: PublicKey, now: dt.datetime) -> None:
    _check_validity(certificate, "signer", now)
    extensions = _extensions(certificate)
    _check_profile(certificate, key, "signer", extensions, ca=False)
    constraints = _extension(extensions, x509.BasicConstraints)
    usage = _extension(extensions, x509.KeyUsage)
    if (constraints is not None and constraints.ca) or (usage is not None and usage.key_cert_sign):
        raise _refused(
            "certificate_invalid", "the signer certificate is a CA certificate; reports are signed by leaves"
        )
    if usage is not None and not (usage.digital_signature or usage.content_commitment):
        raise _refused("certificate_invalid", "the signer certificate's keyUsage does not allow digital signatures")
    purposes = _extension(extensions, x509.ExtendedKeyUsage)
    if purposes is not None and not any(p in purposes for p in _SIGNER_USAGES):
        raise _refused(
            "certificate_invalid",
            "the signer certificate's extendedKeyUsage allows neither emailProtection nor clientAuth",
        )


def _self_issued(certificate: x509.Certificate) -> bool:
    return certificate.subject == certificate.issuer


def _check_issuer(
    child: x509.Certificate, issuer: x509.Certificate, below: list[x509.Certificate], now: dt.datetime
) -> None:
    """`issuer` may sign `child`, the top of `below` (the path so far, signer first)."""
    try:  # first: cryptography cannot verify SHA-1 or MD5 links, and the sender should learn why
        weak = isinstance(child.signature_hash_algorithm, _WEAK_HASHES)
    except UnsupportedAlgorithm:
        weak = True
    if weak:
        raise _refused("chain_invalid", f"certificate {_name(child)} is signed with a weak hash")
    try:
        child.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        raise _refused(
            "chain_invalid", f"certificate {_name(child)} does not verify as issued by {_name(issuer)}"
        ) from None
    key = _check_key(issuer, "issuer")
    extensions = _extensions(issuer)
    _check_profile(issuer, key, "issuer", extensions, ca=True)
    wanted = _extension(_extensions(child), x509.AuthorityKeyIdentifier) if child.version is x509.Version.v3 else None
    held = _extension(extensions, x509.SubjectKeyIdentifier)
    if (
        wanted is not None
        and wanted.key_identifier is not None
        and held is not None
        and wanted.key_identifier != held.digest
    ):
        raise _refused("chain_invalid", f"certificate {_name(child)} names another issuer key than {_name(issuer)}'s")
    constraints = _extension(extensions, x509.BasicConstraints)
    if constraints is None or not constraints.ca:
        raise _refused("chain_invalid", f"issuer {_name(issuer)} is not a CA (basicConstraints CA:TRUE missing)")
    usage = _extension(extensions, x509.KeyUsage)
    if usage is not None and not usage.key_cert_sign:
        raise _refused("chain_invalid", f"issuer {_name(issuer)} has keyUsage without keyCertSign")
    intermediates = sum(1 for c in below[1:] if not _self_issued(c))
    if constraints.path_length is not None and intermediates > constraints.path_length:
        raise _refused("chain_invalid", f"issuer {_name(issuer)}: path length constraint exceeded")
    _check_validity(issuer, "issuer", now)


class _PathBuilder:
    """Depth-first search from the signer through the candidate issuers, trying every branch."""

    def __init__(self, pool: list[x509.Certificate], anchors: TrustAnchors, now: dt.datetime) -> None:
        self.pool = pool
        self.anchors = anchors
        self.now = now
        self.fingerprints = {id(c): sha256_fingerprint(c) for c in pool}
        self.failures: list[Unprocessable] = []
        self.link_checks = 0

    def fingerprint(self, certificate: x509.Certificate) -> str:
        return self.fingerprints[id(certificate)]

    def build(self, path: list[x509.Certificate]) -> list[x509.Certificate] | None:
        top = path[-1]
        if self.fingerprint(top) in self.anchors.fingerprints:
            return path
        if len(path) >= MAX_PATH_LENGTH:
            self.failures.append(_refused("chain_invalid", "the certificate chain is too long"))
            return None
        candidates = [c for c in self.pool if c.subject == top.issuer and all(c is not p for p in path)]
        if not candidates:
            self.failures.append(
                _refused(
                    "untrusted",
                    f"the certificate chain ends at {_name(top)} (SHA-256 {self.fingerprint(top)}), "
                    "which is not a trusted fingerprint and has no trusted issuer in the message",
                )
            )
        for issuer in candidates:
            self.link_checks += 1
            if self.link_checks > MAX_LINK_CHECKS:
                # The search gave up: say so first, whatever dead ends it met before.
                self.failures.insert(0, _refused("chain_invalid", "the certificates in the message are too entangled"))
                return None
            try:
                _check_issuer(top, issuer, path, self.now)
            except Unprocessable as failure:
                self.failures.append(failure)
                continue
            found = self.build([*path, issuer])
            if found is not None:
                return found
        return None


@dataclass(frozen=True)
class Verification:
    """What was proven about a report: its signed content, who signed it, and the path to the anchor."""

    content: bytes
    path: tuple[x509.Certificate, ...]  # signer first, trust anchor last
    path_fingerprints: tuple[str, ...]
    signed_attributes: bytes
    digest_algorithm: str
    signature_algorithm: str
    signing_time: dt.datetime | None

    @property
    def signer(self) -> x509.Certificate:
        return self.path[0]

    @property
    def trust_anchor(self) -> str:
        return self.path_fingerprints[-1]

    @property
    def signer_common_name(self) -> str | None:
        return common_name(self.signer.subject)

    def details(self) -> dict[str, object]:
        return {
            "signer": self.signer.subject.rfc4514_string(),
            "signerFingerprint": self.path_fingerprints[0],
            "path": [
                {"subject": c.subject.rfc4514_string(), "sha256Fingerprint": f}
                for c, f in zip(self.path, self.path_fingerprints, strict=True)
            ],
            "trustAnchor": self.trust_anchor,
            "digestAlgorithm": self.digest_algorithm,
            "signatureAlgorithm": self.signature_algorithm,
            "signingTime": None if self.signing_time is None else self.signing_time.isoformat().replace("+00:00", "Z"),
        }


@functools.lru_cache(maxsize=1024)
def _certificate(der: bytes) -> x509.Certificate:
    """A gateway sends the same few certificates with every report: each DER is parsed (and its names
    decoded) once per process. Only parsing is cached; every check of the path runs for every report."""
    certificate = x509.load_der_x509_certificate(der)
    # Names decode on access: decode them now, so a bad one is the sender's 400 and not a crash later.
    certificate.subject.rfc4514_string()
    certificate.issuer.rfc4514_string()
    return certificate


def _load_certificates(parsed: ParsedCms) -> list[x509.Certificate]:
    certificates: dict[bytes, x509.Certificate] = {}
    for index, der in enumerate(parsed.certificates, start=1):
        try:
            certificate = _certificate(der)
        except (ValueError, x509.InvalidVersion):
            raise _malformed(f"embedded certificate #{index} is malformed") from None
        certificates.setdefault(der, certificate)
    return list(certificates.values())


def _signer_certificate(parsed: ParsedCms, certificates: list[x509.Certificate]) -> x509.Certificate:
    def identifies(certificate: x509.Certificate) -> bool:
        if parsed.issuer is not None:
            return certificate.serial_number == parsed.serial and certificate.issuer.public_bytes() == parsed.issuer
        try:
            key_id = certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        except (x509.ExtensionNotFound, *UNDECODABLE_EXTENSION):
            return False
        return key_id.digest == parsed.key_identifier

    matches = [c for c in certificates if identifies(c)]
    if len(matches) != 1:
        raise _refused("signature_invalid", "the message must embed the signer certificate (exactly once)")
    return matches[0]


def _content(message: SignedMessage, parsed: ParsedCms) -> bytes:
    if parsed.content_type != _DATA:
        raise _refused("signature_invalid", "the signed content type must be id-data")
    if message.detached_content is not None and parsed.content is None:
        return message.detached_content
    if message.detached_content is None and parsed.content is not None:
        return parsed.content
    raise _malformed("the signature must either be detached (multipart/signed) or encapsulate the report, not both")


def verify_path(
    signer: x509.Certificate, certificates: list[x509.Certificate], anchors: TrustAnchors, now: dt.datetime
) -> tuple[tuple[x509.Certificate, ...], tuple[str, ...]]:
    """The verified path from `signer` (checked as a signer) through `certificates` to a trusted fingerprint.

    The one path validation of the service: signed reports and enrollment attestations (birth certificates)
    both come here. Returns the path, signer first, and each certificate's SHA-256 fingerprint.
    """
    _check_signer(signer, _check_key(signer, "signer"), now)
    pool = [*certificates, *(c for c in anchors.certificates if c not in certificates)]
    if signer not in pool:
        pool.insert(0, signer)
    builder = _PathBuilder(pool, anchors, now)
    path = builder.build([signer])
    if path is None:
        chain_failures = [f for f in builder.failures if f.code != "untrusted"]
        raise (chain_failures or builder.failures)[0]
    _check_name_constraints(path)
    return tuple(path), tuple(builder.fingerprint(c) for c in path)


def _check_name_constraints(path: list[x509.Certificate]) -> None:
    """Each CA's nameConstraints bind every certificate below it on the path, self-issued intermediates aside."""
    for index in range(1, len(path)):
        constraints = _extension(_extensions(path[index]), x509.NameConstraints)
        if constraints is None:
            continue
        for below in range(index):
            if below and _self_issued(path[below]):
                continue
            certificate = path[below]
            alternative = _extension(_extensions(certificate), x509.SubjectAlternativeName)
            try:
                names.check(
                    names.names_of(certificate, alternative), constraints, _name(certificate), _name(path[index])
                )
            except names.NameConstraintViolation as violation:
                raise _refused("chain_invalid", str(violation)) from None


def verify_signed_report(message: SignedMessage, anchors: TrustAnchors, now: dt.datetime) -> Verification:
    """Verify `message` as received at `now`; raises BadRequest (malformed) or Unprocessable (refused)."""
    parsed = parse_cms(message.cms)
    content = _content(message, parsed)
    if parsed.signed_attributes is None:
        raise _refused("signature_invalid", "signed attributes are required (do not sign with -noattr)")
    scheme = _scheme(parsed)
    content_type = _attribute_value(parsed, _ATTR_CONTENT_TYPE, "contentType", lambda v: v.dotted)
    if content_type != parsed.content_type:
        raise _refused("signature_invalid", "the signed contentType attribute is missing or not id-data")
    expected = _attribute_value(parsed, _ATTR_MESSAGE_DIGEST, "messageDigest", lambda v: bytes(v.native))
    if expected is None:
        raise _refused("signature_invalid", "the signed messageDigest attribute is missing")
    digest = hashes.Hash(scheme.hash)
    digest.update(content)
    if not hmac.compare_digest(digest.finalize(), expected):
        raise _refused("signature_invalid", "the content does not match the signed digest (altered in transit?)")
    signing_time = _attribute_value(parsed, _ATTR_SIGNING_TIME, "signingTime", lambda v: v.native)
    if signing_time is not None and not isinstance(signing_time, dt.datetime):
        raise _malformed("the signed attribute signingTime is malformed")
    certificates = _load_certificates(parsed)
    signer = _signer_certificate(parsed, certificates)
    _check_key(signer, "signer")  # before public_key() is used: unsupported key types are refused, not crashed on
    _verify_cms_signature(signer, scheme, parsed.signature, parsed.signed_attributes)
    path, fingerprints = verify_path(signer, certificates, anchors, now)
    return Verification(
        content=content,
        path=path,
        path_fingerprints=fingerprints,
        signed_attributes=parsed.signed_attributes,
        digest_algorithm=scheme.hash.name,
        signature_algorithm=scheme.name,
        signing_time=signing_time,
    )
