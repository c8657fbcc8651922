"""Extraction of the exact signed bytes (S/MIME, form-data, bare CMS) and of the report JSON; fingerprint syntax."""

from __future__ import annotations

import base64

import pytest

from tests.fixtures.report_pki import report_bytes
from tests.helpers import openssl
from xboot.errors import BadRequest, ConfigurationError
from xboot.pki import normalize_fingerprint
from xboot.service.reports.smime import canonical_text, parse_signed_message, read_request, report_document
from xboot.service.reports.trust import CONFIG_KEY, parse_fingerprint_list, read_trust_list
from xboot.service.settings import Settings
from xboot.service.storage.file import FileStore

FP = "BB:EA:2A:13:C7:21:DB:E0:01:37:07:58:5B:ED:85:09:47:D7:FF:8F:BF:9E:E4:65:9C:C3:BA:14:E3:7C:DD:D6"


def smime(first_part: bytes, cms: bytes = b"MIIB", boundary: str = "----AF88", eol: bytes = b"\n") -> bytes:
    lines = [
        b"MIME-Version: 1.0",
        f'Content-Type: multipart/signed; protocol="application/pkcs7-signature"; boundary="{boundary}"'.encode(),
        b"",
        b"This is an S/MIME signed message",
        b"",
        f"--{boundary}".encode(),
    ]
    tail = [
        f"--{boundary}".encode(),
        b'Content-Type: application/pkcs7-signature; name="smime.p7s"',
        b"Content-Transfer-Encoding: base64",
        b"",
        cms,
        b"",
        f"--{boundary}--".encode(),
        b"",
    ]
    return eol.join(lines) + eol + first_part + eol + eol.join(tail)


def test_the_signed_bytes_are_exactly_what_openssl_verifies(guide_pki, guide_report):
    """`openssl cms -verify -noverify -binary` prints the bytes its signature check hashed: ours are the same."""
    signed = openssl("cms", "-verify", "-noverify", "-binary", "-out", "-", stdin=guide_report)
    assert parse_signed_message(guide_report).detached_content == signed
    assert signed.startswith(b"Content-Type: text/plain\r\n\r\n{")


def test_the_line_break_before_a_boundary_belongs_to_the_boundary():
    part = b"Content-Type: text/plain\r\n\r\n{}\r\n"  # the content itself ends in CRLF
    assert parse_signed_message(smime(part)).detached_content == part
    assert parse_signed_message(smime(part, eol=b"\r\n")).detached_content == part
    assert parse_signed_message(smime(part.replace(b"\r\n", b"\n"))).detached_content == part
    no_final_newline = b"Content-Type: text/plain\r\n\r\n{}"
    assert parse_signed_message(smime(no_final_newline)).detached_content == no_final_newline


def test_only_whole_delimiter_lines_split_parts():
    part = b"Content-Type: text/plain\r\n\r\n------AF88X is not a delimiter\r\n  ------AF88 neither\r\n"
    assert parse_signed_message(smime(part)).detached_content == part


