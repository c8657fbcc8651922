"""Location Blob and DataStore Blob against Azurite, with both auth modes.

Connection string: Azurite over HTTP with its development account key. Account URL + credential:
Azurite over HTTPS with `--oauth basic`, which accepts a bearer token after checking its issuer,
audience and lifetime (not its signature), so the SDK's real token path runs end to end; only the
token source is the static test credential instead of DefaultAzureCredential.
"""

from __future__ import annotations

import base64
import json
import threading
import uuid
from typing import Any

import pytest
from azure.storage.blob import BlobServiceClient

import xboot.service.azure.sdk
from tests.backend_helpers import enroll, verify_issued
from tests.conftest import Functions
from tests.fixtures.azurite import Azurite
from tests.fixtures.keyvault_double import StaticTokenCredential
from tests.fixtures.report_pki import GATEWAY_ID
from tests.fixtures.xboot_pki import OpensslCa
from xboot.service.settings import Settings
from xboot.service.storage import open_data_store


def _container() -> str:
    return f"t{uuid.uuid4().hex[:16]}"


def _upload_ca(service: BlobServiceClient, container: str, ca: OpensslCa) -> None:
    client = service.create_container(container)
    client.upload_blob("ia.cer", ca.cert.read_bytes())
    client.upload_blob("ia.key", ca.key.read_bytes())
    client.upload_blob("ca.cer", ca.root_cert.read_bytes())


