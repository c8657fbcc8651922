"""Part 6: backend calls per 1,000 issuances, through the real SDK clients.

- Blob: Location Blob (CA files as blobs) and DataStore Blob (audit records) on Azurite, the
  official emulator, started with tests/fixtures/azurite.py. Requests are counted by an
  azure-core transport that wraps the SDK's own (every attempt, retries included).
- KeyVault / KeyVaultKey: the Key Vault REST double of tests/fixtures/keyvault_double.py behind
  the real vault host name; its own request log gives the counts. Audit records go to a
  folder here (DataStore File), so only Key Vault traffic is counted.

Issuances go through the registered function in-process with `SignerCacheSeconds` at its
default (300 s), i.e. what one warm instance does in a burst.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.issuance import Rotation, app_environment, certificate_function, request_for
from bench.material import make_ca, make_csrs
from bench.reports import FORM_BOUNDARY, _form, _make_reports
from bench.timing import Stats
from xboot.service.ca.devca import DevelopmentCa

REPORTS = 101  # the first warms the store; 100 counted
CA_CONTAINER = "xboot-ca"
VAULT_CERTIFICATE = "xboot-issuing"


def azurite_or_reason(location: Path, in_memory: bool = False) -> tuple[Any, str]:
    """A started Azurite from the tests' fixture module, or why there is none."""
    try:
        import pytest

        from tests.fixtures.azurite import Azurite, azurite_executable
    except ImportError as error:
        return None, f"tests/fixtures/azurite.py not importable ({error})"
    try:
        location.mkdir(parents=True, exist_ok=True)
        azurite = Azurite(azurite_executable(), location, in_memory=in_memory)
        azurite.start()
    except pytest.fail.Exception as error:
        return None, f"Azurite unavailable: {error} (set XBOOT_AZURITE)"
    return azurite, ""


class BlobEnvironment:
    """The issuing CA's files uploaded to Azurite, and the settings of a Blob deployment."""

    def __init__(self, azurite: Any, ca: DevelopmentCa) -> None:
        from azure.storage.blob import BlobServiceClient

        self.azurite = azurite
        container = BlobServiceClient.from_connection_string(azurite.connection_string).get_container_client(
            CA_CONTAINER
        )
        if not container.exists():
            container.create_container()
        for path in (ca.certificate, ca.key, ca.root_certificate):
            container.upload_blob(path.name, path.read_bytes(), overwrite=True)
        self.ca = ca

    def settings(self) -> dict[str, str]:
        return {
            "Location": "Blob",
            "BlobConnectionString": self.azurite.connection_string,
            "BlobContainerName": CA_CONTAINER,
            "CertificateFile": self.ca.certificate.name,
            "PrivateKeyFile": self.ca.key.name,
            "CertificateChainFile": self.ca.root_certificate.name,
        }


def _blob_call(method: str, url: str) -> str:
    parts = urlsplit(url)
    segments = parts.path.strip("/").split("/")  # account, container, blob...
    container = segments[1] if len(segments) > 1 else ""
    if "restype=container" in parts.query:
        return f"{method} container {container}"
    if container == CA_CONTAINER:
        return f"{method} CA blob"
    if len(segments) > 2 and segments[2] == "certificates":
        return f"{method} audit record"
    return f"{method} {container}/{'/'.join(segments[2:3])}"


@contextlib.contextmanager
def fresh_azure_caches() -> Iterator[None]:
    """Per-process SDK clients and stores, emptied on the way in and out (as the tests' azure_caches fixture)."""
    import xboot.service.azure.sdk
    import xboot.service.storage
    from xboot.service.ca.signer import clear_signer_cache

    def clear() -> None:
        xboot.service.azure.sdk._clients.clear()
        xboot.service.storage._opened.clear()
        clear_signer_cache()

    clear()
    try:
        yield
    finally:
        clear()


