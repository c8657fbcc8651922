"""`python -m bench [PART ...] [--quick] [--json PATH] [--only PARTS]`: run the benchmarks, print a table, write JSON.

Parts: issuance (1, 2), reports (3), http (4), coldstart (5), backends (6), authorization (7),
upstream (8), durability (9); scale (10) only when named (`python -m bench scale`). See bench/README.md.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.timing import loadavg, machine

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_JSON = ROOT / "bench" / "results" / "latest.json"
PARTS = {
    "issuance": ("1-2. Issuance per certificate: in-process vs floor vs openssl CLI", "bench.issuance"),
    "reports": ("3. Report verification per report: in-process vs floor vs openssl cms -verify", "bench.reports"),
    "http": ("4. HTTP side by side: xboot serve and cfssl serve, wrk, same CA and CSR", "bench.http_load"),
    "coldstart": ("5. Cold start: fresh process per sample", "bench.coldstart"),
    "backends": ("6. Backend calls per 1,000 issuances", "bench.backends"),
    "authorization": ("7. Enrollment authorization: extra cost per enrollment, by method", "bench.authorization"),
    "upstream": ("8. Upstream CAs: one enrollment through each Issuer vs signing locally", "bench.upstream"),
    "durability": ("9. Durable File-store writes on disk: DataSync file vs group", "bench.durability"),
    "scale": ("10. Fleet scale: per-request costs at N = 1k, 10k, 100k stored items, File and Blob", "bench.scale"),
}
DEFAULT_PARTS = [p for p in PARTS if p != "scale"]  # scale seeds 100k items per store: run it on its own


def _verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def targets(parts: dict[str, Any]) -> list[str]:
    """The issue's targets, read off this run's results."""
    lines = []
    issuance = parts.get("issuance", {}).get("result", [])
    for scenario in issuance:
        if scenario["device"] != "ec-p256":
            continue
        without, with_disk = scenario["ratios"]["service_null_store_vs_floor"], scenario["ratios"]["service_vs_floor"]
        lines.append(
            f"  issuance <= 1.3x floor, {scenario['ca']} CA: audit not written {without:.2f}x "
            f"({_verdict(without <= 1.3)}); audit on disk {with_disk:.2f}x ({_verdict(with_disk <= 1.3)})"
        )
    reports = parts.get("reports", {}).get("result", {})
    if "ratios" in reports:
        speedup = reports["ratios"]["openssl_cli_vs_service"]
        lines.append(
            f"  report verification >= 4x faster than openssl cms -verify: {speedup:.2f}x ({_verdict(speedup >= 4)})"
        )
    http = parts.get("http", {}).get("result", {})
    if "xboot enroll" in http:
        levels = http["xboot enroll"] + http["xboot report upload"]
        errors = sum(level["errors"] for level in levels) + http["server_log_tracebacks"]
        lines.append(f"  HTTP at 1/8/64 clients with zero errors: {errors} errors ({_verdict(errors == 0)})")
        for level in http["xboot enroll"]:
            if "ratio_to_cfssl" in level and level["clients"] > 1:
                ratio = level["ratio_to_cfssl"]
                lines.append(f"  enrollment req/s >= cfssl serve at {level['clients']} clients: {ratio:.2f}x "
                             f"({_verdict(ratio >= 1)})")  # fmt: skip
    cold = parts.get("coldstart", {}).get("result", {})
    if "import_ms" in cold.get("File", {}):
        median = cold["File"]["import_ms"]["median"]
        sdk = cold["File"]["azure_sdk_at_import"] + cold["File"]["azure_sdk_after_first_request"]
        lines.append(
            f"  File: import function_app < 300 ms and no Azure SDK: {median:.1f} ms, SDK {sdk or 'none'} "
            f"({_verdict(median < 300 and not sdk)})"
        )
    return ["", "== Targets ==", *lines] if lines else []


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations (about a minute)")
    parser.add_argument(
        "--json", type=Path, default=DEFAULT_JSON, help="where to write results (default bench/results/latest.json)"
    )
    parser.add_argument("parts", nargs="*", help="parts to run, e.g. `scale` (the same as --only)")
    parser.add_argument("--only", default=None, help="comma-separated parts (default: all but scale)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    chosen = ",".join(args.parts) or args.only or ",".join(DEFAULT_PARTS)
    selected = [p.strip() for p in chosen.split(",") if p.strip()]
    unknown = [p for p in selected if p not in PARTS]
    if unknown:
        print(f"unknown part(s): {', '.join(unknown)}; choose from {', '.join(PARTS)}", file=sys.stderr)
        return 2
    document: dict[str, Any] = {
        "mode": "quick" if args.quick else "full",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "loadavg_start": loadavg(),
        "machine": machine(),
        "parts": {},
    }
    lines: list[str] = []
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="xboot-bench-") as scratch:
        for name in selected:
            title, module_name = PARTS[name]
            module = importlib.import_module(module_name)
            print(f"running {name} ...", file=sys.stderr, flush=True)
            part_began = time.monotonic()
            work = Path(scratch) / name
            work.mkdir()
            result = module.run(work, args.quick)
            document["parts"][name] = {"seconds": round(time.monotonic() - part_began, 1), "result": result}
            lines += ["", f"== {title} ==", *module.table(result)]
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(document, indent=1) + "\n")  # kept should a later part fail
    document["loadavg_end"] = loadavg()
    document["seconds"] = round(time.monotonic() - began, 1)
    m = document["machine"]
    header = [
        f"xboot benchmarks ({document['mode']}), {document['started']}, {document['seconds']} s",
        f"machine: {m['cpu_model']}, {m['cores']} cores; Python {m['python']}; cryptography {m['cryptography']} "
        f"({m['cryptography_openssl']}); CLI {m['openssl_cli']}",
        f"loadavg (1/5/15 min): start {document['loadavg_start']}, end {document['loadavg_end']}",
        "times in microseconds: median, p99; ratios are of medians",
    ]
    print("\n".join(header + lines + targets(document["parts"])))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(document, indent=1) + "\n")
    print(f"\nwrote {args.json}", file=sys.stderr)
    return 0
