"""Parsing of certificates and keys in the shapes operators actually have them.

PEM (including the single-line form App Settings force on it), DER, and PKCS#12.
Errors name the setting the bytes came from and never echo the bytes.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from xboot.errors import ConfigurationError

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey
# What `Certificate.extensions` raises for an extension it cannot decode (it decodes them on first access):
# a malformed value, a duplicate, an unsupported name type, or (TypeError) an iPAddress name constraint
# without its mask. Whoever reads the extensions of a certificate it did not make catches all of these.
UNDECODABLE_EXTENSION = (ValueError, TypeError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType)

_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END \1-----", re.DOTALL)
_BASE64_NOISE = re.compile(rb"\s+|\\n|\\r")


def normalize_pem(data: bytes) -> bytes:
    """Re-wrap PEM blocks whose line breaks were lost (App Settings hold one line) or escaped as \\n."""
    blocks = []
    for match in _PEM_BLOCK.finditer(data):
        label, body = match.group(1), match.group(2)
        if b":" in body:  # legacy encrypted PEM headers: cannot be re-wrapped blindly
            blocks.append(match.group(0).replace(b"\\n", b"\n"))
            continue
        body = _BASE64_NOISE.sub(b"", body)
        lines = [body[i : i + 64] for i in range(0, len(body), 64)]
        blocks.append(b"\n".join([b"-----BEGIN " + label + b"-----", *lines, b"-----END " + label + b"-----"]))
    return b"\n".join(blocks) + b"\n"


def pem_blocks(data: bytes) -> list[tuple[str, bytes]]:
    """(label, whole block) for each PEM block, after `normalize_pem` (one-line and escaped forms)."""
    return [(m.group(1).decode(), m.group(0) + b"\n") for m in _PEM_BLOCK.finditer(normalize_pem(data))]


def is_pem(data: bytes) -> bool:
    return b"-----BEGIN " in data


def load_certificates(data: bytes, setting: str) -> list[x509.Certificate]:
    """All certificates in PEM, DER or base64-DER `data`, in order."""
    try:
        if is_pem(data):
            return x509.load_pem_x509_certificates(normalize_pem(data))
        try:
            return [x509.load_der_x509_certificate(data)]
        except ValueError:
            return [x509.load_der_x509_certificate(base64.b64decode(data, validate=False))]
    except (ValueError, binascii.Error):
        raise ConfigurationError(f"setting {setting}: not a PEM or DER X.509 certificate") from None


def load_private_key(data: bytes, password: bytes | None, setting: str) -> PrivateKey:
    """A private key in PEM (PKCS#1, SEC1, PKCS#8, encrypted PKCS#8) or DER form."""
    try:
        if is_pem(data):
            key = serialization.load_pem_private_key(normalize_pem(data), password)
        else:
            key = serialization.load_der_private_key(data, password)
    except TypeError:
        if password is None:
            raise ConfigurationError(f"setting {setting}: the key is encrypted; set PrivateKeyPassword") from None
        raise ConfigurationError(f"setting {setting}: the key is not encrypted; remove PrivateKeyPassword") from None
    except (ValueError, binascii.Error):
        raise ConfigurationError(
            f"setting {setting}: not a readable private key (wrong format, or wrong PrivateKeyPassword)"
        ) from None
    except Exception:  # noqa: BLE001 - pyca raises UnsupportedAlgorithm and friends for odd keys
        raise ConfigurationError(f"setting {setting}: unsupported private key") from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise ConfigurationError(f"setting {setting}: only RSA and EC CA keys are supported")
    return key


def looks_like_pkcs12(data: bytes) -> bool:
    """DER `PFX ::= SEQUENCE { version INTEGER (3), ... }`.

    Keys start with version 0 or 1, certificates with a SEQUENCE, so the first element tells them apart.
    """
    if len(data) < 8 or data[0] != 0x30:
        return False
    header = 2 + (data[1] & 0x7F if data[1] & 0x80 else 0)
    return data[header : header + 3] == b"\x02\x01\x03"


@dataclass(frozen=True)
class KeyBundle:
    """What a PKCS#12 file holds: the issuing certificate, its key and the certificates above it."""

    certificate: x509.Certificate
    key: PrivateKey
    chain: tuple[x509.Certificate, ...]


def load_pkcs12_bundle(data: bytes, password: bytes | None, setting: str) -> KeyBundle:
    try:
        loaded = pkcs12.load_pkcs12(data, password)
    except ValueError:
        raise ConfigurationError(
            f"setting {setting}: unreadable PKCS#12 (wrong PrivateKeyPassword, or not PKCS#12)"
        ) from None
    if loaded.key is None or loaded.cert is None:
        raise ConfigurationError(f"setting {setting}: the PKCS#12 must hold a certificate and its private key")
    key = loaded.key
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise ConfigurationError(f"setting {setting}: only RSA and EC CA keys are supported")
    return KeyBundle(
        certificate=loaded.cert.certificate,
        key=key,
        chain=tuple(c.certificate for c in loaded.additional_certs),
    )


def spki_der(key: PublicKey) -> bytes:
    """The DER SubjectPublicKeyInfo: how two keys, or a key and a certificate, are compared."""
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def signature_hash(key: PrivateKey) -> hashes.HashAlgorithm:
    """The hash a key signs with here: SHA-384 for P-384 and larger curves, SHA-256 otherwise."""
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


def common_name(name: x509.Name) -> str | None:
    """The name's CN when it has exactly one (what DPS and xboot take as the registration ID), else None."""
    names = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return names[0].value if len(names) == 1 and isinstance(names[0].value, str) else None


_HEX64 = re.compile(r"[0-9A-F]{64}")
_COLON_FORM = re.compile(r"[0-9A-F]{2}(?::[0-9A-F]{2}){31}")


def normalize_fingerprint(value: object) -> str | None:
    """`BB:EA:...` (what `openssl x509 -fingerprint -sha256` prints) from that form or plain hex, any case."""
    if not isinstance(value, str):
        return None
    text = value.strip().upper()
    if _COLON_FORM.fullmatch(text):
        return text
    if _HEX64.fullmatch(text):
        return ":".join(text[i : i + 2] for i in range(0, 64, 2))
    return None


def issued_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    """Whether `parent`'s key made `child`'s signature (and the names chain); False for anything that cannot
    be verified, an unsupported algorithm included."""
    try:
        child.verify_directly_issued_by(parent)
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return True


def sha256_fingerprint(certificate: x509.Certificate) -> str:
    """`BB:EA:2A:...`: the form `openssl x509 -fingerprint -sha256` prints and the trust API takes."""
    return certificate.fingerprint(hashes.SHA256()).hex(":").upper()


def certificates_to_pem(certificates: list[x509.Certificate] | tuple[x509.Certificate, ...]) -> str:
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode("ascii") for c in certificates)


def describe_key(key: PublicKey) -> str:
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA-{key.key_size}"
    return f"EC {key.curve.name}"


KEY_TYPES = ("ec-p256", "ec-p384", "rsa-2048", "rsa-3072")


def generate_key(key_type: str) -> PrivateKey:
    if key_type == "ec-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "ec-p384":
        return ec.generate_private_key(ec.SECP384R1())
    if key_type in ("rsa-2048", "rsa-3072"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(key_type[4:]))
    raise ValueError(f"unknown key type {key_type}; use one of {', '.join(KEY_TYPES)}")
