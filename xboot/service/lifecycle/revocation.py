"""The revocation list: which certificates, keys and registration IDs this service no longer stands behind.

Each revocation is one immutable object `revocations/<id>.json` in the data store (File or Blob, beside
the audit log), written with `create`: concurrent revocations never overwrite one another. An id is the
revocation time and a random suffix, so ids sort by time and are never reused.

Instances never list `revocations/` (it grows with the fleet). Every change is also appended to a change
log, `revocation-log/<YYYYMMDD>/<HH>/<change id>.<add|remove>.<entry id>` (an add carries the entry),
and `revocation-cache/snapshot.json` is a compacted copy of the list as of a time (`asOf`). A cold
instance reads the snapshot and replays the log hours since it; a refresh lists only the log hours since
the last refresh (minus `LOOKBACK`, for writers still finishing) and reads only the changes it has not
applied. So loading costs a bounded number of reads whatever the list's size, and a refresh costs what
changed. Whichever instance holds changes the snapshot lacks writes a new one at most hourly, and one
that is a day old is rewritten anyway, so a cold start replays at most a day of hours.

Checks that run per request (enrollment, reports, EST re-enrollment) use a per-process snapshot that is
at most `RevocationCacheSeconds` (default 30) old: a dict lookup, no storage call. The instance that
changes the list drops its snapshot at once; other instances see the change within that many seconds.

What an entry blocks:
- every kind: a certificate it names, wherever one is presented (report signatures and their chains,
  EST re-enrollment), and, for certificates of this CA, the CRL (see xboot.service.ca.crl);
- a registration ID: enrollment under that ID (403), and every certificate of this CA with that CN;
- the public key of each certificate it resolved, unless the reason says the certificate was merely
  replaced (superseded, affiliationChanged): a renewal that reuses the key (`xboot renew` does by
  default) is then refused with the certificate.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import datetime as dt
import hashlib
import json
import logging
import re
import secrets
import threading
import time
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm

from xboot.errors import (
    BackendUnavailable,
    BadRequest,
    ConfigurationError,
    Conflict,
    Forbidden,
    NotFound,
    Unprocessable,
)
from xboot.pki import PublicKey, common_name, is_pem, issued_by, normalize_fingerprint, sha256_fingerprint, spki_der
from xboot.service.ca.issuers import load_issuing_ca
from xboot.service.enrollment.registration import REGISTRATION_ID, validate_registration_id
from xboot.service.lifecycle.audit import audit_key, audit_prefix, parse_marker, serial_prefix
from xboot.service.settings import Settings
from xboot.service.storage import ObjectStore, PerStore, open_data_store, read_json

log = logging.getLogger(__name__)

PREFIX = "revocations/"
DEFAULT_CACHE_SECONDS = 30
KINDS = ("serial", "fingerprint", "registrationId")
# RFC 5280 section 5.3.1 CRLReason names. removeFromCRL is not a reason to revoke: deleting a
# certificateHold entry is how a hold ends.
REASONS: dict[str, x509.ReasonFlags] = {
    "unspecified": x509.ReasonFlags.unspecified,
    "keyCompromise": x509.ReasonFlags.key_compromise,
    "cACompromise": x509.ReasonFlags.ca_compromise,
    "affiliationChanged": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessationOfOperation": x509.ReasonFlags.cessation_of_operation,
    "certificateHold": x509.ReasonFlags.certificate_hold,
    "privilegeWithdrawn": x509.ReasonFlags.privilege_withdrawn,
    "aACompromise": x509.ReasonFlags.aa_compromise,
}
HOLD = "certificateHold"
KEY_STAYS_VALID = frozenset({"superseded", "affiliationChanged"})  # the certificate was replaced, not distrusted
_REASONS_CI = {name.lower(): name for name in REASONS}
_ID = re.compile(r"[0-9]{8}T[0-9]{12}Z-[0-9a-f]{8}")  # a revocation or change id
SERIAL = re.compile(r"[0-9A-F]{1,40}")  # a normalised serial: RFC 5280 allows at most 20 octets


# -- values ------------------------------------------------------------------------------------------


def normalize_serial(value: object) -> str:
    """Upper-case hex without leading zeros, from `0A:1B`, `0a1b`, `0x0A1B` (how openssl and others print it)."""
    text = value.strip().upper().replace(":", "").replace(" ", "") if isinstance(value, str) else ""
    text = text.removeprefix("0X").lstrip("0")
    if not SERIAL.fullmatch(text):
        raise BadRequest(
            "serialNumber must be a non-zero hexadecimal serial of at most 20 octets (colons optional)",
            code="invalid_serial",
        )
    return text


def normalize_reason(value: object) -> str:
    if value is None:
        return "unspecified"
    name = _REASONS_CI.get(value.strip().lower()) if isinstance(value, str) else None
    if name is None:
        hint = (
            " (a hold ends by deleting its certificateHold entry)"
            if isinstance(value, str) and value.strip().lower() == "removefromcrl"
            else ""
        )
        raise BadRequest(
            f"reason must be one of the RFC 5280 reasons: {', '.join(REASONS)}{hint}", code="invalid_reason"
        )
    return name


def key_hash(key: PublicKey) -> str:
    """SHA-256 of the SubjectPublicKeyInfo: the same key however many certificates carry it."""
    return hashlib.sha256(spki_der(key)).hexdigest()


def _utc(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


# -- entries -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Revocation:
    id: str
    kind: str  # serial | fingerprint | registrationId
    value: str  # normalised: serial upper hex, fingerprint AB:CD:.., registration ID lower case
    reason: str
    revoked_at: dt.datetime
    serial_numbers: tuple[str, ...] = ()  # this CA's certificates it put in the CRL when it was made
    registration_id: str | None = None  # the device, when known
    public_keys: tuple[str, ...] = ()  # key_hash of each certificate it resolved
    issuer: str | None = None  # SHA-256 fingerprint of the CA that issued serial_numbers (None: made before 0.2)
    not_after: dt.datetime | None = None  # when the last of serial_numbers expires (None: not known)

    @property
    def key(self) -> str:
        return f"{PREFIX}{self.id}.json"

    @property
    def blocks_keys(self) -> bool:
        return self.reason not in KEY_STAYS_VALID

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "value": self.value,
            "reason": self.reason,
            "revokedAt": _utc(self.revoked_at),
            "serialNumbers": list(self.serial_numbers),
            "registrationId": self.registration_id,
            "publicKeySha256": list(self.public_keys),
            "issuerSha256Fingerprint": self.issuer,
            "notAfter": None if self.not_after is None else _utc(self.not_after),
        }

    def summary(self) -> dict[str, str]:
        return {"id": self.id, "kind": self.kind, "value": self.value, "reason": self.reason,
                "revokedAt": _utc(self.revoked_at)}  # fmt: skip

    @classmethod
    def parse(cls, document: Any, key: str) -> Revocation | None:
        try:
            entry = cls(
                id=document["id"],
                kind=document["kind"],
                value=document["value"],
                reason=document["reason"],
                revoked_at=dt.datetime.fromisoformat(document["revokedAt"]),
                serial_numbers=tuple(document["serialNumbers"]),
                registration_id=document["registrationId"],
                public_keys=tuple(document["publicKeySha256"]),
                issuer=document.get("issuerSha256Fingerprint"),
                not_after=_optional_time(document.get("notAfter")),
            )
        except (ValueError, TypeError, KeyError, AttributeError):
            return None
        valid = (
            entry.kind in KINDS and entry.reason in REASONS and all(SERIAL.fullmatch(n) for n in entry.serial_numbers)
        )
        return entry if valid and entry.key == key else None

    @classmethod
    def from_json(cls, data: bytes, key: str) -> Revocation:
        """Fail closed: an entry that cannot be read stops every check rather than being skipped."""
        try:
            entry = cls.parse(json.loads(data), key)
        except ValueError:
            entry = None
        if entry is None:
            raise ConfigurationError(f"the stored revocation {key} is unreadable; restore or delete it")
        return entry


def _optional_time(value: object) -> dt.datetime | None:
    return None if value is None else dt.datetime.fromisoformat(str(value))


def new_id(now: dt.datetime) -> str:
    return f"{now.astimezone(dt.UTC):%Y%m%dT%H%M%S%f}Z-{secrets.token_hex(4)}"


def is_revocation_id(value: str) -> bool:
    return _ID.fullmatch(value) is not None


def _keep_earliest(index: dict[Any, Revocation], value: Hashable, entry: Revocation) -> None:
    """The entry in effect first answers for a value (oldest entry on a tie): a superseded entry that takes
    effect tomorrow must not hide a keyCompromise entry in effect now."""
    current = index.get(value)
    if current is None or entry.revoked_at < current.revoked_at:
        index[value] = entry


def in_effect(entry: Revocation | None, now: dt.datetime | None = None) -> Revocation | None:
    """`entry` if it is in effect at `now`: a renewal's superseded entries wait out SupersededGraceHours."""
    if entry is None or entry.revoked_at > (now or dt.datetime.now(dt.UTC)):
        return None
    return entry


