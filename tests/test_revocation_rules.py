"""The revocation rules one at a time, on plain data: each way a certificate is matched alone, which entry
answers for a value, the snapshot's cache, and every refusal of writing an entry.

tests/test_revocation.py drives the same code through the HTTP API; here each lookup is met without the
others, so none can mask another.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

import xboot.service.lifecycle.revocation as revocation
from tests.helpers import make_csr
from xboot.errors import BackendUnavailable, BadRequest
from xboot.pki import sha256_fingerprint
from xboot.service.lifecycle.revocation import (
    PREFIX,
    Revocation,
    RevocationList,
    in_effect,
    normalize_reason,
    parse_certificate,
)
from xboot.service.settings import Settings
from xboot.service.storage.file import FileStore

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
CA_NAME = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "Rules CA")])


def _certificate(cn: str, serial: int, issuer: x509.Name = CA_NAME) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, cn)]))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


def _entry(kind: str, value: str, *, at: dt.datetime = NOW, number: int = 0, **extra) -> Revocation:
    return Revocation(
        id=f"{at:%Y%m%dT%H%M%S}{number:06d}Z-0000000{number % 10}",
        kind=kind,
        value=value,
        reason="keyCompromise",
        revoked_at=at,
        **extra,
    )


# -- each match alone -----------------------------------------------------------------------------------------


def test_a_certificate_is_matched_by_its_fingerprint_alone():
    certificate = _certificate("dev-a", 0xA1)
    hits = RevocationList.of([_entry("fingerprint", sha256_fingerprint(certificate))])
    assert hits.is_revoked(certificate, CA_NAME) is not None
    assert hits.is_revoked(certificate, None) is not None  # any issuer: a fingerprint names one certificate
    assert hits.is_revoked(_certificate("dev-a", 0xA1), CA_NAME) is None  # same name and serial, another cert


def test_a_certificate_of_our_ca_is_matched_by_its_serial_alone():
    certificate = _certificate("dev-b", 0xB2)
    hits = RevocationList.of([_entry("serial", "B2")])
    assert hits.is_revoked(certificate, CA_NAME) is not None
    assert hits.is_revoked(_certificate("dev-b", 0xB3), CA_NAME) is None
    foreign = _certificate("dev-b", 0xB2, x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "Other")]))
    assert hits.is_revoked(foreign, CA_NAME) is None  # serials are only unique per issuer
    assert hits.is_revoked(certificate, None) is None  # no CA of ours configured: no serial can be ours


def test_a_certificate_of_our_ca_is_matched_by_its_registration_id_alone():
    certificate = _certificate("Dev-C", 0xC3)
    hits = RevocationList.of([_entry("registrationId", "dev-c")])
    assert hits.is_revoked(certificate, CA_NAME) is not None  # case-insensitive, as DPS registration IDs
    assert hits.is_revoked(_certificate("dev-d", 0xC3), CA_NAME) is None
    assert hits.is_revoked(certificate, None) is None
    key = ec.generate_private_key(ec.SECP256R1())
    nameless = (  # no CN: nothing to compare with a registration ID
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.oid.NameOID.ORGANIZATION_NAME, "dev-c")]))
        .issuer_name(CA_NAME)
        .public_key(key.public_key())
        .serial_number(0xC4)
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    assert hits.is_revoked(nameless, CA_NAME) is None


def test_serials_a_registration_entry_resolved_are_indexed_too():
    hits = RevocationList.of([_entry("registrationId", "dev-e", serial_numbers=("E5", "E6"))])
    assert set(hits.by_serial) == {"E5", "E6"}
    assert hits.is_revoked(_certificate("renamed", 0xE6), CA_NAME) is not None


def test_an_audit_record_is_matched_by_each_of_its_fields():
    record = {"serialNumber": "F1", "sha256Fingerprint": "AB:CD", "registrationId": "Dev-F"}
    for entry in (_entry("serial", "F1"), _entry("fingerprint", "AB:CD"), _entry("registrationId", "dev-f")):
        assert RevocationList.of([entry]).for_record(record) == entry
    assert RevocationList.of([_entry("serial", "F2")]).for_record(record) is None


# -- which entry answers --------------------------------------------------------------------------------------


def test_the_entry_in_effect_first_answers_for_a_value():
    """A renewal's superseded entry taking effect tomorrow must not hide a keyCompromise in effect now."""
    now_entry = _entry("serial", "AA", at=NOW, number=1)
    later_entry = _entry("serial", "AA", at=NOW + dt.timedelta(days=1), number=2)
    assert now_entry.id < later_entry.id
    assert RevocationList.of([now_entry, later_entry]).by_serial["AA"] == now_entry
    earlier_effect = _entry("serial", "AB", at=NOW - dt.timedelta(days=1), number=4)
    later_id = _entry("serial", "AB", at=NOW - dt.timedelta(days=2), number=5)
    later_id = Revocation(**{**later_id.__dict__, "id": "29990101T000000000000Z-00000005"})
    assert RevocationList.of([earlier_effect, later_id]).by_serial["AB"] == later_id
    tie_first, tie_second = _entry("serial", "AC", number=6), _entry("serial", "AC", number=7)
    assert RevocationList.of([tie_second, tie_first]).by_serial["AC"] == tie_first  # oldest entry on a tie


