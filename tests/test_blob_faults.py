"""The Blob data store under faults, on a real Azurite: paused, stopped mid-burst, and `xboot serve` killed mid-burst.

What must hold: every answer comes within the request deadline, and is a 2xx or a JSON 503 with Retry-After;
after recovery nothing acknowledged is missing, nothing is stored but unlisted, and sending again the
reports that got no 2xx stores each exactly once.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from azure.storage.blob import BlobServiceClient

from tests.conftest import Functions, Reply
from tests.fixtures.azurite import Azurite
from tests.fixtures.live_server import ROOT, clean_environment, wait_for_serving
from tests.fixtures.report_pki import GATEWAY_ID, Pki, report_bytes
from tests.helpers import make_csr
from tests.test_reports_api import SYSTEM, TRUST, form, post

DEADLINE = 3  # RequestDeadlineSeconds for these tests (production default 10)


@pytest.fixture
def blob_data(app_env, own_azurite: Azurite, azure_caches, monkeypatch) -> str:
    container = "faults"
    monkeypatch.setenv("DataStore", "Blob")
    monkeypatch.setenv("DataBlobConnectionString", own_azurite.connection_string)
    monkeypatch.setenv("DataBlobContainer", container)
    monkeypatch.setenv("RequestDeadlineSeconds", str(DEADLINE))
    return container


def _blobs(azurite: Azurite, container: str, prefix: str) -> list[str]:
    client = BlobServiceClient.from_connection_string(azurite.connection_string).get_container_client(container)
    return list(client.list_blob_names(name_starts_with=prefix))


def _listed(functions: Functions) -> list[str]:
    reply = functions.call("GET", f"{SYSTEM}?gatewayId={GATEWAY_ID}&limit=100")
    assert reply.status == 200, reply.body
    return [r["id"] for r in reply.json()["reports"]]


def _assert_bounded(reply: Reply, elapsed: float) -> None:
    assert elapsed < DEADLINE + 1.5, f"answered after {elapsed:.1f} s"
    if reply.status == 503:
        assert reply.mimetype == "application/json" and reply.json()["error"] == "backend_unavailable"
        assert int(reply.headers["Retry-After"]) >= 1
    else:
        assert reply.status in (200, 201), reply.body


def _timed_post(functions: Functions, message: bytes) -> tuple[Reply, float]:
    started = time.monotonic()
    reply = post(functions, message)
    return reply, time.monotonic() - started


@pytest.fixture
def reports(guide_pki: Pki) -> list[bytes]:
    return [guide_pki.sign(report_bytes(timeStamp=f"burst-{n}"), "gateway") for n in range(24)]


def _trust(functions: Functions, guide_pki: Pki) -> None:
    reply = functions.call("POST", TRUST, {"value": [guide_pki.fingerprint("ca_root")]})
    assert reply.status == 200, reply.body


def test_a_paused_store_gets_an_answer_within_the_deadline(
    blob_data, own_azurite, functions, guide_pki, reports, tmp_path
):
    _trust(functions, guide_pki)
    assert post(functions, reports[0]).status == 201
    own_azurite.process.send_signal(signal.SIGSTOP)
    try:
        reply, elapsed = _timed_post(functions, reports[1])
        assert reply.status == 503
        _assert_bounded(reply, elapsed)
        enrolled = time.monotonic()
        csr = make_csr(tmp_path, "dev-paused")
        enroll = functions.call("POST", "/api/certificate", {"RegistrationId": "dev-paused", "Csr": csr.b64})
        assert enroll.status == 503 and time.monotonic() - enrolled < DEADLINE + 1.5
    finally:
        own_azurite.process.send_signal(signal.SIGCONT)
    again, _ = _timed_post(functions, reports[1])
    assert again.status == 201
    assert sorted(_listed(functions)) == sorted({post(functions, r).json()["id"] for r in reports[:2]})


def test_a_store_stopped_mid_burst_leaves_nothing_stored_but_unlisted(
    blob_data, own_azurite, functions, guide_pki, reports
):
    _trust(functions, guide_pki)
    answers: dict[int, Reply] = {}

    def upload(n: int) -> None:
        if n == 8:
            own_azurite.stop()  # mid-burst: some uploads are in flight, some not yet started
        reply, elapsed = _timed_post(functions, reports[n])
        _assert_bounded(reply, elapsed)
        answers[n] = reply

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(upload, range(len(reports))))
    own_azurite.start()
    acknowledged = {answers[n].json()["id"] for n in answers if answers[n].status in (200, 201)}
    assert acknowledged <= set(_listed(functions))  # nothing acknowledged is missing
    for n, reply in answers.items():  # the device sends again what got no 2xx
        if reply.status == 503:
            assert post(functions, reports[n]).status in (200, 201)
    listed = _listed(functions)
    assert len(listed) == len(set(listed)) == len(reports)  # each report exactly once
    stored = {name.rsplit("/", 1)[1].removesuffix(".json") for name in _blobs(own_azurite, blob_data, "reports/")}
    assert stored == set(listed)  # nothing stored but unlisted


SERVE_BURST = r"""
import json, sys, urllib.request
url, paths = sys.argv[1], json.load(open(sys.argv[2]))
for path in paths:
    body = open(path, "rb").read()
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": sys.argv[3]})
    try:
        with urllib.request.urlopen(request, timeout=20) as reply:
            print(json.dumps({"path": path, "status": reply.status, "id": json.load(reply)["id"]}), flush=True)
    except Exception as error:
        print(json.dumps({"path": path, "status": getattr(error, "code", 0)}), flush=True)
