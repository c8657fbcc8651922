"""Location File and AppSettings with every key format operators have, and the checks made at load."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.conftest import Functions
from tests.fixtures.xboot_pki import OpensslCa
from tests.helpers import make_csr, openssl


def enroll_and_check(functions: Functions, tmp_path: Path, chain_root: Path, registration_id: str = "dev-1") -> dict:
    """Enroll one openssl-made CSR and have openssl verify the issued leaf up to `chain_root`."""
    csr = make_csr(tmp_path / "device", registration_id)
    reply = functions.call("POST", "/api/certificate", {"RegistrationId": registration_id, "Csr": csr.b64})
    assert reply.status == 200, reply.body
    body = reply.json()
    chain = tmp_path / "chain.pem"
    chain.write_text(body["certificateChain"])
    leaf = x509.load_pem_x509_certificates(chain.read_bytes())[0]
    assert leaf.subject.rfc4514_string() == f"CN={registration_id}"
    (tmp_path / "leaf.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    out = openssl("verify", "-CAfile", str(chain_root), "-untrusted", str(chain), str(tmp_path / "leaf.pem"))
    assert out.strip().endswith(b"OK")
    return body


KEY_FORMATS = [
    pytest.param({"CertificateFile": "ia.cer", "PrivateKeyFile": "ia.key"}, id="pem-cert+pkcs8-key"),
    pytest.param({"CertificateFile": "ia.cer", "PrivateKeyFile": "ia.pkcs1.key"}, id="pem-cert+pkcs1-key"),
    pytest.param({"CertificateFile": "ia.der.cer", "PrivateKeyFile": "ia.key.der"}, id="der-cert+der-pkcs8-key"),
    pytest.param(
        {"CertificateFile": "ia.cer", "PrivateKeyFile": "ia.enc.key", "PrivateKeyPassword": "s3cret"},
        id="encrypted-pkcs8",
    ),
    pytest.param({"CertificateFile": "ia.p12", "PrivateKeyPassword": "s3cret"}, id="pkcs12-with-chain"),
    pytest.param(
        {"CertificateFile": "ia.cer", "PrivateKeyFile": "ia.nopass.p12", "CertificateChainFile": "ca.cer"},
        id="pkcs12-key-file",
    ),
]


@pytest.mark.parametrize("files", KEY_FORMATS)
def test_file_location_loads_each_format(files, rsa_ca: OpensslCa, app_env, functions, monkeypatch, tmp_path):
    monkeypatch.setenv("Location", "1")
    monkeypatch.delenv("CertificateChainFile")
    monkeypatch.delenv("PrivateKeyFile")
    for name, value in files.items():
        monkeypatch.setenv(name, value if name == "PrivateKeyPassword" else str(rsa_ca.path(value)))
    body = enroll_and_check(functions, tmp_path, rsa_ca.root_cert)
    chain = x509.load_pem_x509_certificates(body["certificateChain"].encode())
    assert chain[1].subject.rfc4514_string() == "CN=XBoot Test Intermediate"
    if "CertificateChainFile" in files or "p12" in files["CertificateFile"]:
        assert [c.subject.rfc4514_string() for c in chain] == [
            "CN=dev-1",
            "CN=XBoot Test Intermediate",
            "CN=XBoot Test Root",
        ]


def test_sec1_ec_key_and_location_by_name(ec_ca: OpensslCa, app_env, functions, monkeypatch, tmp_path):
    assert b"BEGIN EC PRIVATE KEY" in ec_ca.key.read_bytes()
    monkeypatch.setenv("Location", "file")  # names are case-insensitive
    monkeypatch.setenv("CertificateFile", str(ec_ca.cert))
    monkeypatch.setenv("PrivateKeyFile", str(ec_ca.key))
    monkeypatch.setenv("CertificateChainFile", str(ec_ca.root_cert))
    enroll_and_check(functions, tmp_path, ec_ca.root_cert)


def test_p384_ca_signs_with_sha384(ec384_ca: OpensslCa, app_env, functions, monkeypatch, tmp_path):
    monkeypatch.setenv("CertificateFile", str(ec384_ca.cert))
    monkeypatch.setenv("PrivateKeyFile", str(ec384_ca.key))
    monkeypatch.setenv("CertificateChainFile", str(ec384_ca.root_cert))
    body = enroll_and_check(functions, tmp_path, ec384_ca.root_cert)
    leaf = x509.load_pem_x509_certificates(body["certificateChain"].encode())[0]
    assert isinstance(leaf.signature_hash_algorithm, hashes.SHA384)


def _one_line(pem: bytes) -> str:
    """The XBoot README's App Settings form: no line breaks at all."""
    return pem.decode().replace("\n", "")


@pytest.mark.parametrize("shape", ["one-line", "escaped-newlines"])
def test_app_settings_location_single_line_pem(shape, rsa_ca: OpensslCa, app_env, functions, monkeypatch, tmp_path):
    cert, key = rsa_ca.cert.read_bytes(), rsa_ca.path("ia.pkcs1.key").read_bytes()
    assert b"BEGIN RSA PRIVATE KEY" in key
    to_text = _one_line if shape == "one-line" else (lambda pem: pem.decode().replace("\n", "\\n"))
    monkeypatch.setenv("Location", "3")
    monkeypatch.setenv("CertificateFile", to_text(cert))
    monkeypatch.setenv("PrivateKeyFile", to_text(key))
    monkeypatch.setenv("CertificateChainFile", to_text(rsa_ca.root_cert.read_bytes()))
    enroll_and_check(functions, tmp_path, rsa_ca.root_cert)


