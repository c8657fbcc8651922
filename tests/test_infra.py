"""Checks on infra/ (Bicep): security properties, role assignments, app settings, checkov.

No Bicep compiler installs here, so the templates are read with pycep-parser (the pure-Python
parser checkov itself uses) and the assertions run on its JSON tree. pycep-parser is taken from
the test environment if installed there, otherwise from the checkov environment (.venv-infra,
see infra/requirements-check.txt), where it comes pinned with checkov.

Environment:
  XBOOT_CHECKOV  path of the checkov executable (default: <repo>/.venv-infra/bin/checkov)
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
MAIN = INFRA / "main.bicep"
BICEP_FILES = sorted(INFRA.rglob("*.bicep"))

SETUP_HINT = (
    "python3 -m venv .venv-infra && .venv-infra/bin/pip install -r infra/requirements-check.txt "
    "(from the repository root), or set XBOOT_CHECKOV to a checkov executable"
)

# Built-in role definition IDs, checked against Microsoft's "Azure built-in roles" reference
# (role-based-access-control/built-in-roles/security.md, storage.md, monitor.md).
KEY_VAULT_CERTIFICATE_USER = "db79e9a7-68ee-4b58-9aeb-b90e7c24fcba"
KEY_VAULT_SECRETS_USER = "4633458b-17de-408a-b874-0445c86b69e6"
KEY_VAULT_CRYPTO_USER = "12338af0-0e69-4776-bea7-57ae8d297424"
KEY_VAULT_CERTIFICATES_OFFICER = "a4417e6f-fecd-4de8-b567-7b0420556985"
STORAGE_BLOB_DATA_CONTRIBUTOR = "ba92f5b4-2d11-453d-a403-e96b0029c9fe"
STORAGE_TABLE_DATA_CONTRIBUTOR = "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3"
MONITORING_METRICS_PUBLISHER = "3913510d-42f4-4e42-8a64-420c390055eb"
BUILT_IN_ROLES = {
    KEY_VAULT_CERTIFICATE_USER,
    KEY_VAULT_SECRETS_USER,
    KEY_VAULT_CRYPTO_USER,
    KEY_VAULT_CERTIFICATES_OFFICER,
    STORAGE_BLOB_DATA_CONTRIBUTOR,
    STORAGE_TABLE_DATA_CONTRIBUTOR,
    MONITORING_METRICS_PUBLISHER,
}

KEY_LOCATIONS = ("KeyVault", "KeyVaultKey", "Blob", "File", "AppSettings")

# What the Function App identity must hold, per keyLocation (and nothing more).
ALWAYS = {STORAGE_BLOB_DATA_CONTRIBUTOR, STORAGE_TABLE_DATA_CONTRIBUTOR, MONITORING_METRICS_PUBLISHER}
APP_ROLES = {
    "KeyVault": ALWAYS | {KEY_VAULT_CERTIFICATE_USER, KEY_VAULT_SECRETS_USER},
    "KeyVaultKey": ALWAYS | {KEY_VAULT_CERTIFICATE_USER, KEY_VAULT_CRYPTO_USER},
    "Blob": ALWAYS,
    "File": ALWAYS,
    "AppSettings": ALWAYS,
}

# App settings xboot reads, set for every keyLocation.
XBOOT_SETTINGS = (
    "Location",
    "KeyVaultUri",
    "BlobAccountUrl",
    "BlobContainerName",
    "DataStore",
    "DataBlobAccountUrl",
    "DataBlobContainer",
    "SignerCacheSeconds",
    "CertificateValidityDays",
)
PLATFORM_SETTINGS = (
    "AzureWebJobsStorage__accountName",
    "AzureWebJobsStorage__credential",
    "APPLICATIONINSIGHTS_CONNECTION_STRING",
)
# Settings that must never be set: a key-based host storage connection, and settings that
# Flex Consumption replaced with functionAppConfig.
FORBIDDEN_SETTINGS = (
    "AzureWebJobsStorage",
    "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING",
    "FUNCTIONS_WORKER_RUNTIME",
    "FUNCTIONS_EXTENSION_VERSION",
    "WEBSITE_RUN_FROM_PACKAGE",
    "APPINSIGHTS_INSTRUMENTATIONKEY",
)
SECRET_MARKERS = ("accountkey=", "listkeys(", "sharedaccesssignature=", "sig=", "defaultendpointsprotocol=")


# --- Locating tools ------------------------------------------------------------------


def checkov_path() -> Path | None:
    configured = os.environ.get("XBOOT_CHECKOV")
    if configured:
        path = Path(configured)
        return path if path.exists() else None
    default = ROOT / ".venv-infra" / "bin" / "checkov"
    return default if default.exists() else None


def require_checkov() -> Path:
    path = checkov_path()
    if path is None:
        where = os.environ.get("XBOOT_CHECKOV") or str(ROOT / ".venv-infra" / "bin" / "checkov")
        pytest.fail(f"checkov not found at {where}. Install it: {SETUP_HINT}", pytrace=False)
    return path


# --- Parsing -------------------------------------------------------------------------

_PARSE_SCRIPT = r"""
import json, sys
from pathlib import Path
from pycep import BicepParser
out = {}
for name in sys.argv[1:]:
    try:
        out[name] = {"tree": BicepParser().parse(file_path=Path(name))}
    except Exception as error:
        out[name] = {"error": f"{type(error).__name__}: {error}"}
