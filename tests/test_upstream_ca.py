"""Issuer EST, CFSSL and Custom: xboot as the device front door of a CA the customer already runs.

Against real servers (tests/fixtures/upstreams.py): Debian's `cfssl serve`, and a second `xboot serve`
behind nginx (TLS, HTTP Basic or TLS client certificates) as the EST upstream. The front door runs in
process. Each test checks what the device gets, what the audit log keeps, and what the upstream saw.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7

import tests.upstream_hook
from tests.conftest import Functions, Reply
from tests.fixtures.live_server import free_port
from tests.fixtures.upstreams import Cfssl, EstUpstream
from tests.helpers import make_csr, openssl
from tests.test_revocation import enroll, est_reenroll, new_key, post_report, refused, revoke, sign_report
from xboot.pki import sha256_fingerprint
from xboot.service.ca.devca import DevelopmentCa
from xboot.service.ca.issuers.transport import clear_connections
from xboot.service.ca.issuers.upstream import clear_authority_cache
from xboot.service.lifecycle.audit import AUDIT_PREFIX
from xboot.service.settings import Settings
from xboot.service.storage import open_data_store

EST = "/api/.well-known/est"


@pytest.fixture(autouse=True)
def _fresh_authorities() -> Iterator[None]:
    clear_authority_cache()
    clear_connections()
    tests.upstream_hook.CALLS.clear()
    yield
    clear_authority_cache()
    clear_connections()


def use(monkeypatch: pytest.MonkeyPatch, settings: dict[str, str]) -> None:
    for name, value in settings.items():
        monkeypatch.setenv(name, value)


def records() -> list[dict]:
    store = open_data_store(Settings.from_environ())
    return [json.loads(store.read(key) or b"{}") for key in store.list(AUDIT_PREFIX)]


def json_enroll(functions: Functions, tmp_path: Path, registration_id: str, *extra: str) -> Reply:
    csr = make_csr(tmp_path / registration_id, registration_id, None, *extra)
    return functions.call("POST", "/api/certificate", {"RegistrationId": registration_id, "Csr": csr.b64})


def est_enroll(functions: Functions, tmp_path: Path, registration_id: str) -> Reply:
    csr = make_csr(tmp_path / registration_id, registration_id)
    return functions.call("POST", f"{EST}/simpleenroll", base64.encodebytes(csr.der),
                          {"Content-Type": "application/pkcs10"})  # fmt: skip


def chain_of(reply: Reply) -> list[x509.Certificate]:
    assert reply.status == 200, reply.body
    return x509.load_pem_x509_certificates(reply.json()["certificateChain"].encode())


def root_of(ca: DevelopmentCa) -> x509.Certificate:
    return x509.load_pem_x509_certificate(ca.root_certificate.read_bytes())


def issuing_of(ca: DevelopmentCa) -> x509.Certificate:
    return x509.load_pem_x509_certificate(ca.certificate.read_bytes())


def openssl_verifies(chain: list[x509.Certificate], root: x509.Certificate, directory: Path) -> None:
    """`openssl verify -x509_strict -purpose sslclient`: the device's chain as a relying party checks it."""
    directory.mkdir(parents=True, exist_ok=True)
    pem = serialization.Encoding.PEM
    (directory / "root.pem").write_bytes(root.public_bytes(pem))
    (directory / "untrusted.pem").write_bytes(b"".join(c.public_bytes(pem) for c in chain[1:]))
    (directory / "leaf.pem").write_bytes(chain[0].public_bytes(pem))
    out = openssl("verify", "-x509_strict", "-purpose", "sslclient", "-CAfile", str(directory / "root.pem"),
                  "-untrusted", str(directory / "untrusted.pem"), str(directory / "leaf.pem"))  # fmt: skip
    assert out.strip().endswith(b"OK")


def no_record_and(reply: Reply, status: int, code: str) -> str:
    message = refused(reply, status, code)
    assert records() == []
    return message


# -- CFSSL ---------------------------------------------------------------------------------------------


