"""Location 0 / KeyVault: a Key Vault certificate whose key is exportable.

Key Vault serves an exportable certificate's key through the secret of the same name,
as PKCS#12 (base64) or PEM. A certificate whose key is not exportable cannot be used
here: use Location KeyVaultKey, which signs inside Key Vault instead.
"""

from __future__ import annotations

import base64
import binascii

from azure.core.exceptions import AzureError
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12

from xboot.errors import ConfigurationError
from xboot.pki import load_certificates, load_private_key
from xboot.service.azure import keyvault
from xboot.service.azure.sdk import raise_backend_error
from xboot.service.ca.material import CaMaterial, LocalKey
from xboot.service.settings import Settings

_NOT_EXPORTABLE = (
    "setting CertificateFile: Key Vault returned certificate {name} without its private key "
    "(the key is not exportable); use Location KeyVaultKey to sign inside Key Vault"
)


def load(settings: Settings) -> CaMaterial:
    name = settings.require("CertificateFile", "for Location KeyVault (the Key Vault certificate name)")
    try:
        secret = keyvault.client("secrets", settings).get_secret(name)
    except AzureError as error:
        raise_backend_error(
            error, "Key Vault", "CertificateFile", f"certificate {name}", "the Key Vault Secrets User role"
        )
    value: str = secret.value or ""
    if value.lstrip().startswith("-----BEGIN"):  # content type application/x-pem-file
        data = value.encode("ascii", "replace")
        if b"PRIVATE KEY-----" not in data:
            raise ConfigurationError(_NOT_EXPORTABLE.format(name=name))
        certificates = load_certificates(data, "CertificateFile")
        key = load_private_key(data, None, "CertificateFile")
        return CaMaterial(certificates=tuple(certificates), key=LocalKey(key), key_setting="CertificateFile")
    try:
        bundle = pkcs12.load_pkcs12(base64.b64decode(value, validate=True), None)
    except (binascii.Error, ValueError):
        raise ConfigurationError(f"setting CertificateFile: secret {name} is neither PKCS#12 nor PEM") from None
    if bundle.key is None or bundle.cert is None:
        raise ConfigurationError(_NOT_EXPORTABLE.format(name=name))
    if not isinstance(bundle.key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise ConfigurationError("setting CertificateFile: only RSA and EC CA keys are supported")
    return CaMaterial(
        certificates=(bundle.cert.certificate,),
        key=LocalKey(bundle.key),
        chain=tuple(c.certificate for c in bundle.additional_certs),
        key_setting="CertificateFile",
    )
