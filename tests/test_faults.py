"""Backend faults: the device gets a 503 with Retry-After after bounded retries, and nothing is half-written.

Blob faults are real: Azurite is stopped mid-run, or a loopback proxy in front of it loses a
response after Azurite committed the write. Key Vault faults come from the REST double (429 with
Retry-After, 500, connection failure), retried by the SDK's own pipeline with xboot's policy.
"""

from __future__ import annotations

import itertools
import json
import selectors
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from azure.storage.blob import BlobServiceClient

import xboot.service.azure.sdk
from tests.backend_helpers import CaFiles, enroll
from tests.conftest import Functions, Reply
from tests.fixtures.azurite import ACCOUNT, Azurite
from tests.fixtures.keyvault_double import VaultHarness
from tests.fixtures.report_pki import GATEWAY_ID
from tests.fixtures.xboot_pki import OpensslCa

CERT_NAME = "xboot-issuing-ca"
REPORTS = "/api/install/v1/system-reports"
TRUST = "/api/mgmt/v1/tenant-config/soup.report.validation.trusted.cert.fingerprints"
ATTEMPTS = 1 + xboot.service.azure.sdk.RETRY_TOTAL


def _audit_serials(azurite: Azurite, container: str) -> set[str]:
    client = BlobServiceClient.from_connection_string(azurite.connection_string).get_container_client(container)
    names = client.list_blob_names(name_starts_with="certificates/")  # the records, not their markers
    return {json.loads(client.download_blob(name).readall())["serialNumber"] for name in names}


@pytest.fixture
def fast_backoff(monkeypatch) -> None:
    """Backoff shortened for tests that check what happens, not how long; the timed tests keep production values."""
    monkeypatch.setattr(xboot.service.azure.sdk, "BACKOFF_FACTOR", 0.05)


def _assert_503(reply: Reply, retry_after: str) -> None:
    assert reply.status == 503, reply.body
    assert reply.headers["Retry-After"] == retry_after
    assert reply.json()["error"] == "backend_unavailable"
    assert "certificate" not in reply.json()


@pytest.fixture
def data_on_own_azurite(app_env, own_azurite: Azurite, azure_caches, monkeypatch) -> str:
    """DataStore Blob on an Azurite this test may stop; the CA stays in files."""
    container = "audit"
    monkeypatch.setenv("DataStore", "Blob")
    monkeypatch.setenv("DataBlobConnectionString", own_azurite.connection_string)
    monkeypatch.setenv("DataBlobContainer", container)
    return container


def test_azurite_stopped_mid_run(data_on_own_azurite: str, own_azurite: Azurite, functions: Functions, tmp_path):
    before = enroll(functions, tmp_path / "a", "device-a")
    assert before.status == 200, before.body

    own_azurite.stop()
    started = time.monotonic()
    during = enroll(functions, tmp_path / "b", "device-b")
    elapsed = time.monotonic() - started

    _assert_503(during, str(xboot.service.azure.sdk.DEFAULT_RETRY_AFTER))
    # Three retries at 0.5 s, 1 s, 2 s (±20%): waited, but boundedly.
    assert 2.5 < elapsed < 10, elapsed

    own_azurite.start()  # same port, same data
    after = enroll(functions, tmp_path / "c", "device-c")
    assert after.status == 200, after.body
    # The certificate signed while storage was down was never returned, and left no record.
    expected = {before.json()["serialNumber"], after.json()["serialNumber"]}
    assert _audit_serials(own_azurite, data_on_own_azurite) == expected


def test_location_blob_unreachable_at_load(
    app_env,
    own_azurite: Azurite,
    azure_caches,
    fast_backoff,
    rsa_ca: OpensslCa,
    functions: Functions,
    monkeypatch,
    tmp_path,
):
    service = BlobServiceClient.from_connection_string(own_azurite.connection_string)
    container = service.create_container("keys")
    container.upload_blob("ia.cer", rsa_ca.cert.read_bytes())
    container.upload_blob("ia.key", rsa_ca.key.read_bytes())
    monkeypatch.delenv("CertificateChainFile")
    monkeypatch.setenv("Location", "Blob")
    monkeypatch.setenv("BlobConnectionString", own_azurite.connection_string)
    monkeypatch.setenv("BlobContainerName", "keys")
    monkeypatch.setenv("CertificateFile", "ia.cer")
    monkeypatch.setenv("PrivateKeyFile", "ia.key")
    monkeypatch.setenv("DataStore", "File")

    own_azurite.stop()
    _assert_503(enroll(functions, tmp_path / "a", "device-a"), "5")
    assert not list(Path(app_env["DataDirectory"]).rglob("*.json"))

    own_azurite.start()
    assert enroll(functions, tmp_path / "b", "device-b").status == 200


