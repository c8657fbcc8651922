"""Location 2 / Blob: the CA files as blobs in a container.

Auth: `BlobConnectionString`, or `BlobAccountUrl` with the app's managed identity
(DefaultAzureCredential), which needs no secret in the settings.
"""

from __future__ import annotations

from typing import Any

from azure.core.exceptions import AzureError, ResourceNotFoundError

from xboot.errors import ConfigurationError
from xboot.service.azure.blob import blob_service_client
from xboot.service.azure.sdk import raise_backend_error
from xboot.service.ca.material import CaMaterial, material_from_bytes
from xboot.service.settings import Settings

_ROLE = "the Storage Blob Data Reader role on the container"


def _download(container: Any, settings: Settings, name: str) -> bytes | None:
    blob = settings.get(name)
    if blob is None:
        return None
    try:
        return container.download_blob(blob).readall()
    except ResourceNotFoundError as error:
        if getattr(error, "error_code", None) == "ContainerNotFound":
            raise ConfigurationError(
                f"setting BlobContainerName: container {container.container_name} does not exist"
            ) from None
        raise ConfigurationError(
            f"setting {name}: blob {blob} does not exist in container {container.container_name}"
        ) from None
    except AzureError as error:
        raise_backend_error(error, "Blob storage", name, f"blob {blob}", _ROLE)


def load(settings: Settings) -> CaMaterial:
    service = blob_service_client(settings, "BlobConnectionString", "BlobAccountUrl", "for Location Blob")
    container = service.get_container_client(
        settings.require("BlobContainerName", "for Location Blob (the container holding the CA files)")
    )
    settings.require("CertificateFile", "for Location Blob (blob name of the CA certificate)")
    certificate = _download(container, settings, "CertificateFile")
    assert certificate is not None
    return material_from_bytes(
        settings,
        certificate,
        _download(container, settings, "PrivateKeyFile"),
        _download(container, settings, "CertificateChainFile"),
    )