@dataclass(frozen=True)
class RevocationList:
    """An immutable snapshot of every entry, indexed for the per-request checks. Oldest entry wins a tie."""

    by_id: Mapping[str, Revocation] = field(default_factory=dict)
    by_fingerprint: Mapping[str, Revocation] = field(default_factory=dict)
    by_serial: Mapping[str, Revocation] = field(default_factory=dict)
    by_registration: Mapping[str, Revocation] = field(default_factory=dict)
    by_key: Mapping[str, Revocation] = field(default_factory=dict)
    by_target: Mapping[tuple[str, str], Revocation] = field(default_factory=dict)

    @classmethod
    def of(cls, entries: Iterable[Revocation]) -> RevocationList:
        return cls().adding(entries)

    def adding(self, entries: Iterable[Revocation]) -> RevocationList:
        """A new snapshot with `entries` added, indexing only them, so a refresh costs what changed.

        The new snapshot takes over this one's index dicts and grows them in place (a lookup racing the
        refresh sees an entry a moment early, never a wrong one: entries are only ever added here; a
        removal rebuilds with `of`). This one must not be grown again: callers replace it with the result.
        """
        new = sorted(entries, key=lambda e: e.id)
        if not new:
            return self
        by_id, by_fingerprint, by_serial = self.by_id, self.by_fingerprint, self.by_serial
        by_registration, by_key, by_target = self.by_registration, self.by_key, self.by_target
        assert isinstance(by_id, dict) and isinstance(by_fingerprint, dict) and isinstance(by_serial, dict)
        assert isinstance(by_registration, dict) and isinstance(by_key, dict) and isinstance(by_target, dict)
        index = {"serial": by_serial, "fingerprint": by_fingerprint, "registrationId": by_registration}
        for entry in new:
            by_id[entry.id] = entry
            _keep_earliest(index[entry.kind], entry.value, entry)
            _keep_earliest(by_target, (entry.kind, entry.value), entry)
            for serial in entry.serial_numbers:
                _keep_earliest(by_serial, serial, entry)
            if entry.blocks_keys:
                for key in entry.public_keys:
                    _keep_earliest(by_key, key, entry)
        return RevocationList(by_id, by_fingerprint, by_serial, by_registration, by_key, by_target)

    @cached_property
    def entries(self) -> tuple[Revocation, ...]:
        """Every entry by id, so oldest first: built when first asked for (CRL, listing), not per refresh.
        (The copy of the values runs in C under the GIL, so a refresh growing `by_id` cannot interleave.)"""
        return tuple(sorted(self.by_id.values(), key=lambda e: e.id))

    @cached_property
    def ids(self) -> tuple[str, ...]:
        return tuple(e.id for e in self.entries)

    @cached_property
    def effective_times(self) -> tuple[dt.datetime, ...]:
        return tuple(sorted(e.revoked_at for e in self.entries))

    def pending(self, now: dt.datetime) -> int:
        """Entries not yet in effect (a renewal's superseded predecessors in their grace): O(log n)."""
        return len(self.effective_times) - bisect.bisect_right(self.effective_times, now)

    def after(self, revocation_id: str | None, limit: int) -> list[Revocation]:
        """A page of entries by id, strictly after `revocation_id`: O(log n + limit)."""
        start = 0 if revocation_id is None else bisect.bisect_right(self.ids, revocation_id)
        return list(self.entries[start : start + limit])

    @cached_property
    def digest(self) -> str:
        """Changes whenever an entry is added or removed (entries themselves never change)."""
        return hashlib.sha256("\n".join(e.id for e in self.entries).encode()).hexdigest()

    def find(self, kind: str, value: str) -> Revocation | None:
        return self.by_target.get((kind, value))

    def is_revoked(
        self, certificate: x509.Certificate, ca_subject: x509.Name | None, fingerprint: str | None = None
    ) -> Revocation | None:
        """By fingerprint (any certificate); by serial and by CN = registration ID (certificates of our CA)."""
        if not self.by_id:
            return None
        now = dt.datetime.now(dt.UTC)
        hit = in_effect(self.by_fingerprint.get(fingerprint or sha256_fingerprint(certificate)), now)
        if hit is not None or ca_subject is None or certificate.issuer != ca_subject:
            return hit
        hit = in_effect(self.by_serial.get(format(certificate.serial_number, "X")), now)
        if hit is not None:
            return hit
        name = common_name(certificate.subject)
        return None if name is None else in_effect(self.by_registration.get(name.lower()), now)

    def for_record(self, record: Mapping[str, Any], now: dt.datetime | None = None) -> Revocation | None:
        """An audit record: every certificate in it was issued by this service."""
        return (
            in_effect(self.by_serial.get(str(record.get("serialNumber"))), now)
            or in_effect(self.by_fingerprint.get(str(record.get("sha256Fingerprint"))), now)
            or in_effect(self.by_registration.get(str(record.get("registrationId")).lower()), now)
        )

    @property
    def has_ca_entries(self) -> bool:
        """Entries that only match certificates of this CA, so checking needs its name."""
        return bool(self.by_serial or self.by_registration)