def test_an_entry_takes_effect_at_its_time():
    future = _entry("serial", "BB", at=NOW + dt.timedelta(hours=1))
    assert in_effect(future, NOW) is None
    assert in_effect(future, NOW + dt.timedelta(hours=1)) == future
    assert in_effect(None, NOW) is None
    assert RevocationList.of([future]).is_revoked(_certificate("dev", 0xBB), CA_NAME) is None


def test_find_names_the_entry_of_that_kind_and_value():
    a, b = _entry("serial", "01", number=1), _entry("fingerprint", "01", number=2)
    hits = RevocationList.of([a, b])
    assert hits.find("fingerprint", "01") == b and hits.find("serial", "01") == a
    assert hits.find("serial", "02") is None


# -- reading entries ------------------------------------------------------------------------------------------


def _document(entry: Revocation) -> dict:
    return entry.to_json()


@pytest.mark.parametrize(
    "change",
    [{"kind": "nickname"}, {"reason": "boredom"}, {"serialNumbers": ["not-hex"]}, {"revokedAt": "yesterday"}],
)
def test_an_entry_is_read_only_when_every_field_is_valid(change):
    entry = _entry("serial", "C0", serial_numbers=("C0",))
    assert Revocation.parse(_document(entry), entry.key) == entry
    assert Revocation.parse({**_document(entry), **change}, entry.key) is None


def test_an_entry_is_read_only_under_its_own_key():
    entry = _entry("serial", "C1")
    assert Revocation.parse(_document(entry), f"{PREFIX}20000101T000000000000Z-00000000.json") is None


def test_remove_from_crl_is_refused_with_the_way_to_end_a_hold():
    with pytest.raises(BadRequest, match="a hold ends by deleting its certificateHold entry"):
        normalize_reason("removeFromCRL")
    with pytest.raises(BadRequest) as caught:
        normalize_reason("boredom")
    assert "a hold ends" not in caught.value.message


def test_a_certificate_to_revoke_is_pem_or_strict_base64_der():
    certificate = _certificate("dev-p", 0x70)
    der = certificate.public_bytes(serialization.Encoding.DER)
    pem = certificate.public_bytes(serialization.Encoding.PEM).decode()
    b64 = base64.b64encode(der).decode()
    assert parse_certificate(pem) == certificate
    assert parse_certificate(b64) == certificate
    with pytest.raises(BadRequest):
        parse_certificate(b64[:30] + "*" + b64[30:])


# -- the snapshot ---------------------------------------------------------------------------------------------