"""


def test_serve_killed_mid_burst_loses_nothing_acknowledged_and_a_resend_stores_once(
    own_azurite, guide_pki, reports, tmp_path
):
    container = "killed"
    settings = {"DataStore": "Blob", "DataBlobConnectionString": own_azurite.connection_string,
                "DataBlobContainer": container, "TrustedFingerprints": guide_pki.fingerprint("ca_root"),
                "DataDirectory": str(tmp_path / "unused")}  # fmt: skip
    paths = []
    for n, message in enumerate(reports):
        body, headers = form(message)
        paths.append(str(tmp_path / f"r{n}.body"))
        Path(paths[-1]).write_bytes(body)
    (tmp_path / "paths.json").write_text(json.dumps(paths))

    def serve(name: str) -> tuple[subprocess.Popen[bytes], int]:
        log = tmp_path / f"{name}.log"
        with log.open("wb") as out:
            command = [sys.executable, "-m", "xboot", "serve", "--port", "0", "--app-dir", str(ROOT)]
            process = subprocess.Popen(command, cwd=ROOT, env=clean_environment(settings), stdout=out,
                                       stderr=subprocess.STDOUT)  # fmt: skip
        return process, wait_for_serving(process, log, 60)

    first, port = serve("first")
    client = subprocess.Popen([sys.executable, "-c", SERVE_BURST, f"http://127.0.0.1:{port}{SYSTEM}",
                               str(tmp_path / "paths.json"), headers["Content-Type"]],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    acknowledged: dict[str, str] = {}
    for line in client.stdout:
        result = json.loads(line)
        if result["status"] in (200, 201):
            acknowledged[result["path"]] = result["id"]
        if len(acknowledged) == 6:
            first.send_signal(signal.SIGKILL)  # mid-burst: the rest meet a dead server
            break
    first.wait()
    client.wait(60)
    second, port = serve("second")
    try:
        import urllib.request

        ids = set()
        for path in paths:  # every device sends again (the acknowledged ones too: repeats are idempotent)
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}{SYSTEM}",
                data=Path(path).read_bytes(),
                method="POST",
                headers={"Content-Type": headers["Content-Type"]},
            )
            with urllib.request.urlopen(request, timeout=20) as reply:
                ids.add(json.load(reply)["id"])
        assert set(acknowledged.values()) <= ids
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{SYSTEM}?gatewayId={GATEWAY_ID}&limit=100") as reply:
            listed = [r["id"] for r in json.load(reply)["reports"]]
    finally:
        second.terminate()
        second.wait(10)
    assert len(listed) == len(set(listed)) == len(reports) and set(listed) == ids
    stored = {name.rsplit("/", 1)[1].removesuffix(".json") for name in _blobs(own_azurite, container, "reports/")}
    assert stored == ids
