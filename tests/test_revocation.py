"""Revocation through the registered functions: the admin API, and its effect on reports, enrollment and EST."""

from __future__ import annotations

import base64
import datetime as dt
import json
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

import xboot.service.lifecycle.revocation
import xboot.service.storage.file
from tests.conftest import Functions, Reply
from tests.fixtures.report_pki import Pki, report_bytes
from tests.helpers import openssl
from xboot.pki import sha256_fingerprint
from xboot.service.serve import FunctionsWsgiApp, Keys
from xboot.service.settings import Settings
from xboot.service.storage import PerStore

REVOCATIONS = "/api/mgmt/v1/revocations"
CERTIFICATES = "/api/mgmt/v1/certificates"
SYSTEM = "/api/install/v1/system-reports"
EST = "/api/.well-known/est"
BOUNDARY = "------------------------d74496d66958873e"


@dataclass(frozen=True)
class Device:
    """A device enrolled through /api/certificate with an openssl-made key, as firmware would."""

    directory: Path
    registration_id: str
    certificate: x509.Certificate

    @property
    def key(self) -> Path:
        return self.directory / "device.key"

    @property
    def cert_path(self) -> Path:
        return self.directory / "device.crt"

    @property
    def serial(self) -> str:
        return format(self.certificate.serial_number, "X")

    @property
    def fingerprint(self) -> str:
        return sha256_fingerprint(self.certificate)

    @property
    def pem(self) -> str:
        return self.certificate.public_bytes(serialization.Encoding.PEM).decode()


def csr_b64(key: Path, registration_id: str) -> str:
    der = openssl("req", "-new", "-key", str(key), "-subj", f"/CN={registration_id}", "-outform", "DER")
    return base64.b64encode(der).decode()


def enroll_with(functions: Functions, key: Path, registration_id: str) -> Reply:
    return functions.call(
        "POST", "/api/certificate", {"RegistrationId": registration_id, "Csr": csr_b64(key, registration_id)}
    )


def enroll(functions: Functions, directory: Path, registration_id: str) -> Device:
    """A new key, a certificate, and the files a device keeps: device.key, device.crt, chain.pem, report.json."""
    directory.mkdir(parents=True)
    key = directory / "device.key"
    openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(key))
    reply = enroll_with(functions, key, registration_id)
    assert reply.status == 200, reply.body
    leaf, *chain = x509.load_pem_x509_certificates(reply.json()["certificateChain"].encode())
    (directory / "device.crt").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    (directory / "chain.pem").write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain))
    (directory / "report.json").write_bytes(report_bytes(gatewayId=registration_id))
    return Device(directory, registration_id, leaf)


def sign_report(device: Device) -> bytes:
    """The report guide's `openssl cms -sign -text`, with the chain the service returned."""
    return openssl("cms", "-sign", "-in", "report.json", "-signer", "device.crt", "-inkey", "device.key",
                   "-certfile", "chain.pem", "-text", cwd=device.directory)  # fmt: skip


def post_report(functions: Functions, message: bytes) -> Reply:
    """What `curl --form signedReport=@file` sends."""
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="signedReport"; filename="r.signed"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    )
    body = head.encode() + message + f"\r\n--{BOUNDARY}--\r\n".encode()
    return functions.call("POST", SYSTEM, body, {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})


def revoke(functions: Functions, **body: Any) -> Reply:
    return functions.call("POST", REVOCATIONS, body)


def refused(reply: Reply, status: int, code: str) -> str:
    """A JSON refusal with this status and code; its message."""
    assert reply.status == status, reply.body
    assert reply.mimetype == "application/json"
    document = reply.json()
    assert set(document) == {"error", "message"} and document["error"] == code, document
    assert "Traceback" not in document["message"]
    return document["message"]


def est_reenroll(functions: Functions, device: Device, new_key: Path) -> Reply:
    der = openssl("req", "-new", "-key", str(new_key), "-subj", f"/CN={device.registration_id}", "-outform", "DER")
    cert = base64.b64encode(device.certificate.public_bytes(serialization.Encoding.DER)).decode()
    return functions.call(
        "POST",
        f"{EST}/simplereenroll",
        base64.encodebytes(der),
        {"Content-Type": "application/pkcs10", "X-ARR-ClientCert": cert},
    )