@contextlib.contextmanager
def counted_blob_requests() -> Iterator[Counter[str]]:
    """Every Blob request the SDK sends (each attempt), by kind."""
    from azure.core.pipeline.transport import RequestsTransport

    import xboot.service.azure.sdk
    from xboot.service.azure.blob import StorageRetry

    counts: Counter[str] = Counter()

    class CountingTransport(RequestsTransport):
        def send(self, request: Any, **kwargs: Any) -> Any:
            counts[_blob_call(request.method, request.url)] += 1
            return super().send(request, **kwargs)

    real = xboot.service.azure.sdk.client_options

    def client_options(retry_policy: Any = None) -> dict[str, Any]:
        options = real(retry_policy)
        if isinstance(options["retry_policy"], StorageRetry):
            options["transport"] = CountingTransport()
        return options

    xboot.service.azure.sdk.client_options = client_options
    try:
        yield counts
    finally:
        xboot.service.azure.sdk.client_options = real


@contextlib.contextmanager
def keyvault_double(ca: DevelopmentCa, exportable: bool) -> Iterator[Any]:
    """The tests' Key Vault double holding `ca`, wired as the `vault` fixture wires it, then unwired."""
    import requests
    from azure.core.pipeline.transport import RequestsTransport
    from cryptography import x509

    import xboot.service.azure.sdk
    from tests.fixtures.keyvault_double import VAULT_URL, KeyVaultDouble, StaticTokenCredential, _DoubleAdapter
    from xboot.pki import load_private_key

    double = KeyVaultDouble()
    double.add_certificate(
        VAULT_CERTIFICATE,
        x509.load_pem_x509_certificate(ca.certificate.read_bytes()),
        load_private_key(ca.key.read_bytes(), None, "bench"),
        (x509.load_pem_x509_certificate(ca.root_certificate.read_bytes()),),
        content_type="application/x-pem-file",
        exportable=exportable,
        hsm=not exportable,
    )
    session = requests.Session()
    session.mount(VAULT_URL, _DoubleAdapter(double))
    credential = StaticTokenCredential()
    real_options, real_credential = xboot.service.azure.sdk.client_options, xboot.service.azure.sdk.credential

    def client_options(retry_policy: Any = None) -> dict[str, Any]:
        options = real_options(retry_policy)
        if isinstance(options["retry_policy"], xboot.service.azure.sdk.BoundedRetry):  # Key Vault clients only
            options["transport"] = RequestsTransport(session=session, session_owner=False)
        return options

    xboot.service.azure.sdk.client_options = client_options
    xboot.service.azure.sdk.credential = lambda: credential
    try:
        yield double
    finally:
        xboot.service.azure.sdk.client_options, xboot.service.azure.sdk.credential = real_options, real_credential


def keyvault_settings(location: str, ca: DevelopmentCa) -> dict[str, str]:
    settings = {"Location": location, "KeyVaultUri": "https://xboot-test.vault.azure.net/"}
    settings["CertificateFile"] = VAULT_CERTIFICATE
    if location == "KeyVaultKey":  # Key Vault's certificate object carries only the CA itself
        settings["CertificateChainFile"] = ca.root_certificate.read_text()
    return settings


def _issue(count: int, rotation: Rotation) -> Stats:
    function = certificate_function()
    samples = []
    for _ in range(count):
        request = request_for(rotation.next())
        began = time.perf_counter_ns()
        response = function(request)
        samples.append(time.perf_counter_ns() - began)
        if response.status_code != 200:
            raise RuntimeError(f"issuance failed: {response.status_code} {response.get_body()[:300]!r}")
    return Stats.of(samples)


def _upload_reports(bodies: list[bytes]) -> None:
    """Each body once through the registered system-report function (the guide's curl --form upload)."""
    import azure.functions as func

    import function_app
    from xboot.service.serve import RouteTable

    route, _, _ = RouteTable.from_app(function_app.app).match("POST", "/api/install/v1/system-reports")
    assert route is not None
    headers = {"Content-Type": f"multipart/form-data; boundary={FORM_BOUNDARY}"}
    for body in bodies:
        request = func.HttpRequest("POST", "http://localhost/api/install/v1/system-reports", headers=headers, body=body)
        response = route.function(request)
        if response.status_code not in (200, 201):
            raise RuntimeError(f"report upload failed: {response.status_code} {response.get_body()[:300]!r}")