class FaultyProxy:
    """A loopback TCP proxy in front of Azurite that breaks chosen requests (matched on their request line).

    `lose_response_of`: the next matching request reaches Azurite, which commits it, but its response
    is lost - the one fault a retry cannot see through. `refuse`: every matching request is cut off
    unanswered until cleared, as if storage failed at that step.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.lose_response_of: bytes | None = None
        self.refuse: bytes | None = None
        self.lost = 0
        self.refused = 0
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._pipe, args=(client,), daemon=True).start()

    def _verdict(self, request_line: bytes) -> str:
        with self._lock:
            if self.refuse is not None and self.refuse in request_line:
                self.refused += 1
                return "refuse"
            if self.lose_response_of is not None and self.lose_response_of in request_line:
                self.lose_response_of = None
                return "lose"
        return "pass"

    def _pipe(self, client: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        selector = selectors.DefaultSelector()
        selector.register(client, selectors.EVENT_READ, upstream)
        selector.register(upstream, selectors.EVENT_READ, client)
        losing = False
        try:
            while True:
                for key, _ in selector.select():
                    source: socket.socket = key.fileobj  # type: ignore[assignment]
                    data = source.recv(65536)
                    if not data:
                        return
                    if source is client and data[:4] in (b"PUT ", b"GET ", b"HEAD", b"DELE"):
                        verdict = self._verdict(data.split(b"\r\n", 1)[0])
                        if verdict == "refuse":
                            return
                        losing = losing or verdict == "lose"
                    if source is upstream and losing:
                        with self._lock:
                            self.lost += 1
                        return  # Azurite answered; the client never hears it
                    key.data.sendall(data)
        finally:
            selector.close()
            client.close()
            upstream.close()

    def close(self) -> None:
        self._server.close()


@pytest.fixture
def proxy(own_azurite: Azurite, monkeypatch) -> Iterator[FaultyProxy]:
    """DataStore Blob reaches the test's Azurite through the proxy."""
    instance = FaultyProxy(own_azurite.port)
    endpoint = f"http://127.0.0.1:{instance.port}/{ACCOUNT}"
    monkeypatch.setenv(
        "DataBlobConnectionString", own_azurite.connection_string.replace(own_azurite.account_url, endpoint)
    )
    yield instance
    instance.close()


def test_lost_response_leaves_no_orphan_record(
    data_on_own_azurite: str, own_azurite: Azurite, proxy: FaultyProxy, functions, tmp_path
):
    """The retry meets the blob its own first attempt wrote: the device still gets that certificate."""
    first = enroll(functions, tmp_path / "a", "device-a")
    assert first.status == 200, first.body

    proxy.lose_response_of = b"/certificates/"
    second = enroll(functions, tmp_path / "b", "device-b")

    assert proxy.lost == 1
    assert second.status == 200, second.body
    # Exactly one record per certificate returned, and none for anything the devices did not get.
    expected = {first.json()["serialNumber"], second.json()["serialNumber"]}
    assert _audit_serials(own_azurite, data_on_own_azurite) == expected


def test_report_ingestion_when_storage_fails_at_the_index(
    data_on_own_azurite: str, own_azurite: Azurite, proxy: FaultyProxy, fast_backoff, functions, guide_pki, guide_report
):
    """Storage fails after the record, before its index entry: 503, nothing listed; the retry completes it."""
    assert functions.call("POST", TRUST, {"value": [guide_pki.fingerprint("ca_root")]}).status == 200
    listing = f"{REPORTS}?gatewayId={GATEWAY_ID}"

    proxy.refuse = b"/report-index/"
    failed = functions.call("POST", REPORTS, guide_report)
    _assert_503(failed, str(xboot.service.azure.sdk.DEFAULT_RETRY_AFTER))
    assert proxy.refused == ATTEMPTS  # the storage SDK's first try and its three retries
    assert functions.call("GET", listing).json()["reports"] == []  # a listing never names a partial report

    proxy.refuse = None
    retried = functions.call("POST", REPORTS, guide_report)
    assert retried.status in (200, 201), retried.body
    reports = functions.call("GET", listing).json()["reports"]
    assert [r["id"] for r in reports] == [retried.json()["id"]]
    client = BlobServiceClient.from_connection_string(own_azurite.connection_string).get_container_client(
        data_on_own_azurite
    )
    names = sorted(n for n in client.list_blob_names() if not n.startswith(("meta/", "revocation-")))
    assert [n.split("/")[0] for n in names] == ["report-index", "report-time", "reports", "tenant-config"]
    stored = json.loads(client.download_blob(f"reports/system/{retried.json()['id']}.json").readall())
    assert stored["verification"] and stored["signedMessage"]