def new_key(directory: Path, name: str = "new.key") -> Path:
    path = directory / name
    openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(path))
    return path


# -- the effects, per kind -----------------------------------------------------------------------------


SELECTORS = {
    "serial": lambda d: {"serialNumber": d.serial},
    "certificate": lambda d: {"certificate": d.pem},
    "registrationId": lambda d: {"registrationId": d.registration_id},
}


@pytest.mark.parametrize("kind", [*SELECTORS, "fingerprint"])
def test_a_revoked_certificate_cannot_sign_reports_or_re_enroll_through_est(
    kind, app_env, functions, tmp_path, monkeypatch
):
    monkeypatch.setenv("EstTrustForwardedClientCert", "true")
    device = enroll(functions, tmp_path / "device", f"dev-{kind.lower()}")
    report = sign_report(device)
    assert post_report(functions, report).status == 201  # a good report before
    body = SELECTORS[kind](device) if kind in SELECTORS else {"fingerprint": device.fingerprint}
    created = revoke(functions, **body, reason="keyCompromise")
    assert created.status == 201, created.body

    message = refused(post_report(functions, report), 422, "revoked")
    assert f"CN={device.registration_id}" in message and device.fingerprint in message and "keyCompromise" in message
    text = est_reenroll(functions, device, new_key(tmp_path))
    assert text.status == 401 and text.mimetype == "text/plain" and "revoked" in text.body.decode()


@pytest.mark.parametrize("kind", SELECTORS)
def test_a_revoked_certificate_cannot_be_renewed_with_its_key(kind, app_env, functions, tmp_path):
    """`xboot renew` re-enrolls with the same key: the key of a revoked certificate gets no new one."""
    device = enroll(functions, tmp_path / "device", f"dev-renew-{kind.lower()}")
    assert revoke(functions, **SELECTORS[kind](device), reason="privilegeWithdrawn").status == 201
    code = "registration_revoked" if kind == "registrationId" else "key_revoked"
    refused(enroll_with(functions, device.key, device.registration_id), 403, code)
    fresh = enroll_with(functions, new_key(tmp_path), device.registration_id)
    # A new key is a new certificate unless the device itself (its registration ID) is revoked.
    assert fresh.status == (403 if kind == "registrationId" else 200), fresh.body


def test_a_bare_fingerprint_is_enforced_where_the_certificate_is_presented_only(app_env, functions, tmp_path):
    """Not resolved to a serial or key (that would read every audit record): the CRL and enrollment are unaffected."""
    device = enroll(functions, tmp_path / "device", "dev-bare")
    entry = revoke(functions, fingerprint=device.fingerprint.replace(":", "").lower(), reason="unspecified").json()
    assert entry["kind"] == "fingerprint" and entry["value"] == device.fingerprint
    assert entry["serialNumbers"] == [] and entry["publicKeySha256"] == []
    assert enroll_with(functions, device.key, device.registration_id).status == 200
    refused(post_report(functions, sign_report(device)), 422, "revoked")


def test_superseded_keeps_the_key_usable(app_env, functions, tmp_path):
    """A renewal that reused the key, then the old certificate revoked as superseded: the device renews again."""
    device = enroll(functions, tmp_path / "device", "dev-superseded")
    assert enroll_with(functions, device.key, device.registration_id).status == 200  # renewed, same key
    assert revoke(functions, serialNumber=device.serial, reason="superseded").status == 201
    assert enroll_with(functions, device.key, device.registration_id).status == 200
    refused(post_report(functions, sign_report(device)), 422, "revoked")  # the old certificate itself is revoked


def test_a_revoked_registration_id_cannot_enroll_under_any_case_or_through_est(app_env, functions, tmp_path):
    assert revoke(functions, registrationId="Dev-Mixed.Case", reason="cessationOfOperation").status == 201
    message = refused(enroll_with(functions, new_key(tmp_path), "DEV-MIXED.CASE"), 403, "registration_revoked")
    assert "cessationOfOperation" in message
    der = openssl("req", "-new", "-key", str(new_key(tmp_path, "b.key")), "-subj", "/CN=dev-mixed.case",
                  "-outform", "DER")  # fmt: skip
    reply = functions.call(
        "POST", f"{EST}/simpleenroll", base64.encodebytes(der), {"Content-Type": "application/pkcs10"}
    )
    assert reply.status == 403 and "revoked" in reply.body.decode()
    assert not (Path(app_env["DataDirectory"]) / "certificates" / "dev-mixed.case").exists()


