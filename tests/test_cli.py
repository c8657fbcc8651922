"""The `xboot` device and operator commands, end to end against `xboot serve` over real HTTP.

What the commands produce is checked with the openssl CLI: `openssl verify` for the
enrolled certificate, `openssl cms -verify` for signed reports, `openssl pkcs12` for
the PFX. Most runs call `main()` in-process (same code, faster); a few run
`python -m xboot` to check the real exit codes.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from tests.fixtures.live_server import ROOT, LiveServer, free_port
from tests.helpers import CliRunner, openssl
from xboot.cli.common import (
    EXIT_LOCAL,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_SIMULATION_FAILURES,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    EXIT_VERIFICATION,
)
from xboot.device import XbootClient
from xboot.service.ca.devca import create_development_ca

PFX_PASSWORD = "pfx-Pa55-word"
SYSTEM_REPORT = {
    "timeStamp": "1684201667",
    "gatewayId": "{gateway}",
    "values": [{"Id": "1", "ModuleSerialNumber": "m1.1"}, {"Id": "2", "ModuleSerialNumber": "gw1"}],
}


@pytest.fixture(autouse=True)
def _no_client_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("XBOOT_URL", "XBOOT_FUNCTION_KEY", "XBOOT_ADMIN_KEY", "XBOOT_PFX_PASSWORD"):
        monkeypatch.delenv(name, raising=False)


class Cli(CliRunner):
    """The CLI against the session's live server."""

    def __init__(self, capsys: pytest.CaptureFixture[str], server: LiveServer) -> None:
        super().__init__(capsys, server.url, server.function_key, server.admin_key)
        self.server = server

    def enroll(self, directory: Path, registration_id: str, *extra: str) -> dict[str, Any]:
        return self.json("enroll", *self.device, "--registration-id", registration_id, "--out", str(directory), *extra)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], live_server: LiveServer) -> Cli:
    return Cli(capsys, live_server)


