"""Part 5: cold start per Location, a fresh interpreter per sample.

Each sample runs `bench/coldstart_probe.py` in a new process with that Location's settings:
the probe times `import function_app`, the function indexing a Functions host does
(`get_functions`), and the first request through the registered function (signer load from
the Location, audit write, response), and lists the Azure SDK modules loaded at each point.
Interpreter start-up is measured on its own (`python -c pass`) and reported beside it.

Blob runs against Azurite (tests/fixtures/azurite.py), KeyVault against the Key Vault REST
double (tests/fixtures/keyvault_double.py), both wired in by the probe; a Location whose
fixture cannot run is reported as pending with the reason.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.backends import BlobEnvironment, azurite_or_reason
from bench.issuance import XBOOT_RULES
from bench.material import make_ca, make_csrs
from bench.timing import percentile

ROOT = Path(__file__).resolve().parent.parent
PROBE = Path(__file__).resolve().parent / "coldstart_probe.py"
IMPORT_TARGET_MS = 300


def _clean_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k[:1].isupper() or k in ("PATH", "HOME", "LANG")}
    env.update({**XBOOT_RULES, **extra})
    env["PYTHONPATH"] = str(ROOT)  # with -P, the probe's own folder is not put on sys.path
    return env


def _sample(env: dict[str, str], body_file: Path, location: str) -> dict[str, Any]:
    began = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-P", str(PROBE), str(body_file), location],
        cwd=ROOT, env=env, capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    wall_ms = (time.perf_counter() - began) * 1000
    if result.returncode != 0:
        raise RuntimeError(f"cold-start probe for {location} failed: {result.stderr[-2000:]}")
    sample = json.loads(result.stdout.strip().splitlines()[-1])
    sample["process_wall_ms"] = wall_ms
    return sample


def _summary(samples: list[dict[str, Any]], key: str) -> dict[str, float]:
    values = sorted(s[key] for s in samples)
    return {"median": round(statistics.median(values), 1), "p99": round(percentile(values, 99), 1)}


def _interpreter_start(samples: int) -> dict[str, float]:
    times = []
    for _ in range(samples):
        began = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        times.append((time.perf_counter() - began) * 1000)
    times.sort()
    return {"median": round(statistics.median(times), 1), "p99": round(percentile(times, 99), 1)}


def import_profile(env: dict[str, str]) -> list[dict[str, Any]]:
    """`python -X importtime -c 'import function_app'`: the ten slowest top-level-ish imports, cumulative."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import function_app"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    rows = []
    for line in result.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative_us, name = line.split(":", 1)[1].split("|")
        depth = (len(name) - len(name.lstrip()) - 1) // 2  # -X importtime indents two spaces per level
        rows.append({"module": name.strip(), "depth": depth, "cumulative_ms": int(cumulative_us) / 1000})
    top = [r for r in rows if r["depth"] <= 2]
    return sorted(top, key=lambda r: -r["cumulative_ms"])[:10]


