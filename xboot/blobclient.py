"""BlobServiceClient from settings: connection string, or account URL plus managed identity."""

from __future__ import annotations

import threading
from typing import Any

from xboot.azure import client_options, credential
from xboot.errors import ConfigurationError
from xboot.settings import Settings

_lock = threading.Lock()
_clients: dict[tuple[str, str], Any] = {}


def blob_service_client(settings: Settings, connection_setting: str, url_setting: str, purpose: str) -> Any:
    """A client per distinct endpoint, kept for the process: its connection pool is worth reusing."""
    from azure.storage.blob import BlobServiceClient

    connection_string = settings.raw(connection_setting)
    account_url = settings.get(url_setting)
    if connection_string:
        key = ("connection", connection_string)
    elif account_url:
        key = ("url", account_url)
    else:
        raise ConfigurationError(f"setting {connection_setting} or {url_setting} is required {purpose}")
    with _lock:
        client = _clients.get(key)
        if client is None:
            try:
                if key[0] == "connection":
                    client = BlobServiceClient.from_connection_string(key[1], **client_options())
                else:
                    client = BlobServiceClient(key[1], credential=credential(), **client_options())
            except ValueError:
                setting = connection_setting if key[0] == "connection" else url_setting
                raise ConfigurationError(f"setting {setting}: not a valid Blob storage endpoint") from None
            _clients[key] = client
        return client
