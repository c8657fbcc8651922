"""The report endpoints through the registered functions: the guide's flow, trust configuration, storage, refusals."""

from __future__ import annotations

import base64
import json
import random
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import waitress
from cryptography import x509
from cryptography.hazmat.primitives import serialization

import xboot.service.storage.file
from tests.conftest import Functions, Reply
from tests.fixtures.report_pki import GATEWAY_ID, after_days, fingerprint_of, report_bytes
from tests.helpers import make_csr, openssl
from xboot.errors import BackendUnavailable, Unprocessable
from xboot.service.http import reports
from xboot.service.settings import Settings

SYSTEM = "/api/install/v1/system-reports"
UPDATE = "/api/install/v1/update-reports"
TRUST = "/api/mgmt/v1/tenant-config/soup.report.validation.trusted.cert.fingerprints"
CURL_BOUNDARY = "------------------------d74496d66958873e"


def form(message: bytes, name: str = "signedReport") -> tuple[bytes, dict[str, str]]:
    """What `curl --form 'signedReport=@"./systemreport.msg.signed"'` sends."""
    head = (
        f'--{CURL_BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"; filename="systemreport.msg.signed"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    )
    body = head.encode() + message + f"\r\n--{CURL_BOUNDARY}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={CURL_BOUNDARY}"}


def post(functions: Functions, message: bytes, path: str = SYSTEM) -> Reply:
    body, headers = form(message)
    return functions.call("POST", path, body, headers)


def assert_refusal(reply: Reply, status: int, code: str | None = None) -> dict:
    assert reply.status == status, reply.body
    assert reply.mimetype == "application/json"
    body = reply.json()
    assert set(body) == {"error", "message"} and "Traceback" not in body["message"]
    if code is not None:
        assert body["error"] == code, body
    return body


def stored_files(app_env: dict[str, str], prefix: str) -> list[Path]:
    root = Path(app_env["DataDirectory"]) / prefix
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


# --- the guide's flow -------------------------------------------------------------------------------------------


@pytest.fixture
def served(app_env, functions: Functions) -> Iterator[str]:
    """The app's routes on waitress, as `python -m xboot serve` runs them, in this process's environment."""
    server = waitress.create_server(functions.wsgi, host="127.0.0.1", port=0, threads=2)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    yield f"http://localhost:{server.effective_port}"
    server.close()


def curl(*args: str, cwd: Path) -> tuple[int, dict]:
    result = subprocess.run(["curl", "-sS", "-w", "\n%{http_code}", *args], capture_output=True, check=True, cwd=cwd)
    body, _, code = result.stdout.rpartition(b"\n")
    return int(code), json.loads(body)


def test_the_guides_exact_openssl_and_curl_flow(served, guide_pki, tmp_path):
    """Step by step as the guide writes it, only the host changed: fingerprint, tenant config, sign, upload."""
    work = tmp_path / "gateway"
    work.mkdir()
    for name in ("gateway.crt", "gateway.key", "cert-chain.crt"):
        (work / name).write_bytes(guide_pki.path(name).read_bytes())
    (work / "systemreport.json").write_bytes(report_bytes())
    fingerprint = fingerprint_of(guide_pki.path("ca_root.crt"))
    status, body = curl(
        "-X", "POST", f"{served}{TRUST}", "-H", "Content-Type: application/json",
        "-d", json.dumps({"value": [fingerprint]}), cwd=work,
    )  # fmt: skip
    assert status == 200 and body["value"] == [fingerprint]
    openssl("cms", "-sign", "-in", "systemreport.json", "-out", "systemreport.msg.signed", "-signer", "gateway.crt",
            "-inkey", "gateway.key", "-certfile", "cert-chain.crt", "-text", cwd=work)  # fmt: skip
    status, body = curl(
        "-X", "POST", f"{served}{SYSTEM}", "--form", 'signedReport=@"./systemreport.msg.signed"', cwd=work
    )
    assert status == 201, body
    assert body["gatewayId"] == GATEWAY_ID and body["kind"] == "system" and body["duplicate"] is False
    assert body["verification"]["trustAnchor"] == fingerprint
    assert [p["subject"] for p in body["verification"]["path"]] == [f"CN={GATEWAY_ID}", "CN=INTERMEDIATE", "CN=ROOT"]
    assert body["report"] == json.loads(report_bytes())
    status, listing = curl(f"{served}{SYSTEM}?gatewayId={GATEWAY_ID}", cwd=work)
    assert status == 200 and [r["id"] for r in listing["reports"]] == [body["id"]]
    status, one = curl(f"{served}{SYSTEM}/{body['id']}", cwd=work)
    assert status == 200 and base64.b64decode(one["signedMessage"]) == (work / "systemreport.msg.signed").read_bytes()
    status, again = curl("-X", "POST", f"{served}{SYSTEM}", "--form", "signedReport=@systemreport.msg.signed", cwd=work)
    assert status == 200 and again["id"] == body["id"] and again["duplicate"] is True


