"""Part 4: over HTTP, side by side: `xboot serve` and CFSSL's `cfssl serve`, same CA, same CSR, one load
generator (wrk, its own process) at 1, 8 and 64 keep-alive connections.

Both servers sign with the same EC P-256 development CA; both are sent the same CSR (xboot under
XBoot's identity rules, so the one CSR can be signed again and again). xboot keeps its audit record of
every certificate on disk (DataSync group: durable before the answer); cfssl keeps nothing. xboot also
takes signed report uploads (the guide's report, verified every time, found already stored). For each
run: requests/s, p50 and p99 as wrk measures them, non-2xx answers, the server's CPU time per request
(all its processes, from /proc) and its resident memory. Both servers and wrk share the machine's
cores, as they would on one small VM. wrk and cfssl come from Debian (`apt-get install wrk
golang-cfssl`); a missing one skips its rows.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.issuance import XBOOT_RULES
from bench.material import make_ca, make_csrs
from bench.reports import FORM_BOUNDARY, _form, _make_reports
from tests.fixtures.live_server import clean_environment, wait_for_serving
from tests.fixtures.upstreams import start_on_free_port, stop

ROOT = Path(__file__).resolve().parent.parent
CONCURRENCY = (1, 8, 64)
SERVER_THREADS = 8
CFSSL_CONFIG = {"signing": {"default": {"expiry": "8760h", "usages": ["digital signature", "client auth"]}}}
WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = os.getenv("XBOOT_BENCH_TYPE")
local f = io.open(os.getenv("XBOOT_BENCH_BODY"), "rb")
wrk.body = f:read("*a")
f:close()
"""
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}
_CLOCK = os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """`pid` and its children (xboot's worker processes)."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    children.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return [pid, *children]


def _cpu_seconds(pid: int) -> float:
    total = 0
    for process in process_tree(pid):
        try:
            fields = Path(f"/proc/{process}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / _CLOCK


def _rss_mib(pid: int) -> float:
    total = 0
    for process in process_tree(pid):
        try:
            status = Path(f"/proc/{process}/status").read_text()
        except OSError:
            continue
        found = re.search(r"VmRSS:\s+(\d+) kB", status)
        total += int(found.group(1)) if found else 0
    return round(total / 1024, 1)


def _milliseconds(text: str) -> float:
    value, unit = re.fullmatch(r"([0-9.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) * _UNITS[unit]


def wrk(url: str, body: Path, content_type: str, connections: int, seconds: int, work: Path) -> dict[str, Any]:
    script = work / "post.lua"
    script.write_text(WRK_SCRIPT)
    env = {**os.environ, "XBOOT_BENCH_BODY": str(body), "XBOOT_BENCH_TYPE": content_type}
    command = ["wrk", "-t", str(min(2, connections)), "-c", str(connections), "-d", f"{seconds}s", "--latency",
               "-s", str(script), url]  # fmt: skip
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.MULTILINE))
    return {
        "clients": connections,
        "requests": requests,
        "requests_per_second": float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1)),  # type: ignore[union-attr]
        "p50_ms": round(_milliseconds(latency["50"]), 2),
        "p99_ms": round(_milliseconds(latency["99"]), 2),
        "errors": (int(errors.group(1)) if errors else 0)
        + (sum(int(n) for n in socket_errors.groups()) if socket_errors else 0),
    }


def measure(pid: int, url: str, body: Path, content_type: str, seconds: int, work: Path) -> list[dict[str, Any]]:
    wrk(url, body, content_type, 4, 1, work)  # warm: CA loaded, folders made, connections set up
    levels = []
    for clients in CONCURRENCY:
        before = _cpu_seconds(pid)
        level = wrk(url, body, content_type, clients, seconds, work)
        used = _cpu_seconds(pid) - before
        level["server_cpu_us_per_request"] = round(used / max(level["requests"], 1) * 1e6, 0)
        level["server_rss_mib"] = _rss_mib(pid)
        levels.append(level)
    return levels


def _xboot(work: Path, ca: Any, anchor: str) -> tuple[subprocess.Popen[bytes], int, Path]:
    work.mkdir(parents=True, exist_ok=True)
    log = work / "serve.log"
    settings = {**ca.settings(), "DataDirectory": str(work / "data"), **XBOOT_RULES, "TrustedFingerprints": anchor,
                "RequireGatewayIdMatch": "false"}  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "xboot", "serve", "--app-dir", str(ROOT), "--port", "0", "--threads",
             str(SERVER_THREADS)],
            cwd=ROOT, env=clean_environment(settings), stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    return process, wait_for_serving(process, log, timeout=60), log


def run(work: Path, quick: bool) -> dict[str, Any]:
    if shutil.which("wrk") is None:
        return {"pending": "wrk is not installed (apt-get install wrk)"}
    seconds = 2 if quick else 8
    ca = make_ca(work / "ca", "ec-p256")
    [csr] = make_csrs(work / "csr", "ec-p256", 1)
    xboot_body = work / "enroll.json"
    xboot_body.write_text(json.dumps({"RegistrationId": csr.registration_id, "Csr": csr.b64}))
    pki, messages = _make_reports(work / "reports", 1)
    report_body = work / "report.form"
    report_body.write_bytes(_form(messages[0]))
    result: dict[str, Any] = {"workers": len(os.sched_getaffinity(0)), "threads": SERVER_THREADS}
    process, port, log = _xboot(work / "xboot", ca, pki.fingerprint("ca_root"))
    try:
        base = f"http://127.0.0.1:{port}"
        result["xboot enroll"] = measure(process.pid, f"{base}/api/certificate", xboot_body, "application/json",
                                         seconds, work)  # fmt: skip
        result["xboot report upload"] = measure(
            process.pid, f"{base}/api/install/v1/system-reports", report_body,
            f"multipart/form-data; boundary={FORM_BOUNDARY}", seconds, work,
        )  # fmt: skip
    finally:
        process.terminate()
        process.wait(timeout=30)
    acknowledged = sum(level["requests"] - level["errors"] for level in result["xboot enroll"])
    result["audit_records"] = sum(1 for _ in (work / "xboot" / "data" / "certificates").rglob("*.json"))
    result["acknowledged_enrollments_measured"] = acknowledged
    text = log.read_text(errors="replace")
    result["server_log_tracebacks"] = text.count("Traceback")
    if shutil.which("cfssl"):
        config = work / "cfssl.json"
        config.write_text(json.dumps(CFSSL_CONFIG))
        cfssl_body = work / "cfssl.json.body"
        cfssl_body.write_text(json.dumps({"certificate_request": csr.pem_path.read_text()}))
        cfssl, cfssl_port = start_on_free_port(
            lambda p: ["cfssl", "serve", "-address", "127.0.0.1", "-port", str(p), "-ca", str(ca.certificate),
                       "-ca-key", str(ca.key), "-config", str(config), "-loglevel", "5"],
            work / "cfssl.log",
        )  # fmt: skip
        try:
            result["cfssl sign"] = measure(cfssl.pid, f"http://127.0.0.1:{cfssl_port}/api/v1/cfssl/sign", cfssl_body,
                                           "application/json", seconds, work)  # fmt: skip
        finally:
            stop(cfssl)
        for ours, theirs in zip(result["xboot enroll"], result["cfssl sign"], strict=True):
            ours["ratio_to_cfssl"] = round(ours["requests_per_second"] / theirs["requests_per_second"], 2)
    return result


def table(result: dict[str, Any]) -> list[str]:
    if "pending" in result:
        return [f"  skipped: {result['pending']}"]
    lines = [f"  xboot serve: {result['workers']} worker processes x {result['threads']} threads; audit on disk",
             f"  {'server, route':<22} {'clients':>7} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6} "
             f"{'CPU us/req':>10} {'RSS MiB':>8} {'x cfssl':>8}"]  # fmt: skip
    for name in ("cfssl sign", "xboot enroll", "xboot report upload"):
        for level in result.get(name, []):
            ratio = f"{level['ratio_to_cfssl']:.2f}x" if "ratio_to_cfssl" in level else ""
            lines.append(
                f"  {name:<22} {level['clients']:>7} {level['requests_per_second']:>8.0f} {level['p50_ms']:>7.2f} "
                f"{level['p99_ms']:>7.2f} {level['errors']:>6} {level['server_cpu_us_per_request']:>10.0f} "
                f"{level['server_rss_mib']:>8.1f} {ratio:>8}"
            )
    lines.append(
        f"  audit records {result['audit_records']} for {result['acknowledged_enrollments_measured']} acknowledged "
        f"enrollments measured (plus warm-up); server log tracebacks {result['server_log_tracebacks']}"
    )
    return lines
