"""The `xboot` command: run the service locally, make a development CA, and be a device or an operator.

The device and operator commands are a thin layer over `xboot.device.client`: they parse
options, show progress on stderr, print a result (human text, or JSON with --json)
and turn errors into the documented exit codes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import logging
import os
import secrets
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from xboot.device import (
    ClientError,
    DeviceFiles,
    DeviceResult,
    RetryNotice,
    RetryPolicy,
    ServerRefused,
    ServerUnavailable,
    VerificationFailed,
    XbootClient,
    enroll_device,
    is_loopback_or_https,
    load_certificate_file,
    load_key_file,
    normalize_fingerprint,
    renew_device,
    split_service_url,
    write_atomically,
)
from xboot.device.simulate import run_simulation
from xboot.device.smime import sign_report
from xboot.pki import KEY_TYPES, sha256_fingerprint
from xboot.service.ca.devca import DevelopmentCa, create_development_ca

DEFAULT_PORT = 7071

# Exit codes of the device and operator commands (documented in the README).
EXIT_OK = 0
EXIT_LOCAL = 1  # a local problem: unreadable file, wrong key, existing identity, invalid report
EXIT_USAGE = 2  # bad command line (argparse's own code)
EXIT_REFUSED = 3  # the service refused the request (4xx other than 429)
EXIT_UNAVAILABLE = 4  # the service failed or was unreachable (5xx, 429, network, timeout) after retries
EXIT_VERIFICATION = 5  # the service's certificate does not match the key or does not chain
EXIT_SIMULATION_FAILURES = 6  # simulate: at least one device failed


def load_local_settings(directory: Path) -> int:
    """Values from local.settings.json, as `func start` applies them; real environment variables win."""
    path = directory / "local.settings.json"
    if not path.exists():
        return 0
    try:
        values = json.loads(path.read_text(encoding="utf-8-sig")).get("Values", {})
    except (ValueError, AttributeError):
        raise SystemExit(f"error: {path} is not valid JSON with a Values object") from None
    applied = 0
    for name, value in values.items():
        if name not in os.environ and value is not None:
            os.environ[name] = str(value)
            applied += 1
    return applied


def use_development_ca() -> DevelopmentCa:
    """With no Location configured, serve a development CA kept in the data folder, and say so loudly."""
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


def cmd_serve(args: argparse.Namespace) -> int:
    from xboot.service.serve import FunctionsWsgiApp, Keys, load_routes, run

    directory = Path(args.app_dir).resolve()
    os.chdir(directory)
    applied = load_local_settings(directory)
    if applied:
        print(f"applied {applied} values from local.settings.json", file=sys.stderr)
    if not os.environ.get("Location"):
        use_development_ca()
    table = load_routes(directory)
    keys = Keys(
        function=args.function_key or os.environ.get("XBOOT_FUNCTION_KEY"),
        admin=args.admin_key or os.environ.get("XBOOT_ADMIN_KEY"),
    )
    for route in table.routes:
        methods = ",".join(sorted(route.methods)) if route.methods else "ALL"
        print(f"  {route.name}: [{methods}] http://{args.host}:{args.port}{route.path}", file=sys.stderr)
    if keys.function is None and keys.admin is None:
        print(
            "auth levels are not enforced (like Core Tools); pass --function-key/--admin-key to enforce",
            file=sys.stderr,
        )
    print(f"xboot serving on http://{args.host}:{args.port} with {args.threads} threads", file=sys.stderr)
    run(FunctionsWsgiApp(table, keys), args.host, args.port, args.threads)
    return 0


def cmd_init_ca(args: argparse.Namespace) -> int:
    try:
        ca = create_development_ca(Path(args.directory), args.key_type)
    except FileExistsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"development CA ({args.key_type}) written to {ca.directory}/: ca.cer ca.key (root), ia.cer ia.key (issuing)")
    print("settings for local.settings.json (Values) or the environment:")
    print(json.dumps(ca.settings(), indent=2))
    return 0


class UsageError(Exception):
    """A missing option that argparse cannot check by itself (for example one that an env var may supply)."""


class Output:
    """Human text by default; with --json, one JSON document on stdout and no progress."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def step(self, message: str) -> None:
        if not self.as_json:
            print(f"... {message}", file=sys.stderr, flush=True)

    def warn(self, message: str) -> None:
        print(f"warning: {message}", file=sys.stderr, flush=True)

    def result(self, document: Any, text: str) -> None:
        print(json.dumps(document, indent=2) if self.as_json else text, flush=True)