def test_update_reports_are_a_separate_collection(trusted_root, functions, guide_report):
    update = post(functions, guide_report, UPDATE)
    assert update.status == 201 and update.json()["kind"] == "update"
    assert update.headers["Location"] == f"{UPDATE}/{update.json()['id']}"
    assert functions.call("GET", f"{SYSTEM}/{update.json()['id']}").status == 404
    assert functions.call("GET", f"{UPDATE}/{update.json()['id']}").json()["kind"] == "update"
    assert functions.call("GET", f"{SYSTEM}?gatewayId={GATEWAY_ID}").json()["reports"] == []


def test_raw_bodies_are_accepted(trusted_root, functions, guide_pki, guide_report):
    """The S/MIME message itself, multipart/signed with the type on the request, pkcs7-mime DER and base64."""
    der = guide_pki.sign(report_bytes(timeStamp="2"), "gateway", "cert-chain.crt", "-nodetach", "-outform", "DER")
    headers, _, rest = guide_report.partition(b"\n\n")
    outer_type = headers.split(b"Content-Type: ", 1)[1].decode()
    cases = [
        (guide_report, None),
        (guide_report, {"Content-Type": "application/octet-stream"}),
        (rest, {"Content-Type": outer_type}),
        (der, {"Content-Type": "application/pkcs7-mime"}),
        (base64.encodebytes(der), {"Content-Type": "application/pkcs7-mime; smime-type=signed-data"}),
    ]
    ids = set()
    for body, headers in cases:
        reply = functions.call("POST", SYSTEM, body, headers)
        assert reply.status in (200, 201), reply.body
        ids.add(reply.json()["id"])
    assert len(ids) == 2  # the detached message (three ways) and the DER one (two ways)


def test_the_same_signed_report_is_stored_once_however_it_travels(trusted_root, functions, guide_report, app_env):
    first = post(functions, guide_report)
    again_lf = post(functions, guide_report.replace(b"\r\n", b"\n"))
    again_raw = functions.call("POST", SYSTEM, guide_report)
    assert (first.status, again_lf.status, again_raw.status) == (201, 200, 200)
    assert first.json()["id"] == again_lf.json()["id"] == again_raw.json()["id"]
    assert again_lf.json()["receivedAt"] == first.json()["receivedAt"]
    assert len(stored_files(app_env, "reports")) == 1 and len(stored_files(app_env, "report-index")) == 1


def enrolled_device(functions: Functions, directory: Path) -> Path:
    """Enroll through /api/certificate; device.crt is the leaf, ca-chain.crt the rest of `certificateChain`."""
    device = make_csr(directory, GATEWAY_ID)
    enrolled = functions.call("POST", "/api/certificate", {"RegistrationId": GATEWAY_ID, "Csr": device.b64})
    assert enrolled.status == 200, enrolled.body
    leaf, *chain = x509.load_pem_x509_certificates(enrolled.json()["certificateChain"].encode())
    (directory / "device.crt").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    (directory / "ca-chain.crt").write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain))
    (directory / "device.key").write_bytes(device.key_path.read_bytes())
    (directory / "report.json").write_bytes(report_bytes())
    return directory


def device_sign(directory: Path, *extra: str) -> bytes:
    return openssl("cms", "-sign", "-in", "report.json", "-signer", "device.crt", "-inkey", "device.key", "-text",
                   *extra, cwd=directory)  # fmt: skip


def test_devices_enrolled_here_sign_with_the_certificate_they_received(app_env, functions, tmp_path, session_ca):
    device = enrolled_device(functions, tmp_path)
    reply = post(functions, device_sign(device, "-certfile", "ca-chain.crt"))
    assert reply.status == 201, reply.body
    issuing_ca = fingerprint_of(Path(session_ca.certificate))
    assert reply.json()["verification"]["trustAnchor"] == issuing_ca
    assert len(reply.json()["verification"]["path"]) == 2  # the leaf and the issuing CA; the root is not needed
    # Without the chain embedded the service still knows its own issuing CA.
    (device / "report.json").write_bytes(report_bytes(timeStamp="1684201668"))
    assert post(functions, device_sign(device)).status == 201


