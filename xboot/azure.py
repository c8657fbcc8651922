"""What every Azure SDK client here shares: one credential, bounded retries, and error mapping.

Imported only by the modules of Azure-backed locations and stores, so a File deployment
never loads azure-core or azure-identity.
"""

from __future__ import annotations

import threading
from typing import Any, NoReturn

from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)

from xboot.errors import BackendUnavailable, ConfigurationError

# Bounded: a device waits at most a few seconds before it gets a 503 with Retry-After.
CLIENT_OPTIONS: dict[str, Any] = {
    "retry_total": 3,
    "retry_backoff_factor": 0.5,
    "retry_backoff_max": 4,
    "connection_timeout": 5,
    "read_timeout": 15,
}

_credential_lock = threading.Lock()
_credential: Any = None


def credential() -> Any:
    """One DefaultAzureCredential per process: it caches tokens, so it must be reused."""
    global _credential
    with _credential_lock:
        if _credential is None:
            from azure.identity import DefaultAzureCredential

            _credential = DefaultAzureCredential()
        return _credential


def client_options() -> dict[str, Any]:
    """Keyword arguments for every SDK client (tests add a transport here)."""
    return dict(CLIENT_OPTIONS)


def _retry_after(error: HttpResponseError) -> int:
    response = getattr(error, "response", None)
    header = response.headers.get("Retry-After") if response is not None else None
    try:
        return max(1, min(int(header), 300)) if header else 5
    except ValueError:
        return 5


def raise_backend_error(error: Exception, service: str, setting: str, what: str) -> NoReturn:
    """Map an SDK error to what the device and the operator should see: 503 if transient, else a config error."""
    if isinstance(error, ResourceNotFoundError):
        raise ConfigurationError(f"setting {setting}: {what} does not exist in {service}") from None
    if isinstance(error, ClientAuthenticationError):
        raise ConfigurationError(
            f"{service}: authentication failed; check the managed identity or credential for {setting}"
        ) from None
    if isinstance(error, HttpResponseError) and error.status_code in (401, 403):
        raise ConfigurationError(
            f"{service}: access to {what} (setting {setting}) was denied; grant the app's identity a reader role"
        ) from None
    if isinstance(error, HttpResponseError) and (error.status_code == 429 or (error.status_code or 0) >= 500):
        raise BackendUnavailable(
            f"{service} is busy or failing; retry later", retry_after=_retry_after(error)
        ) from None
    if isinstance(error, ServiceRequestError | ServiceResponseError):
        raise BackendUnavailable(f"{service} is unreachable; retry later") from None
    if isinstance(error, HttpResponseError):
        raise ConfigurationError(f"{service}: request for {what} (setting {setting}) failed") from None
    raise error
