"""The issuing CA: its certificate, the chain above it, and a key that can sign.

`load_signer` is the only way in. It asks the configured key location for the CA
material, checks it once, and caches the result per process for `SignerCacheSeconds`
so that a burst of enrollments costs one key-store read per instance per TTL.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from dataclasses import dataclass, field
from functools import cached_property

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from xboot.errors import ConfigurationError
from xboot.pki import PublicKey, describe_key, spki_der
from xboot.service.ca import locations
from xboot.service.ca.authority import IssuingCa
from xboot.service.ca.material import CaKey, CaMaterial
from xboot.service.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_CACHE_SECONDS = 300


@dataclass(frozen=True)
class Signer(IssuingCa):
    """The issuing CA with a key this process signs with (`Issuer` Local)."""

    key: CaKey = field(kw_only=True)
    hash_algorithm: hashes.HashAlgorithm = field(compare=False, kw_only=True)
    crl_sign: bool = field(default=True, kw_only=True)  # keyUsage cRLSign: without it no CRL is signed
    certificate_setting: str = field(default="CertificateFile", kw_only=True)

    def sign(self, builder: x509.CertificateBuilder) -> x509.Certificate:
        return self.key.sign_certificate(builder, self.hash_algorithm)

    def require_crl_sign(self, purpose: str) -> None:
        """Refuse, naming the setting, to publish or point at a CRL this CA may not sign."""
        if not self.crl_sign:
            raise ConfigurationError(
                f"setting {self.certificate_setting}: the CA certificate's keyUsage lacks cRLSign, so it cannot "
                f"{purpose}; reissue the CA with cRLSign (as the XBoot README's intermediate has)"
            )

    @cached_property
    def authority_key_identifier(self) -> x509.AuthorityKeyIdentifier:
        try:
            ski = self.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
            return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
        except x509.ExtensionNotFound:
            return x509.AuthorityKeyIdentifier.from_issuer_public_key(self.certificate.public_key())


def _hash_for(key: PublicKey, setting: str) -> hashes.HashAlgorithm:
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise ConfigurationError(
                f"setting {setting}: the CA key is {describe_key(key)}; at least RSA-2048 is required"
            )
        return hashes.SHA256()
    if isinstance(key, ec.EllipticCurvePublicKey):
        if isinstance(key.curve, ec.SECP256R1):
            return hashes.SHA256()
        if isinstance(key.curve, ec.SECP384R1):
            return hashes.SHA384()
    raise ConfigurationError(f"setting {setting}: the CA key is {describe_key(key)}; use RSA-2048+ or EC P-256/P-384")


def check_ca_material(material: CaMaterial, now: dt.datetime) -> Signer:
    """Refuse a CA that cannot sign what we would issue, with the setting at fault named."""
    public_key = material.key.public_key()
    wanted = spki_der(public_key)
    matching = [c for c in material.certificates if spki_der(c.public_key()) == wanted]
    if not matching:
        raise ConfigurationError(
            f"settings {material.certificate_setting} and {material.key_setting}: "
            "the private key does not belong to the certificate"
        )
    certificate = matching[0]
    others = tuple(c for c in material.certificates if c is not certificate)
    chain = material.chain or others
    setting = material.certificate_setting
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise ConfigurationError(
            f"setting {setting}: the certificate is not a CA (basicConstraints CA:TRUE is missing)"
        )
    try:
        usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        raise ConfigurationError(
            f"setting {setting}: the CA certificate has no keyUsage extension; it needs keyCertSign (and cRLSign "
            "to serve the CRL), or strict verifiers (openssl verify -x509_strict) refuse every certificate it issues"
        ) from None
    if not usage.key_cert_sign:
        raise ConfigurationError(f"setting {setting}: the CA certificate's keyUsage lacks keyCertSign")
    if now < certificate.not_valid_before_utc:
        raise ConfigurationError(f"setting {setting}: the CA certificate is not valid yet")
    if now >= certificate.not_valid_after_utc:
        raise ConfigurationError(f"setting {setting}: the CA certificate expired")
    algorithm = _hash_for(public_key, material.key_setting)
    if chain:
        try:
            certificate.verify_directly_issued_by(chain[0])
        except (InvalidSignature, ValueError, TypeError):
            raise ConfigurationError(
                f"setting {material.chain_setting}: its first certificate did not issue the CA certificate"
            ) from None
    return Signer(
        certificate=certificate,
        key=material.key,
        chain=chain,
        hash_algorithm=algorithm,
        crl_sign=usage.crl_sign,
        certificate_setting=setting,
    )


class _SignerCache:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entry: tuple[tuple[str | None, ...], float, Signer] | None = None

    def get(self, settings: Settings) -> Signer:
        entry = locations.resolve(settings)
        cache_key = settings.snapshot(("Location", "SignerCacheSeconds", *entry.settings))
        ttl = settings.integer("SignerCacheSeconds", DEFAULT_CACHE_SECONDS, minimum=0, maximum=86_400)
        current = self._entry
        if current is not None and current[0] == cache_key and time.monotonic() < current[1]:
            return current[2]
        with self._lock:  # one key-store read at a time, however many requests are waiting
            current = self._entry
            if current is not None and current[0] == cache_key and time.monotonic() < current[1]:
                return current[2]
            material = entry.load(settings)
            signer = check_ca_material(material, dt.datetime.now(dt.UTC))
            log.info(
                "loaded issuing CA %s (%s) from Location %s",
                signer.subject_text,
                signer.fingerprint,
                entry.name,
            )
            self._entry = (cache_key, time.monotonic() + ttl, signer)
            return signer

    def clear(self) -> None:
        with self._lock:
            self._entry = None


_cache = _SignerCache()


def load_signer(settings: Settings | None = None) -> Signer:
    """The issuing CA for the current settings, from the per-process cache when fresh."""
    return _cache.get(settings or Settings.from_environ())


def clear_signer_cache() -> None:
    _cache.clear()