def _utc(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _exit_code(error: Exception) -> int:
    if isinstance(error, UsageError):
        return EXIT_USAGE
    if isinstance(error, ServerRefused):
        return EXIT_REFUSED
    if isinstance(error, ServerUnavailable):
        return EXIT_UNAVAILABLE
    if isinstance(error, VerificationFailed):
        return EXIT_VERIFICATION
    return EXIT_LOCAL


def client_command(handler: Callable[[argparse.Namespace, Output], int]) -> Callable[[argparse.Namespace], int]:
    """Run a device/operator command: errors become a message (or JSON) and an exit code, never a traceback."""

    def run(args: argparse.Namespace) -> int:
        out = Output(args.json)
        try:
            return handler(args, out)
        except (ClientError, UsageError) as error:
            code = _exit_code(error)
            message = getattr(error, "message", str(error))
            if out.as_json:
                document = {"error": getattr(error, "code", None) or type(error).__name__, "message": message}
                document.update({"status": getattr(error, "status", None), "exitCode": code})
                print(json.dumps(document, indent=2))
            else:
                print(f"error: {message}", file=sys.stderr)
            return code

    return run


def _make_client(
    args: argparse.Namespace, out: Output, admin: bool = False, on_retry: Callable[[RetryNotice], None] | None = None
) -> XbootClient:
    """An XbootClient from --url/--code/--admin-key/--timeout/--retries; keys never printed."""
    if not args.url:
        raise UsageError("--url (or XBOOT_URL) is required")
    base, code_in_url = split_service_url(args.url)
    if not is_loopback_or_https(base):
        out.warn(f"{base} is plain HTTP: keys and certificates cross the network unencrypted")
    admin_key = getattr(args, "admin_key", None) or os.environ.get("XBOOT_ADMIN_KEY")
    if admin and not admin_key:
        raise UsageError("--admin-key (or XBOOT_ADMIN_KEY) is required for the admin API")
    function_key = getattr(args, "code", None) or code_in_url or os.environ.get("XBOOT_FUNCTION_KEY")

    def notice(n: RetryNotice) -> None:
        print(
            f"retry: {n.what}: {n.reason}; attempt {n.attempt} of {n.attempts}, next in {n.delay:.1f} s",
            file=sys.stderr,
            flush=True,
        )

    return XbootClient(
        base,
        function_key=function_key,
        admin_key=admin_key,
        timeout=args.timeout,
        retry=RetryPolicy(attempts=args.retries),
        on_retry=on_retry or notice,
    )


def _anchors(paths: list[str] | None) -> list[x509.Certificate] | None:
    if not paths:
        return None
    return [c for p in paths for c in load_certificate_file(Path(p))]


def _pfx_password(args: argparse.Namespace, wanted: bool) -> str | None:
    if not wanted:
        return None
    password = args.pfx_password or os.environ.get("XBOOT_PFX_PASSWORD")
    if not password:
        raise UsageError("device.pfx needs a password: --pfx-password or XBOOT_PFX_PASSWORD")
    return password


def _describe_identity(result: DeviceResult) -> tuple[dict[str, Any], str]:
    enrollment = result.enrollment
    assert enrollment is not None  # only called after an enrollment
    issuer = enrollment.certificate.issuer.rfc4514_string()
    document = {
        "registrationId": result.registration_id,
        "serialNumber": enrollment.serial_number,
        "notAfter": _utc(enrollment.not_after),
        "sha256Fingerprint": enrollment.fingerprint,
        "issuer": issuer,
        "directory": str(result.directory),
        "files": [str(p) for p in result.files],
    }
    text = (
        f"certificate {enrollment.serial_number} for {result.registration_id}, valid until "
        f"{_utc(enrollment.not_after)}\n  issued by {issuer}\n  SHA-256 {enrollment.fingerprint}\n"
        f"  wrote {', '.join(p.name for p in result.files)} in {result.directory}"
    )
    return document, text


def cmd_enroll(args: argparse.Namespace, out: Output) -> int:
    files = DeviceFiles(Path(args.out))
    replacing_pfx = args.force and files.pfx.exists()
    password = _pfx_password(args, args.pfx or args.pfx_password is not None or replacing_pfx)
    result = enroll_device(
        _make_client(args, out),
        files,
        args.registration_id,
        args.key_type,
        anchors=_anchors(args.root_ca) or (),
        pfx_password=password,
        force=args.force,
        on_step=out.step,
    )
    document, text = _describe_identity(result)
    out.result(document, "enrolled: " + text)
    return EXIT_OK


def cmd_renew(args: argparse.Namespace, out: Output) -> int:
    files = DeviceFiles(Path(args.out))
    password = _pfx_password(args, files.pfx.exists() or args.pfx_password is not None)
    result = renew_device(
        _make_client(args, out),
        files,
        within=dt.timedelta(days=args.within_days),
        force=args.force,
        rekey=args.rekey,
        key_type=args.key_type,
        anchors=_anchors(args.root_ca),
        pfx_password=password,
        on_step=out.step,
    )
    previous = _utc(result.previous_not_after)
    if result.enrollment is None:
        out.result(
            {"renewed": False, "registrationId": result.registration_id, "notAfter": previous},
            f"not renewing {result.registration_id}: valid until {previous}, more than {args.within_days} days away "
            "(--force renews now)",
        )
        return EXIT_OK
    document, text = _describe_identity(result)
    document.update({"renewed": True, "rekeyed": result.rekeyed, "previousNotAfter": previous})
    out.result(document, f"renewed{' with a new key' if result.rekeyed else ''}: {text} (previous files kept as .bak)")
    return EXIT_OK


def cmd_sign_report(args: argparse.Namespace, out: Output) -> int:
    device = DeviceFiles(Path(args.device)) if args.device else None
    cert = Path(args.cert) if args.cert else device and device.certificate
    key = Path(args.key) if args.key else device and device.key
    chain = Path(args.chain) if args.chain else device and device.chain
    if cert is None or key is None:
        raise UsageError("give --cert and --key (and --chain), or --device DIR")
    source = Path(args.report)
    try:
        data = source.read_bytes()
    except OSError as error:
        raise ClientError(f"cannot read {source}: {error.strerror}") from None
    try:
        document = json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError):
        document = None
    if not isinstance(document, dict):
        raise ClientError(f"{source} is not a UTF-8 JSON object: the service only accepts JSON reports")
    certificate = load_certificate_file(cert)[0]
    extra = load_certificate_file(chain) if args.chain or (chain is not None and chain.exists()) else []
    try:
        signed = sign_report(data, certificate, load_key_file(key), extra)
    except ValueError as error:
        raise ClientError(f"{key}: {error}") from None
    target = Path(args.out) if args.out else source.with_name(source.name + ".signed")
    write_atomically(target, signed, 0o644)
    signer = certificate.subject.rfc4514_string()
    out.result(
        {"report": str(source), "signed": str(target), "signer": signer, "chainCertificates": len(extra)},
        f"signed {source} as {signer} (+{len(extra)} chain certificates) -> {target}",
    )
    return EXIT_OK


