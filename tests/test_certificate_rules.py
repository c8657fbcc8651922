"""The Certificate method in process: the attestation signature, birth certificates and renewals, one rule each.

test_enrollment_authorization.py and test_est.py send attestations to `xboot serve`; here `authorize` meets
each forged or misconfigured case directly: an ECDSA or RSA signature over another CSR, an Ed25519 birth
certificate, a renewal for another ID, settings that cannot work.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
from dataclasses import replace

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding
from cryptography.x509.oid import NameOID

from tests.cms_forge import make_certificate, name, rsa_key
from tests.helpers import make_csr
from xboot.errors import ConfigurationError, Forbidden, Unauthorized
from xboot.pki import sha256_fingerprint
from xboot.service.enrollment.authorization import Attestation, EnrollmentRequest, Grant
from xboot.service.enrollment.authorization import certificate as certificate_method
from xboot.service.lifecycle import revocation
from xboot.service.settings import Settings

MAKER_KEY = ec.generate_private_key(ec.SECP256R1())
MAKER = make_certificate("Maker Root", MAKER_KEY, ca=True)


def _settings(**values: str) -> Settings:
    trust = {"EnrollmentAuthorization": "Certificate", "EnrollmentTrustedFingerprints": sha256_fingerprint(MAKER)}
    return Settings({**os.environ, **trust, **values})


def _sign(key, data: bytes) -> bytes:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(data, ec.ECDSA(hashes.SHA256()))
    return key.sign(data, padding.PKCS1v15(), hashes.SHA256())


def _request(tmp_path, registration_id: str, birth_key, subject: str | x509.Name | None = None) -> EnrollmentRequest:
    birth = make_certificate(subject or registration_id, birth_key, (MAKER, MAKER_KEY))
    csr = make_csr(tmp_path, registration_id)
    attestation = Attestation((birth, MAKER), _sign(birth_key, csr.der))
    return EnrollmentRequest(registration_id, x509.load_der_x509_csr(csr.der), csr.der, attestation=attestation)


@pytest.fixture
def ec_request(app_env, tmp_path) -> EnrollmentRequest:
    return _request(tmp_path, "dev-birth", ec.generate_private_key(ec.SECP256R1()))


@pytest.mark.parametrize("kind", ["ec", "rsa"])
def test_a_birth_certificate_signature_must_be_over_this_csr(app_env, tmp_path, kind):
    key = ec.generate_private_key(ec.SECP256R1()) if kind == "ec" else rsa_key()
    request = _request(tmp_path, "dev-birth", key)
    assert certificate_method.authorize(request, _settings()) == Grant("Certificate")
    other_csr = make_csr(tmp_path / "other", "dev-birth").der
    forged = replace(request, attestation=Attestation(request.attestation.certificates, _sign(key, other_csr)))
    with pytest.raises(Unauthorized, match="signature over the CSR does not verify") as refused:
        certificate_method.authorize(forged, _settings())
    assert refused.value.code == "invalid_credential"
    flipped = bytearray(request.attestation.signature)
    flipped[-1] ^= 1
    damaged = replace(request, attestation=Attestation(request.attestation.certificates, bytes(flipped)))
    with pytest.raises(Unauthorized, match="does not verify"):
        certificate_method.authorize(damaged, _settings())


def test_a_birth_key_that_is_neither_ec_nor_rsa_is_refused(app_env, tmp_path):
    key = ed25519.Ed25519PrivateKey.generate()
    builder = (
        x509.CertificateBuilder()
        .subject_name(name("dev-birth"))
        .issuer_name(MAKER.subject)
        .public_key(key.public_key())
        .serial_number(11)
        .not_valid_before(MAKER.not_valid_before_utc)
        .not_valid_after(MAKER.not_valid_after_utc)
    )
    birth = builder.sign(MAKER_KEY, hashes.SHA256())
    csr = make_csr(tmp_path, "dev-birth")
    request = EnrollmentRequest(
        "dev-birth",
        x509.load_der_x509_csr(csr.der),
        csr.der,
        attestation=Attestation((birth, MAKER), key.sign(csr.der)),
    )
    with pytest.raises(Unauthorized, match="neither EC nor RSA"):
        certificate_method.authorize(request, _settings())


def test_birth_certificates_count_only_when_the_method_is_listed(ec_request):
    assert certificate_method.authorize(ec_request, _settings(EnrollmentAuthorization="DeviceKey")) is None


def test_the_birth_identity_must_be_the_registration_id(app_env, tmp_path):
    request = _request(tmp_path, "dev-birth", ec.generate_private_key(ec.SECP256R1()), subject="dev-other")
    with pytest.raises(Forbidden, match="attestation certificate's CN is not the registration ID") as refused:
        certificate_method.authorize(request, _settings())
    assert refused.value.code == "credential_mismatch"


def test_the_identity_may_be_the_subject_serial_number(app_env, tmp_path):
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Sensor"),
                         x509.NameAttribute(NameOID.SERIAL_NUMBER, "dev-birth")])  # fmt: skip
    request = _request(tmp_path, "dev-birth", ec.generate_private_key(ec.SECP256R1()), subject=subject)
    assert certificate_method.authorize(request, _settings(EnrollmentIdentityAttribute="serialNumber"))
    with pytest.raises(ConfigurationError, match="use CN or serialNumber"):
        certificate_method.authorize(request, _settings(EnrollmentIdentityAttribute="OU"))


@pytest.mark.parametrize("trusted", ["", "not-a-fingerprint", f"{'AB' * 32},nope"])
def test_trusted_fingerprints_that_cannot_work_are_configuration_errors(ec_request, trusted):
    with pytest.raises(ConfigurationError, match="EnrollmentTrustedFingerprints"):
        certificate_method.authorize(ec_request, _settings(EnrollmentTrustedFingerprints=trusted))


def test_a_renewal_must_be_for_the_current_certificates_registration_id(app_env, functions, tmp_path):
    csr = make_csr(tmp_path / "a", "dev-renew-a")
    reply = functions.call("POST", "/api/certificate", {"RegistrationId": "dev-renew-a", "Csr": csr.b64})
    assert reply.status == 200
    current = x509.load_der_x509_certificate(base64.b64decode(reply.json()["certificate"]))
    key = serialization.load_pem_private_key(csr.key_path.read_bytes(), None)
    other = make_csr(tmp_path / "b", "dev-renew-b")
    request = EnrollmentRequest(
        "dev-renew-b",
        x509.load_der_x509_csr(other.der),
        other.der,
        attestation=Attestation((current,), _sign(key, other.der)),
    )
    with pytest.raises(Forbidden, match="belongs to another registration ID"):
        certificate_method.authorize(request, _settings())
    mine = replace(request, registration_id="dev-renew-a")
    assert certificate_method.authorize(mine, _settings()).renewal_of == current


def test_a_revoked_birth_certificate_is_refused(ec_request):
    birth = ec_request.attestation.certificates[0]
    assert certificate_method.authorize(ec_request, _settings())
    revocation.revoke(_settings(), "fingerprint", sha256_fingerprint(birth), "keyCompromise", dt.datetime.now(dt.UTC))
    with pytest.raises(Unauthorized, match=r"not trusted: .*is revoked: keyCompromise"):
        certificate_method.authorize(ec_request, _settings())