# -- the per-process snapshot -------------------------------------------------------------------------


LOG = "revocation-log/"
SNAPSHOT = "revocation-cache/snapshot.json"
LOOKBACK = dt.timedelta(seconds=120)  # a change is in the log by then: writers take milliseconds
SNAPSHOT_AFTER = dt.timedelta(hours=1)  # changes the stored snapshot lacks are compacted into it this often
SNAPSHOT_MAX_AGE = dt.timedelta(days=1)  # ... and it is rewritten anyway once this old (bounds a cold replay)
_ID_PATTERN = r"[0-9]{8}T[0-9]{12}Z-[0-9a-f]{8}"
_CHANGE = re.compile(rf"(?P<change>{_ID_PATTERN})\.(?P<op>add|remove)\.(?P<entry>{_ID_PATTERN})")


def _id_time(identifier: str) -> dt.datetime:
    return dt.datetime.strptime(identifier[:21], "%Y%m%dT%H%M%S%f").replace(tzinfo=dt.UTC)


def _log_hour(when: dt.datetime) -> str:
    return f"{LOG}{when.astimezone(dt.UTC):%Y%m%d/%H}/"


def log_change(store: ObjectStore, op: str, entry: Revocation, change_id: str | None = None) -> None:
    """Append `op` (add, remove) of `entry` to the change log. An add's change id is the entry's own (so a
    retry rewrites the same object); a repair passes a fresh one, so that refreshers see it now."""
    change = change_id or entry.id
    data = json.dumps(entry.to_json()).encode() if op == "add" else b""
    store.create(f"{_log_hour(_id_time(change))}{change}.{op}.{entry.id}", data)


