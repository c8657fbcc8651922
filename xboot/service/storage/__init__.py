"""Where the service keeps its own data: audit log, trust anchors, reports.

`DataStore` picks File (a folder) or Blob (a container). Both offer the same small
object interface; `create` is atomic and never overwrites, which is what makes
audit records and report ingestion idempotent and safe under concurrency.
"""

from __future__ import annotations

import importlib
import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from xboot.errors import BackendUnavailable, ConfigurationError
from xboot.service.settings import Settings

_SEGMENT = re.compile(r"[A-Za-z0-9._:=-]+")
# What both stores can hold: a File segment is one file name (255 bytes, and the File store spells ':'
# as '%3A'); a Blob name is at most 1,024 characters. Keys are checked against both, whichever is in use,
# so that a key one deployment accepts never fails on another.
MAX_SEGMENT_BYTES = 255
MAX_KEY_CHARS = 1024


def check_key(key: str) -> str:
    """Object keys are '/'-separated segments of safe characters that fit every store; '.' and '..' never pass.

    Callers derive every key of a write and check it before the first object is written, so a key the
    store cannot hold is refused up front instead of leaving half of a multi-object write behind.
    """
    segments = key.split("/")
    if len(key) > MAX_KEY_CHARS or not all(
        _SEGMENT.fullmatch(s) and s not in (".", "..") and len(s) + 2 * s.count(":") <= MAX_SEGMENT_BYTES
        for s in segments
    ):
        raise ValueError(f"unsafe storage key {key[:80]!r}")
    return key


@dataclass(frozen=True)
class Page:
    keys: list[str]
    marker: str | None  # the store's continuation: None when nothing follows


class ObjectStore(Protocol):
    def create(self, key: str, data: bytes, *, flush: bool = True) -> bool:
        """Write `data` under `key` unless it exists; True if this call wrote it. Atomic, and durable when
        it returns; with `flush=False` durable only with the next flushed write of this store, which the
        caller makes before it answers (markers written just before their record share its flush)."""
        ...

    def replace(self, key: str, data: bytes) -> None:
        """Write `data` under `key`, replacing what was there. Atomic for readers."""
        ...

    def read(self, key: str) -> bytes | None: ...

    def delete(self, key: str) -> None: ...

    def list(self, prefix: str) -> list[str]:
        """Every key under `prefix`, ascending. Only for prefixes that stay small whatever the fleet's size
        (one device's certificates, one hour of a change log): anything that grows with the fleet is paged."""
        ...

    def page(self, prefix: str, limit: int, marker: str | None = None) -> Page:
        """At most `limit` keys under `prefix`, ascending, resuming at `marker` (the store's own continuation
        from the previous page). Costs O(limit) whatever the number of keys under `prefix`."""
        ...

    def folder_version(self, prefix: str) -> int | None:
        """A cheap token that changes when a key directly under `prefix` (a folder) is added or removed;
        None where the store has none (then callers rely on their cache's time to live)."""
        ...


def read_json(store: ObjectStore, key: str) -> dict[str, Any] | None:
    """A stored JSON object, or None if there is none; one that exists but cannot be read is a storage fault."""
    data = store.read(key)
    if data is None:
        return None
    try:
        document = json.loads(data)
    except ValueError:
        document = None
    if not isinstance(document, dict):
        raise BackendUnavailable(f"stored object {key} is unreadable")
    return document


_STORES = {"file": "xboot.service.storage.file", "blob": "xboot.service.storage.blob"}
_lock = threading.Lock()
_opened: dict[tuple[str | None, ...], ObjectStore] = {}


RUNNING_IN_AZURE = "WEBSITE_INSTANCE_ID"  # set by App Service / Azure Functions on every instance
_BLOB_ACCOUNT_SETTINGS = (
    "DataBlobConnectionString",
    "DataBlobAccountUrl",
    "BlobConnectionString",
    "BlobAccountUrl",
    "AzureWebJobsStorage",
    "AzureWebJobsStorage__blobServiceUri",
)
# Every setting that decides which store opens: a change to any opens another.
_SETTINGS = (
    "DataStore",
    "DataDirectory",
    "DataSync",
    "DataBlobContainer",
    *_BLOB_ACCOUNT_SETTINGS,
    "Location",
    RUNNING_IN_AZURE,
)


def data_store_kind(settings: Settings) -> str:
    """`DataStore` if set; else Blob when the CA is in Blob storage or the app runs in Azure; File otherwise.

    In Azure the File store would be each instance's own disk (read-only under run-from-package,
    ephemeral, and different on every instance): audit records, reports and revocations would be
    split across instances or lost. There the default is Blob on the runtime's own storage account,
    and with no account to use the service refuses, saying so, rather than write where nothing lasts.
    """
    value = settings.get("DataStore")
    if value is None:
        location = (settings.get("Location") or "").lower()
        if location in ("2", "blob"):
            return "blob"
        if settings.get(RUNNING_IN_AZURE) is None:
            return "file"
        if any(settings.get(name) for name in _BLOB_ACCOUNT_SETTINGS):
            return "blob"
        raise ConfigurationError(
            "setting DataStore is not set and this app runs in Azure, where the File store would be each "
            "instance's own, temporary disk: set DataStore=Blob and DataBlobAccountUrl (managed identity) or "
            "DataBlobConnectionString"
        )
    if value.lower() not in _STORES:
        raise ConfigurationError("setting DataStore: use File or Blob")
    return value.lower()


State = TypeVar("State")


class PerStore(Generic[State]):
    """State this process keeps for each opened data store (a cached list, the latest CRL), made on first
    use under a lock; `get` builds nothing when the state exists (`dict.setdefault` would, every call)."""

    def __init__(self, factory: Callable[[], State]) -> None:
        self._factory = factory
        self._lock = threading.Lock()
        self._states: dict[ObjectStore, State] = {}

    def get(self, store: ObjectStore) -> State:
        with self._lock:
            state = self._states.get(store)
            if state is None:
                state = self._states[store] = self._factory()
            return state

    def clear(self) -> None:
        """Forget every store's state (a new process, as far as this state goes)."""
        with self._lock:
            self._states.clear()


def forget_stores() -> None:
    """Drop every opened store (a forked worker opens its own: a Blob store holds connections)."""
    with _lock:
        _opened.clear()


def open_data_store(settings: Settings) -> ObjectStore:
    key = settings.snapshot(_SETTINGS)
    with _lock:
        store = _opened.get(key)
        if store is None:
            module = importlib.import_module(_STORES[data_store_kind(settings)])
            store = module.open_store(settings)
            _opened[key] = store
        return store
