"""Run and exercise a service: serve and init-ca (service modules, imported only when run), simulate."""

from __future__ import annotations

import argparse
import datetime as dt
import errno
import hashlib
import itertools
import json
import os
import re
import secrets
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509

from xboot.cli.common import EXIT_OK, EXIT_SIMULATION_FAILURES, Output, UsageError, client_command, make_client
from xboot.device import load_key_file
from xboot.device.simulate import run_simulation
from xboot.pki import KEY_TYPES

if TYPE_CHECKING:
    from xboot.service.ca.devca import DevelopmentCa

DEFAULT_PORT = 7071
# The keys `xboot serve` enforces. Distinct from the clients' XBOOT_FUNCTION_KEY / XBOOT_ADMIN_KEY, so that an
# operator who exports a key for the CLI does not turn key checks on in a local server by accident.
SERVE_FUNCTION_KEY = "XBOOT_SERVE_FUNCTION_KEY"
SERVE_WORKERS = "XBOOT_SERVE_WORKERS"
SERVE_ADMIN_KEY = "XBOOT_SERVE_ADMIN_KEY"
SERVICE_EXTRAS = "xboot serve needs the service's packages: pip install 'xboot[service]' (or scripts/setup)"


def load_local_settings(directory: Path) -> int:
    """Values from local.settings.json, as `func start` applies them; real environment variables win."""
    path = directory / "local.settings.json"
    if not path.exists():
        return 0
    try:
        document = json.loads(path.read_text(encoding="utf-8-sig"))
        values = document.get("Values", {})
    except (ValueError, AttributeError):
        raise SystemExit(f"error: {path} is not valid JSON with a Values object") from None
    misplaced = sorted(set(document) - {"IsEncrypted", "Values", "Host", "ConnectionStrings"})
    if misplaced:  # func start ignores them too: say so instead of serving without them
        print(f"warning: {path}: {', '.join(misplaced[:5])} must be inside \"Values\" to take effect; ignored",
              file=sys.stderr)  # fmt: skip
    applied = 0
    for name, value in values.items():
        if name not in os.environ and value is not None:
            os.environ[name] = str(value)
            applied += 1
    return applied


def use_development_ca() -> DevelopmentCa:
    """With no Location configured, serve a development CA kept in the data folder, and say so loudly."""
    from xboot.service.ca.devca import DevelopmentCa, create_development_ca

    data = Path(os.environ.get("DataDirectory") or ".xboot-data")
    ca = DevelopmentCa(data / "dev-ca")
    if not ca.exists():
        create_development_ca(ca.directory)
    for name, value in ca.settings().items():
        os.environ[name] = value
    banner = "=" * 78
    print(
        f"{banner}\n WARNING: no Location is configured: serving a DEVELOPMENT CA from {ca.directory}/\n"
        f" Devices enrolled now chain to {ca.root_certificate}, which nothing in production trusts.\n"
        f" Configure Location (see README) for a real CA.\n{banner}",
        file=sys.stderr,
    )
    return ca


def _key(option: str | None, variable: str) -> str | None:
    """The option if given, else the environment variable; an empty value is kept so that Keys refuses it."""
    return option if option is not None else os.environ.get(variable)


