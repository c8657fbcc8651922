"""An `IssuerFunction` for the Custom issuer tests: it signs with a development CA, or misbehaves as
`TestHookMode` says, so that each of xboot's checks of an upstream's answer meets the fault it catches."""

from __future__ import annotations

import datetime as dt
import tempfile
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.helpers import openssl
from xboot.errors import BackendUnavailable
from xboot.service.settings import Settings

CALLS: list[str] = []


def _usage(**set_: bool) -> x509.KeyUsage:
    flags = dict.fromkeys(
        ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment", "key_agreement",
         "key_cert_sign", "crl_sign", "encipher_only", "decipher_only"), False)  # fmt: skip
    return x509.KeyUsage(**{**flags, **set_})


def _openssl_sha1(csr: x509.CertificateSigningRequest, directory: Path) -> x509.Certificate:
    with tempfile.TemporaryDirectory() as scratch:
        request, extensions = Path(scratch) / "device.csr", Path(scratch) / "leaf.ext"
        request.write_bytes(csr.public_bytes(serialization.Encoding.PEM))
        extensions.write_text("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                              "extendedKeyUsage=clientAuth\n")  # fmt: skip
        pem = openssl("x509", "-req", "-in", str(request), "-CA", str(directory / "ia.cer"), "-CAkey",
                      str(directory / "ia.key"), "-sha1", "-days", "30", "-extfile", str(extensions))  # fmt: skip
    return x509.load_pem_x509_certificate(pem)


def issue(csr: x509.CertificateSigningRequest, registration_id: str, settings: Settings) -> object:
    CALLS.append(registration_id)
    mode = settings.get("TestHookMode", "good")
    directory = Path(str(settings.get("TestHookCa")))
    ca = x509.load_pem_x509_certificate((directory / "ia.cer").read_bytes())
    ca_key = serialization.load_pem_private_key((directory / "ia.key").read_bytes(), None)
    if mode == "raise":
        raise ValueError("the hook's own secret detail")
    if mode == "unavailable":
        raise BackendUnavailable("the partner CA is in maintenance", retry_after=42)
    if mode == "slow":
        time.sleep(10)
    if mode == "junk":
        return 42
    if mode == "empty":
        return []
    if mode == "other-ca":
        ca_key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    key = ec.generate_private_key(ec.SECP256R1()).public_key() if mode == "other-key" else csr.public_key()
    name = "someone-else" if mode == "other-cn" else registration_id
    not_before = {"future": now + dt.timedelta(hours=1), "expired": now - dt.timedelta(days=10)}.get(mode, now)
    lifetime = {"expired": dt.timedelta(days=1), "too-long": dt.timedelta(days=400)}.get(mode, dt.timedelta(days=30))
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.subject)
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_before + lifetime)
        .add_extension(x509.BasicConstraints(ca=mode == "ca", path_length=None), critical=True)
        .add_extension(_usage(digital_signature=mode != "no-digital-signature", key_cert_sign=mode == "ca"), True)
    )
    builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(key), critical=False)
    builder = builder.add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
    )
    purpose = ExtendedKeyUsageOID.SERVER_AUTH if mode == "no-client-auth" else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = builder.add_extension(x509.ExtendedKeyUsage([purpose]), critical=False)
    if mode == "sha1":  # cryptography refuses to make SHA-1 signatures; openssl still does
        return [_openssl_sha1(csr, directory), ca]
    certificate = builder.sign(ca_key, hashes.SHA256())
    if mode == "pem":
        return certificate.public_bytes(serialization.Encoding.PEM).decode() + Path(directory / "ia.cer").read_text()
    return [certificate, ca]