def test_signature_part_base64_and_protocols():
    message = parse_signed_message(smime(b"Content-Type: text/plain\r\n\r\n{}", cms=b"MIIB\nAAAA"))
    assert message.cms == base64.b64decode("MIIBAAAA")
    legacy = smime(b"x").replace(b"application/pkcs7-signature", b"application/x-pkcs7-signature")
    assert parse_signed_message(legacy).cms == base64.b64decode("MIIB")


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        (lambda m: m.replace(b"----AF88--", b"----AF88"), "closing boundary"),
        (lambda m: m.replace(b'; boundary="----AF88"', b""), "boundary"),
        (lambda m: m.replace(b'protocol="application/pkcs7-signature"', b'protocol="text/plain"'), "protocol"),
        (
            lambda m: m.replace(b"Content-Transfer-Encoding: base64", b"Content-Transfer-Encoding: quoted-printable"),
            "Transfer",
        ),
        (lambda m: m.replace(b"\nMIIB\n", b"\nM!IB\n"), "signature part is not base64"),
        (lambda m: m.replace(b"\nMIIB\n", b"\nMI=IB\n"), "signature part is not valid base64"),  # data after padding
        (
            lambda m: m.replace(b"Content-Type: application/pkcs7-signature", b"Content-Type: text/plain"),
            "the second part must be application/pkcs7-signature",
        ),
        (
            lambda m: m.replace(b"MIME-Version: 1.0\n", b"MIME-Version: 1.0\nMime-Version: 1.0\n"),
            "header mime-version appears twice",
        ),
        (
            lambda m: m.replace(b"\nContent-Type: application/pkcs7", b"\n Content-Type: application/pkcs7"),
            "signature part: malformed header line",
        ),  # a continuation line with nothing to continue
        (lambda m: m.replace(b"\n--" + b"----AF88\n", b"\n------AF88\n------AF88\n", 1), "malformed part"),
        (lambda m: m.replace(b"multipart/signed", b"multipart/mixed"), "Content-Type"),
        (lambda m: m.replace(b"MIME-Version: 1.0\n", b"MIME-Version: 1.0\nno colon here\n"), "header"),
        (lambda m: m.replace(b"MIME-Version: 1.0\n", b"MIME-Version 1.0\n"), "not an S/MIME message"),
    ],
)
def test_malformed_smime_is_a_bad_request(damage, needle):
    with pytest.raises(BadRequest) as caught:
        parse_signed_message(damage(smime(b"Content-Type: text/plain\r\n\r\n{}")))
    assert needle in caught.value.message


def test_folded_header_lines_are_joined():
    folded = smime(b"x").replace(
        b'; protocol="application/pkcs7-signature"', b';\n\tprotocol="application/pkcs7-signature"'
    )
    assert folded != smime(b"x")
    assert parse_signed_message(folded).detached_content == b"x"


def test_an_empty_body_is_named_as_such():
    for empty in (b"", b" \r\n"):
        with pytest.raises(BadRequest, match="the signed report is empty"):
            parse_signed_message(empty)


def test_a_raw_smime_body_is_read_whatever_its_request_type():
    """Only multipart/form-data is unwrapped; any other request body is the message itself."""
    message = smime(b"Content-Type: text/plain\r\n\r\n{}")
    for content_type in (None, "application/octet-stream", "text/plain"):
        assert read_request(message, content_type).detached_content == b"Content-Type: text/plain\r\n\r\n{}"


def test_the_multipart_signed_type_may_come_from_the_request():
    message = smime(b"Content-Type: text/plain\r\n\r\n{}")
    headers, _, body = message.partition(b"\n\n")
    outer = headers.split(b"Content-Type: ")[1].decode()
    for raw in (body, body.partition(b"\n\n")[2]):  # with and without the preamble
        assert parse_signed_message(raw, outer).detached_content == b"Content-Type: text/plain\r\n\r\n{}"


def form(*fields: tuple[str, bytes], boundary: str = "xYz") -> bytes:
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{n}"\r\n\r\n'.encode() + v + b"\r\n" for n, v in fields
    ]
    return b"".join(parts) + f"--{boundary}--\r\n".encode()


def test_form_data_keeps_the_file_byte_exact():
    message = smime(b"Content-Type: text/plain\r\n\r\n{}\r\n")
    body = form(("other", b"ignored"), ("signedReport", message))
    extracted = read_request(body, "multipart/form-data; boundary=xYz")
    assert extracted.raw == message
    assert extracted.detached_content == b"Content-Type: text/plain\r\n\r\n{}\r\n"


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (form(("report", b"x")), "multipart/form-data; boundary=xYz"),
        (form(("signedReport", b"x"), ("signedReport", b"y")), "multipart/form-data; boundary=xYz"),
        (form(("signedReport", b"x")), "multipart/form-data"),
        (form(("signedReport", b"x")), "multipart/form-data; boundary=other"),
        (form(("signedReport", b"x"))[:-10], "multipart/form-data; boundary=xYz"),
    ],
)
def test_bad_form_data_is_a_bad_request(body, content_type):
    with pytest.raises(BadRequest):
        read_request(body, content_type)


