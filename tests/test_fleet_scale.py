"""Fleet scale: paged listings on both stores (File and Blob on Azurite), the indexes under 200 concurrent
writers, sealed continuation tokens, the fleet-wide queries, revocation by serial and CRLs without expired
certificates. Figures (growth from 1k to 100k) come from `python -m bench scale`, never from a test."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

import xboot.service.ca.signer
import xboot.service.lifecycle.revocation
import xboot.service.storage.file
from tests.cms_forge import make_certificate
from tests.fixtures.azurite import Azurite
from tests.test_revocation import enroll, enroll_with, new_key, revoke
from xboot.errors import BadRequest
from xboot.service.ca import crl
from xboot.service.reports import store as reports
from xboot.service.reports.verify import Verification
from xboot.service.settings import Settings
from xboot.service.storage import ObjectStore, open_data_store, paging
from xboot.service.storage.file import FileStore

WRITERS = 200
CERTIFICATES = "/api/mgmt/v1/certificates"
SYSTEM = "/api/install/v1/system-reports"
NOW = dt.datetime(2026, 12, 2, 8, 30, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)


@pytest.fixture(params=["file", "blob"])
def store(request, app_env, monkeypatch) -> ObjectStore:
    """The data store each test runs on: File in a temporary folder, or Blob on the session's Azurite."""
    monkeypatch.setattr(xboot.service.storage, "_opened", {})
    if request.param == "blob":
        azurite: Azurite = request.getfixturevalue("azurite")
        monkeypatch.setenv("DataStore", "Blob")
        monkeypatch.setenv("DataBlobConnectionString", azurite.connection_string)
        monkeypatch.setenv("DataBlobContainer", f"t{uuid.uuid4().hex[:16]}")
    return open_data_store(Settings.from_environ())


def _every_page(store: ObjectStore, prefix: str, limit: int) -> list[str]:
    keys: list[str] = []
    token = None
    while True:
        page, token = paging.page(store, prefix, limit, token)
        keys += page.keys
        if token is None:
            return keys


# -- the stores' native paging ---------------------------------------------------------------------------


def test_pages_follow_the_key_order_through_nested_folders_and_partial_names(store):
    keys = ["a/1", "a/2/x", "a/2/y", "a/2-z", "a/20/q", "a/3", "ab/1", "a:b/c", "b/1"]
    for key in keys:
        assert store.create(key, b"")
    assert store.list("a/") == sorted(k for k in keys if k.startswith("a/"))
    for limit in (1, 2, 3, 100):
        assert _every_page(store, "a/", limit) == sorted(k for k in keys if k.startswith("a/"))
        assert _every_page(store, "a", limit) == sorted(k for k in keys if k.startswith("a"))
    assert store.page("a/2/", 10).keys == ["a/2/x", "a/2/y"]  # "a/2-z" and "a/20/" are not under it
    assert store.page("missing/", 10).keys == [] and store.page("a/1/", 10).keys == []


def test_200_concurrent_writers_each_key_listed_exactly_once_while_pages_are_read(store):
    """Pages read while writers add keys before and after the marker: nothing listed twice, and every key
    written before the listing began is listed."""
    early = [f"fleet/{n % 7:02d}/{n:05d}" for n in range(0, WRITERS * 2, 2)]
    late = [f"fleet/{n % 7:02d}/{n:05d}" for n in range(1, WRITERS * 2, 2)]
    with ThreadPoolExecutor(16) as pool:
        assert all(pool.map(lambda k: store.create(k, b""), early))
        writing = [pool.submit(store.create, k, b"") for k in late]
        listed = _every_page(store, "fleet/", 13)
        assert all(w.result() for w in writing)
    assert len(listed) == len(set(listed)) and listed == sorted(listed)
    assert set(early) <= set(listed) <= set(early) | set(late)
    assert _every_page(store, "fleet/", 13) == sorted(early + late)


def test_a_key_added_to_a_folder_just_listed_is_listed(tmp_path):
    """A folder's mtime may not move between two changes in one timestamp tick: no cached listing hides one."""
    store = FileStore(tmp_path)
    folder = tmp_path / "busy"
    for n in range(5):
        before = folder.stat().st_mtime_ns if n else 0
        store.create(f"busy/{n:02d}", b"")
        if n:  # the second change of one tick: the mtime does not move
            os.utime(folder, ns=(before, before))
        assert store.page("busy/", 100).keys == [f"busy/{k:02d}" for k in range(n + 1)]


