"""Parts 1 and 2: issuance through the registered function vs the cryptographic floor vs the openssl CLI.

- floor: what any issuer must do for this certificate with `cryptography`: load the DER CSR,
  verify its signature, build the same leaf (same extensions, AKI precomputed like the
  service caches it) and sign it, then encode it.
- service: the registered `certificate` function of function_app.py, `func.HttpRequest` in
  (built untimed), `func.HttpResponse` out; settings from the environment as in Azure.
  Three storage variants of the audit record, interleaved: `DataDirectory` on disk (the
  real thing: file create + fsync + link), on tmpfs (file operations without a device
  flush), and a null store (the record is built and serialised but not written).
- openssl CLI: `openssl x509 -req` per certificate (one process each, reading the CA key
  every time), and `openssl version` as the process-spawn floor.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import json
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import azure.functions as func
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

import xboot.service.enrollment.enroll
import xboot.service.enrollment.registration
from bench.material import LEAF_EXTENSIONS, DeviceCsr, make_ca, make_csrs
from bench.timing import Stats, interleaved
from xboot.pki import load_certificates, load_private_key
from xboot.service.ca.devca import DevelopmentCa
from xboot.service.ca.issuance import IssuedCertificate, build_certificate, check_csr
from xboot.service.ca.signer import Signer, clear_signer_cache, load_signer
from xboot.service.lifecycle.audit import audit_key, expiry_key, record_issuance, serial_prefix
from xboot.service.settings import Settings
from xboot.service.storage.file import FileStore

ROOT = Path(__file__).resolve().parent.parent
URL = "http://localhost/api/certificate"

# (scenario name, CA key type, device key type)
SCENARIOS = (
    ("EC P-256 CA, EC P-256 device", "ec-p256", "ec-p256"),
    ("RSA-2048 CA, EC P-256 device", "rsa-2048", "ec-p256"),
    ("EC P-256 CA, XBoot.Client RSA-2048/PSS device", "ec-p256", "rsa-2048-pss"),
)


class NullStore:
    """An ObjectStore that keeps only the last record: isolates the audit write from the rest of the service's work."""

    last: bytes = b""

    def create(self, key: str, data: bytes, *, flush: bool = True) -> bool:
        if data:  # the record; its markers are empty
            self.last = data
        return True


# The benchmarks replay a few device CSRs thousands of times, which the identity lock and the daily limit
# exist to refuse (and each replayed ID would pile up records for them to read): issuance is measured under
# XBoot's rules. With the defaults, each enrollment also lists its device's own audit records (one listing).
XBOOT_RULES = {"IdentityLock": "false", "MaxCertificatesPerDay": "0"}


@contextlib.contextmanager
def app_environment(values: dict[str, str]) -> Iterator[None]:
    """The environment a Function App instance would have (XBoot's identity rules), fresh caches in and out."""
    saved = dict(os.environ)
    for name in [n for n in os.environ if n[:1].isupper() and n not in ("PATH", "HOME", "LANG", "USER", "PWD")]:
        del os.environ[name]
    os.environ.update({**XBOOT_RULES, **values})
    clear_signer_cache()
    xboot.service.enrollment.registration._cached = None
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
        clear_signer_cache()
        xboot.service.enrollment.registration._cached = None


def certificate_function() -> Callable[[func.HttpRequest], func.HttpResponse]:
    """The user function registered for POST /api/certificate, found the way `xboot serve` finds it."""
    import function_app
    from xboot.service.serve import RouteTable

    route, _, _ = RouteTable.from_app(function_app.app).match("POST", "/api/certificate")
    assert route is not None, "function_app registers no POST /api/certificate"
    return route.function


def request_for(csr: DeviceCsr) -> func.HttpRequest:
    body = json.dumps({"RegistrationId": csr.registration_id, "Csr": csr.b64}).encode()
    return func.HttpRequest("POST", URL, headers={}, params={}, route_params={}, body=body)


class Floor:
    """The bare `cryptography` work for the certificate the service issues."""

    def __init__(self, ca: DevelopmentCa, validity_days: int = 365) -> None:
        self.certificate = load_certificates(ca.certificate.read_bytes(), "bench")[0]
        self.key = load_private_key(ca.key.read_bytes(), None, "bench")
        signer = load_signer(Settings({**ca.settings()}))
        self.hash = signer.hash_algorithm
        self.aki = signer.authority_key_identifier
        self.validity = dt.timedelta(days=validity_days)

    def issue(self, der: bytes) -> bytes:
        csr = x509.load_der_x509_csr(der)
        if not csr.is_signature_valid:
            raise ValueError("bad CSR signature")
        key = csr.public_key()
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(csr.subject)
            .issuer_name(self.certificate.subject)
            .public_key(key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + self.validity)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, isinstance(key, rsa.RSAPublicKey), False, False, False, False, False, False),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key), critical=False)
            .add_extension(self.aki, critical=False)
        )
        return builder.sign(self.key, self.hash).public_bytes(serialization.Encoding.DER)

    def issue_and_record(self, der: bytes, registration_id: str, store: FileStore) -> None:
        """The issue's floor: the certificate, then the same writes the service makes, through the same store
        (the serial and expiry markers unflushed, then the record with its flush)."""
        certificate = x509.load_der_x509_certificate(self.issue(der))
        serial = format(certificate.serial_number, "X")
        not_after = certificate.not_valid_after_utc
        record = {"registrationId": registration_id, "serialNumber": serial,
                  "notAfter": not_after.isoformat(), "certificate": certificate.public_bytes(
                      serialization.Encoding.PEM).decode()}  # fmt: skip
        store.create(f"{serial_prefix(serial)}{registration_id}", b"", flush=False)
        store.create(expiry_key(not_after, serial, registration_id), b"", flush=False)
        store.create(audit_key(registration_id, serial), json.dumps(record).encode())


