"""Token: one-time enrollment tokens, `Authorization: Bearer <JWT>`, minted offline by an operator.

Verified with PyJWT against the public keys in `EnrollmentTokenKeys` (PEM public keys or certificates,
or a JWKS document); ES256/ES384, RS256/PS256 and EdDSA. Claims: `sub` = registration ID, `aud` =
`EnrollmentTokenAudience` (default `xboot`), `exp` at most 24 h ahead (5 min skew), `jti` used once
(recorded atomically in the data store just before the certificate is issued), and optionally `sha` =
hex SHA-256 of the CSR's DER SubjectPublicKeyInfo, which binds the token to one device key.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from xboot.errors import ConfigurationError, Forbidden, Unauthorized
from xboot.pki import pem_blocks
from xboot.service.enrollment.authorization import EnrollmentRequest, Grant
from xboot.service.settings import Settings

KEYS = "EnrollmentTokenKeys"
AUDIENCE = "EnrollmentTokenAudience"
MAX_LIFETIME = 24 * 3600
LEEWAY = 300
MAX_TOKEN_CHARS = 8192
# The algorithms each key type may verify: the token's header never chooses the key type.
_ALGORITHMS: dict[type, tuple[str, ...]] = {
    ec.EllipticCurvePublicKey: ("ES256", "ES384"),
    rsa.RSAPublicKey: ("RS256", "PS256"),
    ed25519.Ed25519PublicKey: ("EdDSA",),
}


def _algorithms(key: Any) -> tuple[str, ...]:
    return next((names for kind, names in _ALGORITHMS.items() if isinstance(key, kind)), ())


@functools.lru_cache(maxsize=4)
def verification_keys(text: str) -> tuple[tuple[str | None, Any], ...]:
    """(kid, public key) pairs from PEM public keys/certificates or a JWKS document; cached per setting value."""
    stripped = text.strip()
    keys: list[tuple[str | None, Any]] = []
    if stripped.startswith("{"):
        try:
            document = json.loads(stripped)
            jwks = jwt.PyJWKSet.from_dict(document)
        except (ValueError, jwt.PyJWKSetError):
            raise ConfigurationError(f"setting {KEYS} is not a JWKS document with usable keys") from None
        keys = [(k.key_id, k.key) for k in jwks.keys]
    else:
        for label, pem in pem_blocks(stripped.encode()):
            try:
                if label == "CERTIFICATE":
                    keys.append((None, x509.load_pem_x509_certificate(pem).public_key()))
                else:
                    keys.append((None, serialization.load_pem_public_key(pem)))
            except ValueError:
                raise ConfigurationError(f"setting {KEYS}: a PEM block is not a public key or certificate") from None
    keys = [(kid, key) for kid, key in keys if _algorithms(key)]
    if not keys:
        raise ConfigurationError(f"setting {KEYS} holds no EC, RSA or Ed25519 public key")
    return tuple(keys)


def _invalid(message: str) -> Unauthorized:
    return Unauthorized(message, code="invalid_credential")


def spki_sha256(csr: x509.CertificateSigningRequest) -> str:
    der = csr.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def _claims(token: str, settings: Settings) -> dict[str, Any]:
    text = settings.get(KEYS)
    if not text:
        raise ConfigurationError(f"setting {KEYS} is required when EnrollmentAuthorization has Token")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError:
        raise _invalid("the bearer token is not a JWS compact JWT") from None
    kid = header.get("kid")
    candidates = [(k, key) for k, key in verification_keys(text) if kid is None or k is None or k == kid]
    if not candidates:
        raise _invalid("the token's kid names no key in EnrollmentTokenKeys")
    audience = settings.get(AUDIENCE) or "xboot"
    failure = "the token's signature does not verify with any key in EnrollmentTokenKeys"
    for _, key in candidates:
        try:
            return jwt.decode(
                token,
                key,
                algorithms=list(_algorithms(key)),
                audience=audience,
                leeway=LEEWAY,
                options={"require": ["exp", "sub", "aud", "jti"]},
            )
        except jwt.InvalidSignatureError:
            continue
        except jwt.InvalidAlgorithmError:
            continue  # an ES256 token against an RSA key: try the next key
        except jwt.ExpiredSignatureError:
            raise _invalid("the token has expired") from None
        except jwt.InvalidAudienceError:
            raise _invalid(f"the token's aud is not {audience!r} (EnrollmentTokenAudience)") from None
        except jwt.MissingRequiredClaimError as error:
            raise _invalid(f"the token lacks the {error.claim} claim") from None
        except jwt.InvalidTokenError as error:
            failure = f"the token is invalid: {type(error).__name__}"
    raise _invalid(failure)


def authorize(request: EnrollmentRequest, settings: Settings) -> Grant | None:
    header = (request.authorization or "").strip()
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    token = token.strip()
    if not token or len(token) > MAX_TOKEN_CHARS:
        raise _invalid(f"the bearer token is empty or longer than {MAX_TOKEN_CHARS} characters")
    claims = _claims(token, settings)
    expires, jti, subject = claims["exp"], claims["jti"], claims["sub"]
    if not isinstance(expires, int) or expires > time.time() + MAX_LIFETIME + LEEWAY:
        raise _invalid("the token's exp is more than 24 hours ahead; mint tokens with a shorter lifetime")
    if not isinstance(jti, str) or not 1 <= len(jti) <= 256:
        raise _invalid("the token's jti must be a string of 1-256 characters")
    if subject != request.registration_id:
        raise Forbidden("the token is for another registration ID (sub)", code="credential_mismatch")
    bound = claims.get("sha")
    if bound is not None and (not isinstance(bound, str) or bound.lower() != spki_sha256(request.csr)):
        raise Forbidden("the token is bound (sha) to another device key than the CSR's", code="credential_mismatch")
    return Grant("Token", token_id=jti, token_expires=expires)
