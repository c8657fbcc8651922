"""`python -m xboot serve` over real HTTP: the README's walk-through with openssl and curl."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import function_app
from tests.fixtures.live_server import clean_environment, wait_for_serving
from tests.helpers import openssl
from xboot.service.serve import RouteTable

ROOT = Path(__file__).resolve().parent.parent


def start_serve(tmp_path: Path, *args: str) -> tuple[subprocess.Popen, str]:
    """`xboot serve` with no Location at all: the development CA default the README's first command shows."""
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "xboot", "serve", "--port", "0", "--app-dir", str(ROOT), *args],
            env=clean_environment({"DataDirectory": str(tmp_path / "data")}),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    port = wait_for_serving(process, log_path, timeout=20)
    return process, f"http://127.0.0.1:{port}"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[str]:
    process, url = start_serve(tmp_path)
    yield url
    process.terminate()
    process.wait(10)


def curl(*args: str) -> tuple[int, bytes]:
    result = subprocess.run(["curl", "-sS", "-w", "\n%{http_code}", *args], capture_output=True, check=True)
    body, _, code = result.stdout.rpartition(b"\n")
    return int(code), body


def test_readme_walkthrough_with_openssl_and_curl(served: str, tmp_path: Path):
    """openssl makes the key and CSR, curl enrolls, openssl verifies the result against the dev root."""
    openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "device.key", cwd=tmp_path)
    openssl(
        "req",
        "-new",
        "-key",
        "device.key",
        "-subj",
        "/CN=my-device-01",
        "-outform",
        "DER",
        "-out",
        "device.csr",
        cwd=tmp_path,
    )
    csr_b64 = openssl("base64", "-A", "-in", "device.csr", cwd=tmp_path).decode()
    request = json.dumps({"RegistrationId": "my-device-01", "Csr": csr_b64})
    status, body = curl("-X", "POST", f"{served}/api/certificate", "-d", request)
    assert status == 200, body
    reply = json.loads(body)
    (tmp_path / "chain.pem").write_text(reply["certificateChain"])
    (tmp_path / "device.crt").write_bytes(openssl("x509", "-in", "chain.pem", cwd=tmp_path))
    root = tmp_path / "data" / "dev-ca" / "ca.cer"
    assert root.exists(), "serve with no Location makes a development CA in the data folder"
    verified = openssl("verify", "-CAfile", str(root), "-untrusted", "chain.pem", "device.crt", cwd=tmp_path)
    assert verified.strip() == b"device.crt: OK"
    log = (tmp_path / "serve.log").read_text()
    assert "DEVELOPMENT CA" in log
    assert (tmp_path / "data" / "certificates" / "my-device-01" / f"{reply['serialNumber']}.json").exists()


def test_http_errors_are_json(served: str, tmp_path: Path):
    status, body = curl(f"{served}/api/nope")
    assert status == 404 and json.loads(body)["error"] == "not_found"
    status, body = curl(f"{served}/api/certificate")
    assert status == 405 and json.loads(body)["error"] == "method_not_allowed"
    (tmp_path / "big").write_bytes(b"x" * 200_000)
    status, body = curl("-X", "POST", f"{served}/api/certificate", "--data-binary", f"@{tmp_path / 'big'}")
    assert status == 413 and json.loads(body)["error"] == "payload_too_large"
    status, body = curl("-X", "POST", f"{served}/api/certificate", "-d", "{not json")
    assert status == 400 and json.loads(body)["error"] == "invalid_json"


def test_function_key_is_enforced_when_given(tmp_path: Path):
    process, url = start_serve(tmp_path, "--function-key", "k-123")
    try:
        status, body = curl("-X", "POST", f"{url}/api/certificate", "-d", "{}")
        assert status == 401 and json.loads(body)["error"] == "unauthorized"
        status, body = curl("-X", "POST", f"{url}/api/certificate?code=k-123", "-d", "{}")
        assert status == 400  # past the key check, refused for its content
        status, body = curl("-X", "POST", f"{url}/api/certificate", "-H", "x-functions-key: k-123", "-d", "{}")
        assert status == 400
    finally:
        process.terminate()
        process.wait(10)


def test_route_table_is_the_apps_own():
    table = RouteTable.from_app(function_app.app)
    names = {route.name for route in table.routes}
    assert "certificate" in names
    route, _, _ = table.match("POST", "/api/certificate")
    assert route is not None and route.name == "certificate" and route.auth_level == "function"
    assert table.match("GET", "/api/certificate")[2] == {"POST"}


def test_a_busy_port_is_one_clear_line_and_a_non_zero_exit(tmp_path: Path):
    (tmp_path / "first").mkdir()
    first, url = start_serve(tmp_path / "first")
    try:
        port = url.rsplit(":", 1)[1]
        second = subprocess.run(
            [sys.executable, "-m", "xboot", "serve", "--port", port, "--app-dir", str(ROOT)],
            env=clean_environment({"DataDirectory": str(tmp_path / "second")}), capture_output=True, text=True,
            timeout=60,
        )  # fmt: skip
        assert second.returncode == 1
        assert f"error: cannot listen on 127.0.0.1:{port}: it is in use" in second.stderr
        assert "Traceback" not in second.stderr and "xboot serving on" not in second.stderr
    finally:
        first.terminate()
        first.wait(10)
