"""Part 3: signed-report verification vs the cryptographic floor vs `openssl cms -verify`.

The reports are made exactly as the report-signing guide makes them (tests/fixtures/report_pki.py:
EC P-256 root, intermediate with the guide's ca-config.ext, v1 gateway certificate, then
`openssl cms -sign -text` with the chain embedded), one distinct report per pool entry.

- floor: the least any verifier does for such a report with asn1crypto + cryptography: slice
  the two MIME parts, parse the CMS, check the signed messageDigest against the content, verify
  the ECDSA signature over the signed attributes, then the chain: each link's signature and
  validity up to the certificate whose SHA-256 fingerprint is the trust anchor (whose own
  self-signature, like the service, it does not check).
- service: `parse_signed_message` + `verify_signed_report` (xboot.service.reports), raw message in,
  `Verification` out. A second row submits the guide's multipart/form-data upload through the
  registered function (`POST /api/install/v1/system-reports`), which also stores the report.
- openssl CLI: `openssl cms -verify -CAfile root` per report, one process each.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import azure.functions as func
from asn1crypto import cms
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from bench.issuance import app_environment, openssl_version
from bench.timing import interleaved

_BOUNDARY = re.compile(rb'boundary="?([^";\r\n]+)"?')
_MESSAGE_DIGEST = "message_digest"
FORM_BOUNDARY = "xbootbenchformboundary"


def _canonical(data: bytes) -> bytes:
    return b"\r\n".join(line.rstrip(b"\r") for line in data.split(b"\n"))


class Floor:
    """Verification reduced to its cryptographic steps, for the guide's report shape (ECDSA P-256, SHA-256)."""

    def __init__(self, anchor_fingerprint: bytes) -> None:
        self.anchor = anchor_fingerprint

    def verify(self, message: bytes) -> bytes:
        boundary = b"--" + _BOUNDARY.search(message).group(1)  # type: ignore[union-attr]
        parts = message.split(boundary)
        signed = _canonical(parts[1][1:].removesuffix(b"\n").removesuffix(b"\r"))
        signature_part = parts[2].replace(b"\r\n", b"\n").split(b"\n\n", 1)[1]
        signed_data = cms.ContentInfo.load(base64.b64decode(signature_part))["content"]
        signer_info = signed_data["signer_infos"][0]
        certificates = [x509.load_der_x509_certificate(c.chosen.dump()) for c in signed_data["certificates"]]
        serial = signer_info["sid"].chosen["serial_number"].native
        signer = next(c for c in certificates if c.serial_number == serial)
        attributes = signer_info["signed_attrs"]
        expected = next(a["values"][0].native for a in attributes if a["type"].native == _MESSAGE_DIGEST)
        if hashlib.sha256(signed).digest() != expected:
            raise ValueError("digest mismatch")
        attributes_der = b"\x31" + attributes.dump()[1:]
        public_key = signer.public_key()
        assert isinstance(public_key, ec.EllipticCurvePublicKey)
        public_key.verify(signer_info["signature"].native, attributes_der, ec.ECDSA(hashes.SHA256()))
        now = dt.datetime.now(dt.UTC)
        by_subject = {c.subject: c for c in certificates}
        current = signer
        for _ in range(len(certificates)):
            if not current.not_valid_before_utc <= now < current.not_valid_after_utc:
                raise ValueError("outside validity")
            if current.fingerprint(hashes.SHA256()) == self.anchor:
                return signed  # the anchor is trusted as such: its self-signature proves nothing more
            issuer = by_subject[current.issuer]
            current.verify_directly_issued_by(issuer)
            current = issuer
        raise ValueError("untrusted")


