"""xboot.device.client as a library: retries, verification of what the service returns, device files, signing.

The service is stood in for by a scripted HTTP server where the test needs answers the
real one does not give (503 with Retry-After, garbage, slowness); end-to-end runs against
`xboot serve` are in test_cli.py.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.fixtures.live_server import free_port
from tests.helpers import openssl
from xboot.device import (
    ClientError,
    DeviceFiles,
    DeviceIdentity,
    Enrollment,
    RetryPolicy,
    ServerRefused,
    ServerUnavailable,
    VerificationFailed,
    XbootClient,
    build_csr,
    generate_key,
    normalize_fingerprint,
    renewal_due,
    split_service_url,
    verify_enrollment,
)
from xboot.device.enrollment import parse_enrollment
from xboot.device.simulate import DeviceOutcome, percentile, summarize
from xboot.device.smime import sign_report
from xboot.device.transport import parse_retry_after
from xboot.service.ca.devca import DevelopmentCa, ca_certificate, create_development_ca

NOW = dt.datetime.now(dt.UTC)


# -- a scripted service ----------------------------------------------------------------------------


@dataclass
class Script:
    """Replies served in order (the last one repeats), and what was received."""

    replies: list[tuple[int, dict[str, str], bytes]]
    received: list[dict[str, object]] = field(default_factory=list)
    delay: float = 0.0


@pytest.fixture
def scripted() -> Iterator[tuple[str, Script]]:
    script = Script([(200, {}, b"{}")])

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            script.received.append(
                {
                    "method": self.command,
                    "path": self.path,
                    "headers": {k.lower(): v for k, v in self.headers.items()},
                    "body": body,
                }
            )
            if script.delay:
                time.sleep(script.delay)
            status, headers, payload = script.replies[min(len(script.received), len(script.replies)) - 1]
            self.send_response(status)
            for name, value in {"Content-Type": "application/json", **headers}.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = _answer

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", script
    server.shutdown()
    server.server_close()


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None):
    return status, headers or {}, json.dumps({"error": code, "message": message}).encode()


def _client(url: str, sleeps: list[float], **options: object) -> XbootClient:
    return XbootClient(url, retry=RetryPolicy(attempts=3), sleep=sleeps.append, **options)  # type: ignore[arg-type]


# -- URLs, fingerprints, Retry-After ---------------------------------------------------------------


def test_portal_function_url_gives_base_and_code() -> None:
    assert split_service_url("https://app.azurewebsites.net/api/certificate?code=K3y==") == (
        "https://app.azurewebsites.net",
        "K3y==",
    )
    assert split_service_url("http://127.0.0.1:7071/") == ("http://127.0.0.1:7071", None)
    assert split_service_url("https://host/prefix/api") == ("https://host/prefix", None)
    with pytest.raises(ClientError, match="http"):
        split_service_url("file:///etc/passwd")


def test_fingerprints_normalize_to_the_trust_api_form() -> None:
    colon = "BB:EA:2A:13:C7:21:DB:E0:01:37:07:58:5B:ED:85:09:47:D7:FF:8F:BF:9E:E4:65:9C:C3:BA:14:E3:7C:DD:D6"
    assert normalize_fingerprint(colon.lower()) == colon
    assert normalize_fingerprint(colon.replace(":", "")) == colon
    assert normalize_fingerprint(f"sha256 Fingerprint={colon}") == colon
    for bad in ("BB:EA", colon[:-1] + "G", ""):
        with pytest.raises(ClientError, match="SHA-256"):
            normalize_fingerprint(bad)


def test_retry_after_seconds_and_http_dates() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == pytest.approx(10.0)
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_backoff_honours_retry_after_up_to_the_cap_and_grows_with_jitter() -> None:
    policy = RetryPolicy(attempts=5, base_delay=1.0, max_delay=8.0)
    assert policy.delay(1, 3.0) == 3.0
    assert policy.delay(1, 3600.0) == 8.0
    for retry, ceiling in ((1, 1.0), (2, 2.0), (3, 4.0), (6, 8.0)):
        delays = [policy.delay(retry, None) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1  # jittered


# -- retries against a scripted service ------------------------------------------------------------


def test_503_with_retry_after_is_retried_then_succeeds(scripted) -> None:
    url, script = scripted
    script.replies = [
        _error(503, "backend_unavailable", "key store busy", {"Retry-After": "2"}),
        _error(429, "too_many_requests", "slow down", {"Retry-After": "1"}),
        (200, {}, b'{"value": []}'),
    ]
    sleeps: list[float] = []
    notices = []
    client = _client(url, sleeps, admin_key="adm", on_retry=notices.append)
    assert client.trusted_fingerprints() == []
    assert sleeps == [2.0, 1.0]
    assert len(script.received) == 3
    assert [n.attempt for n in notices] == [1, 2]
    assert "503 backend_unavailable: key store busy" in notices[0].reason


def test_retries_are_bounded_and_the_last_answer_is_reported(scripted) -> None:
    url, script = scripted
    script.replies = [_error(503, "backend_unavailable", "Key Vault unreachable", {"Retry-After": "1"})]
    sleeps: list[float] = []
    with pytest.raises(ServerUnavailable) as caught:
        _client(url, sleeps, admin_key="adm").trusted_fingerprints()
    assert len(script.received) == 3
    assert len(sleeps) == 2
    assert caught.value.status == 503
    assert caught.value.code == "backend_unavailable"
    assert "Key Vault unreachable" in caught.value.message
    assert "3 attempts" in caught.value.message


def test_4xx_is_not_retried_and_names_status_code_and_message(scripted) -> None:
    url, script = scripted
    script.replies = [_error(400, "invalid_csr", "Csr is not a base64 DER or PEM PKCS#10 request")]
    sleeps: list[float] = []
    with pytest.raises(ServerRefused) as caught:
        _client(url, sleeps, function_key="fk").enroll("dev-1", generate_key("ec-p256"))
    assert len(script.received) == 1 and sleeps == []
    assert caught.value.status == 400
    assert "POST /api/certificate: 400 invalid_csr: Csr is not" in caught.value.message
    assert "fk" not in caught.value.message


def test_a_non_xboot_answer_is_named_not_echoed(scripted) -> None:
    url, script = scripted
    script.replies = [(502, {"Content-Type": "text/html"}, b"<html>Bad Gateway\n</html>")]
    with pytest.raises(
        ServerUnavailable, match=r"502: the answer is not xboot's JSON \(text/html, 25 bytes\): is --url"
    ) as caught:
        XbootClient(url, retry=RetryPolicy(attempts=1)).upload_report(b"x", "system")
    assert "<html>" not in str(caught.value)


def test_a_name_that_does_not_resolve_is_not_retried() -> None:
    sleeps: list[float] = []
    client = XbootClient("http://no-such-host.invalid", retry=RetryPolicy(attempts=5), sleep=sleeps.append)
    with pytest.raises(ServerUnavailable, match=r"cannot resolve no-such-host\.invalid: check --url"):
        client.upload_report(b"x", "system")
    assert sleeps == []


@pytest.mark.parametrize("url", ["localhost:7071", "ftp://x", "127.0.0.1"])
def test_a_url_without_http_says_what_it_needs(url) -> None:
    with pytest.raises(ClientError, match=r"--url must be the service's http:// or https:// address, for example"):
        XbootClient(url)


def test_keys_travel_in_the_header_function_for_devices_admin_for_trust(scripted) -> None:
    url, script = scripted
    script.replies = [(201, {}, b'{"id": "r1"}'), (200, {}, b'{"value": []}')]
    client = XbootClient(f"{url}/api/certificate?code=device-key", admin_key="admin-key")
    assert client.upload_report(b"signed", "update", 'a"b\r\nX: y.signed') == {"id": "r1"}
    client.trusted_fingerprints()
    upload, trust = script.received
    assert upload["path"] == "/api/install/v1/update-reports"
    assert upload["headers"]["x-functions-key"] == "device-key"
    assert trust["path"] == "/api/mgmt/v1/tenant-config/soup.report.validation.trusted.cert.fingerprints"
    assert trust["headers"]["x-functions-key"] == "admin-key"
    content_type = upload["headers"]["content-type"]
    boundary = content_type.split("boundary=")[1]
    assert content_type.startswith("multipart/form-data")
    disposition = f'--{boundary}\r\nContent-Disposition: form-data; name="signedReport"; filename="a_b__X__y.signed"'
    assert disposition.encode() in upload["body"]
    assert upload["body"].endswith(f"\r\n--{boundary}--\r\n".encode())


def test_redirects_are_reported_not_followed(scripted) -> None:
    url, script = scripted
    script.replies = [(301, {"Location": "https://elsewhere.example/api/certificate"}, b"")]
    with pytest.raises(ServerRefused, match=r"redirects to https://elsewhere\.example/api/certificate") as caught:
        XbootClient(url, function_key="fk").enroll("dev-1", generate_key("ec-p256"))
    assert caught.value.status == 301
    assert len(script.received) == 1


def test_unreachable_service_is_retried_then_reported() -> None:
    sleeps: list[float] = []
    with pytest.raises(ServerUnavailable, match=r"cannot reach http://127\.0\.0\.1") as caught:
        _client(f"http://127.0.0.1:{free_port()}", sleeps).upload_report(b"x", "system")
    assert len(sleeps) == 2
    assert caught.value.status is None


def test_a_slow_service_times_out(scripted) -> None:
    url, script = scripted
    script.delay = 5.0
    started = time.monotonic()
    with pytest.raises(ServerUnavailable, match="timed out"):
        XbootClient(url, timeout=0.2, retry=RetryPolicy(attempts=1)).upload_report(b"x", "system")
    assert time.monotonic() - started < 4.0  # gave up at its 0.2 s timeout, long before the 5 s answer


# -- CSR and verification of what comes back -------------------------------------------------------


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> DevelopmentCa:
    return create_development_ca(tmp_path_factory.mktemp("client-ca"))


def _load_ca(ca: DevelopmentCa) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, x509.Certificate]:
    issuing = x509.load_pem_x509_certificate(ca.certificate.read_bytes())
    key = serialization.load_pem_private_key(ca.key.read_bytes(), None)
    root = x509.load_pem_x509_certificate(ca.root_certificate.read_bytes())
    return issuing, key, root  # type: ignore[return-value]


def _issue(ca: DevelopmentCa, public_key, cn: str, *, days: int = 30, is_ca: bool = False) -> x509.Certificate:
    issuing, issuing_key, _ = _load_ca(ca)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(issuing.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(minutes=5))
        .not_valid_after(NOW + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(issuing_key, hashes.SHA256())
    )


def _enrollment(ca: DevelopmentCa, certificate: x509.Certificate, cn: str = "dev-1") -> Enrollment:
    issuing, _, root = _load_ca(ca)
    return Enrollment(cn, certificate, (issuing, root), "1")


def test_csr_carries_the_registration_id_and_verifies_with_openssl(tmp_path: Path) -> None:
    for key_type in ("ec-p384", "rsa-2048"):
        csr = build_csr(generate_key(key_type), "gw-0042:a")
        path = tmp_path / f"{key_type}.csr"
        path.write_bytes(csr.public_bytes(serialization.Encoding.PEM))
        openssl("req", "-in", str(path), "-verify", "-noout")
        assert csr.subject.rfc4514_string() == "CN=gw-0042:a"


def test_a_certificate_for_our_key_chaining_to_the_root_is_accepted(ca: DevelopmentCa) -> None:
    key = generate_key("ec-p256")
    enrollment = _enrollment(ca, _issue(ca, key.public_key(), "dev-1"))
    verify_enrollment(key, enrollment)
    root = _load_ca(ca)[2]
    verify_enrollment(key, enrollment, anchors=[root])
    # Without the root in the answer, a pinned root completes the chain.
    verify_enrollment(key, Enrollment("dev-1", enrollment.certificate, enrollment.chain[:1], "1"), anchors=[root])


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("other key", "not for this device's key"),
        ("other cn", "not CN=dev-1"),
        ("ca leaf", "is a CA certificate"),
        ("other ca", "chain is broken"),
        ("expired", "not valid now"),
        ("no chain", "no CA certificate"),
        ("other root", "does not chain to the expected root"),
    ],
)
def test_what_does_not_check_out_is_refused(ca: DevelopmentCa, tmp_path: Path, case: str, message: str) -> None:
    key = generate_key("ec-p256")
    certificate = _issue(ca, key.public_key(), "dev-1")
    enrollment = _enrollment(ca, certificate)
    anchors: list[x509.Certificate] = []
    now = None
    if case == "other key":
        enrollment = _enrollment(ca, _issue(ca, generate_key("ec-p256").public_key(), "dev-1"))
    elif case == "other cn":
        enrollment = _enrollment(ca, _issue(ca, key.public_key(), "dev-2"))
    elif case == "ca leaf":
        enrollment = _enrollment(ca, _issue(ca, key.public_key(), "dev-1", is_ca=True))
    elif case == "other ca":
        other = create_development_ca(tmp_path / "other")
        enrollment = Enrollment("dev-1", certificate, _enrollment(other, certificate).chain, "1")
    elif case == "expired":
        now = NOW + dt.timedelta(days=31)
    elif case == "no chain":
        enrollment = Enrollment("dev-1", certificate, (), "1")
    elif case == "other root":
        anchors = [_load_ca(create_development_ca(tmp_path / "other"))[2]]
    with pytest.raises(VerificationFailed, match=message):
        verify_enrollment(key, enrollment, anchors=anchors, now=now)


def test_path_length_of_the_issuer_is_enforced(ca: DevelopmentCa) -> None:
    issuing, issuing_key, root = _load_ca(ca)  # the issuing CA has pathlen 0
    sub_key = generate_key("ec-p256")
    sub_ca = ca_certificate("sub CA", sub_key, issuing, issuing_key, 30, None, NOW)
    key = generate_key("ec-p256")
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dev-1")]))
        .issuer_name(sub_ca.subject)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(NOW - dt.timedelta(minutes=1))
        .not_valid_after(NOW + dt.timedelta(days=1))
        .sign(sub_key, hashes.SHA256())
    )
    with pytest.raises(VerificationFailed, match="allows 0 CAs below it"):
        verify_enrollment(key, Enrollment("dev-1", leaf, (sub_ca, issuing, root), "7"))


def test_malformed_answers_are_verification_failures(ca: DevelopmentCa) -> None:
    key = generate_key("ec-p256")
    certificate = _issue(ca, key.public_key(), "dev-1")
    der = base64.b64encode(certificate.public_bytes(serialization.Encoding.DER)).decode()
    chain = ca.certificate.read_text() + ca.root_certificate.read_text()
    parsed = parse_enrollment({"certificate": der, "certificateChain": certificate_pem(certificate) + chain}, "dev-1")
    assert [c.subject.rfc4514_string() for c in parsed.chain] == [
        "CN=xboot development intermediate CA",
        "CN=xboot development root CA",
    ]
    for document in (None, {"certificate": "%%%"}, {"certificate": der}, {"certificate": der, "certificateChain": "x"}):
        with pytest.raises(VerificationFailed):
            parse_enrollment(document, "dev-1")


def certificate_pem(certificate: x509.Certificate) -> str:
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


def test_enroll_refuses_a_service_that_returns_someone_elses_certificate(scripted, ca: DevelopmentCa) -> None:
    url, script = scripted
    stranger = _issue(ca, generate_key("ec-p256").public_key(), "dev-1")
    document = {
        "certificate": base64.b64encode(stranger.public_bytes(serialization.Encoding.DER)).decode(),
        "certificateChain": certificate_pem(stranger) + ca.certificate.read_text() + ca.root_certificate.read_text(),
    }
    script.replies = [(200, {}, json.dumps(document).encode())]
    with pytest.raises(VerificationFailed, match="not for this device's key"):
        XbootClient(url).enroll("dev-1", generate_key("ec-p256"))
    sent = json.loads(script.received[0]["body"])
    csr = x509.load_der_x509_csr(base64.b64decode(sent["Csr"]))
    assert sent["RegistrationId"] == "dev-1" and csr.is_signature_valid


def test_renewal_is_due_within_the_window(ca: DevelopmentCa) -> None:
    certificate = _issue(ca, generate_key("ec-p256").public_key(), "dev-1", days=30)
    assert not renewal_due(certificate, dt.timedelta(days=20))
    assert renewal_due(certificate, dt.timedelta(days=31))


# -- device files ------------------------------------------------------------------------------------


def test_device_files_are_written_with_private_modes_and_backups(ca: DevelopmentCa, tmp_path: Path) -> None:
    files = DeviceFiles(tmp_path / "dev")
    key = generate_key("ec-p256")
    first = _enrollment(ca, _issue(ca, key.public_key(), "dev-1"))
    files.save(DeviceIdentity(key, first.certificate, first.chain), pfx_password="pfx-secret")
    assert files.key.stat().st_mode & 0o777 == 0o600
    assert files.pfx.stat().st_mode & 0o777 == 0o600
    assert files.certificate.stat().st_mode & 0o777 == 0o644
    assert not list(files.directory.glob("*.bak")) and not list(files.directory.glob(".*.tmp"))
    loaded = files.load()
    assert loaded.certificate == first.certificate and loaded.chain == first.chain
    assert loaded.registration_id == "dev-1"

    second = _enrollment(ca, _issue(ca, key.public_key(), "dev-1"))
    with pytest.raises(ClientError, match=r"device\.pfx exists"):  # it would be left with the old certificate
        files.save(DeviceIdentity(key, second.certificate, second.chain))
    assert files.load().certificate == first.certificate
    files.save(DeviceIdentity(key, second.certificate, second.chain), pfx_password="pfx-secret")
    assert files.load().certificate == second.certificate
    backup = files.directory / "device.crt.bak"
    assert x509.load_pem_x509_certificate(backup.read_bytes()) == first.certificate
    assert (files.directory / "device.key.bak").stat().st_mode & 0o777 == 0o600
    assert (files.directory / "device.pfx.bak").stat().st_mode & 0o777 == 0o600
    out = openssl("pkcs12", "-in", str(files.pfx), "-passin", "pass:pfx-secret", "-nokeys", "-clcerts")
    assert x509.load_pem_x509_certificate(out[out.index(b"-----BEGIN") :]) == second.certificate


def test_a_key_that_does_not_match_the_certificate_is_refused_on_load(ca: DevelopmentCa, tmp_path: Path) -> None:
    files = DeviceFiles(tmp_path / "dev")
    key = generate_key("ec-p256")
    enrollment = _enrollment(ca, _issue(ca, key.public_key(), "dev-1"))
    files.save(DeviceIdentity(key, enrollment.certificate, enrollment.chain))
    files.key.write_bytes(
        generate_key("ec-p256").private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with pytest.raises(ClientError, match="does not belong"):
        files.load()


# -- report signing ----------------------------------------------------------------------------------


def test_signed_report_verifies_with_openssl_cms(ca: DevelopmentCa, tmp_path: Path) -> None:
    key = generate_key("ec-p256")
    enrollment = _enrollment(ca, _issue(ca, key.public_key(), "gw-1"), "gw-1")
    report = b'{\n "timeStamp": "1684201667",\n "gatewayId": "gw-1",\n "values": []\n}\n'
    signed = sign_report(report, enrollment.certificate, key, enrollment.chain)
    assert b'Content-Type: multipart/signed; protocol="application/x-pkcs7-signature"' in signed
    path = tmp_path / "report.signed"
    path.write_bytes(signed)
    content = openssl(
        "cms", "-verify", "-in", str(path), "-CAfile", str(ca.root_certificate), "-purpose", "any", "-text"
    )
    assert content.replace(b"\r\n", b"\n") == report
    printed = openssl("cms", "-cmsout", "-print", "-in", str(path))
    assert printed.count(b"subject: CN=") == 3  # device, issuing CA and root all embedded
    with pytest.raises(ValueError, match="does not belong"):
        sign_report(report, enrollment.certificate, generate_key("ec-p256"), enrollment.chain)


# -- simulation statistics ---------------------------------------------------------------------------


def test_percentiles_and_summary() -> None:
    assert percentile([5, 1, 3, 2, 4], 50) == 3
    assert percentile(list(range(1, 101)), 99) == 99
    assert percentile([7.0], 90) == 7.0
    outcomes = [DeviceOutcome(f"d{i}", seconds={"enroll": i / 1000, "total": i / 1000}) for i in range(1, 11)]
    outcomes += [DeviceOutcome("x", failure="enroll: 503 backend_unavailable", seconds={"total": 1.0})] * 2
    summary = summarize(outcomes, 2.0)
    assert (summary.devices, summary.succeeded, summary.failed) == (12, 10, 2)
    assert summary.failures == {"enroll: 503 backend_unavailable": 2}
    assert summary.latency_ms["enroll"] == {"p50": 5.0, "p90": 9.0, "p99": 10.0, "max": 10.0}
    assert summary.as_dict()["devicesPerSecond"] == 6.0