def cmd_upload_report(args: argparse.Namespace, out: Output) -> int:
    source = Path(args.signed)
    try:
        signed = source.read_bytes()
    except OSError as error:
        raise ClientError(f"cannot read {source}: {error.strerror}") from None
    client = _make_client(args, out)
    out.step(f"uploading {source} as a {args.kind} report to {client.base_url}")
    answer = client.upload_report(signed, args.kind, source.name)
    detail = ""
    if isinstance(answer, dict) and answer.get("id"):
        detail = f" as {answer['id']}" + (" (already uploaded before)" if answer.get("duplicate") else "")
    out.result(
        {"uploaded": str(source), "kind": args.kind, "response": answer},
        f"{args.kind} report {source} accepted{detail}",
    )
    return EXIT_OK


def cmd_fingerprint(args: argparse.Namespace, out: Output) -> int:
    rows = [
        {"file": name, "subject": c.subject.rfc4514_string(), "sha256Fingerprint": sha256_fingerprint(c)}
        for name in args.certificates
        for c in load_certificate_file(Path(name))
    ]
    out.result(rows, "\n".join(row["sha256Fingerprint"] for row in rows))
    return EXIT_OK


def _wanted_fingerprints(args: argparse.Namespace) -> list[str]:
    wanted = [normalize_fingerprint(f) for f in args.fingerprints]
    wanted += [sha256_fingerprint(c) for name in args.cert or () for c in load_certificate_file(Path(name))]
    if not wanted:
        raise UsageError("give fingerprints and/or --cert FILE")
    return list(dict.fromkeys(wanted))


