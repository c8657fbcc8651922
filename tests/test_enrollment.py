"""POST /api/certificate: the XBoot wire format, the issuance policy, the audit log, the signer cache."""

from __future__ import annotations

import base64
import datetime as dt
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import xboot.service.ca.locations.file
import xboot.service.ca.signer
from tests.conftest import Functions
from tests.helpers import make_csr, openssl

RSA_2048 = ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]
EC_384 = ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"]


def enroll(functions: Functions, registration_id: str, csr: str, **extra) -> tuple[int, dict]:
    reply = functions.call("POST", "/api/certificate", {"RegistrationId": registration_id, "Csr": csr, **extra})
    assert reply.mimetype == "application/json"
    return reply.status, reply.json()


def leaf_of(body: dict) -> x509.Certificate:
    return x509.load_der_x509_certificate(base64.b64decode(body["certificate"]))


@pytest.mark.parametrize(
    ("key_args", "req_args"),
    [
        pytest.param(None, [], id="ec-p256-ecdsa"),
        pytest.param(EC_384, [], id="ec-p384-ecdsa"),
        pytest.param(RSA_2048, [], id="rsa-2048-pkcs1v15"),
        # What XBoot.Client sends: RSA-2048 with an RSA-PSS / SHA-512 CSR signature.
        pytest.param(
            RSA_2048,
            ["-sha512", "-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:64"],
            id="rsa-2048-pss-sha512",
        ),
    ],
)
def test_openssl_csrs_are_issued_a_v3_leaf(key_args, req_args, app_env, functions, tmp_path, session_ca):
    csr = make_csr(tmp_path, "device-01", key_args, *req_args)
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    status, body = enroll(functions, "device-01", csr.b64)
    assert status == 200, body
    leaf = leaf_of(body)
    ca = x509.load_pem_x509_certificate(Path(session_ca.certificate).read_bytes())
    assert leaf.version == x509.Version.v3
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "device-01"
    assert leaf.issuer == ca.subject
    leaf.verify_directly_issued_by(ca)
    assert leaf.serial_number.bit_length() > 64 and format(leaf.serial_number, "X") == body["serialNumber"]
    constraints = leaf.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca is False
    usage = leaf.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature and not usage.value.key_cert_sign
    assert usage.value.key_encipherment is isinstance(leaf.public_key(), rsa.RSAPublicKey)
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    ski = leaf.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(leaf.public_key())
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    assert before - dt.timedelta(minutes=5, seconds=2) <= leaf.not_valid_before_utc <= before - dt.timedelta(minutes=4)
    assert abs(leaf.not_valid_after_utc - (before + dt.timedelta(days=365))) < dt.timedelta(seconds=5)
    assert body["notAfter"] == leaf.not_valid_after_utc.isoformat().replace("+00:00", "Z")
    assert body["sha256Fingerprint"] == leaf.fingerprint(hashes.SHA256()).hex(":").upper()
    assert isinstance(leaf.signature_hash_algorithm, hashes.SHA256)  # the dev CA is P-256
    # The issued key is the device's own: the private key never left it.
    device_public = openssl("pkey", "-in", str(csr.key_path), "-pubout", "-outform", "DER")
    assert (
        leaf.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        == device_public
    )


def test_chain_is_leaf_then_issuing_ca_then_root(app_env, functions, tmp_path, session_ca):
    status, body = enroll(functions, "dev-chain", make_csr(tmp_path, "dev-chain").b64)
    assert status == 200
    chain = x509.load_pem_x509_certificates(body["certificateChain"].encode())
    assert chain[0] == leaf_of(body)
    assert chain[1] == x509.load_pem_x509_certificate(Path(session_ca.certificate).read_bytes())
    assert chain[2] == x509.load_pem_x509_certificate(Path(session_ca.root_certificate).read_bytes())


def test_xboot_client_shape_is_accepted(app_env, functions, tmp_path):
    """No Content-Type, keys in any case, PEM CSR accepted too."""
    csr = make_csr(tmp_path, "abc")
    pem = x509.load_der_x509_csr(csr.der).public_bytes(serialization.Encoding.PEM).decode()
    for document in ({"registrationid": "abc", "CSR": csr.b64}, {"REGISTRATIONID": "abc", "csr": pem}):
        reply = functions.call("POST", "/api/certificate", json.dumps(document).encode(), headers={})
        assert reply.status == 200, reply.body
        assert leaf_of(reply.json()).subject.rfc4514_string() == "CN=abc"