def test_cfssl_authsign_issues_through_json_and_the_chain_verifies(cfssl: Cfssl, app_env, functions, monkeypatch,
                                                                    tmp_path):  # fmt: skip
    use(monkeypatch, cfssl.settings())
    before = cfssl.signed()
    reply = json_enroll(functions, tmp_path, "cf-json-1")
    chain = chain_of(reply)
    assert cfssl.signed() == before + 1
    assert chain[1:] == [issuing_of(cfssl.ca), root_of(cfssl.ca)]
    assert chain[0].issuer == issuing_of(cfssl.ca).subject
    openssl_verifies(chain, root_of(cfssl.ca), tmp_path / "verify")
    [record] = records()
    assert record["issuedBy"] == "CFSSL" and record["registrationId"] == "cf-json-1"
    assert record["issuerSha256Fingerprint"] == sha256_fingerprint(issuing_of(cfssl.ca))
    assert record["sha256Fingerprint"] == sha256_fingerprint(chain[0])


def test_cfssl_plain_sign_with_a_profile_and_its_chain_from_info(cfssl: Cfssl, app_env, functions, monkeypatch,
                                                                  tmp_path):  # fmt: skip
    """No auth key: /sign. No IssuerCaCertificates: the chain is what /info says (the issuing CA alone), so
    the anchor is the issuing CA's own fingerprint."""
    settings = cfssl.settings(IssuerProfile="open", IssuerTrustedFingerprint=sha256_fingerprint(issuing_of(cfssl.ca)))
    del settings["IssuerAuthKey"], settings["IssuerCaCertificates"]
    use(monkeypatch, settings)
    chain = chain_of(json_enroll(functions, tmp_path, "cf-open-1"))
    assert chain[1:] == [issuing_of(cfssl.ca)]


def test_cfssl_through_est_and_cacerts_says_the_upstream_chain(cfssl: Cfssl, app_env, functions, monkeypatch,
                                                                tmp_path):  # fmt: skip
    use(monkeypatch, cfssl.settings())
    reply = est_enroll(functions, tmp_path, "cf-est-1")
    assert reply.status == 200, reply.body
    [leaf] = pkcs7.load_der_pkcs7_certificates(base64.b64decode(reply.body))
    assert leaf.issuer == issuing_of(cfssl.ca).subject
    cacerts = functions.call("GET", f"{EST}/cacerts")
    served = pkcs7.load_der_pkcs7_certificates(base64.b64decode(cacerts.body))  # a SET OF: DER order
    assert sorted(map(sha256_fingerprint, served)) == sorted(
        map(sha256_fingerprint, [issuing_of(cfssl.ca), root_of(cfssl.ca)])
    )
    assert records()[0]["issuedBy"] == "CFSSL"


def test_no_crl_of_ours_for_an_upstream_and_health_names_it(cfssl: Cfssl, app_env, functions, monkeypatch):
    use(monkeypatch, cfssl.settings())
    message = refused(functions.call("GET", "/api/crl"), 404, "no_crl")
    assert "Issuer CFSSL" in message
    health = functions.call("GET", "/api/health").json()["ca"]
    assert health["issuer"] == "CFSSL" and "location" not in health and "crlSign" not in health
    assert health["sha256Fingerprint"] == sha256_fingerprint(issuing_of(cfssl.ca))
    assert cfssl.url not in json.dumps(health)


@pytest.mark.parametrize(
    ("profile", "code"),
    [("server", "upstream_wrong_profile"), ("ca", "upstream_wrong_profile"), ("decade", "upstream_wrong_validity")],
)
def test_cfssl_certificates_xboot_would_not_issue_are_refused(profile, code, cfssl: Cfssl, app_env, functions,
                                                              monkeypatch, tmp_path):  # fmt: skip
    """serverAuth only; a CA certificate; ten years against CertificateValidityDays 365: 502, nothing kept."""
    use(monkeypatch, cfssl.settings(IssuerProfile=profile))
    before = cfssl.signed()
    no_record_and(json_enroll(functions, tmp_path, f"cf-{profile}"), 502, code)
    assert cfssl.signed() == before + 1  # cfssl did sign: xboot refused what it answered


