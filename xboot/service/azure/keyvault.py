"""Key Vault clients from settings: `KeyVaultName` (public cloud) or `KeyVaultUri` (any cloud)."""

from __future__ import annotations

from typing import Any

from xboot.errors import ConfigurationError
from xboot.service.azure import sdk
from xboot.service.settings import Settings


def vault_url(settings: Settings) -> str:
    uri = settings.get("KeyVaultUri")
    if uri:
        if not uri.startswith("https://"):
            raise ConfigurationError("setting KeyVaultUri must start with https://")
        return uri.rstrip("/") + "/"
    name = settings.require("KeyVaultName", "for the Key Vault locations (or set KeyVaultUri)")
    if not name.replace("-", "").isalnum() or not 3 <= len(name) <= 24:
        raise ConfigurationError("setting KeyVaultName: not a Key Vault name (3-24 letters, digits and dashes)")
    return f"https://{name}.vault.azure.net/"


def client(kind: str, settings: Settings) -> Any:
    """A `secrets` or `certificates` client for the configured vault, kept for the process."""
    url = vault_url(settings)

    def create() -> Any:
        if kind == "secrets":
            from azure.keyvault.secrets import SecretClient as Client
        else:
            from azure.keyvault.certificates import CertificateClient as Client
        return Client(url, sdk.credential(), **sdk.client_options())

    return sdk.shared_client((kind, url), create)
