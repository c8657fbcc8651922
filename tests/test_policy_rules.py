"""Registration policy and the enrollment authorization settings, on plain settings: every refusal and the cache.

The HTTP behaviour is in test_enrollment.py and test_enrollment_authorization.py; here each rule is met
alone (an ID of 65 characters, an allow-list comment, a policy that is not callable, a token spent twice).
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import time
from dataclasses import replace

import pytest

import xboot.service.enrollment.registration as registration
from xboot import dps
from xboot.errors import BadRequest, ConfigurationError, Forbidden, Unauthorized
from xboot.service.enrollment.authorization import (
    REGISTRY,
    EnrollmentRequest,
    Grant,
    accepted_methods,
    device_key,
    function_key_accepted,
    spend_token,
)
from xboot.service.settings import Settings
from xboot.service.storage import open_data_store


def _settings(**values: str) -> Settings:
    return Settings({**os.environ, **values})


@pytest.fixture(autouse=True)
def _no_cached_policy(monkeypatch):
    monkeypatch.setattr(registration, "_cached", None)


# -- registration IDs and policies ----------------------------------------------------------------------------


def test_registration_ids_are_at_most_64_characters():
    assert registration.validate_registration_id("d" * 64) == "d" * 64
    with pytest.raises(BadRequest, match="longer than 64 characters"):
        registration.validate_registration_id("d" * 65)


def test_allow_list_entries_skip_comments_and_blanks():
    assert registration._split_ids("Dev-1, dev-2\n#retired-3\n\n  dev-4 ") == {"dev-1", "dev-2", "dev-4"}


def test_an_allow_list_file_must_exist(app_env):
    settings = _settings(RegistrationPolicy="AllowList", AllowedRegistrationIdsFile="lists/missing.txt")
    with pytest.raises(ConfigurationError, match="no such object in the data store"):
        registration.load_registration_policy(settings)


def test_an_allow_list_needs_ids_or_a_pattern(app_env):
    with pytest.raises(ConfigurationError, match="needs AllowedRegistrationIds"):
        registration.load_registration_policy(_settings(RegistrationPolicy="AllowList"))
    by_pattern = registration.load_registration_policy(
        _settings(RegistrationPolicy="AllowList", AllowedRegistrationIdPattern="sensor-[0-9]+")
    )
    assert by_pattern("sensor-12", None) and not by_pattern("sensor-x", None)  # type: ignore[arg-type]


def test_an_invalid_pattern_is_a_configuration_error(app_env):
    settings = _settings(RegistrationPolicy="AllowList", AllowedRegistrationIdPattern="sensor-[")
    with pytest.raises(ConfigurationError, match="not a valid regular expression"):
        registration.load_registration_policy(settings)


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ("os:sep", "is not callable"),
        ("no_such_module_xyz:check", "cannot import"),
        ("Bogus", "use AllowAll, AllowList or module:function"),
    ],
)
def test_policy_names_that_cannot_work_are_configuration_errors(app_env, policy, message):
    with pytest.raises(ConfigurationError, match=message):
        registration.load_registration_policy(_settings(RegistrationPolicy=policy))


def test_the_policy_is_cached_per_settings_and_the_file_reread_after_its_ttl(app_env):
    store = open_data_store(_settings())
    store.replace("lists/allowed.txt", b"dev-1")
    cached = _settings(RegistrationPolicy="AllowList", AllowedRegistrationIdsFile="lists/allowed.txt")
    assert registration.load_registration_policy(cached)("dev-1", None)  # type: ignore[arg-type]
    store.replace("lists/allowed.txt", b"dev-2")
    assert registration.load_registration_policy(cached)("dev-1", None)  # type: ignore[arg-type]  # within the TTL
    assert registration.load_registration_policy(_settings(RegistrationPolicy="AllowAll")) is registration.allow_all
    uncached = _settings(
        RegistrationPolicy="AllowList", AllowedRegistrationIdsFile="lists/allowed.txt", SignerCacheSeconds="0"
    )
    assert registration.load_registration_policy(uncached)("dev-2", None)  # type: ignore[arg-type]
    store.replace("lists/allowed.txt", b"dev-3")
    assert registration.load_registration_policy(uncached)("dev-3", None)  # type: ignore[arg-type]


# -- enrollment authorization settings and tokens --------------------------------------------------------------


def test_unknown_authorization_methods_are_refused_and_duplicates_collapse():
    with pytest.raises(ConfigurationError, match="unknown method"):
        accepted_methods(_settings(EnrollmentAuthorization="DeviceKey,Telepathy"))
    assert accepted_methods(_settings(EnrollmentAuthorization="DeviceKey, devicekey")) == (REGISTRY["devicekey"],)


def test_a_bad_method_setting_keeps_the_hosts_key_check():
    """The routes stay behind the function key; each request then names the bad setting."""
    assert function_key_accepted(_settings(EnrollmentAuthorization="Telepathy")) is True
    assert function_key_accepted(_settings(EnrollmentAuthorization="DeviceKey")) is False


def test_a_token_is_spent_once(app_env):
    store = open_data_store(_settings())
    now = dt.datetime.now(dt.UTC)
    grant = Grant("Token", token_id="jti-1", token_expires=int(now.timestamp()) + 60)
    spend_token(grant, store, "dev-t", now)
    with pytest.raises(Forbidden) as refused:
        spend_token(grant, store, "dev-t", now)
    assert refused.value.code == "token_used"
    spend_token(Grant("FunctionKey"), store, "dev-t", now)  # no token: nothing to spend
    spend_token(Grant("FunctionKey"), store, "dev-t", now)


def test_basic_credentials_are_strict_base64():
    """A decoder that skipped stray characters would accept a header the client never meant to send."""
    group_key = base64.b64encode(b"policy-rules-group-key-0123456789").decode()
    settings = Settings({"EnrollmentGroupKeys": group_key})
    password = dps.derive_device_key(group_key, "dev-basic")
    good = base64.b64encode(f"dev-basic:{password}".encode()).decode()
    request = EnrollmentRequest("dev-basic", None, b"", f"Basic {good}")  # type: ignore[arg-type]
    assert device_key.authorize(request, settings) == Grant("DeviceKey")
    stray = replace(request, authorization=f"Basic {good[:8]}*{good[8:]}")
    with pytest.raises(Unauthorized, match="not base64 user:password"):
        device_key.authorize(stray, settings)


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_basic_credentials_must_be_this_devices_key():
    group_key = base64.b64encode(b"policy-rules-group-key-0123456789").decode()
    settings = Settings({"EnrollmentGroupKeys": group_key})
    mine, theirs = dps.derive_device_key(group_key, "dev-basic"), dps.derive_device_key(group_key, "dev-other")
    request = EnrollmentRequest("dev-basic", None, b"", _basic("dev-basic", mine))  # type: ignore[arg-type]
    assert device_key.authorize(request, settings) == Grant("DeviceKey")
    for header, message in [
        (_basic("dev-basic", "not-the-key"), "not the device key of this user"),
        (_basic("dev-basic", theirs), "not the device key of this user"),  # another device's key
        ("Basic " + base64.b64encode(b"no-colon").decode(), "not base64 user:password"),
    ]:
        with pytest.raises(Unauthorized, match=message):
            device_key.authorize(replace(request, authorization=header), settings)
    with pytest.raises(Forbidden, match="not the CSR's registration ID"):
        device_key.authorize(replace(request, authorization=_basic("dev-other", theirs)), settings)


def test_sas_tokens_and_other_schemes():
    group_key = base64.b64encode(b"policy-rules-group-key-0123456789").decode()
    settings = Settings({"EnrollmentGroupKeys": group_key})
    token = dps.sas_token(dps.derive_device_key(group_key, "dev-sas"), "dev-sas", int(time.time()) + 300)
    request = EnrollmentRequest("dev-sas", None, b"", token)  # type: ignore[arg-type]
    assert device_key.authorize(request, settings) == Grant("DeviceKey")
    assert device_key.authorize(replace(request, authorization="Bearer abc"), settings) is None  # not ours
    assert device_key.authorize(replace(request, authorization=None), settings) is None


def test_sas_token_refusals():
    group_key = base64.b64encode(b"policy-rules-group-key-0123456789").decode()
    other_group = base64.b64encode(b"another-group-key-0123456789abcd").decode()
    settings = Settings({"EnrollmentGroupKeys": group_key})
    device = dps.derive_device_key(group_key, "dev-sas")
    soon = int(time.time()) + 300
    request = EnrollmentRequest("dev-sas", None, b"", None)  # type: ignore[arg-type]
    good = dps.sas_token(device, "dev-sas", soon)
    cases = [
        (good.replace("skn=registration", "skn=owner"), Unauthorized, "skn=registration and sr=registrations"),
        (good.replace("sr=registrations%2F", "sr=devices%2F"), Unauthorized, "skn=registration and sr=registrations"),
        (dps.sas_token(device, "dev-sas", int(time.time()) - 1), Unauthorized, "has expired"),
        (dps.sas_token(device, "dev-sas", int(time.time()) + 7200), Unauthorized, "more than 3600 s ahead"),
        (
            dps.sas_token(dps.derive_device_key(other_group, "dev-sas"), "dev-sas", soon),
            Unauthorized,
            "does not verify",
        ),
        (dps.sas_token(dps.derive_device_key(group_key, "dev-x"), "dev-x", soon), Forbidden, "another registration ID"),
    ]
    for header, error, message in cases:
        with pytest.raises(error, match=message):
            device_key.authorize(replace(request, authorization=header), settings)
