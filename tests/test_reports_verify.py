"""verify_signed_report on the guide's openssl PKI: what must pass, and every refusal the issue lists."""

from __future__ import annotations

import base64
import datetime as dt
import random
import re

import pytest
from asn1crypto import cms
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID

import xboot.service.reports.verify
from tests.fixtures.report_pki import GATEWAY_ID, Pki, after_days, report_bytes
from tests.helpers import openssl
from xboot.errors import BadRequest, Unprocessable, XbootError
from xboot.pki import sha256_fingerprint
from xboot.service.reports.smime import parse_signed_message, report_document
from xboot.service.reports.trust import TrustAnchors
from xboot.service.reports.verify import Verification, verify_signed_report


def anchors(pki: Pki, *names: str) -> TrustAnchors:
    return TrustAnchors(frozenset(pki.fingerprint(n) for n in names or ("ca_root",)))


def verify(message: bytes, trust: TrustAnchors, now: dt.datetime | None = None) -> Verification:
    return verify_signed_report(parse_signed_message(message), trust, now or dt.datetime.now(dt.UTC))


def refused(message: bytes, trust: TrustAnchors, code: str, now: dt.datetime | None = None) -> str:
    with pytest.raises(Unprocessable) as caught:
        verify(message, trust, now)
    assert caught.value.code == code, caught.value.message
    return caught.value.message


def signature_blob(message: bytes) -> tuple[int, int]:
    """Start and end of the base64 signature in an S/MIME message."""
    match = re.search(rb'filename="smime.p7s"\r?\n\r?\n(.*?)\r?\n\r?\n', message, re.DOTALL)
    assert match is not None
    return match.start(1), match.end(1)


def replace_cms(message: bytes, change) -> bytes:
    start, end = signature_blob(message)
    info = cms.ContentInfo.load(base64.b64decode(message[start:end]))
    changed = change(info)
    return message[:start] + base64.encodebytes(changed.dump(force=True)) + message[end:]


def test_the_guides_v1_gateway_report_verifies_to_the_root_fingerprint(guide_pki, guide_report):
    assert guide_pki.certificate("gateway").version == x509.Version.v1  # what the guide makes on OpenSSL 3.0/3.1
    result = verify(guide_report, anchors(guide_pki))
    assert result.path_fingerprints == tuple(
        guide_pki.fingerprint(n) for n in ("gateway", "ca_intermediate", "ca_root")
    )
    assert result.trust_anchor == guide_pki.fingerprint("ca_root")
    assert result.signer_common_name == GATEWAY_ID
    assert result.content.startswith(b"Content-Type: text/plain\r\n\r\n{\r\n")
    assert report_document(result.content)["values"][1]["ModuleSerialNumber"] == "gw1"
    details = result.details()
    assert details["signer"] == f"CN={GATEWAY_ID}" and details["digestAlgorithm"] == "sha256"
    assert [p["subject"] for p in details["path"]] == [f"CN={GATEWAY_ID}", "CN=INTERMEDIATE", "CN=ROOT"]
    # the signing time is the moment openssl signed (a fresh message: the session's may be minutes old)
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    fresh = verify(guide_pki.sign(report_bytes(), "gateway"), anchors(guide_pki))
    assert before <= fresh.signing_time <= dt.datetime.now(dt.UTC)
    assert result.signing_time <= before


def test_an_intermediate_fingerprint_is_an_anchor_too(guide_pki, guide_report):
    result = verify(guide_report, anchors(guide_pki, "ca_intermediate"))
    assert result.path_fingerprints == (guide_pki.fingerprint("gateway"), guide_pki.fingerprint("ca_intermediate"))


@pytest.mark.parametrize(
    ("signer", "extra"),
    [
        pytest.param("gateway_v3", (), id="v3-gateway-clientAuth"),
        pytest.param("gateway_rsa", (), id="rsa-pkcs1-sha256"),
        pytest.param("gateway_rsa", ("-md", "sha512", "-keyopt", "rsa_padding_mode:pss"), id="rsa-pss-sha512"),
        pytest.param("gateway", ("-md", "sha384"), id="ecdsa-sha384"),
        pytest.param("gateway", ("-md", "sha512"), id="ecdsa-sha512"),
    ],
)
def test_openssl_signatures_verify(guide_pki, signer, extra):
    message = guide_pki.sign(report_bytes(), signer, "cert-chain.crt", *extra)
    openssl("cms", "-verify", "-CAfile", str(guide_pki.path("ca_root.crt")), "-purpose", "any", "-out", "/dev/null",
            stdin=message)  # fmt: skip
    result = verify(message, anchors(guide_pki))
    assert result.path[0] == guide_pki.certificate(signer)


def test_a_report_signed_by_pythons_pkcs7_builder_verifies(guide_pki):
    message = guide_pki.python_sign(report_bytes(), "gateway_v3")
    assert b'protocol="application/x-pkcs7-signature"' in message
    result = verify(message, anchors(guide_pki))
    assert report_document(result.content)["gatewayId"] == GATEWAY_ID


