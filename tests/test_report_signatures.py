"""Every refusal of report verification, met by the one message it exists for (built by tests/cms_forge.py).

Each case has a twin that verifies, so no refusal is a blanket one: an RSA signer verifies and the same
message with one bit of its signature flipped does not; P-521 is accepted and secp256k1 is not; 16
embedded certificates are accepted and 17 are not.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from asn1crypto import cms, core
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.cms_forge import (
    CONTENT_TYPE,
    MESSAGE_DIGEST,
    NOW,
    SIGNING_TIME,
    Forge,
    Raw,
    make_certificate,
    make_pki,
    name,
    rsa_key,
)
from tests.helpers import openssl
from xboot.errors import BadRequest, Unprocessable
from xboot.service.reports.smime import SignedMessage
from xboot.service.reports.verify import MAX_CERTIFICATES, Verification, verify_path, verify_signed_report


def verifies(forge: Forge) -> Verification:
    return verify_signed_report(forge.message(), forge.pki.anchors, NOW)


def refused(forge: Forge, code: str, match: str) -> None:
    with pytest.raises(Unprocessable, match=match) as caught:
        verifies(forge)
    assert caught.value.code == code


def malformed(forge: Forge, match: str) -> None:
    with pytest.raises(BadRequest, match=match) as caught:
        verifies(forge)
    assert caught.value.code == "invalid_message"


@pytest.fixture(scope="module")
def ec_forge() -> Forge:
    return Forge(make_pki())


@pytest.fixture(scope="module")
def rsa_forge() -> Forge:
    return Forge(make_pki(rsa_key()))


# -- the signature itself, for each scheme ----------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["rsa-pkcs1", "rsa-pss"])
def test_rsa_signatures_verify_and_a_flipped_bit_is_refused(rsa_forge, scheme):
    good = rsa_forge.but(scheme=scheme)
    assert verifies(good).signature_algorithm == scheme
    refused(good.but(flip_signature_bit=True), "signature_invalid", "does not verify")


@pytest.mark.parametrize("digest", ["sha256", "sha384", "sha512"])
def test_ecdsa_signatures_verify_and_a_flipped_bit_is_refused(ec_forge, digest):
    good = ec_forge.but(digest=digest)
    assert verifies(good).digest_algorithm == digest
    refused(good.but(flip_signature_bit=True), "signature_invalid", "does not verify")


def test_rsa_pss_with_another_salt_than_it_was_signed_with_is_refused(rsa_forge):
    refused(rsa_forge.but(scheme="rsa-pss", pss_salt=32, pss_salt_label=64), "signature_invalid", "does not verify")


@pytest.mark.parametrize(
    ("forge_name", "label"),
    [
        ("ec_forge", "1.2.840.113549.1.1.1"),  # an EC key labelled rsaEncryption: no check may be skipped
        ("ec_forge", "1.2.840.113549.1.1.11"),
        ("ec_forge", "1.2.840.113549.1.1.10"),
        ("rsa_forge", "1.2.840.10045.4.3.2"),  # an RSA key labelled ECDSA
    ],
)
def test_an_algorithm_label_that_does_not_match_the_key_is_refused(forge_name, label, request):
    forge = request.getfixturevalue(forge_name)
    refused(forge.but(signature_oid=label), "signature_invalid", "does not match the signer's key type")


def test_the_signature_hash_must_be_the_digest_algorithm(ec_forge):
    refused(ec_forge.but(signature_oid="1.2.840.10045.4.3.3"), "signature_invalid", "hash differs")
    refused(ec_forge.but(signature_oid="1.2.840.113549.1.1.13"), "signature_invalid", "hash differs")


def test_unknown_digest_and_signature_algorithms_are_refused(ec_forge):
    refused(ec_forge.but(signature_oid="1.2.840.10045.4.1"), "unsupported_algorithm", "must be ECDSA")  # SHA-1
    with pytest.raises(Unprocessable, match="SHA-256, SHA-384 or SHA-512"):
        verifies(ec_forge.but(digest="sha1", signature_oid="1.2.840.10045.4.3.2"))


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"pss_hash": "sha512"}, "MGF1 with the digest"),
        ({"pss_mgf_hash": "sha384"}, "MGF1 with the digest"),
        ({"pss_trailer": 2}, "MGF1 with the digest"),
        ({"pss_salt_label": 513}, "salt length out of range"),
    ],
)
def test_rsa_pss_parameters_must_match_the_digest(rsa_forge, changes, match):
    refused(rsa_forge.but(scheme="rsa-pss", **changes), "unsupported_algorithm", match)


def test_pss_salt_lengths_at_the_bounds_are_accepted(rsa_forge):
    assert verifies(rsa_forge.but(scheme="rsa-pss", pss_salt=0)).signature_algorithm == "rsa-pss"
    # 512 is in range: it reaches the signature check (which fails: it was signed with 32), not the range refusal
    refused(rsa_forge.but(scheme="rsa-pss", pss_salt=32, pss_salt_label=512), "signature_invalid", "does not verify")


# -- signed attributes and content -----------------------------------------------------------------------------


def _attributes(forge: Forge, drop: str | None = None, **values: list) -> list:
    found = [(oid, values.get(oid.replace(".", "_"), v)) for oid, v in forge.default_attributes() if oid != drop]
    return found


def test_signed_attributes_are_required(ec_forge):
    refused(ec_forge.but(no_attributes=True), "signature_invalid", "signed attributes are required")


def test_the_content_type_must_be_id_data_both_signed_and_unsigned(ec_forge):
    refused(ec_forge.but(content_type="1.2.840.113549.1.7.5"), "signature_invalid", "must be id-data")
    refused(ec_forge.but(attributes=_attributes(ec_forge, drop=CONTENT_TYPE)), "signature_invalid", "contentType")
    other = [(CONTENT_TYPE, [core.ObjectIdentifier("1.2.840.113549.1.7.2")])]
    refused(
        ec_forge.but(attributes=[*_attributes(ec_forge, drop=CONTENT_TYPE), *other]), "signature_invalid", "contentType"
    )


def test_the_message_digest_is_required_and_compared(ec_forge):
    refused(ec_forge.but(attributes=_attributes(ec_forge, drop=MESSAGE_DIGEST)), "signature_invalid", "missing")
    wrong = [(MESSAGE_DIGEST, [core.OctetString(b"\0" * 32)])]
    refused(
        ec_forge.but(attributes=[*_attributes(ec_forge, drop=MESSAGE_DIGEST), *wrong]),
        "signature_invalid",
        "does not match the signed digest",
    )
    altered = ec_forge.but(attributes=ec_forge.default_attributes(), content=ec_forge.content + b" ")
    refused(altered, "signature_invalid", "does not match the signed digest")


@pytest.mark.parametrize("oid", [CONTENT_TYPE, MESSAGE_DIGEST, SIGNING_TIME])
def test_each_signed_attribute_may_appear_once_with_one_value(ec_forge, oid):
    value = dict(ec_forge.default_attributes())[oid]
    refused(ec_forge.but(extra_attributes=[(oid, value)]), "signature_invalid", "must appear once")
    doubled = [(o, v * 2 if o == oid else v) for o, v in ec_forge.default_attributes()]
    refused(ec_forge.but(attributes=doubled), "signature_invalid", "must appear once")


@pytest.mark.parametrize(
    "der",
    [
        b"\x17\x08notatime",  # a UTCTime that does not parse
        b"\x18\x0f00000101000000Z",  # year 0: asn1crypto's extended_datetime, not a datetime
    ],
)
def test_a_signing_time_that_is_not_a_time_is_malformed(ec_forge, der):
    odd = [(o, [Raw(der)] if o == SIGNING_TIME else v) for o, v in ec_forge.default_attributes()]
    malformed(ec_forge.but(attributes=odd), "signingTime is malformed")


def test_a_signing_time_of_another_type_is_malformed(ec_forge):
    odd = [(o, [core.Integer(5)] if o == SIGNING_TIME else v) for o, v in ec_forge.default_attributes()]
    malformed(ec_forge.but(attributes=odd), "not well-formed")


def test_the_signing_time_is_reported(ec_forge):
    assert verifies(ec_forge).signing_time == NOW
    undated = _attributes(ec_forge, drop=SIGNING_TIME)
    assert verifies(ec_forge.but(attributes=undated)).signing_time is None


def test_content_must_be_detached_or_encapsulated_not_both_nor_neither(ec_forge):
    assert verifies(ec_forge.but(encapsulate=True, detach=False)).content == ec_forge.content
    malformed(ec_forge.but(encapsulate=True, detach=True), "either be detached")
    malformed(ec_forge.but(encapsulate=False, detach=False), "either be detached")


# -- which certificate signed ----------------------------------------------------------------------------------


def test_the_signer_is_matched_by_issuer_and_serial_both(ec_forge):
    gateway = ec_forge.pki.gateway
    refused(ec_forge.but(sid_serial=gateway.serial_number + 1), "signature_invalid", "embed the signer")
    refused(ec_forge.but(sid_issuer=name("Someone Else")), "signature_invalid", "embed the signer")


def test_the_signer_may_be_named_by_subject_key_identifier(ec_forge):
    assert verifies(ec_forge.but(sid="subject_key_identifier")).signer == ec_forge.pki.gateway
    wrong = ec_forge.but(sid="subject_key_identifier", sid_key_identifier=b"\1" * 20)
    refused(wrong, "signature_invalid", "embed the signer")


def test_a_signer_embedded_twice_under_one_name_is_refused(ec_forge):
    pki = ec_forge.pki
    serial = pki.gateway.serial_number
    twin = make_certificate("gw-forge", pki.gateway_key, (pki.issuing, pki.issuing_key), serial=serial)
    refused(ec_forge.but(certificates=[pki.gateway, twin, *pki.chain]), "signature_invalid", "exactly once")


def test_the_embedded_certificates_are_capped(ec_forge):
    pki = ec_forge.pki
    filler = [make_certificate(f"filler-{n}", ec.generate_private_key(ec.SECP256R1())) for n in range(17)]
    room = MAX_CERTIFICATES - 3
    assert verifies(ec_forge.but(certificates=[pki.gateway, *pki.chain, *filler[:room]]))
    malformed(ec_forge.but(certificates=[pki.gateway, *pki.chain, *filler[: room + 1]]), "more than 16")


# -- keys and hashes at each role ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "accepted"),
    [
        (lambda: rsa_key(2048), True),
        (lambda: ec.generate_private_key(ec.SECP384R1()), True),
        (lambda: ec.generate_private_key(ec.SECP521R1()), True),
        (lambda: rsa_key(1024), False),
        (lambda: ec.generate_private_key(ec.SECP256K1()), False),
        (lambda: ec.generate_private_key(ec.SECP224R1()), False),
    ],
    ids=["rsa-2048", "p-384", "p-521", "rsa-1024", "secp256k1", "p-224"],
)
@pytest.mark.parametrize("role", ["signer", "issuer"])
def test_key_strength_at_each_role(key, accepted, role):
    pki = make_pki(key()) if role == "signer" else make_pki(issuing_key=key())
    forge = Forge(pki)
    if accepted:
        assert verifies(forge).signer == pki.gateway
    else:
        refused(forge, "unsupported_algorithm", f"the {role} certificate's key must be")


@pytest.mark.parametrize("digest", ["-sha1", "-md5"])
def test_a_chain_certificate_signed_with_a_broken_hash_is_refused(tmp_path, digest):
    """`cryptography` will not sign with SHA-1 or MD5; openssl still does, as old gateway PKIs did."""
    pki = make_pki(rsa_key(), issuing_key=rsa_key())
    pem = serialization.Encoding.PEM
    (tmp_path / "ca.crt").write_bytes(pki.issuing.public_bytes(pem))
    (tmp_path / "ca.key").write_bytes(
        pki.issuing_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    (tmp_path / "gw.key").write_bytes(
        pki.gateway_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    (tmp_path / "gw.ext").write_text(
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
    )
    openssl("req", "-new", "-key", "gw.key", "-subj", "/CN=gw-forge", "-out", "gw.csr", cwd=tmp_path)
    openssl("x509", "-req", "-in", "gw.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-set_serial", "77", digest,
            "-days", "5", "-extfile", "gw.ext", "-out", "gw.crt", cwd=tmp_path)  # fmt: skip
    weak = x509.load_pem_x509_certificate((tmp_path / "gw.crt").read_bytes())
    forge = Forge(pki).but(certificates=[weak, *pki.chain], sid_serial=77)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)  # openssl's notBefore is now, to the second
    with pytest.raises(Unprocessable, match="weak hash") as caught:
        verify_signed_report(forge.message(), pki.anchors, later)
    assert caught.value.code == "chain_invalid"


UNKNOWN = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.55555.1"), b"\x05\x00")


@pytest.mark.parametrize("critical", [True, False])
def test_an_unknown_extension_is_refused_only_when_critical(critical):
    forge = Forge(make_pki(extra=((UNKNOWN, critical),)))
    if critical:
        refused(forge, "certificate_invalid", "unsupported critical extension 1.3.6.1.4.1.55555.1")
    else:
        assert verifies(forge)


def test_an_unknown_critical_extension_on_the_issuer_is_refused():
    pki = make_pki()
    issuing = make_certificate(
        "Forge Issuing CA", pki.issuing_key, (pki.root, pki.root_key), ca=True, extra=((UNKNOWN, True),)
    )
    gateway = make_certificate("gw-forge", pki.gateway_key, (issuing, pki.issuing_key))
    forge = Forge(pki).but(certificates=[gateway, issuing, pki.root], sid_serial=gateway.serial_number)
    refused(forge, "certificate_invalid", "unsupported critical extension")


@pytest.mark.parametrize(
    ("usage", "accepted"),
    [
        (x509.KeyUsage(True, False, False, False, False, False, False, False, False), True),
        (x509.KeyUsage(False, True, False, False, False, False, False, False, False), True),  # contentCommitment
        (x509.KeyUsage(False, False, True, False, False, False, False, False, False), False),  # keyEncipherment
        (x509.KeyUsage(False, False, False, False, True, False, False, False, False), False),  # keyAgreement
    ],
    ids=["digitalSignature", "contentCommitment", "keyEncipherment", "keyAgreement"],
)
def test_the_signer_key_usage_must_allow_signatures(usage, accepted):
    forge = Forge(make_pki(usage=usage))
    if accepted:
        assert verifies(forge)
    else:
        refused(forge, "certificate_invalid", "does not allow digital signatures")


@pytest.mark.parametrize(
    ("purposes", "accepted"),
    [
        ([ExtendedKeyUsageOID.EMAIL_PROTECTION], True),
        ([ExtendedKeyUsageOID.CLIENT_AUTH], True),
        ([ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE], True),
        ([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CODE_SIGNING], False),
    ],
    ids=["emailProtection", "clientAuth", "anyExtendedKeyUsage", "serverAuth+codeSigning"],
)
def test_the_signer_extended_key_usage(purposes, accepted):
    forge = Forge(make_pki(purposes=purposes))
    if accepted:
        assert verifies(forge)
    else:
        refused(forge, "certificate_invalid", "neither emailProtection nor clientAuth")


def test_a_signer_with_key_cert_sign_is_refused_as_a_ca():
    forge = Forge(make_pki(usage=x509.KeyUsage(True, False, False, False, False, True, False, False, False)))
    refused(forge, "certificate_invalid", "is a CA certificate")


def test_the_signer_validity_is_checked_at_receipt(ec_forge):
    gateway = ec_forge.pki.gateway
    message, anchors = ec_forge.message(), ec_forge.pki.anchors
    early = gateway.not_valid_before_utc - dt.timedelta(seconds=1)
    with pytest.raises(Unprocessable, match="not valid yet"):
        verify_signed_report(message, anchors, early)
    assert verify_signed_report(message, anchors, gateway.not_valid_after_utc)
    with pytest.raises(Unprocessable, match="has expired"):
        verify_signed_report(message, anchors, gateway.not_valid_after_utc + dt.timedelta(seconds=1))


# -- the message's structure -----------------------------------------------------------------------------------


def test_trailing_bytes_after_the_cms_are_refused(ec_forge):
    message = ec_forge.message()
    padded = type(message)(message.cms + b"\0\0", message.detached_content, message.raw)
    with pytest.raises(BadRequest) as caught:
        verify_signed_report(padded, ec_forge.pki.anchors, NOW)
    assert caught.value.code == "invalid_message"


def test_a_content_info_that_is_not_signed_data_is_refused(ec_forge):
    data = cms.ContentInfo({"content_type": "data", "content": b"report"}).dump()
    message = SignedMessage(cms=data, detached_content=ec_forge.content, raw=data)
    with pytest.raises(BadRequest, match="not SignedData"):
        verify_signed_report(message, ec_forge.pki.anchors, NOW)


@pytest.mark.parametrize("which", ["subject", "issuer"])
def test_an_embedded_certificate_with_an_undecodable_name_is_malformed(ec_forge, which):
    """Names decode lazily: each is decoded on arrival, so a bad one is the sender's 400, not a crash later."""
    pki = ec_forge.pki
    certificate = pki.issuing if which == "subject" else pki.gateway
    der = certificate.public_bytes(serialization.Encoding.DER)
    cn = b"Forge Issuing CA"  # the issuing CA's subject; the gateway's issuer
    assert der.count(cn) == 1
    broken = x509.load_der_x509_certificate(der.replace(cn, b"\xff" * len(cn)))  # invalid UTF-8 in a UTF8String
    others = [c for c in (pki.gateway, pki.issuing, pki.root) if c is not certificate]
    with pytest.raises(BadRequest, match=r"embedded certificate #\d is malformed"):
        verifies(ec_forge.but(certificates=[broken, *others]))


