"""The CRL at /api/crl: what openssl makes of it, when it is rebuilt, and who signs it."""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

import xboot.service.ca.crl
import xboot.service.storage.file
from tests.backend_helpers import CaFiles
from tests.conftest import Functions
from tests.fixtures.keyvault_double import VaultHarness
from tests.fixtures.xboot_pki import OpensslCa
from tests.test_revocation import REVOCATIONS, Device, enroll, enroll_with, refused, revoke
from xboot.service.ca.signer import clear_signer_cache
from xboot.service.settings import Settings

CRL = "/api/crl"


def fetch(functions: Functions) -> x509.CertificateRevocationList:
    reply = functions.call("GET", CRL)
    assert reply.status == 200, reply.body
    assert reply.mimetype == "application/pkix-crl"
    return x509.load_der_x509_crl(reply.body)


def number(crl: x509.CertificateRevocationList) -> int:
    return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


def serials(crl: x509.CertificateRevocationList) -> set[str]:
    return {format(r.serial_number, "X") for r in crl}


def run_openssl(*args: str) -> tuple[int, str]:
    """openssl's exit code and everything it printed (`crl -verify` reports on stderr)."""
    result = subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)
    return result.returncode, result.stdout + result.stderr


def verify_leaf(device: Device, crl_pem: Path, root: Path, issuing: Path) -> tuple[int, str]:
    return run_openssl("verify", "-crl_check", "-CRLfile", str(crl_pem), "-CAfile", str(root),
                       "-untrusted", str(issuing), str(device.cert_path))  # fmt: skip


def use_openssl_ca(monkeypatch: pytest.MonkeyPatch, ca: OpensslCa) -> tuple[Path, Path]:
    """Location File on a CA the XBoot README's openssl steps made; (root, issuing CA) paths."""
    monkeypatch.setenv("CertificateFile", str(ca.cert))
    monkeypatch.setenv("PrivateKeyFile", str(ca.key))
    monkeypatch.setenv("CertificateChainFile", str(ca.root_cert))
    clear_signer_cache()
    return ca.root_cert, ca.cert


@pytest.mark.parametrize("ca_name", ["development-ec", "readme-rsa"])
def test_openssl_verifies_the_crl_and_finds_exactly_the_revoked_certificates(
    ca_name, app_env, functions, session_ca, tmp_path, monkeypatch, request
):
    root, issuing = session_ca.root_certificate, session_ca.certificate
    if ca_name == "readme-rsa":
        root, issuing = use_openssl_ca(monkeypatch, request.getfixturevalue("rsa_ca"))
    devices = {name: enroll(functions, tmp_path / name, f"dev-{name}") for name in ("good", "bad", "held", "plain")}
    assert revoke(functions, serialNumber=devices["bad"].serial, reason="keyCompromise").status == 201
    assert revoke(functions, registrationId="dev-held", reason="certificateHold").status == 201
    assert revoke(functions, certificate=devices["plain"].pem, reason="unspecified").status == 201

    reply = functions.call("GET", CRL)
    assert reply.status == 200 and reply.mimetype == "application/pkix-crl"
    assert reply.headers["Cache-Control"] == "public, max-age=30"
    der = tmp_path / "crl.der"
    der.write_bytes(reply.body)
    code, out = run_openssl("crl", "-inform", "DER", "-in", str(der), "-CAfile", str(issuing), "-noout", "-verify")
    assert code == 0 and "verify OK" in out, out
    text = run_openssl("crl", "-inform", "DER", "-in", str(der), "-noout", "-text")[1]
    assert "Key Compromise" in text and "Certificate Hold" in text and "Unspecified" not in text
    assert re.search(r"CRL Number:\s*\n\s*1\n", text), text
    assert "Authority Key Identifier" in text
    pem = tmp_path / "crl.pem"
    assert run_openssl("crl", "-inform", "DER", "-in", str(der), "-out", str(pem))[0] == 0

    for name in ("bad", "held", "plain"):
        code, out = verify_leaf(devices[name], pem, root, issuing)
        assert code != 0 and "error 23" in out and "certificate revoked" in out, (name, out)
    code, out = verify_leaf(devices["good"], pem, root, issuing)
    assert code == 0 and out.strip().endswith("OK"), out
    assert serials(x509.load_der_x509_crl(reply.body)) == {devices[n].serial for n in ("bad", "held", "plain")}