def run_module(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "xboot", *argv],
        cwd=ROOT,
        env={**environment, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def openssl_verify(server: LiveServer, directory: Path) -> None:
    out = openssl(
        "verify",
        "-CAfile",
        str(server.ca.root_certificate),
        "-untrusted",
        str(directory / "chain.pem"),
        str(directory / "device.crt"),
    )
    assert out.strip().endswith(b": OK")


def write_report(path: Path, gateway: str) -> Path:
    path.write_text(json.dumps(SYSTEM_REPORT, indent=1).replace("{gateway}", gateway) + "\n")
    return path


# -- enroll --------------------------------------------------------------------------------------


def test_enroll_writes_a_verified_identity_that_openssl_accepts(cli: Cli, tmp_path: Path) -> None:
    device = tmp_path / "dev-enroll-1"
    argv = [*cli.device, "--registration-id", "dev-enroll-1", "--out", str(device), "--pfx-password", PFX_PASSWORD]
    code, out, err = cli("enroll", *argv, "--json")
    assert code == EXIT_OK, err
    assert PFX_PASSWORD not in out + err and str(cli.server.function_key) not in out + err
    result = json.loads(out)
    assert result["registrationId"] == "dev-enroll-1"
    assert result["issuer"] == "CN=xboot development intermediate CA"
    openssl_verify(cli.server, device)
    assert (device / "device.key").stat().st_mode & 0o777 == 0o600
    assert (device / "device.pfx").stat().st_mode & 0o777 == 0o600
    pfx_certs = openssl("pkcs12", "-in", str(device / "device.pfx"), "-passin", f"pass:{PFX_PASSWORD}", "-nokeys")
    assert b"subject=CN = dev-enroll-1" in pfx_certs and b"subject=CN = xboot development root CA" in pfx_certs
    printed = openssl("x509", "-in", str(device / "device.crt"), "-noout", "-serial", "-fingerprint", "-sha256")
    # openssl pads the serial to whole bytes; xboot writes it without leading zeros: the same number.
    openssl_serial = next(line for line in printed.decode().splitlines() if line.startswith("serial="))
    assert int(openssl_serial.removeprefix("serial="), 16) == int(result["serialNumber"], 16)
    assert result["sha256Fingerprint"].encode() in printed
    # The service recorded what it issued; the key was never sent.
    audit = cli.server.data_dir / "certificates" / "dev-enroll-1" / f"{result['serialNumber']}.json"
    assert audit.exists()
    key_pem = (device / "device.key").read_text()
    assert key_pem.splitlines()[1] not in cli.server.log()
    code, out, _ = cli("fingerprint", str(device / "device.crt"))
    assert code == EXIT_OK and out.strip() == result["sha256Fingerprint"]


def test_enroll_rsa_and_human_output(cli: Cli, tmp_path: Path) -> None:
    device = tmp_path / "dev-rsa"
    code, out, err = cli(
        "enroll", *cli.device, "--registration-id", "dev-rsa", "--key-type", "rsa-2048", "--out", str(device)
    )
    assert code == EXIT_OK, err
    assert out.startswith("enrolled: certificate ") and "device.key, device.crt, chain.pem" in out
    assert "... generating the device key (rsa-2048)" in err
    openssl_verify(cli.server, device)
    assert b"Public-Key: (2048 bit)" in openssl("x509", "-in", str(device / "device.crt"), "-noout", "-text")


def test_enroll_does_not_overwrite_an_identity(cli: Cli, tmp_path: Path) -> None:
    device = tmp_path / "dev-twice"
    first = cli.enroll(device, "dev-twice")
    refused = cli.json("enroll", *cli.device, "--registration-id", "dev-twice", "--out", str(device), expect=EXIT_LOCAL)
    assert "already holds a device identity" in refused["message"]
    # --force makes a new key: the identity lock refuses a second device for an ID that holds a valid
    # certificate, and nothing is written. Renewal (signed with the current certificate) is the way.
    before = (device / "device.crt").read_bytes()
    locked = cli.json("enroll", *cli.device, "--registration-id", "dev-twice", "--out", str(device), "--force",
                      expect=EXIT_REFUSED)  # fmt: skip
    assert locked["status"] == 409 and locked["error"] == "identity_exists" and "renew" in locked["message"]
    assert (device / "device.crt").read_bytes() == before and not (device / "device.crt.bak").exists()
    renewed = cli.json("renew", *cli.device, "--out", str(device), "--force")
    assert renewed["serialNumber"] != first["serialNumber"]
    backup = x509.load_pem_x509_certificate((device / "device.crt.bak").read_bytes())
    assert format(backup.serial_number, "X") == first["serialNumber"]


def test_enroll_pinned_to_another_root_writes_nothing(cli: Cli, tmp_path: Path) -> None:
    other = create_development_ca(tmp_path / "other-ca")
    device = tmp_path / "dev-pinned"
    failed = cli.json(
        "enroll",
        *cli.device,
        "--registration-id",
        "dev-pinned",
        "--out",
        str(device),
        "--root-ca",
        str(other.root_certificate),
        expect=EXIT_VERIFICATION,
    )
    assert "does not chain to the expected root" in failed["message"]
    assert not device.exists()
    # The refused certificate was issued (and holds the ID, with a key this device no longer has):
    # pinned to the right root, a device under another ID enrolls and verifies.
    cli.enroll(device, "dev-pinned-2", "--root-ca", str(cli.server.ca.root_certificate))
    openssl_verify(cli.server, device)


def test_server_refusals_carry_status_and_message(cli: Cli, tmp_path: Path) -> None:
    refused = cli.json(
        "enroll", *cli.device, "--registration-id", "bad id!", "--out", str(tmp_path / "d"), expect=EXIT_REFUSED
    )
    assert refused["status"] == 400 and refused["error"] == "invalid_registration_id"
    assert "POST /api/certificate: 400 invalid_registration_id: RegistrationId must be" in refused["message"]
    code, out, err = cli(
        "enroll", "--url", cli.server.url, "--code", "wrong-key", "--registration-id", "d", "--out", str(tmp_path / "e")
    )
    assert code == EXIT_REFUSED
    assert "401 unauthorized" in err and "wrong-key" not in err + out
    assert not (tmp_path / "e").exists()


def test_exit_codes_from_the_real_command(live_server: LiveServer, tmp_path: Path) -> None:
    device = tmp_path / "dev-module"
    env = {"XBOOT_URL": f"{live_server.url}/api/certificate", "XBOOT_FUNCTION_KEY": str(live_server.function_key)}
    ok = run_module("enroll", "--registration-id", "dev-module", "--out", str(device), env=env)
    assert ok.returncode == EXIT_OK, ok.stderr
    openssl_verify(live_server, device)
    assert run_module("enroll", "--registration-id", "x", "--out", str(tmp_path / "n")).returncode == EXIT_USAGE
    assert run_module("enroll", "--bogus").returncode == EXIT_USAGE
    down = run_module(
        "enroll",
        "--url",
        f"http://127.0.0.1:{free_port()}",
        "--retries",
        "2",
        "--registration-id",
        "x",
        "--out",
        str(tmp_path / "n"),
    )
    assert down.returncode == EXIT_UNAVAILABLE
    assert "retry: POST /api/certificate: cannot reach" in down.stderr
    assert "gave up after 2 attempts" in down.stderr
    assert "Traceback" not in down.stderr


# -- renew ---------------------------------------------------------------------------------------


def test_renew_waits_until_due_then_reuses_the_key(cli: Cli, tmp_path: Path) -> None:
    device = tmp_path / "dev-renew"
    first = cli.enroll(device, "dev-renew")
    key_before = (device / "device.key").read_bytes()
    not_due = cli.json("renew", *cli.device, "--out", str(device))
    assert not_due == {"renewed": False, "registrationId": "dev-renew", "notAfter": first["notAfter"]}
    assert not (device / "device.crt.bak").exists()

    renewed = cli.json("renew", *cli.device, "--out", str(device), "--within-days", "400")
    assert renewed["renewed"] is True and renewed["rekeyed"] is False
    assert renewed["serialNumber"] != first["serialNumber"] and renewed["registrationId"] == "dev-renew"
    assert (device / "device.key").read_bytes() == key_before
    assert (device / "device.crt.bak").exists()
    openssl_verify(cli.server, device)


def test_renew_with_rekey_and_pfx(cli: Cli, tmp_path: Path) -> None:
    device = tmp_path / "dev-rekey"
    cli.enroll(device, "dev-rekey", "--key-type", "ec-p384", "--pfx", "--pfx-password", PFX_PASSWORD)
    key_before = (device / "device.key").read_bytes()
    needs_password = cli.json("renew", *cli.device, "--out", str(device), "--force", expect=EXIT_USAGE)
    assert "password" in needs_password["message"]
    renewed = cli.json("renew", *cli.device, "--out", str(device), "--force", "--rekey", "--pfx-password", PFX_PASSWORD)
    assert renewed["rekeyed"] is True
    assert (device / "device.key").read_bytes() != key_before
    assert (device / "device.key.bak").read_bytes() == key_before
    assert b"ASN1 OID: secp384r1" in openssl("pkey", "-in", str(device / "device.key"), "-noout", "-text")
    openssl_verify(cli.server, device)
    pfx_key = openssl(
        "pkcs12", "-in", str(device / "device.pfx"), "-passin", f"pass:{PFX_PASSWORD}", "-nocerts", "-nodes"
    )
    pfx_pub = openssl("pkey", "-pubout", stdin=pfx_key)
    assert pfx_pub == openssl("pkey", "-in", str(device / "device.key"), "-pubout")


def test_renew_refuses_a_chain_to_another_root(cli: Cli, tmp_path: Path) -> None:
    device = tmp_path / "dev-moved"
    cli.enroll(device, "dev-moved")
    other = create_development_ca(tmp_path / "other-ca")
    (device / "chain.pem").write_bytes(other.certificate.read_bytes() + other.root_certificate.read_bytes())
    before = (device / "device.crt").read_bytes()
    failed = cli.json("renew", *cli.device, "--out", str(device), "--force", expect=EXIT_VERIFICATION)
    assert "expected root" in failed["message"]
    assert (device / "device.crt").read_bytes() == before


# -- reports ---------------------------------------------------------------------------------------


@pytest.fixture
def enrolled(cli: Cli, tmp_path: Path) -> Path:
    """A device of its own per test (the identity lock keeps one registration ID to one device)."""
    device = tmp_path / f"gw-report-{secrets.token_hex(4)}"
    cli.enroll(device, device.name)
    return device


def test_signed_report_verifies_with_openssl_and_is_accepted(cli: Cli, enrolled: Path, tmp_path: Path) -> None:
    report = write_report(tmp_path / "systemreport.json", enrolled.name)
    signed = cli.json(
        "sign-report",
        str(report),
        "--cert",
        str(enrolled / "device.crt"),
        "--key",
        str(enrolled / "device.key"),
        "--chain",
        str(enrolled / "chain.pem"),
        "--out",
        str(tmp_path / "systemreport.msg.signed"),
    )
    assert signed["signer"] == f"CN={enrolled.name}" and signed["chainCertificates"] == 2
    path = Path(signed["signed"])
    content = openssl(
        "cms", "-verify", "-in", str(path), "-CAfile", str(cli.server.ca.root_certificate), "-purpose", "any", "-text"
    )
    assert json.loads(content) == json.loads(report.read_text())

    uploaded = cli.json("upload-report", str(path), "--kind", "system", *cli.device)
    assert uploaded["kind"] == "system" and uploaded["response"]["id"]
    again = cli.json("upload-report", str(path), "--kind", "system", *cli.device)
    assert again["response"]["id"] == uploaded["response"]["id"] and again["response"]["duplicate"] is True


def test_a_report_signed_by_openssl_uploads_too(cli: Cli, enrolled: Path, tmp_path: Path) -> None:
    report = write_report(tmp_path / "updatereport.json", enrolled.name)
    signed = tmp_path / "update.signed"
    openssl(
        "cms", "-sign", "-in", str(report), "-out", str(signed), "-signer", str(enrolled / "device.crt"),
        "-inkey", str(enrolled / "device.key"), "-certfile", str(enrolled / "chain.pem"), "-text",
    )  # fmt: skip
    code, out, err = cli("upload-report", str(signed), "--kind", "update", *cli.device)
    assert code == EXIT_OK, err
    assert out.startswith(f"update report {signed} accepted as ")


def test_a_tampered_report_is_refused(cli: Cli, enrolled: Path, tmp_path: Path) -> None:
    report = write_report(tmp_path / "r.json", enrolled.name)
    cli.json("sign-report", str(report), "--device", str(enrolled))
    signed = tmp_path / "r.json.signed"
    signed.write_bytes(signed.read_bytes().replace(b'"m1.1"', b'"m6.6"'))
    refused = cli.json("upload-report", str(signed), "--kind", "system", *cli.device, expect=EXIT_REFUSED)
    assert refused["status"] == 422


def test_sign_report_refuses_what_it_cannot_sign(cli: Cli, enrolled: Path, tmp_path: Path) -> None:
    not_json = tmp_path / "r.txt"
    not_json.write_text("hello")
    assert cli.json("sign-report", str(not_json), "--device", str(enrolled), expect=EXIT_LOCAL)["message"].endswith(
        "only accepts JSON reports"
    )
    report = write_report(tmp_path / "r.json", enrolled.name)
    other = create_development_ca(tmp_path / "other-ca")
    wrong_key = cli.json(
        "sign-report", str(report), "--cert", str(enrolled / "device.crt"), "--key", str(other.key), expect=EXIT_LOCAL
    )
    assert "does not belong" in wrong_key["message"]
    assert cli.json("sign-report", str(report), expect=EXIT_USAGE)["message"].startswith("give --cert and --key")


# -- fingerprints and trust anchors --------------------------------------------------------------


def test_fingerprint_matches_openssl(cli: Cli) -> None:
    root = cli.server.ca.root_certificate
    expected = openssl("x509", "-noout", "-fingerprint", "-sha256", "-in", str(root)).decode().strip().split("=")[1]
    code, out, _ = cli("fingerprint", str(root))
    assert code == EXIT_OK and out.strip() == expected
    rows = cli.json("fingerprint", str(cli.server.ca.certificate), str(root))
    assert [r["subject"] for r in rows] == ["CN=xboot development intermediate CA", "CN=xboot development root CA"]
    assert rows[1]["sha256Fingerprint"] == expected


@pytest.fixture
def restore_trust_list(cli: Cli) -> Iterator[None]:
    """The server is shared by the session: leave its trust list as it was."""
    client = XbootClient(cli.server.url, admin_key=cli.server.admin_key)
    before = client.trusted_fingerprints()
    yield
    client.set_trusted_fingerprints(before)


@pytest.mark.usefixtures("restore_trust_list")
def test_trust_set_add_get(cli: Cli) -> None:
    root = cli.server.ca.root_certificate
    root_fp = cli.json("fingerprint", str(root))[0]["sha256Fingerprint"]
    other = "BB:EA:2A:13:C7:21:DB:E0:01:37:07:58:5B:ED:85:09:47:D7:FF:8F:BF:9E:E4:65:9C:C3:BA:14:E3:7C:DD:D6"
    trusted = {"issuingCaTrusted": True}  # TrustIssuingCa's default, said beside the list
    assert cli.json("trust", "set", *cli.admin, "--cert", str(root)) == {"value": [root_fp], **trusted}
    assert cli.json("trust", "add", *cli.admin, other.lower().replace(":", "")) == {
        "value": [root_fp, other],
        **trusted,
    }
    code, out, _ = cli("trust", "get", *cli.admin)
    assert code == EXIT_OK and out.splitlines() == [
        root_fp,
        other,
        "this service's own issuing CA is trusted too (TrustIssuingCa)",
    ]
    assert cli.json("trust", "set", *cli.admin, other) == {"value": [other], **trusted}
    # No admin key: sent without one; this server enforces keys, so 401 and where the key goes.
    missing = cli.json("trust", "get", "--url", cli.server.url, expect=EXIT_REFUSED)
    assert missing["status"] == 401 and "--admin-key or XBOOT_ADMIN_KEY" in missing["message"]
    refused = cli.json(
        "trust", "get", "--url", cli.server.url, "--admin-key", str(cli.server.function_key), expect=EXIT_REFUSED
    )
    assert refused["status"] == 401
    assert cli.json("trust", "set", *cli.admin, "not-a-fingerprint", expect=EXIT_LOCAL)["message"].startswith("not a")


# -- simulate --------------------------------------------------------------------------------------


def test_simulate_enrolls_and_reports(cli: Cli) -> None:
    summary = cli.json("simulate", *cli.device, "--devices", "6", "--concurrency", "3", "--prefix", "sim-test-")
    assert summary["devices"] == 6 and summary["succeeded"] == 6 and summary["failures"] == {}
    assert set(summary["latencyMs"]) == {"enroll", "upload", "total"}
    for step in summary["latencyMs"].values():
        assert 0 < step["p50"] <= step["p90"] <= step["p99"] <= step["max"]
    records = cli.server.data_dir / "certificates"
    assert {p.name for p in records.glob("sim-test-*")} == {f"sim-test-{n:04d}" for n in range(1, 7)}


def test_simulate_counts_failures_by_reason(cli: Cli) -> None:
    code, out, err = cli(
        "simulate", "--url", cli.server.url, "--code", "wrong", "--devices", "3", "--enroll-only", "--retries", "1"
    )
    assert code == EXIT_SIMULATION_FAILURES
    assert "succeeded 0, failed 3" in out
    assert "failed     3  enroll: 401 unauthorized" in out
    assert "... 3/3 devices done, 3 failed" in err