def test_the_verification_details_name_the_signing_time_or_none(ec_forge):
    assert verifies(ec_forge).details()["signingTime"] == NOW.isoformat().replace("+00:00", "Z")
    assert verifies(ec_forge.but(attributes=_attributes(ec_forge, drop=SIGNING_TIME))).details()["signingTime"] is None


def test_subject_key_identifier_matching_skips_certificates_without_one(ec_forge):
    pki = ec_forge.pki
    bare = make_certificate("no-ski", ec.generate_private_key(ec.SECP256R1()), identifiers=(False, False))
    forge = ec_forge.but(sid="subject_key_identifier", certificates=[bare, pki.gateway, *pki.chain])
    assert verifies(forge).signer == pki.gateway


# -- certificate rules -----------------------------------------------------------------------------------------


def test_a_serial_of_one_is_accepted():
    pki = make_pki(serial=1)
    assert verifies(Forge(pki).but(sid_serial=1)).signer.serial_number == 1


def test_a_signer_without_subject_key_identifier_is_accepted_a_ca_without_one_is_not():
    """SKI is required of CAs only (RFC 5280 4.2.1.2): the signer is checked as a leaf."""
    pki = make_pki(identifiers=(False, True))
    assert verifies(Forge(pki)).signer == pki.gateway
    root_key, issuing_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    root = make_certificate("Forge Root", root_key, ca=True)
    issuing = make_certificate("Forge Issuing CA", issuing_key, (root, root_key), ca=True, identifiers=(False, True))
    gateway_key = ec.generate_private_key(ec.SECP256R1())
    gateway = make_certificate("gw-forge", gateway_key, (issuing, issuing_key))
    forge = Forge(make_pki()).but(certificates=[gateway, issuing, root])
    forge.pki = type(forge.pki)(root, root_key, issuing, issuing_key, gateway, gateway_key)
    refused(forge, "certificate_invalid", "has no subjectKeyIdentifier")


