"""Who may enroll: `EnrollmentAuthorization` lists the accepted methods, and a request needs one that accepts it.

One module per method beside this file, each with `authorize(request, settings) -> Grant | None`:
None when the request carries no credential for that method, a `Grant` when the credential proves the
registration ID, and `Unauthorized` (401) or `Forbidden` (403) when it carries one that fails. This
registry is the only place that knows them all.

Renewal proved by the device's current xboot certificate is accepted whatever the list says: a device
that holds a valid certificate of ours for its ID has already proved it, once.

Unset, the list is `FunctionKey`: XBoot's behaviour, where anyone holding the function key (in every
firmware image) can enroll any allowed registration ID. It is kept so deployments carry over, and said
loudly by `xboot serve` and the health output.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509

from xboot.errors import ConfigurationError, Forbidden, Unauthorized
from xboot.service.settings import Settings
from xboot.service.storage import ObjectStore

SETTING = "EnrollmentAuthorization"
DEFAULT = "FunctionKey"


@dataclass(frozen=True)
class Attestation:
    """Certificates the device holds (signer first, then intermediates) and its signature over the CSR's DER.

    `signature` is None when a TLS handshake proved possession of the signer's key (EST's client certificate).
    """

    certificates: tuple[x509.Certificate, ...]
    signature: bytes | None


@dataclass(frozen=True)
class EnrollmentRequest:
    registration_id: str
    csr: x509.CertificateSigningRequest
    csr_der: bytes  # the bytes the device signed, as received
    authorization: str | None = None  # the Authorization header
    attestation: Attestation | None = None
    function_key_checked: bool = False  # the route requires the function key and the host checked it


@dataclass(frozen=True)
class Grant:
    """Why an enrollment may go ahead."""

    method: str
    renewal_of: x509.Certificate | None = None  # the device's current certificate, when it proved a renewal
    token_id: str | None = None  # a single-use token's jti, consumed just before the certificate is issued
    token_expires: int | None = None  # Unix seconds, for the record of used tokens


@dataclass(frozen=True)
class Method:
    name: str
    module: str  # the module beside this file
    challenge: str | None = None  # the WWW-Authenticate challenge EST clients answer (Basic, Bearer)

    def authorize(self, request: EnrollmentRequest, settings: Settings) -> Grant | None:
        check: Callable[[EnrollmentRequest, Settings], Grant | None] = importlib.import_module(
            f"{__name__}.{self.module}"
        ).authorize
        return check(request, settings)


REGISTRY: dict[str, Method] = {
    method.name.lower(): method
    for method in (
        Method("FunctionKey", "function_key"),
        Method("DeviceKey", "device_key", 'Basic realm="xboot"'),
        Method("Token", "token", 'Bearer realm="xboot"'),
        Method("Certificate", "certificate"),
    )
}
CERTIFICATE = REGISTRY["certificate"]


USED_TOKENS = "enrollment-tokens/"


def used_token_key(jti: str) -> str:
    """Where a spent jti is recorded: its digest, so any jti text maps to a valid storage key."""
    return f"{USED_TOKENS}{hashlib.sha256(jti.encode()).hexdigest()}.json"


def spend_token(grant: Grant, store: ObjectStore, registration_id: str, now: dt.datetime) -> None:
    """A single-use token is spent by an atomic create: of two concurrent uses exactly one gets here first."""
    if grant.token_id is None:
        return
    record = {"registrationId": registration_id, "usedAt": now.isoformat(), "expires": grant.token_expires}
    if not store.create(used_token_key(grant.token_id), json.dumps(record).encode()):
        raise Forbidden("this enrollment token has been used already; tokens are single-use", code="token_used")


def accepted_methods(settings: Settings) -> tuple[Method, ...]:
    value = settings.get(SETTING) or DEFAULT
    methods = []
    for name in value.split(","):
        method = REGISTRY.get(name.strip().lower())
        if method is None:
            names = ", ".join(m.name for m in REGISTRY.values())
            raise ConfigurationError(f"setting {SETTING}: unknown method; use a comma-separated list of {names}")
        if method not in methods:
            methods.append(method)
    return tuple(methods)


def function_key_accepted(settings: Settings) -> bool:
    """Whether the function key alone may enroll: then the enrollment routes keep the host's key check."""
    try:
        return REGISTRY["functionkey"] in accepted_methods(settings)
    except ConfigurationError:
        return True  # the host keeps checking the key; every request then names the bad setting


def challenges(methods: tuple[Method, ...]) -> tuple[str, ...]:
    return tuple(m.challenge for m in methods if m.challenge is not None)


def authorize(request: EnrollmentRequest, settings: Settings) -> Grant:
    """The first accepted method's grant; otherwise the most telling refusal (403 over 401)."""
    methods = accepted_methods(settings)
    # Certificate first, listed or not: a renewal must be recognised as one (it lifts the identity lock)
    # even where another method would also let the request through.
    candidates = (CERTIFICATE, *(m for m in methods if m is not CERTIFICATE))
    failures: list[Unauthorized | Forbidden] = []
    for method in candidates:
        try:
            grant = method.authorize(request, settings)
        except (Unauthorized, Forbidden) as failure:
            failures.append(failure)
            continue
        if grant is not None and (method in methods or grant.renewal_of is not None):
            return grant
    forbidden = [f for f in failures if isinstance(f, Forbidden)]
    if forbidden:
        raise forbidden[0]
    if failures:
        raise Unauthorized(failures[0].message, code=failures[0].code, challenges=challenges(methods))
    names = ", ".join(m.name for m in methods)
    raise Unauthorized(
        f"enrollment needs a credential: this service accepts {names} (see the README's enrollment authorization)",
        code="authorization_required",
        challenges=challenges(methods),
    )