class CountingStore(FileStore):
    """A File store that counts listings and can forget an object between its listing and its read."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.listings = 0
        self.vanishing: set[str] = set()

    def list(self, prefix: str) -> list[str]:
        self.listings += 1
        return super().list(prefix)

    def read(self, key: str) -> bytes | None:
        return None if key in self.vanishing else super().read(key)


def _stored(store: FileStore, entry: Revocation) -> None:
    store.create(entry.key, json.dumps(entry.to_json()).encode())


def test_a_fresh_snapshot_is_served_without_listing_again(tmp_path):
    store = CountingStore(tmp_path)
    _stored(store, _entry("serial", "D1"))
    view = revocation._View()
    assert view.get(store, 300, fresh=False).find("serial", "D1") is not None
    listed = store.listings  # the entries once (no snapshot yet), and the change log's hour
    assert view.get(store, 300, fresh=False).find("serial", "D1") is not None
    assert store.listings == listed
    view.get(store, 300, fresh=True)
    assert listed < store.listings <= listed + 2  # the log's last hour or two, not the entries


def test_an_entry_deleted_between_listing_and_reading_is_skipped(tmp_path):
    store = CountingStore(tmp_path)
    kept, gone = _entry("serial", "D2", number=1), _entry("serial", "D3", number=2)
    _stored(store, kept)
    _stored(store, gone)
    store.vanishing.add(gone.key)
    snapshot = revocation._View().get(store, 300, fresh=True)
    assert snapshot.entries == (kept,)


# -- writing an entry: claims -----------------------------------------------------------------------------------


@pytest.fixture
def settings(app_env) -> Settings:
    return Settings.from_environ()


def _store(settings: Settings) -> FileStore:
    return revocation.open_data_store(settings)  # type: ignore[return-value]


def test_an_entry_made_before_claims_existed_is_found_not_duplicated(settings):
    """Entries an older version wrote without a claim (nor a change log): the first load reads them."""
    store = _store(settings)
    legacy = _entry("registrationId", "dev-legacy")
    legacy = Revocation(**{**legacy.__dict__, "reason": "cessationOfOperation"})
    _stored(store, legacy)
    entry, made = revocation.revoke(settings, "registrationId", "dev-legacy", "cessationOfOperation", NOW)
    assert entry == legacy and made is False
    assert store.list(revocation.CLAIMS) == []


@pytest.mark.parametrize("claimed", [b"not json", b'{"id": 5}', b'{"id": "../../elsewhere"}', b"{}"])
def test_an_unreadable_claim_is_a_503_not_an_entry(settings, claimed):
    store = _store(settings)
    target = revocation.Target("registrationId", "dev-claimed")
    store.create(revocation._claim_key(target), claimed)
    with pytest.raises(BackendUnavailable, match="unreadable"):
        revocation.revoke(settings, "registrationId", "dev-claimed", "keyCompromise", NOW)
    assert store.list(PREFIX) == []


def test_an_entry_that_cannot_be_read_back_is_a_503(settings, monkeypatch):
    store = _store(settings)
    real_read = type(store).read
    monkeypatch.setattr(type(store), "read", lambda self, key: None if key.startswith(PREFIX) else real_read(self, key))
    with pytest.raises(BackendUnavailable, match="inconsistent"):
        revocation.revoke(settings, "registrationId", "dev-unread", "keyCompromise", NOW)


def test_revoking_one_of_our_certificates_names_its_device(settings, functions, tmp_path):
    """By certificate: the audit record (same fingerprint) names the device; its serial goes into the CRL."""
    reply = functions.call(
        "POST", "/api/certificate", {"RegistrationId": "dev-named", "Csr": make_csr(tmp_path, "dev-named").b64}
    )
    assert reply.status == 200
    certificate = x509.load_der_x509_certificate(base64.b64decode(reply.json()["certificate"]))
    pem = certificate.public_bytes(serialization.Encoding.PEM).decode()
    entry, made = revocation.revoke(settings, "certificate", pem, "keyCompromise", NOW)
    assert made and entry.registration_id == "dev-named"
    assert entry.serial_numbers == (format(certificate.serial_number, "X"),)
