"""What a newcomer meets first: `xboot serve`'s start, /api/health, keys, logs and the CLI's messages.

Each failure mode is one clear line and a non-zero exit, never a traceback; what the health endpoint says
is safe to show anyone (no paths, no setting values).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.live_server import ROOT, clean_environment, start_live_server
from xboot import logs
from xboot.service.ca.signer import clear_signer_cache


def xboot(*args: str, env: dict[str, str] | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "xboot", *args], capture_output=True, text=True, cwd=cwd,
                          env=env or clean_environment({}), timeout=120)  # fmt: skip


# -- /api/health ----------------------------------------------------------------------------------------------------


def test_health_reports_the_ca_the_data_store_and_who_may_enroll(app_env, functions):
    reply = functions.call("GET", "/api/health")
    assert reply.status == 200
    body = reply.json()
    assert body["status"] == "ok" and body["version"]
    assert body["ca"]["status"] == "ok" and body["ca"]["location"] == "File"
    assert body["ca"]["subject"].startswith("CN=") and len(body["ca"]["sha256Fingerprint"]) == 95
    assert body["ca"]["daysLeft"] > 0 and body["ca"]["notAfter"].endswith("Z")
    assert body["dataStore"] == {"status": "ok", "kind": "File"}
    assert body["enrollmentAuthorization"]["methods"] == ["FunctionKey"]
    assert "anyone holding the function key" in body["enrollmentAuthorization"]["warning"]
    assert app_env["DataDirectory"] not in reply.body.decode() and app_env["CertificateFile"] not in reply.body.decode()


def test_health_is_503_naming_the_part_that_fails_and_nothing_else(app_env, functions, monkeypatch, tmp_path):
    missing = str(tmp_path / "secret-folder" / "ia.cer")
    monkeypatch.setenv("CertificateFile", missing)
    clear_signer_cache()
    reply = functions.call("GET", "/api/health")
    assert reply.status == 503 and reply.headers["Retry-After"] == "30"
    body = reply.json()
    assert body["status"] == "unavailable"
    assert body["ca"] == {"status": "error", "error": "configuration_error"}
    assert body["dataStore"]["status"] == "ok"
    assert "secret-folder" not in reply.body.decode()


def test_health_is_anonymous_even_where_keys_are_enforced(tmp_path):
    with start_live_server(tmp_path / "srv") as server:
        import urllib.request

        with urllib.request.urlopen(f"{server.url}/api/health", timeout=10) as reply:
            assert reply.status == 200 and json.load(reply)["status"] == "ok"


# -- xboot serve: checks before it listens -------------------------------------------------------------------------


def test_serve_outside_the_app_folder_writes_nothing_and_says_where_to_run(tmp_path):
    run = xboot("serve", "--port", "0", cwd=tmp_path)
    assert run.returncode == 2
    assert "is not the xboot app folder" in run.stderr and "--app-dir" in run.stderr and "Traceback" not in run.stderr
    assert list(tmp_path.iterdir()) == []


def test_serve_refuses_a_ca_it_cannot_load_before_listening(tmp_path):
    files = {"CertificateFile": str(tmp_path / "nope.cer"), "PrivateKeyFile": str(tmp_path / "nope.key")}
    env = clean_environment({"Location": "File", **files, "DataDirectory": str(tmp_path / "d")})
    run = xboot("serve", "--port", "0", env=env)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: ca: setting CertificateFile")
    assert "xboot serving on" not in run.stderr


def test_serve_says_which_keys_it_enforces_and_ignores_the_clients_key_variables(tmp_path):
    env = clean_environment({"XBOOT_ADMIN_KEY": "client-side", "XBOOT_FUNCTION_KEY": "client-side",
                             "DataDirectory": str(tmp_path / "a")})  # fmt: skip
    with subprocess.Popen([sys.executable, "-m", "xboot", "serve", "--port", "0"], cwd=ROOT, env=env,
                          stderr=subprocess.PIPE, text=True) as process:  # fmt: skip
        lines = []
        for line in process.stderr:
            lines.append(line)
            if "xboot serving on" in line:
                break
        process.terminate()
    assert "keys: none enforced (like Core Tools): every route answers without a key\n" in lines
    from xboot.service.serve import Keys

    assert Keys(function="f").describe() == (
        "keys enforced: the function key on function routes; admin routes: no key works (?code= or x-functions-key)"
    )


def test_operator_commands_work_against_a_server_that_enforces_no_keys(tmp_path):
    with start_live_server(tmp_path / "srv", keys=False) as server:
        run = xboot("trust", "get", "--url", server.url, "--json")
        assert run.returncode == 0, run.stderr
        assert json.loads(run.stdout)["issuingCaTrusted"] is True
        listed = xboot("revoke", "--list", "--url", server.url)
        assert listed.returncode == 0 and "(nothing is revoked)" in listed.stdout


def test_serve_logs_one_line_per_request_without_the_query(tmp_path):
    with start_live_server(tmp_path / "srv") as server:
        import urllib.request

        urllib.request.urlopen(f"{server.url}/api/health?code=do-not-log-me", timeout=10).close()
        log = server.log()
    assert "xboot.serve: GET /api/health 200 " in log and "do-not-log-me" not in log


# -- logging -----------------------------------------------------------------------------------------------------------


def test_the_azure_sdks_are_quiet_unless_debug_is_asked_for(monkeypatch):
    monkeypatch.delenv("XBOOT_LOG_LEVEL", raising=False)
    logs.quiet_libraries(logs.level())
    assert logging.getLogger("azure").level == logging.WARNING
    assert logging.getLogger("waitress.queue").level == logging.ERROR
    monkeypatch.setenv("XBOOT_LOG_LEVEL", "debug")
    logs.quiet_libraries(logs.level())
    assert logs.level() == logging.DEBUG and logging.getLogger("azure").level == logging.DEBUG
    monkeypatch.setenv("XBOOT_LOG_LEVEL", "nonsense")
    assert logs.level() == logging.INFO
    logs.quiet_libraries(logging.INFO)


def test_a_load_simulation_does_not_flood_the_log_with_queue_warnings(tmp_path):
    with start_live_server(tmp_path / "srv", keys=False) as server:
        run = xboot("simulate", "--url", server.url, "--devices", "60", "--concurrency", "16", "--enroll-only")
        assert run.returncode == 0, run.stderr + run.stdout
        log = server.log()
    assert "Task queue depth" not in log and "WARNING waitress" not in log and "/api/certificate 200" in log


# -- the CLI's messages ------------------------------------------------------------------------------------------------


def test_renew_on_an_empty_folder_says_enroll_first(tmp_path):
    run = xboot("renew", "--url", "http://127.0.0.1:9", "--out", str(tmp_path / "empty"))
    assert run.returncode == 1 and "holds no device identity" in run.stderr and "enroll it first" in run.stderr


def test_enroll_into_an_enrolled_folder_names_the_option(tmp_path):
    (tmp_path / "device.key").write_text("x")
    run = xboot("enroll", "--url", "http://127.0.0.1:9", "--registration-id", "d", "--out", str(tmp_path))
    assert run.returncode == 1 and "use xboot renew (or --force to replace it)" in run.stderr


def test_init_ca_prints_settings_that_work_from_anywhere(tmp_path):
    run = xboot("init-ca", "relative-ca", cwd=tmp_path)
    assert run.returncode == 0
    settings = json.loads(run.stdout[run.stdout.index("{") :])
    assert all(Path(settings[name]).is_absolute() for name in ("CertificateFile", "PrivateKeyFile"))
    assert Path(settings["CertificateFile"]).exists()


def test_settings_outside_values_in_local_settings_are_named(tmp_path):
    app = tmp_path / "app"
    app.mkdir()
    for name in ("function_app.py", "host.json"):
        (app / name).write_text((ROOT / name).read_text())
    (app / "local.settings.json").write_text(json.dumps({"Values": {}, "Location": "File"}))
    env = clean_environment(
        {"DataDirectory": str(tmp_path / "d"), "PYTHONPATH": os.pathsep.join([str(app), str(ROOT)])}
    )
    with subprocess.Popen([sys.executable, "-m", "xboot", "serve", "--port", "0", "--app-dir", str(app)], cwd=ROOT,
                          env=env, stderr=subprocess.PIPE, text=True) as process:  # fmt: skip
        first = process.stderr.readline()
        process.terminate()
    assert 'Location must be inside "Values" to take effect; ignored' in first


@pytest.mark.parametrize("kind", [None, "update"])
def test_upload_report_defaults_to_a_system_report(tmp_path, kind):
    with start_live_server(tmp_path / "srv", keys=False) as server:
        device = tmp_path / "dev"
        assert (
            xboot("enroll", "--url", server.url, "--registration-id", "gw-kind", "--out", str(device)).returncode == 0
        )
        (tmp_path / "r.json").write_text(json.dumps({"gatewayId": "gw-kind"}))
        assert xboot("sign-report", str(tmp_path / "r.json"), "--device", str(device)).returncode == 0
        args = ["upload-report", "--url", server.url, str(tmp_path / "r.json.signed"), "--json"]
        run = xboot(*args, *(["--kind", kind] if kind else []))
        assert run.returncode == 0, run.stderr
        assert json.loads(run.stdout)["kind"] == (kind or "system")