def test_pem_and_base64_cms_are_recognised():
    der = b"\x30\x03\x02\x01\x01"
    pem = b"-----BEGIN CMS-----\n" + base64.encodebytes(der) + b"-----END CMS-----\n"
    assert parse_signed_message(pem).cms == der
    assert parse_signed_message(base64.encodebytes(der)).cms == der
    assert parse_signed_message(der).detached_content is None


@pytest.mark.parametrize(
    "signed",
    [
        b"Content-Type: text/plain\r\n\r\n" + report_bytes(),
        b"Content-Type: application/json; charset=utf-8\r\n\r\n" + report_bytes(),
        b"Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(report_bytes()),
        report_bytes(),  # signed without -text: no MIME header at all
        canonical_text(b"Content-Type: text/plain\n\n" + report_bytes()),
    ],
)
def test_the_report_json_is_read_from_the_signed_entity(signed):
    assert report_document(signed)["gatewayId"] == "101012902"


@pytest.mark.parametrize(
    ("signed", "needle"),
    [
        (b"Content-Type: text/html\r\n\r\n{}", "text/plain or application/json"),
        (b"Content-Type: text/plain; charset=utf-16\r\n\r\n{}", "UTF-8"),
        (b"Content-Type: text/plain\r\n\r\n\xff\xfe", "not JSON"),
        (b"Content-Type: text/plain\r\n\r\n" + b"[" * 100_000, "not JSON"),
        (b'{"gatewayId": 101012902}', "gatewayId"),
        (b'{"gatewayId": "' + b"x" * 129 + b'"}', "gatewayId"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"gatewayId": "gw\\u0007"}', "printable"),  # a control character
        (b'{"gatewayId": "gw\\udfff"}', "printable"),  # a lone surrogate
        (b'{"gatewayId": "gw\\ue000"}', "printable"),  # private use
    ],
)
def test_signed_content_that_is_not_a_report_is_refused(signed, needle):
    with pytest.raises(BadRequest) as caught:
        report_document(signed)
    assert caught.value.code == "invalid_report" and needle in caught.value.message


def test_canonical_text():
    assert canonical_text(b"a\nb\r\nc\r\r\nd") == b"a\r\nb\r\nc\r\nd"


@pytest.mark.parametrize(
    "text", [FP, FP.lower(), FP.replace(":", ""), FP.replace(":", "").lower(), f"  {FP}\n", FP.title()]
)
def test_fingerprints_with_or_without_colons_in_any_case(text):
    assert normalize_fingerprint(text) == FP


@pytest.mark.parametrize(
    "text", [FP[:-3], FP + ":00", FP.replace(":", "-"), FP.replace("BB:", "BB::"), "G" * 64, 7, None]
)
def test_invalid_fingerprints(text):
    assert normalize_fingerprint(text) is None


def test_the_trust_list_is_capped_at_100_fingerprints():
    many = [f"{n:064X}" for n in range(101)]
    assert len(parse_fingerprint_list(many[:100])) == 100
    with pytest.raises(BadRequest, match="at most 100 fingerprints"):
        parse_fingerprint_list(many)


@pytest.mark.parametrize("stored", [b"not json", b"[]", b'{"value": "FP"}', b'{"value": ["nope"]}', b"{}"])
def test_an_unreadable_stored_trust_list_is_a_configuration_error(tmp_path, stored):
    """Never an empty trust list in its place (that would silently refuse everything) nor a crash."""
    store = FileStore(tmp_path)
    store.replace(CONFIG_KEY, stored)
    with pytest.raises(ConfigurationError, match="unreadable; set it again"):
        read_trust_list(store, Settings({}))


def test_a_list_with_one_bad_entry_is_refused_whole_and_duplicates_collapse():
    assert parse_fingerprint_list([FP, FP.lower()]) == (FP,)
    with pytest.raises(BadRequest, match=r"value\[1\]"):
        parse_fingerprint_list([FP, "nope"])