def cmd_trust(args: argparse.Namespace, out: Output) -> int:
    client = _make_client(args, out, admin=True)
    if args.action == "get":
        values = client.trusted_fingerprints()
    elif args.action == "set":
        values = client.set_trusted_fingerprints(_wanted_fingerprints(args))
    else:  # add: read, merge, write (the API only replaces the whole list)
        current = client.trusted_fingerprints()
        values = client.set_trusted_fingerprints(list(dict.fromkeys([*current, *_wanted_fingerprints(args)])))
    out.result({"value": values}, "\n".join(values) if values else "(no trusted fingerprints)")
    return EXIT_OK


def _revocation_line(entry: dict[str, Any]) -> str:
    known = f", device {entry['registrationId']}" if entry.get("registrationId") else ""
    serials = entry.get("serialNumbers") or []
    crl = f"{len(serials)} certificate(s) in the CRL" if serials else "not in the CRL"
    return (
        f"{entry.get('id')}  {entry.get('kind')} {entry.get('value')}  {entry.get('reason')}  {entry.get('revokedAt')}"
        f"  ({crl}{known})"
    )


def cmd_revoke(args: argparse.Namespace, out: Output) -> int:
    client = _make_client(args, out, admin=True)
    if args.list:
        entries = client.revocations()
        out.result(entries, "\n".join(_revocation_line(e) for e in entries) or "(nothing is revoked)")
        return EXIT_OK
    if args.cert:
        certificate = load_certificate_file(Path(args.cert))[0]
        selector, value = "certificate", certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")
    elif args.fingerprint:
        selector, value = "fingerprint", normalize_fingerprint(args.fingerprint)
    elif args.serial:
        selector, value = "serialNumber", args.serial
    else:
        selector, value = "registrationId", args.registration_id
    entry = client.revoke(selector, value, args.reason)
    if entry.get("kind") == "serial" and not entry.get("registrationId"):
        out.warn(
            f"serial {entry.get('value')} is not in the issuance records: it is in the CRL, but no device is known"
        )
    if entry.get("kind") == "fingerprint" and not entry.get("serialNumbers"):
        out.warn("not a certificate this CA issued (or given only by fingerprint): refused wherever it is presented, "
                 "but not in the CRL; use --serial or --cert for one of this CA's certificates")  # fmt: skip
    state = "already revoked" if entry.get("duplicate") else "revoked"
    out.result(entry, f"{state}: {_revocation_line(entry)}")
    return EXIT_OK