def test_the_crl_number_grows_only_when_the_list_changes(app_env, functions, tmp_path):
    empty = fetch(functions)
    assert number(empty) == 1 and len(empty) == 0
    assert functions.call("GET", CRL).body == empty.public_bytes(serialization.Encoding.DER)  # nothing rebuilt
    device = enroll(functions, tmp_path / "d", "dev-number")
    hold = revoke(functions, serialNumber=device.serial, reason="certificateHold").json()
    held = fetch(functions)
    assert number(held) == 2 and serials(held) == {device.serial}
    assert held.get_revoked_certificate_by_serial_number(device.certificate.serial_number).revocation_date_utc == (
        dt.datetime.fromisoformat(hold["revokedAt"])
    )
    assert functions.call("DELETE", f"{REVOCATIONS}/{hold['id']}").status == 200
    released = fetch(functions)
    assert number(released) == 3 and len(released) == 0


def test_next_update_follows_the_setting(app_env, functions, monkeypatch):
    monkeypatch.setenv("CrlValidityHours", "6")
    before = dt.datetime.now(dt.UTC)
    crl = fetch(functions)
    assert (
        dt.timedelta(hours=6) - dt.timedelta(seconds=5)
        <= crl.next_update_utc - before
        <= dt.timedelta(hours=6, seconds=5)
    )
    assert before - dt.timedelta(minutes=6) <= crl.last_update_utc <= before  # backdated for verifiers' clock skew
    monkeypatch.setenv("CrlValidityHours", "48")
    longer = fetch(functions)
    assert number(longer) == number(crl) + 1
    assert longer.next_update_utc - before >= dt.timedelta(hours=48, seconds=-1)  # DER times are whole seconds
    monkeypatch.setenv("CrlValidityHours", "0")
    assert "CrlValidityHours" in refused(functions.call("GET", CRL), 500, "configuration_error")


def test_a_crl_half_way_to_its_next_update_is_rebuilt(app_env, functions):
    settings = Settings.from_environ()
    now = dt.datetime.now(dt.UTC)
    first = xboot.service.ca.crl.published_crl(settings, now)
    assert xboot.service.ca.crl.published_crl(settings, now + dt.timedelta(hours=11)).number == first.number
    later = xboot.service.ca.crl.published_crl(settings, now + dt.timedelta(hours=12, seconds=1))
    assert later.number == first.number + 1
    assert x509.load_der_x509_crl(later.der).next_update_utc >= now + dt.timedelta(hours=36)


def _record(app_env: dict[str, str], registration_id: str, serial: str) -> None:
    """An audit record as an instance whose revocation snapshot was still stale would have written it."""
    folder = Path(app_env["DataDirectory"]) / "certificates" / registration_id
    real = json.loads(next(folder.glob("*.json")).read_text())  # the same CA: the same issuer fields
    issuer = {name: real[name] for name in ("issuer", "issuerSha256Fingerprint")}
    (folder / f"{serial}.json").write_text(json.dumps({"registrationId": registration_id, "serialNumber": serial,
                                                       **issuer}))  # fmt: skip


def test_registration_revocations_catch_what_stale_instances_issued(app_env, functions, tmp_path):
    device = enroll(functions, tmp_path / "d", "dev-late")
    entry = revoke(functions, registrationId="dev-late", reason="keyCompromise").json()
    settings = Settings.from_environ()
    revoked_at = dt.datetime.fromisoformat(entry["revokedAt"])
    settle = dt.timedelta(seconds=30 + xboot.service.ca.crl.IN_FLIGHT_SECONDS)
    first = xboot.service.ca.crl.published_crl(settings, revoked_at)
    assert serials(x509.load_der_x509_crl(first.der)) == {device.serial}
    _record(app_env, "dev-late", "ABC123")
    assert xboot.service.ca.crl.published_crl(settings, revoked_at + dt.timedelta(seconds=10)).number == first.number
    settled = xboot.service.ca.crl.published_crl(settings, revoked_at + settle + dt.timedelta(seconds=1))
    assert settled.number == first.number + 1
    assert serials(x509.load_der_x509_crl(settled.der)) == {device.serial, "ABC123"}
    # Once settled, later rebuilds reuse the serials instead of listing the device's records again.
    _record(app_env, "dev-late", "DEF456")
    rebuilt = xboot.service.ca.crl.published_crl(settings, revoked_at + dt.timedelta(hours=13))
    assert rebuilt.number == settled.number + 1 and "DEF456" not in serials(x509.load_der_x509_crl(rebuilt.der))


