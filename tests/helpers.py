"""Helpers shared by test modules: the openssl CLI, and device CSRs made with it."""

from __future__ import annotations

import base64
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from xboot.cli import main
from xboot.cli.common import EXIT_OK


def openssl(*args: str, cwd: Path | None = None, stdin: bytes | None = None) -> bytes:
    """Run the openssl CLI (what the seeds use) and fail loudly with its stderr."""
    result = subprocess.run(["openssl", *args], cwd=cwd, input=stdin, capture_output=True, check=False)
    if result.returncode != 0:
        raise AssertionError(f"openssl {' '.join(args)} failed: {result.stderr.decode(errors='replace')}")
    return result.stdout


@dataclass(frozen=True)
class DeviceCsr:
    key_path: Path
    der: bytes

    @property
    def b64(self) -> str:
        return base64.b64encode(self.der).decode()


def make_csr(directory: Path, registration_id: str, key_args: list[str] | None = None, *extra: str) -> DeviceCsr:
    """A device key and CSR made by the openssl CLI, as a device's firmware would."""
    directory.mkdir(parents=True, exist_ok=True)
    key = directory / f"{registration_id}.key"
    openssl("genpkey", *(key_args or ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]), "-out", str(key))
    der = openssl("req", "-new", "-key", str(key), "-subj", f"/CN={registration_id}", "-outform", "DER", *extra)
    return DeviceCsr(key, der)


@dataclass
class CliRunner:
    """`xboot ...` run in-process with its output captured, pointed at one server and its keys."""

    capsys: pytest.CaptureFixture[str]
    url: str
    function_key: str | None
    admin_key: str | None

    def __call__(self, *argv: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        code = main(list(argv))
        out, err = self.capsys.readouterr()
        return code, out, err

    def json(self, *argv: str, expect: int = EXIT_OK) -> Any:
        code, out, err = self(*argv, "--json")
        assert code == expect, f"exit {code}\nstdout: {out}\nstderr: {err}"
        return json.loads(out)

    @property
    def device(self) -> list[str]:
        return ["--url", self.url, "--code", str(self.function_key)]

    @property
    def admin(self) -> list[str]:
        return ["--url", self.url, "--admin-key", str(self.admin_key)]