def run(work: Path, quick: bool) -> dict[str, Any]:
    samples = 5 if quick else 15
    ca = make_ca(work / "ca", "ec-p256")
    csr = make_csrs(work / "csr", "ec-p256", 1)[0]
    body_file = work / "body.json"
    body_file.write_text(json.dumps({"RegistrationId": csr.registration_id, "Csr": csr.b64}))
    data = str(work / "data")
    environments: dict[str, dict[str, str] | str] = {
        "File": {**ca.settings(), "DataDirectory": data},
        "AppSettings": {
            "Location": "AppSettings",
            "CertificateFile": ca.certificate.read_text(),
            "PrivateKeyFile": ca.key.read_text(),
            "CertificateChainFile": ca.root_certificate.read_text(),
            "DataDirectory": data,
        },
        # The probe wires the in-process double: the vault URL is the double's, the CA is added by the probe.
        "KeyVault": {
            "Location": "KeyVault",
            "KeyVaultUri": "https://xboot-test.vault.azure.net/",
            "CertificateFile": "xboot-issuing",
            "XBOOT_BENCH_CA_DIR": str(ca.directory),
            "DataDirectory": data,
        },
    }
    azurite, reason = azurite_or_reason(work / "azurite")
    blob: BlobEnvironment | None = None
    if azurite is None:
        environments["Blob"] = f"pending: {reason}"
    else:
        blob = BlobEnvironment(azurite, ca)
        environments["Blob"] = blob.settings()
    results: dict[str, Any] = {"samples": samples, "interpreter_start_ms": _interpreter_start(samples)}
    try:
        for location, values in environments.items():
            if isinstance(values, str):
                results[location] = {"pending": values}
                continue
            env = _clean_env(values)
            runs = [_sample(env, body_file, location) for _ in range(samples)]
            results[location] = {
                "import_ms": _summary(runs, "import_ms"),
                "index_ms": _summary(runs, "index_ms"),
                "first_request_ms": _summary(runs, "first_request_ms"),
                "sdk_import_ms": _summary(runs, "sdk_import_ms"),
                "first_request_with_sdk_import_ms": _summary(
                    [{**r, "total": r["first_request_ms"] + r["sdk_import_ms"]} for r in runs], "total"
                ),
                "harness_ms": _summary(runs, "harness_ms"),
                "process_wall_ms": _summary(runs, "process_wall_ms"),
                "first_status": sorted({r["status"] for r in runs}),
                "azure_sdk_at_import": runs[0]["sdk_at_import"],
                "azure_sdk_after_first_request": runs[0]["sdk_after_request"],
            }
        results["File"]["import_profile"] = import_profile(_clean_env(environments["File"]))  # type: ignore[arg-type]
    finally:
        if azurite is not None:
            azurite.stop()
    results["import_target_ms"] = IMPORT_TARGET_MS
    return results


def table(result: dict[str, Any]) -> list[str]:
    start = result["interpreter_start_ms"]
    lines = [
        f"  n={result['samples']} per Location; interpreter start (python -c pass): "
        f"{start['median']:.1f} ms median, {start['p99']:.1f} p99",
        f"  {'Location':<12} {'import':>8} {'index':>7} {'1st req':>8} {'process':>8}  status  Azure SDK loaded",
        f"  {'':<12} {'ms':>8} {'ms':>7} {'ms':>8} {'ms':>8}",
    ]
    for location in ("File", "AppSettings", "Blob", "KeyVault"):
        entry = result.get(location)
        if entry is None:
            continue
        if "pending" in entry:
            lines.append(f"  {location:<12} {entry['pending']}")
            continue
        sdk_import = ", ".join(entry["azure_sdk_at_import"]) or "none"
        sdk_after = ", ".join(entry["azure_sdk_after_first_request"]) or "none"
        lines.append(
            f"  {location:<12} {entry['import_ms']['median']:>8.1f} {entry['index_ms']['median']:>7.1f} "
            f"{entry['first_request_with_sdk_import_ms']['median']:>8.1f} {entry['process_wall_ms']['median']:>8.1f}  "
            f"{','.join(map(str, entry['first_status'])):>6}  at import: {sdk_import}; after 1st request: {sdk_after}"
        )
        if entry["harness_ms"]["median"] >= 1:
            lines.append(
                f"  {'':<12} 1st req = {entry['sdk_import_ms']['median']:.1f} ms importing the SDK (azure.identity, "
                f"azure.keyvault.secrets) + {entry['first_request_ms']['median']:.1f} ms request; "
                f"wiring the double ({entry['harness_ms']['median']:.1f} ms) and token acquisition not counted"
            )
    file_import = result.get("File", {}).get("import_ms", {}).get("median")
    if file_import is not None:
        verdict = "met" if file_import < result["import_target_ms"] else "NOT met"
        lines.append(f"  target: File import < {result['import_target_ms']} ms: {verdict} ({file_import:.1f} ms)")
    profile = result.get("File", {}).get("import_profile")
    if profile:
        lines.append("  slowest imports under function_app (File, -X importtime, cumulative ms):")
        lines += [f"    {'  ' * r['depth']}{r['module']:<40} {r['cumulative_ms']:7.1f}" for r in profile]
    return lines