def _keyvault_counts(double: Any) -> Counter[str]:
    counts: Counter[str] = Counter()
    for (method, path), n in double.requests.items():
        kind = path.strip("/").split("/")[0]
        counts[f"{method} {kind}{' sign' if path.endswith('/sign') else ''}"] += n
    counts["401 challenge"] = double.challenges
    return counts


def run(work: Path, quick: bool) -> dict[str, Any]:
    issuances = 1000  # the figure asked for, in quick mode too: counts are not sampled
    ca = make_ca(work / "ca", "ec-p256")
    rotation = Rotation(make_csrs(work / "csr", "ec-p256", 16))
    results: dict[str, Any] = {"issuances": issuances, "scenarios": {}}
    scenarios = results["scenarios"]

    with app_environment({**ca.settings(), "DataDirectory": str(work / "file-data")}), fresh_azure_caches():
        stats = _issue(issuances, rotation)
        scenarios["File (reference)"] = {"calls": {}, "latency_us": stats.as_dict()}

    for location, exportable in (("KeyVault", True), ("KeyVaultKey", False)):
        try:
            with keyvault_double(ca, exportable) as double, fresh_azure_caches():
                env = {**keyvault_settings(location, ca), "DataDirectory": str(work / f"{location}-data")}
                with app_environment(env):
                    stats = _issue(issuances, rotation)
                scenarios[location] = {"calls": dict(_keyvault_counts(double)), "latency_us": stats.as_dict()}
        except ImportError as error:
            scenarios[location] = {"pending": f"Key Vault double not importable ({error})"}

    azurite, reason = azurite_or_reason(work / "azurite")
    if azurite is None:
        scenarios["Blob"] = {"pending": reason}
    else:
        try:
            environment = BlobEnvironment(azurite, ca)
            pki, messages = _make_reports(work / "reports", REPORTS)
            report_settings = {**environment.settings(), "TrustedFingerprints": pki.fingerprint("ca_root")}
            with counted_blob_requests() as counts, fresh_azure_caches(), app_environment(report_settings):
                stats = _issue(issuances, rotation)
                issued = dict(counts)
                counts.clear()
                bodies = [_form(m) for m in messages]
                _upload_reports(bodies[:1])  # warm: trust list read, index folders
                counts.clear()
                _upload_reports(bodies[1:])
                new_reports = dict(counts)
                counts.clear()
                _upload_reports(bodies[1:])  # each one again: a retry of an upload that was stored
                repeated = dict(counts)
            scenarios["Blob"] = {"calls": issued, "latency_us": stats.as_dict()}
            results["blob_per_report_upload"] = {
                "reports": REPORTS - 1,
                "new": {k: round(v / (REPORTS - 1), 2) for k, v in new_reports.items()},
                "repeated": {k: round(v / (REPORTS - 1), 2) for k, v in repeated.items()},
            }
        finally:
            azurite.stop()
    return results


def table(result: dict[str, Any]) -> list[str]:
    lines = [f"  calls per {result['issuances']:,} issuances; one warm instance, SignerCacheSeconds 300"]
    for name, entry in result["scenarios"].items():
        if "pending" in entry:
            lines.append(f"  {name:<18} pending: {entry['pending']}")
            continue
        calls = entry["calls"]
        total = sum(calls.values())
        detail = ", ".join(f"{k} {v}" for k, v in sorted(calls.items())) or "no network calls"
        latency = entry["latency_us"]
        lines.append(
            f"  {name:<18} total {total:>5}  [{detail}]  issuance median {latency['median_us'] / 1000:.2f} ms, "
            f"p99 {latency['p99_us'] / 1000:.2f} ms"
        )
    uploads = result.get("blob_per_report_upload")
    if uploads:
        for label in ("new", "repeated"):
            calls = uploads[label]
            detail = ", ".join(f"{k} {v:g}" for k, v in sorted(calls.items()))
            lines.append(f"  Blob calls per report upload ({label}, mean of {uploads['reports']}): "
                         f"{sum(calls.values()):g} [{detail}]")  # fmt: skip
    return lines
