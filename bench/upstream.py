"""8. Upstream CAs: what one enrollment costs through each Issuer, beside signing locally.

In process, one request at a time, audit records on disk, every operation interleaved in the same run:
`enroll()` with Issuer Local, CFSSL (`cfssl serve` started here, authsign), EST (a second `xboot serve`
started here as the upstream, plain HTTP on loopback) and Custom (an in-process hook signing with
`cryptography`). Beside them the bare upstream calls without xboot (one cfssl authsign request; one
EST simpleenroll request), so that xboot's own share of an upstream enrollment is visible: the
difference between the two is the front door's checks, authorization, the check of the answer and the
audit record. CFSSL is skipped when it is not installed (scripts/setup --dev installs it).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import hmac
import http.client
import json
import os
import shutil
import urllib.parse
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bench.issuance import XBOOT_RULES, app_environment
from bench.material import make_ca
from bench.timing import interleaved
from tests.fixtures.live_server import start_live_server
from tests.fixtures.upstreams import AUTH_KEY, start_cfssl, stop
from xboot.pki import sha256_fingerprint
from xboot.service.enrollment.authorization import EnrollmentRequest
from xboot.service.enrollment.enroll import enroll
from xboot.service.settings import Settings

REGISTRATION_ID = "bench-upstream-1"
_hook_ca: tuple[x509.Certificate, Any] | None = None


def hook(csr: x509.CertificateSigningRequest, registration_id: str, settings: Settings) -> list[x509.Certificate]:
    """The Custom issuer's hook for this benchmark: a minimal leaf signed in process."""
    assert _hook_ca is not None
    ca, key = _hook_ca
    now = dt.datetime.now(dt.UTC)
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, registration_id)]))
        .issuer_name(ca.subject)
        .public_key(csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return [leaf]


def _connection(url: str) -> http.client.HTTPConnection:
    parts = urllib.parse.urlsplit(url)
    return http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=10)


def _post(connection: http.client.HTTPConnection, path: str, body: bytes, content_type: str) -> bytes:
    connection.request("POST", path, body=body, headers={"Content-Type": content_type})
    response = connection.getresponse()
    data = response.read()
    assert response.status == 200, (path, response.status, data[:200])
    return data


def run(work: Path, quick: bool) -> dict[str, Any]:
    global _hook_ca
    iterations, warmup = (60, 6) if quick else (300, 20)
    local_ca = make_ca(work / "local-ca", "ec-p256")
    device = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, REGISTRATION_ID)])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(device, hashes.SHA256())
    der = csr.public_bytes(serialization.Encoding.DER)
    request = EnrollmentRequest(REGISTRATION_ID, csr, der, function_key_checked=True)
    chain = work / "local-chain.pem"
    chain.write_bytes(local_ca.certificate.read_bytes() + local_ca.root_certificate.read_bytes())
    root = x509.load_pem_x509_certificate(local_ca.root_certificate.read_bytes())
    _hook_ca = (
        x509.load_pem_x509_certificate(local_ca.certificate.read_bytes()),
        serialization.load_pem_private_key(local_ca.key.read_bytes(), None),
    )
    base = {**local_ca.settings(), "DataDirectory": str(work / "data"), **XBOOT_RULES}
    issuers: dict[str, dict[str, str]] = {
        "Local": {},
        "Custom": {"Issuer": "Custom", "IssuerFunction": "bench.upstream:hook", "IssuerCaCertificates": str(chain),
                   "IssuerTrustedFingerprint": sha256_fingerprint(root)},
    }  # fmt: skip
    bare: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        if shutil.which("cfssl"):
            cfssl = start_cfssl(work / "cfssl")
            stack.callback(stop, cfssl.process)
            issuers["CFSSL"] = cfssl.settings()
            sign_request = json.dumps({"certificate_request": csr.public_bytes(serialization.Encoding.PEM).decode(),
                                       "hosts": []}).encode()  # fmt: skip
            token = hmac.new(bytes.fromhex(AUTH_KEY), sign_request, hashlib.sha256).digest()
            authsign = json.dumps({"token": base64.b64encode(token).decode(),
                                   "request": base64.b64encode(sign_request).decode()}).encode()  # fmt: skip
            cfssl_connection = _connection(cfssl.url)
            bare["cfssl authsign alone"] = lambda: _post(
                cfssl_connection, "/api/v1/cfssl/authsign", authsign, "application/json"
            )
        upstream_settings = {**XBOOT_RULES, "EnrollmentAuthorization": "FunctionKey"}
        upstream = stack.enter_context(start_live_server(work / "est-upstream", upstream_settings, keys=False))
        upstream_root = x509.load_pem_x509_certificate(upstream.ca.root_certificate.read_bytes())
        issuers["EST"] = {"Issuer": "EST", "IssuerUrl": f"{upstream.url}/api/.well-known/est",
                          "IssuerTrustedFingerprint": sha256_fingerprint(upstream_root)}  # fmt: skip
        est_connection = _connection(upstream.url)
        est_body = base64.encodebytes(der)
        bare["EST simpleenroll alone"] = lambda: _post(
            est_connection, "/api/.well-known/est/simpleenroll", est_body, "application/pkcs10"
        )
        with app_environment(base):
            operations: dict[str, Any] = {}
            for name, overrides in issuers.items():
                settings = Settings({**os.environ, **overrides})
                issued = enroll(request, settings)  # each must work before it is timed
                assert issued.issuer == name, (name, issued.issuer)
                operations[f"enroll via {name}"] = lambda s=settings: enroll(request, s)
            operations.update(bare)
            stats = interleaved(operations, iterations, warmup)
    _hook_ca = None
    local = stats["enroll via Local"].median_us
    result: dict[str, Any] = {"operations": {}}
    for name, entry in stats.items():
        result["operations"][name] = {**entry.as_dict(), "ratio_to_local": round(entry.median_us / local, 2)}
    for name, alone in (("CFSSL", "cfssl authsign alone"), ("EST", "EST simpleenroll alone")):
        if f"enroll via {name}" in stats:
            extra = stats[f"enroll via {name}"].median_us - stats[alone].median_us
            result["operations"][f"enroll via {name}"]["xboot_share_us"] = round(extra, 1)
    return result


def table(result: dict[str, Any]) -> list[str]:
    lines = [f"  {'operation':<28} {'median':>10} {'p99':>10} {'x Local':>8} {'xboot share':>12}"]
    for name, entry in result["operations"].items():
        share = f"{entry['xboot_share_us']:.0f} us" if "xboot_share_us" in entry else ""
        lines.append(
            f"  {name:<28} {entry['median_us']:>7.0f} us {entry['p99_us']:>7.0f} us {entry['ratio_to_local']:>7.2f}x "
            f"{share:>12}"
        )
    return lines
