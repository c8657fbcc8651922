"""From an HTTP body to the exact bytes a gateway signed, and its CMS signature.

Pure functions over bytes. What `openssl cms -sign -text` signs is the whole first
MIME part of a multipart/signed message, its `Content-Type: text/plain` header
included, in CRLF-canonical form. Those bytes are sliced out of the message as
they came and canonicalised here; re-serialising through the `email` package would
change them. The line break in front of a boundary belongs to the boundary.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from email.message import Message
from typing import Any

from xboot.errors import BadRequest
from xboot.service.untrusted import parse_json

FORM_FIELD = "signedReport"
MAX_GATEWAY_ID = 128
_SIGNATURE_TYPES = ("application/pkcs7-signature", "application/x-pkcs7-signature")
_OPAQUE_TYPES = ("application/pkcs7-mime", "application/x-pkcs7-mime")
_HEADER_NAME = re.compile(rb"[A-Za-z][A-Za-z0-9-]*")
_HEADER_START = re.compile(rb"[A-Za-z][A-Za-z0-9-]*:")
_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")
_BASE64 = re.compile(rb"[A-Za-z0-9+/=\s]+")
_WHITESPACE = re.compile(rb"\s+")
_PEM_CMS = re.compile(rb"-----BEGIN (?:CMS|PKCS7)-----(.*?)-----END (?:CMS|PKCS7)-----", re.DOTALL)
_BLANK_LINE = re.compile(rb"\r?\n\r?\n")


@dataclass(frozen=True)
class SignedMessage:
    """A CMS SignedData and, for detached signatures, the canonical bytes it signs."""

    cms: bytes
    detached_content: bytes | None
    raw: bytes  # the message as the gateway sent it, without any form-data wrapper


def _malformed(message: str) -> BadRequest:
    return BadRequest(message, code="invalid_message")


def header_params(name: str, value: str | None) -> Message:
    """A one-header Message: `get_content_type()` and `get_param(..., header=name)` parse it per RFC 2045."""
    header = Message()
    header[name] = value or ""
    return header


def media_type(value: str | None) -> str:
    return header_params("Content-Type", value).get_content_type() if value else "application/octet-stream"


def _split_headers(entity: bytes, what: str) -> tuple[dict[str, str], bytes]:
    """Header fields (names lower-cased, folded lines joined) and the body after the empty line."""
    if entity.startswith((b"\r\n", b"\n")):
        return {}, entity[2 if entity.startswith(b"\r\n") else 1 :]
    end = _BLANK_LINE.search(entity)
    if end is None:
        raise _malformed(f"{what}: the header block is not terminated by an empty line")
    headers: dict[str, str] = {}
    name = None
    for line in re.split(rb"\r?\n", entity[: end.start()]):
        if line[:1] in (b" ", b"\t") and name is not None:
            headers[name] += " " + line.strip().decode("latin-1")
            continue
        field, colon, value = line.partition(b":")
        if not colon or not _HEADER_NAME.fullmatch(field):
            raise _malformed(f"{what}: malformed header line")
        name = field.decode("ascii").lower()
        if name in headers:
            raise _malformed(f"{what}: header {name} appears twice")
        headers[name] = value.strip().decode("latin-1")
    return headers, entity[end.end() :]


def _multipart(body: bytes, params: Message, what: str) -> list[bytes]:
    """The parts between the delimiter lines, byte-exact; the close delimiter is required."""
    boundary = params.get_param("boundary")
    if not isinstance(boundary, str) or not _BOUNDARY.fullmatch(boundary):
        raise _malformed(f"{what}: missing or invalid boundary parameter")
    delimiter = re.compile(rb"^--" + re.escape(boundary.encode("ascii")) + rb"(--)?[ \t]*\r?$", re.MULTILINE)
    parts: list[bytes] = []
    start = None
    for match in delimiter.finditer(body):
        if start is not None:
            end = match.start() - 1  # the LF ending the previous line (and a CR before it) are the delimiter's
            if end < start:
                raise _malformed(f"{what}: malformed part")
            parts.append(body[start : end - 1 if body[end - 1 : end] == b"\r" else end])
        if match.group(1):
            return parts
        start = match.end() + 1
    raise _malformed(f"{what}: the closing boundary is missing (truncated message?)")


def canonical_text(data: bytes) -> bytes:
    """Every line ending as CRLF, the way `openssl cms` canonicalises text (trailing CRs of a line dropped)."""
    return b"\r\n".join(line.rstrip(b"\r") for line in data.split(b"\n"))


def _base64(data: bytes, what: str) -> bytes:
    if not _BASE64.fullmatch(data):
        raise _malformed(f"{what} is not base64")
    try:
        return base64.b64decode(_WHITESPACE.sub(b"", data), validate=True)
    except (binascii.Error, ValueError):
        raise _malformed(f"{what} is not valid base64") from None


def _transfer_decoded(headers: dict[str, str], body: bytes, what: str) -> bytes:
    encoding = headers.get("content-transfer-encoding", "binary").lower()
    if encoding == "base64":
        return _base64(body, what)
    if encoding in ("binary", "8bit", "7bit"):
        return body
    raise _malformed(f"{what}: unsupported Content-Transfer-Encoding")


def _multipart_signed(params: Message, body: bytes) -> tuple[bytes, bytes]:
    if (params.get_param("protocol") or "").lower() not in _SIGNATURE_TYPES:
        raise _malformed("multipart/signed: protocol must be application/pkcs7-signature")
    parts = _multipart(body, params, "multipart/signed")
    if len(parts) != 2:
        raise _malformed("multipart/signed: expected exactly two parts (content and signature)")
    signature_headers, signature_body = _split_headers(parts[1], "signature part")
    if media_type(signature_headers.get("content-type")) not in _SIGNATURE_TYPES:
        raise _malformed("multipart/signed: the second part must be application/pkcs7-signature")
    return _transfer_decoded(signature_headers, signature_body, "signature part"), canonical_text(parts[0])


def _mime(entity: bytes, outer_type: str | None) -> tuple[bytes, bytes | None]:
    headers, body = _split_headers(entity, "S/MIME message")
    type_header = headers.get("content-type", outer_type)
    params = header_params("Content-Type", type_header)
    kind = media_type(type_header)
    if kind == "multipart/signed":
        return _multipart_signed(params, body)
    if kind in _OPAQUE_TYPES:
        return _transfer_decoded(headers, body, "S/MIME body"), None
    raise _malformed("S/MIME message: Content-Type must be multipart/signed or application/pkcs7-mime")


def parse_signed_message(data: bytes, outer_type: str | None = None) -> SignedMessage:
    """An S/MIME message (multipart/signed or pkcs7-mime), or a bare CMS SignedData in DER, base64 or PEM.

    `outer_type` is the HTTP Content-Type: it stands in for the message's own header
    when a client put the multipart/signed type on the request instead of in the body.
    """
    detached: bytes | None = None
    if not data.strip():
        raise _malformed("the signed report is empty")
    if data.startswith(b"\x30"):
        cms = data
    elif pem := _PEM_CMS.search(data):
        cms = _base64(pem.group(1), "PEM CMS")
    elif media_type(outer_type) == "multipart/signed" and not _HEADER_START.match(data):
        cms, detached = _mime(b"\r\n" + data, outer_type)
    elif _HEADER_START.match(data):
        cms, detached = _mime(data, outer_type)
    elif _BASE64.fullmatch(data):
        cms = _base64(data, "the CMS message")
    else:
        raise _malformed("not an S/MIME message or a CMS signature (DER, base64 or PEM)")
    return SignedMessage(cms=cms, detached_content=detached, raw=data)


def _form_field(body: bytes, params: Message) -> bytes:
    found = []
    for part in _multipart(body, params, "multipart/form-data"):
        headers, content = _split_headers(part, "form-data part")
        disposition = header_params("Content-Disposition", headers.get("content-disposition"))
        if disposition.get_param("name", header="content-disposition") == FORM_FIELD:
            found.append(_transfer_decoded(headers, content, f"form field {FORM_FIELD}"))
    if len(found) != 1:
        raise _malformed(f"multipart/form-data: send exactly one field named {FORM_FIELD}")
    return found[0]


def read_request(body: bytes, http_content_type: str | None) -> SignedMessage:
    """The signed message of a report upload: the guide's form field, or the message as the whole body."""
    if media_type(http_content_type) == "multipart/form-data":
        return parse_signed_message(_form_field(body, header_params("Content-Type", http_content_type)))
    return parse_signed_message(body, http_content_type)