def test_concurrent_fetches_after_a_change_build_one_crl_and_old_ones_are_pruned(app_env, functions):
    for n in range(6):
        assert revoke(functions, serialNumber=f"{0xA0 + n:X}").status == 201
        with ThreadPoolExecutor(8) as pool:
            bodies = set(pool.map(lambda _: functions.call("GET", CRL).body, range(8)))
        assert len(bodies) == 1
        assert number(x509.load_der_x509_crl(bodies.pop())) == n + 1
    stored = sorted(p.name for p in (Path(app_env["DataDirectory"]) / "crl").iterdir())
    assert stored == [f"{n:020d}.json" for n in (4, 5, 6)]


def test_a_number_taken_by_another_instance_is_skipped(app_env, functions, monkeypatch):
    assert number(fetch(functions)) == 1
    assert revoke(functions, serialNumber="B0B").status == 201
    real_create = xboot.service.storage.file.FileStore.create
    raced = []

    def create_after_another_instance(self, key, data):
        if key.startswith("crl/") and not raced:  # another instance publishes this number first
            raced.append(key)
            assert real_create(self, key, json.dumps({"number": 2, "source": "elsewhere"}).encode())
        return real_create(self, key, data)

    monkeypatch.setattr(xboot.service.storage.file.FileStore, "create", create_after_another_instance)
    crl = fetch(functions)
    assert raced == [xboot.service.ca.crl.crl_key(2)] and number(crl) == 3 and serials(crl) == {"B0B"}


