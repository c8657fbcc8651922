"""Report path validation against RFC 5280: name constraints, and the structural rules common verifiers apply.

Chains are built with `cryptography` (a root, an optional intermediate, a leaf with exactly the extensions
a case needs) or, for shapes only openssl makes (explicit curve parameters, over-long serials), with the
openssl CLI. Each case is the input its refusal exists for; the good variants prove the rule is not a
blanket refusal. The documented leniency (v1 signers, non-critical basicConstraints on CAs, CAs without
keyUsage) is what the guide's PKI in test_reports_verify.py passes with.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID

from tests.fixtures.report_pki import report_bytes
from tests.helpers import openssl
from tests.test_reports_verify import refused, verify
from xboot.pki import sha256_fingerprint
from xboot.service.reports import names
from xboot.service.reports.trust import TrustAnchors
from xboot.service.reports.verify import LENIENCY

NOW = dt.datetime.now(dt.UTC)
CA_USAGE = x509.KeyUsage(False, False, False, False, False, True, True, False, False)
LEAF_USAGE = x509.KeyUsage(True, False, False, False, False, False, False, False, False)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@dataclass
class Spec:
    """One certificate: what it is called, and every deviation from a well-formed one."""

    subject: x509.Name
    ca: bool
    extra: list[tuple[Any, bool]] = field(default_factory=list)  # (extension, critical)
    skip: tuple[type, ...] = ()  # extensions to leave out
    critical: tuple[type, ...] = ()  # AKI/SKI to mark critical
    serial: int | None = None  # random unless a case needs one
    key: Any = None


def _build(spec: Spec, issuer: x509.Certificate | None, issuer_key: Any) -> tuple[x509.Certificate, Any]:
    key = spec.key or ec.generate_private_key(ec.SECP256R1())
    issuer_name = issuer.subject if issuer is not None else spec.subject
    signing_key = issuer_key if issuer_key is not None else key
    extensions: list[tuple[Any, bool]] = [
        (x509.BasicConstraints(ca=spec.ca, path_length=None), True),
        (CA_USAGE if spec.ca else LEAF_USAGE, True),
        (x509.SubjectKeyIdentifier.from_public_key(key.public_key()), x509.SubjectKeyIdentifier in spec.critical),
        (x509.AuthorityKeyIdentifier.from_issuer_public_key(signing_key.public_key()),
         x509.AuthorityKeyIdentifier in spec.critical),
    ]  # fmt: skip
    if not spec.ca:
        extensions.append((x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), False))
    builder = (
        x509.CertificateBuilder()
        .subject_name(spec.subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(spec.serial if spec.serial is not None else x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=30))
    )
    kept = [(e, c) for e, c in extensions if type(e) not in spec.skip]  # skip drops defaults, not the extras
    for extension, critical in [*kept, *spec.extra]:
        builder = builder.add_extension(extension, critical)
    return builder.sign(signing_key, hashes.SHA256()), key


def chain(leaf: Spec, intermediate: Spec | None = None, root: Spec | None = None) -> tuple[bytes, TrustAnchors]:
    """A report signed by `leaf`, with the chain embedded; trust is the root's fingerprint."""
    root_cert, root_key = _build(root or Spec(_name("Test Root"), ca=True), None, None)
    issuer, issuer_key, embedded = root_cert, root_key, [root_cert]
    if intermediate is not None:
        issuer, issuer_key = _build(intermediate, root_cert, root_key)
        embedded.insert(0, issuer)
    leaf_cert, leaf_key = _build(leaf, issuer, issuer_key)
    builder = pkcs7.PKCS7SignatureBuilder().set_data(report_bytes()).add_signer(leaf_cert, leaf_key, hashes.SHA256())
    for certificate in embedded:
        builder = builder.add_certificate(certificate)
    message = builder.sign(
        serialization.Encoding.SMIME, [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.Text]
    )
    return message, TrustAnchors(frozenset({sha256_fingerprint(root_cert)}))


def leaf(cn: str = "gw-1", *extra: tuple[Any, bool], **changes: Any) -> Spec:
    return Spec(_name(cn), ca=False, extra=[*extra, *changes.pop("extra", [])], **changes)


