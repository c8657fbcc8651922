"""Signed reports built field by field, so a test can send exactly the CMS a refusal exists for.

openssl and `cryptography`'s PKCS7 builder only make well-formed messages. `forge` builds the SignedData with
asn1crypto and signs the signed attributes with the real key, then applies the one deviation a case asks
for (an algorithm label that does not match the key, a second messageDigest, a signature with one bit
flipped, ...). Certificates come from `make_certificate`, which can make the weak keys and hashes that
verification must refuse.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass, field, replace
from typing import Any

from asn1crypto import algos, cms, core
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from xboot.pki import sha256_fingerprint
from xboot.service.reports.smime import SignedMessage
from xboot.service.reports.trust import TrustAnchors

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
CONTENT = b'Content-Type: text/plain\r\n\r\n{"gatewayId": "gw-forge", "timeStamp": "1700000000"}\r\n'
HASHES = {"sha1": hashes.SHA1, "sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512}
LEAF_USAGE = x509.KeyUsage(True, False, False, False, False, False, False, False, False)
CA_USAGE = x509.KeyUsage(False, False, False, False, False, True, True, False, False)


def name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_certificate(
    subject: str | x509.Name,
    key: Any,
    issuer: tuple[x509.Certificate, Any] | None = None,
    *,
    ca: bool = False,
    usage: x509.KeyUsage | None = None,
    purposes: list[x509.ObjectIdentifier] | None = None,
    extra: tuple[tuple[x509.ExtensionType, bool], ...] = (),
    hash_algorithm: hashes.HashAlgorithm | None = None,
    serial: int | None = None,
    identifiers: tuple[bool, bool] = (True, True),  # (subjectKeyIdentifier, authorityKeyIdentifier) present
    not_after: dt.datetime | None = None,
    not_before: dt.datetime | None = None,
) -> x509.Certificate:
    """A v3 certificate for `key`, self-signed unless `issuer` (certificate, key) is given."""
    issuer_certificate, issuer_key = issuer if issuer is not None else (None, key)
    subject_name = name(subject) if isinstance(subject, str) else subject
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject_name)
        .issuer_name(issuer_certificate.subject if issuer_certificate is not None else subject_name)
        .public_key(key.public_key())
        .serial_number(serial or x509.random_serial_number())
        .not_valid_before(not_before or NOW - dt.timedelta(days=1))
        .not_valid_after(not_after or NOW + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(usage or (CA_USAGE if ca else LEAF_USAGE), critical=True)
    )
    if identifiers[0]:
        builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    if identifiers[1]:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key())
        builder = builder.add_extension(aki, critical=False)
    if not ca:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage(purposes or [ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    for extension, critical in extra:
        builder = builder.add_extension(extension, critical)
    return builder.sign(issuer_key, hash_algorithm or hashes.SHA256())


@dataclass
class Pki:
    """A root, an issuing CA and a gateway, each of any key type; trust is the root's fingerprint."""

    root: x509.Certificate
    root_key: Any
    issuing: x509.Certificate
    issuing_key: Any
    gateway: x509.Certificate
    gateway_key: Any

    @property
    def anchors(self) -> TrustAnchors:
        return TrustAnchors(frozenset({sha256_fingerprint(self.root)}))

    @property
    def chain(self) -> list[x509.Certificate]:
        return [self.issuing, self.root]


def make_pki(gateway_key: Any = None, issuing_key: Any = None, **gateway: Any) -> Pki:
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = make_certificate("Forge Root", root_key, ca=True)
    issuing_key = issuing_key or ec.generate_private_key(ec.SECP256R1())
    issuing = make_certificate("Forge Issuing CA", issuing_key, (root, root_key), ca=True)
    gateway_key = gateway_key or ec.generate_private_key(ec.SECP256R1())
    signer = make_certificate("gw-forge", gateway_key, (issuing, issuing_key), **gateway)
    return Pki(root, root_key, issuing, issuing_key, signer, gateway_key)


_SIGNATURE_OIDS = {
    ("ecdsa", "sha256"): "1.2.840.10045.4.3.2",
    ("ecdsa", "sha384"): "1.2.840.10045.4.3.3",
    ("ecdsa", "sha512"): "1.2.840.10045.4.3.4",
    ("rsa-pkcs1", "sha256"): "1.2.840.113549.1.1.1",  # rsaEncryption, as openssl writes
    ("rsa-pss", "sha256"): "1.2.840.113549.1.1.10",
}
ID_DATA = "1.2.840.113549.1.7.1"
CONTENT_TYPE = "1.2.840.113549.1.9.3"
MESSAGE_DIGEST = "1.2.840.113549.1.9.4"
SIGNING_TIME = "1.2.840.113549.1.9.5"


@dataclass
class Raw(core.Asn1Value):
    """An attribute value given as its exact DER (a time that is not a time, ...)."""

    def __init__(self, der: bytes) -> None:
        self.der = der

    def dump(self, force: bool = False) -> bytes:
        return self.der