def _checks_pass() -> bool:
    """The CA, the data store and enrollment authorization, checked before listening: one line each."""
    from xboot.service.health import run_checks
    from xboot.service.settings import Settings

    checks = run_checks(Settings.from_environ())
    for check in checks:
        if not check.ok:
            print(f"error: {check.name}: {check.message}", file=sys.stderr)
    if not all(check.ok for check in checks):
        return False
    ca, store, enrollment = (check.details for check in checks)
    source = f"Location {ca['location']}" if "location" in ca else f"Issuer {ca['issuer']}, upstream"
    print(f"CA ({source}): {ca['subject']}, SHA-256 {ca['sha256Fingerprint']}, valid until "
          f"{ca['notAfter']} ({ca['daysLeft']} days)", file=sys.stderr)  # fmt: skip
    print(f"data store: {store['kind']}", file=sys.stderr)
    print(f"enrollment authorization: {', '.join(enrollment['methods'])}", file=sys.stderr)
    if "warning" in enrollment:
        banner = "!" * 78
        print(f"{banner}\n WARNING: {enrollment['warning']}\n{banner}", file=sys.stderr)
    return True


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from xboot.service.serve import FunctionsWsgiApp, Keys, create_server, listen, load_routes
        from xboot.service.workers import run_workers
    except ImportError as error:
        print(f"error: {SERVICE_EXTRAS} ({error.name} is missing)", file=sys.stderr)
        return 1

    directory = Path(args.app_dir).resolve()
    missing = [name for name in ("function_app.py", "host.json") if not (directory / name).is_file()]
    if missing:  # before anything is written: a development CA must not land in the wrong folder
        print(f"error: {directory} is not the xboot app folder (no {' or '.join(missing)}); run from the "
              "repository root or pass --app-dir", file=sys.stderr)  # fmt: skip
        return 2
    os.chdir(directory)
    applied = load_local_settings(directory)
    if applied:
        print(f"applied {applied} values from local.settings.json", file=sys.stderr)
    if not os.environ.get("Location"):
        use_development_ca()
    table = load_routes(directory)
    if not _checks_pass():
        return 1
    try:
        keys = Keys(function=_key(args.function_key, SERVE_FUNCTION_KEY), admin=_key(args.admin_key, SERVE_ADMIN_KEY))
    except ValueError as error:
        print(f"error: {error} (--function-key/{SERVE_FUNCTION_KEY}, --admin-key/{SERVE_ADMIN_KEY})", file=sys.stderr)
        return 2
    workers = args.workers if args.workers is not None else _default_workers()
    if not 1 <= workers <= 64 or args.threads < 1:
        print("error: --workers must be 1-64 and --threads at least 1", file=sys.stderr)
        return 2
    try:
        sock = listen(args.host, args.port)
    except OSError as error:
        reason = "it is in use (another xboot serve or func start?)" if error.errno == errno.EADDRINUSE else (
            error.strerror or str(error))  # fmt: skip
        print(f"error: cannot listen on {args.host}:{args.port}: {reason}", file=sys.stderr)
        return 1
    port = sock.getsockname()[1]
    app = FunctionsWsgiApp(table, keys)
    for route in table.routes:
        methods = ",".join(sorted(route.methods)) if route.methods else "ALL"
        print(f"  {route.name}: [{methods}] http://{args.host}:{port}{route.path}", file=sys.stderr)
    print(keys.describe(), file=sys.stderr)
    shape = f"{workers} worker processes x {args.threads} threads" if workers > 1 else f"{args.threads} threads"
    print(f"xboot serving on http://{args.host}:{port} with {shape}", file=sys.stderr, flush=True)
    if workers == 1:
        create_server(app, sock, args.threads).run()
        return 0
    return run_workers(lambda: create_server(app, sock, args.threads).run(), workers)


def _default_workers() -> int:
    """One worker process per core (XBOOT_SERVE_WORKERS overrides); one where fork is missing."""
    configured = os.environ.get(SERVE_WORKERS)
    if configured:
        try:
            return int(configured)
        except ValueError:
            return 0  # refused with the range message
    if not hasattr(os, "fork"):
        return 1
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def cmd_reindex(args: argparse.Namespace) -> int:
    """Markers for audit records and reports stored by versions before the fleet indexes (once, after upgrading)."""
    try:
        from xboot.errors import XbootError
        from xboot.service.lifecycle.reindex import reindex
        from xboot.service.settings import Settings
        from xboot.service.storage import open_data_store
    except ImportError as error:
        print(f"error: {SERVICE_EXTRAS} ({error.name} is missing)", file=sys.stderr)
        return 1
    load_local_settings(Path(args.app_dir).resolve())
    try:
        done = reindex(open_data_store(Settings.from_environ()), dt.datetime.now(dt.UTC))
    except XbootError as error:
        print(f"error: {error.message}", file=sys.stderr)
        return 1
    print(f"reindexed {done.certificates} certificates and {done.reports} reports ({done.skipped} unreadable, skipped)")
    return 0


