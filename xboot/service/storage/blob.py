"""DataStore Blob: one blob per object in `DataBlobContainer` (default `xboot-data`).

Shared by every instance. Auth: `DataBlobConnectionString` or `DataBlobAccountUrl`
(managed identity), falling back to the CA's `BlobConnectionString` / `BlobAccountUrl`,
then to the Functions runtime's own storage: the `AzureWebJobsStorage` connection string, or
the identity-based `AzureWebJobsStorage__blobServiceUri`.
"""

from __future__ import annotations

import threading
from typing import Any, NoReturn

from azure.core.exceptions import AzureError, ResourceExistsError, ResourceNotFoundError, ServiceRequestError

from xboot.service.azure.blob import blob_service_client
from xboot.service.azure.sdk import raise_backend_error
from xboot.service.settings import Settings
from xboot.service.storage import Page, check_key

DEFAULT_CONTAINER = "xboot-data"
_ROLE = "the Storage Blob Data Contributor role"


class BlobStore:
    def __init__(self, container: Any, setting: str) -> None:
        self._container = container
        self._setting = setting
        self._ready = False
        self._lock = threading.Lock()

    def _client(self) -> Any:
        if not self._ready:
            with self._lock:
                if not self._ready:
                    try:
                        self._container.create_container()
                    except ResourceExistsError:
                        pass
                    except AzureError as error:
                        raise_backend_error(error, "Blob storage", self._setting, "the data container", _ROLE)
                    self._ready = True
        return self._container

    def _fail(self, error: AzureError, key: str) -> NoReturn:
        raise_backend_error(error, "Blob storage", self._setting, f"object {key}", _ROLE)

    def create(self, key: str, data: bytes, *, flush: bool = True) -> bool:
        """Put Blob with If-None-Match: *, so the service decides atomically who wrote first.

        Every Put Blob is durable when it succeeds, whatever `flush` says.
        A retry after a lost response (the write may have landed) meets our own blob: if it
        holds exactly our bytes, the write was this call's.
        """
        maybe_written: list[bool] = []

        def on_retry(**attempt: Any) -> None:
            maybe_written.append(not isinstance(attempt.get("error"), ServiceRequestError))

        try:
            self._client().upload_blob(check_key(key), data, overwrite=False, retry_hook=on_retry)
            return True
        except ResourceExistsError:
            return any(maybe_written) and self.read(key) == data
        except AzureError as error:
            self._fail(error, key)

    def replace(self, key: str, data: bytes) -> None:
        try:
            self._client().upload_blob(check_key(key), data, overwrite=True)
        except AzureError as error:
            self._fail(error, key)

    def read(self, key: str) -> bytes | None:
        try:
            data: bytes = self._client().download_blob(check_key(key)).readall()
            return data
        except ResourceNotFoundError:
            return None
        except AzureError as error:
            self._fail(error, key)

    def delete(self, key: str) -> None:
        try:
            self._client().delete_blob(check_key(key))
        except ResourceNotFoundError:
            pass
        except AzureError as error:
            self._fail(error, key)

    def folder_version(self, prefix: str) -> int | None:
        return None  # no cheap change token: instances see each other's changes within the cache TTL

    def list(self, prefix: str) -> list[str]:
        try:
            return list(self._client().list_blob_names(name_starts_with=prefix))
        except AzureError as error:
            self._fail(error, prefix)

    def page(self, prefix: str, limit: int, marker: str | None = None) -> Page:
        """One List Blobs call: the service's NextMarker resumes where this page ended (its opaque form
        is the service's; Azurite's is the last name)."""
        try:
            pages = self._client().list_blob_names(name_starts_with=prefix, results_per_page=limit)
            pager = pages.by_page(continuation_token=marker)
            keys = list(next(pager, []))
            return Page(keys, pager.continuation_token or None)
        except AzureError as error:
            self._fail(error, prefix)


def open_store(settings: Settings) -> BlobStore:
    if settings.raw("DataBlobConnectionString") or settings.get("DataBlobAccountUrl"):
        names = ("DataBlobConnectionString", "DataBlobAccountUrl")
    elif settings.raw("BlobConnectionString") or settings.get("BlobAccountUrl"):
        names = ("BlobConnectionString", "BlobAccountUrl")
    else:
        names = ("AzureWebJobsStorage", "AzureWebJobsStorage__blobServiceUri")
    service = blob_service_client(settings, *names, "for DataStore Blob")
    container = settings.get("DataBlobContainer", DEFAULT_CONTAINER) or DEFAULT_CONTAINER
    return BlobStore(service.get_container_client(container), names[0])
