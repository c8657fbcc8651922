"""Part 10, fleet scale: every per-request cost as the data store holds N devices, reports and revocations.

`python -m bench scale` seeds N audit records (with their serial and expiry markers), N reports (10% of
them from one gateway, the one listed; the rest over N/10 gateways, received over 30 days) and N
revocations (the compacted snapshot the service would have written, plus its change log's hour), for N =
1k, 10k, 100k on the File store (on disk) and 1k, 10k on Blob (Azurite; `XBOOT_BENCH_BLOB_MAX=100000` adds
100k). Seeding writes the stores' own formats through the store interface without a flush per object (File) or
with 32 threads (Blob).

Azurite runs with `--inMemoryPersistence`; it still slows down as it fills (about 330 puts/s at first, ~40
once it holds ~50k objects, with its node process CPU-bound), so seeding Blob 10k takes about 50 minutes.
The first row is a floor measured in the same run: one bare store call (a small listing) at that
size, so that the emulator's own growth can be told from the service's; the full listing has its own floor
(a bare read of each report it returned). After each timed figure one more call is counted: the store calls it
made, the keys its listings returned and, on Blob, the HTTP requests the SDK sent. Those counts are what the
design fixes (O(1) or O(page) per request); times also carry the store's and the file system's own growth.

Then, through the registered functions in process: enroll, report upload, the first and the next page of
a gateway's reports, a full listing of that gateway per report, revoke by serial, the fleet's certificates
expiring within 30 days (first page), a revocation-list refresh after one change, a cold load (and its
reads), and a CRL build with its size. Each figure with its growth factor from the smallest N.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import secrets
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import azure.functions as func

from bench.backends import azurite_or_reason, counted_blob_requests, fresh_azure_caches
from bench.issuance import app_environment
from bench.material import make_ca, make_csrs
from bench.reports import FORM_BOUNDARY, _form, _make_reports

SIZES = (1_000, 10_000, 100_000)
QUICK_SIZES = (1_000, 10_000)
SAMPLES = 15
BIG_GATEWAY = "gw-big"
FIGURES = (
    ("store_read", "floor: one bare store call, a small listing (µs)"),
    ("enroll", "enroll (µs)"),
    ("report_upload", "report upload (µs)"),
    ("first_page", "first report page (µs)"),
    ("next_page", "next report page (µs)"),
    ("listing_per_item", "full listing, per report (µs)"),
    ("listing_read_floor", "  floor: bare read of each listed report (µs)"),
    ("revoke_by_serial", "revoke by serial (µs)"),
    ("expiring_page", "certificates expiring in 30 d, page (µs)"),
    ("refresh", "revocation refresh after a change (µs)"),
    ("cold_load", "revocation cold load (µs)"),
    ("cold_load_reads", "revocation cold load (store calls)"),
    ("crl_build", "CRL build (µs)"),
    ("crl_bytes", "CRL size (bytes)"),
)
PER_REQUEST = ("enroll", "report_upload", "first_page", "next_page", "listing_per_item", "revoke_by_serial",
               "expiring_page", "refresh", "cold_load_reads")  # fmt: skip


def _routes() -> Any:
    import function_app
    from xboot.service.serve import RouteTable

    return RouteTable.from_app(function_app.app)


def _call(table: Any, method: str, path: str, body: bytes = b"", params: dict[str, str] | None = None,
          headers: dict[str, str] | None = None) -> func.HttpResponse:  # fmt: skip
    route, route_params, _ = table.match(method, path)
    request = func.HttpRequest(method, f"http://localhost{path}", headers=headers or {}, params=params or {},
                               route_params=route_params or {}, body=body)  # fmt: skip
    response = route.function(request)
    if response.status_code >= 300:
        raise RuntimeError(f"{method} {path}: {response.status_code} {response.get_body()[:300]!r}")
    return response


def _timed(operation: Callable[[], object], samples: int = SAMPLES) -> float:
    """Median µs over `samples` calls, after one warm-up call."""
    operation()
    times = []
    for _ in range(samples):
        began = time.perf_counter_ns()
        operation()
        times.append(time.perf_counter_ns() - began)
    return statistics.median(times) / 1000


_STORE_CALLS = ("create", "replace", "read", "delete", "list", "page", "folder_version")


@contextlib.contextmanager
def _counting(store: Any) -> Iterator[dict[str, int]]:
    """Calls into the store's interface and keys its listings return, while the block runs."""
    counts = {"calls": 0, "keys": 0}
    kind = type(store)
    real = {name: getattr(kind, name) for name in _STORE_CALLS}

    def counted(name: str) -> Callable[..., Any]:
        def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            counts["calls"] += 1
            result = real[name](self, *args, **kwargs)
            if name == "list":
                counts["keys"] += len(result)
            elif name == "page":
                counts["keys"] += len(result.keys)
            return result

        return call

    for name in _STORE_CALLS:
        setattr(kind, name, counted(name))
    try:
        yield counts
    finally:
        for name, method in real.items():
            setattr(kind, name, method)