json.dump(out, sys.stdout)
"""


@functools.cache
def parsed_all() -> dict[str, dict[str, Any]]:
    """{path: {"tree": ...} or {"error": ...}} for every .bicep file under infra/."""
    names = [str(p) for p in BICEP_FILES]
    try:
        from pycep import BicepParser
    except ImportError:
        pass
    else:
        out: dict[str, dict[str, Any]] = {}
        for name in names:
            try:
                out[name] = {"tree": BicepParser().parse(file_path=Path(name))}
            except Exception as error:  # pycep raises assorted lark and ValueError errors
                out[name] = {"error": f"{type(error).__name__}: {error}"}
        return out
    # No pycep-parser in this environment: use the one installed with checkov.
    checkov = checkov_path()
    python = checkov.parent / "python" if checkov is not None else None
    if python is None or not python.exists():
        pytest.fail(f"pycep-parser is not installed here and no checkov environment was found. {SETUP_HINT}")
    done = subprocess.run(
        [str(python), "-c", _PARSE_SCRIPT, *names], capture_output=True, text=True, timeout=300, check=False
    )
    if done.returncode != 0:
        pytest.fail(f"pycep-parser in {python} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)


def tree(path: Path) -> dict[str, Any]:
    entry = parsed_all()[str(path)]
    if "error" in entry:
        pytest.fail(f"{path.relative_to(ROOT)} does not parse: {entry['error']}")
    return entry["tree"]


def body(node: dict[str, Any]) -> dict[str, Any]:
    """A resource's or module's own properties, under any `if (...)` or `for` wrapper."""
    config = node["config"]
    while isinstance(config, dict) and ("condition" in config or "loop_type" in config) and "config" in config:
        config = config["config"]
    return config


def condition(node: dict[str, Any]) -> Any:
    config = node["config"]
    return config.get("condition") if isinstance(config, dict) else None


def resources(type_name: str) -> list[tuple[Path, str, dict[str, Any]]]:
    """(file, symbolic name, resource) for every resource of `type_name` (not `existing` ones)."""
    found = []
    for path in BICEP_FILES:
        for name, resource in tree(path).get("resources", {}).items():
            if resource["type"].lower() == type_name.lower() and not resource.get("existing"):
                found.append((path, name, resource))
    return found


def only(type_name: str) -> tuple[Path, dict[str, Any]]:
    found = resources(type_name)
    assert len(found) == 1, f"expected one {type_name}, found {[(str(p), n) for p, n, _ in found]}"
    path, _, resource = found[0]
    return path, body(resource)


def dotted(expr: Any) -> str | None:
    """'a.b.c' for a property-access chain (pycep nests them to the right), else None."""
    if isinstance(expr, str):
        return expr
    if isinstance(expr, dict) and expr.get("operator", {}).get("type") == "property_accessor":
        operands = expr["operator"]["operands"]
        left, right = dotted(operands["operand_1"]), dotted(operands["operand_2"])
        if left is not None and right is not None:
            return f"{left}.{right}"
    return None


def module_file(name: str) -> Path:
    module = tree(MAIN)["modules"][name]
    return (MAIN.parent / module["detail"]["path"]).resolve()


def module_params(name: str) -> dict[str, Any]:
    return body(tree(MAIN)["modules"][name])["params"]


class Scope:
    """Evaluates the small expressions the templates use (conditions, lookups) for given parameters."""

    def __init__(self, path: Path, params: dict[str, Any]) -> None:
        self.tree = tree(path)
        self.params = {name: p.get("default") for name, p in self.tree.get("parameters", {}).items()}
        self.params.update(params)

    def value(self, expr: Any) -> Any:
        if isinstance(expr, str):
            if expr in self.params:
                return self.params[expr]
            variables = self.tree.get("variables", {})
            if expr in variables:
                return self.value(variables[expr]["value"])
            return expr
        if isinstance(expr, list):
            return [self.value(item) for item in expr]
        if not isinstance(expr, dict):
            return expr
        if "operator" in expr:
            op = expr["operator"]
            kind, operands = op["type"], op["operands"]
            if kind == "equals":
                return self.value(operands["operand_1"]) == self.value(operands["operand_2"])
            if kind == "not_equals":
                return self.value(operands["operand_1"]) != self.value(operands["operand_2"])
            if kind == "or":
                return bool(self.value(operands["operand_1"])) or bool(self.value(operands["operand_2"]))
            if kind == "and":
                return bool(self.value(operands["operand_1"])) and bool(self.value(operands["operand_2"]))
            if kind == "not":
                return not self.value(operands["bool_value"])
            if kind == "property_accessor":
                return expr  # a runtime value (resource property, module output): kept as written
            if kind == "index_accessor":
                return self.value(operands["operand_1"])[self.value(operands["operand_2"])]
            raise AssertionError(f"operator {kind} not understood by the test evaluator")
        if "function" in expr:
            fn = expr["function"]
            kind, args = fn["type"], fn["parameters"]
            if kind == "contains":
                return self.value(args["item_to_find"]) in self.value(args["container"])
            if kind == "empty":
                return not self.value(args["item_to_test"])
            if kind == "concat":
                result: list[Any] = []
                for key in sorted(args, key=lambda k: int(k.split("_")[1])):
                    result.extend(self.value(args[key]))
                return result
            if kind == "string":
                return str(self.value(args["value_to_convert"]))
            raise AssertionError(f"function {kind} not understood by the test evaluator")
        if "loop_type" in expr:
            return []  # `for` over a parameter object: empty for the default {}
        return {key: self.value(item) for key, item in expr.items()}


# --- Files and parsing ---------------------------------------------------------------


def test_expected_files_exist() -> None:
    for name in ("main.bicep", "main.parameters.json", "README.md", "requirements-check.txt"):
        assert (INFRA / name).is_file(), f"infra/{name} is missing"
    assert len(BICEP_FILES) >= 2


@pytest.mark.parametrize("path", BICEP_FILES, ids=lambda p: str(p.relative_to(INFRA)))
def test_bicep_file_parses(path: Path) -> None:
    assert tree(path).get("resources") or tree(path).get("modules"), f"{path} declares nothing"


def test_modules_resolve_and_receive_only_declared_params() -> None:
    for name in tree(MAIN)["modules"]:
        path = module_file(name)
        assert path.is_file(), f"module {name}: {path} missing"
        declared = set(tree(path).get("parameters", {}))
        passed = set(module_params(name))
        assert passed <= declared, f"module {name} passes undeclared params {passed - declared}"
        required = {n for n, p in tree(path)["parameters"].items() if p.get("default") is None}
        assert required <= passed, f"module {name} misses required params {required - passed}"


def test_parameters_file_matches_main() -> None:
    params = tree(MAIN)["parameters"]
    values = json.loads((INFRA / "main.parameters.json").read_text(encoding="utf-8"))["parameters"]
    assert set(values) <= set(params), f"unknown parameters {set(values) - set(params)}"
    key_location = params["keyLocation"]
    allowed = next(d["argument"] for d in key_location["decorators"] if d["type"] == "allowed")
    assert allowed == list(KEY_LOCATIONS)
    assert key_location["default"] == "KeyVault"
    assert values["keyLocation"]["value"] in allowed
    assert params["certificateName"]["default"] == "Intermediate"
    assert params["certificateValidityDays"]["default"] == 365
    assert params["location"]["type"] == "string"


def test_outputs() -> None:
    outputs = tree(MAIN)["outputs"]
    for name in ("functionAppName", "functionAppHostName", "keyVaultName", "keyVaultUri", "storageAccountName"):
        assert name in outputs, f"output {name} missing"
    assert dotted(outputs["keyVaultUri"]["value"]) == "keyVault.outputs.uri"
    assert dotted(tree(module_file("keyVault"))["outputs"]["uri"]["value"]) == "vault.properties.vaultUri"
    assert dotted(tree(module_file("functionApp"))["outputs"]["defaultHostName"]["value"]) == (
        "functionApp.properties.defaultHostName"
    )


# --- Function App --------------------------------------------------------------------


def test_function_app_is_linux_python_311_flex_consumption() -> None:
    _, plan = only("Microsoft.Web/serverfarms")
    assert plan["sku"] == {"name": "FC1", "tier": "FlexConsumption"}
    assert plan["properties"]["reserved"] is True  # Linux
    path, site = only("Microsoft.Web/sites")
    assert "linux" in site["kind"] and "functionapp" in site["kind"]
    config = site["properties"]["functionAppConfig"]
    passed = {k: v for k, v in module_params("functionApp").items() if k == "pythonVersion"}
    runtime = Scope(path, passed).value(config["runtime"])
    assert runtime == {"name": "python", "version": "3.11"}
    storage = config["deployment"]["storage"]
    assert storage["type"] == "blobContainer"
    assert storage["authentication"] == {"type": "SystemAssignedIdentity"}


def test_function_app_security() -> None:
    _, site = only("Microsoft.Web/sites")
    assert site["identity"] == {"type": "SystemAssigned"}
    props = site["properties"]
    assert props["httpsOnly"] is True
    site_config = props["siteConfig"]
    assert site_config["minTlsVersion"] == "1.2"
    assert site_config["scmMinTlsVersion"] == "1.2"
    assert site_config.get("remoteDebuggingEnabled", False) is False
    _, plan = only("Microsoft.Web/serverfarms")
    if plan["sku"]["tier"] == "FlexConsumption":
        # Flex Consumption rejects siteConfig.ftpsState (ARM 51021) and has no FTP deployment;
        # FTP and basic-auth publishing are shut by the credential policies checked below.
        assert "ftpsState" not in site_config, "Flex Consumption sites reject siteConfig.ftpsState"
    else:
        assert site_config.get("ftpsState") == "Disabled"


def test_the_health_check_uses_the_health_endpoint() -> None:
    _, site = only("Microsoft.Web/sites")
    assert site["properties"]["siteConfig"]["healthCheckPath"] == "/api/health"
    import function_app
    from xboot.service.serve import registered_functions

    assert "health" in {f.get_trigger().route for f in registered_functions(function_app.app)}


def test_ftp_and_scm_basic_auth_disabled() -> None:
    policies = {
        body(r)["name"]: body(r) for _, _, r in resources("Microsoft.Web/sites/basicPublishingCredentialsPolicies")
    }
    assert set(policies) == {"ftp", "scm"}
    for name, policy in policies.items():
        assert policy["properties"]["allow"] is False, f"basic publishing credentials for {name} must be off"


# --- Storage -------------------------------------------------------------------------


def test_storage_account_security() -> None:
    _, account = only("Microsoft.Storage/storageAccounts")
    props = account["properties"]
    assert props["minimumTlsVersion"] == "TLS1_2"
    assert props["supportsHttpsTrafficOnly"] is True
    assert props["allowBlobPublicAccess"] is False
    assert props["allowSharedKeyAccess"] is False
    assert props["defaultToOAuthAuthentication"] is True
    assert props.get("allowCrossTenantReplication") is False
    assert account["kind"] == "StorageV2"


def test_blob_containers_private_and_complete() -> None:
    _, _, containers = resources("Microsoft.Storage/storageAccounts/blobServices/containers")[0]
    assert body(containers)["properties"]["publicAccess"] == "None"
    main = Scope(MAIN, {})
    names = set(main.value(module_params("storage")["containerNames"]))
    deployment = main.value(module_params("functionApp")["deploymentContainerName"])
    assert names == {"xboot-data", "xboot-keys", deployment}
    assert deployment not in ("xboot-data", "xboot-keys")


# --- Key Vault -----------------------------------------------------------------------


def test_key_vault_security() -> None:
    _, vault = only("Microsoft.KeyVault/vaults")
    props = vault["properties"]
    assert props["enableRbacAuthorization"] is True
    assert props["enableSoftDelete"] is True
    assert props["enablePurgeProtection"] is True
    assert "accessPolicies" not in props, "RBAC vault: no access policies"
    for flag in ("enabledForDeployment", "enabledForTemplateDeployment", "enabledForDiskEncryption"):
        assert props.get(flag, False) is False


def test_audit_logs_reach_log_analytics() -> None:
    scopes = {body(r)["scope"] for _, _, r in resources("Microsoft.Insights/diagnosticSettings")}
    assert {"vault", "blobService"} <= scopes


def test_application_insights_requires_entra_auth() -> None:
    _, component = only("Microsoft.Insights/components")
    assert component["properties"]["DisableLocalAuth"] is True


# --- Role assignments ----------------------------------------------------------------


def role_assignments(key_location: str, operator: str = "") -> dict[str, set[str]]:
    """{principal parameter: {role definition GUIDs}} that roles.bicep creates for these inputs."""
    path = module_file("roles")
    scope = Scope(path, {"keyLocation": key_location, "operatorPrincipalId": operator})
    granted: dict[str, set[str]] = {}
    for _, name, resource in resources("Microsoft.Authorization/roleAssignments"):
        cond = condition(resource)
        if cond is not None and not scope.value(cond):
            continue
        props = body(resource)["properties"]
        function = props["roleDefinitionId"]["function"]
        assert function["type"] == "subscription_resource_id", f"{name}: use subscriptionResourceId(...)"
        assert function["parameters"]["resource_type"] == "Microsoft.Authorization/roleDefinitions"
        guid = scope.value(function["parameters"]["resource_name_1"])
        assert guid in BUILT_IN_ROLES, f"{name}: unexpected role definition {guid}"
        assert props.get("principalType"), f"{name}: set principalType (avoids replication-delay failures)"
        granted.setdefault(props["principalId"], set()).add(guid)
    return granted


def test_role_definition_ids_are_the_built_in_ones() -> None:
    variables = {name: v["value"] for name, v in tree(module_file("roles"))["variables"].items()}
    assert variables["keyVaultCertificateUserRoleId"] == KEY_VAULT_CERTIFICATE_USER
    assert variables["keyVaultSecretsUserRoleId"] == KEY_VAULT_SECRETS_USER
    assert variables["keyVaultCryptoUserRoleId"] == KEY_VAULT_CRYPTO_USER
    assert variables["keyVaultCertificatesOfficerRoleId"] == KEY_VAULT_CERTIFICATES_OFFICER
    assert variables["storageBlobDataContributorRoleId"] == STORAGE_BLOB_DATA_CONTRIBUTOR
    assert variables["storageTableDataContributorRoleId"] == STORAGE_TABLE_DATA_CONTRIBUTOR
    assert variables["monitoringMetricsPublisherRoleId"] == MONITORING_METRICS_PUBLISHER


@pytest.mark.parametrize("key_location", KEY_LOCATIONS)
def test_app_identity_gets_exactly_what_its_location_needs(key_location: str) -> None:
    granted = role_assignments(key_location)
    assert granted == {"appPrincipalId": APP_ROLES[key_location]}


def test_roles_module_receives_the_function_app_identity() -> None:
    params = module_params("roles")
    assert dotted(params["appPrincipalId"]) == "functionApp.outputs.principalId"
    assert params["keyLocation"] == "keyLocation"
    assert dotted(tree(module_file("functionApp"))["outputs"]["principalId"]["value"]) == (
        "functionApp.identity.principalId"
    )


def test_operator_roles_only_when_requested() -> None:
    granted = role_assignments("KeyVault", operator="00000000-0000-0000-0000-000000000001")
    assert granted["operatorPrincipalId"] == {KEY_VAULT_CERTIFICATES_OFFICER, STORAGE_BLOB_DATA_CONTRIBUTOR}
    assert "operatorPrincipalId" not in role_assignments("KeyVault")


# --- App settings --------------------------------------------------------------------


def app_settings(key_location: str) -> dict[str, Any]:
    """{name: value expression} the Function App gets for this keyLocation (default params)."""
    main = Scope(MAIN, {"keyLocation": key_location})
    xboot = main.value(module_params("functionApp")["appSettings"])
    path, site = only("Microsoft.Web/sites")
    platform = Scope(path, {"appSettings": []}).value(site["properties"]["siteConfig"]["appSettings"])
    names = [s["name"] for s in platform + xboot]
    assert len(names) == len(set(names)), f"duplicate app settings: {names}"
    return {s["name"]: s["value"] for s in platform + xboot}


@pytest.mark.parametrize("key_location", KEY_LOCATIONS)
def test_app_settings_present(key_location: str) -> None:
    settings = app_settings(key_location)
    for name in XBOOT_SETTINGS + PLATFORM_SETTINGS:
        assert name in settings, f"app setting {name} missing for keyLocation {key_location}"
    for name in FORBIDDEN_SETTINGS:
        assert name not in settings, f"app setting {name} must not be set"
    assert settings["Location"] == key_location
    assert settings["AzureWebJobsStorage__credential"] == "managedidentity"
    assert settings["DataStore"] == "Blob"
    assert settings["BlobContainerName"] == "xboot-keys"
    assert settings["DataBlobContainer"] == "xboot-data"
    assert settings["SignerCacheSeconds"] == "300"
    assert settings["CertificateValidityDays"] == "365"
    # A strong enrollment method by default; FunctionKey (any key holder becomes any device) is not offered.
    assert settings["EnrollmentAuthorization"] == "DeviceKey,Certificate"
    authorization = tree(MAIN)["parameters"]["enrollmentAuthorization"]
    assert authorization["default"] == "DeviceKey,Certificate"
    allowed = next(d["argument"] for d in authorization["decorators"] if d["type"] == "allowed")
    assert not [a for a in allowed if "FunctionKey" in a]
    assert dotted(settings["KeyVaultUri"]) == "keyVault.outputs.uri"
    assert dotted(settings["BlobAccountUrl"]) == "storage.outputs.blobEndpoint"
    assert dotted(settings["DataBlobAccountUrl"]) == "storage.outputs.blobEndpoint"
    assert dotted(tree(module_file("storage"))["outputs"]["blobEndpoint"]["value"]) == (
        "storageAccount.properties.primaryEndpoints.blob"
    )


@pytest.mark.parametrize(
    ("key_location", "certificate", "private_key"),
    [
        ("KeyVault", "Intermediate", None),
        ("KeyVaultKey", "Intermediate", None),
        ("Blob", "ia.cer", "ia.key"),
        ("File", None, None),  # development only: the user supplies both
        ("AppSettings", None, None),
    ],
)
def test_certificate_settings_follow_key_location(
    key_location: str, certificate: str | None, private_key: str | None
) -> None:
    settings = app_settings(key_location)
    assert settings.get("CertificateFile") == certificate
    assert settings.get("PrivateKeyFile") == private_key


def test_no_secrets_in_templates() -> None:
    for path in [*BICEP_FILES, INFRA / "main.parameters.json"]:
        text = path.read_text(encoding="utf-8").lower()
        for marker in SECRET_MARKERS:
            assert marker not in text, f"{path.relative_to(ROOT)} contains {marker!r}"
    for key_location in KEY_LOCATIONS:
        for name, value in app_settings(key_location).items():
            flat = json.dumps(value).lower()
            assert not any(m in flat for m in SECRET_MARKERS), f"app setting {name} looks like a secret: {flat}"
            assert "listkeys" not in flat and "list_keys" not in flat


# --- checkov -------------------------------------------------------------------------

SKIP_COMMENT = re.compile(r"checkov:skip=([A-Z0-9_]+):(.+)")


def skips_in_templates() -> dict[str, str]:
    found: dict[str, str] = {}
    for path in BICEP_FILES:
        for match in SKIP_COMMENT.finditer(path.read_text(encoding="utf-8")):
            found[match.group(1)] = match.group(2).strip()
    return found


def skips_in_readme() -> set[str]:
    text = (INFRA / "README.md").read_text(encoding="utf-8")
    section = text.split("## Checkov skips", 1)
    assert len(section) == 2, "infra/README.md needs a '## Checkov skips' section"
    body_text = section[1].split("\n## ", 1)[0]
    return set(re.findall(r"\|\s*`?(CKV2?_[A-Z]+_\d+)`?\s*\|", body_text))


def test_every_checkov_skip_is_justified_and_documented() -> None:
    in_templates = skips_in_templates()
    assert all(len(reason) >= 20 for reason in in_templates.values()), in_templates
    assert set(in_templates) == skips_in_readme(), (
        "infra/README.md 'Checkov skips' must list exactly the skips in the templates"
    )


@functools.cache
def checkov_report() -> dict[str, Any]:
    checkov = require_checkov()
    done = subprocess.run(
        [str(checkov), "-d", str(INFRA), "--framework", "bicep", "-o", "json", "--skip-download"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=ROOT,
    )
    if done.returncode not in (0, 1):
        pytest.fail(f"checkov failed ({done.returncode}):\n{done.stderr[-3000:]}")
    try:
        report = json.loads(done.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"checkov printed no JSON:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    reports = report if isinstance(report, list) else [report]
    if len(reports) == 1 and "check_type" not in reports[0] and "parsing_errors" in reports[0]:
        # Nothing scanned (e.g. no file parsed): checkov prints only a bare summary.
        return {"summary": reports[0], "results": {"passed_checks": [], "failed_checks": [], "skipped_checks": []}}
    bicep = [r for r in reports if r.get("check_type") == "bicep"]
    assert len(bicep) == 1, f"no bicep report in checkov output: {[r.get('check_type') for r in reports]}"
    return bicep[0]


def test_checkov_parses_every_bicep_file() -> None:
    summary = checkov_report()["summary"]
    assert summary["parsing_errors"] == 0, (
        f"checkov could not parse: {checkov_report()['results'].get('parsing_errors')}"
    )
    scanned = {c["file_path"] for c in checkov_report()["results"]["passed_checks"]}
    assert summary["resource_count"] >= 20 and scanned, f"checkov scanned too little: {summary}"


def test_checkov_finds_nothing_but_documented_skips() -> None:
    results = checkov_report()["results"]
    failed = [f"{c['check_id']} {c['check_name']} ({c['file_path']} {c['resource']})" for c in results["failed_checks"]]
    assert not failed, (
        "checkov findings (fix them, or skip with a reason in the template and infra/README.md):\n" + "\n".join(failed)
    )
    skipped = {c["check_id"] for c in results["skipped_checks"]}
    assert skipped == set(skips_in_templates()), "a skip comment matches no checkov finding (remove it) or was ignored"


# --- Bicep compiler (optional) -------------------------------------------------------


def az_bicep_available() -> bool:
    az = shutil.which("az")
    if az is None:
        return False
    done = subprocess.run([az, "bicep", "version"], capture_output=True, text=True, timeout=120, check=False)
    return done.returncode == 0


@pytest.mark.skipif(
    not az_bicep_available(), reason="az CLI with Bicep is not installed (its installer downloads a binary)"
)
def test_az_bicep_build(tmp_path: Path) -> None:
    az = shutil.which("az")
    assert az is not None
    failures = []
    for path in BICEP_FILES:
        done = subprocess.run(
            [az, "bicep", "build", "--file", str(path), "--outfile", str(tmp_path / f"{path.stem}.json")],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if done.returncode != 0:
            failures.append(f"{path.relative_to(ROOT)}:\n{done.stderr}")
    assert not failures, "\n".join(failures)
