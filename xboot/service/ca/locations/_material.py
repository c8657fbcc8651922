"""Turn the bytes a location read into CaMaterial: shared by every byte-oriented location."""

from __future__ import annotations

from xboot.errors import ConfigurationError
from xboot.pki import is_pem, load_certificates, load_pkcs12_bundle, load_private_key, looks_like_pkcs12
from xboot.service.ca.signer import CaMaterial, LocalKey
from xboot.service.settings import Settings


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
