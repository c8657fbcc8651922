"""Where the issuing CA's certificate and key live, chosen by the `Location` setting.

One module per location, each with `load(settings) -> CaMaterial`; this registry is
the only place that knows them all. Modules are imported when selected, so a File
deployment never imports an Azure SDK.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from xboot.errors import ConfigurationError
from xboot.service.ca.material import CaMaterial
from xboot.service.settings import Settings


@dataclass(frozen=True)
class LocationEntry:
    name: str
    number: int
    module: str  # the module beside this file that loads it
    settings: tuple[str, ...]  # every setting the module reads: a change to any reloads the signer

    def load(self, settings: Settings) -> CaMaterial:
        loader: Callable[[Settings], CaMaterial] = importlib.import_module(f"{__name__}.{self.module}").load
        return loader(settings)


_COMMON = ("CertificateFile", "PrivateKeyFile", "PrivateKeyPassword", "CertificateChainFile")

REGISTRY: dict[str, LocationEntry] = {
    entry.name.lower(): entry
    for entry in (
        LocationEntry("KeyVault", 0, "keyvault", ("KeyVaultName", "KeyVaultUri", *_COMMON)),
        LocationEntry("File", 1, "file", _COMMON),
        LocationEntry(
            "Blob",
            2,
            "blob",
            ("BlobConnectionString", "BlobAccountUrl", "BlobContainerName", *_COMMON),
        ),
        LocationEntry("AppSettings", 3, "appsettings", _COMMON),
        LocationEntry("KeyVaultKey", 4, "keyvaultkey", ("KeyVaultName", "KeyVaultUri", *_COMMON)),
    )
}


def resolve(settings: Settings) -> LocationEntry:
    """The entry for `Location`, given as its number (XBoot's enum) or its name, any case."""
    value = settings.get("Location")
    if value is None:
        names = ", ".join(e.name for e in REGISTRY.values())
        raise ConfigurationError(f"setting Location is not set (use one of {names})")
    for entry in REGISTRY.values():
        if value.lower() == entry.name.lower() or value == str(entry.number):
            return entry
    names = ", ".join(f"{e.number}/{e.name}" for e in REGISTRY.values())
    raise ConfigurationError(f"setting Location: unknown location; use one of {names}")