def test_trust_issuing_ca_can_be_turned_off(app_env, functions, tmp_path, monkeypatch):
    message = device_sign(enrolled_device(functions, tmp_path), "-certfile", "ca-chain.crt")
    monkeypatch.setenv("TrustIssuingCa", "false")
    assert_refusal(post(functions, message), 422, "untrusted")
    monkeypatch.setenv("TrustIssuingCa", "maybe")
    assert_refusal(post(functions, message), 500, "configuration_error")


def test_without_a_loadable_issuing_ca_the_operator_is_told_which_setting(
    app_env, functions, guide_report, monkeypatch
):
    monkeypatch.delenv("CertificateFile")
    body = assert_refusal(post(functions, guide_report), 500, "configuration_error")
    assert "TrustIssuingCa" in body["message"]
    monkeypatch.setenv("TrustIssuingCa", "false")
    monkeypatch.setenv("TrustedFingerprints", fingerprint_of(Path(app_env["CertificateChainFile"])))
    assert_refusal(post(functions, guide_report), 422, "untrusted")  # reports work without any CA configured


# --- trust anchors ----------------------------------------------------------------------------------------------


def test_trust_list_is_replaced_validated_and_read_back(app_env, functions, guide_pki):
    initial = functions.call("GET", TRUST)
    assert initial.status == 200
    assert initial.json()["value"] == [] and initial.json()["source"] == "none" and initial.json()["issuingCaTrusted"]
    root, intermediate = guide_pki.fingerprint("ca_root"), guide_pki.fingerprint("ca_intermediate")
    sent = [root.replace(":", "").lower(), intermediate.lower(), root]
    reply = functions.call("POST", TRUST, {"value": sent})
    assert reply.status == 200 and reply.json()["value"] == [root, intermediate]
    assert functions.call("GET", TRUST).json()["value"] == [root, intermediate]
    for bad in ({"value": [root, "AB:CD"]}, {"value": root}, {"value": [root[:-1] + "G"]}, {"values": [root]}, {}):
        body = assert_refusal(functions.call("POST", TRUST, bad), 400)
        assert root not in body["message"]
    assert_refusal(functions.call("POST", TRUST, "not json"), 400, "invalid_json")
    after = functions.call("GET", TRUST).json()
    assert after["value"] == [root, intermediate] and after["source"] == "tenant-config"
    assert functions.call("POST", TRUST, {"value": []}).json()["value"] == []


def test_trust_list_is_shared_through_the_data_store(trusted_root, functions, guide_report, app_env):
    stored = Path(app_env["DataDirectory"]) / "tenant-config" / "soup.report.validation.trusted.cert.fingerprints.json"
    assert json.loads(stored.read_text())["value"] == [trusted_root]
    stored.write_text(json.dumps({"value": []}))  # another instance cleared it
    assert_refusal(post(functions, guide_report), 422, "untrusted")


def test_the_setting_seeds_the_list_until_it_is_set(app_env, functions, guide_pki, guide_report, monkeypatch):
    root = guide_pki.fingerprint("ca_root")
    monkeypatch.setenv("TrustedFingerprints", f" {root.replace(':', '').lower()} , ")
    assert functions.call("GET", TRUST).json() | {"updatedAt": None} == {
        "key": "soup.report.validation.trusted.cert.fingerprints",
        "value": [root],
        "source": "setting",
        "updatedAt": None,
        "issuingCaTrusted": True,
    }
    assert post(functions, guide_report).status == 201
    functions.call("POST", TRUST, {"value": [guide_pki.fingerprint("other_root")]})
    assert_refusal(post(functions, guide_pki.sign(report_bytes(timeStamp="9"), "gateway")), 422, "untrusted")
    assert functions.call("GET", TRUST).json()["source"] == "tenant-config"


def test_an_invalid_trusted_fingerprints_setting_names_the_setting(app_env, functions, guide_report, monkeypatch):
    monkeypatch.setenv("TrustedFingerprints", "AB:CD")
    body = assert_refusal(post(functions, guide_report), 500, "configuration_error")
    assert "TrustedFingerprints" in body["message"] and "AB:CD" not in body["message"]


