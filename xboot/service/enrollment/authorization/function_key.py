"""FunctionKey: XBoot's behaviour. The host checked the function key; that alone enrolls any allowed ID.

Every firmware image carries that key, so whoever extracts it from one device can become any device.
Kept for compatibility with XBoot's devices, and announced loudly where it is in force.
"""

from __future__ import annotations

from xboot.service.enrollment.authorization import EnrollmentRequest, Grant
from xboot.service.settings import Settings

WARNING = (
    "EnrollmentAuthorization accepts FunctionKey: anyone holding the function key can enroll any allowed "
    "registration ID; choose DeviceKey, Token or Certificate (README: enrollment authorization)"
)


def authorize(request: EnrollmentRequest, settings: Settings) -> Grant | None:
    return Grant("FunctionKey") if request.function_key_checked else None
