"""DeviceKey: per-device symmetric keys derived from a group key exactly as Azure DPS derives them.

The device sends DPS's SAS token (`Authorization: SharedAccessSignature sr=registrations%2F{id}&sig=...&se=...
&skn=registration`), or on EST HTTP Basic with username = registration ID and password = its device key.
Group keys are in `EnrollmentGroupKeys` (comma-separated: primary and secondary, for rotation). A factory
holds only derived keys: a leaked device key exposes one device.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import time

from xboot import dps
from xboot.errors import ConfigurationError, Forbidden, Unauthorized
from xboot.service.enrollment.authorization import EnrollmentRequest, Grant
from xboot.service.settings import Settings

GROUP_KEYS = "EnrollmentGroupKeys"
MAX_SECONDS = "EnrollmentTokenMaxSeconds"


def device_keys(settings: Settings, registration_id: str) -> list[str]:
    """The device key of `registration_id` under each group key; a group key that cannot derive is named."""
    groups = [k.strip() for k in (settings.get(GROUP_KEYS) or "").split(",") if k.strip()]
    if not groups:
        raise ConfigurationError(f"setting {GROUP_KEYS} is required when EnrollmentAuthorization has DeviceKey")
    try:
        return [dps.derive_device_key(group, registration_id) for group in groups]
    except ValueError as error:
        raise ConfigurationError(f"setting {GROUP_KEYS}: {error} (16 to 64 bytes, base64)") from None


def _invalid(message: str) -> Unauthorized:
    return Unauthorized(message, code="invalid_credential")


def _sas(header: str, request: EnrollmentRequest, settings: Settings) -> Grant:
    try:
        token = dps.parse_sas_token(header)
    except ValueError as error:
        raise _invalid(f"the SharedAccessSignature token is malformed: {error}") from None
    signed_id = token.registration_id
    if token.key_name != dps.KEY_NAME or signed_id is None:
        raise _invalid("the SharedAccessSignature token must have skn=registration and sr=registrations/{id}")
    now = int(time.time())
    horizon = settings.integer(MAX_SECONDS, 3600, minimum=60, maximum=86_400)
    if token.expiry <= now:
        raise _invalid("the SharedAccessSignature token has expired (se is in the past)")
    if token.expiry > now + horizon:
        raise _invalid(f"the SharedAccessSignature token's se is more than {horizon} s ahead ({MAX_SECONDS})")
    if not any(dps.signature_matches(token, key) for key in device_keys(settings, signed_id)):
        raise _invalid("the SharedAccessSignature token's signature does not verify with any enrollment group key")
    if signed_id != request.registration_id:
        raise Forbidden("the SharedAccessSignature token is for another registration ID", code="credential_mismatch")
    return Grant("DeviceKey")


def _basic(header: str, request: EnrollmentRequest, settings: Settings) -> Grant:
    try:
        decoded = base64.b64decode(header.split(" ", 1)[1].strip(), validate=True).decode("utf-8")
    except (IndexError, binascii.Error, ValueError):
        raise _invalid("the Basic credentials are not base64 user:password") from None
    user, colon, password = decoded.partition(":")
    if not colon:
        raise _invalid("the Basic credentials are not base64 user:password")
    presented = password.encode()
    if not any(hmac.compare_digest(key.encode(), presented) for key in device_keys(settings, user)):
        raise _invalid("the password is not the device key of this user (registration ID) in any enrollment group")
    if user != request.registration_id:
        raise Forbidden("the Basic user is not the CSR's registration ID", code="credential_mismatch")
    return Grant("DeviceKey")


def authorize(request: EnrollmentRequest, settings: Settings) -> Grant | None:
    header = (request.authorization or "").strip()
    scheme = header.split(" ", 1)[0].lower()
    if scheme == dps.SAS_SCHEME.lower():
        return _sas(header, request, settings)
    if scheme == "basic":
        return _basic(header, request, settings)
    return None