def test_a_file_page_opens_only_the_folders_it_lists(tmp_path, monkeypatch):
    """O(page): resuming after a marker never opens the folders wholly before it."""
    store = FileStore(tmp_path)
    for day in range(60):
        for n in range(5):
            store.create(f"index/{day:05d}/{n:02d}", b"")
    opened: list[str] = []
    real = FileStore._entries
    monkeypatch.setattr(FileStore, "_entries", lambda self, folder: opened.append(folder) or real(self, folder))
    first = store.page("index/", 5)
    opened.clear()
    following = store.page("index/", 5, "index/00040/04")
    assert following.keys == [f"index/00041/{n:02d}" for n in range(5)]
    # the index folder, the marker's day (nothing after it there), the next day, and the one after that for
    # the one key beyond the page that tells whether more follows
    assert len(opened) <= 4, opened
    assert first.keys == [f"index/00000/{n:02d}" for n in range(5)]


def test_continuation_tokens_are_sealed_to_their_listing(store):
    for n in range(5):
        store.create(f"one/{n}", b"")
        store.create(f"two/{n}", b"")
    _, token = paging.page(store, "one/", 2, None)
    assert token is not None and "one/" not in token  # opaque
    page, _ = paging.page(store, "one/", 2, token)
    assert page.keys == ["one/2", "one/3"]
    tampered = token[:-2] + ("AA" if token[-2:] != "AA" else "BB")
    for bad in (tampered, "x" * 5000, "!!!", ""):
        if bad:
            with pytest.raises(BadRequest, match="continuationToken"):
                paging.page(store, "one/", 2, bad)
    with pytest.raises(BadRequest, match="continuationToken"):
        paging.page(store, "two/", 2, token)  # another listing's token
    with pytest.raises(BadRequest, match="continuationToken"):
        paging.page(store, "one/", 2, token, "status=valid")  # the same prefix under other filters


def test_an_oversized_token_is_refused_even_when_its_seal_is_good(store):
    """The size bound is checked before any decoding: a token past 4,096 characters is refused unread."""
    sealed = paging.seal(store, "long/\x00", "x" * 3500)
    assert sealed is not None and len(sealed) > paging.MAX_TOKEN_CHARS
    with pytest.raises(BadRequest, match="continuationToken"):
        paging.unseal(store, "long/\x00", sealed)
    assert paging.unseal(store, "long/\x00", paging.seal(store, "long/\x00", "x" * 2000)) == "x" * 2000


def test_a_walk_token_whose_position_is_not_a_number_is_a_400(store):
    """A well-sealed walk token that names no bucket (a bug in an earlier version, say) is the caller's 400."""
    token = paging.seal(store, "walk-scope", "two m")
    with pytest.raises(BadRequest, match="continuationToken"):
        paging.walk(store, lambda position: None, 10, token, "walk-scope")


def test_a_damaged_token_key_is_a_storage_fault_not_a_weak_seal(store, monkeypatch):
    """The per-store key is 32 random bytes; anything else in its object stops sealing (503), never signs with less."""
    from xboot.errors import BackendUnavailable

    monkeypatch.setattr(paging, "_keys", {})
    store.replace(paging.KEY, b"abcd")
    with pytest.raises(BackendUnavailable, match="unreadable"):
        paging.seal(store, "scope", "marker")
    store.replace(paging.KEY, b"zz" * 32)
    with pytest.raises(BackendUnavailable, match="unreadable"):
        paging.seal(store, "scope", "marker")


# -- reports: both indexes under concurrency ---------------------------------------------------------------


def _verification(certificate: x509.Certificate, n: int) -> Verification:
    return Verification(
        content=b"{}",
        path=(certificate,),
        path_fingerprints=("00",),
        signed_attributes=hashlib.sha256(f"report {n}".encode()).digest(),
        digest_algorithm="sha256",
        signature_algorithm="ecdsa-with-SHA256",
        signing_time=None,
    )


