"""What a key location hands to the signer: the CA's certificates and a key that signs.

Shared by the signer and every location module (so neither imports the other), with the
parser every byte-oriented location (File, Blob, AppSettings) uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from xboot.errors import ConfigurationError
from xboot.pki import (
    PrivateKey,
    PublicKey,
    is_pem,
    load_certificates,
    load_pkcs12_bundle,
    load_private_key,
    looks_like_pkcs12,
)
from xboot.service.settings import Settings


class CaKey(Protocol):
    """A CA key that signs certificates and CRLs: held in memory, or remote (Key Vault) and never exported."""

    def public_key(self) -> PublicKey: ...

    def sign_certificate(
        self, builder: x509.CertificateBuilder, algorithm: hashes.HashAlgorithm
    ) -> x509.Certificate: ...

    def sign_crl(
        self, builder: x509.CertificateRevocationListBuilder, algorithm: hashes.HashAlgorithm
    ) -> x509.CertificateRevocationList: ...


@dataclass(frozen=True)
class LocalKey:
    private_key: PrivateKey

    def public_key(self) -> PublicKey:
        return self.private_key.public_key()

    def sign_certificate(self, builder: x509.CertificateBuilder, algorithm: hashes.HashAlgorithm) -> x509.Certificate:
        return builder.sign(self.private_key, algorithm)

    def sign_crl(
        self, builder: x509.CertificateRevocationListBuilder, algorithm: hashes.HashAlgorithm
    ) -> x509.CertificateRevocationList:
        return builder.sign(self.private_key, algorithm)


@dataclass(frozen=True)
class CaMaterial:
    """What a key location returns: raw material, not yet checked."""

    certificates: tuple[x509.Certificate, ...]
    key: CaKey
    chain: tuple[x509.Certificate, ...] = ()
    certificate_setting: str = "CertificateFile"
    key_setting: str = "PrivateKeyFile"
    chain_setting: str = "CertificateChainFile"


def password(settings: Settings) -> bytes | None:
    value = settings.raw("PrivateKeyPassword")
    return value.encode("utf-8") if value is not None else None


def material_from_bytes(settings: Settings, certificate: bytes, key: bytes | None, chain: bytes | None) -> CaMaterial:
    """CertificateFile may be a PEM/DER certificate (key in PrivateKeyFile), a PEM holding both, or a PKCS#12."""
    secret = password(settings)
    chain_certs = tuple(load_certificates(chain, "CertificateChainFile")) if chain else ()
    if looks_like_pkcs12(certificate):
        bundle = load_pkcs12_bundle(certificate, secret, "CertificateFile")
        return CaMaterial(
            certificates=(bundle.certificate,),
            key=LocalKey(bundle.key),
            chain=chain_certs or bundle.chain,
            key_setting="CertificateFile",
        )
    if key is None:
        if is_pem(certificate) and b"PRIVATE KEY-----" in certificate:
            key, key_setting = certificate, "CertificateFile"
        else:
            raise ConfigurationError("setting PrivateKeyFile is required unless CertificateFile holds the key too")
    else:
        key_setting = "PrivateKeyFile"
    if looks_like_pkcs12(key):
        bundle = load_pkcs12_bundle(key, secret, key_setting)
        private_key = bundle.key
    else:
        private_key = load_private_key(key, secret, key_setting)
    return CaMaterial(
        certificates=tuple(load_certificates(certificate, "CertificateFile")),
        key=LocalKey(private_key),
        chain=chain_certs,
        key_setting=key_setting,
    )