def _invalid_report(message: str) -> BadRequest:
    return BadRequest(message, code="invalid_report")


def report_document(signed: bytes) -> dict[str, Any]:
    """The JSON object inside the signed MIME entity (or the signed bytes themselves when they carry no header)."""
    headers, body = _split_headers(signed, "signed content") if _HEADER_START.match(signed) else ({}, signed)
    type_header = headers.get("content-type", "text/plain")
    if media_type(type_header) not in ("text/plain", "application/json"):
        raise _invalid_report("the signed content must be text/plain or application/json")
    charset = header_params("Content-Type", type_header).get_param("charset") or "utf-8"
    if not isinstance(charset, str) or charset.lower() not in ("utf-8", "us-ascii"):
        raise _invalid_report("the signed content must be UTF-8")
    body = _transfer_decoded(headers, body, "signed content")
    try:
        document = parse_json(body)
    except ValueError:
        raise _invalid_report("the signed content is not JSON; sign the report JSON itself") from None
    if not isinstance(document, dict):
        raise _invalid_report("the signed report must be a JSON object")
    gateway_id = document.get("gatewayId")
    if not isinstance(gateway_id, str) or not gateway_id.strip() or len(gateway_id) > MAX_GATEWAY_ID:
        raise _invalid_report(f"the signed report needs a gatewayId string of 1-{MAX_GATEWAY_ID} characters")
    if not gateway_id.isprintable():  # refuses control, format, surrogate, private-use and unassigned characters
        raise _invalid_report("the report's gatewayId must be printable Unicode text")
    return document