def test_registration_id_with_no_certificates_is_a_valid_block(app_env, functions, tmp_path):
    """Useful to stop a device that has not enrolled yet (a stolen unit, a cancelled order)."""
    entry = revoke(functions, registrationId="never-enrolled", reason="privilegeWithdrawn")
    assert entry.status == 201 and entry.json()["serialNumbers"] == []
    refused(enroll_with(functions, new_key(tmp_path), "never-enrolled"), 403, "registration_revoked")


# -- chains ----------------------------------------------------------------------------------------------


@pytest.fixture
def trusted_guide_root(app_env, functions: Functions, guide_pki: Pki) -> None:
    trust = "/api/mgmt/v1/tenant-config/soup.report.validation.trusted.cert.fingerprints"
    assert functions.call("POST", trust, {"value": [guide_pki.fingerprint("ca_root")]}).status == 200


@pytest.mark.parametrize("name", ["ca_intermediate", "ca_root"])
def test_a_revoked_ca_in_the_verified_chain_refuses_the_report(name, trusted_guide_root, functions, guide_pki):
    report = guide_pki.sign(report_bytes(timeStamp=f"chain-{name}"), "gateway")
    assert post_report(functions, report).status == 201
    assert revoke(functions, fingerprint=guide_pki.fingerprint(name), reason="cACompromise").status == 201
    message = refused(post_report(functions, report), 422, "revoked")
    subject = "CN=INTERMEDIATE" if name == "ca_intermediate" else "CN=ROOT"
    assert subject in message and guide_pki.fingerprint(name) in message and "cACompromise" in message


def test_serial_numbers_only_match_certificates_of_this_ca(trusted_guide_root, functions, guide_pki):
    """A foreign gateway with the same serial as one of ours is not revoked by it."""
    gateway = guide_pki.certificate("gateway")
    assert revoke(functions, serialNumber=format(gateway.serial_number, "X"), reason="keyCompromise").status == 201
    assert revoke(functions, registrationId=gateway.subject.rfc4514_string()[3:], reason="keyCompromise").status == 201
    assert post_report(functions, guide_pki.sign(report_bytes(timeStamp="foreign"), "gateway")).status == 201


# -- the admin API -------------------------------------------------------------------------------------------


def test_entries_are_normalised_listed_and_idempotent(app_env, functions, tmp_path):
    first = revoke(functions, serialNumber="00:0a:1B", reason="KEYCOMPROMISE")
    assert first.status == 201 and first.headers["Location"] == f"{REVOCATIONS}/{first.json()['id']}"
    entry = first.json()
    assert (entry["kind"], entry["value"], entry["reason"]) == ("serial", "A1B", "keyCompromise")
    assert entry["revokedAt"].endswith("Z") and entry["duplicate"] is False
    assert entry["registrationId"] is None  # not in the issuance records: still listed in the CRL
    again = revoke(functions, serialNumber="0xa1b", reason="keyCompromise")
    assert again.status == 200 and again.json()["id"] == entry["id"] and again.json()["duplicate"] is True
    message = refused(revoke(functions, serialNumber="A1B", reason="superseded"), 409, "already_revoked")
    assert entry["id"] in message
    hold = revoke(functions, registrationId="Some-Device")
    assert hold.status == 201 and hold.json()["value"] == "some-device" and hold.json()["reason"] == "unspecified"
    listed = functions.call("GET", REVOCATIONS).json()
    assert [e["id"] for e in listed["revocations"]] == [entry["id"], hold.json()["id"]]
    assert listed["continuationToken"] is None


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"serialNumber": "A1", "reason": "compromised"}, "invalid_reason"),
        ({"serialNumber": "A1", "reason": "removeFromCRL"}, "invalid_reason"),
        ({"serialNumber": "A1", "reason": 1}, "invalid_reason"),
        ({"serialNumber": "xyz"}, "invalid_serial"),
        ({"serialNumber": "00"}, "invalid_serial"),
        ({"serialNumber": "1" * 41}, "invalid_serial"),
        ({"serialNumber": 161}, "invalid_serial"),
        ({"fingerprint": "AB:CD"}, "invalid_fingerprint"),
        ({"registrationId": "bad id!"}, "invalid_registration_id"),
        ({"certificate": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----"}, "invalid_certificate"),
        ({"certificate": "not base64 !"}, "invalid_certificate"),
        ({"serialNumber": "A1", "registrationId": "dev"}, "invalid_revocation"),
        ({"reason": "keyCompromise"}, "invalid_revocation"),
    ],
)
def test_invalid_revocations_are_400_json(body, code, app_env, functions):
    refused(revoke(functions, **body), 400, code)
    assert functions.call("GET", REVOCATIONS).json()["revocations"] == []


