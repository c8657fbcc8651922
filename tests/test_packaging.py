"""Packaging: the device SDK installs alone, and the deployment zip can never carry secrets.

The device test installs the project into a fresh venv with only its base dependencies (no
azure-*, no waitress), then drives `xboot enroll`, `renew`, `sign-report`, `upload-report` and
`fingerprint` from that venv against a real `xboot serve`, and checks what they imported.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest

from tests.fixtures.live_server import ROOT, LiveServer, start_live_server

PACKAGE = ROOT / "scripts" / "package"
FORBIDDEN_IN_ZIP = re.compile(
    r"(^|/)(\.xboot-data|\.azurite|\.venv[^/]*|tests|bench|infra|scripts|dist|build)/|"
    r"\.(key|pem|pfx|p12|cer|crt)$|local\.settings.*\.json$|__pycache__|\.pyc$"
)


def _tracked(root: Path) -> list[str]:
    return subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True, check=True).stdout.split()


def _copy_checkout(destination: Path) -> Path:
    """The tracked files of this checkout, as a fresh clone would have them."""
    for name in _tracked(ROOT):
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    return destination


def _leave_local_state(app: Path) -> None:
    """What the README's two commands leave behind: a development CA, an audit log, Azurite data, settings."""
    subprocess.run(
        [sys.executable, "-m", "xboot", "init-ca", str(app / ".xboot-data" / "dev-ca")],
        check=True,
        capture_output=True,
        cwd=ROOT,
    )
    (app / ".xboot-data" / "certificates" / "dev-1").mkdir(parents=True)
    (app / ".xboot-data" / "certificates" / "dev-1" / "01.json").write_text("{}")
    (app / ".azurite" / "data").mkdir(parents=True)
    (app / ".azurite" / "data" / "__blobstorage__").write_bytes(b"\0" * 1024)
    (app / "local.settings.json").write_text(json.dumps({"Values": {"PrivateKeyPassword": "secret"}}))
    (app / ".venv" / "bin").mkdir(parents=True)
    (app / "xboot" / "service" / "__pycache__").mkdir(exist_ok=True)
    (app / "xboot" / "service" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0")


def _package(app: Path, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(PACKAGE), "--root", str(app), "--out", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )


def test_package_holds_exactly_the_service_and_nothing_local(tmp_path: Path) -> None:
    app = _copy_checkout(tmp_path / "app")
    _leave_local_state(app)
    built = _package(app, tmp_path / "out.zip")
    assert built.returncode == 0, built.stderr
    names = zipfile.ZipFile(tmp_path / "out.zip").namelist()
    expected = {
        "function_app.py",
        "host.json",
        "requirements.txt",
        "xboot/__init__.py",
        "xboot/errors.py",
        "xboot/pki.py",
        "xboot/dps.py",
        "xboot/logs.py",
    } | {n for n in _tracked(ROOT) if n.startswith("xboot/service/") and n.endswith(".py")}
    assert sorted(names) == sorted(expected)
    assert not [n for n in names if FORBIDDEN_IN_ZIP.search(n)]
    assert "xboot/service/ca/signer.py" in names and "xboot/device/client.py" not in names
    # The same sources give the same bytes (no timestamps), so a deployment can be compared with a build.
    assert _package(app, tmp_path / "again.zip").returncode == 0
    assert (tmp_path / "out.zip").read_bytes() == (tmp_path / "again.zip").read_bytes()


@pytest.mark.parametrize(
    "planted", ["xboot/service/ca/ca.key", "xboot/service/dev.pfx", "xboot/service/local.settings.json"]
)
def test_package_refuses_a_secret_inside_the_source(tmp_path: Path, planted: str) -> None:
    app = _copy_checkout(tmp_path / "app")
    (app / planted).write_text("-----BEGIN PRIVATE KEY-----\n")
    built = _package(app, tmp_path / "out.zip")
    assert built.returncode == 1
    assert f"refusing to package {planted}" in built.stderr and "Traceback" not in built.stderr
    assert not (tmp_path / "out.zip").exists()


def _requirement_names(lines: list[str]) -> set[str]:
    names = set()
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            names.add(re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0].lower())
    return names


def test_requirements_txt_is_the_base_install_plus_the_service_extra() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = _requirement_names(project["dependencies"] + project["optional-dependencies"]["service"])
    pinned = _requirement_names((ROOT / "requirements.txt").read_text().splitlines())
    assert declared == pinned
    assert _requirement_names(project["dependencies"]) == {"cryptography"}


DEVICE_RUNNER = r"""
import json, sys
from xboot.cli import main
commands = json.loads(sys.argv[1])
codes = [main(argv) for argv in commands]
service_side = sorted(m for m in sys.modules if m.split(".")[0] in ("azure", "waitress", "asn1crypto")
                      or m.startswith(("xboot.service", "function_app")))
print(json.dumps({"codes": codes, "imported": service_side}))
"""


