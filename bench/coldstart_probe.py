"""One cold start, run by bench/coldstart.py in a fresh interpreter: prints one JSON line.

Usage: python -P bench/coldstart_probe.py BODY_FILE LOCATION, with the repository on PYTHONPATH and
the Location's settings in the environment.
Nothing is imported before the clock starts but `sys` and `time`, which the interpreter has
already loaded. For KeyVault the Key Vault double is wired in after the import and before the
first request; that wiring is timed apart as harness_ms, and the SDK modules the first request
would import are imported (and timed, as sdk_import_ms) before it.
"""

import sys
import time

started = time.perf_counter()
import function_app  # noqa: E402 - the import is what is timed

imported = time.perf_counter()


def azure_sdk_modules() -> list[str]:
    """Azure SDK packages loaded (azure.functions is the Functions programming model, not an SDK)."""
    return sorted(
        {".".join(m.split(".")[:2]) for m in sys.modules if m.startswith("azure.") and m != "azure.functions"}
        - {"azure.functions"}
    )


def main() -> None:
    import json
    import os
    from pathlib import Path

    sdk_at_import = azure_sdk_modules()
    import azure.functions as func

    from xboot.service.serve import RouteTable

    index_began = time.perf_counter()
    route, _, _ = RouteTable.from_app(function_app.app).match("POST", "/api/certificate")
    indexed = time.perf_counter()
    sdk_import = 0.0
    harness_began = time.perf_counter()
    if sys.argv[2] == "KeyVault":
        # What the first request imports on its own; timed here because the wiring below would import it first.
        # azure.identity is included although the double's stub credential never needs it: a real first request does.
        sdk_began = time.perf_counter()
        import azure.identity
        import azure.keyvault.secrets  # noqa: F401

        import xboot.service.ca.locations.keyvault  # noqa: F401

        sdk_import = time.perf_counter() - sdk_began
        harness_began = time.perf_counter()
        from bench.backends import keyvault_double
        from xboot.service.ca.devca import DevelopmentCa

        context = keyvault_double(DevelopmentCa(Path(os.environ["XBOOT_BENCH_CA_DIR"])), exportable=True)
        context.__enter__()
    harness = time.perf_counter() - harness_began
    body = Path(sys.argv[1]).read_bytes()
    request = func.HttpRequest("POST", "http://localhost/api/certificate", headers={}, params={}, body=body)
    assert route is not None
    request_began = time.perf_counter()
    response = route.function(request)
    answered = time.perf_counter()
    if response.status_code != 200:
        print(response.get_body().decode(errors="replace"), file=sys.stderr)
    sample = {
        "import_ms": (imported - started) * 1000,
        "index_ms": (indexed - index_began) * 1000,
        "harness_ms": harness * 1000,
        "sdk_import_ms": sdk_import * 1000,
        "first_request_ms": (answered - request_began) * 1000,
        "status": response.status_code,
        "sdk_at_import": sdk_at_import,
        "sdk_after_request": azure_sdk_modules(),
    }
    print(json.dumps(sample))


main()
