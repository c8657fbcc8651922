"""The issued certificate's whole profile, and every refusal of the CSR checks at its boundary.

These call the issuance policy directly (plain data in and out), so each refusal is met by exactly the
input it exists for: a key one bit too short, an exponent just below 65537, base64 with a stray character.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt

import pytest
from asn1crypto import csr as asn1_csr
from asn1crypto import keys as asn1_keys
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from xboot.errors import BadRequest, ConfigurationError
from xboot.service.ca.issuance import (
    BACKDATE,
    IssuedCertificate,
    build_certificate,
    check_csr,
    check_device_key,
    parse_csr,
)
from xboot.service.ca.material import LocalKey
from xboot.service.ca.signer import Signer

NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)
YEAR = dt.timedelta(days=365)


def _signer(not_before: dt.datetime, not_after: dt.datetime) -> Signer:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Profile CA")])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Signer(certificate=certificate, key=LocalKey(key), chain=(), hash_algorithm=hashes.SHA256())


@pytest.fixture(scope="module")
def signer() -> Signer:
    return _signer(NOW - 2 * YEAR, NOW + 5 * YEAR)


def _usage(*, key_encipherment: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


@pytest.mark.parametrize("kind", ["ec", "rsa"])
@pytest.mark.parametrize("crl_url", [None, "https://xboot.example/api/crl"])
def test_the_issued_leaf_has_exactly_the_documented_extensions(kind, crl_url, signer):
    """README "What gets issued": these extensions, these values, this criticality, and nothing else."""
    if kind == "ec":
        device = ec.generate_private_key(ec.SECP256R1()).public_key()
    else:
        device = rsa.generate_private_key(65537, 2048).public_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dev-profile")])
    leaf = build_certificate(name, device, signer, YEAR, NOW, crl_url)
    expected = {
        x509.BasicConstraints: (True, x509.BasicConstraints(ca=False, path_length=None)),
        # keyEncipherment only for RSA keys (TLS 1.2 RSA key transport); never cRLSign, keyAgreement, ...
        x509.KeyUsage: (True, _usage(key_encipherment=kind == "rsa")),
        x509.ExtendedKeyUsage: (False, x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])),
        x509.SubjectKeyIdentifier: (False, x509.SubjectKeyIdentifier.from_public_key(device)),
        x509.AuthorityKeyIdentifier: (False, signer.authority_key_identifier),
    }
    if crl_url is not None:
        point = x509.DistributionPoint([x509.UniformResourceIdentifier(crl_url)], None, None, None)
        expected[x509.CRLDistributionPoints] = (False, x509.CRLDistributionPoints([point]))
    found = {type(extension.value): (extension.critical, extension.value) for extension in leaf.extensions}
    assert found == expected
    assert leaf.subject == name and leaf.issuer == signer.certificate.subject
    assert leaf.public_key() == device
    assert leaf.not_valid_after_utc == NOW + YEAR


def test_not_before_is_backdated_five_minutes_but_never_before_the_ca():
    """Clock skew on devices is absorbed; a leaf never claims validity its CA did not have."""
    device = ec.generate_private_key(ec.SECP256R1()).public_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dev-time")])
    old_ca = _signer(NOW - 2 * YEAR, NOW + YEAR)
    assert build_certificate(name, device, old_ca, YEAR, NOW).not_valid_before_utc == NOW - BACKDATE
    young_ca = _signer(NOW - dt.timedelta(minutes=1), NOW + YEAR)
    assert build_certificate(name, device, young_ca, YEAR, NOW).not_valid_before_utc == NOW - dt.timedelta(minutes=1)
    ending_ca = _signer(NOW - YEAR, NOW + dt.timedelta(days=3))
    assert build_certificate(name, device, ending_ca, YEAR, NOW).not_valid_after_utc == NOW + dt.timedelta(days=3)


def test_a_ca_that_expired_while_cached_issues_nothing():
    """The signer cache checked validity at load; a CA expiring during its TTL must not sign past its end."""
    device = ec.generate_private_key(ec.SECP256R1()).public_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dev-late")])
    expired = _signer(NOW - YEAR, NOW)
    with pytest.raises(ConfigurationError, match="expired"):
        build_certificate(name, device, expired, YEAR, NOW)


def _rsa(bits: int, exponent: int = 65537) -> rsa.RSAPublicKey:
    """A public key of exactly `bits` bits (the modulus need not factor: only its size is checked)."""
    return rsa.RSAPublicNumbers(exponent, (1 << (bits - 1)) | 1).public_key()


@pytest.mark.parametrize(("bits", "accepted"), [(2047, False), (2048, True), (8192, True), (8193, False)])
def test_rsa_key_size_bounds(bits, accepted):
    key = _rsa(bits)
    if accepted:
        assert check_device_key(key) is key
    else:
        with pytest.raises(BadRequest, match="2048-8192 bits") as refused:
            check_device_key(key)
        assert refused.value.code == "weak_key"


@pytest.mark.parametrize(("exponent", "accepted"), [(3, False), (65535, False), (65537, True), (65539, True)])
def test_rsa_public_exponent_bounds(exponent, accepted):
    key = _rsa(2048, exponent)
    if accepted:
        assert check_device_key(key) is key
    else:
        with pytest.raises(BadRequest, match="at least 65537") as refused:
            check_device_key(key)
        assert refused.value.code == "weak_key"


@pytest.mark.parametrize(
    ("curve", "accepted"),
    [(ec.SECP256R1, True), (ec.SECP384R1, True), (ec.SECP521R1, False), (ec.SECP256K1, False)],
)
def test_device_curves(curve, accepted):
    key = ec.generate_private_key(curve()).public_key()
    if accepted:
        assert check_device_key(key) is key
    else:
        with pytest.raises(BadRequest, match="P-256 or P-384"):
            check_device_key(key)


def test_an_rsa_key_with_an_even_exponent_is_refused_as_unsupported():
    """cryptography will not load an RSA key whose exponent is even: the CSR is refused, never a 500."""
    modulus = rsa.generate_private_key(65537, 2048).public_key().public_numbers().n
    info = asn1_csr.CertificationRequestInfo(
        {
            "version": "v1",
            "subject": asn1_x509.Name.build({"common_name": "dev-even"}),
            "subject_pk_info": asn1_keys.PublicKeyInfo(
                {
                    "algorithm": {"algorithm": "rsa"},
                    "public_key": asn1_keys.RSAPublicKey({"modulus": modulus, "public_exponent": 65538}),
                }
            ),
            "attributes": [],
        }
    )
    request = asn1_csr.CertificationRequest(
        {"certification_request_info": info, "signature_algorithm": {"algorithm": "sha256_rsa"}, "signature": b"\0"}
    )
    csr = parse_csr(base64.b64encode(request.dump()).decode())
    with pytest.raises(BadRequest, match="unsupported public key algorithm") as refused:
        check_csr(csr, "dev-even")
    assert refused.value.code == "weak_key"


def test_base64_with_characters_outside_the_alphabet_is_not_a_csr():
    """Strict base64: a decoder that skips stray characters would accept bytes the device never sent."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dev-b64")]))
        .sign(key, hashes.SHA256())
    )
    text = base64.b64encode(csr.public_bytes(serialization.Encoding.DER)).decode()
    assert check_csr(parse_csr(text), "dev-b64") == key.public_key()
    with pytest.raises(BadRequest) as refused:
        parse_csr(text[:40] + "*" + text[40:])
    assert refused.value.code == "invalid_csr"


def test_an_issued_certificate_cannot_be_changed_after_its_fingerprint_is_taken(signer):
    device = ec.generate_private_key(ec.SECP256R1()).public_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dev-frozen")])
    issued = IssuedCertificate("dev-frozen", build_certificate(name, device, signer, YEAR, NOW), signer)
    assert issued.fingerprint
    with pytest.raises(dataclasses.FrozenInstanceError):
        issued.certificate = build_certificate(name, device, signer, YEAR, NOW)  # type: ignore[misc]
