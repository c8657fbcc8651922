"""`xboot serve --workers`: worker processes on one socket, supervised; a whole server killed with SIGKILL
mid-burst of concurrent enrollments loses no acknowledged audit record (DataSync group)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.http_load import process_tree
from tests.fixtures.live_server import ROOT, clean_environment, wait_for_serving
from tests.helpers import make_csr
from xboot.service.ca.devca import create_development_ca

BURST = r"""
import json, sys, threading, urllib.request
url, bodies = sys.argv[1], json.load(open(sys.argv[2]))
lock = threading.Lock()
def client(mine):
    for body in mine:
        request = urllib.request.Request(url, data=body.encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=20) as reply:
                answer = json.load(reply)
                line = json.dumps({"status": reply.status, "id": json.loads(body)["RegistrationId"],
                                   "serial": answer["serialNumber"], "fingerprint": answer["sha256Fingerprint"]})
        except Exception as error:
            line = json.dumps({"status": getattr(error, "code", 0)})
        with lock:
            print(line, flush=True)
threads = [threading.Thread(target=client, args=(bodies[n::16],)) for n in range(16)]
for t in threads: t.start()
for t in threads: t.join()
"""


def _children(pid: int) -> list[int]:
    return process_tree(pid)[1:]


def _serve(tmp_path: Path, name: str, *extra: str) -> tuple[subprocess.Popen[bytes], int, Path]:
    if not (tmp_path / "ca").exists():
        create_development_ca(tmp_path / "ca")
    settings = {"Location": "File", "CertificateFile": str(tmp_path / "ca" / "ia.cer"),
                "PrivateKeyFile": str(tmp_path / "ca" / "ia.key"), "DataDirectory": str(tmp_path / "data"),
                "IdentityLock": "false", "MaxCertificatesPerDay": "0"}  # fmt: skip
    log = tmp_path / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "xboot", "serve", "--port", "0", "--app-dir", str(ROOT),
                                    *extra], cwd=ROOT, env=clean_environment(settings), stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    return process, wait_for_serving(process, log, 60), log


@pytest.mark.skipif(not hasattr(os, "fork"), reason="workers need fork")
def test_sigkill_of_the_whole_server_mid_burst_loses_no_acknowledged_record(tmp_path):
    bodies = []
    for n in range(48):
        csr = make_csr(tmp_path / "csr", f"burst-{n:02d}")
        bodies.append(json.dumps({"RegistrationId": f"burst-{n:02d}", "Csr": csr.b64}))
    (tmp_path / "bodies.json").write_text(json.dumps(bodies * 4))
    server, port, log = _serve(tmp_path, "first", "--workers", "2")
    assert "2 worker processes" in log.read_text()
    client = subprocess.Popen([sys.executable, "-c", BURST, f"http://127.0.0.1:{port}/api/certificate",
                               str(tmp_path / "bodies.json")], stdout=subprocess.PIPE, text=True)  # fmt: skip
    acknowledged = []
    assert client.stdout is not None
    for line in client.stdout:
        result = json.loads(line)
        if result["status"] == 200:
            acknowledged.append(result)
        if len(acknowledged) == 60:
            os.killpg(server.pid, signal.SIGKILL)  # the parent and every worker at once, mid-burst
            break
    server.wait()
    client.kill()
    client.wait()
    assert len(acknowledged) == 60
    for result in acknowledged:
        record = json.loads(
            (tmp_path / "data" / "certificates" / result["id"] / f"{result['serial']}.json").read_text()
        )
        assert record["sha256Fingerprint"] == result["fingerprint"]
    for path in (tmp_path / "data" / "certificates").rglob("*.json"):
        json.loads(path.read_text())  # nothing half-written is visible


@pytest.mark.skipif(not hasattr(os, "fork"), reason="workers need fork")
def test_a_dead_worker_is_replaced_and_sigterm_stops_them_all(tmp_path):
    import urllib.request

    server, port, log = _serve(tmp_path, "supervised", "--workers", "2")
    try:
        deadline = time.monotonic() + 20
        while len(_children(server.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        first = _children(server.pid)
        assert len(first) == 2
        os.kill(first[0], signal.SIGKILL)
        deadline = time.monotonic() + 20
        now = _children(server.pid)
        while time.monotonic() < deadline and (len(now) < 2 or first[0] in now):  # one listing per look
            time.sleep(0.05)
            now = _children(server.pid)
        assert len(now) == 2 and first[0] not in now and first[1] in now, (first, now)
        assert "starting another" in log.read_text()
        for _ in range(6):  # either worker answers
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=10) as reply:
                assert reply.status == 200
        server.send_signal(signal.SIGTERM)
        assert server.wait(15) == 0
        time.sleep(0.2)
        assert all(not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
                   for pid in now)  # fmt: skip
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


MID_FORK_STOP = r"""
import os, signal, sys, time
from xboot.service.workers import run_workers
sent = []
def stop_now():  # the worst moment: SIGTERM lands while the parent is inside the fork's own hooks
    if not sent:
        sent.append(os.kill(os.getpid(), signal.SIGTERM))
os.register_at_fork(after_in_parent=stop_now)
run_workers(lambda: time.sleep(60), 2)
print("stopped", flush=True)
"""


def test_sigterm_that_arrives_during_a_fork_still_stops_the_server():
    """Held across the fork, the signal is handled once the child is counted (it was swallowed: a hang)."""
    run = subprocess.run([sys.executable, "-c", MID_FORK_STOP], cwd=ROOT, capture_output=True, text=True,
                         timeout=30)  # fmt: skip
    assert run.returncode == 0 and run.stdout == "stopped\n", run.stderr