@dataclass
class Forge:
    """Every field of the message; each test changes the one it is about (`replace`)."""

    pki: Pki
    content: bytes = CONTENT
    digest: str = "sha256"
    scheme: str | None = None  # ecdsa, rsa-pkcs1, rsa-pss: from the key by default
    signature_oid: str | None = None  # the label; from scheme and digest by default
    pss_salt: int = 32
    pss_salt_label: int | None = None  # the salt length the parameters claim: pss_salt by default
    pss_hash: str | None = None  # PSS parameters' hash and MGF1 hash: the digest by default
    pss_mgf_hash: str | None = None
    pss_trailer: int = 1
    content_type: str = ID_DATA
    attributes: list[tuple[str, list[core.Asn1Value]]] | None = None  # None: contentType, messageDigest, time
    extra_attributes: list[tuple[str, list[core.Asn1Value]]] = field(default_factory=list)
    no_attributes: bool = False
    sid: str = "issuer_and_serial_number"  # or subject_key_identifier
    sid_issuer: x509.Name | None = None
    sid_serial: int | None = None
    sid_key_identifier: bytes | None = None
    certificates: list[x509.Certificate] | None = None  # gateway + chain by default
    encapsulate: bool = False
    detach: bool = True
    flip_signature_bit: bool = False

    def default_attributes(self) -> list[tuple[str, list[core.Asn1Value]]]:
        digest = hashlib.new(self.digest, self.content).digest()
        return [
            (CONTENT_TYPE, [core.ObjectIdentifier(self.content_type)]),
            (MESSAGE_DIGEST, [core.OctetString(digest)]),
            (SIGNING_TIME, [core.UTCTime(NOW)]),
        ]

    def _scheme(self) -> str:
        if self.scheme is not None:
            return self.scheme
        return "ecdsa" if isinstance(self.pki.gateway_key, ec.EllipticCurvePrivateKey) else "rsa-pkcs1"

    def _sign(self, data: bytes) -> bytes:
        chosen = HASHES[self.digest]()
        key = self.pki.gateway_key
        scheme = self._scheme()
        if isinstance(key, ec.EllipticCurvePrivateKey):
            return key.sign(data, ec.ECDSA(chosen))
        if scheme == "rsa-pss":
            return key.sign(data, padding.PSS(padding.MGF1(chosen), self.pss_salt), chosen)
        return key.sign(data, padding.PKCS1v15(), chosen)

    def _algorithm(self) -> algos.SignedDigestAlgorithm:
        scheme = self._scheme()
        oid = self.signature_oid or _SIGNATURE_OIDS[(scheme, self.digest)]
        if oid != "1.2.840.113549.1.1.10":
            return algos.SignedDigestAlgorithm({"algorithm": oid})
        parameters = algos.RSASSAPSSParams(
            {
                "hash_algorithm": {"algorithm": self.pss_hash or self.digest},
                "mask_gen_algorithm": {
                    "algorithm": "mgf1",
                    "parameters": {"algorithm": self.pss_mgf_hash or self.digest},
                },
                "salt_length": self.pss_salt if self.pss_salt_label is None else self.pss_salt_label,
                "trailer_field": self.pss_trailer,
            }
        )
        return algos.SignedDigestAlgorithm({"algorithm": oid, "parameters": parameters})

    def _sid(self) -> cms.SignerIdentifier:
        gateway = self.pki.gateway
        if self.sid == "subject_key_identifier":
            ski = gateway.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
            return cms.SignerIdentifier({"subject_key_identifier": self.sid_key_identifier or ski})
        issuer = (self.sid_issuer or gateway.issuer).public_bytes()
        return cms.SignerIdentifier(
            {
                "issuer_and_serial_number": {
                    "issuer": asn1_x509.Name.load(issuer),
                    "serial_number": self.sid_serial if self.sid_serial is not None else gateway.serial_number,
                }
            }
        )

    def message(self) -> SignedMessage:
        attributes = self.attributes if self.attributes is not None else self.default_attributes()
        encoded = sorted(  # DER: a SET OF is sorted by encoding
            _tlv(0x30, core.ObjectIdentifier(oid).dump() + _tlv(0x31, b"".join(v.dump() for v in values)))
            for oid, values in [*attributes, *self.extra_attributes]
        )
        signed = cms.CMSAttributes.load(_tlv(0x31, b"".join(encoded)))
        signature = self._sign(signed.dump())
        if self.flip_signature_bit:
            signature = signature[:-1] + bytes([signature[-1] ^ 1])
        signer_info = {
            "version": "v1" if self.sid == "issuer_and_serial_number" else "v3",
            "sid": self._sid(),
            "digest_algorithm": {"algorithm": self.digest},
            "signature_algorithm": self._algorithm(),
            "signature": signature,
        }
        if not self.no_attributes:
            signer_info["signed_attrs"] = signed
        embedded = self.certificates if self.certificates is not None else [self.pki.gateway, *self.pki.chain]
        encapsulated: dict[str, Any] = {"content_type": self.content_type}
        if self.encapsulate:
            encapsulated["content"] = self.content
        signed_data = cms.SignedData(
            {
                "version": "v1",
                "digest_algorithms": [{"algorithm": self.digest}],
                "encap_content_info": encapsulated,
                "certificates": [
                    asn1_x509.Certificate.load(c.public_bytes(serialization.Encoding.DER)) for c in embedded
                ],
                "signer_infos": [signer_info],
            }
        )
        der = cms.ContentInfo({"content_type": "signed_data", "content": signed_data}).dump()
        return SignedMessage(cms=der, detached_content=self.content if self.detach else None, raw=der)

    def but(self, **changes: Any) -> Forge:
        return replace(self, **changes)


def _tlv(tag: int, body: bytes) -> bytes:
    """One DER element: built by hand so attribute values of any type (even the wrong one) can be signed."""
    if len(body) < 0x80:
        return bytes([tag, len(body)]) + body
    size = len(body).to_bytes((len(body).bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + body


def rsa_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, bits)
