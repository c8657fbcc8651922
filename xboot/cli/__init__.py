"""The `xboot` command: be a device or an operator, and run the service locally.

Commands are grouped by who runs them: `device` (enroll, renew, reports), `operator`
(trust anchors, revocation, CRL) and `service` (serve, init-ca, simulate). The device and
operator commands are thin layers over `xboot.device`: they parse options, show progress
on stderr, print a result (text, or JSON with --json) and turn errors into exit codes.
"""

from __future__ import annotations

import argparse
import sys

from xboot import __version__, logs
from xboot.cli import device, operator, service
from xboot.cli.common import json_option, network_options


def _options(parser: argparse.ArgumentParser) -> tuple[set[str], set[str]]:
    """Every option string of every subcommand, and those that take one value."""
    every: set[str] = set()
    valued: set[str] = set()
    pending = [parser]
    while pending:
        current = pending.pop()
        for action in current._actions:
            if isinstance(action, argparse._SubParsersAction):
                pending.extend(action.choices.values())
            every.update(action.option_strings)
            if action.option_strings and action.nargs is None:
                valued.update(action.option_strings)
    return every, valued


def join_dash_values(argv: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """`--code -Abc` as `--code=-Abc`: keys and passwords may start with '-', which argparse reads as an option."""
    every, valued = _options(parser)
    joined: list[str] = []
    index = 0
    while index < len(argv):
        token = argv[index]
        following = argv[index + 1] if index + 1 < len(argv) else None
        if token in valued and following is not None and following.startswith("-") and following not in every:
            joined.append(f"{token}={following}")
            index += 2
        else:
            joined.append(token)
            index += 1
    return joined


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
    logs.configure()
    parser = build_parser()
    args = parser.parse_args(join_dash_values(sys.argv[1:] if argv is None else argv, parser))
    return int(args.handler(args))