def test_a_longer_certificate_validity_setting_admits_the_decade_profile(cfssl: Cfssl, app_env, functions,
                                                                         monkeypatch, tmp_path):  # fmt: skip
    use(monkeypatch, cfssl.settings(IssuerProfile="decade", CertificateValidityDays="3650"))
    assert json_enroll(functions, tmp_path, "cf-decade").status == 200


def test_a_wrong_cfssl_auth_key_is_refused_upstream(cfssl: Cfssl, app_env, functions, monkeypatch, tmp_path):
    use(monkeypatch, cfssl.settings(IssuerAuthKey="ff" * 32))
    message = no_record_and(json_enroll(functions, tmp_path, "cf-badkey"), 502, "upstream_refused")
    assert "ff" * 32 not in message


def test_an_upstream_chain_that_misses_the_trusted_root_is_refused(cfssl: Cfssl, app_env, functions, monkeypatch,
                                                                   tmp_path):  # fmt: skip
    """Fetched from /info (only the issuing CA) against the root's fingerprint: the path cannot reach it."""
    settings = cfssl.settings()
    del settings["IssuerCaCertificates"]
    use(monkeypatch, settings)
    before = cfssl.signed()
    no_record_and(json_enroll(functions, tmp_path, "cf-untrusted"), 502, "upstream_untrusted")
    assert cfssl.signed() == before  # nothing was sent to be signed


def test_a_pinned_chain_for_another_fingerprint_is_a_configuration_error(cfssl: Cfssl, app_env, functions,
                                                                         monkeypatch, tmp_path):  # fmt: skip
    use(monkeypatch, cfssl.settings(IssuerTrustedFingerprint="AB" * 32))
    message = no_record_and(json_enroll(functions, tmp_path, "cf-pinned"), 500, "configuration_error")
    assert "IssuerCaCertificates" in message and "IssuerTrustedFingerprint" in message


def test_checks_and_authorization_run_before_the_upstream_is_called(cfssl: Cfssl, app_env, functions, monkeypatch,
                                                                    tmp_path):  # fmt: skip
    use(monkeypatch, cfssl.settings())
    before = cfssl.signed()
    # a CSR whose CN is not the registration ID; a forwardable-check refusal; no credential for DeviceKey
    csr = make_csr(tmp_path / "x", "cf-other")
    reply = functions.call("POST", "/api/certificate", {"RegistrationId": "cf-mismatch", "Csr": csr.b64})
    refused(reply, 400, "cn_mismatch")
    monkeypatch.setenv("EnrollmentAuthorization", "DeviceKey")
    monkeypatch.setenv("DeviceKeyGroupKey", base64.b64encode(b"k" * 32).decode())
    refused(json_enroll(functions, tmp_path, "cf-nokey"), 401, "authorization_required")
    monkeypatch.setenv("EnrollmentAuthorization", "FunctionKey")
    assert revoke(functions, registrationId="cf-revoked", reason="cessationOfOperation").status == 201
    refused(json_enroll(functions, tmp_path, "cf-revoked"), 403, "registration_revoked")
    assert cfssl.signed() == before and records() == []


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param(["-subj", "/O=Evil Corp/CN=cf-fwd"], id="subject-beyond-cn"),
        pytest.param(["-addext", "subjectAltName=DNS:bank.example"], id="subject-alt-name"),
        pytest.param(["-addext", "basicConstraints=critical,CA:TRUE"], id="ca-true"),
    ],
)
def test_csrs_an_upstream_would_copy_from_are_refused_before_it_is_called(extra, cfssl: Cfssl, app_env, functions,
                                                                          monkeypatch, tmp_path):  # fmt: skip
    use(monkeypatch, cfssl.settings())
    before = cfssl.signed()
    key = new_key(tmp_path)
    subject = extra[1] if extra[0] == "-subj" else "/CN=cf-fwd"
    rest = [] if extra[0] == "-subj" else extra
    der = openssl("req", "-new", "-key", str(key), "-subj", subject, "-outform", "DER", *rest)
    body = {"RegistrationId": "cf-fwd", "Csr": base64.b64encode(der).decode()}
    no_record_and(functions.call("POST", "/api/certificate", body), 400, "csr_not_forwardable")
    assert cfssl.signed() == before