def _seed(store: Any, n: int, certificate_pem: str, ca_fingerprint: str, threads: int) -> list[str]:
    """N records of each kind in the stores' formats; the seeded serials."""
    from xboot.service.lifecycle import revocation
    from xboot.service.lifecycle.audit import audit_key, expiry_key, serial_prefix
    from xboot.service.reports.store import index_keys, record_key

    now = dt.datetime.now(dt.UTC)
    writes: list[tuple[str, bytes]] = []
    serials = []
    for i in range(n):
        serial = secrets.token_hex(16).upper().lstrip("0")
        registration_id = f"seed-{i:07d}"
        not_after = now + dt.timedelta(minutes=(i * 525_600) // n)  # spread over the next year
        record = {"registrationId": registration_id, "serialNumber": serial, "sha256Fingerprint": "00",
                  "subject": f"CN={registration_id}", "issuer": "CN=bench", "issuerSha256Fingerprint": ca_fingerprint,
                  "issuedBy": "Local", "authorization": "FunctionKey", "notBefore": now.isoformat(),
                  "notAfter": not_after.isoformat(), "issuedAt": now.isoformat(),
                  "certificate": certificate_pem}  # fmt: skip
        writes += [
            (f"{serial_prefix(serial)}{registration_id}", b""),
            (expiry_key(not_after, serial, registration_id), b""),
            (audit_key(registration_id, serial), json.dumps(record).encode()),
        ]
        serials.append(serial)
        gateway = BIG_GATEWAY if i % 10 == 0 else f"gw-{i % max(1, n // 10):06d}"
        received = now - dt.timedelta(seconds=(i * 2_592_000) // n + 1)
        report = {"id": hashlib.sha256(f"r{i}".encode()).hexdigest()[:32], "kind": "system", "gatewayId": gateway,
                  "receivedAt": received.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                  "verification": {}, "report": {"gatewayId": gateway}, "signedMessage": ""}  # fmt: skip
        writes += [(k, b"") for k in index_keys(report)] + [
            (record_key("system", report["id"]), json.dumps(report).encode())
        ]
    entries = [
        revocation.Revocation(
            id=revocation.new_id(now - dt.timedelta(days=1, seconds=i)),
            kind="serial",
            value=f"{0xA0000000 + i:X}",
            reason="keyCompromise",
            revoked_at=now - dt.timedelta(days=1),
            serial_numbers=(f"{0xA0000000 + i:X}",),
            issuer=ca_fingerprint,
            not_after=now + dt.timedelta(days=200),
        )
        for i in range(n)
    ]
    state = revocation._State({e.id: e for e in entries}, set(), {}, now - revocation.LOOKBACK)
    writes.append((revocation.SNAPSHOT, json.dumps(state.to_json()).encode()))
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda item: store.create(item[0], item[1], flush=False), writes, chunksize=64))
    if hasattr(store, "_syncfs"):
        store._syncfs()  # what the seeding wrote, on disk before timing starts
    return serials


