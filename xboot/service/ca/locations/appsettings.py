"""Location 3 / AppSettings: PEM text in the settings themselves (development and testing).

App Settings hold one line, so the XBoot README's form `-----BEGIN ...-----MIIE...-----END ...-----`
is re-wrapped by `normalize_pem`; `\\n` escapes are accepted too.
"""

from __future__ import annotations

from xboot.service.ca.material import CaMaterial, material_from_bytes
from xboot.service.settings import Settings


def _value(settings: Settings, name: str) -> bytes | None:
    value = settings.raw(name)
    return value.encode("utf-8") if value is not None else None


def load(settings: Settings) -> CaMaterial:
    settings.require("CertificateFile", "for Location AppSettings (PEM text of the CA certificate)")
    certificate = _value(settings, "CertificateFile")
    assert certificate is not None
    return material_from_bytes(
        settings, certificate, _value(settings, "PrivateKeyFile"), _value(settings, "CertificateChainFile")
    )
