"""Issuer Custom: a Python function of yours signs (AWS IoT's certificate-provider style).

`IssuerFunction` names it as `module:function`, imported from the app folder (or any installed
package). It is called as `function(csr, registration_id, settings)` with the checked
`cryptography` CSR, the registration ID and the app settings (`xboot.service.settings.Settings`), and
returns the certificate chain, leaf first: a list of `x509.Certificate`, or PEM text or bytes. Raise
`xboot.errors.BackendUnavailable` for "try again later" (503 with Retry-After); any other exception
is a 502. It runs in a worker thread bounded by `IssuerTimeoutSeconds` (and the request's deadline).
The CA chain is `IssuerCaCertificates`.
"""

from __future__ import annotations

import concurrent.futures
import importlib
import logging
from collections.abc import Callable, Sequence

from cryptography import x509

from xboot.errors import BackendUnavailable, BadGateway, ConfigurationError, XbootError
from xboot.service import deadline
from xboot.service.ca.issuers import Order
from xboot.service.ca.issuers.transport import TIMEOUT
from xboot.service.ca.issuers.upstream import Upstream
from xboot.service.settings import Settings

log = logging.getLogger(__name__)

NAME = "Custom"
FUNCTION = "IssuerFunction"
WORKERS = 8

Hook = Callable[[x509.CertificateSigningRequest, str, Settings], object]
_pool = concurrent.futures.ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="xboot-issuer")


def load_hook(settings: Settings) -> Hook:
    reference = settings.require(FUNCTION, "for Issuer Custom (module:function)")
    module_name, _, function_name = reference.partition(":")
    if not module_name or not function_name.isidentifier():
        raise ConfigurationError(f"setting {FUNCTION} must be module:function")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise ConfigurationError(f"setting {FUNCTION}: module {module_name} cannot be imported") from None
    hook = getattr(module, function_name, None)
    if not callable(hook):
        raise ConfigurationError(f"setting {FUNCTION}: {module_name} has no function {function_name}")
    return hook


def _certificates(value: object) -> Sequence[x509.Certificate]:
    if isinstance(value, str):
        value = value.encode()
    if isinstance(value, bytes):
        try:
            return x509.load_pem_x509_certificates(value)
        except ValueError:
            pass
    elif isinstance(value, (list, tuple)) and all(isinstance(c, x509.Certificate) for c in value):
        return value
    raise BadGateway(
        "the upstream CA (Issuer Custom) returned something other than PEM or a list of certificates",
        code="upstream_invalid_answer",
    )


def sign(order: Order, settings: Settings) -> Sequence[x509.Certificate]:
    hook = load_hook(settings)
    timeout = deadline.cap(settings.integer(TIMEOUT, 5, minimum=1, maximum=120))
    future = _pool.submit(hook, order.csr, order.registration_id, settings)
    try:
        value = future.result(timeout=timeout)
    except concurrent.futures.TimeoutError:
        future.cancel()
        raise BackendUnavailable(
            "the upstream CA (Issuer Custom) did not answer in time", code="upstream_unavailable", retry_after=10
        ) from None
    except XbootError:
        raise
    except Exception as error:  # noqa: BLE001 - the hook is the customer's code: its failure is a 502
        log.error("Issuer Custom: %s failed: %s", settings.get(FUNCTION), type(error).__name__)
        raise BadGateway("the upstream CA (Issuer Custom) failed; nothing was issued", code="upstream_failed") from None
    return _certificates(value)


ISSUER = Upstream(NAME, (FUNCTION, TIMEOUT), sign)