def _measure(table: Any, n: int, serials: list[str], csrs: list[Any], bodies: Iterator[bytes],
             http_calls: Counter[str] | None) -> dict[str, float]:  # fmt: skip
    from xboot.service.ca import crl
    from xboot.service.ca.signer import load_signer
    from xboot.service.lifecycle import revocation
    from xboot.service.lifecycle.audit import serial_prefix
    from xboot.service.reports.store import record_key
    from xboot.service.settings import Settings
    from xboot.service.storage import open_data_store

    figures: dict[str, float] = {}
    pool = iter(csrs)
    store = open_data_store(Settings.from_environ())

    @contextlib.contextmanager
    def counted(name: str, items: Callable[[], int] = lambda: 1) -> Iterator[None]:
        """Store calls, keys listed and (Blob) HTTP requests while the block runs, per item it handled."""
        if http_calls is not None:
            http_calls.clear()
        with _counting(store) as counts:
            yield
        per = max(1, items())
        figures[f"{name}.calls"] = counts["calls"] if per == 1 else counts["calls"] / per
        figures[f"{name}.keys"] = counts["keys"] if per == 1 else counts["keys"] / per
        if http_calls is not None:
            total = sum(http_calls.values())
            figures[f"{name}.http"] = total if per == 1 else total / per

    def measure(name: str, operation: Callable[[], object]) -> None:
        """Its median time, then one more call counted."""
        figures[name] = _timed(operation)
        with counted(name):
            operation()

    known = iter(f"{serial_prefix(s)}" for s in serials)
    measure("store_read", lambda: store.list(next(known)))  # the emulator's own cost at this size

    def enroll() -> None:
        csr = next(pool)
        _call(
            table,
            "POST",
            "/api/certificate",
            json.dumps({"RegistrationId": csr.registration_id, "Csr": csr.b64}).encode(),
        )

    measure("enroll", enroll)
    form = {"Content-Type": f"multipart/form-data; boundary={FORM_BOUNDARY}"}
    measure("report_upload", lambda: _call(table, "POST", "/api/install/v1/system-reports", next(bodies), headers=form))
    reports = "/api/install/v1/system-reports"
    first = json.loads(_call(table, "GET", reports, params={"gatewayId": BIG_GATEWAY}).get_body())
    measure("first_page", lambda: _call(table, "GET", reports, params={"gatewayId": BIG_GATEWAY}))
    following = {"gatewayId": BIG_GATEWAY, "continuationToken": first["continuationToken"]}
    measure("next_page", lambda: _call(table, "GET", reports, params=following))
    ids: list[str] = []
    listed, token, began = 0, None, time.perf_counter_ns()
    with counted("listing_per_item", lambda: listed):
        while True:
            query = {"gatewayId": BIG_GATEWAY, "limit": "100", **({"continuationToken": token} if token else {})}
            page = json.loads(_call(table, "GET", reports, params=query).get_body())
            listed += len(page["reports"])
            ids += [r["id"] for r in page["reports"]]
            token = page["continuationToken"]
            if token is None:
                break
    figures["listing_per_item"] = (time.perf_counter_ns() - began) / 1000 / max(1, listed)
    began = time.perf_counter_ns()
    for identifier in ids:  # the listing's own floor: a bare read of each record it returned, in its order
        store.read(record_key("system", identifier))
    figures["listing_read_floor"] = (time.perf_counter_ns() - began) / 1000 / max(1, len(ids))
    victims = iter(serials[1::7])
    revocations = "/api/mgmt/v1/revocations"

    def revoke() -> None:
        _call(table, "POST", revocations, json.dumps({"serialNumber": next(victims)}).encode())

    measure("revoke_by_serial", revoke)
    expiring = {"expiringWithinDays": "30", "limit": "100"}
    measure("expiring_page", lambda: _call(table, "GET", "/api/mgmt/v1/certificates", params=expiring))
    settings = Settings.from_environ()

    def refresh() -> None:
        _call(table, "POST", revocations, json.dumps({"serialNumber": next(victims)}).encode())  # one change

    revocation.load_revocations(settings, fresh=True)
    samples = []
    for _ in range(5):
        refresh()
        revocation._views.get(store).expires = 0.0  # another instance's change: this one refreshes at its TTL
        began = time.perf_counter_ns()
        revocation.load_revocations(settings)
        samples.append(time.perf_counter_ns() - began)
    figures["refresh"] = statistics.median(samples) / 1000
    refresh()
    revocation._views.get(store).expires = 0.0
    with counted("refresh"):
        revocation.load_revocations(settings)
    with _counting(store) as counts:
        revocation._views.clear()
        began = time.perf_counter_ns()
        listing = revocation.load_revocations(settings)
        figures["cold_load"] = (time.perf_counter_ns() - began) / 1000
    figures["cold_load_reads"] = counts["calls"]
    signer = load_signer(settings)
    now = dt.datetime.now(dt.UTC)
    began = time.perf_counter_ns()
    built = crl.build_crl(signer, listing, {}, 2, now, now + dt.timedelta(hours=24), now)
    figures["crl_build"] = (time.perf_counter_ns() - began) / 1000
    from cryptography.hazmat.primitives.serialization import Encoding

    figures["crl_bytes"] = len(built.public_bytes(Encoding.DER))
    return figures