def test_line_endings_changed_in_transit_still_verify(guide_pki, guide_report):
    all_lf = guide_report.replace(b"\r\n", b"\n")
    all_crlf = all_lf.replace(b"\n", b"\r\n")
    openssl("cms", "-verify", "-CAfile", str(guide_pki.path("ca_root.crt")), "-out", "/dev/null", stdin=all_lf)
    for message in (all_lf, all_crlf):
        assert verify(message, anchors(guide_pki)).content == verify(guide_report, anchors(guide_pki)).content


def test_an_opaque_pkcs7_mime_and_bare_der_cms_verify(guide_pki):
    report = report_bytes()
    smime = guide_pki.sign(report, "gateway", "cert-chain.crt", "-nodetach")
    assert b"application/pkcs7-mime" in smime
    der = guide_pki.sign(report, "gateway", "cert-chain.crt", "-nodetach", "-outform", "DER")
    for message in (smime, der, base64.encodebytes(der)):
        result = verify(message, anchors(guide_pki))
        assert report_document(result.content)["gatewayId"] == GATEWAY_ID


# --- refusals ---------------------------------------------------------------------------------------------------


def test_a_tampered_body_is_refused(guide_pki, guide_report):
    tampered = guide_report.replace(b'"gw1"', b'"gw2"')
    assert tampered != guide_report
    assert "digest" in refused(tampered, anchors(guide_pki), "signature_invalid")


def test_a_tampered_signed_header_is_refused(guide_pki, guide_report):
    tampered = guide_report.replace(b"Content-Type: text/plain\r\n", b"Content-Type: text/plain; x=1\r\n", 1)
    assert tampered != guide_report
    refused(tampered, anchors(guide_pki), "signature_invalid")


def test_a_tampered_signature_is_refused(guide_pki, guide_report):
    def flip_last_signature_byte(info):
        signer = info["content"]["signer_infos"][0]
        value = bytearray(signer["signature"].native)
        value[-1] ^= 0x01
        signer["signature"] = bytes(value)
        return info

    message = replace_cms(guide_report, flip_last_signature_byte)
    assert "does not verify" in refused(message, anchors(guide_pki), "signature_invalid")


def test_a_tampered_signed_attribute_is_refused(guide_pki, guide_report):
    def later_signing_time(info):
        attributes = info["content"]["signer_infos"][0]["signed_attrs"]
        for attribute in attributes:
            if attribute["type"].native == "signing_time":
                attribute["values"] = [cms.Time({"utc_time": dt.datetime(2030, 1, 1, tzinfo=dt.UTC)})]
        return info

    refused(replace_cms(guide_report, later_signing_time), anchors(guide_pki), "signature_invalid")


def test_an_untrusted_chain_is_refused_and_names_its_root(guide_pki):
    message = guide_pki.sign(report_bytes(), "other_gateway", "other-chain.crt")
    text = refused(message, anchors(guide_pki), "untrusted")
    assert guide_pki.fingerprint("other_root") in text


def test_a_forged_leaf_with_the_genuine_chain_embedded_is_refused(guide_pki):
    # Same subject and issuer name as the real gateway, own key, but the genuine intermediate and root embedded.
    message = guide_pki.sign(report_bytes(), "other_gateway", "cert-chain.crt")
    assert "does not verify as issued by CN=INTERMEDIATE" in refused(message, anchors(guide_pki), "chain_invalid")


def test_the_trusted_root_embedded_off_the_path_does_not_help(guide_pki):
    guide_pki.chain("other-plus-genuine-root.crt", "other_intermediate", "other_root", "ca_root")
    message = guide_pki.sign(report_bytes(), "other_gateway", "other-plus-genuine-root.crt")
    with pytest.raises(Unprocessable) as caught:  # both roots are CN=ROOT: the genuine one is tried, and fails
        verify(message, anchors(guide_pki))
    assert caught.value.code == "chain_invalid" and "as issued by CN=ROOT" in caught.value.message


def test_a_self_signed_ca_cannot_sign_reports(guide_pki):
    message = guide_pki.sign(report_bytes(), "other_root", None)
    assert "is a CA certificate" in refused(message, anchors(guide_pki), "certificate_invalid")


def test_an_expired_gateway_is_refused_at_receipt_time(guide_pki):
    message = guide_pki.sign(report_bytes(), "gateway_1day")
    assert verify(message, anchors(guide_pki), after_days(0.5))
    assert "expired" in refused(message, anchors(guide_pki), "certificate_invalid", after_days(2))
    assert "not valid yet" in refused(message, anchors(guide_pki), "certificate_invalid", after_days(-1))


def test_an_expired_intermediate_is_refused(guide_pki, guide_report):
    # The intermediate lives 356 days, the gateway 365: on day 360 only the intermediate has expired.
    assert "issuer certificate CN=INTERMEDIATE has expired" in refused(
        guide_report, anchors(guide_pki), "certificate_invalid", after_days(360)
    )


@pytest.mark.parametrize(
    ("intermediate", "reason"),
    [
        ("leaf_intermediate", "is not a CA"),
        ("v1_intermediate", "is not a CA"),
        ("nosign_intermediate", "without keyCertSign"),
    ],
)
def test_an_intermediate_that_may_not_issue_is_refused(guide_pki, intermediate, reason):
    message = guide_pki.sign(report_bytes(), f"{intermediate}_gateway", f"{intermediate}-chain.crt")
    assert reason in refused(message, anchors(guide_pki), "chain_invalid")