def test_200_concurrent_report_writers_each_listed_once_by_gateway_and_by_time(store):
    certificate = make_certificate("gw-scale", ec.generate_private_key(ec.SECP256R1()))
    gateways = ("gw-a", "gw-b")

    def write(n: int) -> str:
        received = NOW - dt.timedelta(minutes=7 * n)  # spread over a week of hours and days
        document = {"gatewayId": gateways[n % 2]}
        stored = reports.store_report(store, "system", document, _verification(certificate, n), b"m", received)
        return stored.record["id"]

    with ThreadPoolExecutor(16) as pool:
        ids = list(pool.map(write, range(WRITERS)))
    assert len(set(ids)) == WRITERS
    for gateway in gateways:
        seen, token = [], None
        while True:
            page = reports.list_reports(store, "system", gateway, 17, token)
            seen += page.records
            token = page.continuation_token
            if token is None:
                break
        times = [r["receivedAt"] for r in seen]
        assert times == sorted(times, reverse=True) and len(seen) == WRITERS // 2
        assert {r["id"] for r in seen} == {i for n, i in enumerate(ids) if n % 2 == gateways.index(gateway)}
    since, until = NOW - dt.timedelta(days=8), NOW + dt.timedelta(seconds=1)
    seen, token, pages = [], None, 0
    while True:
        page = reports.list_fleet_reports(store, "system", since, until, 25, token)
        seen += page.records
        pages += 1
        token = page.continuation_token
        if token is None:
            break
    assert sorted(r["id"] for r in seen) == sorted(ids) and len(seen) == WRITERS  # each exactly once
    assert [r["receivedAt"] for r in seen] == sorted(r["receivedAt"] for r in seen)
    assert pages > WRITERS // 25  # empty hours of the 8 days were stepped over in bounded pages


def test_a_fleet_report_range_keeps_only_what_falls_inside(store):
    certificate = make_certificate("gw-range", ec.generate_private_key(ec.SECP256R1()))
    times = [NOW - dt.timedelta(minutes=m) for m in (90, 61, 59, 30, 1)]
    for n, when in enumerate(times):
        reports.store_report(store, "system", {"gatewayId": "gw"}, _verification(certificate, 1000 + n), b"m", when)
    page = reports.list_fleet_reports(store, "system", NOW - dt.timedelta(minutes=60), NOW, 100, None)
    assert [r["receivedAt"] for r in page.records] == [
        t.isoformat(timespec="milliseconds").replace("+00:00", "Z") for t in times[2:]
    ]


# -- through the HTTP API -------------------------------------------------------------------------------------


def _all(functions, path: str) -> tuple[list[dict[str, Any]], int]:
    items, token, pages = [], None, 0
    while True:
        reply = functions.call("GET", path + (f"&continuationToken={token}" if token else ""))
        assert reply.status == 200, reply.body
        document = reply.json()
        items += document.get("certificates", document.get("reports", []))
        pages += 1
        token = document["continuationToken"]
        if token is None:
            return items, pages


def test_fleet_certificates_each_listed_once_after_200_concurrent_enrollments(app_env, functions, tmp_path):
    key = new_key(tmp_path)
    with ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(lambda n: enroll_with(functions, key, f"dev-fleet-{n:03d}"), range(WRITERS)))
    assert all(r.status == 200 for r in replies)
    serials = {r.json()["serialNumber"] for r in replies}
    listed, pages = _all(functions, f"{CERTIFICATES}?expiringWithinDays=400&limit=37")
    assert len(listed) == WRITERS and {c["serialNumber"] for c in listed} == serials and pages >= WRITERS // 37
    assert [c["notAfter"] for c in listed] == sorted(c["notAfter"] for c in listed)
    assert {c["registrationId"] for c in listed} == {f"dev-fleet-{n:03d}" for n in range(WRITERS)}
    assert _all(functions, f"{CERTIFICATES}?expiringWithinDays=30&limit=50")[0] == []  # a year's validity
    assert len(_all(functions, f"{CERTIFICATES}?status=valid&limit=100")[0]) == WRITERS
    # Revocation by serial finds its device through the serial marker, so the entry names it and its key.
    target = replies[17].json()
    entry = revoke(functions, serialNumber=target["serialNumber"], reason="keyCompromise").json()
    assert entry["registrationId"] == "dev-fleet-017" and entry["publicKeySha256"]
    revoked, _ = _all(functions, f"{CERTIFICATES}?status=revoked")
    assert [c["serialNumber"] for c in revoked] == [target["serialNumber"]]
    assert functions.call("GET", f"{CERTIFICATES}?status=revoked&continuationToken=bogus").status == 400


def test_fleet_reports_over_http_with_since_and_until(app_env, functions, tmp_path):
    from tests.test_revocation import post_report, sign_report

    gateway = enroll(functions, tmp_path / "gw", "gw-http")  # signed by this CA, which TrustIssuingCa trusts
    assert post_report(functions, sign_report(gateway)).status == 201
    since = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    listed, _ = _all(functions, f"{SYSTEM}?since={since}&limit=5")
    assert [r["gatewayId"] for r in listed] == ["gw-http"]
    assert functions.call("GET", f"{SYSTEM}?since=yesterday").status == 400
    assert functions.call("GET", f"{SYSTEM}?since={since}&gatewayId=gw-http").status == 400
    assert functions.call("GET", f"{SYSTEM}?since={since}&until={since}").status == 400
    assert functions.call("GET", SYSTEM).status == 400