def constrained(constraints: x509.NameConstraints, critical: bool = True) -> Spec:
    return Spec(_name("Constrained CA"), ca=True, extra=[(constraints, critical)])


def san(*names: x509.GeneralName) -> tuple[Any, bool]:
    return (x509.SubjectAlternativeName(list(names)), False)


def test_a_well_formed_chain_verifies():
    message, trust = chain(leaf(), Spec(_name("Issuing CA"), ca=True))
    assert verify(message, trust).signer_common_name == "gw-1"


def test_the_leniency_is_written_down_in_one_place():
    assert LENIENCY == ("v1 signer certificates", "non-critical basicConstraints on CAs", "CAs without keyUsage")


# -- 10. name constraints ------------------------------------------------------------------------------------------


DNS = x509.NameConstraints([x509.DNSName("devices.example.com")], None)


@pytest.mark.parametrize("critical", [True, False])
def test_dns_name_constraints_bind_critical_or_not(critical):
    inside, trust = chain(leaf("gw", san(x509.DNSName("gw1.devices.example.com"))), constrained(DNS, critical))
    verify(inside, trust)
    outside, trust = chain(leaf("gw", san(x509.DNSName("gw1.evil.com"))), constrained(DNS, critical))
    assert "outside the names" in refused(outside, trust, "chain_invalid")
    lookalike, trust = chain(leaf("gw", san(x509.DNSName("xdevices.example.com"))), constrained(DNS, critical))
    refused(lookalike, trust, "chain_invalid")  # a suffix match is label by label, not by characters


def test_excluded_subtrees_win():
    constraints = x509.NameConstraints(None, [x509.DNSName("lab.example.com")])
    excluded, trust = chain(leaf("gw", san(x509.DNSName("a.lab.example.com"))), constrained(constraints))
    assert "may not certify" in refused(excluded, trust, "chain_invalid")
    other, trust = chain(leaf("gw", san(x509.DNSName("a.prod.example.com"))), constrained(constraints))
    verify(other, trust)


def test_directory_name_constraints_apply_to_the_subject():
    org = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Contoso")])
    constraints = x509.NameConstraints([x509.DirectoryName(org)], None)
    member = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Contoso"),
                        x509.NameAttribute(NameOID.COMMON_NAME, "gw")])  # fmt: skip
    inside, trust = chain(Spec(member, ca=False), constrained(constraints))
    verify(inside, trust)
    outsider = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Fabrikam"),
                          x509.NameAttribute(NameOID.COMMON_NAME, "gw")])  # fmt: skip
    outside, trust = chain(Spec(outsider, ca=False), constrained(constraints))
    refused(outside, trust, "chain_invalid")


@pytest.mark.parametrize(
    ("constraint", "good", "bad"),
    [
        (x509.RFC822Name("example.com"), x509.RFC822Name("ops@example.com"), x509.RFC822Name("ops@mail.example.com")),
        (x509.RFC822Name(".example.com"), x509.RFC822Name("ops@mail.example.com"), x509.RFC822Name("ops@example.org")),
        (x509.RFC822Name("ops@example.com"), x509.RFC822Name("ops@example.com"), x509.RFC822Name("dev@example.com")),
        (x509.UniformResourceIdentifier(".example.com"), x509.UniformResourceIdentifier("https://gw.example.com/x"),
         x509.UniformResourceIdentifier("https://example.org/x")),
        (x509.UniformResourceIdentifier("gw.example.com"), x509.UniformResourceIdentifier("mqtts://gw.example.com"),
         x509.UniformResourceIdentifier("urn:uuid:1234")),  # a URI without a host is inside no subtree
        (x509.IPAddress(ipaddress.ip_network("10.0.0.0/8")), x509.IPAddress(ipaddress.ip_address("10.1.2.3")),
         x509.IPAddress(ipaddress.ip_address("192.0.2.1"))),
        (x509.IPAddress(ipaddress.ip_network("2001:db8::/32")), x509.IPAddress(ipaddress.ip_address("2001:db8::1")),
         x509.IPAddress(ipaddress.ip_address("10.0.0.1"))),  # an IPv4 address is not inside an IPv6 network
    ],
)  # fmt: skip
def test_each_name_form_is_constrained(constraint, good, bad):
    constraints = x509.NameConstraints([constraint], None)
    inside, trust = chain(leaf("gw", san(good)), constrained(constraints))
    verify(inside, trust)
    outside, trust = chain(leaf("gw", san(bad)), constrained(constraints))
    refused(outside, trust, "chain_invalid")


