"""Enrollment tokens checked in process: every refusal of `EnrollmentTokenKeys` and of a bearer token.

test_enrollment_authorization.py mints tokens with `xboot token` and sends them to `xboot serve`; here
each claim and each key format is met alone.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import replace

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.x509.oid import NameOID

from xboot.errors import ConfigurationError, Forbidden, Unauthorized
from xboot.service.enrollment.authorization import EnrollmentRequest, Grant
from xboot.service.enrollment.authorization import token as token_method
from xboot.service.settings import Settings

KEY = ec.generate_private_key(ec.SECP256R1())
OTHER = ec.generate_private_key(ec.SECP256R1())
PEM = KEY.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _jwk(key: ec.EllipticCurvePrivateKey, kid: str) -> dict:
    document = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    return {**document, "kid": kid}


def _token(key=KEY, kid: str | None = None, **changes) -> str:
    claims = {"sub": "dev-token", "aud": "xboot", "exp": int(time.time()) + 600, "jti": "jti-1", **changes}
    claims = {name: value for name, value in claims.items() if value is not None}
    return jwt.encode(claims, key, algorithm="ES256", headers={"kid": kid} if kid else None)


def _authorize(token: str, keys: str | bytes = PEM) -> Grant | None:
    text = keys.decode() if isinstance(keys, bytes) else keys
    request = EnrollmentRequest("dev-token", None, b"", f"Bearer {token}")  # type: ignore[arg-type]
    return token_method.authorize(request, Settings({"EnrollmentTokenKeys": text}))


def _refused(token: str, match: str, keys: str | bytes = PEM) -> None:
    with pytest.raises(Unauthorized, match=match) as caught:
        _authorize(token, keys)
    assert caught.value.code == "invalid_credential"


def test_a_good_token_grants_its_jti_and_expiry():
    token = _token()
    expires = jwt.decode(token, options={"verify_signature": False})["exp"]
    assert _authorize(token) == Grant("Token", token_id="jti-1", token_expires=expires)


# -- keys -------------------------------------------------------------------------------------------------------


def test_jwks_keys_are_chosen_by_kid():
    jwks = json.dumps({"keys": [_jwk(OTHER, "k2"), _jwk(KEY, "k1")]})
    assert _authorize(_token(kid="k1"), jwks) is not None  # k2 listed first: the kid picks k1
    assert _authorize(_token(), jwks) is not None  # no kid: every key is tried
    _refused(_token(kid="k3"), "kid names no key", jwks)
    _refused(_token(key=OTHER, kid="k1"), "does not verify", jwks)


def test_pem_keys_have_no_kid_and_match_any():
    assert _authorize(_token(kid="anything")) is not None


def test_a_certificate_may_carry_the_key():
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "token signer")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(KEY.public_key())
        .serial_number(3)
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(KEY, hashes.SHA256())
    )
    assert _authorize(_token(), certificate.public_bytes(serialization.Encoding.PEM)) is not None


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ("", "is required when EnrollmentAuthorization has Token"),
        ("{not json", "not a JWKS document"),
        ('{"keys": [{"kty": "nope"}]}', "not a JWKS document"),
        ("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "a PEM block is not a public key"),
        (
            x25519.X25519PrivateKey.generate()
            .public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode(),
            "holds no EC, RSA or Ed25519 public key",
        ),
    ],
    ids=["missing", "not-json", "bad-jwk", "bad-pem", "x25519"],
)
def test_key_settings_that_cannot_work_are_configuration_errors(keys, message):
    with pytest.raises(ConfigurationError, match=message):
        _authorize(_token(), keys)


# -- the token --------------------------------------------------------------------------------------------------


def test_tokens_that_are_not_jws_or_too_long_are_refused():
    _refused("not-a-jwt", "not a JWS compact JWT")
    _refused("", "empty or longer than 8192")
    _refused("e" * 8193, "empty or longer than 8192")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"exp": int(time.time()) - 3600}, "has expired"),
        ({"aud": "someone-else"}, "aud is not 'xboot'"),
        ({"jti": None}, "lacks the jti claim"),
        ({"exp": int(time.time()) + 3 * 86400}, "more than 24 hours ahead"),
        ({"jti": ""}, "jti must be a string of 1-256"),
        ({"jti": "j" * 257}, "jti must be a string of 1-256"),
        ({"jti": 7}, "InvalidJTIError"),  # PyJWT refuses it first
    ],
)
def test_claims_that_are_refused(changes, message):
    _refused(_token(**changes), message)


def test_a_jti_of_256_characters_is_accepted():
    assert _authorize(_token(jti="j" * 256)).token_id == "j" * 256


def _csr_request(token: str) -> tuple[EnrollmentRequest, str]:
    device = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dev-token")]))
        .sign(device, hashes.SHA256())
    )
    der = csr.public_bytes(serialization.Encoding.DER)
    return EnrollmentRequest("dev-token", csr, der, f"Bearer {token}"), token_method.spki_sha256(csr)


def test_other_schemes_are_not_tokens():
    request = EnrollmentRequest("dev-token", None, b"", "Basic abc")  # type: ignore[arg-type]
    assert token_method.authorize(request, Settings({"EnrollmentTokenKeys": PEM.decode()})) is None


def test_a_token_for_another_registration_id_is_forbidden():
    with pytest.raises(Forbidden, match="another registration ID"):
        _authorize(_token(sub="dev-other"))


def test_a_token_bound_to_a_key_admits_that_key_only():
    settings = Settings({"EnrollmentTokenKeys": PEM.decode()})
    request, digest = _csr_request("")
    for bound, accepted in [(digest, True), (digest.upper(), True), ("ab" * 32, False), (5, False)]:
        bound_request = replace(request, authorization=f"Bearer {_token(sha=bound)}")
        if accepted:
            assert token_method.authorize(bound_request, settings) is not None
        else:
            with pytest.raises(Forbidden, match="bound"):
                token_method.authorize(bound_request, settings)