def test_malformed_bodies_and_remove_from_crl(app_env, functions):
    message = refused(revoke(functions, serialNumber="A1", reason="removeFromCRL"), 400, "invalid_reason")
    assert "certificateHold" in message
    refused(functions.call("POST", REVOCATIONS, b"not json"), 400, "invalid_json")
    refused(functions.call("POST", REVOCATIONS, b"[]"), 400, "invalid_json")
    refused(functions.call("POST", REVOCATIONS, b"{" + b" " * 70_000 + b"}"), 413, "payload_too_large")


def test_a_hold_ends_and_enrollment_resumes_but_permanent_reasons_stay(app_env, functions, tmp_path):
    device = enroll(functions, tmp_path / "device", "dev-hold")
    hold = revoke(functions, registrationId="dev-hold", reason="certificateHold").json()
    refused(enroll_with(functions, device.key, "dev-hold"), 403, "registration_revoked")
    removed = functions.call("DELETE", f"{REVOCATIONS}/{hold['id']}")
    assert removed.status == 200 and removed.json()["id"] == hold["id"] and removed.json()["removed"] is True
    assert enroll_with(functions, device.key, "dev-hold").status == 200
    assert functions.call("GET", REVOCATIONS).json()["revocations"] == []

    permanent = revoke(functions, serialNumber=device.serial, reason="keyCompromise").json()
    message = refused(functions.call("DELETE", f"{REVOCATIONS}/{permanent['id']}"), 409, "not_on_hold")
    assert "keyCompromise" in message
    refused(functions.call("DELETE", f"{REVOCATIONS}/{hold['id']}"), 404, "not_found")  # already removed
    refused(functions.call("DELETE", f"{REVOCATIONS}/..%2F..%2Fcertificates"), 404, "not_found")
    assert [e["id"] for e in functions.call("GET", REVOCATIONS).json()["revocations"]] == [permanent["id"]]


def test_a_hold_can_become_permanent(app_env, functions):
    hold = revoke(functions, serialNumber="BEEF", reason="certificateHold").json()
    refused(revoke(functions, serialNumber="BEEF", reason="keyCompromise"), 409, "already_revoked")
    assert functions.call("DELETE", f"{REVOCATIONS}/{hold['id']}").status == 200
    assert revoke(functions, serialNumber="BEEF", reason="keyCompromise").status == 201


def test_listing_pages(app_env, functions):
    ids = [revoke(functions, serialNumber=f"{n + 1:X}").json()["id"] for n in range(5)]
    seen, token, pages = [], None, 0
    while True:
        query = "?limit=2" + (f"&continuationToken={token}" if token else "")
        page = functions.call("GET", REVOCATIONS + query).json()
        seen += [e["id"] for e in page["revocations"]]
        pages += 1
        token = page["continuationToken"]
        if token is None:
            break
    assert seen == ids and pages == 3
    refused(functions.call("GET", f"{REVOCATIONS}?limit=0"), 400, "invalid_query")
    refused(functions.call("GET", f"{REVOCATIONS}?continuationToken=xyz"), 400, "invalid_token")


def test_concurrent_revocations_lose_nothing(app_env, functions):
    serials = [f"{0xC0FFEE00 + n:X}" for n in range(50)]
    with ThreadPoolExecutor(50) as pool:
        replies = list(pool.map(lambda s: revoke(functions, serialNumber=s, reason="keyCompromise"), serials))
    assert [r.status for r in replies] == [201] * 50
    listed = functions.call("GET", f"{REVOCATIONS}?limit=1000").json()["revocations"]
    assert sorted(e["value"] for e in listed) == sorted(serials)
    assert len({e["id"] for e in listed}) == 50
    crl = x509.load_der_x509_crl(functions.call("GET", "/api/crl").body)
    assert sorted(format(r.serial_number, "X") for r in crl) == sorted(serials)