def cmd_init_ca(args: argparse.Namespace) -> int:
    from xboot.service.ca.devca import create_development_ca

    try:
        ca = create_development_ca(Path(args.directory).resolve(), args.key_type)  # settings that work anywhere
    except FileExistsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"development CA ({args.key_type}) written to {ca.directory}/: ca.cer ca.key (root), ia.cer ia.key (issuing)")
    print("settings for local.settings.json (Values) or the environment:")
    print(json.dumps(ca.settings(), indent=2))
    return 0


def _latency_table(latency: dict[str, dict[str, float]]) -> list[str]:
    lines = [f"  {'latency (ms)':<14}{'p50':>9}{'p90':>9}{'p99':>9}{'max':>9}"]
    for step, values in latency.items():
        lines.append(f"  {step:<14}" + "".join(f"{values[k]:>9.1f}" for k in ("p50", "p90", "p99", "max")))
    return lines


def cmd_simulate(args: argparse.Namespace, out: Output) -> int:
    if args.devices < 1 or args.concurrency < 1:
        raise UsageError("--devices and --concurrency must be at least 1")
    retries = itertools.count()  # next() is atomic under the GIL: safe from the worker threads
    client = make_client(args, out, on_retry=lambda notice: next(retries))
    prefix = args.prefix or f"sim-{secrets.token_hex(3)}-"
    interactive = not out.as_json and sys.stderr.isatty()
    every = max(1, args.devices // 10)

    def progress(done: int, total: int, failed: int) -> None:
        if out.as_json:
            return
        if interactive:
            print(f"\r... {done}/{total} devices done, {failed} failed", end="", file=sys.stderr, flush=True)
            if done == total:
                print(file=sys.stderr)
        elif done % every == 0 or done == total:
            print(f"... {done}/{total} devices done, {failed} failed", file=sys.stderr, flush=True)

    out.step(f"simulating {args.devices} devices ({prefix}...) against {client.base_url}, {args.concurrency} at a time")
    summary = run_simulation(
        client,
        args.devices,
        args.concurrency,
        prefix,
        key_type=args.key_type,
        upload=not args.enroll_only,
        on_progress=progress,
    )
    document = {**summary.as_dict(), "retries": next(retries), "prefix": prefix, "concurrency": args.concurrency}
    lines = [
        f"simulated {summary.devices} devices in {summary.wall_seconds:.1f} s "
        f"({document['devicesPerSecond']} devices/s, concurrency {args.concurrency}, {document['retries']} retries)",
        f"  succeeded {summary.succeeded}, failed {summary.failed}",
        *(f"  failed {count:>5}  {reason}" for reason, count in summary.failures.items()),
        *(_latency_table(summary.latency_ms) if summary.latency_ms else []),
    ]
    out.result(document, "\n".join(lines))
    return EXIT_OK if summary.failed == 0 else EXIT_SIMULATION_FAILURES


_DURATION = re.compile(r"([0-9]{1,6})([smhd]?)")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_TOKEN_SECONDS = 24 * 3600


def _duration(text: str) -> int:
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise UsageError(f"--ttl {text!r}: use seconds or a number with s, m, h or d (for example 1h)")
    seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if not 60 <= seconds <= MAX_TOKEN_SECONDS:
        raise UsageError("--ttl must be between 1 minute and 24 hours (the service refuses longer tokens)")
    return seconds


def cmd_token_create(args: argparse.Namespace, out: Output) -> int:
    """Mint a one-time enrollment token offline with the operator's key (EnrollmentTokenKeys holds its public key)."""
    try:
        import jwt
    except ImportError:
        raise UsageError("xboot token needs PyJWT: pip install 'xboot[service]'") from None
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = load_key_file(Path(args.key))
    if isinstance(key, ec.EllipticCurvePrivateKey):
        algorithm = {"secp256r1": "ES256", "secp384r1": "ES384"}.get(key.curve.name)
        if algorithm is None:
            raise UsageError("--key: EC keys must be P-256 or P-384")
    else:
        algorithm = "RS256"
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": args.registration_id,
        "aud": args.audience,
        "iat": now,
        "exp": now + _duration(args.ttl),
        "jti": secrets.token_urlsafe(16),
    }
    if args.csr:
        csr = x509.load_pem_x509_csr(Path(args.csr).read_bytes())
        spki = csr.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        claims["sha"] = hashlib.sha256(spki).hexdigest()
    headers = {"kid": args.kid} if args.kid else None
    token = jwt.encode(claims, key, algorithm=algorithm, headers=headers)
    out.result({"token": token, "claims": claims}, token)
    return EXIT_OK


