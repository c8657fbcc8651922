"""BlobServiceClient from settings: connection string, or account URL plus managed identity."""

from __future__ import annotations

from typing import Any

from azure.storage.blob import BlobServiceClient, ExponentialRetry

from xboot.errors import ConfigurationError
from xboot.service import deadline
from xboot.service.azure import sdk
from xboot.service.settings import Settings


class StorageRetry(ExponentialRetry):
    """The storage SDK's retry policy with xboot's bounded backoff (its default waits 15 s, 18 s, 24 s)."""

    def __init__(self) -> None:
        super().__init__(retry_total=sdk.RETRY_TOTAL, retry_to_secondary=False)

    def get_backoff_time(self, settings: dict[str, Any]) -> float:
        return deadline.cap(sdk.backoff_seconds(settings["count"]))

    def increment(self, settings: dict[str, Any], *args: Any, **kwargs: Any) -> bool:
        """No retry once the request's deadline has passed: the device gets its 503 now."""
        return bool(super().increment(settings, *args, **kwargs)) and not deadline.passed()


def blob_service_client(settings: Settings, connection_setting: str, url_setting: str, purpose: str) -> Any:
    """A client per distinct endpoint, kept for the process: its connection pool is worth reusing.

    A connection string carries its own key or SAS; an account URL is used with the app's
    managed identity (DefaultAzureCredential), which needs a Storage Blob Data role.
    """
    connection_string = settings.raw(connection_setting)
    account_url = settings.get(url_setting)
    if connection_string:
        key = ("connection", connection_string.strip())
    elif account_url:
        if not account_url.lower().startswith("https://"):
            raise ConfigurationError(f"setting {url_setting} must start with https:// (a token needs TLS)")
        key = ("url", account_url)
    else:
        raise ConfigurationError(f"setting {connection_setting} or {url_setting} is required {purpose}")

    def create() -> BlobServiceClient:
        options = {**sdk.client_options(StorageRetry()), "_additional_pipeline_policies": [sdk.DeadlinePolicy()]}
        try:
            if key[0] == "connection":
                return BlobServiceClient.from_connection_string(key[1], **options)
            return BlobServiceClient(key[1], credential=sdk.credential(), **options)
        except ValueError:
            setting = connection_setting if key[0] == "connection" else url_setting
            raise ConfigurationError(f"setting {setting}: not a valid Blob storage endpoint") from None

    return sdk.shared_client(("blob", *key), create)