@dataclass
class _State:
    """What a view knows: the entries, the removed ids, the changes applied, and until when it is complete."""

    entries: dict[str, Revocation] = field(default_factory=dict)
    removed: set[str] = field(default_factory=set)
    applied: dict[str, dt.datetime] = field(default_factory=dict)  # change id -> its time, within LOOKBACK
    complete_until: dt.datetime | None = None  # every change older than this is applied; None: never loaded

    def to_json(self) -> dict[str, Any]:
        assert self.complete_until is not None
        return {
            "asOf": self.complete_until.isoformat(),
            "applied": sorted(self.applied),
            "removed": sorted(self.removed),
            "entries": [e.to_json() for e in sorted(self.entries.values(), key=lambda e: e.id)],
        }

    @classmethod
    def from_json(cls, data: bytes) -> _State | None:
        try:
            document = json.loads(data)
            entries = [Revocation.parse(d, f"{PREFIX}{d['id']}.json") for d in document["entries"]]
            applied = {str(c): _id_time(str(c)) for c in document["applied"]}
            state = cls(
                {e.id: e for e in entries if e is not None},
                {str(i) for i in document["removed"]},
                applied,
                dt.datetime.fromisoformat(document["asOf"]),
            )
        except (ValueError, TypeError, KeyError, AttributeError):
            return None
        return state if None not in entries else None