def add_commands(
    commands: Any, network: argparse.ArgumentParser, code: argparse.ArgumentParser, as_json: argparse.ArgumentParser
) -> None:
    token = commands.add_parser("token", help="one-time enrollment tokens (EnrollmentAuthorization Token)")
    token_actions = token.add_subparsers(dest="action", required=True)
    create = token_actions.add_parser("create", parents=[as_json], help="mint a token for one registration ID")
    create.add_argument("--key", required=True, help="the operator's private key (EC P-256/P-384 or RSA), PEM")
    create.add_argument("--registration-id", required=True, help="the device the token enrolls (sub)")
    create.add_argument("--ttl", default="1h", help="lifetime: seconds or 30m, 1h, 1d (default 1h, at most 24h)")
    create.add_argument("--audience", default="xboot", help="aud: the service's EnrollmentTokenAudience")
    create.add_argument("--kid", help="key id, when EnrollmentTokenKeys is a JWKS with several keys")
    create.add_argument("--csr", help="bind the token to this CSR's key (PEM): the sha claim")
    create.set_defaults(handler=client_command(cmd_token_create))

    serve = commands.add_parser("serve", help="serve function_app.py's routes locally (like func start)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    serve.add_argument("--threads", type=int, default=8, help="threads per worker process (default 8)")
    serve.add_argument(
        "--workers",
        type=int,
        default=None,
        help=f"worker processes sharing the port (default: one per core, or {SERVE_WORKERS})",
    )
    serve.add_argument("--app-dir", default=".", help="folder holding function_app.py and host.json")
    serve.add_argument(
        "--function-key",
        help=f"require this key on FUNCTION routes (?code= or x-functions-key; env {SERVE_FUNCTION_KEY})",
    )
    serve.add_argument(
        "--admin-key", help=f"require this key on ADMIN routes, also valid on FUNCTION routes (env {SERVE_ADMIN_KEY})"
    )
    serve.set_defaults(handler=cmd_serve)

    reindex = commands.add_parser(
        "reindex", help="after upgrading: index audit records and reports stored before the fleet-wide listings"
    )
    reindex.add_argument(
        "--app-dir", default=".", help="folder holding local.settings.json (the data store's settings)"
    )
    reindex.set_defaults(handler=cmd_reindex)

    init_ca = commands.add_parser("init-ca", help="create a development root and issuing CA")
    init_ca.add_argument("directory", help="folder to write ca.cer, ca.key, ia.cer, ia.key into")
    init_ca.add_argument("--key-type", choices=KEY_TYPES, default="ec-p256", help="CA key type (default ec-p256)")
    init_ca.set_defaults(handler=cmd_init_ca)

    simulate = commands.add_parser(
        "simulate", parents=[network, code, as_json], help="enroll many devices and upload a signed report from each"
    )
    simulate.add_argument("--devices", type=int, default=10, help="how many devices (default 10)")
    simulate.add_argument("--concurrency", type=int, default=4, help="devices at a time (default 4)")
    simulate.add_argument("--key-type", choices=KEY_TYPES, default="ec-p256", help="device keys (default ec-p256)")
    simulate.add_argument("--prefix", help="registration ID prefix (default sim-<random>-)")
    simulate.add_argument("--enroll-only", action="store_true", help="skip signing and uploading reports")
    simulate.set_defaults(handler=client_command(cmd_simulate))