# --- listing and reading -----------------------------------------------------------------------------------------


def test_listing_is_newest_first_and_paginated(trusted_root, functions, guide_pki):
    ids = []
    for n in range(5):
        reply = post(functions, guide_pki.sign(report_bytes(timeStamp=str(n)), "gateway"))
        assert reply.status == 201
        ids.append(reply.json()["id"])
    other = post(functions, guide_pki.sign(report_bytes(gatewayId="gw/other ü"), "gateway"))
    assert other.status == 201
    seen, token = [], None
    while True:
        query = f"{SYSTEM}?gatewayId={GATEWAY_ID}&limit=2" + (f"&continuationToken={token}" if token else "")
        page = functions.call("GET", query).json()
        assert len(page["reports"]) <= 2
        seen += [r["id"] for r in page["reports"]]
        assert all("signedMessage" not in r and r["gatewayId"] == GATEWAY_ID for r in page["reports"])
        token = page["continuationToken"]
        if token is None:
            break
    assert seen == list(reversed(ids))
    listed = functions.call("GET", f"{SYSTEM}?gatewayId=gw%2Fother%20%C3%BC").json()["reports"]
    assert [r["id"] for r in listed] == [other.json()["id"]]
    assert functions.call("GET", f"{SYSTEM}?gatewayId=nobody").json() == {
        "kind": "system",
        "gatewayId": "nobody",
        "reports": [],
        "continuationToken": None,
    }


@pytest.mark.parametrize(
    "query",
    ["", "?gatewayId=", f"?gatewayId={GATEWAY_ID}&limit=0", f"?gatewayId={GATEWAY_ID}&limit=101",
     f"?gatewayId={GATEWAY_ID}&limit=x", f"?gatewayId={GATEWAY_ID}&continuationToken=bogus!"],
)  # fmt: skip
def test_bad_listing_queries_are_400(app_env, functions, query):
    assert_refusal(functions.call("GET", f"{SYSTEM}{query}"), 400)


def test_reading_one_report(trusted_root, functions, guide_report):
    created = post(functions, guide_report).json()
    one = functions.call("GET", f"{SYSTEM}/{created['id']}")
    assert one.status == 200
    assert {k: v for k, v in one.json().items() if k != "signedMessage"} == {
        k: v for k, v in created.items() if k != "duplicate"
    }
    assert base64.b64decode(one.json()["signedMessage"]) == guide_report
    for missing in ("0" * 32, "..", "A" * 32, created["id"] + "0"):
        assert_refusal(functions.call("GET", f"{SYSTEM}/{missing}"), 404, "not_found")


# --- refusals -----------------------------------------------------------------------------------------------------


def test_the_report_must_be_a_json_object_with_a_gateway_id(trusted_root, functions, guide_pki):
    for content, needle in (
        (b"hello gateway\n", "not JSON"),
        (b"[1, 2]\n", "JSON object"),
        (b'{"a": 1}\n', "gatewayId"),
    ):
        body = assert_refusal(post(functions, guide_pki.sign(content, "gateway")), 400, "invalid_report")
        assert needle in body["message"]


def test_require_gateway_id_match(trusted_root, functions, guide_pki, monkeypatch):
    monkeypatch.setenv("RequireGatewayIdMatch", "true")
    mismatch = guide_pki.sign(report_bytes(gatewayId="someone-else"), "gateway")
    assert_refusal(post(functions, mismatch), 422, "gateway_mismatch")
    assert post(functions, guide_pki.sign(report_bytes(), "gateway")).status == 201
    monkeypatch.setenv("RequireGatewayIdMatch", "false")
    assert post(functions, mismatch).status == 201


def test_expiry_is_judged_at_receipt(trusted_root, guide_pki):
    message, headers = form(guide_pki.sign(report_bytes(), "gateway_1day"))
    settings = Settings.from_environ()
    with pytest.raises(Unprocessable, match="expired"):
        reports.submit_report("system", message, headers["Content-Type"], settings, now=after_days(2))
    assert (
        reports.submit_report("system", message, headers["Content-Type"], settings, now=after_days(0.5)).status == 201
    )