class _View:
    """One data store's revocation list as this process knows it, refreshed from the change log.

    When the snapshot has merely expired and another request is already refreshing it, requests keep
    using it rather than queue behind a listing; after `invalidate` (this instance changed the list)
    they wait for the refresh.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.state = _State()
        self.snapshot = RevocationList.of(())
        self.expires = 0.0
        self.current = False  # loaded at least once and not invalidated since
        self.version: int | None = None  # the store's folder_version of the log's current hour when last read
        self.stored_as_of: dt.datetime | None = None  # the snapshot object's asOf, as this process last saw it
        self.unsaved = False  # changes applied that the stored snapshot may lack

    def get(self, store: ObjectStore, ttl: int, fresh: bool) -> RevocationList:
        version = store.folder_version(_log_hour(dt.datetime.now(dt.UTC)))
        changed = version != self.version  # another process of this server changed the list: wait for it
        if not fresh and not changed and time.monotonic() < self.expires:
            return self.snapshot
        if not self.lock.acquire(blocking=fresh or changed or not self.current):
            return self.snapshot
        try:
            if fresh or version != self.version or time.monotonic() >= self.expires:
                self._refresh(store, dt.datetime.now(dt.UTC))
                self.version = version
                self.expires = time.monotonic() + ttl
                self.current = True
            return self.snapshot
        finally:
            self.lock.release()

    def _load(self, store: ObjectStore, now: dt.datetime) -> None:
        """Cold: the stored snapshot; without one (a list made before the change log) every entry, once."""
        data = store.read(SNAPSHOT)
        state = _State.from_json(data) if data is not None else None
        if data is not None and state is None:
            log.warning("%s is unreadable; reading every revocation once to rebuild it", SNAPSHOT)
        if state is None:
            state = _State(complete_until=now - LOOKBACK)  # the log then covers what follows
            for key in store.list(PREFIX):
                entry = store.read(key)
                if entry is not None:
                    state.entries[key[len(PREFIX) :].removesuffix(".json")] = Revocation.from_json(entry, key)
            self.unsaved = True
        else:
            self.stored_as_of = state.complete_until
        self.state = state
        self.snapshot = RevocationList.of(state.entries.values())

    def _refresh(self, store: ObjectStore, now: dt.datetime) -> None:
        if self.state.complete_until is None:
            self._load(store, now)
        state = self.state
        assert state.complete_until is not None
        since = state.complete_until - LOOKBACK
        changes = []
        hour = since.replace(minute=0, second=0, microsecond=0)
        while hour <= now:
            for key in store.list(_log_hour(hour)):
                found = _CHANGE.fullmatch(key.rpartition("/")[2])
                if found is not None and found["change"] not in state.applied and _id_time(found["change"]) >= since:
                    changes.append((found["change"], found["op"], found["entry"], key))
            hour += dt.timedelta(hours=1)
        added: list[Revocation] = []
        removed = False
        for change, op, entry_id, key in sorted(changes):
            state.applied[change] = _id_time(change)
            if op == "remove":
                removed |= state.entries.pop(entry_id, None) is not None
                state.removed.add(entry_id)
                continue
            data = store.read(key)
            if data is None or entry_id in state.removed or entry_id in state.entries:
                continue
            entry = Revocation.from_json(data, f"{PREFIX}{entry_id}.json")
            state.entries[entry_id] = entry
            added.append(entry)
        state.complete_until = now - LOOKBACK
        for change, when in list(state.applied.items()):
            if when < state.complete_until - LOOKBACK:
                del state.applied[change]  # older than any later refresh looks: never met again
        if removed:
            self.snapshot = RevocationList.of(state.entries.values())
        elif added:
            self.snapshot = self.snapshot.adding(added)
        self.unsaved |= bool(changes)
        self._save(store, now)

    def _save(self, store: ObjectStore, now: dt.datetime) -> None:
        """The compacted snapshot, when this process holds changes the stored one lacks (at most hourly) or
        the stored one is a day old; any instance's copy is correct as of its own asOf."""
        age = now - self.stored_as_of if self.stored_as_of is not None else None
        if (self.unsaved and (age is None or age >= SNAPSHOT_AFTER)) or (age is not None and age >= SNAPSHOT_MAX_AGE):
            store.replace(SNAPSHOT, json.dumps(self.state.to_json()).encode())
            self.stored_as_of, self.unsaved = self.state.complete_until, False

    def invalidate(self) -> None:
        """Under the lock: a refresh already running may have listed before our write, so it must not count."""
        with self.lock:
            self.expires = 0.0
            self.current = False


