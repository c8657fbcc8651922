"""`xboot revoke / unrevoke / certificates / crl`, and a device's `xboot renew` and `upload-report` once revoked.

The app's routes run on waitress in this process (as `xboot serve` runs them) with function and admin
keys enforced; the commands run through `main()` over real HTTP.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import waitress
from cryptography import x509

from tests.fixtures.report_pki import fingerprint_of
from tests.helpers import CliRunner, openssl
from xboot.cli.common import EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_VERIFICATION
from xboot.device import XbootClient
from xboot.service.serve import FunctionsWsgiApp, Keys

FUNCTION_KEY = "device-key-123"
ADMIN_KEY = "admin-key-456"


@pytest.fixture
def cli(app_env, functions, capsys, monkeypatch) -> Iterator[CliRunner]:
    for name in ("XBOOT_URL", "XBOOT_FUNCTION_KEY", "XBOOT_ADMIN_KEY", "XBOOT_PFX_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    app = FunctionsWsgiApp(functions.table, Keys(function=FUNCTION_KEY, admin=ADMIN_KEY))
    server = waitress.create_server(app, host="127.0.0.1", port=0, threads=4)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    yield CliRunner(capsys, f"http://127.0.0.1:{server.effective_port}", FUNCTION_KEY, ADMIN_KEY)
    server.close()


def enroll(cli: CliRunner, directory: Path, registration_id: str) -> dict[str, Any]:
    return cli.json("enroll", *cli.device, "--registration-id", registration_id, "--out", str(directory))


def signed_report(cli: CliRunner, device: Path, gateway_id: str) -> Path:
    report = device / "report.json"
    report.write_text(json.dumps({"timeStamp": "1", "gatewayId": gateway_id, "values": []}))
    cli.json("sign-report", str(report), "--device", str(device))
    return device / "report.json.signed"


def test_revoked_device_cannot_upload_or_renew_until_its_hold_ends(cli: CliRunner, tmp_path: Path) -> None:
    device = tmp_path / "device"
    enrolled = enroll(cli, device, "cli-dev-1")
    signed = signed_report(cli, device, "cli-dev-1")
    assert cli.json("upload-report", *cli.device, str(signed), "--kind", "system")["kind"] == "system"

    entry = cli.json("revoke", *cli.admin, "--registration-id", "cli-dev-1", "--reason", "certificateHold")
    assert entry["kind"] == "registrationId" and entry["serialNumbers"] == [enrolled["serialNumber"]]

    refused = cli.json("upload-report", *cli.device, str(signed), "--kind", "system", expect=EXIT_REFUSED)
    assert refused["status"] == 422 and refused["error"] == "revoked"
    refused = cli.json("renew", *cli.device, "--out", str(device), "--force", expect=EXIT_REFUSED)
    assert refused["status"] == 403 and refused["error"] == "registration_revoked"
    refused = cli.json("renew", *cli.device, "--out", str(device), "--force", "--rekey", expect=EXIT_REFUSED)
    assert refused["error"] == "registration_revoked"

    listing = cli.json("certificates", *cli.admin, "--registration-id", "cli-dev-1")
    assert listing["registrationRevoked"]["reason"] == "certificateHold"
    assert [c["revoked"] for c in listing["certificates"]] == [True]

    removed = cli.json("unrevoke", *cli.admin, entry["id"])
    assert removed["removed"] is True
    renewed = cli.json("renew", *cli.device, "--out", str(device), "--force")
    assert renewed["renewed"] is True and renewed["serialNumber"] != enrolled["serialNumber"]


def test_revoke_by_certificate_file_blocks_renewal_with_its_key(cli: CliRunner, tmp_path: Path) -> None:
    device = tmp_path / "device"
    enrolled = enroll(cli, device, "cli-dev-2")
    entry = cli.json("revoke", *cli.admin, "--cert", str(device / "device.crt"), "--reason", "keyCompromise")
    assert entry["kind"] == "fingerprint" and entry["value"] == enrolled["sha256Fingerprint"]
    assert entry["serialNumbers"] == [enrolled["serialNumber"]] and entry["registrationId"] == "cli-dev-2"
    refused = cli.json("renew", *cli.device, "--out", str(device), "--force", expect=EXIT_REFUSED)
    assert refused["error"] == "key_revoked"
    # A new key is a new certificate; the revoked one stays revoked, and permanently so.
    assert cli.json("renew", *cli.device, "--out", str(device), "--force", "--rekey")["renewed"] is True
    refused = cli.json("unrevoke", *cli.admin, entry["id"], expect=EXIT_REFUSED)
    assert refused["status"] == 409 and refused["error"] == "not_on_hold"
    again = cli.json("revoke", *cli.admin, "--fingerprint", enrolled["sha256Fingerprint"].replace(":", ""),
                     "--reason", "keyCompromise")  # fmt: skip
    assert again["duplicate"] is True and again["id"] == entry["id"]


def test_human_output_of_revoke_list_and_certificates(cli: CliRunner, tmp_path: Path, session_ca) -> None:
    enrolled = enroll(cli, tmp_path / "device", "cli-dev-3")
    code, out, err = cli("revoke", *cli.admin, "--serial", enrolled["serialNumber"].lower(), "--reason", "superseded")
    assert code == EXIT_OK and out.startswith("revoked: ") and "superseded" in out and "device cli-dev-3" in out
    code, out, err = cli("revoke", *cli.admin, "--serial", "0A:BC")
    assert code == EXIT_OK and "is not in the issuance records" in err
    code, out, err = cli("revoke", *cli.admin, "--fingerprint", "AB" * 32)
    assert code == EXIT_OK and "not in the CRL" in err
    code, out, _ = cli("revoke", *cli.admin, "--list")
    lines = out.strip().splitlines()
    entries, counts = [line for line in lines if not line.startswith("  ")], [line.strip() for line in lines[3:]]
    assert code == EXIT_OK and len(entries) == 3 and "ABC" in out
    # Counted per CA: the two serials are this CA's (by its fingerprint), the bare fingerprint is nobody's.
    assert sorted(counts) == sorted(
        [f"2 entries: {fingerprint_of(session_ca.certificate)}", "1 entries: no CA (by fingerprint)"]
    )
    code, out, _ = cli("certificates", *cli.admin, "--registration-id", "cli-dev-3")
    assert code == EXIT_OK and enrolled["serialNumber"] in out and "revoked (superseded)" in out
    code, out, _ = cli("certificates", *cli.admin, "--registration-id", "nobody")
    assert code == EXIT_OK and "no certificates recorded for nobody" in out


def test_revoke_refusals_and_usage(cli: CliRunner) -> None:
    refused = cli.json("revoke", *cli.admin, "--serial", "xyz", expect=EXIT_REFUSED)
    assert refused["status"] == 400 and refused["error"] == "invalid_serial"
    refused = cli.json("revoke", *cli.admin, "--serial", "A1", "--reason", "removeFromCRL", expect=EXIT_REFUSED)
    assert refused["error"] == "invalid_reason"
    code, _, err = cli("revoke", "--url", cli.url, "--serial", "A1")  # no admin key, a server that wants one
    assert code == EXIT_REFUSED and "401" in err and "--admin-key or XBOOT_ADMIN_KEY" in err
    with pytest.raises(SystemExit) as usage:  # argparse: one of --serial/--fingerprint/... is required
        cli("revoke", *cli.admin)
    assert usage.value.code == EXIT_USAGE
    refused = cli.json("revoke", "--url", cli.url, "--admin-key", FUNCTION_KEY, "--serial", "A1", expect=EXIT_REFUSED)
    assert refused["status"] == 401


def test_crl_download_verifies_against_the_issuer(cli: CliRunner, tmp_path: Path, session_ca) -> None:
    enrolled = enroll(cli, tmp_path / "device", "cli-dev-4")
    cli.json("revoke", *cli.admin, "--registration-id", "cli-dev-4", "--reason", "keyCompromise")
    out = tmp_path / "crl.pem"
    document = cli.json("crl", "--url", cli.url, "--out", str(out), "--pem", "--issuer", str(session_ca.certificate))
    assert document["revoked"] == [enrolled["serialNumber"]] and document["signatureVerified"] is True
    assert out.read_bytes().startswith(b"-----BEGIN X509 CRL-----")
    text = openssl("crl", "-in", str(out), "-noout", "-text").decode()
    assert enrolled["serialNumber"] in text and "Key Compromise" in text
    refused = cli.json("crl", "--url", cli.url, "--issuer", str(session_ca.root_certificate), expect=EXIT_VERIFICATION)
    assert "not signed" in refused["message"]


def test_client_library_follows_pages(cli: CliRunner, tmp_path: Path, monkeypatch) -> None:
    import xboot.service.http.lifecycle

    monkeypatch.setattr(xboot.service.http.lifecycle, "DEFAULT_PAGE", 2)
    client = XbootClient(cli.url, admin_key=ADMIN_KEY)
    created = [client.revoke("serialNumber", f"{n + 1:X}", "unspecified")["id"] for n in range(5)]
    assert [e["id"] for e in client.revocations()] == created
    enroll(cli, tmp_path / "device", "cli-dev-5")
    for _ in range(2):
        cli.json("renew", *cli.device, "--out", str(tmp_path / "device"), "--force", "--rekey")
    assert len(client.certificates("cli-dev-5")["certificates"]) == 3
    assert isinstance(client.crl(), x509.CertificateRevocationList)


@pytest.mark.parametrize(
    ("option", "code"),
    [("--serial", "key_revoked"), ("--cert", "key_revoked"), ("--registration-id", "registration_revoked")],
)
def test_xboot_renew_is_refused_after_revoking_by_each_option(
    option: str, code: str, cli: CliRunner, tmp_path: Path
) -> None:
    device = tmp_path / "device"
    registration_id = f"cli-renew{option.replace('-', '')}"
    enrolled = enroll(cli, device, registration_id)
    value = {
        "--serial": enrolled["serialNumber"],
        "--cert": str(device / "device.crt"),
        "--registration-id": registration_id,
    }[option]
    cli.json("revoke", *cli.admin, option, value, "--reason", "keyCompromise")
    before = (device / "device.crt").read_bytes()
    refused = cli.json("renew", *cli.device, "--out", str(device), "--force", expect=EXIT_REFUSED)
    assert refused["status"] == 403 and refused["error"] == code
    assert (device / "device.crt").read_bytes() == before and not (device / "device.crt.bak").exists()
