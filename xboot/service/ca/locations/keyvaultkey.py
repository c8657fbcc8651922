"""Location 4 / KeyVaultKey: the CA key never leaves Key Vault; Key Vault signs every certificate and CRL.

`CertificateFile` names a Key Vault certificate whose key may be non-exportable and HSM-backed.
Its public part is read once per `SignerCacheSeconds`; each issued certificate costs one Key Vault
`sign` call (as step-ca's azurekms does), which counts against the vault's throttling limits.
`CertificateChainFile` may hold the PEM of the certificates above the CA (Key Vault's certificate
object carries only the CA certificate itself).

cryptography's CertificateBuilder signs only with a key it holds, so the TBS certificate is
produced by signing with a stand-in key of the same type (the TBS depends on the key type and
hash, never on the key), Key Vault signs that TBS, and the certificate is reassembled and
verified with the CA's public key before it can reach a device. CRLs are signed the same way.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from asn1crypto import core
from azure.core.exceptions import AzureError
from azure.keyvault.keys.crypto import CryptographyClient, SignatureAlgorithm
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding

from xboot.errors import ConfigurationError
from xboot.pki import PrivateKey, PublicKey, load_certificates
from xboot.service.azure import keyvault, sdk
from xboot.service.ca.material import CaMaterial
from xboot.service.settings import Settings

_READ_ROLE = "the Key Vault Certificate User role"
_SIGN_ROLE = "the Key Vault Crypto User role"


def _crypto_client(key_id: str) -> CryptographyClient:
    """One CryptographyClient per key version, kept for the process."""
    return sdk.shared_client(
        ("crypto", key_id), lambda: CryptographyClient(key_id, sdk.credential(), **sdk.client_options())
    )


@functools.cache
def _stand_in_key(kind: str) -> PrivateKey:
    """A throwaway key per process whose only job is to make cryptography emit the TBS certificate."""
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def _algorithm(key: PublicKey, hash_algorithm: hashes.HashAlgorithm) -> SignatureAlgorithm:
    if isinstance(key, rsa.RSAPublicKey) and isinstance(hash_algorithm, hashes.SHA256):
        return SignatureAlgorithm.rs256
    if isinstance(key, ec.EllipticCurvePublicKey):
        if isinstance(key.curve, ec.SECP256R1) and isinstance(hash_algorithm, hashes.SHA256):
            return SignatureAlgorithm.es256
        if isinstance(key.curve, ec.SECP384R1) and isinstance(hash_algorithm, hashes.SHA384):
            return SignatureAlgorithm.es384
    raise ConfigurationError("setting CertificateFile: the Key Vault key must be RSA (RS256) or EC P-256/P-384")


@dataclass(frozen=True)
class KeyVaultSigningKey:
    """A CaKey whose private half stays in Key Vault."""

    certificate_name: str
    key_id: str
    ca_public_key: PublicKey

    def public_key(self) -> PublicKey:
        return self.ca_public_key

    def sign_certificate(self, builder: x509.CertificateBuilder, algorithm: hashes.HashAlgorithm) -> x509.Certificate:
        stand_in = builder.sign(self._stand_in(), algorithm)
        der = self._resign(stand_in.public_bytes(Encoding.DER), stand_in.tbs_certificate_bytes, algorithm)
        certificate = x509.load_der_x509_certificate(der)
        self._verify(certificate.signature, certificate.tbs_certificate_bytes, algorithm)
        return certificate

    def sign_crl(
        self, builder: x509.CertificateRevocationListBuilder, algorithm: hashes.HashAlgorithm
    ) -> x509.CertificateRevocationList:
        stand_in = builder.sign(self._stand_in(), algorithm)
        crl = x509.load_der_x509_crl(
            self._resign(stand_in.public_bytes(Encoding.DER), stand_in.tbs_certlist_bytes, algorithm)
        )
        self._verify(crl.signature, crl.tbs_certlist_bytes, algorithm)
        return crl

    def _stand_in(self) -> PrivateKey:
        return _stand_in_key("rsa" if isinstance(self.ca_public_key, rsa.RSAPublicKey) else "ec")

    def _resign(self, stand_in: bytes, tbs: bytes, algorithm: hashes.HashAlgorithm) -> bytes:
        """Key Vault's signature over `tbs`, in the stand-in's place.

        Certificates and CRLs share one outer shape, SEQUENCE { tbs, signatureAlgorithm, signature BIT STRING }
        (RFC 5280 sections 4.1 and 5.1), and the stand-in's signatureAlgorithm is already the right one.
        """
        remote_algorithm = _algorithm(self.ca_public_key, algorithm)
        digest = hashes.Hash(algorithm)
        digest.update(tbs)
        signature = self._remote_sign(remote_algorithm, digest.finalize())
        signature_algorithm = core.Sequence.load(stand_in)[1].dump()
        return core.Sequence(contents=tbs + signature_algorithm + core.OctetBitString(signature).dump()).dump()

    def _remote_sign(self, algorithm: SignatureAlgorithm, digest: bytes) -> bytes:
        try:
            raw: bytes = _crypto_client(self.key_id).sign(algorithm, digest).signature
        except AzureError as error:
            sdk.raise_backend_error(
                error, "Key Vault", "CertificateFile", f"the key of certificate {self.certificate_name}", _SIGN_ROLE
            )
        if isinstance(self.ca_public_key, rsa.RSAPublicKey):
            return raw
        # Key Vault returns ECDSA signatures as raw R || S (JWS form); X.509 wants DER.
        size = (self.ca_public_key.curve.key_size + 7) // 8
        if len(raw) != 2 * size:
            raise self._bad_signature()
        return encode_dss_signature(int.from_bytes(raw[:size], "big"), int.from_bytes(raw[size:], "big"))

    def _verify(self, signature: bytes, tbs: bytes, algorithm: hashes.HashAlgorithm) -> None:
        """A signature that does not verify must never reach a device (or a CRL consumer)."""
        key: Any = self.ca_public_key
        try:
            if isinstance(key, rsa.RSAPublicKey):
                key.verify(signature, tbs, padding.PKCS1v15(), algorithm)
            else:
                key.verify(signature, tbs, ec.ECDSA(algorithm))
        except InvalidSignature:
            raise self._bad_signature() from None

    def _bad_signature(self) -> ConfigurationError:
        return ConfigurationError(
            f"setting CertificateFile: Key Vault key {self.key_id} returned a signature that does not verify "
            f"with the public key of certificate {self.certificate_name}"
        )


def load(settings: Settings) -> CaMaterial:
    name = settings.require("CertificateFile", "for Location KeyVaultKey (the Key Vault certificate name)")
    try:
        bundle = keyvault.client("certificates", settings).get_certificate(name)
    except AzureError as error:
        sdk.raise_backend_error(error, "Key Vault", "CertificateFile", f"certificate {name}", _READ_ROLE)
    if not bundle.cer or not bundle.key_id:
        raise ConfigurationError(f"setting CertificateFile: Key Vault certificate {name} has no issued certificate yet")
    certificate = x509.load_der_x509_certificate(bytes(bundle.cer))
    chain_pem = settings.raw("CertificateChainFile")
    chain = load_certificates(chain_pem.encode("utf-8"), "CertificateChainFile") if chain_pem else []
    public_key = certificate.public_key()
    if not isinstance(public_key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise ConfigurationError("setting CertificateFile: only RSA and EC CA keys are supported")
    return CaMaterial(
        certificates=(certificate,),
        key=KeyVaultSigningKey(name, bundle.key_id, public_key),
        chain=tuple(chain),
        key_setting="CertificateFile",
    )