def test_revocation_still_bites_for_upstream_certificates(cfssl: Cfssl, app_env, functions, monkeypatch, tmp_path):
    """Renewal by the upstream-issued certificate works; revoked, it cannot sign reports or renew."""
    use(monkeypatch, {**cfssl.settings(), "EstTrustForwardedClientCert": "true"})
    device = enroll(functions, tmp_path / "device", "cf-revoke")
    (device.directory / "chain.pem").write_bytes(
        b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (issuing_of(cfssl.ca), root_of(cfssl.ca)))
    )
    assert post_report(functions, sign_report(device)).status == 201  # trusted: the issuing CA is the upstream's
    renewed = est_reenroll(functions, device, new_key(tmp_path, "renew.key"))
    assert renewed.status == 200, renewed.body
    assert revoke(functions, certificate=device.pem, reason="keyCompromise").status == 201
    refused(post_report(functions, sign_report(device)), 422, "revoked")
    again = est_reenroll(functions, device, new_key(tmp_path, "again.key"))
    assert again.status == 401 and b"revoked" in again.body


def test_subject_attributes_and_crl_points_are_refused_with_an_upstream(cfssl: Cfssl, app_env, functions,
                                                                        monkeypatch, tmp_path):  # fmt: skip
    use(monkeypatch, cfssl.settings(SubjectAttributes="O=Example"))
    message = no_record_and(json_enroll(functions, tmp_path, "cf-attrs"), 500, "configuration_error")
    assert "SubjectAttributes" in message and "Issuer Local" in message


# -- EST upstream (xboot behind nginx) ------------------------------------------------------------------


def test_est_upstream_with_basic_through_json_and_est(est_upstream: EstUpstream, app_env, functions, monkeypatch,
                                                      tmp_path):  # fmt: skip
    use(monkeypatch, est_upstream.basic_settings())
    chain = chain_of(json_enroll(functions, tmp_path, "est-json-1"))
    upstream_ca = est_upstream.upstream.ca
    assert chain[1:] == [issuing_of(upstream_ca), root_of(upstream_ca)]
    openssl_verifies(chain, root_of(upstream_ca), tmp_path / "verify")
    reply = est_enroll(functions, tmp_path, "est-est-1")
    assert reply.status == 200, reply.body
    assert {r["registrationId"] for r in records()} == {"est-json-1", "est-est-1"}
    assert {r["issuedBy"] for r in records()} == {"EST"}
    # the upstream kept its own audit record of both: it is a CA of its own
    upstream_records = list((est_upstream.upstream.data_dir / "certificates").glob("*/*.json"))
    assert {p.parent.name for p in upstream_records} >= {"est-json-1", "est-est-1"}


def test_est_upstream_with_a_tls_client_certificate(est_upstream: EstUpstream, app_env, functions, monkeypatch,
                                                    tmp_path):  # fmt: skip
    use(monkeypatch, est_upstream.mtls_settings())
    assert chain_of(json_enroll(functions, tmp_path, "est-mtls-1"))[0].issuer == issuing_of(
        est_upstream.upstream.ca).subject  # fmt: skip


@pytest.mark.parametrize(
    ("change", "status", "code"),
    [
        pytest.param({"IssuerPassword": "wrong"}, 502, "upstream_refused", id="wrong-password"),
        pytest.param({"IssuerClientCertificateFile": "stranger"}, 502, "upstream_refused", id="stranger-client-cert"),
        pytest.param({"IssuerTlsCaFile": "system"}, 502, "upstream_tls_untrusted", id="server-cert-untrusted"),
    ],
)
def test_est_upstream_refusals(change, status, code, est_upstream: EstUpstream, app_env, functions, monkeypatch,
                               tmp_path):  # fmt: skip
    pin = tmp_path / "pinned.pem"
    pin.write_bytes(est_upstream.upstream.ca.certificate.read_bytes() +
                    est_upstream.upstream.ca.root_certificate.read_bytes())  # fmt: skip
    if "IssuerClientCertificateFile" in change:
        settings = est_upstream.mtls_settings(IssuerClientCertificateFile=str(est_upstream.stranger_certificate))
    else:
        settings = est_upstream.basic_settings(IssuerCaCertificates=str(pin), **change)
    if change.get("IssuerTlsCaFile") == "system":
        del settings["IssuerTlsCaFile"]
    use(monkeypatch, settings)
    message = no_record_and(json_enroll(functions, tmp_path, "est-refused"), status, code)
    assert "wrong" not in message and str(tmp_path) not in message