def test_only_admin_keys_manage_revocations_and_the_crl_is_public(app_env, functions, tmp_path):
    keyed = FunctionsWsgiApp(functions.table, Keys(function="device-key", admin="admin-key"))

    def call(method: str, path: str, key: str | None, body: bytes = b"") -> int:
        headers = {"x-functions-key": key} if key else {}
        return keyed.dispatch(method, f"http://localhost{path}", headers, body).status_code

    body = json.dumps({"serialNumber": "A1"}).encode()
    assert call("POST", REVOCATIONS, "device-key", body) == 401
    assert call("GET", REVOCATIONS, None) == 401
    assert call("DELETE", f"{REVOCATIONS}/x", "device-key") == 401
    assert call("GET", f"{CERTIFICATES}?registrationId=a", "device-key") == 401
    assert call("POST", REVOCATIONS, "admin-key", body) == 201
    assert call("GET", "/api/crl", None) == 200


# -- what a device was issued ---------------------------------------------------------------------------------


def test_certificates_of_a_device_with_revocation_flags(app_env, functions, tmp_path, monkeypatch):
    monkeypatch.setenv("IdentityLock", "false")  # three certificates of one ID at once: XBoot's rules
    device = enroll(functions, tmp_path / "device", "dev-audit")
    others = [enroll_with(functions, new_key(tmp_path, f"{n}.key"), "dev-audit").json() for n in range(2)]
    assert revoke(functions, serialNumber=device.serial, reason="keyCompromise").status == 201
    listing = functions.call("GET", f"{CERTIFICATES}?registrationId=DEV-AUDIT")
    assert listing.status == 200
    body = listing.json()
    assert body["registrationRevoked"] is None and body["continuationToken"] is None
    by_serial = {c["serialNumber"]: c for c in body["certificates"]}
    assert set(by_serial) == {device.serial, *(o["serialNumber"] for o in others)}
    assert by_serial[device.serial]["revoked"] is True
    assert by_serial[device.serial]["revocation"]["reason"] == "keyCompromise"
    assert by_serial[device.serial]["sha256Fingerprint"] == device.fingerprint
    assert by_serial[device.serial]["notAfter"] and by_serial[device.serial]["expired"] is False
    assert [by_serial[o["serialNumber"]]["revoked"] for o in others] == [False, False]

    assert revoke(functions, registrationId="dev-audit", reason="cessationOfOperation").status == 201
    body = functions.call("GET", f"{CERTIFICATES}?registrationId=dev-audit").json()
    assert body["registrationRevoked"]["reason"] == "cessationOfOperation"
    assert all(c["revoked"] for c in body["certificates"])

    first = functions.call("GET", f"{CERTIFICATES}?registrationId=dev-audit&limit=2").json()
    rest = functions.call(
        "GET", f"{CERTIFICATES}?registrationId=dev-audit&limit=2&continuationToken={first['continuationToken']}"
    ).json()
    assert len(first["certificates"]) == 2 and rest["continuationToken"] is None
    assert {c["serialNumber"] for c in first["certificates"] + rest["certificates"]} == set(by_serial)


@pytest.mark.parametrize(
    ("query", "code"),
    [("?status=lost", "invalid_query"), ("?expiringWithinDays=-1", "invalid_query"),
     ("?expiringWithinDays=99999999", "invalid_query"), ("?registrationId=bad%20id", "invalid_registration_id"),
     ("?registrationId=a&limit=x", "invalid_query"), ("?registrationId=a&continuationToken=zz", "invalid_token")],
)  # fmt: skip
def test_certificates_query_refusals(query, code, app_env, functions):
    refused(functions.call("GET", CERTIFICATES + query), 400, code)


def test_unknown_device_has_no_certificates(app_env, functions):
    body = functions.call("GET", f"{CERTIFICATES}?registrationId=nobody").json()
    assert body["certificates"] == [] and body["registrationRevoked"] is None


