"""7. Enrollment authorization: each method's extra cost per enrollment, beside a FunctionKey enrollment.

In process, one request at a time: `authorize()` for each method is timed interleaved with a whole
FunctionKey enrollment (audit record on disk), so every figure comes from the same run. A method's cost
per enrollment is its `authorize()` time on top of FunctionKey's; the ratio is
(enrollment + method - FunctionKey) / enrollment. Tokens are timed up to their single use (spending
one is one atomic create, the cost of any small write).
"""

from __future__ import annotations

import base64
import datetime as dt
import time
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bench.issuance import app_environment
from bench.material import make_ca
from bench.timing import interleaved
from xboot import dps
from xboot.pki import sha256_fingerprint
from xboot.service.enrollment.authorization import Attestation, EnrollmentRequest, authorize
from xboot.service.enrollment.enroll import enroll
from xboot.service.settings import Settings

GROUP_KEY = base64.b64encode(b"bench-group-key-0123456789abcdef").decode()


def _manufacturer(now: dt.datetime) -> tuple[x509.Certificate, Any]:
    """A manufacturer CA and a device birth certificate under it (EC P-256, as factories use)."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Bench Manufacturing CA")])
    usage = x509.KeyUsage(False, False, False, False, False, True, True, False, False)
    ca = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(ca_key.public_key())
          .serial_number(1).not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(usage, critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))  # fmt: skip
    return ca, ca_key


def _birth(ca: x509.Certificate, ca_key: Any, registration_id: str, now: dt.datetime) -> tuple[x509.Certificate, Any]:
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, registration_id)]))
                   .issuer_name(ca.subject).public_key(key.public_key()).serial_number(2)
                   .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), True)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False)
                   .sign(ca_key, hashes.SHA256()))  # fmt: skip
    return certificate, key


def run(work: Path, quick: bool) -> dict[str, Any]:
    iterations, warmup = (100, 10) if quick else (600, 40)
    ca = make_ca(work / "ca", "ec-p256")
    registration_id = "bench-device-1"
    device = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, registration_id)])
    parsed = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(device, hashes.SHA256())
    der = parsed.public_bytes(serialization.Encoding.DER)
    now = dt.datetime.now(dt.UTC)
    manufacturer, manufacturer_key = _manufacturer(now)
    birth, birth_key = _birth(manufacturer, manufacturer_key, registration_id, now)
    operator = ec.generate_private_key(ec.SECP256R1())
    operator_pem = (
        operator.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    values = {
        **ca.settings(),
        "DataDirectory": str(work / "data"),
        "EnrollmentAuthorization": "FunctionKey,DeviceKey,Token,Certificate",
        "EnrollmentGroupKeys": GROUP_KEY,
        "EnrollmentTokenKeys": operator_pem,
        "EnrollmentTrustedFingerprints": sha256_fingerprint(manufacturer),
        "IdentityLock": "false",
        "MaxCertificatesPerDay": "0",
        "SupersededGraceHours": "24",
    }
    device_key = dps.derive_device_key(GROUP_KEY, registration_id)
    token = jwt.encode({"sub": registration_id, "aud": "xboot", "exp": int(time.time()) + 3600, "jti": "bench"},
                       operator, algorithm="ES256")  # fmt: skip
    signature = birth_key.sign(der, ec.ECDSA(hashes.SHA256()))
    csr_key_signature = device.sign(der, ec.ECDSA(hashes.SHA256()))  # renewal: the current key signs
    with app_environment(values):
        settings = Settings.from_environ()
        current = enroll(EnrollmentRequest(registration_id, parsed, der, function_key_checked=True), settings)
        requests = {
            "FunctionKey": EnrollmentRequest(registration_id, parsed, der, function_key_checked=True),
            "DeviceKey": EnrollmentRequest(
                registration_id,
                parsed,
                der,
                authorization=dps.sas_token(device_key, registration_id, int(time.time()) + 600),
            ),
            "Token": EnrollmentRequest(registration_id, parsed, der, authorization=f"Bearer {token}"),
            "Certificate (birth)": EnrollmentRequest(
                registration_id, parsed, der, attestation=Attestation((birth, manufacturer), signature)
            ),
            "Certificate (renewal)": EnrollmentRequest(
                registration_id, parsed, der, attestation=Attestation((current.certificate,), csr_key_signature)
            ),
        }
        for name, request in requests.items():  # each must be authorized by its own method before timing it
            grant = authorize(request, settings)
            assert grant.method == name.split(" ")[0], (name, grant)
        operations: dict[str, Any] = {
            f"authorize {n}": (lambda r=r: authorize(r, settings)) for n, r in requests.items()
        }
        fk = requests["FunctionKey"]
        operations["enroll FunctionKey (whole)"] = lambda: enroll(fk, settings)
        stats = interleaved(operations, iterations, warmup)
    enrollment = stats["enroll FunctionKey (whole)"].median_us
    floor = stats["authorize FunctionKey"].median_us
    methods = {}
    for name in requests:
        extra = stats[f"authorize {name}"].median_us - floor
        methods[name] = {
            "authorize": stats[f"authorize {name}"].as_dict(),
            "extra_us": round(extra, 1),
            "ratio_to_function_key": round((enrollment + extra) / enrollment, 3),
        }
    return {"enrollment_function_key": stats["enroll FunctionKey (whole)"].as_dict(), "methods": methods}


def table(result: dict[str, Any]) -> list[str]:
    enrollment = result["enrollment_function_key"]
    lines = [
        f"  whole enrollment with FunctionKey (audit on disk): median {enrollment['median_us']:.0f} us, "
        f"p99 {enrollment['p99_us']:.0f} us",
        f"  {'method':<24} {'authorize median':>17} {'p99':>9} {'extra per enrollment':>21} {'x FunctionKey':>14}",
    ]
    for name, entry in result["methods"].items():
        lines.append(
            f"  {name:<24} {entry['authorize']['median_us']:>14.1f} us {entry['authorize']['p99_us']:>6.0f} us "
            f"{entry['extra_us']:>18.1f} us {entry['ratio_to_function_key']:>13.2f}x"
        )
    return lines
