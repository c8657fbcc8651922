"""The upstream CA rules one at a time, in process: the CA chain pinned to a fingerprint, the cache of it,
what a CSR may hold to be forwarded, and each check of what an upstream answered."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID

import xboot.service.ca.issuers.upstream as upstream
from tests.cms_forge import CA_USAGE, NOW, make_certificate
from tests.helpers import openssl
from xboot.errors import BackendUnavailable, BadGateway, BadRequest, ConfigurationError
from xboot.pki import sha256_fingerprint
from xboot.service.ca.authority import IssuingCa
from xboot.service.ca.issuers import Order, cfssl, custom, est
from xboot.service.ca.issuers.transport import Answer, clear_connections, endpoint
from xboot.service.settings import Settings


def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def chain(depth: int) -> list[tuple[x509.Certificate, ec.EllipticCurvePrivateKey]]:
    """root, then `depth - 1` CAs each under the one before."""
    made = []
    for level in range(depth):
        k = key()
        made.append((make_certificate(f"CA {level}", k, made[-1] if made else None, ca=True), k))
    return made


def fail(what: str) -> BadGateway:
    return BadGateway(what)


def authority(certificates: list[x509.Certificate], anchor: x509.Certificate) -> IssuingCa:
    return upstream.build_authority(certificates, sha256_fingerprint(anchor), dt.datetime.now(dt.UTC), fail)


def refusal(certificates: list[x509.Certificate], anchor: x509.Certificate) -> str:
    with pytest.raises(BadGateway) as caught:
        authority(certificates, anchor)
    return caught.value.message


# -- the CA chain ---------------------------------------------------------------------------------------


def test_the_issuing_ca_is_the_bottom_and_the_path_climbs_to_the_anchor_in_any_order():
    (root, _), (middle, _), (issuing, _) = chain(3)
    ca = authority([root, issuing, middle], root)
    assert ca.certificate == issuing and ca.chain == (middle, root)


def test_certificates_above_the_anchor_stay_in_the_chain_devices_get():
    (root, _), (issuing, _) = chain(2)
    ca = authority([issuing, root], issuing)  # anchored at the issuing CA itself
    assert ca.certificate == issuing and ca.chain == (root,)


def test_a_chain_of_eight_is_taken_and_nine_or_none_refused():
    links = [c for c, _ in chain(9)]
    assert authority(links[1:], links[1]).certificate == links[-1]
    assert "1 to 8" in refusal(links, links[0])
    assert "1 to 8" in refusal([], links[0])


def test_unrelated_certificates_have_no_single_issuing_ca():
    (a, _), (b, _) = chain(1)[0], chain(1)[0]
    assert "no single issuing CA" in refusal([a, b], a)


def test_a_path_that_misses_the_anchor_is_refused():
    (root, _), (issuing, _) = chain(2)
    stranger = chain(1)[0][0]
    assert "does not lead to IssuerTrustedFingerprint" in refusal([issuing, root], stranger)
    assert "does not lead" in refusal([issuing], root)


def test_a_link_whose_signature_fails_is_not_a_link():
    _, (issuing, _) = chain(2)
    impostor = make_certificate("CA 0", key(), None, ca=True)  # the root's name, another key
    assert "does not lead" in refusal([issuing, impostor], impostor)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"ca": False, "usage": CA_USAGE}, "not a CA"),
        ({"usage": x509.KeyUsage(True, False, False, False, False, False, True, False, False)}, "without keyCertSign"),
        ({"not_after": NOW - dt.timedelta(hours=1)}, "expired or not valid yet"),
        ({"not_before": NOW + dt.timedelta(hours=1)}, "expired or not valid yet"),
    ],
)
def test_every_certificate_on_the_path_must_be_a_valid_ca(change, message):
    root_key, issuing_key = key(), key()
    root = make_certificate("root", root_key, None, ca=True)
    issuing = make_certificate("issuing", issuing_key, (root, root_key), **{"ca": True, **change})
    assert message in refusal([issuing, root], root)
    root_bad = make_certificate("root", root_key, None, **{"ca": True, **change})
    good = make_certificate("issuing", issuing_key, (root_bad, root_key), ca=True)
    assert message in refusal([good, root_bad], root_bad)


def test_a_ca_without_key_usage_is_accepted():
    root_key = key()
    builder = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bare")]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bare")])).public_key(root_key.public_key())
        .serial_number(7).not_valid_before(NOW - dt.timedelta(days=1)).not_valid_after(NOW + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    )  # fmt: skip
    bare = builder.sign(root_key, hashes.SHA256())
    assert authority([bare], bare).certificate == bare
    without_constraints = (
        x509.CertificateBuilder().subject_name(bare.subject).issuer_name(bare.subject).public_key(root_key.public_key())
        .serial_number(8).not_valid_before(NOW - dt.timedelta(days=1)).not_valid_after(NOW + dt.timedelta(days=1))
        .sign(root_key, hashes.SHA256())
    )  # fmt: skip
    assert "not a CA" in refusal([without_constraints], without_constraints)


def test_issuer_ca_certificates_inline_pem_or_a_file(tmp_path: Path):
    (root, _), (issuing, _) = chain(2)
    pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (issuing, root))
    assert upstream.configured_ca_certificates(Settings({"IssuerCaCertificates": pem.decode()})) == [issuing, root]
    (tmp_path / "chain.pem").write_bytes(pem)
    from_file = upstream.configured_ca_certificates(Settings({"IssuerCaCertificates": str(tmp_path / "chain.pem")}))
    assert from_file == [issuing, root]
    assert upstream.configured_ca_certificates(Settings({})) is None
    with pytest.raises(ConfigurationError, match="neither PEM nor a readable file"):
        upstream.configured_ca_certificates(Settings({"IssuerCaCertificates": str(tmp_path / "missing.pem")}))


# -- the cache of the chain ------------------------------------------------------------------------------


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch):
    (root, _), (issuing, _) = chain(2)
    clock = [1000.0]
    monkeypatch.setattr(upstream.time, "monotonic", lambda: clock[0])
    fetches: list[int] = []
    outage = [False]

    def fetch(settings: Settings) -> list[x509.Certificate]:
        fetches.append(1)
        if outage[0]:
            raise BackendUnavailable("down")
        return [issuing, root]

    source = upstream.Upstream("Test", (), lambda order, settings: [], fetch)
    upstream.clear_authority_cache()
    yield SimpleNamespace(source=source, clock=clock, fetches=fetches, outage=outage, root=root, issuing=issuing)
    upstream.clear_authority_cache()


def settings_for(counted, **extra: str) -> Settings:
    return Settings({"IssuerTrustedFingerprint": sha256_fingerprint(counted.root), "SignerCacheSeconds": "60",
                     **extra})  # fmt: skip


def test_the_chain_is_fetched_once_per_ttl(counted):
    settings = settings_for(counted)
    assert counted.source.authority(settings).certificate == counted.issuing
    counted.clock[0] += 59
    counted.source.authority(settings)
    assert len(counted.fetches) == 1
    counted.clock[0] += 2
    counted.source.authority(settings)
    assert len(counted.fetches) == 2


def test_an_outage_keeps_the_last_chain_and_without_one_is_503(counted):
    settings = settings_for(counted)
    first = counted.source.authority(settings)
    counted.outage[0] = True
    counted.clock[0] += 61
    assert counted.source.authority(settings) is first  # stale but good
    assert len(counted.fetches) == 2
    counted.clock[0] += 29
    counted.source.authority(settings)
    assert len(counted.fetches) == 2  # the stale entry is kept 30 s before the next try
    counted.clock[0] += 2
    counted.source.authority(settings)
    assert len(counted.fetches) == 3
    upstream.clear_authority_cache()
    with pytest.raises(BackendUnavailable):
        counted.source.authority(settings)


def test_the_cache_holds_at_most_seventeen_settings(counted):
    for n in range(17):
        counted.source.authority(settings_for(counted, IssuerCaCertificates="", SignerCacheSeconds=str(60 + n)))
    assert len(upstream._cache._entries) == 17
    counted.source.authority(settings_for(counted, SignerCacheSeconds="99"))
    assert len(upstream._cache._entries) == 1


# -- what a CSR may hold to be forwarded --------------------------------------------------------------------


def csr_with(*extensions: x509.ExtensionType, subject: list[x509.NameAttribute] | None = None):
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name(subject or [x509.NameAttribute(NameOID.COMMON_NAME, "dev-1")])
    )
    for extension in extensions:
        builder = builder.add_extension(extension, critical=False)
    return builder.sign(key(), hashes.SHA256())


def test_a_csr_with_allowed_extensions_is_forwarded():
    k = key().public_key()
    upstream.check_forwardable(
        csr_with(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False),
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]),
            x509.SubjectKeyIdentifier.from_public_key(k),
            x509.BasicConstraints(ca=False, path_length=None),
        ),
        "Test",
    )


@pytest.mark.parametrize(
    "csr",
    [
        pytest.param(lambda: csr_with(x509.BasicConstraints(ca=True, path_length=None)), id="ca-true"),
        pytest.param(lambda: csr_with(x509.SubjectAlternativeName([x509.DNSName("bank.example")])), id="san"),
        pytest.param(lambda: csr_with(subject=[x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Evil"),
                                               x509.NameAttribute(NameOID.COMMON_NAME, "dev-1")]), id="two-attrs"),
    ],
)  # fmt: skip
def test_csrs_an_upstream_would_copy_from_are_refused(csr):
    with pytest.raises(BadRequest) as caught:
        upstream.check_forwardable(csr(), "Test")
    assert caught.value.code == "csr_not_forwardable"


def test_a_csr_whose_extensions_cannot_be_read_is_refused():
    class Unreadable:
        @property
        def subject(self) -> list[object]:
            return [object()]

        @property
        def extensions(self):
            raise ValueError("duplicate extension")

    with pytest.raises(BadRequest, match="forwards the CSR as signed"):
        upstream.check_forwardable(Unreadable(), "Test")


# -- what the upstream answered ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def issuing(tmp_path_factory: pytest.TempPathFactory):
    directory = tmp_path_factory.mktemp("upstream-rules")
    (root, _), (ca, ca_key) = chain(2)
    (directory / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (directory / "ca.key").write_bytes(ca_key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))  # fmt: skip
    return SimpleNamespace(directory=directory, ca=ca, ca_key=ca_key, authority=IssuingCa(ca, (root,)))


def order_for(device: ec.EllipticCurvePrivateKey, registration_id: str = "dev-1") -> Order:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, registration_id)])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(device, hashes.SHA256())
    return Order(registration_id, csr, device.public_key(), dt.timedelta(days=365), dt.datetime.now(dt.UTC))


def openssl_leaf(issuing, order: Order, serial: str) -> x509.Certificate:
    directory: Path = issuing.directory
    (directory / "leaf.csr").write_bytes(order.csr.public_bytes(serialization.Encoding.PEM))
    (directory / "leaf.ext").write_text("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                                        "extendedKeyUsage=clientAuth\n")  # fmt: skip
    pem = openssl("x509", "-req", "-in", str(directory / "leaf.csr"), "-CA", str(directory / "ca.pem"), "-CAkey",
                  str(directory / "ca.key"), "-set_serial", serial, "-days", "30", "-extfile",
                  str(directory / "leaf.ext"))  # fmt: skip
    return x509.load_pem_x509_certificate(pem)


@pytest.mark.parametrize(
    ("serial", "accepted"),
    [("1", True), (str(2**159 - 1), True), ("0", False), (str(2**159), False)],
)
def test_the_serial_must_be_positive_and_fit_twenty_octets(serial, accepted, issuing):
    device = key()
    order = order_for(device)
    leaf = openssl_leaf(issuing, order, serial)
    if accepted:
        assert upstream.check_issued([leaf], order, issuing.authority, "Test") == leaf
    else:
        with pytest.raises(BadGateway) as caught:
            upstream.check_issued([leaf], order, issuing.authority, "Test")
        assert caught.value.code == "upstream_wrong_profile" and "serial" in caught.value.message


def test_the_leaf_is_found_among_what_was_answered(issuing):
    device = key()
    order = order_for(device)
    leaf = make_certificate("dev-1", device, (issuing.ca, issuing.ca_key))
    other = make_certificate("dev-1", key(), (issuing.ca, issuing.ca_key))
    assert upstream.check_issued([issuing.ca, other, leaf], order, issuing.authority, "Test") == leaf


def test_validity_up_to_the_setting_plus_a_day(issuing):
    device = key()
    order = dataclasses.replace(order_for(device), validity=dt.timedelta(days=29))
    leaf = make_certificate("dev-1", device, (issuing.ca, issuing.ca_key))  # NOW-1 day .. NOW+30 days: 31 days
    with pytest.raises(BadGateway, match="longer than CertificateValidityDays"):
        upstream.check_issued([leaf], order, issuing.authority, "Test")
    assert upstream.check_issued([leaf], dataclasses.replace(order, validity=dt.timedelta(days=30)),
                                 issuing.authority, "Test") == leaf  # fmt: skip


# -- EST: credentials and answers -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "allowed"),
    [("https://est.example/x", True), ("http://127.0.0.1:1/x", True), ("http://localhost:1/x", True),
     ("http://est.example/x", False), ("http://10.0.0.1/x", False)],
)  # fmt: skip
def test_basic_credentials_go_over_https_or_loopback_only(url, allowed):
    clear_connections()
    settings = Settings({"IssuerUrl": url, "IssuerUsername": "ra", "IssuerPassword": "pw"})
    if allowed:
        assert est._headers(settings, endpoint(settings, "EST")) == {"Authorization": "Basic cmE6cHc="}
    else:
        with pytest.raises(ConfigurationError, match="clear text"):
            est._headers(settings, endpoint(settings, "EST"))


@pytest.mark.parametrize("given", [{"IssuerUsername": "ra"}, {"IssuerPassword": "pw"}])
def test_basic_username_and_password_go_together(given):
    clear_connections()
    settings = Settings({"IssuerUrl": "https://est.example/x", **given})
    with pytest.raises(ConfigurationError, match="go together"):
        est._headers(settings, endpoint(settings, "EST"))
    assert est._headers(Settings({"IssuerUrl": "https://est.example/x"}), endpoint(settings, "EST")) == {}


def test_est_answers_are_strict_base64_pkcs7(issuing):
    der = pkcs7.serialize_certificates([issuing.ca], serialization.Encoding.DER)
    encoded = base64.encodebytes(der)
    assert est._certificates(Answer(200, encoded), "x") == [issuing.ca]
    for body in (encoded.replace(b"A", b"*", 1), b"", b"bm90IHBrY3M3"):  # a stray character; empty; base64 of junk
        with pytest.raises(BadGateway) as caught:
            est._certificates(Answer(200, body), "x")
        assert caught.value.code == "upstream_invalid_answer"
    with pytest.raises(BadGateway) as refused:
        est._certificates(Answer(401, encoded), "x")
    assert refused.value.code == "upstream_refused" and "HTTP 401" in refused.value.message


def test_concurrent_misses_load_the_chain_once(counted, monkeypatch):
    started, release = threading.Event(), threading.Event()
    fetches: list[int] = []

    def slow_fetch(settings: Settings) -> list[x509.Certificate]:
        fetches.append(1)
        started.set()
        release.wait(5)
        return [counted.issuing, counted.root]

    source = upstream.Upstream("Slow", (), lambda order, settings: [], slow_fetch)
    settings = settings_for(counted)
    first = threading.Thread(target=source.authority, args=(settings,))
    first.start()
    started.wait(5)
    second = threading.Thread(target=source.authority, args=(settings,))
    second.start()
    time.sleep(0.1)  # the second is waiting for the lock the first holds
    release.set()
    first.join(5), second.join(5)
    assert len(fetches) == 1


def test_est_base64_with_a_stray_character_is_refused(issuing):
    der = pkcs7.serialize_certificates([issuing.ca], serialization.Encoding.DER)
    encoded = base64.b64encode(der)
    with pytest.raises(BadGateway) as caught:
        est._certificates(Answer(200, encoded[:10] + b"!" + encoded[10:]), "x")
    assert caught.value.code == "upstream_invalid_answer"


@pytest.mark.parametrize(("value", "ok"), [("ab" * 16, True), ("ab" * 15, False), ("xyz", False)])
def test_cfssl_auth_keys_are_hex_of_at_least_16_bytes(value, ok):
    settings = Settings({"IssuerAuthKey": value})
    if ok:
        assert cfssl._auth_key(settings) == bytes.fromhex(value)
    else:
        with pytest.raises(ConfigurationError, match="IssuerAuthKey"):
            cfssl._auth_key(settings)
    assert cfssl._auth_key(Settings({})) is None


def test_cfssl_answers_without_a_pem_certificate_say_so():
    for result in ({"certificate": "nope"}, {"certificate": 42}, {}):
        with pytest.raises(BadGateway, match="without a PEM certificate"):
            cfssl._certificates(result, "the CSR")


@pytest.mark.parametrize("value", [42, "not pem", b"junk", [1, 2], None])
def test_a_custom_hook_answer_that_is_not_certificates_says_so(value):
    with pytest.raises(BadGateway, match="returned something other than PEM"):
        custom._certificates(value)