def test_basic_credentials_never_cross_the_network_in_clear_text(app_env, functions, monkeypatch, tmp_path,
                                                                 session_ca):  # fmt: skip
    anchor = sha256_fingerprint(issuing_of(session_ca))
    use(monkeypatch, {"Issuer": "EST", "IssuerUrl": "http://est.example.com/.well-known/est", "IssuerUsername": "ra",
                      "IssuerPassword": "secret", "IssuerTrustedFingerprint": anchor,
                      "IssuerCaCertificates": str(app_env["CertificateFile"])})  # fmt: skip
    message = refused(json_enroll(functions, tmp_path, "est-clear"), 500, "configuration_error")
    assert "https://" in message and "secret" not in message


# -- faults ---------------------------------------------------------------------------------------------


class _Fake(BaseHTTPRequestHandler):
    """An upstream that misbehaves as `server.plan` says: a list of (status, body) answers, one per request,
    the last repeated; "hang" never answers."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.server.requests += 1  # type: ignore[attr-defined]
        plan = self.server.plan  # type: ignore[attr-defined]
        status, body = plan[min(self.server.requests, len(plan)) - 1]  # type: ignore[attr-defined]
        if status == "hang":
            time.sleep(10)
            return
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def fake_upstream() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Fake)
    server.daemon_threads = True
    server.requests = 0  # type: ignore[attr-defined]
    server.plan = [(200, b"{}")]  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def fake_settings(cfssl: Cfssl, url: str, **extra: str) -> dict[str, str]:
    return cfssl.settings(IssuerUrl=url, **extra)


@pytest.mark.parametrize(
    ("plan", "status", "code", "requests"),
    [
        pytest.param([(503, b"{}")], 503, "upstream_unavailable", 3, id="503-retried-then-given-up"),
        pytest.param([(503, b"{}"), (502, b"")], 503, "upstream_unavailable", 3, id="502-retried"),
        pytest.param([(500, b'{"success":false,"errors":[{"code":1000}]}')], 502, "upstream_refused", 1,
                     id="500-not-retried"),
        pytest.param([(200, b"<html>hello</html>")], 502, "upstream_invalid_answer", 1, id="not-json"),
        pytest.param([(200, b'{"success":true,"result":{"certificate":"nope"}}')], 502, "upstream_invalid_answer", 1,
                     id="no-pem"),
        pytest.param([(200, b'{"success":true,"result":[]}')], 502, "upstream_refused", 1, id="result-not-object"),
        pytest.param([(200, b"x" * 300_000)], 502, "upstream_failed", 1, id="too-large"),
        pytest.param([("hang", b"")], 503, "upstream_unavailable", 1, id="slow"),
    ],
)  # fmt: skip
def test_upstream_faults_answer_bounded_json_and_keep_nothing(plan, status, code, requests, fake_upstream, cfssl,
                                                              app_env, functions, monkeypatch, tmp_path):  # fmt: skip
    fake_upstream.plan = plan  # type: ignore[attr-defined]
    port = fake_upstream.server_address[1]
    use(monkeypatch, fake_settings(cfssl, f"http://127.0.0.1:{port}", IssuerTimeoutSeconds="1"))
    started = time.monotonic()
    reply = json_enroll(functions, tmp_path, "fault-1")
    elapsed = time.monotonic() - started
    no_record_and(reply, status, code)
    assert fake_upstream.requests == requests  # type: ignore[attr-defined]
    if status == 503:
        assert reply.headers.get("Retry-After") == "10"
    assert elapsed < 5  # the slow upstream takes 10 s


def test_an_upstream_that_is_down_is_503_with_retry_after(cfssl: Cfssl, app_env, functions, monkeypatch, tmp_path):
    use(monkeypatch, fake_settings(cfssl, f"http://127.0.0.1:{free_port()}"))
    reply = json_enroll(functions, tmp_path, "down-1")
    no_record_and(reply, 503, "upstream_unavailable")
    assert reply.headers.get("Retry-After") == "10"


def test_the_request_deadline_bounds_every_attempt(fake_upstream, cfssl, app_env, functions, monkeypatch, tmp_path):
    fake_upstream.plan = [("hang", b"")]  # type: ignore[attr-defined]
    port = fake_upstream.server_address[1]
    use(monkeypatch, fake_settings(cfssl, f"http://127.0.0.1:{port}", IssuerTimeoutSeconds="60",
                                   RequestDeadlineSeconds="1"))  # fmt: skip
    started = time.monotonic()
    no_record_and(json_enroll(functions, tmp_path, "deadline-1"), 503, "upstream_unavailable")
    assert time.monotonic() - started < 5  # the upstream takes 10 s, the per-attempt timeout is 60 s


def test_a_fetched_chain_outlives_an_upstream_outage(cfssl: Cfssl, app_env, functions, monkeypatch, tmp_path):
    """Fetched once (from /info), the chain keeps serving /cacerts when the upstream then goes away."""
    anchor = sha256_fingerprint(issuing_of(cfssl.ca))
    settings = cfssl.settings(IssuerTrustedFingerprint=anchor, SignerCacheSeconds="0")
    del settings["IssuerCaCertificates"]
    # a forwarder we can cut: the front door talks to it, it talks to cfssl
    relay = socket.create_server(("127.0.0.1", 0))
    port = relay.getsockname()[1]
    host, cfssl_port = cfssl.url.removeprefix("http://").split(":")

    opened: list[socket.socket] = []

    def pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)

    def forward() -> None:
        """Every connection piped both ways to cfssl (the transport may retry or open another), until cut."""
        while True:
            try:
                connection, _ = relay.accept()
            except OSError:  # the relay was closed: the outage
                return
            upstream = socket.create_connection((host, int(cfssl_port)))
            opened.extend((connection, upstream))
            for source, sink in ((connection, upstream), (upstream, connection)):
                threading.Thread(target=pipe, args=(source, sink), daemon=True).start()

    thread = threading.Thread(target=forward, daemon=True)
    thread.start()
    use(monkeypatch, {**settings, "IssuerUrl": f"http://127.0.0.1:{port}"})
    first = functions.call("GET", f"{EST}/cacerts")
    assert first.status == 200, first.body
    with contextlib.suppress(OSError):
        relay.shutdown(socket.SHUT_RDWR)  # wakes the accept (close alone may not, on Linux)
    relay.close()
    thread.join(5)
    assert not thread.is_alive()
    for connection in opened:
        connection.close()
    again = functions.call("GET", f"{EST}/cacerts")
    assert again.status == 200 and again.body == first.body


# -- Custom ---------------------------------------------------------------------------------------------


def custom_settings(session_ca: DevelopmentCa, tmp_path: Path, **extra: str) -> dict[str, str]:
    chain = tmp_path / "custom-chain.pem"
    chain.write_bytes(session_ca.certificate.read_bytes() + session_ca.root_certificate.read_bytes())
    return {
        "Issuer": "Custom",
        "IssuerFunction": "tests.upstream_hook:issue",
        "IssuerCaCertificates": str(chain),
        "IssuerTrustedFingerprint": sha256_fingerprint(root_of(session_ca)),
        "TestHookCa": str(session_ca.directory),
        **extra,
    }


@pytest.mark.parametrize("mode", ["good", "pem"])
def test_custom_hook_issues(mode, session_ca, app_env, functions, monkeypatch, tmp_path):
    use(monkeypatch, custom_settings(session_ca, tmp_path, TestHookMode=mode))
    chain = chain_of(json_enroll(functions, tmp_path, "custom-1"))
    assert tests.upstream_hook.CALLS == ["custom-1"]
    openssl_verifies(chain, root_of(session_ca), tmp_path / "verify")
    assert records()[0]["issuedBy"] == "Custom"


@pytest.mark.parametrize(
    ("mode", "status", "code"),
    [
        ("other-key", 502, "upstream_wrong_key"),
        ("other-cn", 502, "upstream_wrong_subject"),
        ("ca", 502, "upstream_wrong_profile"),
        ("no-client-auth", 502, "upstream_wrong_profile"),
        ("no-digital-signature", 502, "upstream_wrong_profile"),
        ("other-ca", 502, "upstream_untrusted"),
        ("sha1", 502, "upstream_untrusted"),
        ("future", 502, "upstream_wrong_validity"),
        ("expired", 502, "upstream_wrong_validity"),
        ("too-long", 502, "upstream_wrong_validity"),
        ("empty", 502, "upstream_invalid_answer"),
        ("junk", 502, "upstream_invalid_answer"),
        ("raise", 502, "upstream_failed"),
        ("unavailable", 503, "backend_unavailable"),
    ],
)
def test_custom_hook_answers_xboot_would_not_issue_are_refused(mode, status, code, session_ca, app_env, functions,
                                                               monkeypatch, tmp_path, caplog):  # fmt: skip
    use(monkeypatch, custom_settings(session_ca, tmp_path, TestHookMode=mode))
    reply = json_enroll(functions, tmp_path, f"custom-{mode}")
    message = no_record_and(reply, status, code)
    assert [f"custom-{mode}"] == tests.upstream_hook.CALLS
    assert "secret detail" not in message and "secret detail" not in caplog.text
    if mode == "unavailable":
        assert reply.headers["Retry-After"] == "42"


def test_a_slow_custom_hook_is_cut_off(session_ca, app_env, functions, monkeypatch, tmp_path):
    use(monkeypatch, custom_settings(session_ca, tmp_path, TestHookMode="slow", IssuerTimeoutSeconds="1"))
    started = time.monotonic()
    no_record_and(json_enroll(functions, tmp_path, "custom-slow"), 503, "upstream_unavailable")
    assert time.monotonic() - started < 5  # the hook takes 10 s


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"IssuerFunction": "tests.no_such_module:issue"}, "cannot be imported"),
        ({"IssuerFunction": "tests.upstream_hook:nothing"}, "has no function"),
        ({"IssuerFunction": "issue"}, "module:function"),
        ({"IssuerCaCertificates": ""}, "IssuerCaCertificates is required"),
        ({"IssuerTrustedFingerprint": "12:34"}, "IssuerTrustedFingerprint must be"),
        ({"Issuer": "Vault"}, "unknown issuer"),
    ],
)
def test_custom_configuration_errors_name_the_setting(change, named, session_ca, app_env, functions, monkeypatch,
                                                      tmp_path):  # fmt: skip
    use(monkeypatch, custom_settings(session_ca, tmp_path, **change))
    message = no_record_and(json_enroll(functions, tmp_path, "custom-config"), 500, "configuration_error")
    assert named in message
    assert tests.upstream_hook.CALLS == []


def test_enrollment_and_the_audit_record_are_unchanged_for_local(app_env, functions, tmp_path, session_ca):
    chain = chain_of(json_enroll(functions, tmp_path, "local-1"))
    assert chain[1] == issuing_of(session_ca)
    [record] = records()
    assert record["issuedBy"] == "Local"
    assert functions.call("GET", "/api/health").json()["ca"]["issuer"] == "Local"


def test_the_readme_custom_hook_runs_as_written(session_ca, app_env, functions, monkeypatch, tmp_path):
    """The README's `my_pki.py`, copied out of the README, against a stand-in for "your PKI's" REST API."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    start = readme.index("```python\n# my_pki.py")
    source = readme[start + len("```python\n") : readme.index("```\n", start + 10)]
    (tmp_path / "hooks").mkdir()
    (tmp_path / "hooks" / "my_pki.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path / "hooks"))
    seen: list[dict] = []

    class Pki(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            document = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append(document)
            csr = x509.load_pem_x509_csr(document["csr"].encode())
            settings = Settings({"TestHookCa": str(session_ca.directory), "TestHookMode": "pem"})
            pem = tests.upstream_hook.issue(csr, document["device"], settings)
            body = json.dumps({"certificatePem": pem}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Pki)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        use(monkeypatch, custom_settings(session_ca, tmp_path, IssuerFunction="my_pki:issue",
                                         MyPkiUrl=f"http://127.0.0.1:{server.server_address[1]}/issue"))  # fmt: skip
        chain = chain_of(json_enroll(functions, tmp_path, "readme-hook"))
    finally:
        server.shutdown()
        server.server_close()
    assert [d["device"] for d in seen] == ["readme-hook"]
    openssl_verifies(chain, root_of(session_ca), tmp_path / "verify")


def test_a_revocation_is_forwarded_to_cfssl(cfssl: Cfssl, app_env, functions, monkeypatch, tmp_path):
    use(monkeypatch, cfssl.settings())
    device = enroll(functions, tmp_path / "device", "cf-forward")
    assert cfssl.status(device.serial) == ("good", 0)
    reply = revoke(functions, serialNumber=device.serial, reason="keyCompromise")
    assert reply.status == 201, reply.body
    assert reply.json()["upstream"] == {"issuer": "CFSSL", "revoked": [device.serial], "failed": []}
    assert cfssl.status(device.serial) == ("revoked", 1)  # RFC 5280 reason code 1: keyCompromise
    again = revoke(functions, serialNumber=device.serial, reason="keyCompromise")  # a retry forwards again
    assert again.status == 200 and again.json()["upstream"]["revoked"] == [device.serial]


def test_a_revocation_cfssl_cannot_take_still_stands_in_xboot(cfssl: Cfssl, app_env, functions, monkeypatch,
                                                               tmp_path):  # fmt: skip
    use(monkeypatch, cfssl.settings())
    device = enroll(functions, tmp_path / "device", "cf-forward-down")
    monkeypatch.setenv("IssuerUrl", f"http://127.0.0.1:{free_port()}")  # CFSSL gone; the chain is pinned
    reply = revoke(functions, serialNumber=device.serial, reason="keyCompromise")
    assert reply.status == 201, reply.body
    assert reply.json()["upstream"] == {"issuer": "CFSSL", "revoked": [], "failed": [device.serial]}
    assert cfssl.status(device.serial) == ("good", 0)
    refused(post_report(functions, sign_report(device)), 422, "revoked")


def test_a_registration_id_revocation_without_certificates_forwards_nothing(cfssl: Cfssl, app_env, functions,
                                                                            monkeypatch):  # fmt: skip
    use(monkeypatch, cfssl.settings())
    reply = revoke(functions, registrationId="cf-never-enrolled", reason="cessationOfOperation")
    assert reply.status == 201 and "upstream" not in reply.json()


def test_every_issuer_setting_is_documented_in_the_readme():
    root = Path(__file__).resolve().parent.parent
    names = set()
    for module in (root / "xboot" / "service" / "ca" / "issuers").glob("*.py"):
        names |= set(re.findall(r'"(Issuer[A-Za-z]*)"', module.read_text()))
    assert {"Issuer", "IssuerUrl", "IssuerAuthKey", "IssuerFunction"} <= names
    readme = (root / "README.md").read_text()
    assert [name for name in sorted(names) if f"`{name}`" not in readme] == []


def test_serve_names_the_upstream_at_start(cfssl: Cfssl, app_env, monkeypatch, capsys):
    from xboot.cli.service import _checks_pass

    use(monkeypatch, cfssl.settings())
    assert _checks_pass()
    line = next(line for line in capsys.readouterr().err.splitlines() if line.startswith("CA ("))
    assert line.startswith("CA (Issuer CFSSL, upstream): CN=xboot development intermediate CA")
    assert sha256_fingerprint(issuing_of(cfssl.ca)) in line


def test_a_revocation_cfssl_does_not_know_is_reported_failed(cfssl: Cfssl, app_env, functions, monkeypatch):
    """A serial xboot never recorded, named as this CA's: CFSSL answers "not found" to both identifiers."""
    use(monkeypatch, cfssl.settings())
    reply = revoke(functions, serialNumber="7E57AB1E", reason="keyCompromise")
    assert reply.status == 201, reply.body
    assert reply.json()["upstream"] == {"issuer": "CFSSL", "revoked": [], "failed": ["7E57AB1E"]}