def run(work: Path, quick: bool) -> dict[str, Any]:
    from xboot.service.ca.signer import load_signer
    from xboot.service.settings import Settings
    from xboot.service.storage import open_data_store

    sizes = QUICK_SIZES if quick else SIZES
    blob_max = int(os.environ.get("XBOOT_BENCH_BLOB_MAX", "10000"))
    ca = make_ca(work / "ca", "ec-p256")
    csrs = make_csrs(work / "csr", "ec-p256", (SAMPLES + 2) * len(sizes) * 2)
    pki, messages = _make_reports(work / "reports", (SAMPLES + 2) * len(sizes) * 2)
    bodies = iter([_form(m) for m in messages])
    certificate_pem = ca.certificate.read_text()
    result: dict[str, Any] = {"sizes": list(sizes), "stores": {}}
    table = _routes()
    azurite, reason = azurite_or_reason(work / "azurite", in_memory=True)
    stores = os.environ.get("XBOOT_BENCH_SCALE_STORES", "File,Blob").split(",")
    try:
        for kind in [k for k in ("File", "Blob") if k in stores]:
            rows: dict[str, dict[str, float]] = {}
            for number, n in enumerate(sizes):
                if kind == "Blob" and (azurite is None or n > blob_max):
                    continue
                settings = {**ca.settings(), "TrustedFingerprints": pki.fingerprint("ca_root"),
                            "RevocationCacheSeconds": "30", "IdentityLock": "true"}  # fmt: skip
                if kind == "File":
                    settings["DataDirectory"] = str(work / f"file-{n}")
                else:
                    settings.update(DataStore="Blob", DataBlobConnectionString=azurite.connection_string,
                                    DataBlobContainer=f"scale{n}")  # fmt: skip
                requests = counted_blob_requests() if kind == "Blob" else contextlib.nullcontext(None)
                with app_environment(settings), requests as http_calls, fresh_azure_caches():
                    from xboot.service.lifecycle import revocation

                    revocation._views.clear()
                    store = open_data_store(Settings.from_environ())
                    fingerprint = load_signer(Settings.from_environ()).fingerprint
                    began = time.monotonic()
                    serials = _seed(store, n, certificate_pem, fingerprint, 4 if kind == "File" else 32)
                    seeded = time.monotonic() - began
                    offset = (number * 2 + (kind == "Blob")) * (SAMPLES + 2)
                    rows[str(n)] = {
                        **_measure(table, n, serials, csrs[offset:], bodies, http_calls),
                        "seed_seconds": round(seeded, 1),
                    }
                print(f"  scale {kind} {n}: seeded in {seeded:.0f} s", flush=True)
            result["stores"][kind] = rows
    finally:
        if azurite is not None:
            azurite.stop()
    if azurite is None:
        result["blob_pending"] = reason
    return result


def table(result: dict[str, Any]) -> list[str]:
    lines = []
    for kind, rows in result["stores"].items():
        if not rows:
            continue
        sizes = list(rows)
        smallest = rows[sizes[0]]
        lines.append(
            f"{kind} store: " + ", ".join(f"N={int(n):,} seeded in {rows[n]['seed_seconds']} s" for n in sizes)
        )
        header = f"  {'':<44}" + "".join(f"{'N=' + format(int(n), ','):>14}" for n in sizes) + f"{'growth':>10}"
        lines.append(header)
        for name, label in FIGURES:
            values = [rows[n][name] for n in sizes]
            growth = values[-1] / smallest[name] if smallest[name] else float("nan")
            mark = "" if name not in PER_REQUEST else ("  ok" if growth <= 1.5 else "  > 1.5x")
            lines.append(f"  {label:<44}" + "".join(f"{v:>14,.0f}" for v in values) + f"{growth:>9.2f}x{mark}")
        lines.append("  store calls / keys listed" + (" / Blob requests" if "enroll.http" in smallest else "")
                     + " per request, counted on one more call:")  # fmt: skip
        for name, label in FIGURES:
            if f"{name}.calls" not in smallest:
                continue
            cells, http = [], f"{name}.http" in smallest
            for n in sizes:
                row = rows[n]
                parts = [row[f"{name}.calls"], row[f"{name}.keys"], *([row[f"{name}.http"]] if http else [])]
                cells.append(" / ".join(f"{v:g}" if v == int(v) else f"{v:.2f}" for v in parts))
            lines.append(f"    {label.split(' (')[0]:<42}" + "".join(f"{c:>18}" for c in cells))
    if "blob_pending" in result:
        lines.append(f"Blob: {result['blob_pending']}")
    return lines
