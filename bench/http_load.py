"""Part 4: POST /api/certificate over HTTP through `python -m xboot serve`, 1, 8 and 64 concurrent clients.

The server is a subprocess on a free loopback port with its development CA (EC P-256) and
the audit log on disk; its INFO log goes to a file, as it would to a console. Clients are
threads in this process, each with one keep-alive `http.client` connection, sharing a
bounded number of requests. Both sides share the machine's cores: on a 2-core machine the
figures are a lower bound of what a dedicated instance does.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.issuance import XBOOT_RULES
from bench.material import make_csrs
from bench.timing import percentile
from tests.fixtures.live_server import clean_environment, wait_for_serving

ROOT = Path(__file__).resolve().parent.parent
CONCURRENCY = (1, 8, 64)
SERVER_THREADS = 8


class Server:
    """`python -m xboot serve` in its own process group, stopped by its process id."""

    def __init__(self, work: Path) -> None:
        self.log = work / "serve.log"
        env = clean_environment({"DataDirectory": str(work / "data"), **XBOOT_RULES})
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "xboot", "serve", "--app-dir", str(ROOT), "--port", "0",
                 "--threads", str(SERVER_THREADS)],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        try:
            self.port = wait_for_serving(self.process, self.log, timeout=60)
        except RuntimeError:
            self.stop()
            raise

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def drive(port: int, bodies: list[bytes], clients: int, total: int) -> dict[str, Any]:
    """`total` requests from `clients` keep-alive connections; latency per request, errors counted."""
    counter = iter(range(total))
    lock = threading.Lock()
    latencies: list[int] = []
    errors: list[str] = []

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        mine: list[int] = []
        try:
            while True:
                with lock:
                    index = next(counter, None)
                if index is None:
                    break
                body = bodies[index % len(bodies)]
                start = time.perf_counter_ns()
                try:
                    connection.request("POST", "/api/certificate", body, {"Content-Length": str(len(body))})
                    response = connection.getresponse()
                    payload = response.read()
                except (OSError, http.client.HTTPException) as error:
                    with lock:
                        errors.append(f"{type(error).__name__}: {error}")
                    connection.close()
                    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                    continue
                mine.append(time.perf_counter_ns() - start)
                if response.status != 200 or b'"certificate"' not in payload:
                    with lock:
                        errors.append(f"HTTP {response.status}: {payload[:120]!r}")
        finally:
            connection.close()
            with lock:
                latencies.extend(mine)

    began = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(client) for _ in range(clients)]:
            future.result()
    elapsed = time.perf_counter() - began
    ordered = sorted(latencies)
    return {
        "clients": clients,
        "requests": total,
        "seconds": round(elapsed, 3),
        "requests_per_second": round(total / elapsed, 1),
        "p50_ms": round(percentile(ordered, 50) / 1e6, 2),
        "p99_ms": round(percentile(ordered, 99) / 1e6, 2),
        "max_ms": round(ordered[-1] / 1e6, 2) if ordered else None,
        "errors": len(errors),
        "error_samples": errors[:5],
    }


def run(work: Path, quick: bool) -> dict[str, Any]:
    per_level = {1: 150, 8: 400, 64: 640} if quick else {1: 600, 8: 1600, 64: 3200}
    csrs = make_csrs(work / "csr", "ec-p256", 32)
    bodies = [json.dumps({"RegistrationId": c.registration_id, "Csr": c.b64}).encode() for c in csrs]
    server = Server(work)
    try:
        warm = drive(server.port, bodies, 4, 40)  # signer load, first audit folders, connection set-up
        levels = [drive(server.port, bodies, clients, per_level[clients]) for clients in CONCURRENCY]
    finally:
        server.stop()
    log = server.log.read_text(errors="replace")
    records = sum(1 for _ in (work / "data" / "certificates").rglob("*.json"))
    return {
        "server_threads": SERVER_THREADS,
        "warmup_errors": warm["errors"],
        "levels": levels,
        "audit_records": records,
        "expected_audit_records": 40 + sum(per_level.values()),
        "server_log_tracebacks": log.count("Traceback"),
        "server_log_errors": sum(1 for line in log.splitlines() if " ERROR " in line),
    }


def table(result: dict[str, Any]) -> list[str]:
    lines = [f"  {'clients':>7} {'requests':>8} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'errors':>6}"]
    for level in result["levels"]:
        lines.append(
            f"  {level['clients']:>7} {level['requests']:>8} {level['requests_per_second']:>8.1f} "
            f"{level['p50_ms']:>8.2f} {level['p99_ms']:>8.2f} {level['max_ms']:>8.2f} {level['errors']:>6}"
        )
    lines.append(
        f"  waitress threads {result['server_threads']}; audit records {result['audit_records']}/"
        f"{result['expected_audit_records']}; server log: {result['server_log_errors']} errors, "
        f"{result['server_log_tracebacks']} tracebacks"
    )
    return lines