def test_a_path_length_constraint_is_honoured(guide_pki):
    message = guide_pki.sign(report_bytes(), "pathlen_gateway", "pathlen-chain.crt")
    assert "path length" in refused(message, anchors(guide_pki, "pathlen_root"), "chain_invalid")
    assert verify(message, anchors(guide_pki, "pathlen_intermediate"))  # no constraint below the intermediate


def test_a_tls_server_certificate_may_not_sign_reports(guide_pki):
    message = guide_pki.sign(report_bytes(), "gateway_tls")
    assert "extendedKeyUsage" in refused(message, anchors(guide_pki), "certificate_invalid")


def test_missing_signed_attributes_are_refused(guide_pki):
    message = guide_pki.sign(report_bytes(), "gateway", "cert-chain.crt", "-noattr")
    assert "signed attributes are required" in refused(message, anchors(guide_pki), "signature_invalid")


def test_a_second_signer_is_refused(guide_pki, guide_report):
    def duplicate_signer(info):
        signers = info["content"]["signer_infos"]
        info["content"]["signer_infos"] = [signers[0], signers[0]]
        return info

    assert "exactly one signer" in refused(
        replace_cms(guide_report, duplicate_signer), anchors(guide_pki), "signature_invalid"
    )


def test_a_signer_certificate_missing_from_the_message_is_refused(guide_pki, guide_report):
    def drop_leaf(info):
        certificates = info["content"]["certificates"]
        info["content"]["certificates"] = [
            c for c in certificates if c.chosen.subject.native["common_name"] != GATEWAY_ID
        ]
        return info

    assert "signer certificate" in refused(
        replace_cms(guide_report, drop_leaf), anchors(guide_pki), "signature_invalid"
    )


def test_known_anchor_certificates_complete_a_chain_the_sender_did_not_embed(guide_pki):
    message = guide_pki.sign(report_bytes(), "gateway", None)  # the gateway certificate alone
    intermediate = guide_pki.certificate("ca_intermediate")
    trust = TrustAnchors(frozenset({sha256_fingerprint(intermediate)}), (intermediate,))
    assert verify(message, trust).trust_anchor == sha256_fingerprint(intermediate)
    refused(message, anchors(guide_pki), "untrusted")


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"   ",
        b"hello",
        b"\x30\x03\x02\x01",
        b"MIME-Version: 1.0\n\nbody",
        b"-----BEGIN CMS-----\n!!\n-----END CMS-----",
    ],
)
def test_garbage_is_a_bad_request(guide_pki, garbage):
    with pytest.raises(BadRequest):
        verify(garbage, anchors(guide_pki))


def test_truncations_and_bit_flips_never_crash_and_never_change_what_verifies(guide_pki, guide_report):
    """Random damage gives a 4xx refusal, or (e.g. in the unsigned preamble) the very same verified content."""
    trust = anchors(guide_pki)
    original = verify(guide_report, trust).content
    chance = random.Random(20261123)
    der_message = guide_pki.sign(report_bytes(), "gateway", "cert-chain.crt", "-nodetach", "-outform", "DER")
    original_der = verify(der_message, trust).content
    for base, expected in ((guide_report, original), (der_message, original_der)):
        for _ in range(300):
            damaged = bytearray(base)
            if chance.random() < 0.3:
                damaged = damaged[: chance.randrange(len(damaged))]
            else:
                for _ in range(chance.randint(1, 3)):
                    damaged[chance.randrange(len(damaged))] ^= 1 << chance.randrange(8)
            try:
                assert verify(bytes(damaged), trust).content == expected
            except XbootError as error:
                assert 400 <= error.status < 500, error.message


def test_path_search_is_bounded_when_certificates_share_names_and_keys(monkeypatch):
    """Twelve self-issued CAs with one key all verify as each other's issuer: the search must not go factorial."""
    now = dt.datetime.now(dt.UTC)
    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "X")])

    def certificate(subject: x509.Name, key, ca: bool) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        )
        return builder.sign(ca_key, hashes.SHA256())

    cas = [certificate(name, ca_key, True) for _ in range(12)]
    leaf = certificate(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, GATEWAY_ID)]), leaf_key, False)
    builder = pkcs7.PKCS7SignatureBuilder().set_data(report_bytes()).add_signer(leaf, leaf_key, hashes.SHA256())
    for ca in cas:
        builder = builder.add_certificate(ca)
    options = [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.Text]
    message = builder.sign(serialization.Encoding.SMIME, options)
    calls = []
    real_check = xboot.service.reports.verify._check_issuer
    monkeypatch.setattr(xboot.service.reports.verify, "_check_issuer", lambda *a: calls.append(1) or real_check(*a))
    assert "too entangled" in refused(message, TrustAnchors(frozenset({"00:" * 31 + "00"})), "chain_invalid")
    assert len(calls) <= xboot.service.reports.verify.MAX_LINK_CHECKS