@pytest.mark.parametrize("ca_fixture", ["ec_ca", "rsa_ca"])
def test_keyvaultkey_signs_the_crl_inside_key_vault(
    ca_fixture, app_env, vault: VaultHarness, functions, monkeypatch, tmp_path, request
):
    openssl_ca: OpensslCa = request.getfixturevalue(ca_fixture)
    ca = CaFiles.load(openssl_ca)
    vault.double.add_certificate("xboot-issuing-ca", ca.certificate, ca.key, exportable=False, hsm=True)
    for name in ("PrivateKeyFile", "CertificateChainFile"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("Location", "KeyVaultKey")
    monkeypatch.setenv("KeyVaultName", "xboot-test")
    monkeypatch.setenv("CertificateFile", "xboot-issuing-ca")
    assert revoke(functions, serialNumber="C0FFEE", reason="keyCompromise").status == 201

    reply = functions.call("GET", CRL)
    assert reply.status == 200, reply.body
    der = tmp_path / "crl.der"
    der.write_bytes(reply.body)
    code, out = run_openssl(
        "crl", "-inform", "DER", "-in", str(der), "-CAfile", str(openssl_ca.cert), "-noout", "-verify"
    )
    assert code == 0 and "verify OK" in out, out
    assert serials(x509.load_der_x509_crl(reply.body)) == {"C0FFEE"}
    assert vault.double.count("POST", "/keys/xboot-issuing-ca/") == 1  # one remote signature per CRL
    assert functions.call("GET", CRL).body == reply.body and vault.double.count("POST", "/keys/") == 1


def test_keyvaultkey_refuses_to_publish_a_crl_that_does_not_verify(
    app_env, vault: VaultHarness, functions, monkeypatch, ec_ca
):
    ca = CaFiles.load(ec_ca)
    vault.double.add_certificate("xboot-issuing-ca", ca.certificate, ca.key, exportable=False)
    vault.double.bad_signatures = True
    for name in ("PrivateKeyFile", "CertificateChainFile"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("Location", "KeyVaultKey")
    monkeypatch.setenv("KeyVaultName", "xboot-test")
    monkeypatch.setenv("CertificateFile", "xboot-issuing-ca")
    assert "does not verify" in refused(functions.call("GET", CRL), 500, "configuration_error")
    assert not (Path(app_env["DataDirectory"]) / "crl").exists()


def test_revocations_and_crl_on_blob_storage(
    app_env, azurite, azure_caches, functions, monkeypatch, tmp_path, session_ca
):
    """DataStore Blob (Azurite): concurrent creates, the incremental refresh and CRL number claims on real blobs."""
    monkeypatch.delenv("DataDirectory")
    monkeypatch.setenv("DataStore", "Blob")
    monkeypatch.setenv("DataBlobConnectionString", azurite.connection_string)
    monkeypatch.setenv("DataBlobContainer", f"revocations-{tmp_path.name.lower().replace('_', '-')[-40:]}")
    device = enroll(functions, tmp_path / "d", "blob-device")
    assert number(fetch(functions)) == 1
    wanted = [f"{0xB10B00 + n:X}" for n in range(20)]
    with ThreadPoolExecutor(10) as pool:
        statuses = list(pool.map(lambda s: revoke(functions, serialNumber=s).status, wanted))
    assert statuses == [201] * 20
    hold = revoke(functions, registrationId="blob-device", reason="certificateHold").json()
    refused(enroll_with(functions, device.key, "blob-device"), 403, "registration_revoked")
    crl = fetch(functions)
    assert number(crl) == 2 and serials(crl) == {*wanted, device.serial}
    assert crl.is_signature_valid(x509.load_pem_x509_certificate(session_ca.certificate.read_bytes()).public_key())
    assert functions.call("DELETE", f"{REVOCATIONS}/{hold['id']}").status == 200
    assert enroll_with(functions, device.key, "blob-device").status == 200
    assert serials(fetch(functions)) == set(wanted)


def test_an_unreadable_newest_crl_is_replaced_by_a_higher_number(app_env, functions):
    assert number(fetch(functions)) == 1
    folder = Path(app_env["DataDirectory"]) / "crl"
    (folder / xboot.service.ca.crl.crl_key(7).removeprefix("crl/")).write_text("{damaged")
    (folder / "notes.txt").write_text("not a CRL")
    assert revoke(functions, serialNumber="7E57").status == 201
    crl = fetch(functions)
    assert number(crl) == 8 and serials(crl) == {"7E57"}


def test_a_rebuilt_crl_carries_each_entry_as_it_is_now(app_env):
    """Entries stay built between CRLs (a rebuild at 100k revocations builds only what changed): a serial
    whose reason or date changed is built anew, and one no longer revoked is gone."""
    from xboot.service.ca.crl import build_crl
    from xboot.service.ca.signer import load_signer
    from xboot.service.lifecycle.revocation import Revocation, RevocationList, new_id

    signer = load_signer(Settings.from_environ())
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)

    def entry(serial: str, reason: str, days_ago: int) -> Revocation:
        return Revocation(id=new_id(now - dt.timedelta(days=days_ago)), kind="serial", value=serial, reason=reason,
                          revoked_at=now - dt.timedelta(days=days_ago), serial_numbers=(serial,),
                          issuer=signer.fingerprint)  # fmt: skip

    def listed(*entries: Revocation) -> dict[str, tuple[dt.datetime, x509.ReasonFlags | None]]:
        crl = build_crl(signer, RevocationList.of(entries), {}, 1, now, now + dt.timedelta(hours=1), now)
        assert crl.is_signature_valid(signer.certificate.public_key())
        found = {}
        for revoked in crl:
            try:
                reason = revoked.extensions.get_extension_for_class(x509.CRLReason).value.reason
            except x509.ExtensionNotFound:
                reason = None
            found[format(revoked.serial_number, "X")] = (revoked.revocation_date_utc, reason)
        return found

    day = dt.timedelta(days=1)
    assert listed(entry("A1", "keyCompromise", 2), entry("B2", "superseded", 3)) == {
        "A1": (now - 2 * day, x509.ReasonFlags.key_compromise),
        "B2": (now - 3 * day, x509.ReasonFlags.superseded),
    }
    assert listed(entry("A1", "affiliationChanged", 2)) == {"A1": (now - 2 * day, x509.ReasonFlags.affiliation_changed)}
    assert listed(entry("A1", "affiliationChanged", 4), entry("C3", "unspecified", 1)) == {
        "A1": (now - 4 * day, x509.ReasonFlags.affiliation_changed),
        "C3": (now - day, None),
    }