def test_a_signer_with_an_empty_issuer_name_is_refused():
    pki = make_pki()
    key = pki.gateway_key
    empty = (
        x509.CertificateBuilder()
        .subject_name(name("gw-forge"))
        .issuer_name(x509.Name([]))
        .public_key(key.public_key())
        .serial_number(99)
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=1))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(pki.issuing_key, hashes.SHA256())
    )
    forge = Forge(pki).but(certificates=[empty, *pki.chain], sid="subject_key_identifier")
    refused(forge, "certificate_invalid", "empty issuer name")


@pytest.mark.parametrize(("length", "shortened"), [(160, False), (161, True)])
def test_names_in_messages_are_shortened_past_160_characters(length, shortened):
    """A sender's subject is quoted in the refusal, bounded: exactly 160 characters pass whole."""
    units = [x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "u" * 60) for _ in range(2)]
    prefix = x509.Name(units).rfc4514_string()
    cn = "c" * (length - len(prefix) - len(",CN="))
    subject = x509.Name([*units, x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    assert len(subject.rfc4514_string()) == length
    key = ec.generate_private_key(ec.SECP256R1())
    stranger = make_certificate(subject, key)  # self-signed, trusted by nobody
    gateway_key = ec.generate_private_key(ec.SECP256R1())
    gateway = make_certificate("gw-forge", gateway_key, (stranger, key))
    pki = make_pki()
    forge = Forge(type(pki)(pki.root, pki.root_key, stranger, key, gateway, gateway_key)).but(
        certificates=[gateway, stranger]
    )
    with pytest.raises(Unprocessable) as caught:
        verifies(forge)
    text = subject.rfc4514_string()
    assert (text[:157] + "..." if shortened else text) in caught.value.message
    assert (text not in caught.value.message) is shortened


# -- path building ---------------------------------------------------------------------------------------------


def _ca_chain(count: int) -> tuple[list[tuple[x509.Certificate, Any]], Any]:
    """A root and `count` CAs below it, each issuing the next: [(certificate, key), ...], root first."""
    root_key = ec.generate_private_key(ec.SECP256R1())
    levels = [(make_certificate("Level 0", root_key, ca=True), root_key)]
    for level in range(1, count + 1):
        key = ec.generate_private_key(ec.SECP256R1())
        levels.append((make_certificate(f"Level {level}", key, levels[-1], ca=True), key))
    return levels, root_key


@pytest.mark.parametrize(("intermediates", "accepted"), [(6, True), (7, False)])
def test_paths_longer_than_eight_certificates_are_refused(intermediates, accepted):
    levels, _ = _ca_chain(intermediates)
    gateway_key = ec.generate_private_key(ec.SECP256R1())
    gateway = make_certificate("gw-forge", gateway_key, levels[-1])
    pki = make_pki()
    pki = type(pki)(levels[0][0], levels[0][1], levels[-1][0], levels[-1][1], gateway, gateway_key)
    forge = Forge(pki).but(certificates=[gateway, *(c for c, _ in reversed(levels))])
    if accepted:
        assert len(verifies(forge).path) == intermediates + 2
    else:
        refused(forge, "chain_invalid", "too long")


def _cross_signed(expired_b: bool = False) -> tuple[Forge, x509.Certificate]:
    """One issuing key with two certificates: A under a root nobody trusts, B under the trusted root."""
    pki = make_pki()
    stranger_key = ec.generate_private_key(ec.SECP256R1())
    stranger = make_certificate("Other Root", stranger_key, ca=True)  # as long as "Forge Root": same sizes
    late = NOW - dt.timedelta(hours=1) if expired_b else None
    der = serialization.Encoding.DER
    for _ in range(200):  # the CMS certificate SET is sorted by encoding: A must sort first, to be met first
        a = make_certificate("Forge Issuing CA", pki.issuing_key, (stranger, stranger_key), ca=True)
        b = make_certificate("Forge Issuing CA", pki.issuing_key, (pki.root, pki.root_key), ca=True, not_after=late)
        if a.public_bytes(der) < b.public_bytes(der):
            return Forge(pki).but(certificates=[pki.gateway, a, b, pki.root]), b
    raise AssertionError("no ordering found")


def test_the_search_backtracks_past_an_issuer_whose_own_path_fails():
    forge, b = _cross_signed()
    path = verifies(forge).path
    assert path[1] == b and path[2] == forge.pki.root


def test_a_broken_link_is_reported_before_an_untrusted_end():
    """Two dead ends, one expired and one untrusted: the sender learns about the expiry."""
    forge, _ = _cross_signed(expired_b=True)
    refused(forge, "certificate_invalid", "has expired")


def test_verify_path_takes_a_signer_given_apart_from_the_certificates():
    """Enrollment attestations pass the birth certificate apart from its chain."""
    pki = make_pki()
    path, fingerprints = verify_path(pki.gateway, [pki.issuing, pki.root], pki.anchors, NOW)
    assert path == (pki.gateway, pki.issuing, pki.root) and len(fingerprints) == 3


def test_root_name_constraints_bind_intermediates_but_not_self_issued_ones():
    """RFC 5280 6.1.4 (b): a self-issued intermediate (key rollover) is exempt; any other CA is bound."""
    contoso = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Contoso")])
    constraint = (x509.NameConstraints([x509.DirectoryName(contoso)], None), True)
    member = x509.Name([*contoso, x509.NameAttribute(NameOID.COMMON_NAME, "gw-forge")])
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = make_certificate("Legacy Root", root_key, ca=True, extra=(constraint,))

    def report_through(middle_name: str, identifiers: tuple[bool, bool]) -> Forge:
        middle_key = ec.generate_private_key(ec.SECP256R1())
        middle = make_certificate(middle_name, middle_key, (root, root_key), ca=True, identifiers=identifiers)
        gateway_key = ec.generate_private_key(ec.SECP256R1())
        gateway = make_certificate(member, gateway_key, (middle, middle_key))
        pki = make_pki()
        pki = type(pki)(root, root_key, middle, middle_key, gateway, gateway_key)
        return Forge(pki).but(certificates=[gateway, middle, root])

    rollover = report_through("Legacy Root", (True, False))  # self-issued: same name as the root, new key
    assert len(verifies(rollover).path) == 3
    refused(report_through("Outsider CA", (True, True)), "chain_invalid", "CN=Outsider CA")
