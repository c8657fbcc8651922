"""Locations KeyVault and KeyVaultKey through the real Key Vault SDK clients, against the REST double.

Every request goes through the SDK's own pipeline (bearer challenge, retries, deserialisation) to
the double behind `https://xboot-test.vault.azure.net/`; the issued certificates are judged by
`openssl verify`.
"""

from __future__ import annotations

import base64
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import SignatureAlgorithmOID

import xboot.service.ca.signer
from tests.backend_helpers import CaFiles, enroll, verify_issued
from tests.conftest import Functions
from tests.fixtures.keyvault_double import VaultHarness
from tests.fixtures.xboot_pki import OpensslCa
from tests.helpers import make_csr, openssl

CERT_NAME = "xboot-issuing-ca"


@pytest.fixture
def kv_env(app_env: dict[str, str], vault: VaultHarness, monkeypatch: pytest.MonkeyPatch) -> VaultHarness:
    """The app configured like its Azure deployment: the vault by name, the certificate by name."""
    for name in ("PrivateKeyFile", "CertificateChainFile"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KeyVaultName", "xboot-test")
    monkeypatch.setenv("CertificateFile", CERT_NAME)
    return vault


def _audit_records(app_env: dict[str, str]) -> list[Path]:
    return sorted(p for p in (Path(app_env["DataDirectory"]) / "certificates").rglob("*.json"))


@pytest.mark.parametrize(
    ("content_type", "ca_fixture"),
    [("application/x-pkcs12", "rsa_ca"), ("application/x-pem-file", "ec_ca")],
    ids=["pkcs12-rsa", "pem-ec"],
)
def test_location_keyvault_reads_the_certificate_secret(
    content_type, ca_fixture, kv_env: VaultHarness, functions: Functions, monkeypatch, tmp_path, request
):
    openssl_ca: OpensslCa = request.getfixturevalue(ca_fixture)
    ca = CaFiles.load(openssl_ca)
    secret = None
    if content_type == "application/x-pkcs12":  # as Key Vault exports it: no password, legacy 3DES encryption
        pfx = openssl("pkcs12", "-export", "-legacy", "-passout", "pass:", "-inkey", str(openssl_ca.key),
                      "-in", str(openssl_ca.cert), "-certfile", str(openssl_ca.root_cert))  # fmt: skip
        secret = base64.b64encode(pfx).decode()
    kv_env.double.add_certificate(
        CERT_NAME, ca.certificate, ca.key, (ca.root,), content_type=content_type, secret_value=secret
    )
    monkeypatch.setenv("Location", "0")

    bodies = []
    for n in range(2):
        reply = enroll(functions, tmp_path / f"device{n}", f"kv-device-{n}")
        assert reply.status == 200, reply.body
        bodies.append(reply.json())
        leaf = verify_issued(reply.json(), ca.root_path, tmp_path / f"verify{n}")
        assert leaf.issuer == ca.certificate.subject

    # The root came from the secret (PKCS#12 bag or PEM block) and is served as the chain.
    assert bodies[0]["certificateChain"].count("BEGIN CERTIFICATE") == 3
    double = kv_env.double
    assert double.count("GET", f"/secrets/{CERT_NAME}") == 1  # two enrollments, one read
    assert double.count("GET", "/certificates/") == 0
    assert double.challenges <= 1  # at most one challenge (the SDK caches it per vault host), then the token
    assert kv_env.credential.scopes == ["https://vault.azure.net/.default"]


@pytest.mark.parametrize("content_type", ["application/x-pkcs12", "application/x-pem-file"])
def test_non_exportable_certificate_points_at_keyvaultkey(
    content_type, kv_env: VaultHarness, ec_ca: OpensslCa, functions: Functions, monkeypatch, tmp_path, app_env
):
    ca = CaFiles.load(ec_ca)
    kv_env.double.add_certificate(
        CERT_NAME, ca.certificate, ca.key, (ca.root,), content_type=content_type, exportable=False
    )
    monkeypatch.setenv("Location", "KeyVault")

    reply = enroll(functions, tmp_path / "device", "kv-device")

    assert reply.status == 500
    body = reply.json()
    assert body["error"] == "configuration_error"
    assert "not exportable" in body["message"] and "Location KeyVaultKey" in body["message"]
    assert "BEGIN" not in body["message"]
    assert _audit_records(app_env) == []


def test_missing_certificate_is_a_configuration_error(kv_env: VaultHarness, functions, monkeypatch, tmp_path):
    monkeypatch.setenv("Location", "KeyVault")
    reply = enroll(functions, tmp_path / "device", "kv-device")
    assert reply.status == 500
    assert reply.json() == {
        "error": "configuration_error",
        "message": f"setting CertificateFile: certificate {CERT_NAME} does not exist in Key Vault",
    }
    assert kv_env.double.log[-1][2:] == (f"/secrets/{CERT_NAME}/", 404)  # SecretNotFound, not retried


@pytest.mark.parametrize(
    ("ca_fixture", "hsm", "algorithm"),
    [
        ("ec_ca", True, SignatureAlgorithmOID.ECDSA_WITH_SHA256),
        ("ec384_ca", False, SignatureAlgorithmOID.ECDSA_WITH_SHA384),
        ("rsa_ca", True, SignatureAlgorithmOID.RSA_WITH_SHA256),
    ],
    ids=["ec-p256-hsm", "ec-p384", "rsa-2048-hsm"],
)
def test_keyvaultkey_signs_inside_key_vault(
    ca_fixture, hsm, algorithm, kv_env: VaultHarness, functions: Functions, monkeypatch, tmp_path, request, app_env
):
    ca = CaFiles.load(request.getfixturevalue(ca_fixture))
    kv_env.double.add_certificate(CERT_NAME, ca.certificate, ca.key, exportable=False, hsm=hsm)
    monkeypatch.setenv("Location", "KeyVaultKey")
    monkeypatch.setenv("CertificateChainFile", ca.root.public_bytes(serialization.Encoding.PEM).decode())
    monkeypatch.delenv("KeyVaultName")
    monkeypatch.setenv("KeyVaultUri", "https://xboot-test.vault.azure.net")  # what the Bicep deployment sets

    for n in range(2):
        reply = enroll(functions, tmp_path / f"device{n}", f"kvk-device-{n}")
        assert reply.status == 200, reply.body
        leaf = verify_issued(reply.json(), ca.root_path, tmp_path / f"verify{n}")
        assert leaf.signature_algorithm_oid == algorithm
        assert leaf.issuer == ca.certificate.subject

    double = kv_env.double
    assert double.count("POST", f"/keys/{CERT_NAME}/") == 2  # one sign per certificate
    assert double.count("GET", f"/certificates/{CERT_NAME}") == 1
    assert double.count("GET", "/secrets/") == 0  # the key is never read
    assert len(_audit_records(app_env)) == 2


def test_keyvaultkey_refuses_a_signature_that_does_not_verify(
    kv_env: VaultHarness, ec_ca: OpensslCa, functions, monkeypatch, tmp_path, app_env
):
    ca = CaFiles.load(ec_ca)
    kv_env.double.add_certificate(CERT_NAME, ca.certificate, ca.key, exportable=False)
    kv_env.double.bad_signatures = True
    monkeypatch.setenv("Location", "KeyVaultKey")

    reply = enroll(functions, tmp_path / "device", "kvk-device")

    assert reply.status == 500
    assert reply.json()["error"] == "configuration_error"
    assert "does not verify" in reply.json()["message"]
    assert "certificate" not in {k.lower() for k in reply.json()}
    assert _audit_records(app_env) == []


def test_keyvaultkey_without_sign_permission_names_the_role(
    kv_env: VaultHarness, ec_ca: OpensslCa, functions, monkeypatch, tmp_path
):
    ca = CaFiles.load(ec_ca)
    kv_env.double.add_certificate(CERT_NAME, ca.certificate, ca.key, exportable=False)
    kv_env.double.fail(403, f"/keys/{CERT_NAME}/")
    monkeypatch.setenv("Location", "KeyVaultKey")

    reply = enroll(functions, tmp_path / "device", "kvk-device")

    assert reply.status == 500
    assert "Key Vault Crypto User" in reply.json()["message"]


ENROLLMENTS = 1000


def _enroll_many(functions: Functions, tmp_path: Path, count: int) -> None:
    """`count` enrollments of one device CSR, each yielding a new certificate: XBoot's rules (no identity lock,
    no daily limit), so that what is counted is the Key Vault traffic of issuance alone."""
    csr = make_csr(tmp_path / "device", "burst-device")
    body = {"RegistrationId": "burst-device", "Csr": csr.b64}
    serials = set()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("IdentityLock", "false")
        patch.setenv("MaxCertificatesPerDay", "0")
        for _ in range(count):
            reply = functions.call("POST", "/api/certificate", body)
            assert reply.status == 200, reply.body
            serials.add(reply.json()["serialNumber"])
    assert len(serials) == count


def test_warm_instance_reads_key_vault_once_per_ttl(
    kv_env: VaultHarness, ec_ca: OpensslCa, functions: Functions, monkeypatch, tmp_path
):
    ca = CaFiles.load(ec_ca)
    kv_env.double.add_certificate(CERT_NAME, ca.certificate, ca.key, (ca.root,), content_type="application/x-pem-file")
    monkeypatch.setenv("Location", "KeyVault")
    monkeypatch.setenv("SignerCacheSeconds", "300")

    _enroll_many(functions, tmp_path, ENROLLMENTS)

    double = kv_env.double
    reads = {"secret": double.count("GET", "/secrets/"), "certificate": double.count("GET", "/certificates/")}
    assert reads == {"secret": 1, "certificate": 0}
    assert double.challenges <= 1

    # A short TTL: the next enrollment after it lapses reads the secret again, once. The signer's clock is a
    # fake one moved past the TTL: no sleep, so no race with a slow machine.
    clock = [1_000.0]
    monkeypatch.setattr(xboot.service.ca.signer, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    monkeypatch.setenv("SignerCacheSeconds", "1")
    _enroll_many(functions, tmp_path / "a", 5)
    clock[0] += 1.1
    _enroll_many(functions, tmp_path / "b", 5)
    assert double.count("GET", "/secrets/") == 3  # the setting change reloads once, the lapsed TTL once


def test_keyvaultkey_costs_one_sign_per_certificate(
    kv_env: VaultHarness, ec_ca: OpensslCa, functions: Functions, monkeypatch, tmp_path
):
    ca = CaFiles.load(ec_ca)
    kv_env.double.add_certificate(CERT_NAME, ca.certificate, ca.key, exportable=False, hsm=True)
    monkeypatch.setenv("Location", "KeyVaultKey")

    _enroll_many(functions, tmp_path, ENROLLMENTS)

    double = kv_env.double
    counts = {
        "certificate": double.count("GET", "/certificates/"),
        "secret": double.count("GET", "/secrets/"),
        "key": double.count("GET", "/keys/"),
        "sign": double.count("POST", "/keys/"),
    }
    # One certificate read per TTL; the CryptographyClient reads the public key once, then only signs.
    assert counts == {"certificate": 1, "secret": 0, "key": 1, "sign": ENROLLMENTS}
    assert double.challenges <= 2  # at most one per SDK client (the SDK caches challenges per vault host)


def test_keyvaultkey_certificate_has_the_builders_content(
    kv_env: VaultHarness, rsa_ca: OpensslCa, functions: Functions, monkeypatch, tmp_path
):
    """The reassembled certificate is exactly what the issuance policy built: only the signature differs."""
    ca = CaFiles.load(rsa_ca)
    kv_env.double.add_certificate(CERT_NAME, ca.certificate, ca.key, exportable=False)
    monkeypatch.setenv("Location", "KeyVaultKey")

    reply = enroll(functions, tmp_path / "device", "kvk-device")
    assert reply.status == 200, reply.body
    leaf = x509.load_pem_x509_certificates(reply.json()["certificateChain"].encode())[0]

    assert leaf.version == x509.Version.v3
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    leaf.verify_directly_issued_by(ca.certificate)