def test_refusals_are_4xx_json(trusted_root, functions, guide_pki, guide_report):
    cases = {
        "tampered body": (guide_report.replace(b'"gw1"', b'"gw2"'), 422),
        "tampered header": (guide_report.replace(b"text/plain\r\n", b"text/html\r\n", 1), 422),
        "untrusted": (guide_pki.sign(report_bytes(), "other_gateway", "other-chain.crt"), 422),
        "forged leaf": (guide_pki.sign(report_bytes(), "other_gateway"), 422),
        "non-CA intermediate": (
            guide_pki.sign(report_bytes(), "leaf_intermediate_gateway", "leaf_intermediate-chain.crt"),
            422,
        ),
        "no signed attributes": (guide_pki.sign(report_bytes(), "gateway", "cert-chain.crt", "-noattr"), 422),
        "garbage": (b"\x00\xff garbage", 400),
        "truncated": (guide_report[: len(guide_report) // 2], 400),
        "empty": (b"", 400),
    }
    for name, (message, status) in cases.items():
        reply = post(functions, message)
        assert reply.status == status, (name, reply.body)
        assert_refusal(reply, status)
    assert_refusal(functions.call("POST", SYSTEM, guide_report, {"Content-Type": "multipart/form-data"}), 400)
    body, headers = form(guide_report, name="report")
    assert "signedReport" in assert_refusal(functions.call("POST", SYSTEM, body, headers), 400)["message"]


def test_bodies_over_64_kib_are_413(trusted_root, functions, guide_pki):
    big = guide_pki.sign(report_bytes(padding="x" * 70_000), "gateway")
    assert_refusal(post(functions, big), 413, "payload_too_large")


def test_damaged_uploads_are_4xx_or_the_original_report(trusted_root, functions, guide_report):
    chance = random.Random(7)
    body, headers = form(guide_report)
    original = post(functions, guide_report).json()["id"]
    for _ in range(150):
        damaged = bytearray(body)
        for _ in range(chance.randint(1, 4)):
            damaged[chance.randrange(len(damaged))] = chance.randrange(256)
        reply = functions.call("POST", SYSTEM, bytes(damaged), headers)
        if reply.status in (200, 201):
            assert reply.json()["id"] == original
        else:
            assert_refusal(reply, reply.status)
            assert 400 <= reply.status < 500


# --- storage failures ------------------------------------------------------------------------------------------


def test_a_storage_failure_is_503_and_stores_nothing(trusted_root, functions, guide_report, app_env, monkeypatch):
    def unavailable(self, key, data, **kwargs):
        raise BackendUnavailable("data directory is not writable (test)")

    monkeypatch.setattr(xboot.service.storage.file.FileStore, "create", unavailable)
    reply = post(functions, guide_report)
    assert_refusal(reply, 503, "backend_unavailable")
    assert reply.headers["Retry-After"]
    assert stored_files(app_env, "reports") == [] and stored_files(app_env, "report-index") == []


def test_an_index_failure_is_503_and_stores_nothing_the_retry_stores_it_once(
    trusted_root, functions, guide_report, app_env, monkeypatch
):
    real_create = xboot.service.storage.file.FileStore.create

    def index_unavailable(self, key, data, **kwargs):
        if key.startswith("report-index/"):
            raise BackendUnavailable("data directory is not writable (test)")
        return real_create(self, key, data, **kwargs)

    monkeypatch.setattr(xboot.service.storage.file.FileStore, "create", index_unavailable)
    assert_refusal(post(functions, guide_report), 503)
    # The index entry is written first: when it fails, no record exists either (nothing stored but unlisted).
    assert stored_files(app_env, "reports") == []
    assert functions.call("GET", f"{SYSTEM}?gatewayId={GATEWAY_ID}").json()["reports"] == []
    monkeypatch.setattr(xboot.service.storage.file.FileStore, "create", real_create)
    retry = post(functions, guide_report)
    assert retry.status == 201 and retry.json()["duplicate"] is False
    listed = functions.call("GET", f"{SYSTEM}?gatewayId={GATEWAY_ID}").json()["reports"]
    assert [r["id"] for r in listed] == [retry.json()["id"]]


def test_concurrent_posts_of_one_report_store_it_once(trusted_root, functions, guide_report, app_env):
    body, headers = form(guide_report)
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda _: functions.call("POST", SYSTEM, body, headers), range(8)))
    assert sorted(r.status for r in replies) == [200] * 7 + [201]
    assert len({r.json()["id"] for r in replies}) == 1
    assert len(stored_files(app_env, "reports")) == 1 and len(stored_files(app_env, "report-index")) == 1
