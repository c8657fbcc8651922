"""Continuation tokens: a store's own marker, sealed for the one listing it continues.

A token is the marker and an HMAC over it and the listing's scope (its prefix and filters), under a
random key the data store keeps (`meta/continuation-key`, made by the first instance that needs it).
So clients see an opaque string they can neither forge nor move to another listing, and a Blob
marker reaches the service only as the service itself wrote it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import threading
from collections.abc import Callable

from xboot.errors import BackendUnavailable, BadRequest
from xboot.service.storage import ObjectStore, Page

KEY = "meta/continuation-key"
MAX_TOKEN_CHARS = 4096
_MAC_BYTES = 16
_lock = threading.Lock()
_keys: dict[ObjectStore, bytes] = {}


def _key(store: ObjectStore) -> bytes:
    with _lock:
        key = _keys.get(store)
    if key is None:
        store.create(KEY, secrets.token_hex(32).encode("ascii"))  # the first instance's key stands
        stored = store.read(KEY)
        try:
            key = bytes.fromhex((stored or b"").decode("ascii"))
        except ValueError:
            key = b""
        if len(key) != 32:
            raise BackendUnavailable(f"stored object {KEY} is unreadable")
        with _lock:
            _keys[store] = key
    return key


def _mac(store: ObjectStore, scope: str, marker: bytes) -> bytes:
    message = scope.encode("utf-8") + b"\x00" + marker
    return hmac.new(_key(store), message, hashlib.sha256).digest()[:_MAC_BYTES]


def seal(store: ObjectStore, scope: str, marker: str | None) -> str | None:
    if marker is None:
        return None
    data = marker.encode("utf-8")
    return base64.urlsafe_b64encode(_mac(store, scope, data) + data).decode("ascii").rstrip("=")


def unseal(store: ObjectStore, scope: str, token: str | None) -> str | None:
    """The marker in a token this service gave for `scope`; 400 `invalid_token` for anything else."""
    if token is None:
        return None
    try:
        if len(token) > MAX_TOKEN_CHARS:
            raise ValueError
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        mac, data = raw[:_MAC_BYTES], raw[_MAC_BYTES:]
        if not data or not hmac.compare_digest(mac, _mac(store, scope, data)):
            raise ValueError
        return data.decode("utf-8")
    except (binascii.Error, ValueError):
        raise BadRequest("continuationToken is not one this service returned", code="invalid_token") from None


def page(store: ObjectStore, prefix: str, limit: int, token: str | None, scope: str = "") -> tuple[Page, str | None]:
    """One page of keys under `prefix` and the token for the next (None at the end)."""
    scope = f"{prefix}\x00{scope}"
    found = store.page(prefix, limit, unseal(store, scope, token))
    return found, seal(store, scope, found.marker)


BUCKETS_PER_PAGE = 48  # empty buckets one request steps over before it answers with a token


def walk(
    store: ObjectStore,
    bucket: Callable[[int], str | None],
    limit: int,
    token: str | None,
    scope: str,
    wanted: Callable[[str], bool] = lambda key: True,
) -> tuple[list[str], str | None]:
    """A page of keys from consecutive prefixes (`bucket(0)`, `bucket(1)`, ... until None), e.g. one per
    hour of a time range: a listing that starts mid-range without a marker to start from (a Blob marker
    cannot be made, only received). O(limit + BUCKETS_PER_PAGE) per page; a page may be short (keys
    `wanted` refuses, empty buckets): the token goes on."""
    position, marker = 0, None
    if token is not None:
        text, _, marker = (unseal(store, scope, token) or "").partition(" ")
        if not text.isdigit():
            raise BadRequest("continuationToken is not one this service returned", code="invalid_token")
        position = int(text)
    keys: list[str] = []
    prefix = bucket(position)
    for _ in range(BUCKETS_PER_PAGE):
        if prefix is None or len(keys) >= limit:
            break
        found = store.page(prefix, limit - len(keys), marker or None)
        keys += [k for k in found.keys if wanted(k)]
        if found.marker is not None:
            marker = found.marker
            break
        position, marker = position + 1, None
        prefix = bucket(position)
    following = None if prefix is None else seal(store, scope, f"{position} {marker or ''}")
    return keys, following
