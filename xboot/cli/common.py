"""What every device and operator command shares: output, exit codes, the client from the options."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509

from xboot.device import (
    ClientError,
    RetryNotice,
    RetryPolicy,
    ServerRefused,
    ServerUnavailable,
    VerificationFailed,
    XbootClient,
    is_loopback_or_https,
    load_certificate_file,
    split_service_url,
)

# Exit codes of the device and operator commands (documented in the README).
EXIT_OK = 0
EXIT_LOCAL = 1  # a local problem: unreadable file, wrong key, existing identity, invalid report
EXIT_USAGE = 2  # bad command line (argparse's own code)
EXIT_REFUSED = 3  # the service refused the request (4xx other than 429)
EXIT_UNAVAILABLE = 4  # the service failed or was unreachable (5xx, 429, network, timeout) after retries
EXIT_VERIFICATION = 5  # the service's certificate does not match the key or does not chain
EXIT_SIMULATION_FAILURES = 6  # simulate: at least one device failed


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


def utc(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def exit_code(error: Exception) -> int:
    if isinstance(error, UsageError):
        return EXIT_USAGE
    if isinstance(error, ServerRefused):
        return EXIT_REFUSED
    if isinstance(error, ServerUnavailable):
        return EXIT_UNAVAILABLE
    if isinstance(error, VerificationFailed):
        return EXIT_VERIFICATION
    return EXIT_LOCAL


KEY_HINT = "keys: --code or XBOOT_FUNCTION_KEY for device routes, --admin-key or XBOOT_ADMIN_KEY for admin routes"


def client_command(handler: Callable[[argparse.Namespace, Output], int]) -> Callable[[argparse.Namespace], int]:
    """Run a device/operator command: errors become a message (or JSON) and an exit code, never a traceback."""

    def run(args: argparse.Namespace) -> int:
        out = Output(args.json)
        try:
            return handler(args, out)
        except (ClientError, UsageError) as error:
            code = exit_code(error)
            message = getattr(error, "message", str(error))
            if isinstance(error, ServerRefused) and error.status == 401 and error.code == "unauthorized":
                message += f" ({KEY_HINT})"
            if out.as_json:
                document = {"error": getattr(error, "code", None) or type(error).__name__, "message": message}
                document.update({"status": getattr(error, "status", None), "exitCode": code})
                print(json.dumps(document, indent=2))
            else:
                print(f"error: {message}", file=sys.stderr)
            return code

    return run


def make_client(
    args: argparse.Namespace, out: Output, on_retry: Callable[[RetryNotice], None] | None = None
) -> XbootClient:
    """An XbootClient from --url/--code/--admin-key/--timeout/--retries; keys never printed."""
    if not args.url:
        raise UsageError("--url (or XBOOT_URL) is required")
    base, code_in_url = split_service_url(args.url)
    if not is_loopback_or_https(base):
        out.warn(f"{base} is plain HTTP: keys and certificates cross the network unencrypted")
    # Sent when given; a server that enforces no keys (xboot serve by default) answers without one, and one
    # that does says 401, which client_command turns into where the key goes.
    admin_key = getattr(args, "admin_key", None) or os.environ.get("XBOOT_ADMIN_KEY")
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


def anchors(paths: list[str] | None) -> list[x509.Certificate] | None:
    if not paths:
        return None
    return [c for p in paths for c in load_certificate_file(Path(p))]


def network_options() -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument(
        "--url",
        default=os.environ.get("XBOOT_URL"),
        help="the xboot service, e.g. https://app.azurewebsites.net (env XBOOT_URL)",
    )
    options.add_argument("--timeout", type=float, default=30.0, help="seconds per network operation (default 30)")
    options.add_argument("--retries", type=int, default=5, help="attempts for 429/503/network errors (default 5)")
    return options


def json_option() -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    return options