_views = PerStore(_View)


def cache_seconds(settings: Settings) -> int:
    return settings.integer("RevocationCacheSeconds", DEFAULT_CACHE_SECONDS, minimum=0, maximum=3600)


def load_revocations(settings: Settings, *, fresh: bool = False) -> RevocationList:
    """The list as this instance knows it: at most RevocationCacheSeconds old, or read now with `fresh`."""
    store = open_data_store(settings)
    return _views.get(store).get(store, cache_seconds(settings), fresh)


# -- the checks wired into enrollment, EST and reports ---------------------------------------------


def _ca_subject(settings: Settings, revocations: RevocationList) -> x509.Name | None:
    """Serial and registration-ID entries refer to this service's CA; without one configured none can match."""
    if not revocations.has_ca_entries:
        return None
    try:
        return load_issuing_ca(settings).certificate.subject
    except ConfigurationError:
        return None


def check_enrollment(registration_id: str, key: PublicKey, settings: Settings) -> None:
    """403 for a revoked registration ID, or for a key whose certificate was revoked (a renewal reusing it)."""
    revocations = load_revocations(settings)
    hit = in_effect(revocations.by_registration.get(registration_id.lower()))
    if hit is not None:
        raise Forbidden(
            f"registration {registration_id} is revoked ({hit.reason}, {_utc(hit.revoked_at)})",
            code="registration_revoked",
        )
    if revocations.by_key:
        hit = in_effect(revocations.by_key.get(key_hash(key)))
        if hit is not None:
            raise Forbidden(
                f"this public key belongs to a revoked certificate ({hit.reason}); enroll with a new key",
                code="key_revoked",
            )


def revoked(certificate: x509.Certificate, settings: Settings) -> Revocation | None:
    revocations = load_revocations(settings)
    return revocations.is_revoked(certificate, _ca_subject(settings, revocations))


def check_path(certificates: Iterable[x509.Certificate], fingerprints: Iterable[str], settings: Settings) -> None:
    """422 `revoked` naming the first revoked certificate of a verified path (signer first)."""
    revocations = load_revocations(settings)
    if not revocations.by_id:
        return
    ca_subject = _ca_subject(settings, revocations)
    for certificate, fingerprint in zip(certificates, fingerprints, strict=True):
        hit = revocations.is_revoked(certificate, ca_subject, fingerprint)
        if hit is not None:
            name = certificate.subject.rfc4514_string() or "(empty subject)"
            raise Unprocessable(
                f"certificate {name[:160]} (SHA-256 {fingerprint}) is revoked: {hit.reason} since "
                f"{_utc(hit.revoked_at)}",
                code="revoked",
            )


# -- the audit log, read ----------------------------------------------------------------------------


def record_key_hash(record: Mapping[str, Any]) -> str | None:
    try:
        return key_hash(x509.load_pem_x509_certificate(str(record["certificate"]).encode()).public_key())
    except (KeyError, ValueError):
        return None


# -- changing the list ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """What a revocation request names, resolved against the audit log."""

    kind: str
    value: str
    serial_numbers: tuple[str, ...] = ()
    registration_id: str | None = None
    public_keys: tuple[str, ...] = ()
    issuer: str | None = None  # the CA that issued serial_numbers
    not_after: dt.datetime | None = None  # when the last of them expires


def _from_records(kind: str, value: str, records: list[dict[str, Any]], registration_id: str | None) -> Target:
    keys = (record_key_hash(r) for r in records)
    issuers = {r.get("issuerSha256Fingerprint") for r in records}
    try:
        expiries = [dt.datetime.fromisoformat(str(r["notAfter"])) for r in records]
    except (KeyError, ValueError):
        expiries = []  # a record without a readable notAfter: the entry stays in the CRL for good
    return Target(
        kind,
        value,
        tuple(str(r.get("serialNumber")) for r in records),
        registration_id,
        tuple(dict.fromkeys(k for k in keys if k is not None)),
        issuers.pop() if len(issuers) == 1 else None,
        max(expiries) if expiries and len(expiries) == len(records) else None,
    )