def cmd_unrevoke(args: argparse.Namespace, out: Output) -> int:
    entry = _make_client(args, out, admin=True).remove_revocation(args.id)
    out.result(entry, f"hold removed: {entry.get('kind')} {entry.get('value')} is no longer revoked")
    return EXIT_OK


def _certificate_state(item: dict[str, Any]) -> str:
    if item.get("revoked"):
        return f"revoked ({(item.get('revocation') or {}).get('reason')})"
    return "expired" if item.get("expired") else "valid"


def cmd_certificates(args: argparse.Namespace, out: Output) -> int:
    document = _make_client(args, out, admin=True).certificates(args.registration_id)
    items = sorted(document["certificates"], key=lambda c: str(c.get("issuedAt")), reverse=True)
    lines = [f"no certificates recorded for {args.registration_id}"]
    if items:
        lines = [f"{'serial':<34} {'not after':<21} {'state':<28} SHA-256 fingerprint"]
        lines += [
            f"{c.get('serialNumber')!s:<34} {str(c.get('notAfter'))[:19]:<21} {_certificate_state(c):<28} "
            f"{c.get('sha256Fingerprint')}"
            for c in items
        ]
    held = document.get("registrationRevoked")
    if held:
        lines.append(f"registration {args.registration_id} is revoked ({held.get('reason')}): it cannot enroll")
    out.result({**document, "certificates": items}, "\n".join(lines))
    return EXIT_OK


def cmd_crl(args: argparse.Namespace, out: Output) -> int:
    crl = _make_client(args, out).crl()
    if args.issuer:
        issuers = load_certificate_file(Path(args.issuer))
        if not any(c.subject == crl.issuer and crl.is_signature_valid(c.public_key()) for c in issuers):
            raise VerificationFailed(f"the CRL is not signed by a certificate in {args.issuer}")
    try:
        number: int | None = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        number = None
    document = {
        "issuer": crl.issuer.rfc4514_string(),
        "crlNumber": number,
        "thisUpdate": _utc(crl.last_update_utc),
        "nextUpdate": None if crl.next_update_utc is None else _utc(crl.next_update_utc),
        "revoked": [format(r.serial_number, "X") for r in crl],
        "signatureVerified": bool(args.issuer),
    }
    text = f"CRL {number} of {document['issuer']}: {len(crl)} revoked, next update {document['nextUpdate']}"
    if args.out:
        encoding = serialization.Encoding.PEM if args.pem else serialization.Encoding.DER
        write_atomically(Path(args.out), crl.public_bytes(encoding), 0o644)
        document["file"] = args.out
        text += f"; wrote {args.out}"
    out.result(document, text)
    return EXIT_OK


def _latency_table(latency: dict[str, dict[str, float]]) -> list[str]:
    lines = [f"  {'latency (ms)':<14}{'p50':>9}{'p90':>9}{'p99':>9}{'max':>9}"]
    for step, values in latency.items():
        lines.append(f"  {step:<14}" + "".join(f"{values[k]:>9.1f}" for k in ("p50", "p90", "p99", "max")))
    return lines


def cmd_simulate(args: argparse.Namespace, out: Output) -> int:
    if args.devices < 1 or args.concurrency < 1:
        raise UsageError("--devices and --concurrency must be at least 1")
    retries = itertools.count()  # next() is atomic under the GIL: safe from the worker threads
    client = _make_client(args, out, on_retry=lambda notice: next(retries))
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


def _network_options() -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument(
        "--url",
        default=os.environ.get("XBOOT_URL"),
        help="the xboot service, e.g. https://app.azurewebsites.net (env XBOOT_URL)",
    )
    options.add_argument("--timeout", type=float, default=30.0, help="seconds per network operation (default 30)")
    options.add_argument("--retries", type=int, default=5, help="attempts for 429/503/network errors (default 5)")
    return options