def signatures_only(message: bytes, anchor_fingerprint: bytes) -> Callable[[], None]:
    """The signature verifications a report needs and nothing else, its objects parsed beforehand: the
    signer's ECDSA over the signed attributes, then each certificate of the path below the anchor."""
    boundary = b"--" + _BOUNDARY.search(message).group(1)  # type: ignore[union-attr]
    signature_part = message.split(boundary)[2].replace(b"\r\n", b"\n").split(b"\n\n", 1)[1]
    signed_data = cms.ContentInfo.load(base64.b64decode(signature_part))["content"]
    signer_info = signed_data["signer_infos"][0]
    certificates = [x509.load_der_x509_certificate(c.chosen.dump()) for c in signed_data["certificates"]]
    serial = signer_info["sid"].chosen["serial_number"].native
    signer = next(c for c in certificates if c.serial_number == serial)
    attributes_der = b"\x31" + signer_info["signed_attrs"].dump()[1:]
    signature = signer_info["signature"].native
    key = signer.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    by_subject = {c.subject: c for c in certificates}
    links, current = [], signer
    while current.fingerprint(hashes.SHA256()) != anchor_fingerprint:
        links.append((current, by_subject[current.issuer]))
        current = by_subject[current.issuer]

    def verify() -> None:
        key.verify(signature, attributes_der, ec.ECDSA(hashes.SHA256()))
        for child, parent in links:
            child.verify_directly_issued_by(parent)

    return verify


def _make_reports(work: Path, count: int) -> tuple[Any, list[bytes]]:
    from tests.fixtures.report_pki import EC_KEY, GATEWAY_ID, GUIDE_CA_EXT, Pki, report_bytes

    pki = Pki(work / "pki")
    pki.directory.mkdir(parents=True)
    pki.root("ca_root")
    pki.issue("ca_intermediate", "/CN=INTERMEDIATE", "ca_root", GUIDE_CA_EXT, days=356)
    pki.issue("gateway", f"/CN={GATEWAY_ID}", "ca_intermediate", None, key_command=EC_KEY)
    pki.chain("cert-chain.crt", "ca_intermediate", "ca_root")
    return pki, [pki.sign(report_bytes(timeStamp=str(1_684_201_667 + n)), "gateway") for n in range(count)]


def _form(message: bytes) -> bytes:
    """What the guide's `curl --form 'signedReport=@"./systemreport.msg.signed"'` sends."""
    return (
        (
            f'--{FORM_BOUNDARY}\r\nContent-Disposition: form-data; name="signedReport"; '
            f'filename="systemreport.msg.signed"\r\nContent-Type: application/octet-stream\r\n\r\n'
        ).encode()
        + message
        + f"\r\n--{FORM_BOUNDARY}--\r\n".encode()
    )


