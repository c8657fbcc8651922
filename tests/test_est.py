"""EST (RFC 7030 / RFC 8951) through the registered functions: wire format, issuance policy, re-enrollment proofs."""

from __future__ import annotations

import base64
import datetime as dt
import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID

import xboot.service.http.est
from tests.conftest import Functions, Reply
from tests.helpers import make_csr, openssl
from xboot.device.est import EstClient, EstError
from xboot.service.ca.devca import DevelopmentCa, create_development_ca
from xboot.service.serve import FunctionsWsgiApp, Keys

EST = "/api/.well-known/est"
CERTS_ONLY = "application/pkcs7-mime; smime-type=certs-only"
RSA_1024 = ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024"]


def b64(der: bytes) -> bytes:
    """What `openssl base64` writes: 64-character lines."""
    return openssl("base64", stdin=der)


def enroll(functions: Functions, body: bytes | str, headers: dict[str, str] | None = None) -> Reply:
    return functions.call(
        "POST", f"{EST}/simpleenroll", body, {"Content-Type": "application/pkcs10", **(headers or {})}
    )


def reenroll(functions: Functions, body: bytes, client_certificate: x509.Certificate | None) -> Reply:
    headers = {"Content-Type": "application/pkcs10"}
    if client_certificate is not None:
        der = client_certificate.public_bytes(serialization.Encoding.DER)
        headers["X-ARR-ClientCert"] = base64.b64encode(der).decode()
    return functions.call("POST", f"{EST}/simplereenroll", body, headers)


def certs_of(reply: Reply) -> list[x509.Certificate]:
    return pkcs7.load_der_pkcs7_certificates(base64.b64decode(reply.body))


def issued(reply: Reply) -> x509.Certificate:
    assert reply.status == 200, reply.body
    assert reply.mimetype == CERTS_ONLY
    (certificate,) = certs_of(reply)
    return certificate


def refusal(reply: Reply, status: int) -> str:
    """RFC 7030 section 4.2.3: a 4xx with a human-readable text/plain explanation (not our JSON)."""
    assert reply.status == status, reply.body
    assert reply.mimetype == "text/plain"
    text = reply.body.decode()
    assert text.strip() and not text.lstrip().startswith("{")
    return text


def issuing_ca(session_ca: DevelopmentCa) -> x509.Certificate:
    return x509.load_pem_x509_certificate(session_ca.certificate.read_bytes())


def cn(certificate: x509.Certificate) -> str:
    return certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


# -- /cacerts and /csrattrs -----------------------------------------------------------------------------


def test_cacerts_is_the_issuing_ca_and_chain_as_certs_only_cms(app_env, functions, session_ca, tmp_path):
    reply = functions.call("GET", f"{EST}/cacerts")
    assert reply.status == 200 and reply.mimetype == "application/pkcs7-mime"
    lines = reply.body.splitlines()
    assert len(lines) > 1 and all(len(line) <= 76 for line in lines), "`openssl base64 -d` needs short lines"
    subjects = {c.subject.rfc4514_string() for c in certs_of(reply)}
    root = x509.load_pem_x509_certificate(session_ca.root_certificate.read_bytes())
    assert subjects == {issuing_ca(session_ca).subject.rfc4514_string(), root.subject.rfc4514_string()}
    # The tutorial decode: openssl base64 -d | openssl pkcs7 -inform DER -print_certs
    der = openssl("base64", "-d", stdin=reply.body)
    printed = openssl("pkcs7", "-inform", "DER", "-print_certs", stdin=der).decode()
    assert printed.count("BEGIN CERTIFICATE") == 2 and "xboot development intermediate CA" in printed


def test_csrattrs_asks_for_p256_and_ecdsa_sha256(app_env, functions):
    reply = functions.call("GET", f"{EST}/csrattrs")
    assert reply.status == 200 and reply.mimetype == "application/csrattrs"
    attrs = xboot.service.http.est.CsrAttrs.load(base64.b64decode(reply.body))
    wanted = [(a.name, a.chosen.native if a.name == "oid" else dict(a.chosen.native)) for a in attrs]
    assert wanted == [
        ("attribute", {"type": "1.2.840.10045.2.1", "values": ["1.2.840.10045.3.1.7"]}),
        ("oid", "1.2.840.10045.4.3.2"),
    ]
    parsed = openssl("asn1parse", "-inform", "DER", stdin=base64.b64decode(reply.body)).decode()
    assert "id-ecPublicKey" in parsed and "prime256v1" in parsed and "ecdsa-with-SHA256" in parsed