@pytest.fixture
def kv_env(app_env, vault: VaultHarness, ec_ca: OpensslCa, monkeypatch) -> VaultHarness:
    ca = CaFiles.load(ec_ca)
    vault.double.add_certificate(CERT_NAME, ca.certificate, ca.key, (ca.root,), exportable=True)
    for name in ("PrivateKeyFile", "CertificateChainFile"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KeyVaultName", "xboot-test")
    monkeypatch.setenv("CertificateFile", CERT_NAME)
    monkeypatch.setenv("Location", "KeyVault")
    return vault


def _gaps(attempts: list[tuple[float, int]]) -> list[float]:
    return [later[0] - earlier[0] for earlier, later in itertools.pairwise(attempts)]


def test_key_vault_throttled_then_503_with_its_retry_after(kv_env: VaultHarness, functions, tmp_path):
    kv_env.double.fail(429, "/secrets/", retry_after="1")

    started = time.monotonic()
    reply = enroll(functions, tmp_path / "a", "device-a")
    elapsed = time.monotonic() - started

    _assert_503(reply, "1")
    attempts = kv_env.double.attempts("GET", "/secrets/")
    assert [status for _, status in attempts] == [429] * ATTEMPTS
    assert all(gap >= 0.95 for gap in _gaps(attempts))  # the SDK honoured Retry-After between attempts
    assert elapsed < 6, elapsed


def test_key_vault_throttling_that_clears_is_invisible(kv_env: VaultHarness, functions, tmp_path):
    kv_env.double.fail(429, "/secrets/", times=2, retry_after="1")
    reply = enroll(functions, tmp_path / "a", "device-a")
    assert reply.status == 200, reply.body
    assert [status for _, status in kv_env.double.attempts("GET", "/secrets/")] == [429, 429, 200]


def test_key_vault_long_retry_after_goes_to_the_device(kv_env: VaultHarness, functions, tmp_path):
    kv_env.double.fail(429, "/secrets/", retry_after="120")

    started = time.monotonic()
    reply = enroll(functions, tmp_path / "a", "device-a")

    _assert_503(reply, "120")
    assert len(kv_env.double.attempts("GET", "/secrets/")) == 1  # not slept through inside the request
    assert time.monotonic() - started < 1


@pytest.fixture
def kvk_env(kv_env: VaultHarness, monkeypatch) -> VaultHarness:
    monkeypatch.setenv("Location", "KeyVaultKey")
    return kv_env


@pytest.mark.parametrize(
    ("status", "retry_after", "timed"),
    [(500, None, True), (0, None, False), (429, "1", True)],
    ids=["500", "unreachable", "429"],
)
def test_key_vault_sign_failure_mid_run(
    status, retry_after, timed, kvk_env: VaultHarness, app_env, functions: Functions, tmp_path, request
):
    if not timed:
        request.getfixturevalue("fast_backoff")
    warm = enroll(functions, tmp_path / "a", "device-a")
    assert warm.status == 200, warm.body
    kvk_env.double.fail(status, "/keys/", retry_after=retry_after)

    started = time.monotonic()
    reply = enroll(functions, tmp_path / "b", "device-b")
    elapsed = time.monotonic() - started

    _assert_503(reply, retry_after or str(xboot.service.azure.sdk.DEFAULT_RETRY_AFTER))
    signs = kvk_env.double.attempts("POST", "/keys/")
    assert len(signs) == 1 + ATTEMPTS  # the warm-up sign, then the first try and three retries
    assert elapsed < 8, elapsed
    records = list((Path(app_env["DataDirectory"]) / "certificates").rglob("*.json"))
    assert [p.stem for p in records] == [warm.json()["serialNumber"]]  # nothing for the failed enrollment

    kvk_env.double.heal()
    assert enroll(functions, tmp_path / "c", "device-c").status == 200


def test_hung_storage_times_out_into_a_503(
    app_env, azure_caches, fast_backoff, functions: Functions, monkeypatch, tmp_path
):
    """A server that accepts and never answers: per-attempt read timeouts, bounded retries, then 503.

    Timeouts and backoff are shortened here (production: 10 s per attempt, 0.5/1/2 s backoff).
    """
    hung = socket.create_server(("127.0.0.1", 0))
    hung.listen(16)
    monkeypatch.setattr(xboot.service.azure.sdk, "READ_TIMEOUT", 0.3)  # per attempt (the deadline may cut it shorter)
    endpoint = f"http://127.0.0.1:{hung.getsockname()[1]}/{ACCOUNT}"
    monkeypatch.setenv("DataStore", "Blob")
    monkeypatch.setenv(
        "DataBlobConnectionString", f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};BlobEndpoint={endpoint};"
    )
    try:
        started = time.monotonic()
        reply = enroll(functions, tmp_path / "a", "device-a")
        elapsed = time.monotonic() - started
    finally:
        hung.close()
    _assert_503(reply, str(xboot.service.azure.sdk.DEFAULT_RETRY_AFTER))
    assert ATTEMPTS * 0.3 < elapsed < 5, elapsed
