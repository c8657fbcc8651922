"""Location 1 / File: paths on the instance's file system (development and testing)."""

from __future__ import annotations

from pathlib import Path

from xboot.errors import ConfigurationError
from xboot.service.ca.material import CaMaterial, material_from_bytes
from xboot.service.settings import Settings


def _read(settings: Settings, name: str) -> bytes | None:
    path = settings.get(name)
    if path is None:
        return None
    try:
        return Path(path).expanduser().read_bytes()
    except FileNotFoundError:
        raise ConfigurationError(f"setting {name}: file {path} does not exist") from None
    except OSError as exc:
        raise ConfigurationError(f"setting {name}: cannot read {path} ({exc.strerror})") from None


def load(settings: Settings) -> CaMaterial:
    settings.require("CertificateFile", "for Location File (path of the CA certificate)")
    certificate = _read(settings, "CertificateFile")
    assert certificate is not None
    return material_from_bytes(
        settings, certificate, _read(settings, "PrivateKeyFile"), _read(settings, "CertificateChainFile")
    )