@pytest.fixture(scope="module")
def device_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with `pip install xboot` and nothing else, built from a copy of the sources."""
    work = tmp_path_factory.mktemp("device-venv")
    source = work / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(ROOT / "xboot", source / "xboot", ignore=shutil.ignore_patterns("__pycache__"))
    environment = work / "venv"
    venv.create(environment, with_pip=True)
    python = environment / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(source)],
        check=True,
        capture_output=True,
    )
    return environment


def test_base_install_has_no_service_packages(device_venv: Path) -> None:
    listed = subprocess.run(
        [str(device_venv / "bin" / "python"), "-m", "pip", "list", "--format=json"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    installed = {p["name"].lower() for p in json.loads(listed)}
    assert "xboot" in installed and "cryptography" in installed
    assert not {n for n in installed if n.startswith("azure") or n in ("waitress", "asn1crypto", "werkzeug")}
    version = subprocess.run([str(device_venv / "bin" / "xboot"), "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and re.fullmatch(r"xboot \d+\.\d+\.\d+\n", version.stdout)
    serve = subprocess.run([str(device_venv / "bin" / "xboot"), "serve"], capture_output=True, text=True)
    assert serve.returncode == 1 and "pip install 'xboot[service]'" in serve.stderr and "Traceback" not in serve.stderr


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> LiveServer:
    with start_live_server(tmp_path_factory.mktemp("packaging-server")) as live:
        yield live


def test_device_commands_work_from_the_base_install(device_venv: Path, server: LiveServer, tmp_path: Path) -> None:
    device = tmp_path / "device"
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"gatewayId": "pkg-device-1", "system": {"os": "test"}}))
    network = ["--url", server.url, "--code", str(server.function_key)]
    commands = [
        ["enroll", *network, "--registration-id", "pkg-device-1", "--out", str(device)],
        ["renew", *network, "--out", str(device), "--force"],
        ["sign-report", str(report), "--device", str(device), "--out", str(tmp_path / "report.signed")],
        ["upload-report", *network, str(tmp_path / "report.signed"), "--kind", "system"],
        ["fingerprint", str(device / "device.crt")],
    ]
    run = subprocess.run(
        [str(device_venv / "bin" / "python"), "-c", DEVICE_RUNNER, json.dumps(commands)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result == {"codes": [0, 0, 0, 0, 0], "imported": []}
    assert (device / "device.crt.bak").exists()  # renew replaced the enrolled certificate
    stored = list((server.data_dir / "reports").rglob("*.json"))
    assert stored, "the uploaded report was not stored"


def _module_imports() -> dict[str, set[str]]:
    """Every xboot module and the xboot/third-party modules it imports anywhere (top level or inside functions)."""
    graph: dict[str, set[str]] = {}
    for path in (ROOT / "xboot").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
                found |= {f"{node.module}.{alias.name}" for alias in node.names}
        graph[name] = found
    return graph


def test_no_import_cycles_between_xboot_modules() -> None:
    graph = _module_imports()
    edges = {name: {m for m in imports if m in graph and m != name} for name, imports in graph.items()}
    # A package importing its own submodules (xboot.device -> xboot.device.client) is how packages work.
    edges = {name: {m for m in targets if not m.startswith(name + ".")} for name, targets in edges.items()}
    state: dict[str, int] = {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = 1
        for target in sorted(edges[name]):
            if state.get(target) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*trail[trail.index(target) :], target]))
            if target not in state:
                visit(target, [*trail, target])
        state[name] = 2

    for name in sorted(edges):
        if name not in state:
            visit(name, [name])


def test_device_side_imports_only_stdlib_cryptography_and_itself() -> None:
    device_side = (
        "xboot.device",
        "xboot.cli.device",
        "xboot.cli.operator",
        "xboot.cli.common",
        "xboot.pki",
        "xboot.errors",
    )
    graph = _module_imports()
    for name, imports in graph.items():
        if not name.startswith(device_side):
            continue
        third_party = {m.split(".")[0] for m in imports} - set(sys.stdlib_module_names) - {"xboot", "cryptography"}
        assert not third_party, f"{name} imports {third_party}"
        service = {m for m in imports if m.startswith(("xboot.service", "xboot.cli.service"))}
        assert not service, f"{name} imports service modules {service}"


def test_the_package_carries_every_xboot_module_the_service_imports(tmp_path: Path) -> None:
    """What function_app.py and xboot/service import of xboot's own modules is all in the zip (the zip leaves
    xboot/device and xboot/cli out: a service import of them would fail only once deployed)."""
    app = _copy_checkout(tmp_path / "app")
    assert _package(app, tmp_path / "out.zip").returncode == 0
    names = set(zipfile.ZipFile(tmp_path / "out.zip").namelist())
    graph = _module_imports()
    imported = {m for name, imports in graph.items() if name.startswith("xboot.service") for m in imports}
    for node in ast.walk(ast.parse((ROOT / "function_app.py").read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            imported |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
    modules = {m for m in imported if m in graph}
    missing = sorted(
        m for m in modules if not {f"{m.replace('.', '/')}.py", f"{m.replace('.', '/')}/__init__.py"} & names
    )
    assert "xboot.dps" in modules and not missing, f"the deployment package lacks {missing}"