# -- caching and cost ----------------------------------------------------------------------------------------


def _entry_written_by_another_instance(app_env: dict[str, str], registration_id: str) -> None:
    """What a POST on another instance leaves in the shared store: this instance's snapshot does not know it."""
    now = dt.datetime.now(dt.UTC)
    entry = xboot.service.lifecycle.revocation.Revocation(
        id=xboot.service.lifecycle.revocation.new_id(now),
        kind="registrationId",
        value=registration_id,
        reason="keyCompromise",
        revoked_at=now.replace(microsecond=0),
    )
    store = xboot.service.storage.file.FileStore(Path(app_env["DataDirectory"]))
    assert store.create(entry.key, json.dumps(entry.to_json()).encode())
    xboot.service.lifecycle.revocation.log_change(store, "add", entry)


def test_other_processes_on_one_file_store_see_a_revocation_at_once(app_env, functions, tmp_path, monkeypatch):
    """`xboot serve`'s worker processes: the revocations folder's timestamp says the list changed."""
    monkeypatch.setenv("RevocationCacheSeconds", "300")
    key = new_key(tmp_path)
    assert enroll_with(functions, key, "dev-sibling").status == 200  # warms this process's snapshot
    _entry_written_by_another_instance(app_env, "dev-sibling")
    refused(enroll_with(functions, key, "dev-sibling"), 403, "registration_revoked")


def test_other_instances_see_a_revocation_within_the_cache_time(app_env, functions, tmp_path, monkeypatch):
    """Instances that share no change token (Blob): the snapshot's time to live bounds the delay."""
    monkeypatch.setattr(xboot.service.storage.file.FileStore, "folder_version", lambda self, prefix: None)
    monkeypatch.setenv("RevocationCacheSeconds", "30")
    key = new_key(tmp_path)
    assert enroll_with(functions, key, "dev-elsewhere").status == 200  # warms this instance's snapshot
    _entry_written_by_another_instance(app_env, "dev-elsewhere")
    assert enroll_with(functions, key, "dev-elsewhere").status == 200  # the documented delay
    clock = time.monotonic() + 31
    monkeypatch.setattr(xboot.service.lifecycle.revocation.time, "monotonic", lambda: clock)
    refused(enroll_with(functions, key, "dev-elsewhere"), 403, "registration_revoked")


def test_checks_per_request_do_not_touch_storage_listings(app_env, functions, tmp_path, monkeypatch):
    """Enrollment and report verification use the revocation snapshot: no revocation listing per request."""
    monkeypatch.setenv("RevocationCacheSeconds", "300")
    device = enroll(functions, tmp_path / "device", "dev-cost")
    assert revoke(functions, serialNumber="DEAD", reason="keyCompromise").status == 201
    report = sign_report(device)
    assert post_report(functions, report).status == 201
    listings = []
    real_list = xboot.service.storage.file.FileStore.list

    def counting_list(self, prefix, **kwargs):
        listings.append(prefix)
        return real_list(self, prefix, **kwargs)

    monkeypatch.setattr(xboot.service.storage.file.FileStore, "list", counting_list)
    for _ in range(5):
        assert enroll_with(functions, device.key, "dev-cost").status == 200
        assert post_report(functions, report).status == 200  # a repeat: verified, checked, found stored
    # Only the device's own audit records (identity lock, daily limit): never the revocations or the fleet.
    assert listings == ["certificates/dev-cost/"] * 5


def test_an_unreadable_entry_fails_closed(app_env, functions, tmp_path):
    folder = Path(app_env["DataDirectory"]) / "revocations"
    folder.mkdir(parents=True)
    (folder / "20260101T000000000000Z-00000000.json").write_text("{not json")
    message = refused(enroll_with(functions, new_key(tmp_path), "dev-any"), 500, "configuration_error")
    assert "revocations/20260101T000000000000Z-00000000.json" in message


def _fresh_instance(monkeypatch: pytest.MonkeyPatch) -> None:
    """A new process: no snapshot of the list yet."""
    revocation = xboot.service.lifecycle.revocation
    monkeypatch.setattr(revocation, "_views", PerStore(revocation._View))


