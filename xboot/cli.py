"""The `xboot` command: run the service locally, make a development CA."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from xboot.devca import KEY_TYPES, DevelopmentCa, create_development_ca

DEFAULT_PORT = 7071


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
    from xboot.serve import FunctionsWsgiApp, Keys, load_routes, run

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
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return int(args.handler(args))
