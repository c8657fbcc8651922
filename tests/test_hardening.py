"""Regressions for what hostile input and careful operators found: one test per class, at the shared mechanism.

Each test sends exactly the input its defect needed and fails on the code before the fix.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import os
import secrets
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import pytest
from asn1crypto import core
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import Functions
from tests.fixtures.report_pki import Pki, report_bytes
from tests.helpers import make_csr, openssl
from tests.test_key_locations import _self_signed_ca
from tests.test_reports_api import SYSTEM, TRUST, assert_refusal, post
from xboot.cli import build_parser, join_dash_values
from xboot.service.ca.devca import create_development_ca
from xboot.service.serve import FunctionsWsgiApp, Keys, create_server, listen
from xboot.service.storage import MAX_KEY_CHARS, MAX_SEGMENT_BYTES, check_key
from xboot.service.untrusted import json_depth, parse_json

DEEP = b"[" * 30_000 + b"]" * 30_000  # 60 KB: under the 64 KiB body limit, far over any sane depth


def enroll(functions: Functions, registration_id: str, csr_b64: str) -> tuple[int, dict]:
    reply = functions.call("POST", "/api/certificate", {"RegistrationId": registration_id, "Csr": csr_b64})
    return reply.status, reply.json()


# -- 1. one JSON parser, depth-bounded -----------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/certificate", TRUST, "/api/mgmt/v1/revocations"])
@pytest.mark.parametrize("body", [DEEP, b'{"RegistrationId": ' + b'{"a": ' * 25 + b"1" + b"}" * 25 + b"}"])
def test_deeply_nested_json_is_a_400_on_every_json_route(app_env, functions, path, body):
    reply = functions.call("POST", path, body)
    assert_refusal(reply, 400, "invalid_json")
    assert "nested deeper" in reply.json()["message"]


def test_depth_counts_brackets_outside_strings_only():
    assert json_depth(b'{"a": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}') == 1
    assert json_depth(b'{"a": "\\"[[[[", "b": [[1]]}') == 3
    assert parse_json(b'\xef\xbb\xbf{"a": [1, {"b": []}]}') == {"a": [1, {"b": []}]}
    with pytest.raises(ValueError, match="deeper than 20"):
        parse_json(b"[" * 21 + b"]" * 21)
    assert parse_json(b"[" * 20 + b"]" * 20) is not None


def test_a_deeply_nested_signed_report_is_refused_not_crashed(app_env, functions, guide_pki: Pki, trusted_root):
    content = b'{"gatewayId": "101012902", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}\n"
    assert_refusal(post(functions, guide_pki.sign(content, "gateway")), 400, "invalid_report")


# -- 2. limits are ASCII whole numbers -------------------------------------------------------------------


@pytest.mark.parametrize("limit", ["²", "٣", "9" * 5000, "-1", "0", "1e3", " 5"])
@pytest.mark.parametrize(
    "path",
    [
        f"{SYSTEM}?gatewayId=g&limit=",
        "/api/mgmt/v1/revocations?limit=",
        "/api/mgmt/v1/certificates?registrationId=d&limit=",
    ],
)
def test_odd_limits_are_a_400_on_every_listing(app_env, functions, path, limit):
    assert_refusal(functions.call("GET", path + limit), 400, "invalid_query")


# -- 3. every gatewayId the API accepts fits both stores ----------------------------------------------------


@pytest.mark.parametrize("gateway_id", ["." * 128, "é" * 128, "网关" * 64, "a" * 128, "=2E" * 42])
def test_long_and_unusual_gateway_ids_are_stored_and_listed(app_env, functions, guide_pki, trusted_root, gateway_id):
    stored = post(functions, guide_pki.sign(report_bytes(gatewayId=gateway_id, timeStamp=gateway_id[:9]), "gateway"))
    assert stored.status in (200, 201), stored.body
    query = urllib.parse.urlencode({"gatewayId": gateway_id})
    listed = functions.call("GET", f"{SYSTEM}?{query}")
    assert listed.status == 200, listed.body
    assert [r["id"] for r in listed.json()["reports"]] == [stored.json()["id"]]


def test_gateway_ids_that_spell_alike_stay_apart(app_env, functions, guide_pki, trusted_root):
    # "=2E" spelled plain and "." escaped to "=2E" must not share an index, nor a long id and its digest form.
    for gateway_id in (".", "=2E"):
        assert post(functions, guide_pki.sign(report_bytes(gatewayId=gateway_id), "gateway")).status in (200, 201)
    for gateway_id in (".", "=2E"):
        query = urllib.parse.urlencode({"gatewayId": gateway_id})
        reports = functions.call("GET", f"{SYSTEM}?{query}").json()["reports"]
        assert [r["gatewayId"] for r in reports] == [gateway_id]


def test_a_lone_surrogate_gateway_id_is_refused_before_anything_is_written(app_env, functions, guide_pki, trusted_root):
    content = b'{"gatewayId": "\\ud800", "timeStamp": "1"}\n'
    assert_refusal(post(functions, guide_pki.sign(content, "gateway")), 400, "invalid_report")
    assert not (Path(app_env["DataDirectory"]) / "reports").exists()
    listed = functions.call("GET", f"{SYSTEM}?gatewayId=%ED%A0%80")  # the surrogate's UTF-8-like bytes
    assert listed.status in (200, 400) and listed.status != 500


def test_storage_keys_are_checked_against_both_stores():
    check_key("a/" + "b" * MAX_SEGMENT_BYTES)
    with pytest.raises(ValueError):
        check_key("a/" + "b" * (MAX_SEGMENT_BYTES + 1))
    with pytest.raises(ValueError):  # the File store spells ':' as %3A: 100 colons are 300 bytes on disk
        check_key("a/" + ":" * 100)
    with pytest.raises(ValueError):
        check_key("/".join(["c" * 200] * 6)[: MAX_KEY_CHARS + 1])
    for bad in ("a/./b", "a/../b", "a//b", "a/b c", "a/é"):
        with pytest.raises(ValueError):
            check_key(bad)


# -- 4. extensions that do not decode are the sender's 4xx -----------------------------------------------------


def _with_unmasked_ip_constraint(certificate: x509.Certificate, issuer_key: ec.EllipticCurvePrivateKey) -> bytes:
    """`certificate` with nameConstraints permitted iPAddress of 4 bytes (no mask), re-signed by `issuer_key`."""
    parsed = asn1_x509.Certificate.load(certificate.public_bytes(serialization.Encoding.DER))
    tbs = parsed["tbs_certificate"]
    subtree = bytes.fromhex("3006") + bytes.fromhex("87040a000000")  # GeneralSubtree { [7] 10.0.0.0 }
    permitted = bytes([0xA0, len(subtree)]) + subtree
    constraints = bytes([0x30, len(permitted)]) + permitted
    for extension in tbs["extensions"]:
        if extension["extn_id"].dotted == "2.5.29.30":
            extension["extn_value"] = core.ParsableOctetString(constraints)
    tbs_der = tbs.dump(force=True)
    parsed["tbs_certificate"] = asn1_x509.TbsCertificate.load(tbs_der)
    parsed["signature_value"] = issuer_key.sign(tbs_der, ec.ECDSA(hashes.SHA256()))
    return parsed.dump(force=True)


def _constrained(pki: Pki, name: str, issuer: str, ca: bool) -> Path:
    issuer_cert = pki.certificate(issuer)
    issuer_key = serialization.load_pem_private_key(pki.path(f"{issuer}.key").read_bytes(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(issuer_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.NameConstraints([x509.IPAddress(ipaddress.ip_network("10.0.0.0/8"))], None), True)
    )
    good = builder.sign(issuer_key, hashes.SHA256())
    pki.path(f"{name}.crt").write_bytes(
        x509.load_der_x509_certificate(_with_unmasked_ip_constraint(good, issuer_key)).public_bytes(
            serialization.Encoding.PEM
        )
    )
    pki.path(f"{name}.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return pki.path(f"{name}.crt")


def test_an_unmasked_ip_name_constraint_on_the_signer_is_a_4xx(app_env, functions, guide_pki, trusted_root):
    _constrained(guide_pki, "nc_gateway", "ca_intermediate", ca=False)
    message = guide_pki.sign(report_bytes(timeStamp="nc1"), "nc_gateway")
    reply = post(functions, message)
    assert 400 <= reply.status < 500, reply.body
    assert reply.json()["error"] == "certificate_invalid"


def test_an_unmasked_ip_name_constraint_on_a_ca_is_a_4xx(app_env, functions, guide_pki, trusted_root):
    _constrained(guide_pki, "nc_intermediate", "ca_root", ca=True)
    guide_pki.issue("nc_ca_gateway", "/CN=101012902", "nc_intermediate", None)
    guide_pki.chain("nc-chain.crt", "nc_intermediate", "ca_root")
    reply = post(functions, guide_pki.sign(report_bytes(timeStamp="nc2"), "nc_ca_gateway", "nc-chain.crt"))
    assert 400 <= reply.status < 500, reply.body


# -- 5. the local server's own errors are JSON ---------------------------------------------------------------------


@pytest.fixture
def wire(app_env, functions):
    server = create_server(FunctionsWsgiApp(functions.table), listen("127.0.0.1", 0), 2)
    threading.Thread(target=server.run, daemon=True).start()
    yield server.effective_port
    server.close()


def _raw(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(request)
        data = b""
        while chunk := connection.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


@pytest.mark.parametrize(
    ("head", "body", "status"),
    [
        (b"Content-Length: -1\r\n", b"", 400),
        (b"Content-Length: abc\r\n", b"", 400),
        (b"Content-Length: 2000000\r\n", b"", 413),  # refused on the header, before any body is read
        (b"Transfer-Encoding: chunked\r\n", b"100001\r\n" + b"x" * 0x100001, 413),  # one byte over, then refused
    ],
)
def test_framing_errors_from_the_local_server_are_json(wire, head, body, status):
    code, headers, payload = _raw(wire, b"POST /api/certificate HTTP/1.1\r\nHost: x\r\n" + head + b"\r\n" + body)
    assert code == status
    assert headers["content-type"] == "application/json"
    assert set(json.loads(payload)) == {"error", "message"}


# -- 6. an empty key is a configuration error, and an empty presented key never matches ----------------------


@pytest.mark.parametrize("value", ["", "  ", "\t"])
def test_empty_keys_are_refused(value):
    with pytest.raises(ValueError, match="empty"):
        Keys(admin=value)
    with pytest.raises(ValueError, match="empty"):
        Keys(function=value)


def test_an_empty_presented_key_never_matches():
    keys = Keys(function="f-key", admin="a-key")
    assert not keys.permits("admin", "") and not keys.permits("function", "") and not keys.permits("admin", None)
    assert keys.permits("admin", "a-key") and keys.permits("function", "a-key") and not keys.permits("admin", "f-key")


@pytest.mark.parametrize(
    ("keys", "level", "presented", "allowed"),
    [
        (Keys(), "admin", None, True),  # no keys configured: every route answers (like Core Tools)
        (Keys(), "function", None, True),
        (Keys(admin="a-key"), "anonymous", None, True),
        (Keys(admin="a-key"), "function", None, False),  # only an admin key: function routes need it too
        (Keys(admin="a-key"), "function", "a-key", True),
        (Keys(admin="a-key"), "admin", None, False),
        (Keys(admin="a-key"), "admin", "wrong", False),
        (Keys(admin="a-key"), "admin", "a-key", True),
        (Keys(function="f-key"), "function", "f-key", True),
        (Keys(function="f-key"), "function", "wrong", False),
        (Keys(function="f-key"), "admin", "f-key", False),  # only a function key: no key opens admin routes
        (Keys(function="f-key"), "admin", None, False),
        (Keys(function="f-key"), "anonymous", None, True),
    ],
)
def test_which_key_opens_which_route(keys, level, presented, allowed):
    assert keys.permits(level, presented) is allowed


def test_serve_with_an_empty_admin_key_in_the_environment_refuses_to_start(tmp_path):
    env = {"PATH": os.environ["PATH"], "XBOOT_SERVE_ADMIN_KEY": "", "DataDirectory": str(tmp_path)}
    run = subprocess.run([sys.executable, "-m", "xboot", "serve", "--port", "0"], capture_output=True, text=True,
                         env=env, cwd=Path(__file__).resolve().parent.parent, timeout=60)  # fmt: skip
    assert run.returncode == 2
    assert "admin key is empty" in run.stderr and "Traceback" not in run.stderr


# -- 7. the issued subject is what the CA checked -------------------------------------------------------------------


def test_subject_attributes_in_the_csr_are_not_copied(app_env, functions, tmp_path):
    csr = make_csr(tmp_path, "dev-subject", None, "-subj",
                   "/CN=dev-subject/O=Evil Corp/OU=Admins/emailAddress=root@example.com")  # fmt: skip
    status, body = enroll(functions, "dev-subject", csr.b64)
    assert status == 200, body
    leaf = x509.load_der_x509_certificate(base64.b64decode(body["certificate"]))
    assert leaf.subject == x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dev-subject")])


def test_subject_attributes_setting_adds_what_the_operator_vouches_for(app_env, functions, monkeypatch, tmp_path):
    monkeypatch.setenv("SubjectAttributes", "C=US, O=Contoso Ltd, OU=Devices")
    csr = make_csr(tmp_path, "dev-org", None, "-subj", "/CN=dev-org/O=Evil Corp")
    status, body = enroll(functions, "dev-org", csr.b64)
    assert status == 200, body
    leaf = x509.load_der_x509_certificate(base64.b64decode(body["certificate"]))
    assert leaf.subject.rfc4514_string() == "CN=dev-org,OU=Devices,O=Contoso Ltd,C=US"


@pytest.mark.parametrize("value", ["O", "X=1", "C=USA", "O=,OU=x"])
def test_a_bad_subject_attributes_setting_is_a_configuration_error(app_env, functions, monkeypatch, tmp_path, value):
    monkeypatch.setenv("SubjectAttributes", value)
    status, body = enroll(functions, "dev-bad-subject", make_csr(tmp_path, "dev-bad-subject").b64)
    assert status == 500 and body["error"] == "configuration_error" and "SubjectAttributes" in body["message"]


# -- 8. the issuing CA's keyUsage --------------------------------------------------------------------------------


def _ca_without(tmp_path: Path, monkeypatch, usage: x509.KeyUsage | None) -> None:
    _self_signed_ca(ec.generate_private_key(ec.SECP256R1()), dt.datetime.now(dt.UTC) - dt.timedelta(days=1),
                    dt.datetime.now(dt.UTC) + dt.timedelta(days=30), tmp_path / "ku", usage)  # fmt: skip
    monkeypatch.setenv("CertificateFile", str(tmp_path / "ku" / "ca.cer"))
    monkeypatch.setenv("PrivateKeyFile", str(tmp_path / "ku" / "ca.key"))
    monkeypatch.delenv("CertificateChainFile")


def test_a_ca_without_key_usage_is_refused_at_load(app_env, functions, monkeypatch, tmp_path):
    _ca_without(tmp_path, monkeypatch, None)
    status, body = enroll(functions, "dev-ku", make_csr(tmp_path, "dev-ku").b64)
    assert status == 500 and body["error"] == "configuration_error"
    assert "no keyUsage" in body["message"] and "keyCertSign" in body["message"]


def test_a_ca_without_crl_sign_issues_but_refuses_to_sign_the_crl(app_env, functions, monkeypatch, tmp_path):
    usage = x509.KeyUsage(False, False, False, False, False, True, False, False, False)  # keyCertSign only
    _ca_without(tmp_path, monkeypatch, usage)
    assert enroll(functions, "dev-nocrl", make_csr(tmp_path, "dev-nocrl").b64)[0] == 200
    crl = functions.call("GET", "/api/crl")
    assert crl.status == 500 and crl.json()["error"] == "configuration_error" and "cRLSign" in crl.json()["message"]
    monkeypatch.setenv("CrlDistributionPointUrl", "http://example.test/api/crl")
    status, body = enroll(functions, "dev-nocrl-2", make_csr(tmp_path, "dev-nocrl-2").b64)
    assert status == 500 and "CrlDistributionPointUrl" in body["message"]


def test_leaves_pass_openssl_strict_verification(app_env, functions, tmp_path, session_ca):
    status, body = enroll(functions, "dev-strict", make_csr(tmp_path, "dev-strict").b64)
    assert status == 200
    leaf = tmp_path / "leaf.pem"
    leaf.write_bytes(x509.load_der_x509_certificate(base64.b64decode(body["certificate"])).public_bytes(
        serialization.Encoding.PEM))  # fmt: skip
    out = openssl("verify", "-x509_strict", "-CAfile", str(session_ca.root_certificate), "-untrusted",
                  str(session_ca.directory / "ia.cer"), str(leaf))  # fmt: skip
    assert out.strip().endswith(b"OK")


# -- 9. weak CSR signatures have their own code ---------------------------------------------------------------------


@pytest.mark.parametrize("digest", ["-sha1", "-md5"])
def test_sha1_and_md5_csrs_are_weak_signature(app_env, functions, tmp_path, digest):
    key = tmp_path / "k.pem"
    openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(key))
    try:
        der = openssl("req", "-new", "-key", str(key), "-subj", "/CN=dev-weak", "-outform", "DER", digest)
    except AssertionError:
        pytest.skip(f"this openssl cannot sign with {digest}")
    status, body = enroll(functions, "dev-weak", base64.b64encode(der).decode())
    assert status == 400 and body["error"] == "weak_signature", body


# -- 17. option values that start with '-' ----------------------------------------------------------------------------


def test_option_values_starting_with_a_dash_are_joined():
    parser = build_parser()
    argv = ["enroll", "--url", "http://x", "--code", "-Abc", "--registration-id", "d", "--out", "o"]
    joined = join_dash_values(argv, parser)
    assert "--code=-Abc" in joined
    assert parser.parse_args(joined).code == "-Abc"
    # An option that follows is still an option, and flags take no value.
    assert join_dash_values(["enroll", "--code", "--json"], parser) == ["enroll", "--code", "--json"]
    assert join_dash_values(["enroll", "--force", "-x"], parser) == ["enroll", "--force", "-x"]


def test_a_server_key_starting_with_a_dash_works_end_to_end(tmp_path):
    from tests.fixtures.live_server import start_live_server
    from tests.helpers import CliRunner  # noqa: F401 - the runner other CLI tests use

    key = "-Abc" + "x" * 20
    ca = create_development_ca(tmp_path / "unused-ca")  # make sure init-ca works beside a running server
    assert ca.exists()
    with start_live_server(tmp_path / "srv", keys=False) as server:
        run = subprocess.run(
            [sys.executable, "-m", "xboot", "enroll", "--url", server.url, "--code", key, "--registration-id",
             "dev-dash", "--out", str(tmp_path / "dev"), "--json"],
            capture_output=True, text=True, cwd=tmp_path, check=False,
        )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["registrationId"] == "dev-dash"


# -- 13. a CRL lists only the certificates of the CA that signs it ------------------------------------------------


def test_the_crl_of_a_new_ca_does_not_list_the_old_cas_serials(app_env, functions, monkeypatch, tmp_path):
    from tests.test_revocation import enroll as enroll_device

    old_device = enroll_device(functions, tmp_path / "old", "dev-old-ca")
    by_id = enroll_device(functions, tmp_path / "old2", "dev-old-ca-2")
    admin = "/api/mgmt/v1/revocations"
    assert functions.call("POST", admin, {"serialNumber": old_device.serial, "reason": "keyCompromise"}).status == 201
    assert functions.call("POST", admin, {"registrationId": "dev-old-ca-2", "reason": "keyCompromise"}).status == 201
    old_crl = x509.load_der_x509_crl(functions.call("GET", "/api/crl").body)
    assert {r.serial_number for r in old_crl} == {old_device.certificate.serial_number, by_id.certificate.serial_number}
    # The same data store, another issuing CA.
    new_ca = create_development_ca(tmp_path / "new-ca")
    for name, value in new_ca.settings().items():
        monkeypatch.setenv(name, value)
    from xboot.service.ca.signer import clear_signer_cache

    clear_signer_cache()
    new_device = enroll_device(functions, tmp_path / "new", "dev-new-ca")
    assert functions.call("POST", admin, {"serialNumber": new_device.serial, "reason": "superseded"}).status == 201
    new_crl = x509.load_der_x509_crl(functions.call("GET", "/api/crl").body)
    assert new_crl.issuer == new_device.certificate.issuer
    assert {r.serial_number for r in new_crl} == {new_device.certificate.serial_number}
    # The old CA's revocations stay on record, each saying whose serials it holds.
    listed = functions.call("GET", admin).json()["revocations"]
    issuers = {e["issuerSha256Fingerprint"] for e in listed}
    assert len(listed) == 3 and len(issuers) == 2


# -- 14. concurrent identical revocations make one entry ---------------------------------------------------------


def test_concurrent_identical_revocations_make_one_entry(app_env, functions):
    from concurrent.futures import ThreadPoolExecutor

    body = {"serialNumber": "C0FFEE", "reason": "keyCompromise"}
    with ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(lambda _: functions.call("POST", "/api/mgmt/v1/revocations", body), range(16)))
    assert sorted(r.status for r in replies) == [200] * 15 + [201]
    assert len({r.json()["id"] for r in replies}) == 1
    assert len(functions.call("GET", "/api/mgmt/v1/revocations").json()["revocations"]) == 1


def test_a_claim_left_by_a_killed_writer_is_completed_by_the_next(app_env, functions):
    from xboot.service.lifecycle.revocation import Target, _claim_key, new_id

    claim = Path(app_env["DataDirectory"]) / _claim_key(Target("serial", "BADC0DE"))
    claim.parent.mkdir(parents=True)
    orphan = new_id(dt.datetime.now(dt.UTC))
    claim.write_text(json.dumps({"id": orphan}))  # claimed, then killed before the entry was written
    reply = functions.call("POST", "/api/mgmt/v1/revocations", {"serialNumber": "BADC0DE", "reason": "keyCompromise"})
    assert reply.status in (200, 201) and reply.json()["id"] == orphan
    assert [e["id"] for e in functions.call("GET", "/api/mgmt/v1/revocations").json()["revocations"]] == [orphan]


# -- 15. acknowledged writes are durable; a killed writer's leftovers go -----------------------------------------


def test_create_fsyncs_the_file_and_its_folder(tmp_path, monkeypatch):
    import stat

    from xboot.service.storage.file import FileStore

    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    store = FileStore(tmp_path, "file")  # DataSync file: each write flushes on its own
    assert store.create("a/b/c.json", b"{}")
    assert synced.count("file") == 1 and synced[-1] == "dir" and synced.count("dir") >= 2  # new folders, the link
    synced.clear()
    store.replace("a/b/c.json", b"[]")
    assert synced == ["file", "dir"]


WRITER = r"""
import sys
from pathlib import Path
from xboot.service.storage.file import FileStore
store = FileStore(Path(sys.argv[1]))
n = 0
while True:
    store.create(f"certificates/dev/{n:08d}.json", b'{"n": %d, "pad": "%s"}' % (n, b"x" * 4000))
    print(n, flush=True)
    n += 1