def _counting_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    reads: list[str] = []
    real_read = xboot.service.storage.file.FileStore.read

    def counting_read(self, key):
        reads.append(key)
        return real_read(self, key)

    monkeypatch.setattr(xboot.service.storage.file.FileStore, "read", counting_read)
    return reads


def test_a_cold_instance_reads_the_snapshot_and_the_log_never_every_entry(app_env, functions, monkeypatch):
    revocation = xboot.service.lifecycle.revocation
    serials = [f"{0xD000 + n:X}" for n in range(40)]
    for serial in serials:
        assert revoke(functions, serialNumber=serial).status == 201
    settings = Settings.from_environ()
    _fresh_instance(monkeypatch)
    monkeypatch.setattr(revocation, "SNAPSHOT_AFTER", dt.timedelta(0))  # compact at once, not within the hour
    reads = _counting_reads(monkeypatch)
    first = revocation.load_revocations(settings)  # the (empty) snapshot the first revocation wrote, then 40 adds
    assert len(first.entries) == 40 and not [k for k in reads if k.startswith(revocation.PREFIX)]
    assert reads[0] == revocation.SNAPSHOT and len([k for k in reads if k.startswith(revocation.LOG)]) == 40
    _fresh_instance(monkeypatch)
    reads.clear()
    listings = []
    real_list = xboot.service.storage.file.FileStore.list
    monkeypatch.setattr(
        xboot.service.storage.file.FileStore,
        "list",
        lambda self, prefix: listings.append(prefix) or real_list(self, prefix),
    )
    second = revocation.load_revocations(settings)
    assert reads == [revocation.SNAPSHOT] and second.digest == first.digest  # the log's 40 are in the snapshot
    assert listings and all(p.startswith(revocation.LOG) for p in listings) and len(listings) <= 2  # an hour or two


def test_a_list_made_before_the_change_log_is_read_once_and_snapshotted(app_env, functions, monkeypatch):
    """An upgrade: entries with no log and no snapshot are read one by one, once; then the snapshot serves."""
    revocation = xboot.service.lifecycle.revocation
    for n in range(5):
        assert revoke(functions, serialNumber=f"{0xC000 + n:X}").status == 201
    data = Path(app_env["DataDirectory"])
    shutil.rmtree(data / "revocation-log")
    (data / "revocation-cache" / "snapshot.json").unlink(missing_ok=True)
    settings = Settings.from_environ()
    _fresh_instance(monkeypatch)
    reads = _counting_reads(monkeypatch)
    assert len(revocation.load_revocations(settings).entries) == 5
    assert len([k for k in reads if k.startswith(revocation.PREFIX)]) == 5
    _fresh_instance(monkeypatch)
    reads.clear()
    assert len(revocation.load_revocations(settings).entries) == 5 and reads == [revocation.SNAPSHOT]


def test_a_stale_or_damaged_snapshot_changes_nothing(app_env, functions, monkeypatch, tmp_path):
    """Removals and additions after the snapshot come from the log; a damaged snapshot is rebuilt."""
    revocation = xboot.service.lifecycle.revocation
    removed = revoke(functions, registrationId="dev-released", reason="certificateHold").json()
    kept = [revoke(functions, serialNumber=f"{0xE000 + n:X}").json()["id"] for n in range(3)]
    settings = Settings.from_environ()
    _fresh_instance(monkeypatch)
    monkeypatch.setattr(revocation, "SNAPSHOT_AFTER", dt.timedelta(0))
    revocation.load_revocations(settings)  # writes the snapshot with all 4
    monkeypatch.setattr(revocation, "SNAPSHOT_AFTER", dt.timedelta(hours=1))  # the later changes only in the log
    copy = Path(app_env["DataDirectory"]) / "revocation-cache" / "snapshot.json"
    assert removed["id"] in {e["id"] for e in json.loads(copy.read_text())["entries"]}
    assert functions.call("DELETE", f"{REVOCATIONS}/{removed['id']}").status == 200
    added = revoke(functions, registrationId="dev-added", reason="keyCompromise").json()
    _fresh_instance(monkeypatch)
    assert {e.id for e in revocation.load_revocations(settings).entries} == {*kept, added["id"]}
    assert enroll_with(functions, new_key(tmp_path), "dev-released").status == 200
    copy.write_text("{not json")
    _fresh_instance(monkeypatch)
    refused(enroll_with(functions, new_key(tmp_path, "b.key"), "dev-added"), 403, "registration_revoked")
    assert {e.id for e in revocation.load_revocations(settings).entries} == {*kept, added["id"]}