def run(work: Path, quick: bool) -> dict[str, Any]:
    try:
        from xboot.service.reports.smime import parse_signed_message
        from xboot.service.reports.trust import TrustAnchors
        from xboot.service.reports.verify import verify_signed_report
    except ImportError as error:
        return {"pending": f"xboot.service.reports is not there yet ({error})"}
    import function_app
    from xboot.service.serve import RouteTable

    iterations, cli_iterations, pool = (300, 20, 8) if quick else (1500, 60, 16)
    pki, messages = _make_reports(work, pool)
    root = pki.path("ca_root.crt")
    anchor = pki.certificate("ca_root").fingerprint(hashes.SHA256())
    anchors = TrustAnchors(frozenset({pki.fingerprint("ca_root")}))
    floor = Floor(anchor)
    rotation = iter(range(10**9))

    def next_message() -> bytes:
        return messages[next(rotation) % len(messages)]

    def service(message: bytes) -> None:
        verify_signed_report(parse_signed_message(message), anchors, dt.datetime.now(dt.UTC))

    route, _, _ = RouteTable.from_app(function_app.app).match("POST", "/api/install/v1/system-reports")
    assert route is not None, "function_app registers no POST /api/install/v1/system-reports"
    content_type = f"multipart/form-data; boundary={FORM_BOUNDARY}"

    def submit_request() -> func.HttpRequest:
        body = _form(next_message())
        headers = {"Content-Type": content_type}
        return func.HttpRequest("POST", "http://localhost/api/install/v1/system-reports", headers=headers, body=body)

    def submit(request: func.HttpRequest) -> None:
        response = route.function(request)
        if response.status_code not in (200, 201):
            raise RuntimeError(f"report submission failed: {response.status_code} {response.get_body()[:300]!r}")

    for message in messages:  # every report verifies both ways before anything is timed
        service(message)
        floor.verify(message)
    settings = {
        "TrustedFingerprints": pki.fingerprint("ca_root"),
        "TrustIssuingCa": "false",
        "DataDirectory": str(work / "data"),
    }
    with app_environment(settings):
        operations = {"floor": lambda: floor.verify(next_message()), "service_verify": service}
        operations.update(service_submit=submit, signatures=signatures_only(messages[0], anchor))
        stats = interleaved(
            operations,
            iterations,
            max(20, iterations // 10),
            {"service_verify": next_message, "service_submit": submit_request},
        )
    cli_files = []
    for index, message in enumerate(messages):
        path = work / f"report-{index}.msg.signed"
        path.write_bytes(message)
        cli_files.append(path)

    def openssl_verify() -> None:
        path = cli_files[next(rotation) % len(cli_files)]
        subprocess.run(
            ["openssl", "cms", "-verify", "-in", str(path), "-CAfile", str(root), "-out", "/dev/null"],
            check=True,
            capture_output=True,
        )

    cli: dict[str, Callable[..., object]] = {"openssl_cms_verify": openssl_verify, "openssl_version": openssl_version}
    stats.update(interleaved(cli, cli_iterations, 3))
    median = {k: v.median_us for k, v in stats.items()}
    return {
        "report_bytes": len(messages[0]),
        "stats": {k: v.as_dict() for k, v in stats.items()},
        "ratios": {
            "service_vs_floor": round(median["service_verify"] / median["floor"], 3),
            "service_vs_signatures": round(median["service_verify"] / median["signatures"], 3),
            "openssl_cli_vs_service": round(median["openssl_cms_verify"] / median["service_verify"], 2),
            "openssl_spawn_vs_service": round(median["openssl_version"] / median["service_verify"], 2),
            "submit_vs_verify": round(median["service_submit"] / median["service_verify"], 3),
        },
        "target_cli_speedup": 4,
        "settings_note": json.dumps(settings),
    }


def table(result: dict[str, Any]) -> list[str]:
    if "pending" in result:
        return [f"  pending: {result['pending']}"]
    stats, ratios = result["stats"], result["ratios"]
    rows = [
        ("signatures", "signatures only: signer + each path link", ""),
        ("floor", "floor: MIME slice + asn1crypto + cryptography", ""),
        ("service_verify", "service: parse_signed_message + verify_signed_report", "service_vs_floor"),
        ("service_verify", "  the same, against the signatures alone", "service_vs_signatures"),
        ("service_submit", "  POST system-reports via the function (stores it)", "submit_vs_verify"),
        ("openssl_cms_verify", "openssl cms -verify, one process per report", "openssl_cli_vs_service"),
        ("openssl_version", "openssl version (process-spawn floor)", "openssl_spawn_vs_service"),
    ]
    shape = f"guide-shaped report ({result['report_bytes']} bytes, EC P-256, 3 certificates)"
    lines = [f"  {shape}, n={stats['floor']['n']}, CLI n={stats['openssl_cms_verify']['n']}"]
    for key, label, ratio in rows:
        value = stats[key]
        suffix = f"{ratios[ratio]:7.2f}x {ratio.rpartition('_vs_')[2]}" if ratio else ""
        lines.append(f"  {label:56s} {value['median_us']:10.1f} {value['p99_us']:10.1f}  {suffix}")
    verdict = "met" if ratios["openssl_cli_vs_service"] >= result["target_cli_speedup"] else "NOT met"
    lines.append(f"  target: at least {result['target_cli_speedup']}x faster than the CLI: {verdict}")
    return lines