# -- /simpleenroll ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key_args",
    [
        pytest.param(None, id="ec-p256"),
        pytest.param(["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"], id="ec-p384"),
        pytest.param(["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"], id="rsa-2048"),
    ],
)
def test_simpleenroll_issues_only_the_leaf_and_audits_it(key_args, app_env, functions, session_ca, tmp_path):
    csr = make_csr(tmp_path, "Est-Device-01", key_args)
    leaf = issued(enroll(functions, b64(csr.der)))
    assert cn(leaf) == "Est-Device-01"
    leaf.verify_directly_issued_by(issuing_ca(session_ca))
    key = serialization.load_pem_private_key(csr.key_path.read_bytes(), None)
    assert leaf.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) == key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    record = Path(app_env["DataDirectory"]) / "certificates" / "est-device-01" / f"{leaf.serial_number:X}.json"
    assert json.loads(record.read_text())["registrationId"] == "Est-Device-01"


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no-content-type"),
        pytest.param({"Content-Type": "application/x-www-form-urlencoded"}, id="curl-default-content-type"),
        pytest.param({"Content-Type": "application/pkcs10", "Content-Transfer-Encoding": "binary"}, id="cte-ignored"),
    ],
)
def test_content_type_and_transfer_encoding_do_not_matter(headers, app_env, functions, tmp_path):
    """RFC 8951: the body is base64 whatever the headers say; the bytes are checked strictly instead."""
    csr = make_csr(tmp_path, "dev-ct")
    reply = functions.call("POST", f"{EST}/simpleenroll", b64(csr.der), headers)
    assert cn(issued(reply)) == "dev-ct"


def test_base64_without_line_breaks_and_with_crlf_is_accepted(app_env, functions, tmp_path):
    csr = make_csr(tmp_path, "dev-b64")
    assert cn(issued(enroll(functions, base64.b64encode(csr.der)))) == "dev-b64"
    crlf = b"\r\n".join(base64.encodebytes(csr.der).splitlines()) + b"\r\n"
    assert cn(issued(enroll(functions, crlf))) == "dev-b64"


def test_bodies_that_are_not_base64_der_pkcs10_are_400(app_env, functions, tmp_path):
    csr = make_csr(tmp_path, "dev-bad")
    pem = openssl("req", "-inform", "DER", "-in", "-", "-outform", "PEM", stdin=csr.der)
    assert "not base64" in refusal(enroll(functions, csr.der), 400)  # binary DER
    assert "not base64" in refusal(enroll(functions, pem), 400)
    assert "not base64" in refusal(enroll(functions, b"this is not base64!"), 400)
    assert "empty" in refusal(enroll(functions, b""), 400)
    assert "empty" in refusal(enroll(functions, b" \r\n"), 400)
    assert "PKCS#10" in refusal(enroll(functions, b64(b"\x30\x03\x02\x01\x01")), 400)  # DER, not a CSR
    assert refusal(enroll(functions, b64(csr.der[:-20])), 400)  # truncated DER


def test_body_over_64_kib_is_413(app_env, functions):
    refusal(enroll(functions, b"A" * (64 * 1024 + 4)), 413)


def test_ca_true_request_still_gets_a_leaf(app_env, functions, tmp_path):
    csr = make_csr(tmp_path, "dev-ca-true", None, "-addext", "basicConstraints=critical,CA:TRUE")
    leaf = issued(enroll(functions, b64(csr.der)))
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert leaf.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign is False


def _python_csr(subject: x509.Name, key=None) -> bytes:
    key = key or ec.generate_private_key(ec.SECP256R1())
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    return b64(csr.public_bytes(serialization.Encoding.DER))


def test_registration_id_is_the_single_cn(app_env, functions, tmp_path):
    no_cn = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "acme")])
    two_cn = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "a"), x509.NameAttribute(NameOID.COMMON_NAME, "b")])
    bad_id = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "has space")])
    assert "exactly one CN" in refusal(enroll(functions, _python_csr(no_cn)), 400)
    assert "exactly one CN" in refusal(enroll(functions, _python_csr(two_cn)), 400)
    assert "CN is the registration ID" in refusal(enroll(functions, _python_csr(bad_id)), 400)
    extra = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, "dev-o"), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "acme")]
    )
    assert cn(issued(enroll(functions, _python_csr(extra)))) == "dev-o"


def test_weak_key_and_bad_signature_are_refused(app_env, functions, tmp_path):
    assert "RSA" in refusal(enroll(functions, b64(make_csr(tmp_path, "dev-weak", RSA_1024).der)), 400)
    der = bytearray(make_csr(tmp_path, "dev-sig").der)
    der[-5] ^= 0x01  # inside the signature
    assert "signature" in refusal(enroll(functions, b64(bytes(der))), 400)