@pytest.fixture
def blob_env(app_env, azurite: Azurite, azure_caches, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Location Blob and DataStore Blob on the session Azurite, through its connection string."""
    values = {
        "Location": "Blob",
        "BlobConnectionString": azurite.connection_string,
        "BlobContainerName": _container(),
        "CertificateFile": "ia.cer",
        "PrivateKeyFile": "ia.key",
        "CertificateChainFile": "ca.cer",
        "DataStore": "Blob",
        "DataBlobContainer": _container(),
    }
    monkeypatch.delenv("DataDirectory")
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


def _audit_blobs(service: BlobServiceClient, container: str) -> dict[str, dict[str, Any]]:
    client = service.get_container_client(container)
    names = client.list_blob_names(name_starts_with="certificates/")  # the records, not their markers
    return {name: json.loads(client.download_blob(name).readall()) for name in names}


def test_location_blob_with_connection_string(
    blob_env, azurite: Azurite, rsa_ca: OpensslCa, functions: Functions, tmp_path
):
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    _upload_ca(service, blob_env["BlobContainerName"], rsa_ca)

    reply = enroll(functions, tmp_path / "device", "blob-device-1")

    assert reply.status == 200, reply.body
    body = reply.json()
    verify_issued(body, rsa_ca.root_cert, tmp_path / "verify")
    # The audit record is in Azurite, under the documented key, and describes what the device got.
    records = _audit_blobs(service, blob_env["DataBlobContainer"])
    assert list(records) == [f"certificates/blob-device-1/{body['serialNumber']}.json"]
    record = next(iter(records.values()))
    assert record["sha256Fingerprint"] == body["sha256Fingerprint"]
    assert record["certificate"] == body["certificateChain"].split("-----END CERTIFICATE-----")[0] + (
        "-----END CERTIFICATE-----\n"
    )


def test_location_blob_missing_blob_and_container(
    blob_env, azurite: Azurite, rsa_ca: OpensslCa, functions: Functions, monkeypatch, tmp_path
):
    reply = enroll(functions, tmp_path / "device", "blob-device")
    assert reply.status == 500
    assert (
        reply.json()["message"]
        == f"setting BlobContainerName: container {blob_env['BlobContainerName']} does not exist"
    )

    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    _upload_ca(service, blob_env["BlobContainerName"], rsa_ca)
    monkeypatch.setenv("PrivateKeyFile", "missing.key")
    reply = enroll(functions, tmp_path / "device2", "blob-device")
    assert reply.status == 500
    assert reply.json()["message"] == (
        f"setting PrivateKeyFile: blob missing.key does not exist in container {blob_env['BlobContainerName']}"
    )


def test_location_blob_refuses_plain_http_account_url(blob_env, functions: Functions, monkeypatch, tmp_path):
    monkeypatch.delenv("BlobConnectionString")
    monkeypatch.setenv("BlobAccountUrl", "http://127.0.0.1:10000/devstoreaccount1")
    reply = enroll(functions, tmp_path / "device", "blob-device")
    assert reply.status == 500
    assert reply.json()["message"] == "setting BlobAccountUrl must start with https:// (a token needs TLS)"


@pytest.fixture
def https_env(
    app_env, azurite_https: Azurite, azure_caches, token_credential: StaticTokenCredential, monkeypatch
) -> dict[str, str]:
    """Both Blob uses by account URL + credential, on Azurite over HTTPS with OAuth."""
    real_options = xboot.service.azure.sdk.client_options

    def client_options(retry_policy: Any = None) -> dict[str, Any]:
        return {**real_options(retry_policy), "connection_verify": str(azurite_https.cert)}

    monkeypatch.setattr(xboot.service.azure.sdk, "client_options", client_options)
    values = {
        "Location": "Blob",
        "BlobAccountUrl": azurite_https.account_url,
        "BlobContainerName": _container(),
        "CertificateFile": "ia.cer",
        "PrivateKeyFile": "ia.key",
        "CertificateChainFile": "ca.cer",
        "DataStore": "Blob",
        "DataBlobAccountUrl": azurite_https.account_url,
        "DataBlobContainer": _container(),
    }
    monkeypatch.delenv("DataDirectory")
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


def _https_service(azurite_https: Azurite, credential: Any) -> BlobServiceClient:
    return BlobServiceClient(
        azurite_https.account_url, credential=credential, connection_verify=str(azurite_https.cert)
    )


def test_location_blob_with_account_url_and_credential(
    https_env, azurite_https: Azurite, token_credential, ec_ca: OpensslCa, functions: Functions, tmp_path
):
    service = _https_service(azurite_https, token_credential)
    _upload_ca(service, https_env["BlobContainerName"], ec_ca)

    reply = enroll(functions, tmp_path / "device", "oauth-device")

    assert reply.status == 200, reply.body
    verify_issued(reply.json(), ec_ca.root_cert, tmp_path / "verify")
    assert set(token_credential.scopes) == {"https://storage.azure.com/.default"}
    records = _audit_blobs(service, https_env["DataBlobContainer"])
    assert list(records) == [f"certificates/oauth-device/{reply.json()['serialNumber']}.json"]


def test_azurite_rejects_a_token_for_another_audience(
    https_env, azurite_https: Azurite, token_credential, ec_ca: OpensslCa, functions: Functions, monkeypatch, tmp_path
):
    """Control: Azurite really checks the token, so the test above proves the credential path works."""
    _upload_ca(_https_service(azurite_https, token_credential), https_env["BlobContainerName"], ec_ca)
    original = token_credential.token_for
    monkeypatch.setattr(token_credential, "token_for", lambda audience: original("https://vault.azure.net"))

    reply = enroll(functions, tmp_path / "device", "oauth-device")

    assert reply.status == 500
    assert reply.json()["error"] == "configuration_error"
    assert reply.json()["message"] == (
        "Blob storage: authentication failed; check the managed identity or credential used for CertificateFile"
    )


def test_blob_store_semantics_on_azurite(blob_env, azurite: Azurite):
    store = open_data_store(Settings.from_environ())

    results: list[bool] = []
    threads = [
        threading.Thread(target=lambda n=n: results.append(store.create("race/one.json", f"{n}".encode())))
        for n in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False] * 7 + [True]  # If-None-Match: * makes exactly one writer win

    for name in ("b/2", "a/1", "a/3", "a/2"):
        assert store.create(name, name.encode())
    assert store.list("a/") == ["a/1", "a/2", "a/3"]
    first = store.page("a/", 2)
    assert first.keys == ["a/1", "a/2"] and first.marker is not None  # the service's NextMarker
    assert store.page("a/", 2, first.marker).keys == ["a/3"]
    store.replace("a/2", b"new")
    assert store.read("a/2") == b"new"
    store.delete("a/2")
    store.delete("a/2")  # deleting what is gone is not an error
    assert store.read("a/2") is None


REPORTS = "/api/install/v1/system-reports"
TRUST = "/api/mgmt/v1/tenant-config/soup.report.validation.trusted.cert.fingerprints"


def test_report_ingestion_on_azurite(
    blob_env, azurite: Azurite, rsa_ca: OpensslCa, functions: Functions, guide_pki, guide_report
):
    """The report guide's signed report, stored and listed through DataStore Blob; the trust list lives there too.

    The issuing CA (trusted for reports by default) comes from Location Blob on the same Azurite.
    """
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    _upload_ca(service, blob_env["BlobContainerName"], rsa_ca)
    fingerprint = guide_pki.fingerprint("ca_root")
    assert functions.call("POST", TRUST, {"value": [fingerprint]}).status == 200

    created = functions.call("POST", REPORTS, guide_report)
    again = functions.call("POST", REPORTS, guide_report)

    assert created.status == 201, created.body
    assert (again.status, again.json()["duplicate"], again.json()["id"]) == (200, True, created.json()["id"])
    report_id = created.json()["id"]
    listing = functions.call("GET", f"{REPORTS}?gatewayId={GATEWAY_ID}").json()
    assert [r["id"] for r in listing["reports"]] == [report_id]
    fetched = functions.call("GET", f"{REPORTS}/{report_id}").json()
    assert base64.b64decode(fetched["signedMessage"]) == guide_report

    container = service.get_container_client(blob_env["DataBlobContainer"])
    names = sorted(n for n in container.list_blob_names() if not n.startswith(("meta/", "revocation-")))
    assert names[0].startswith(f"report-index/system/{GATEWAY_ID}/") and names[0].endswith(report_id)
    assert names[1].startswith("report-time/system/") and names[1].endswith(report_id)
    assert names[2:] == [f"reports/system/{report_id}.json", f"tenant-config/{TRUST.rsplit('/', 1)[1]}.json"]
    assert json.loads(container.download_blob(names[3]).readall())["value"] == [fingerprint]