def test_validity_follows_setting_and_never_outlives_the_ca(app_env, functions, tmp_path, monkeypatch, session_ca):
    ca = x509.load_pem_x509_certificate(Path(session_ca.certificate).read_bytes())
    monkeypatch.setenv("CertificateValidityDays", "30")
    status, body = enroll(functions, "short", make_csr(tmp_path, "short").b64)
    leaf = leaf_of(body)
    assert status == 200
    assert dt.timedelta(days=29) < leaf.not_valid_after_utc - leaf.not_valid_before_utc < dt.timedelta(days=31)
    monkeypatch.setenv("CertificateValidityDays", "3650")  # the dev CA lives 1825 days
    status, body = enroll(functions, "long", make_csr(tmp_path, "long").b64)
    assert status == 200 and leaf_of(body).not_valid_after_utc == ca.not_valid_after_utc


def test_csr_asking_for_ca_true_still_gets_a_leaf(app_env, functions, tmp_path):
    csr = make_csr(
        tmp_path,
        "sneaky",
        None,
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
    )
    requested = x509.load_der_x509_csr(csr.der).extensions.get_extension_for_class(x509.BasicConstraints)
    assert requested.value.ca is True
    status, body = enroll(functions, "sneaky", csr.b64)
    assert status == 200
    leaf = leaf_of(body)
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert not leaf.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign


def test_tampered_csr_signature_is_refused(app_env, functions, tmp_path):
    der = bytearray(make_csr(tmp_path, "dev-t").der)
    der[-10] ^= 0x01  # inside the signature value
    status, body = enroll(functions, "dev-t", base64.b64encode(bytes(der)).decode())
    assert (status, body["error"]) == (400, "bad_csr_signature")


def test_csr_for_another_subject_is_refused(app_env, functions, tmp_path):
    status, body = enroll(functions, "device-a", make_csr(tmp_path, "device-b").b64)
    assert (status, body["error"]) == (400, "cn_mismatch")


def _python_csr(key, name: str = "k") -> str:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    return base64.b64encode(csr.public_bytes(serialization.Encoding.DER)).decode()


@pytest.mark.parametrize(
    ("key_args", "detail"),
    [
        (["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024"], "RSA-1024"),
        (["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-521"], "secp521r1"),
        (["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:secp256k1"], "secp256k1"),
        (["-algorithm", "ED25519"], "only RSA"),
    ],
)
def test_weak_or_unsupported_device_keys_are_refused(key_args, detail, app_env, functions, tmp_path):
    status, body = enroll(functions, "weak", make_csr(tmp_path, "weak", key_args).b64)
    assert (status, body["error"]) == (400, "weak_key")
    assert detail in body["message"]


def test_rsa_small_exponent_is_refused(app_env, functions):
    key = rsa.generate_private_key(public_exponent=3, key_size=2048)
    status, body = enroll(functions, "k", _python_csr(key))
    assert (status, body["error"]) == (400, "weak_key")


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"", 400, "invalid_json"),
        (b"RegistrationId=x&Csr=y", 400, "invalid_json"),
        (b"[1, 2]", 400, "invalid_json"),
        (b"\xff\xfe{}", 400, "invalid_json"),
        (b'{"Csr": "AAAA"}', 400, "invalid_registration_id"),
        (b'{"RegistrationId": 42, "Csr": "AAAA"}', 400, "invalid_registration_id"),
        (b'{"RegistrationId": "dev"}', 400, "invalid_csr"),
        (b'{"RegistrationId": "dev", "Csr": "not base64!"}', 400, "invalid_csr"),
        (b'{"RegistrationId": "dev", "Csr": "AAAA"}', 400, "invalid_csr"),
        (b'{"RegistrationId": "dev", "Csr": "' + b"A" * 70_000 + b'"}', 413, "payload_too_large"),
    ],
)
def test_malformed_requests_get_json_4xx(body, status, code, app_env, functions):
    reply = functions.call("POST", "/api/certificate", body)
    assert reply.status == status
    assert reply.json()["error"] == code and reply.json()["message"]


@pytest.mark.parametrize("registration_id", ["", "a" * 65, "a" * 129, "dev/1", "dev 1", "dev.", "../etc", "dév", "x\n"])
def test_registration_id_rules(registration_id, app_env, functions):
    key = ec.generate_private_key(ec.SECP256R1())
    status, body = enroll(functions, registration_id, _python_csr(key, "placeholder"))
    assert (status, body["error"]) == (400, "invalid_registration_id")


def test_registration_id_edge_shapes_are_accepted(app_env, functions):
    key = ec.generate_private_key(ec.SECP256R1())
    for registration_id in ("a", "A" * 64, "mac:00-11-22-33-44-55", "imei.3548_2701-"):
        status, body = enroll(functions, registration_id, _python_csr(key, registration_id))
        assert status == 200, body