def _json_option() -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    return options


def _add_client_commands(commands: Any) -> None:
    network, as_json = _network_options(), _json_option()
    code = argparse.ArgumentParser(add_help=False)
    code.add_argument("--code", help="function key (?code= in --url, or env XBOOT_FUNCTION_KEY, also work)")
    device = argparse.ArgumentParser(add_help=False)
    device.add_argument("--out", required=True, help="device folder: device.key, device.crt, chain.pem, device.pfx")
    device.add_argument("--root-ca", action="append", help="expected root CA (PEM/DER): the chain must lead to it")
    device.add_argument("--pfx-password", help="password of device.pfx (env XBOOT_PFX_PASSWORD)")
    common = [network, code, device, as_json]

    enroll = commands.add_parser("enroll", parents=common, help="make a device key and enroll it")
    enroll.add_argument("--registration-id", required=True, help="the device's registration ID (certificate CN)")
    enroll.add_argument("--key-type", choices=KEY_TYPES, default="ec-p256", help="device key (default ec-p256)")
    enroll.add_argument("--pfx", action="store_true", help="also write device.pfx (PKCS#12) for Azure IoT SDKs")
    enroll.add_argument("--force", action="store_true", help="replace an identity already in --out (kept as .bak)")
    enroll.set_defaults(handler=client_command(cmd_enroll))

    renew = commands.add_parser("renew", parents=common, help="re-enroll an enrolled device before it expires")
    renew.add_argument("--within-days", type=int, default=30, help="renew when expiring within N days (default 30)")
    renew.add_argument("--force", action="store_true", help="renew now, however long the certificate has left")
    renew.add_argument("--rekey", action="store_true", help="make a new key instead of reusing device.key")
    renew.add_argument("--key-type", choices=KEY_TYPES, help="type of the new key with --rekey (default: same)")
    renew.set_defaults(handler=client_command(cmd_renew))

    sign = commands.add_parser("sign-report", parents=[as_json], help="sign a JSON report (S/MIME, detached)")
    sign.add_argument("report", help="the report, a JSON file")
    sign.add_argument("--cert", help="signing certificate (default DIR/device.crt with --device)")
    sign.add_argument("--key", help="its private key (default DIR/device.key with --device)")
    sign.add_argument("--chain", help="CA certificates to include (default DIR/chain.pem with --device)")
    sign.add_argument("--device", help="an enrolled device folder, instead of --cert/--key/--chain")
    sign.add_argument("--out", help="where to write the signed report (default REPORT.signed)")
    sign.set_defaults(handler=client_command(cmd_sign_report))

    upload = commands.add_parser("upload-report", parents=[network, code, as_json], help="upload a signed report")
    upload.add_argument("signed", help="a signed report from sign-report (or openssl cms -sign)")
    upload.add_argument("--kind", required=True, choices=("system", "update"), help="system or update report")
    upload.set_defaults(handler=client_command(cmd_upload_report))

    fingerprint = commands.add_parser("fingerprint", parents=[as_json], help="SHA-256 fingerprints of certificates")
    fingerprint.add_argument("certificates", nargs="+", metavar="CERT", help="PEM (any number of certificates) or DER")
    fingerprint.set_defaults(handler=client_command(cmd_fingerprint))

    trust = commands.add_parser("trust", help="the report trust anchors (certificate fingerprints)")
    actions = trust.add_subparsers(dest="action", required=True)
    admin = argparse.ArgumentParser(add_help=False)
    admin.add_argument("--admin-key", help="the app's admin (master) key (env XBOOT_ADMIN_KEY)")
    for action, text in (
        ("get", "print the trusted fingerprints"),
        ("set", "replace the list with these fingerprints"),
        ("add", "add these fingerprints to the list"),
    ):
        sub = actions.add_parser(action, parents=[network, admin, as_json], help=text)
        if action != "get":
            sub.add_argument("fingerprints", nargs="*", metavar="FINGERPRINT", help="BB:EA:... (colons optional)")
            sub.add_argument("--cert", action="append", help="trust every certificate in this file (repeatable)")
        sub.set_defaults(handler=client_command(cmd_trust))

    revoke = commands.add_parser(
        "revoke", parents=[network, admin, as_json], help="revoke a certificate or a device (or --list revocations)"
    )
    target = revoke.add_mutually_exclusive_group(required=True)
    target.add_argument("--serial", help="a certificate of this CA by serial number (hex, colons optional)")
    target.add_argument("--fingerprint", help="a certificate by SHA-256 fingerprint (any CA; not put in the CRL)")
    target.add_argument("--registration-id", help="a device: all its certificates, and it cannot enroll again")
    target.add_argument("--cert", help="a certificate file (PEM/DER): by fingerprint, and in the CRL if ours")
    target.add_argument("--list", action="store_true", help="print every revocation instead")
    revoke.add_argument(
        "--reason",
        default="unspecified",
        help="RFC 5280 reason: unspecified (default), keyCompromise, superseded, cessationOfOperation, "
        "certificateHold (removable with unrevoke), privilegeWithdrawn, affiliationChanged, ...",
    )
    revoke.set_defaults(handler=client_command(cmd_revoke))

    unrevoke = commands.add_parser("unrevoke", parents=[network, admin, as_json], help="end a certificateHold")
    unrevoke.add_argument("id", help="the revocation id (from revoke or revoke --list)")
    unrevoke.set_defaults(handler=client_command(cmd_unrevoke))

    certificates = commands.add_parser(
        "certificates", parents=[network, admin, as_json], help="what a device was issued, and what is revoked"
    )
    certificates.add_argument("--registration-id", required=True, help="the device's registration ID")
    certificates.set_defaults(handler=client_command(cmd_certificates))

    crl = commands.add_parser("crl", parents=[network, as_json], help="download the CRL (no key needed)")
    crl.add_argument("--out", help="write it to this file (DER unless --pem)")
    crl.add_argument("--pem", action="store_true", help="write PEM instead of DER")
    crl.add_argument("--issuer", help="the issuing CA certificate: refuse a CRL it did not sign")
    crl.set_defaults(handler=client_command(cmd_crl))

    simulate = commands.add_parser(
        "simulate", parents=[network, code, as_json], help="enroll many devices and upload a signed report from each"
    )
    simulate.add_argument("--devices", type=int, default=10, help="how many devices (default 10)")
    simulate.add_argument("--concurrency", type=int, default=4, help="devices at a time (default 4)")
    simulate.add_argument("--key-type", choices=KEY_TYPES, default="ec-p256", help="device keys (default ec-p256)")
    simulate.add_argument("--prefix", help="registration ID prefix (default sim-<random>-)")
    simulate.add_argument("--enroll-only", action="store_true", help="skip signing and uploading reports")
    simulate.set_defaults(handler=client_command(cmd_simulate))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xboot", description="X.509 bootstrap for IoT devices")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve function_app.py's routes locally (like func start)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    serve.add_argument("--threads", type=int, default=8, help="worker threads (default 8)")
    serve.add_argument("--app-dir", default=".", help="folder holding function_app.py and host.json")
    serve.add_argument("--function-key", help="require this key on FUNCTION routes (?code= or x-functions-key)")
    serve.add_argument("--admin-key", help="require this key on ADMIN routes (also valid on FUNCTION routes)")
    serve.set_defaults(handler=cmd_serve)

    init_ca = commands.add_parser("init-ca", help="create a development root and issuing CA")
    init_ca.add_argument("directory", help="folder to write ca.cer, ca.key, ia.cer, ia.key into")
    init_ca.add_argument("--key-type", choices=KEY_TYPES, default="ec-p256", help="CA key type (default ec-p256)")
    init_ca.set_defaults(handler=cmd_init_ca)

    _add_client_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return int(args.handler(args))