def test_a_subject_email_is_an_rfc822_name_too():
    constraints = x509.NameConstraints([x509.RFC822Name("example.com")], None)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gw"),
                         x509.NameAttribute(NameOID.EMAIL_ADDRESS, "root@evil.com")])  # fmt: skip
    message, trust = chain(Spec(subject, ca=False), constrained(constraints))
    refused(message, trust, "chain_invalid")


def test_a_constraint_of_a_form_that_cannot_be_checked_is_refused():
    constraints = x509.NameConstraints([x509.RegisteredID(x509.ObjectIdentifier("1.2.3.4"))], None)
    message, trust = chain(leaf("gw"), constrained(constraints))
    assert "cannot check" in refused(message, trust, "chain_invalid")


def test_root_name_constraints_bind_the_whole_path():
    root = Spec(_name("Constrained Root"), ca=True, extra=[(DNS, True)])
    message, trust = chain(leaf("gw", san(x509.DNSName("gw.evil.com"))), Spec(_name("Issuing CA"), ca=True), root)
    refused(message, trust, "chain_invalid")


# -- 11. what RFC 5280 and common verifiers refuse ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "intermediate", "message"),
    [
        (leaf(skip=(x509.AuthorityKeyIdentifier,)), None, "no authorityKeyIdentifier"),
        (leaf(critical=(x509.AuthorityKeyIdentifier,)), None, "critical"),
        (leaf(critical=(x509.SubjectKeyIdentifier,)), None, "critical"),
        (leaf(), Spec(_name("No SKI CA"), ca=True, skip=(x509.SubjectKeyIdentifier,)), "no subjectKeyIdentifier"),
        (Spec(x509.Name([]), ca=False), None, "empty subject"),
        (leaf("gw", (x509.PolicyConstraints(require_explicit_policy=0, inhibit_policy_mapping=None), False)), None,
         "policyConstraints"),
        (leaf("gw", skip=(x509.BasicConstraints,), extra=[(x509.BasicConstraints(ca=True, path_length=None), True)]),
         None, "is a CA certificate"),
        (leaf("gw", skip=(x509.KeyUsage,), extra=[(x509.KeyUsage(True, False, False, False, False, True, False,
                                                                 False, False), True)]), None, "is a CA certificate"),
    ],
)  # fmt: skip
def test_structural_refusals(spec, intermediate, message):
    signed, trust = chain(spec, intermediate)
    assert message in refused(signed, trust, "certificate_invalid")


def test_a_root_whose_aki_is_not_its_ski_is_refused():
    other = ec.generate_private_key(ec.SECP256R1())
    root = Spec(_name("Odd Root"), ca=True, skip=(x509.AuthorityKeyIdentifier,),
                extra=[(x509.AuthorityKeyIdentifier.from_issuer_public_key(other.public_key()), False)])  # fmt: skip
    signed, trust = chain(leaf(), None, root)
    assert "does not match its SKI" in refused(signed, trust, "certificate_invalid")


def test_an_aki_naming_another_key_than_the_issuers_is_refused():
    stranger = ec.generate_private_key(ec.SECP256R1())
    spec = leaf(skip=(x509.AuthorityKeyIdentifier,),
                extra=[(x509.AuthorityKeyIdentifier.from_issuer_public_key(stranger.public_key()), False)])  # fmt: skip
    signed, trust = chain(spec)
    refused(signed, trust, "chain_invalid")


def test_an_rsa_modulus_of_odd_length_is_refused():
    odd = rsa.generate_private_key(65537, 2052)
    if odd.key_size % 8 == 0:
        pytest.skip("this cryptography rounds RSA key sizes")
    signed, trust = chain(leaf(key=odd))
    assert "odd length" in refused(signed, trust, "certificate_invalid")


