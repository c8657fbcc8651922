"""Which registration IDs may enroll.

IDs follow Azure DPS rules (letters, digits and `. _ : -`, the last one a letter, digit or
dash), capped at 64 characters rather than DPS's 128: the ID becomes the certificate's CN,
and RFC 5280 bounds a CN at 64. DPS treats IDs case-insensitively, so allow-list checks do
too; the certificate's CN keeps the case the device sent.
"""

from __future__ import annotations

import importlib
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509

from xboot.errors import BadRequest, ConfigurationError
from xboot.service.settings import Settings

REGISTRATION_ID = re.compile(r"[A-Za-z0-9._:-]{0,63}[A-Za-z0-9-]")
MAX_LENGTH = 64  # RFC 5280 ub-common-name

# A custom validator: `RegistrationPolicy=package.module:function`, called as
# function(registration_id, csr) -> bool. XBoot's CheckIfAuthorized, made pluggable.
RegistrationValidator = Callable[[str, x509.CertificateSigningRequest], bool]


def validate_registration_id(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise BadRequest("RegistrationId is required", code="invalid_registration_id")
    if len(value) > MAX_LENGTH:
        raise BadRequest(
            f"RegistrationId is longer than {MAX_LENGTH} characters, the most a certificate CN may hold (RFC 5280)",
            code="invalid_registration_id",
        )
    if not REGISTRATION_ID.fullmatch(value):
        raise BadRequest(
            "RegistrationId must be 1-64 characters of A-Z a-z 0-9 . _ : - ending in a letter, digit or dash",
            code="invalid_registration_id",
        )
    return value


@dataclass(frozen=True)
class AllowList:
    ids: frozenset[str]
    pattern: re.Pattern[str] | None

    def __call__(self, registration_id: str, csr: x509.CertificateSigningRequest) -> bool:
        if registration_id.lower() in self.ids:
            return True
        return self.pattern is not None and self.pattern.fullmatch(registration_id) is not None


def allow_all(registration_id: str, csr: x509.CertificateSigningRequest) -> bool:
    return True


def _split_ids(text: str) -> set[str]:
    return {item.strip().lower() for item in re.split(r"[,\s]+", text) if item.strip() and not item.startswith("#")}


def _allow_list(settings: Settings) -> AllowList:
    from xboot.service.storage import open_data_store

    ids = _split_ids(settings.get("AllowedRegistrationIds", "") or "")
    list_name = settings.get("AllowedRegistrationIdsFile")
    if list_name is not None:
        data = open_data_store(settings).read(list_name)
        if data is None:
            raise ConfigurationError("setting AllowedRegistrationIdsFile: no such object in the data store")
        ids |= _split_ids(data.decode("utf-8", "replace"))
    pattern_text = settings.get("AllowedRegistrationIdPattern")
    try:
        pattern = re.compile(pattern_text) if pattern_text else None
    except re.error:
        raise ConfigurationError("setting AllowedRegistrationIdPattern: not a valid regular expression") from None
    if not ids and pattern is None:
        raise ConfigurationError(
            "RegistrationPolicy AllowList needs AllowedRegistrationIds, AllowedRegistrationIdsFile "
            "or AllowedRegistrationIdPattern"
        )
    return AllowList(frozenset(ids), pattern)


def _custom(reference: str) -> RegistrationValidator:
    module_name, _, attribute = reference.partition(":")
    try:
        validator = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError, ValueError):
        raise ConfigurationError("setting RegistrationPolicy: cannot import the validator it names") from None
    if not callable(validator):
        raise ConfigurationError("setting RegistrationPolicy: the name it gives is not callable")
    return validator


_SETTINGS = (
    "RegistrationPolicy",
    "AllowedRegistrationIds",
    "AllowedRegistrationIdsFile",
    "AllowedRegistrationIdPattern",
    "SignerCacheSeconds",
)
_lock = threading.Lock()
_cached: tuple[tuple[str | None, ...], float, RegistrationValidator] | None = None


def load_registration_policy(settings: Settings) -> RegistrationValidator:
    """The configured policy; an allow-list file is re-read at most once per SignerCacheSeconds."""
    global _cached
    key = settings.snapshot(_SETTINGS)
    current = _cached
    if current is not None and current[0] == key and time.monotonic() < current[1]:
        return current[2]
    name = settings.get("RegistrationPolicy", "AllowAll") or "AllowAll"
    if name.lower() == "allowall":
        policy: RegistrationValidator = allow_all
    elif name.lower() == "allowlist":
        policy = _allow_list(settings)
    elif ":" in name:
        policy = _custom(name)
    else:
        raise ConfigurationError("setting RegistrationPolicy: use AllowAll, AllowList or module:function")
    ttl = settings.integer("SignerCacheSeconds", 300, minimum=0, maximum=86_400)
    with _lock:
        _cached = (key, time.monotonic() + ttl, policy)
    return policy