def _config_error(functions: Functions, tmp_path: Path) -> dict:
    csr = make_csr(tmp_path / "device", "dev-1")
    reply = functions.call("POST", "/api/certificate", {"RegistrationId": "dev-1", "Csr": csr.b64})
    assert reply.status == 500
    body = reply.json()
    assert body["error"] == "configuration_error"
    assert "BEGIN" not in body["message"] and "Traceback" not in reply.body.decode()
    return body


def test_wrong_key_for_certificate_names_both_settings(rsa_ca, ec_ca, app_env, functions, monkeypatch, tmp_path):
    monkeypatch.setenv("CertificateFile", str(rsa_ca.cert))
    monkeypatch.setenv("PrivateKeyFile", str(ec_ca.key))
    message = _config_error(functions, tmp_path)["message"]
    assert "CertificateFile" in message and "PrivateKeyFile" in message and "does not belong" in message


def test_non_ca_certificate_refused(rsa_ca, app_env, functions, monkeypatch, tmp_path):
    d = tmp_path / "leafca"
    d.mkdir()
    openssl("genrsa", "-out", "leaf.key", "2048", cwd=d)
    openssl("req", "-new", "-key", "leaf.key", "-subj", "/CN=not a ca", "-out", "leaf.csr", cwd=d)
    (d / "ext.txt").write_text("basicConstraints = critical, CA:false\n")
    openssl(
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        str(rsa_ca.cert),
        "-CAkey",
        str(rsa_ca.key),
        "-days",
        "30",
        "-extfile",
        "ext.txt",
        "-out",
        "leaf.cer",
        cwd=d,
    )
    monkeypatch.setenv("CertificateFile", str(d / "leaf.cer"))
    monkeypatch.setenv("PrivateKeyFile", str(d / "leaf.key"))
    message = _config_error(functions, tmp_path)["message"]
    assert "CertificateFile" in message and "not a CA" in message


CA_USAGE = x509.KeyUsage(
    digital_signature=False,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


def _self_signed_ca(
    key, not_before: dt.datetime, not_after: dt.datetime, directory: Path, usage: x509.KeyUsage | None = CA_USAGE
) -> None:
    name = x509.Name.from_rfc4514_string("CN=Old CA")
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    )
    if usage is not None:
        builder = builder.add_extension(usage, critical=True)
    cert = builder.sign(key, hashes.SHA256())
    directory.mkdir()
    (directory / "ca.cer").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "ca.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


def test_expired_ca_refused(app_env, functions, monkeypatch, tmp_path):
    now = dt.datetime.now(dt.UTC)
    _self_signed_ca(
        ec.generate_private_key(ec.SECP256R1()),
        now - dt.timedelta(days=800),
        now - dt.timedelta(days=1),
        tmp_path / "old",
    )
    monkeypatch.setenv("CertificateFile", str(tmp_path / "old" / "ca.cer"))
    monkeypatch.setenv("PrivateKeyFile", str(tmp_path / "old" / "ca.key"))
    monkeypatch.delenv("CertificateChainFile")
    assert "expired" in _config_error(functions, tmp_path)["message"]


def test_weak_ca_key_refused(app_env, functions, monkeypatch, tmp_path):
    now = dt.datetime.now(dt.UTC)
    _self_signed_ca(
        rsa.generate_private_key(65537, 1024),
        now - dt.timedelta(days=1),
        now + dt.timedelta(days=30),
        tmp_path / "weak",
    )
    monkeypatch.setenv("CertificateFile", str(tmp_path / "weak" / "ca.cer"))
    monkeypatch.setenv("PrivateKeyFile", str(tmp_path / "weak" / "ca.key"))
    monkeypatch.delenv("CertificateChainFile")
    assert "RSA-1024" in _config_error(functions, tmp_path)["message"]


def test_wrong_chain_file_refused(rsa_ca, ec_ca, app_env, functions, monkeypatch, tmp_path):
    monkeypatch.setenv("CertificateFile", str(rsa_ca.cert))
    monkeypatch.setenv("PrivateKeyFile", str(rsa_ca.key))
    monkeypatch.setenv("CertificateChainFile", str(ec_ca.root_cert))
    assert "CertificateChainFile" in _config_error(functions, tmp_path)["message"]


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"Location": "7"}, "Location"),
        ({"Location": "Nowhere"}, "Location"),
        ({"CertificateFile": "/nonexistent/ia.cer"}, "does not exist"),
        ({"PrivateKeyPassword": "Pa55-not-it"}, "PrivateKeyFile"),
    ],
)
def test_configuration_errors_name_the_setting(settings, expected, rsa_ca, app_env, functions, monkeypatch, tmp_path):
    monkeypatch.setenv("CertificateFile", str(rsa_ca.cert))
    monkeypatch.setenv("PrivateKeyFile", str(rsa_ca.path("ia.enc.key")))
    monkeypatch.setenv("PrivateKeyPassword", "s3cret")
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    body = _config_error(functions, tmp_path)
    assert expected in body["message"]
    assert "s3cret" not in body["message"] and "Pa55-not-it" not in body["message"]
