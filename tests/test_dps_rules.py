"""Azure DPS device keys and SAS tokens: the parser's and the key decoder's every refusal, at the bounds."""

from __future__ import annotations

import base64

import pytest

from xboot import dps

GROUP = base64.b64encode(b"g" * 16).decode()


def test_group_keys_are_strict_base64_of_at_least_16_bytes():
    assert dps.derive_device_key(GROUP, "dev-1")
    with pytest.raises(ValueError, match="shorter than 16 bytes"):
        dps.derive_device_key(base64.b64encode(b"g" * 15).decode(), "dev-1")
    with pytest.raises(ValueError, match="not base64"):
        dps.derive_device_key(GROUP[:4] + "*" + GROUP[4:], "dev-1")


def _header(fields: str) -> str:
    return f"{dps.SAS_SCHEME} {fields}"


def test_a_well_formed_token_parses():
    token = dps.parse_sas_token(dps.sas_token(dps.derive_device_key(GROUP, "dev-1"), "dev-1", 1_900_000_000))
    assert token.registration_id == "dev-1" and token.expiry == 1_900_000_000 and token.key_name == "registration"
    assert dps.parse_sas_token(_header("sr=registrations%2Fd&sig=x&se=999999999999")).expiry == 999_999_999_999


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ("sr=&sr=registrations%2Fd&sig=x&se=1", "repeats sr"),  # a blank first value still counts
        ("sr=registrations%2Fd&junk&sig=x&se=1", "bad query field"),  # a field without '=': not a token
        ("sr=registrations%2Fd&sig=x&se=1000000000000", "se is not a Unix time"),  # 13 digits
        ("sr=registrations%2Fd&sig=x&se=12a", "se is not a Unix time"),
        ("sr=registrations%2Fd&sig=&se=1", "lacks sig"),
    ],
)
def test_malformed_tokens_are_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        dps.parse_sas_token(_header(fields))


def test_a_signature_with_a_stray_character_never_matches():
    device_key = dps.derive_device_key(GROUP, "dev-1")
    token = dps.parse_sas_token(dps.sas_token(device_key, "dev-1", 1_900_000_000))
    assert dps.signature_matches(token, device_key)
    stray = dps.SasToken(token.resource, token.signature[:5] + "*" + token.signature[5:], token.expiry, "")
    assert not dps.signature_matches(stray, device_key)
