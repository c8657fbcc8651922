"""The `xboot` command: be a device or an operator, and run the service locally.

Commands are grouped by who runs them: `device` (enroll, renew, reports), `operator`
(trust anchors, revocation, CRL) and `service` (serve, init-ca, simulate). The device and
operator commands are thin layers over `xboot.device`: they parse options, show progress
on stderr, print a result (text, or JSON with --json) and turn errors into exit codes.
"""

from __future__ import annotations

import argparse
import logging

from xboot import __version__
from xboot.cli import device, operator, service
from xboot.cli.common import json_option, network_options


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xboot", description="X.509 bootstrap for IoT devices")
    parser.add_argument("--version", action="version", version=f"xboot {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    network, as_json = network_options(), json_option()
    code = argparse.ArgumentParser(add_help=False)
    code.add_argument("--code", help="function key (?code= in --url, or env XBOOT_FUNCTION_KEY, also work)")
    service.add_commands(commands, network, code, as_json)
    device.add_commands(commands, network, code, as_json)
    operator.add_commands(commands, network, as_json)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return int(args.handler(args))