def _current_ca(settings: Settings) -> str | None:
    """The issuing CA's fingerprint: serials named without a record are "a certificate of this CA"."""
    try:
        return load_issuing_ca(settings).fingerprint
    except ConfigurationError:
        return None


def _serial_target(store: ObjectStore, value: object, settings: Settings) -> Target:
    """Found through the serial marker (one small listing): its registration ID and key, if it is recorded."""
    serial = normalize_serial(value)
    found = [parse_marker(k) for k in store.list(serial_prefix(serial))]
    keys = [audit_key(m[1], serial) for m in found if m is not None and m[0] == serial]
    records = [r for r in (read_json(store, k) for k in keys[:1]) if r is not None]
    if not records:
        return Target("serial", serial, (serial,), issuer=_current_ca(settings))
    target = _from_records("serial", serial, records, str(records[0].get("registrationId")))
    return replace(target, serial_numbers=(serial,))


def _registration_target(store: ObjectStore, value: object) -> Target:
    registration_id = validate_registration_id(value)
    keys = store.list(audit_prefix(registration_id))
    records = [r for r in (read_json(store, k) for k in keys) if r is not None]
    return _from_records("registrationId", registration_id.lower(), records, registration_id)


def parse_certificate(value: object) -> x509.Certificate:
    text = value.strip() if isinstance(value, str) else ""
    try:
        if is_pem(text.encode()):
            return x509.load_pem_x509_certificate(text.encode())
        return x509.load_der_x509_certificate(base64.b64decode(text, validate=True))
    except (ValueError, binascii.Error):
        raise BadRequest(
            "certificate must be one PEM or base64 DER X.509 certificate", code="invalid_certificate"
        ) from None


def _certificate_target(store: ObjectStore, value: object, settings: Settings) -> Target:
    """A fingerprint entry; if this CA signed the certificate, its serial goes into the CRL as well."""
    certificate = parse_certificate(value)
    fingerprint = sha256_fingerprint(certificate)
    try:
        keys: tuple[str, ...] = (key_hash(certificate.public_key()),)
    except UnsupportedAlgorithm:  # a foreign certificate's key type: it can never enroll here anyway
        keys = ()
    ca = load_issuing_ca(settings)
    if not issued_by(certificate, ca.certificate):
        return Target("fingerprint", fingerprint, (), None, keys)
    serial = format(certificate.serial_number, "X")
    name = common_name(certificate.subject)
    record = None
    if name is not None and REGISTRATION_ID.fullmatch(name):  # signed by our key outside the service: no record
        record = read_json(store, audit_key(name, serial))
    recorded = record is not None and record.get("sha256Fingerprint") == fingerprint
    return Target("fingerprint", fingerprint, (serial,), name if recorded else None, keys, ca.fingerprint,
                  certificate.not_valid_after_utc)  # fmt: skip


def resolve(store: ObjectStore, selector: str, value: object, settings: Settings) -> Target:
    if selector == "serialNumber":
        return _serial_target(store, value, settings)
    if selector == "registrationId":
        return _registration_target(store, value)
    if selector == "certificate":
        return _certificate_target(store, value, settings)
    fingerprint = normalize_fingerprint(value)
    if fingerprint is None:
        raise BadRequest("fingerprint must be a SHA-256 fingerprint (64 hex digits, colons optional)",
                         code="invalid_fingerprint")  # fmt: skip
    # A bare fingerprint is not looked up: that would read every audit record. It blocks the certificate
    # wherever it is presented; to put one of ours in the CRL, revoke it by serial or by certificate.
    return Target("fingerprint", fingerprint)


def revoke(settings: Settings, selector: str, value: object, reason: str, now: dt.datetime) -> tuple[Revocation, bool]:
    """The entry and whether this call made it; revoking what is already revoked for the same reason is a no-op."""
    store = open_data_store(settings)
    return _record(store, settings, resolve(store, selector, value, settings), reason, now, now)


