"""Shared fixtures: a development CA, an isolated app environment, and the registered functions.

Fixture modules for real backends live in tests/fixtures/ and are loaded here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest

import xboot.service.enrollment.registration
from tests.helpers import DeviceCsr, make_csr, openssl  # noqa: F401 - re-exported for test modules
from xboot.service.ca.devca import DevelopmentCa, create_development_ca
from xboot.service.ca.signer import clear_signer_cache
from xboot.service.serve import FunctionsWsgiApp, RouteTable, route_prefix

ROOT = Path(__file__).resolve().parent.parent

# Every module in tests/fixtures/ is a fixture plugin (Azurite, the Key Vault double, ...).
pytest_plugins = [
    f"tests.fixtures.{p.stem}" for p in sorted((ROOT / "tests" / "fixtures").glob("*.py")) if p.stem != "__init__"
]


@pytest.fixture(scope="session")
def session_ca(tmp_path_factory: pytest.TempPathFactory) -> DevelopmentCa:
    return create_development_ca(tmp_path_factory.mktemp("session-ca"), "ec-p256")


@pytest.fixture
def app_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, session_ca: DevelopmentCa) -> dict[str, str]:
    """A clean environment: Location File on the session CA, data in a fresh folder, no caches."""
    for name in list(os.environ):
        if name[:1].isupper() and name not in ("PATH", "HOME", "LANG", "TMPDIR", "USER", "SHELL", "PWD"):
            monkeypatch.delenv(name, raising=False)
    values = {**session_ca.settings(), "DataDirectory": str(tmp_path / "data")}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    clear_signer_cache()
    monkeypatch.setattr(xboot.service.enrollment.registration, "_cached", None)
    yield values
    clear_signer_cache()


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    mimetype: str | None

    def json(self) -> Any:
        return json.loads(self.body)


class Functions:
    """Calls the functions registered in function_app.py, through the same table `serve` uses."""

    def __init__(self, table: RouteTable) -> None:
        self.table = table
        self.wsgi = FunctionsWsgiApp(table)

    def call(
        self, method: str, path: str, body: bytes | str | dict[str, Any] = b"", headers: dict[str, str] | None = None
    ) -> Reply:
        if isinstance(body, dict):
            body = json.dumps(body)
        if isinstance(body, str):
            body = body.encode()
        response: func.HttpResponse = self.wsgi.dispatch(method, f"http://localhost{path}", headers or {}, body)
        return Reply(response.status_code, dict(response.headers), response.get_body(), response.mimetype)


@pytest.fixture(scope="session")
def functions() -> Functions:
    import function_app

    return Functions(RouteTable.from_app(function_app.app, route_prefix(ROOT / "host.json")))


@pytest.fixture
def device_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "device"


@pytest.fixture
def trusted_root(app_env: dict[str, str], functions: Functions, guide_pki: Any) -> str:
    """The report-signing guide's root trusted by fingerprint, through the trust API."""
    fingerprint = guide_pki.fingerprint("ca_root")
    path = "/api/mgmt/v1/tenant-config/soup.report.validation.trusted.cert.fingerprints"
    reply = functions.call("POST", path, {"value": [fingerprint]})
    assert reply.status == 200, reply.body
    return fingerprint