def test_allow_list_setting_file_and_pattern(app_env, functions, monkeypatch, tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    monkeypatch.setenv("RegistrationPolicy", "AllowList")
    monkeypatch.setenv("AllowedRegistrationIds", "Gateway-1, gateway-2")
    monkeypatch.setenv("SignerCacheSeconds", "0")
    assert enroll(functions, "gateway-1", _python_csr(key, "gateway-1"))[0] == 200  # case-insensitive
    status, body = enroll(functions, "gateway-3", _python_csr(key, "gateway-3"))
    assert (status, body["error"]) == (403, "registration_refused")
    data = Path(app_env["DataDirectory"])
    data.mkdir(parents=True, exist_ok=True)
    (data / "allowed.txt").write_text("# factory batch 7\ngateway-3\n")
    monkeypatch.setenv("AllowedRegistrationIdsFile", "allowed.txt")
    assert enroll(functions, "gateway-3", _python_csr(key, "gateway-3"))[0] == 200
    monkeypatch.setenv("AllowedRegistrationIdPattern", r"sensor-\d{4}")
    assert enroll(functions, "sensor-0042", _python_csr(key, "sensor-0042"))[0] == 200
    assert enroll(functions, "sensor-42x", _python_csr(key, "sensor-42x"))[0] == 403


def test_custom_validator(app_env, functions, monkeypatch, tmp_path):
    (tmp_path / "factory_db.py").write_text(
        "def check(registration_id, csr):\n    return registration_id.startswith('ok-')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("RegistrationPolicy", "factory_db:check")
    key = ec.generate_private_key(ec.SECP256R1())
    assert enroll(functions, "ok-1", _python_csr(key, "ok-1"))[0] == 200
    assert enroll(functions, "no-1", _python_csr(key, "no-1"))[0] == 403
    monkeypatch.setenv("RegistrationPolicy", "factory_db:missing")
    monkeypatch.setattr("xboot.service.enrollment.registration._cached", None)
    status, body = enroll(functions, "ok-2", _python_csr(key, "ok-2"))
    assert (status, body["error"]) == (500, "configuration_error")


def test_every_certificate_is_audited(app_env, functions, tmp_path):
    status, body = enroll(functions, "Audit-Me", make_csr(tmp_path, "Audit-Me").b64)
    assert status == 200
    record_path = Path(app_env["DataDirectory"]) / "certificates" / "audit-me" / f"{body['serialNumber']}.json"
    record = json.loads(record_path.read_text())
    assert record["registrationId"] == "Audit-Me"
    assert record["sha256Fingerprint"] == body["sha256Fingerprint"]
    assert record["notAfter"].startswith(body["notAfter"][:19])
    assert x509.load_pem_x509_certificate(record["certificate"].encode()) == leaf_of(body)


def test_audit_failure_fails_the_request(app_env, functions, monkeypatch, tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("x")
    monkeypatch.setenv("DataDirectory", str(blocker))
    reply = functions.call(
        "POST", "/api/certificate", {"RegistrationId": "dev-x", "Csr": make_csr(tmp_path, "dev-x").b64}
    )
    assert reply.status == 503 and reply.json()["error"] == "backend_unavailable"
    assert int(reply.headers["Retry-After"]) > 0
    assert "certificate" not in reply.json()


def test_signer_is_cached_for_its_ttl_and_reloaded_after(app_env, functions, monkeypatch, tmp_path):
    loads = []
    real_load = xboot.service.ca.locations.file.load
    monkeypatch.setattr(
        xboot.service.ca.locations.file, "load", lambda settings: loads.append(1) or real_load(settings)
    )
    clock = [1000.0]
    monkeypatch.setattr(xboot.service.ca.signer.time, "monotonic", lambda: clock[0])
    key = ec.generate_private_key(ec.SECP256R1())
    for i in range(50):
        assert enroll(functions, f"d{i}", _python_csr(key, f"d{i}"))[0] == 200
    assert len(loads) == 1
    clock[0] += 299
    assert enroll(functions, "d", _python_csr(key, "d"))[0] == 200 and len(loads) == 1
    clock[0] += 2
    assert enroll(functions, "d", _python_csr(key, "d"))[0] == 200 and len(loads) == 2


def test_rotated_ca_is_picked_up_after_the_ttl(app_env, functions, monkeypatch, tmp_path):
    from xboot.service.ca.devca import create_development_ca

    monkeypatch.setenv("SignerCacheSeconds", "60")
    clock = [5000.0]
    monkeypatch.setattr(xboot.service.ca.signer.time, "monotonic", lambda: clock[0])
    first = create_development_ca(tmp_path / "ca1")
    second = create_development_ca(tmp_path / "ca2")
    live = tmp_path / "live"
    live.mkdir()
    for name in ("ia.cer", "ia.key", "ca.cer"):
        (live / name).write_bytes((first.directory / name).read_bytes())
    monkeypatch.setenv("CertificateFile", str(live / "ia.cer"))
    monkeypatch.setenv("PrivateKeyFile", str(live / "ia.key"))
    monkeypatch.setenv("CertificateChainFile", str(live / "ca.cer"))
    key = ec.generate_private_key(ec.SECP256R1())
    issuer = lambda: leaf_of(enroll(functions, "r", _python_csr(key, "r"))[1]).issuer  # noqa: E731
    old_subject = issuer()
    for name in ("ia.cer", "ia.key", "ca.cer"):
        (live / name).write_bytes((second.directory / name).read_bytes())
    assert issuer() == old_subject  # still cached
    clock[0] += 61
    new_ca = x509.load_pem_x509_certificate((second.directory / "ia.cer").read_bytes())
    leaf = leaf_of(enroll(functions, "r", _python_csr(key, "r"))[1])
    leaf.verify_directly_issued_by(new_ca)


def test_200_parallel_enrollments(app_env, functions, tmp_path):
    keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(8)]
    requests = [(f"par-{i:03d}", _python_csr(keys[i % 8], f"par-{i:03d}")) for i in range(200)]
    with ThreadPoolExecutor(max_workers=32) as pool:
        results = list(pool.map(lambda r: enroll(functions, *r), requests))
    assert [status for status, _ in results] == [200] * 200
    serials = {body["serialNumber"] for _, body in results}
    assert len(serials) == 200
    records = list((Path(app_env["DataDirectory"]) / "certificates").glob("*/*.json"))
    assert len(records) == 200
    assert {json.loads(p.read_text())["serialNumber"] for p in records} == serials


def test_file_location_imports_no_azure_sdk(tmp_path, session_ca):
    """Cold start: a File deployment must not pay for azure-identity, -storage or -keyvault."""
    import subprocess

    script = (
        "import sys, json, base64\n"
        "import function_app\n"
        "from cryptography.hazmat.primitives.asymmetric import ec\n"
        "from cryptography import x509\n"
        "from cryptography.hazmat.primitives import hashes, serialization\n"
        "import azure.functions as func\n"
        "key = ec.generate_private_key(ec.SECP256R1())\n"
        "name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, 'cold')])\n"
        "csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())\n"
        "body = json.dumps({'RegistrationId': 'cold', 'Csr': base64.b64encode("
        "csr.public_bytes(serialization.Encoding.DER)).decode()}).encode()\n"
        "req = func.HttpRequest('POST', 'http://x/api/certificate', body=body)\n"
        "assert function_app.certificate(req).status_code == 200\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith(('azure.', 'asn1crypto')))))\n"
    )
    env = {**session_ca.settings(), "DataDirectory": str(tmp_path / "data"), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=Path(__file__).resolve().parent.parent,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    loaded = json.loads(out)
    assert "azure.functions" in loaded
    assert not [m for m in loaded if m.startswith(("azure.identity", "azure.storage", "azure.keyvault", "azure.core"))]


def test_rsa_pss_csr_with_wrong_salt_still_verifies_signature(app_env, functions):
    """A PSS signature made by Python (as .NET does: salt = digest length) verifies; a forged one does not."""
    key = rsa.generate_private_key(65537, 2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pss")])
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA512()), salt_length=64)
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA512(), rsa_padding=pss)
    der = csr.public_bytes(serialization.Encoding.DER)
    assert enroll(functions, "pss", base64.b64encode(der).decode())[0] == 200
    forged = bytearray(der)
    forged[-3] ^= 0x40
    status, body = enroll(functions, "pss", base64.b64encode(bytes(forged)).decode())
    assert (status, body["error"]) == (400, "bad_csr_signature")


def test_crl_distribution_point_setting(app_env, functions, monkeypatch, tmp_path):
    csr = make_csr(tmp_path, "cdp-1")
    status, body = enroll(functions, "cdp-1", csr.b64)
    assert status == 200
    with pytest.raises(x509.ExtensionNotFound):
        leaf_of(body).extensions.get_extension_for_class(x509.CRLDistributionPoints)
    monkeypatch.setenv("CrlDistributionPointUrl", "http://pki.example.com/api/crl")
    status, body = enroll(functions, "cdp-1", csr.b64)
    assert status == 200
    points = leaf_of(body).extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    assert [name.value for name in points[0].full_name] == ["http://pki.example.com/api/crl"]
    (tmp_path / "leaf.pem").write_text(body["certificateChain"])
    assert b"URI:http://pki.example.com/api/crl" in openssl(
        "x509", "-in", str(tmp_path / "leaf.pem"), "-noout", "-text"
    )
    monkeypatch.setenv("CrlDistributionPointUrl", "ftp://nope")
    status, body = enroll(functions, "cdp-1", csr.b64)
    assert (status, body["error"]) == (500, "configuration_error") and "CrlDistributionPointUrl" in body["message"]