def test_a_revocation_whose_log_write_was_lost_is_logged_again_by_its_retry(app_env, functions, monkeypatch):
    """A writer that died between the entry and its log record: the retry finds the entry and logs it now."""
    revocation = xboot.service.lifecycle.revocation
    real = revocation.log_change
    monkeypatch.setattr(revocation, "log_change", lambda *args, **kwargs: (_ for _ in ()).throw(OSError("killed")))
    with pytest.raises(OSError):
        revocation.revoke(Settings.from_environ(), "serialNumber", "ABC1", "keyCompromise", dt.datetime.now(dt.UTC))
    monkeypatch.setattr(revocation, "log_change", real)
    _fresh_instance(monkeypatch)
    assert revocation.load_revocations(Settings.from_environ()).find("serial", "ABC1") is None  # not logged
    retry = revoke(functions, serialNumber="ABC1", reason="keyCompromise")
    assert retry.status == 200 and retry.json()["duplicate"]  # the first call's claim made the entry
    _fresh_instance(monkeypatch)
    assert revocation.load_revocations(Settings.from_environ()).find("serial", "ABC1").id == retry.json()["id"]


def test_an_expired_snapshot_is_served_while_another_request_refreshes_it(app_env, functions):
    assert revoke(functions, serialNumber="F00").status == 201
    settings = Settings.from_environ()
    store = xboot.service.lifecycle.revocation.open_data_store(settings)
    view = xboot.service.lifecycle.revocation._views.get(store)
    before = xboot.service.lifecycle.revocation.load_revocations(settings)
    view.expires = 0.0
    with view.lock:  # a refresh in progress elsewhere
        assert xboot.service.lifecycle.revocation.load_revocations(settings) is before  # no waiting
    view.invalidate()  # this instance changed the list: the next check must wait for the refresh
    lock = view.lock
    blocked = threading.Event()

    class Watched:  # the view's lock, telling when another thread asks for it
        def acquire(self, blocking: bool = True) -> bool:
            if blocking:
                blocked.set()
            return lock.acquire(blocking)

        def release(self) -> None:
            lock.release()

    view.lock = Watched()
    with lock:
        waiter = ThreadPoolExecutor(1).submit(xboot.service.lifecycle.revocation.load_revocations, settings)
        assert blocked.wait(5)  # it asked for the lock, blocking: it waits for the refresh
        assert not waiter.done()
    view.lock = lock
    assert waiter.result(timeout=5).digest == before.digest


def test_revoke_by_certificate_resolves_ours_and_keeps_foreign_ones_out_of_the_crl(
    app_env, functions, guide_pki, session_ca
):
    foreign = revoke(functions, certificate=guide_pki.path("gateway.crt").read_text(), reason="keyCompromise").json()
    assert foreign["kind"] == "fingerprint" and foreign["value"] == guide_pki.fingerprint("gateway")
    assert foreign["serialNumbers"] == [] and foreign["registrationId"] is None and foreign["publicKeySha256"]
    # Signed with this CA's key outside the service (no audit record, a CN that is no registration ID).
    ca_key = serialization.load_pem_private_key(session_ca.key.read_bytes(), None)
    ca_cert = x509.load_pem_x509_certificate(session_ca.certificate.read_bytes())
    offline = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "offline/unit 7")]))
        .issuer_name(ca_cert.subject)
        .public_key(ca_key.public_key())
        .serial_number(0x0FF11E)
        .not_valid_before(dt.datetime.now(dt.UTC) - dt.timedelta(days=1))
        .not_valid_after(dt.datetime.now(dt.UTC) + dt.timedelta(days=1))
        .sign(ca_key, hashes.SHA256())
    )
    ours = revoke(functions, certificate=offline.public_bytes(serialization.Encoding.PEM).decode()).json()
    assert ours["serialNumbers"] == ["FF11E"] and ours["registrationId"] is None
    crl = x509.load_der_x509_crl(functions.call("GET", "/api/crl").body)
    assert [format(r.serial_number, "X") for r in crl] == ["FF11E"]
