"""Azure DPS symmetric-key credentials, exactly as DPS derives and checks them; shared by devices and the service.

A group enrollment holds one group key; each device's key is derived from it and its registration ID,
so a factory can hold only derived keys and a leaked device key exposes one device:

    deviceKey = base64(HMAC-SHA256(key = base64decode(groupKey), msg = registrationId))

A device proves it holds its key with DPS's SAS token, `resource = registrations/{registrationId}`:

    SharedAccessSignature sr={urlencoded resource}&sig={urlencoded base64(HMAC-SHA256(
        key = base64decode(deviceKey), msg = resource + "\\n" + se))}&se={expiry, Unix seconds}&skn=registration

Only the standard library is used: this module runs on devices too.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote

SAS_SCHEME = "SharedAccessSignature"
KEY_NAME = "registration"


def _decode_key(key: str, what: str) -> bytes:
    try:
        decoded = base64.b64decode(key.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{what} is not base64") from None
    if len(decoded) < 16:
        raise ValueError(f"{what} is shorter than 16 bytes")
    return decoded


def derive_device_key(group_key: str, registration_id: str) -> str:
    """The device key of `registration_id` in the group enrollment whose key is `group_key` (both base64)."""
    digest = hmac.new(_decode_key(group_key, "the group key"), registration_id.encode("utf-8"), hashlib.sha256)
    return base64.b64encode(digest.digest()).decode("ascii")


def resource(registration_id: str) -> str:
    return f"registrations/{registration_id}"


def _mac(device_key: str, signed_resource: str, expiry: int) -> bytes:
    message = f"{signed_resource}\n{expiry}".encode()
    return hmac.new(_decode_key(device_key, "the device key"), message, hashlib.sha256).digest()


def sas_token(device_key: str, registration_id: str, expiry: int) -> str:
    """The `Authorization` header value a DPS device sends, valid until `expiry` (Unix seconds)."""
    sig = base64.b64encode(_mac(device_key, resource(registration_id), expiry)).decode("ascii")
    return (
        f"{SAS_SCHEME} sr={quote(resource(registration_id), safe='')}&sig={quote(sig, safe='')}"
        f"&se={expiry}&skn={KEY_NAME}"
    )


@dataclass(frozen=True)
class SasToken:
    resource: str
    signature: str
    expiry: int
    key_name: str

    @property
    def registration_id(self) -> str | None:
        prefix = "registrations/"
        return self.resource[len(prefix) :] if self.resource.startswith(prefix) else None


def parse_sas_token(header: str) -> SasToken:
    """The fields of a `SharedAccessSignature ...` header value; ValueError if it is not one."""
    scheme, _, rest = header.strip().partition(" ")
    if scheme != SAS_SCHEME or not rest:
        raise ValueError("not a SharedAccessSignature token")
    fields: dict[str, str] = {}
    for name, value in parse_qsl(rest.strip(), keep_blank_values=True, strict_parsing=True):
        if name in fields:
            raise ValueError(f"the token repeats {name}")
        fields[name] = value
    missing = [name for name in ("sr", "sig", "se") if not fields.get(name)]
    if missing:
        raise ValueError(f"the token lacks {', '.join(missing)}")
    if not fields["se"].isascii() or not fields["se"].isdigit() or len(fields["se"]) > 12:
        raise ValueError("the token's se is not a Unix time")
    return SasToken(fields["sr"], fields["sig"], int(fields["se"]), fields.get("skn", ""))


def signature_matches(token: SasToken, device_key: str) -> bool:
    """Constant-time comparison of the token's signature with the one `device_key` makes for its resource."""
    expected = _mac(device_key, token.resource, token.expiry)
    try:
        presented = base64.b64decode(token.signature, validate=True)
    except (binascii.Error, ValueError):
        return False
    return hmac.compare_digest(expected, presented)
