"""`xboot simulate`: many devices at once, each doing what a real one does, for demos and load.

Each simulated device makes its own key, enrolls (the certificate is verified as a
device would), signs a system report with its new certificate and uploads it. Keys
and certificates stay in memory. Latencies are measured per step so that a slow
signer and a slow report store can be told apart.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

from xboot.device.client import XbootClient
from xboot.device.errors import ServerRefused, ServerUnavailable, VerificationFailed
from xboot.device.smime import sign_report
from xboot.pki import generate_key

PERCENTILES = (50, 90, 99)


@dataclass
class DeviceOutcome:
    registration_id: str
    failure: str | None = None  # "enroll: 403 registration_refused", "upload: unreachable", ...
    seconds: dict[str, float] = field(default_factory=dict)  # per step: enroll, upload, total


@dataclass(frozen=True)
class Summary:
    devices: int
    succeeded: int
    failures: dict[str, int]
    latency_ms: dict[str, dict[str, float]]  # step -> {"p50", "p90", "p99", "max"}
    wall_seconds: float

    @property
    def failed(self) -> int:
        return self.devices - self.succeeded

    def as_dict(self) -> dict[str, Any]:
        return {
            "devices": self.devices,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "failures": self.failures,
            "latencyMs": self.latency_ms,
            "wallSeconds": round(self.wall_seconds, 3),
            "devicesPerSecond": round(self.devices / self.wall_seconds, 2) if self.wall_seconds > 0 else None,
        }


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile: always a value that was measured."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def system_report(registration_id: str, now: float) -> bytes:
    """A system report shaped like the one in the report-signing guide."""
    report = {
        "timeStamp": str(int(now)),
        "gatewayId": registration_id,
        "values": [
            {"Id": "1", "ModuleSerialNumber": f"{registration_id}-m1"},
            {"Id": "2", "ModuleSerialNumber": registration_id, "ProductUuid": registration_id},
        ],
    }
    return json.dumps(report, indent=1).encode() + b"\n"


def _reason(step: str, error: Exception) -> str:
    if isinstance(error, ServerRefused | ServerUnavailable) and error.status is not None:
        return f"{step}: {error.status}{' ' + error.code if error.code else ''}"
    if isinstance(error, ServerUnavailable):
        return f"{step}: unreachable"
    if isinstance(error, VerificationFailed):
        return f"{step}: verification failed"
    return f"{step}: {type(error).__name__}"


def simulate_device(client: XbootClient, registration_id: str, key_type: str, upload: bool) -> DeviceOutcome:
    outcome = DeviceOutcome(registration_id)
    started = time.perf_counter()
    step = "enroll"
    try:
        key = generate_key(key_type)
        begin = time.perf_counter()
        enrollment = client.enroll(registration_id, key)
        outcome.seconds["enroll"] = time.perf_counter() - begin
        if upload:
            step = "sign"
            signed = sign_report(
                system_report(registration_id, time.time()), enrollment.certificate, key, enrollment.chain
            )
            step = "upload"
            begin = time.perf_counter()
            client.upload_report(signed, "system", f"{registration_id}.signed")
            outcome.seconds["upload"] = time.perf_counter() - begin
    except Exception as error:  # noqa: BLE001 - one device's failure, whatever it is, is counted, not fatal
        outcome.failure = _reason(step, error)
    outcome.seconds["total"] = time.perf_counter() - started
    return outcome


def summarize(outcomes: Sequence[DeviceOutcome], wall_seconds: float) -> Summary:
    failures = Counter(o.failure for o in outcomes if o.failure)
    latency: dict[str, dict[str, float]] = {}
    for step in ("enroll", "upload", "total"):
        values = [o.seconds[step] for o in outcomes if not o.failure and step in o.seconds]
        if values:
            latency[step] = {f"p{p}": round(percentile(values, p) * 1000, 1) for p in PERCENTILES}
            latency[step]["max"] = round(max(values) * 1000, 1)
    return Summary(
        devices=len(outcomes),
        succeeded=sum(1 for o in outcomes if not o.failure),
        failures=dict(failures.most_common()),
        latency_ms=latency,
        wall_seconds=wall_seconds,
    )


def run_simulation(
    client: XbootClient,
    devices: int,
    concurrency: int,
    prefix: str,
    *,
    key_type: str = "ec-p256",
    upload: bool = True,
    on_progress: Callable[[int, int, int], None] | None = None,
) -> Summary:
    """`devices` devices named PREFIX0001..., `concurrency` at a time; on_progress(done, total, failed)."""
    width = max(4, len(str(devices)))
    ids = [f"{prefix}{n:0{width}d}" for n in range(1, devices + 1)]
    outcomes: list[DeviceOutcome] = []
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="xboot-sim") as pool:
        futures = [pool.submit(simulate_device, client, rid, key_type, upload) for rid in ids]
        for future in as_completed(futures):
            outcomes.append(future.result())
            if on_progress is not None:
                on_progress(len(outcomes), devices, sum(1 for o in outcomes if o.failure))
    return summarize(outcomes, time.perf_counter() - started)