# -- CRLs without expired certificates ------------------------------------------------------------------------


def test_an_expired_certificate_leaves_the_crl(app_env, functions, tmp_path):
    device = enroll(functions, tmp_path / "d", "dev-expiring")
    serial = format(device.certificate.serial_number, "X")
    assert revoke(functions, serialNumber=serial, reason="keyCompromise").status == 201
    settings = Settings.from_environ()
    listed = x509.load_der_x509_crl(crl.published_crl(settings).der)
    assert listed.get_revoked_certificate_by_serial_number(device.certificate.serial_number) is not None
    later = device.certificate.not_valid_after_utc + dt.timedelta(minutes=1)
    rebuilt = crl.build_crl(
        xboot.service.ca.signer.load_signer(settings),
        xboot.service.lifecycle.revocation.load_revocations(settings),
        {},
        2,
        later,
        later + dt.timedelta(hours=1),
        later,
    )
    assert rebuilt.get_revoked_certificate_by_serial_number(device.certificate.serial_number) is None
    assert len(rebuilt) == 0


def test_the_serial_marker_and_the_expiry_marker_name_the_record(app_env, functions, tmp_path):
    device = enroll(functions, tmp_path / "d", "Dev.Marker-01")
    serial = format(device.certificate.serial_number, "X")
    data = Path(app_env["DataDirectory"])
    serial_markers = [p for p in (data / "certificate-serials").rglob("*") if p.is_file()]
    expiry_markers = [p for p in (data / "certificate-expiry").rglob("*") if p.is_file()]
    assert [p.name for p in serial_markers] == [f"{serial}.dev.marker-01"]
    assert len(expiry_markers) == 1 and expiry_markers[0].name.endswith(f"-{serial}.dev.marker-01")
    stamp = device.certificate.not_valid_after_utc
    assert expiry_markers[0].relative_to(data / "certificate-expiry").parts[:2] == (f"{stamp:%Y%m%d}", f"{stamp:%H}")
    record = json.loads((data / "certificates" / "dev.marker-01" / f"{serial}.json").read_text())
    assert record["serialNumber"] == serial


# -- upgrading: records stored before the markers ---------------------------------------------------------------


def test_reindex_gives_old_records_their_markers_and_old_report_markers_still_list(app_env, functions, tmp_path):
    from xboot.service.lifecycle.reindex import reindex

    key = new_key(tmp_path)
    serials = [enroll_with(functions, key, f"dev-old-{n}").json()["serialNumber"] for n in range(3)]
    data = Path(app_env["DataDirectory"])
    store = open_data_store(Settings.from_environ())
    certificate = make_certificate("gw-old", ec.generate_private_key(ec.SECP256R1()))
    document = {"gatewayId": "gw-old"}
    stored = [
        reports.store_report(store, "system", document, _verification(certificate, 5000 + n), b"m", NOW - n * DAY)
        for n in range(3)
    ]
    # What an older version left: no certificate markers, no by-time markers, flat gateway markers.
    for folder in ("certificate-serials", "certificate-expiry", "report-time", "report-index"):
        shutil.rmtree(data / folder)
    for item in stored:
        store.create(reports.legacy_key(item.record), b"")
    assert _all(functions, f"{CERTIFICATES}?status=valid")[0] == []
    listed = reports.list_reports(store, "system", "gw-old", 10, None).records
    assert [r["id"] for r in listed] == [s.record["id"] for s in stored]  # legacy markers list, newest first
    done = reindex(store, NOW)
    assert (done.certificates, done.reports, done.skipped) == (3, 3, 0)
    assert {c["serialNumber"] for c in _all(functions, f"{CERTIFICATES}?status=valid")[0]} == set(serials)
    entry = revoke(functions, serialNumber=serials[1], reason="keyCompromise").json()
    assert entry["registrationId"] == "dev-old-1"
    fleet, token = [], None
    while True:
        page = reports.list_fleet_reports(store, "system", NOW - 5 * DAY, NOW + DAY, 10, token)
        fleet += page.records
        token = page.continuation_token
        if token is None:
            break
    assert sorted(r["id"] for r in fleet) == sorted(s.record["id"] for s in stored)
    newest_first = reports.list_reports(store, "system", "gw-old", 10, None).records  # new and legacy markers: once
    assert [r["id"] for r in newest_first] == [s.record["id"] for s in stored]
    assert reindex(store, NOW) == done  # idempotent