def supersede(settings: Settings, record: Mapping[str, Any], effective_at: dt.datetime, now: dt.datetime) -> Revocation:
    """A renewed device's earlier certificate (its audit record): revoked as superseded from `effective_at`."""
    serial = str(record["serialNumber"])
    found = _from_records("serial", serial, [dict(record)], str(record.get("registrationId")))
    target = replace(found, serial_numbers=(serial,))
    return _record(open_data_store(settings), settings, target, "superseded", now, effective_at)[0]


CLAIMS = "revocation-targets/"


def _claim_key(target: Target) -> str:
    """One claim per revoked thing: its digest, so any target spells a valid storage key."""
    return f"{CLAIMS}{hashlib.sha256(f'{target.kind}:{target.value}'.encode()).hexdigest()}.json"


def _record(
    store: ObjectStore, settings: Settings, target: Target, reason: str, now: dt.datetime, effective_at: dt.datetime
) -> tuple[Revocation, bool]:
    """The entry for `target`: made once, whatever the concurrency.

    A claim object per target is created atomically first; every writer then converges on the entry
    id it names. If a writer died between the claim and the entry, the next one writes the entry.
    """
    existing = load_revocations(settings, fresh=True).find(target.kind, target.value)  # entries made before claims
    if existing is None:
        candidate = _entry(target, reason, now, effective_at)
        claim = _claim_key(target)
        ours = store.create(claim, json.dumps({"id": candidate.id}).encode())  # this call makes the entry
        claimed = read_json(store, claim)
        entry_id = claimed.get("id") if claimed is not None else None
        if not isinstance(entry_id, str) or not is_revocation_id(entry_id):
            raise BackendUnavailable("a revocation claim is unreadable; retry")
        entry = candidate if entry_id == candidate.id else replace(candidate, id=entry_id)
        written = store.create(entry.key, json.dumps(entry.to_json(), indent=1).encode())
        data = store.read(entry.key)
        if data is None:
            raise BackendUnavailable("revocation storage is inconsistent; retry")
        existing = Revocation.from_json(data, entry.key)
        # In the log under its own id; a writer that finds the entry already there (its first writer may have
        # died before logging it, which is why a fresh list lacked it) logs it anew, as a change made now.
        log_change(store, "add", existing, None if written else new_id(now))
        _views.get(store).invalidate()
        if written:
            log.info("revoked %s %s (%s) as %s", entry.kind, entry.value, entry.reason, entry.id)
        if ours and existing.reason == reason:
            return existing, True  # whoever wrote the entry's bytes, this call's claim made it
    if existing.reason != reason:
        raise Conflict(
            f"already revoked as {existing.id} ({existing.reason}); a certificateHold entry can be deleted "
            "and revoked again with another reason, other reasons are permanent",
            code="already_revoked",
        )
    return existing, False


def _entry(target: Target, reason: str, now: dt.datetime, effective_at: dt.datetime) -> Revocation:
    return Revocation(
        id=new_id(now),
        kind=target.kind,
        value=target.value,
        reason=reason,
        revoked_at=effective_at.replace(microsecond=0),
        serial_numbers=target.serial_numbers,
        registration_id=target.registration_id,
        public_keys=target.public_keys,
        issuer=target.issuer,
        not_after=target.not_after,
    )


def remove(settings: Settings, revocation_id: str) -> Revocation:
    """Only a hold ends: RFC 5280 revocation for any other reason is permanent."""
    store = open_data_store(settings)
    key = f"{PREFIX}{revocation_id}.json"
    data = store.read(key) if is_revocation_id(revocation_id) else None
    if data is None:
        raise NotFound("no revocation with this id")
    entry = Revocation.from_json(data, key)
    if entry.reason != HOLD:
        raise Conflict(
            f"revocation {entry.id} is {entry.reason}, which is permanent; only certificateHold entries can be removed",
            code="not_on_hold",
        )
    log_change(store, "remove", entry, new_id(dt.datetime.now(dt.UTC)))  # first: a crash after it leaves an
    store.delete(key)  # entry object no instance counts, which a retry of this call deletes
    store.delete(_claim_key(Target(entry.kind, entry.value)))  # after the entry: a crash between leaves a claim
    _views.get(store).invalidate()  # that the next revocation of the target repairs
    log.info("removed hold %s on %s %s", entry.id, entry.kind, entry.value)
    return entry