def test_allow_list_applies(app_env, functions, monkeypatch, tmp_path):
    monkeypatch.setenv("RegistrationPolicy", "AllowList")
    monkeypatch.setenv("AllowedRegistrationIds", "dev-allowed")
    assert cn(issued(enroll(functions, b64(make_csr(tmp_path, "dev-allowed").der)))) == "dev-allowed"
    assert "not allowed" in refusal(enroll(functions, b64(make_csr(tmp_path, "dev-other").der)), 403)
    assert not (Path(app_env["DataDirectory"]) / "certificates" / "dev-other").exists()


def test_server_side_failures_stay_json_5xx(app_env, functions, monkeypatch):
    monkeypatch.delenv("CertificateFile")
    reply = functions.call("GET", f"{EST}/cacerts")
    assert reply.status == 500 and reply.json()["error"] == "configuration_error"
    assert "CertificateFile" in reply.json()["message"]


def test_auth_levels_cacerts_and_csrattrs_public_enrollment_keyed(app_env, functions, tmp_path):
    keyed = FunctionsWsgiApp(functions.table, Keys(function="k-1"))
    csr = b64(make_csr(tmp_path, "dev-key").der)
    assert keyed.dispatch("GET", f"http://h{EST}/cacerts", {}, b"").status_code == 200
    assert keyed.dispatch("GET", f"http://h{EST}/csrattrs", {}, b"").status_code == 200
    assert keyed.dispatch("POST", f"http://h{EST}/simpleenroll", {}, csr).status_code == 401
    # Re-enrollment is proved by the TLS client certificate alone: anonymous at the host, refused by xboot.
    reenroll_reply = keyed.dispatch("POST", f"http://h{EST}/simplereenroll", {}, csr)
    assert reenroll_reply.status_code == 403 and b"EstTrustForwardedClientCert" in reenroll_reply.get_body()
    assert keyed.dispatch("POST", f"http://h{EST}/simpleenroll?code=k-1", {}, csr).status_code == 200
    assert keyed.dispatch("GET", f"http://h{EST}/simpleenroll", {}, b"").status_code == 405


# -- /simplereenroll --------------------------------------------------------------------------------------


@pytest.fixture
def trusted(monkeypatch):
    monkeypatch.setenv("EstTrustForwardedClientCert", "true")


def _enrolled(functions: Functions, tmp_path: Path, registration_id: str) -> x509.Certificate:
    return issued(enroll(functions, b64(make_csr(tmp_path / "first", registration_id).der)))


def test_reenroll_renews_with_a_new_key_and_audits(app_env, trusted, functions, tmp_path, session_ca):
    current = _enrolled(functions, tmp_path, "dev-renew")
    new_csr = make_csr(tmp_path / "second", "dev-renew")
    renewed = issued(reenroll(functions, b64(new_csr.der), current))
    assert renewed.subject == current.subject and renewed.serial_number != current.serial_number
    assert renewed.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != current.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    renewed.verify_directly_issued_by(issuing_ca(session_ca))
    records = sorted(p.name for p in (Path(app_env["DataDirectory"]) / "certificates" / "dev-renew").iterdir())
    assert records == sorted([f"{current.serial_number:X}.json", f"{renewed.serial_number:X}.json"])
    # The renewed certificate is itself good for the next renewal.
    assert cn(issued(reenroll(functions, b64(make_csr(tmp_path / "third", "dev-renew").der), renewed))) == "dev-renew"


def test_reenroll_without_trusting_the_header_is_refused_even_with_a_valid_certificate(app_env, functions, tmp_path):
    """The default: X-ARR-ClientCert is a plain request header until the deployment vouches for it."""
    current = _enrolled(functions, tmp_path, "dev-untrusted")
    text = refusal(reenroll(functions, b64(make_csr(tmp_path / "n", "dev-untrusted").der), current), 403)
    assert "EstTrustForwardedClientCert" in text
    assert len(list((Path(app_env["DataDirectory"]) / "certificates" / "dev-untrusted").iterdir())) == 1


def test_reenroll_without_a_client_certificate_is_refused(app_env, trusted, functions, tmp_path):
    body = b64(make_csr(tmp_path, "dev-none").der)
    assert "client authentication" in refusal(reenroll(functions, body, None), 403)
    headers = {"X-ARR-ClientCert": "   "}
    refusal(functions.call("POST", f"{EST}/simplereenroll", body, headers), 403)
    headers = {"X-ARR-ClientCert": "not a certificate"}
    assert "unreadable" in refusal(functions.call("POST", f"{EST}/simplereenroll", body, headers), 403)
    assert not (Path(app_env["DataDirectory"]) / "certificates" / "dev-none").exists()