def openssl_issue(ca: DevelopmentCa, csr: DeviceCsr, extfile: Path, section: str, out: Path) -> None:
    subprocess.run(
        [
            "openssl", "x509", "-req", "-in", str(csr.pem_path), "-CA", str(ca.certificate), "-CAkey", str(ca.key),
            "-set_serial", "0x" + secrets.token_hex(16), "-days", "365", "-sha256",
            "-extfile", str(extfile), "-extensions", section, "-out", str(out),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip


def openssl_version() -> None:
    subprocess.run(["openssl", "version"], check=True, capture_output=True)


class Rotation:
    """Hands out the CSRs of a pool in turn, so consecutive issuances are for different devices."""

    def __init__(self, csrs: list[DeviceCsr]) -> None:
        self.csrs = csrs
        self.position = 0

    def next(self) -> DeviceCsr:
        self.position = (self.position + 1) % len(self.csrs)
        return self.csrs[self.position]


@contextlib.contextmanager
def tmpfs_directory() -> Iterator[Path | None]:
    """A scratch folder on /dev/shm (tmpfs), removed afterwards; None where there is no /dev/shm."""
    if not Path("/dev/shm").is_dir():
        yield None
        return
    directory = Path(tempfile.mkdtemp(prefix="xboot-bench-", dir="/dev/shm"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def run_scenario(
    work: Path, name: str, ca_type: str, device_type: str, csrs: list[DeviceCsr], iterations: int, cli_iterations: int
) -> dict[str, Any]:
    with tmpfs_directory() as shm:
        return _run_scenario(work, name, ca_type, device_type, csrs, iterations, cli_iterations, shm)


def _run_scenario(
    work: Path,
    name: str,
    ca_type: str,
    device_type: str,
    csrs: list[DeviceCsr],
    iterations: int,
    cli_iterations: int,
    shm: Path | None,
) -> dict[str, Any]:
    ca = make_ca(work / f"ca-{ca_type}-{device_type}", ca_type)
    disk = work / f"data-{ca_type}-{device_type}"
    function = certificate_function()
    real_open = xboot.service.enrollment.enroll.open_data_store
    null_store = NullStore()
    rotation = Rotation(csrs)

    def service(request: func.HttpRequest) -> None:
        response = function(request)
        if response.status_code != 200:
            raise RuntimeError(f"issuance failed: {response.status_code} {response.get_body()[:200]!r}")

    def prepared(directory: Path | None) -> Callable[[], func.HttpRequest]:
        """Untimed: point the audit log at `directory` (None: the null store), then make the request."""

        def make() -> func.HttpRequest:
            os.environ["DataDirectory"] = str(directory or disk)
            xboot.service.enrollment.enroll.open_data_store = real_open if directory else (lambda settings: null_store)
            return request_for(rotation.next())

        return make

    with app_environment({**ca.settings(), "DataDirectory": str(disk)}):
        floor = Floor(ca)
        operations: dict[str, Callable[..., object]] = {
            "floor": lambda: floor.issue(rotation.next().der),
            "service": service,
            "service_null_store": service,
        }
        prepare = {"service": prepared(disk), "service_null_store": prepared(None)}
        if shm is not None:
            operations["service_tmpfs"] = service
            prepare["service_tmpfs"] = prepared(shm)
            floor_store = FileStore(shm / "floor")

            def floor_with_writes() -> None:
                csr = rotation.next()
                floor.issue_and_record(csr.der, csr.registration_id, floor_store)

            operations["floor_tmpfs"] = floor_with_writes
        try:
            stats = interleaved(operations, iterations, max(20, iterations // 10), prepare)
        finally:
            xboot.service.enrollment.enroll.open_data_store = real_open
        stats.update(audit_stats(load_signer(), csrs[0], disk, shm, iterations))
    written = sum(1 for _ in (disk / "certificates").rglob("*.json"))
    if written != iterations + max(20, iterations // 10):
        raise RuntimeError(f"expected one audit record per disk issuance, found {written}")
    extfile = work / "leaf.cnf"
    extfile.write_text(LEAF_EXTENSIONS)
    section = "leaf_rsa" if device_type.startswith("rsa") else "leaf_ec"
    out = work / "openssl-leaf.pem"
    stats.update(
        interleaved(
            {
                "openssl_x509_req": lambda: openssl_issue(ca, rotation.next(), extfile, section, out),
                "openssl_version": openssl_version,
            },
            cli_iterations,
            3,
        )
    )
    median = {k: v.median_us for k, v in stats.items()}
    ratios = {
        "service_vs_floor": median["service"] / median["floor"],
        "service_null_store_vs_floor": median["service_null_store"] / median["floor"],
        "openssl_cli_vs_service": median["openssl_x509_req"] / median["service"],
        "openssl_spawn_vs_service": median["openssl_version"] / median["service"],
    }
    if "service_tmpfs" in median:
        ratios["service_tmpfs_vs_floor"] = median["service_tmpfs"] / median["floor"]
        ratios["service_tmpfs_vs_floor_tmpfs"] = median["service_tmpfs"] / median["floor_tmpfs"]
    return {
        "scenario": name,
        "ca": ca_type,
        "device": device_type,
        "stats": {k: v.as_dict() for k, v in stats.items()},
        "ratios": {k: round(v, 3) for k, v in ratios.items()},
        "audit_records_on_disk": written,
    }


def audit_stats(signer: Signer, csr: DeviceCsr, disk: Path, shm: Path | None, iterations: int) -> dict[str, Stats]:
    """The audit record on its own: built and serialised (null store), and its bytes written on disk and tmpfs."""
    request = x509.load_der_x509_csr(csr.der)
    now = dt.datetime.now(dt.UTC)
    certificate = build_certificate(
        request.subject, check_csr(request, csr.registration_id), signer, dt.timedelta(days=365), now
    )
    issued = IssuedCertificate(csr.registration_id, certificate, signer)
    null_store = NullStore()
    record_issuance(null_store, issued, now, "FunctionKey")  # type: ignore[arg-type]
    data = null_store.last  # the bytes a real record has
    stores = {"audit_write_disk": FileStore(disk / "audit-alone")}
    if shm is not None:
        stores["audit_write_tmpfs"] = FileStore(shm / "audit-alone")
    serials = itertools.count()

    def writer(store: FileStore) -> Callable[[], object]:
        # A fresh key per call, as every issuance has a fresh serial: create() never overwrites.
        return lambda: store.create(audit_key(csr.registration_id, f"{next(serials):032X}"), data)

    operations: dict[str, Callable[..., object]] = {name: writer(store) for name, store in stores.items()}
    operations["audit_record_build"] = lambda: record_issuance(null_store, issued, now, "FunctionKey")  # type: ignore[arg-type]
    return interleaved(operations, iterations, 10)


def run(work: Path, quick: bool) -> list[dict[str, Any]]:
    iterations, cli_iterations, pool = (300, 20, 16) if quick else (1500, 60, 32)
    pools = {device: make_csrs(work / f"csr-{device}", device, pool) for device in {d for _, _, d in SCENARIOS}}
    return [
        run_scenario(work, name, ca_type, device_type, pools[device_type], iterations, cli_iterations)
        for name, ca_type, device_type in SCENARIOS
    ]


def table(results: list[dict[str, Any]]) -> list[str]:
    rows = [
        ("floor", "floor: cryptography only", None),
        ("service", "service, audit on disk (create+fsync+link)", "service_vs_floor"),
        ("floor_tmpfs", "floor + the same writes on tmpfs", None),
        ("service_tmpfs", "service, audit on tmpfs", "service_tmpfs_vs_floor"),
        ("service_tmpfs", "  service, tmpfs vs floor + writes, tmpfs", "service_tmpfs_vs_floor_tmpfs"),
        ("service_null_store", "service, audit not written (null store)", "service_null_store_vs_floor"),
        ("audit_record_build", "  audit record build + serialise", None),
        ("audit_write_disk", "  audit write alone, disk", None),
        ("audit_write_tmpfs", "  audit write alone, tmpfs", None),
        ("openssl_x509_req", "openssl x509 -req, one process per cert", "openssl_cli_vs_service"),
        ("openssl_version", "openssl version (process-spawn floor)", "openssl_spawn_vs_service"),
    ]
    lines = []
    for result in results:
        stats, ratios = result["stats"], result["ratios"]
        lines.append(f"{result['scenario']}  (n={stats['service']['n']}, CLI n={stats['openssl_x509_req']['n']})")
        for key, label, ratio in rows:
            if key not in stats:
                continue
            value = stats[key]
            suffix = ""
            if ratio is not None:
                base = {"floor": "floor", "floor_tmpfs": "floor + writes"}.get(ratio.partition("_vs_")[2])
                suffix = f"{ratios[ratio]:7.2f}x {base or 'service (disk)'}"
                if base is not None:
                    suffix += f"  (+{value['median_us'] - stats[ratio.partition('_vs_')[2]]['median_us']:.0f} us)"
            lines.append(f"  {label:44s} {value['median_us']:10.1f} {value['p99_us']:10.1f}  {suffix}")
    return lines
