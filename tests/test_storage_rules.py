"""The data store's shared rules on plain settings: which store opens, one store per settings, stored JSON."""

from __future__ import annotations

import pytest

from xboot.errors import BackendUnavailable, ConfigurationError
from xboot.service.settings import Settings
from xboot.service.storage import data_store_kind, open_data_store, read_json
from xboot.service.storage.file import FileStore


@pytest.mark.parametrize(
    ("values", "kind"),
    [
        ({}, "file"),
        ({"DataStore": "File"}, "file"),
        ({"DataStore": "BLOB"}, "blob"),
        ({"Location": "Blob"}, "blob"),  # the CA in Blob storage: the data goes there too
        ({"Location": "2"}, "blob"),
        ({"Location": "File"}, "file"),
        ({"WEBSITE_INSTANCE_ID": "abc", "AzureWebJobsStorage": "UseDevelopmentStorage=true"}, "blob"),
        ({"WEBSITE_INSTANCE_ID": "abc", "DataStore": "File"}, "file"),  # explicit, even in Azure
    ],
)
def test_which_store_opens(values, kind):
    assert data_store_kind(Settings(values)) == kind


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"DataStore": "Disk"}, "use File or Blob"),
        ({"WEBSITE_INSTANCE_ID": "abc"}, "runs in Azure"),  # no account to use: refuse, never a temporary disk
    ],
)
def test_stores_that_cannot_work_are_configuration_errors(values, message):
    with pytest.raises(ConfigurationError, match=message):
        data_store_kind(Settings(values))


def test_one_store_per_settings(tmp_path):
    """Caches (the revocation snapshot) live per store object: reopening per request would lose them."""
    settings = Settings({"DataStore": "File", "DataDirectory": str(tmp_path / "a")})
    assert open_data_store(settings) is open_data_store(Settings(dict(settings._values)))
    other = Settings({"DataStore": "File", "DataDirectory": str(tmp_path / "b")})
    assert open_data_store(other) is not open_data_store(settings)


@pytest.mark.parametrize("stored", [b"not json", b"[1, 2]", b'"text"', b"\xff"])
def test_stored_json_that_is_not_an_object_is_a_storage_fault(tmp_path, stored):
    store = FileStore(tmp_path)
    store.replace("things/one.json", stored)
    with pytest.raises(BackendUnavailable, match=r"things/one\.json is unreadable"):
        read_json(store, "things/one.json")
    assert read_json(store, "things/none.json") is None
