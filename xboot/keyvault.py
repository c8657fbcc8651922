"""Key Vault clients from settings: `KeyVaultName` (public cloud) or `KeyVaultUri` (any cloud)."""

from __future__ import annotations

import threading
from typing import Any

from xboot import azure as sdk
from xboot.errors import ConfigurationError
from xboot.settings import Settings

_lock = threading.Lock()
_clients: dict[tuple[str, str], Any] = {}


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
    """A `secrets`, `certificates` or `keys` client for the configured vault, kept for the process."""
    url = vault_url(settings)
    with _lock:
        existing = _clients.get((kind, url))
        if existing is not None:
            return existing
        if kind == "secrets":
            from azure.keyvault.secrets import SecretClient as Client
        elif kind == "certificates":
            from azure.keyvault.certificates import CertificateClient as Client
        else:
            from azure.keyvault.keys import KeyClient as Client
        created = Client(url, sdk.credential(), **sdk.client_options())
        _clients[(kind, url)] = created
        return created