def _openssl_chain(tmp_path: Path, key_command: list[str], serial: str) -> tuple[bytes, TrustAnchors]:
    """An openssl CA and a v3 leaf under it, the leaf's key and serial as given; a report the leaf signed."""
    for name, subject in (("ca", "/CN=Openssl CA"),):
        openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(tmp_path / f"{name}.key"))
        (tmp_path / "ca.cnf").write_text("[req]\ndistinguished_name=dn\nx509_extensions=v3\n[dn]\n[v3]\n"
                                         "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign\n"
                                         "subjectKeyIdentifier=hash\n")  # fmt: skip
        openssl("req", "-x509", "-new", "-key", str(tmp_path / "ca.key"), "-subj", subject, "-days", "5",
                "-config", str(tmp_path / "ca.cnf"), "-out", str(tmp_path / "ca.crt"))  # fmt: skip
    openssl(*key_command, str(tmp_path / "leaf.key"))
    openssl("req", "-new", "-key", str(tmp_path / "leaf.key"), "-subj", "/CN=gw", "-out", str(tmp_path / "leaf.csr"))
    (tmp_path / "leaf.ext").write_text("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                                       "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n")  # fmt: skip
    openssl("x509", "-req", "-in", str(tmp_path / "leaf.csr"), "-CA", str(tmp_path / "ca.crt"), "-CAkey",
            str(tmp_path / "ca.key"), "-set_serial", serial, "-days", "5", "-extfile", str(tmp_path / "leaf.ext"),
            "-out", str(tmp_path / "leaf.crt"))  # fmt: skip
    (tmp_path / "report.json").write_bytes(report_bytes())
    message = openssl("cms", "-sign", "-in", str(tmp_path / "report.json"), "-signer", str(tmp_path / "leaf.crt"),
                      "-inkey", str(tmp_path / "leaf.key"), "-certfile", str(tmp_path / "ca.crt"), "-text")  # fmt: skip
    root = x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes())
    return message, TrustAnchors(frozenset({sha256_fingerprint(root)}))


def test_explicit_ec_curve_parameters_are_refused(tmp_path):
    explicit = ["ecparam", "-name", "prime256v1", "-param_enc", "explicit", "-genkey", "-noout", "-out"]
    message, trust = _openssl_chain(tmp_path, explicit, "0x1001")
    assert "explicit EC curve parameters" in refused(message, trust, "certificate_invalid")
    (tmp_path / "named").mkdir()
    named_key = ["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out"]
    named, trust = _openssl_chain(tmp_path / "named", named_key, "0x1002")  # the same curve, named: accepted
    verify(named, trust)


@pytest.mark.parametrize("serial", ["0x" + "7f" + "01" * 21, "0", "-5"])  # 22 octets; zero; negative
def test_zero_negative_and_over_20_octet_serials_are_refused(tmp_path, serial):
    key = ["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out"]
    message, trust = _openssl_chain(tmp_path, key, serial)
    assert "serial" in refused(message, trust, "certificate_invalid")


# -- the name matching rules, one by one ----------------------------------------------------------------------


def _check(names_: list[x509.GeneralName], permitted: list[x509.GeneralName]) -> bool:
    try:
        names.check(names_, x509.NameConstraints(permitted, None), "gw", "CA")
    except names.NameConstraintViolation:
        return False
    return True


@pytest.mark.parametrize(
    ("host", "constraint", "inside"),
    [
        ("gw.example.com", "", True),  # an empty dNSName constraint permits every name
        ("example.com", ".example.com", False),  # a leading dot: names below, not the domain itself
        ("gw.example.com", ".example.com", True),
        ("gw.example.com.", "example.com", True),  # a trailing dot is the same name
        ("GW.Example.COM", "example.com", True),
        ("badexample.com", "example.com", False),
    ],
)
def test_dns_subtrees(host, constraint, inside):
    assert _check([x509.DNSName(host)], [x509.DNSName(constraint)]) is inside


def test_an_empty_subject_is_not_a_directory_name():
    """RFC 5280 4.2.1.10: directoryName constraints apply to the subject only when it is not empty."""
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(_name("CA"))
        .public_key(key.public_key())
        .serial_number(5)
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    alternative = x509.SubjectAlternativeName([x509.DNSName("gw.example.com")])
    found = names.names_of(certificate, alternative)
    assert found == [x509.DNSName("gw.example.com")]
    contoso = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Contoso")])
    assert _check(found, [x509.DirectoryName(contoso), x509.DNSName("example.com")])