"""


def test_kill_9_mid_write_loses_no_acknowledged_record_and_leftovers_are_removed(tmp_path):
    import signal

    from xboot.service.storage.file import ABANDONED_SECONDS, FileStore

    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parent.parent)  # fmt: skip
    acknowledged = [int(writer.stdout.readline()) for _ in range(200)]
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    store = FileStore(tmp_path)
    for n in acknowledged:  # every acknowledged record is whole
        assert json.loads(store.read(f"certificates/dev/{n:08d}.json"))["n"] == n
    for key in store.list("certificates/"):
        json.loads(store.read(key))  # and nothing half-written is visible as an object
    folder = tmp_path / "certificates" / "dev"
    stale, fresh = folder / ".tmp-stale", folder / ".tmp-fresh"
    stale.write_bytes(b"half"), fresh.write_bytes(b"live")
    os.utime(stale, (time.time() - ABANDONED_SECONDS - 5,) * 2)
    store.list("certificates/")
    assert not stale.exists() and fresh.exists()  # only what no live writer can own is removed


# -- 16. in Azure, no DataStore means Blob on the runtime's storage, or a clear refusal --------------------------


def test_in_azure_without_a_data_store_the_service_refuses_the_local_disk(app_env, functions, monkeypatch, tmp_path):
    monkeypatch.setenv("WEBSITE_INSTANCE_ID", "a1b2c3")
    monkeypatch.delenv("DataDirectory")
    status, body = enroll(functions, "dev-azure", make_csr(tmp_path, "dev-azure").b64)
    assert status == 500 and body["error"] == "configuration_error"
    assert "DataStore" in body["message"] and "temporary disk" in body["message"]


def test_in_azure_the_default_data_store_is_blob_on_azurewebjobsstorage(app_env, functions, monkeypatch, tmp_path,
                                                                        azurite):  # fmt: skip
    from azure.storage.blob import BlobServiceClient

    monkeypatch.setenv("WEBSITE_INSTANCE_ID", "a1b2c3")
    monkeypatch.setenv("AzureWebJobsStorage", azurite.connection_string)
    container = f"data-{secrets.token_hex(4)}"
    monkeypatch.setenv("DataBlobContainer", container)
    status, body = enroll(functions, "dev-azure-blob", make_csr(tmp_path, "dev-azure-blob").b64)
    assert status == 200, body
    names = [b.name for b in BlobServiceClient.from_connection_string(azurite.connection_string)
             .get_container_client(container).list_blobs()]  # fmt: skip
    assert [n for n in names if n.startswith("certificates/")] == [
        f"certificates/dev-azure-blob/{body['serialNumber']}.json"
    ]
    assert not (Path(app_env["DataDirectory"]) / "certificates").exists()


def test_a_ca_whose_key_usage_lacks_key_cert_sign_is_refused(app_env, functions, monkeypatch, tmp_path):
    usage = x509.KeyUsage(True, False, False, False, False, False, True, False, False)  # digitalSignature, cRLSign
    _ca_without(tmp_path, monkeypatch, usage)
    status, body = enroll(functions, "dev-nocertsign", make_csr(tmp_path, "dev-nocertsign").b64)
    assert status == 500 and body["error"] == "configuration_error" and "lacks keyCertSign" in body["message"]
