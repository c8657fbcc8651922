"""What the benchmarks issue against: development CAs, and device CSRs made by the openssl CLI as firmware would."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import openssl
from xboot.service.ca.devca import DevelopmentCa, create_development_ca

# Device key and CSR signature shapes: (label, genpkey args, req args).
DEVICE_KEYS = {
    "ec-p256": (["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"], []),
    # What XBoot.Client sends: RSA-2048 with an RSA-PSS / SHA-512 CSR signature.
    "rsa-2048-pss": (
        ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        ["-sha512", "-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:64"],
    ),
}

# The leaf profile xboot issues (xboot.service.ca.issuance.build_certificate), for `openssl x509 -req -extfile`.
LEAF_EXTENSIONS = """[ leaf_ec ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[ leaf_rsa ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


@dataclass(frozen=True)
class DeviceCsr:
    registration_id: str
    der: bytes
    pem_path: Path  # for the openssl CLI

    @property
    def b64(self) -> str:
        return base64.b64encode(self.der).decode("ascii")


def make_csrs(directory: Path, device_key: str, count: int) -> list[DeviceCsr]:
    """`count` distinct device keys and CSRs (CN = registration ID), made with the openssl CLI."""
    key_args, req_args = DEVICE_KEYS[device_key]
    directory.mkdir(parents=True, exist_ok=True)
    csrs = []
    for index in range(count):
        registration_id = f"bench-{device_key}-{index:04d}"
        key = directory / f"{registration_id}.key"
        pem = directory / f"{registration_id}.csr"
        openssl("genpkey", *key_args, "-out", str(key))
        openssl("req", "-new", "-key", str(key), "-subj", f"/CN={registration_id}", "-out", str(pem), *req_args)
        der = openssl("req", "-in", str(pem), "-outform", "DER")
        csrs.append(DeviceCsr(registration_id, der, pem))
    return csrs


def make_ca(directory: Path, key_type: str) -> DevelopmentCa:
    return create_development_ca(directory, key_type)