def _signed_by(issuer_cert_path: Path, issuer_key_path: Path, name: str, days: tuple[int, int]) -> x509.Certificate:
    """A leaf signed with a CA key directly, as someone holding the key offline could make one."""
    issuer = x509.load_pem_x509_certificate(issuer_cert_path.read_bytes())
    issuer_key = serialization.load_pem_private_key(issuer_key_path.read_bytes(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + dt.timedelta(days=days[0]))
        .not_valid_after(now + dt.timedelta(days=days[1]))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(issuer_key, hashes.SHA256())
    )


def test_reenroll_with_a_certificate_from_another_ca_is_refused(app_env, trusted, functions, tmp_path):
    other = create_development_ca(tmp_path / "other-ca")
    foreign = _signed_by(other.certificate, other.key, "dev-foreign", (-1, 30))
    body = b64(make_csr(tmp_path, "dev-foreign").der)
    assert "not issued by this CA" in refusal(reenroll(functions, body, foreign), 403)
    # Same issuer name, wrong key: the signature is what counts.
    impostor = create_development_ca(tmp_path / "impostor")
    same_name = _signed_by(impostor.certificate, impostor.key, "dev-foreign", (-1, 30))
    assert "not issued by this CA" in refusal(reenroll(functions, body, same_name), 403)


def test_reenroll_with_a_ca_signed_certificate_this_service_never_issued_is_refused(
    app_env, trusted, functions, tmp_path, session_ca
):
    unrecorded = _signed_by(session_ca.certificate, session_ca.key, "dev-offline", (-1, 30))
    body = b64(make_csr(tmp_path, "dev-offline").der)
    assert "issuance records" in refusal(reenroll(functions, body, unrecorded), 401)


def test_reenroll_with_an_expired_or_future_certificate_is_refused(app_env, trusted, functions, tmp_path, session_ca):
    body = b64(make_csr(tmp_path, "dev-old").der)
    expired = _signed_by(session_ca.certificate, session_ca.key, "dev-old", (-30, -1))
    assert "expired" in refusal(reenroll(functions, body, expired), 401)
    future = _signed_by(session_ca.certificate, session_ca.key, "dev-old", (1, 30))
    assert "not yet valid" in refusal(reenroll(functions, body, future), 401)


def test_reenroll_for_another_subject_is_refused(app_env, trusted, functions, tmp_path):
    current = _enrolled(functions, tmp_path, "dev-a")
    refused = reenroll(functions, b64(make_csr(tmp_path / "b", "dev-b").der), current)
    assert "subject" in refusal(refused, 403)
    assert not (Path(app_env["DataDirectory"]) / "certificates" / "dev-b").exists()


def test_reenroll_with_a_tampered_audit_record_is_refused(app_env, trusted, functions, tmp_path):
    current = _enrolled(functions, tmp_path, "dev-audit")
    record = Path(app_env["DataDirectory"]) / "certificates" / "dev-audit" / f"{current.serial_number:X}.json"
    data = json.loads(record.read_text())
    data["sha256Fingerprint"] = "00" * 32
    record.write_text(json.dumps(data))
    body = b64(make_csr(tmp_path / "n", "dev-audit").der)
    assert "issuance records" in refusal(reenroll(functions, body, current), 401)
    record.write_text("{not json")
    assert "issuance records" in refusal(reenroll(functions, body, current), 401)


def test_reenroll_consults_the_revocation_check(app_env, trusted, functions, tmp_path):
    current = _enrolled(functions, tmp_path, "dev-revoked")
    serial = format(current.serial_number, "X")
    revoked = functions.call("POST", "/api/mgmt/v1/revocations", {"serialNumber": serial, "reason": "keyCompromise"})
    assert revoked.status == 201, revoked.body
    body = b64(make_csr(tmp_path / "n", "dev-revoked").der)
    assert "revoked (keyCompromise)" in refusal(reenroll(functions, body, current), 401)


def test_reenroll_follows_the_registration_policy(app_env, trusted, functions, tmp_path, monkeypatch):
    monkeypatch.setenv("RegistrationPolicy", "AllowList")
    monkeypatch.setenv("AllowedRegistrationIds", "dev-listed")
    current = _enrolled(functions, tmp_path, "dev-listed")
    monkeypatch.setenv("AllowedRegistrationIds", "someone-else")
    body = b64(make_csr(tmp_path / "n", "dev-listed").der)
    assert "not allowed" in refusal(reenroll(functions, body, current), 403)


def test_est_client_refuses_plain_http_off_loopback():
    with pytest.raises(EstError, match="TLS"):
        EstClient("http://est.example.com/.well-known/est")
    EstClient("http://127.0.0.1:7071/api/.well-known/est")
    EstClient("https://est.example.com/.well-known/est")
