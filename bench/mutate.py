"""`python -m bench.mutate [--module M ...] [--limit N] [--jobs J]`: mutation testing of the security modules.

Each mutant changes one place in one module: an `if` condition made False (the check dropped) or True, a
comparison flipped (== and !=, < and >=, in and not in, is and is not), an integer bound moved by one, `and`
and `or` swapped, `max` and `min` swapped, a returned or keyword True or False inverted (not
`frozen=` or zip's `strict=`, which declare rather than check), a `raise` replaced by `pass`, a
call made for its effect (a `verify()`, a check) removed. Mutants are made in copies of the tracked files,
never in the working tree.

The module's tests (MODULES below) first run once under coverage, each test measured as its own context, so
each mutant runs only the tests that execute the mutated lines (all of the module's tests when no test does in
this process: lines run at import, or only in a `xboot serve` child), stopping at the first failure. A failure
(or a run that hangs) kills the mutant; a pass means it survived. It prints the score per module and every
survivor with its line.
Survivors judged equivalent (no input can tell them apart) are listed in EQUIVALENT with the reason, and
reported as such rather than counted against the score.
"""

from __future__ import annotations

import argparse
import ast
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from queue import Queue

ROOT = Path(__file__).resolve().parent.parent
S = "xboot/service/"
MODULES: dict[str, tuple[str, ...]] = {
    S + "ca/issuance.py": ("tests/test_issuance_profile.py", "tests/test_enrollment.py", "tests/test_hardening.py"),
    S + "reports/verify.py": (
        "tests/test_report_signatures.py",
        "tests/test_reports_verify.py",
        "tests/test_path_validation.py",
        "tests/test_hardening.py",
    ),
    S + "reports/names.py": ("tests/test_path_validation.py",),
    S + "reports/smime.py": ("tests/test_reports_smime.py", "tests/test_reports_verify.py", "tests/test_hardening.py"),
    S + "reports/trust.py": ("tests/test_reports_smime.py", "tests/test_reports_api.py"),
    S + "lifecycle/revocation.py": (
        "tests/test_revocation_rules.py",
        "tests/test_revocation.py",
        "tests/test_crl.py",
        "tests/test_hardening.py",
        "tests/test_fleet_scale.py",
    ),
    S + "storage/paging.py": ("tests/test_fleet_scale.py", "tests/test_reports_api.py"),
    S + "storage/file.py": ("tests/test_fleet_scale.py", "tests/test_group_commit.py", "tests/test_storage_rules.py"),
    S + "reports/store.py": ("tests/test_fleet_scale.py", "tests/test_reports_api.py", "tests/test_hardening.py"),
    S + "lifecycle/audit.py": ("tests/test_fleet_scale.py", "tests/test_revocation.py"),
    S + "enrollment/registration.py": ("tests/test_policy_rules.py", "tests/test_enrollment.py"),
    S + "enrollment/identity.py": ("tests/test_identity_rules.py", "tests/test_enrollment_authorization.py"),
    S + "enrollment/authorization/__init__.py": (
        "tests/test_policy_rules.py",
        "tests/test_enrollment_authorization.py",
    ),
    S + "enrollment/authorization/device_key.py": (
        "tests/test_policy_rules.py",
        "tests/test_enrollment_authorization.py",
    ),
    S + "enrollment/authorization/token.py": ("tests/test_token_rules.py", "tests/test_enrollment_authorization.py"),
    S + "enrollment/authorization/certificate.py": (
        "tests/test_certificate_rules.py",
        "tests/test_enrollment_authorization.py",
        "tests/test_est.py",
    ),
    S + "storage/__init__.py": ("tests/test_storage_rules.py", "tests/test_hardening.py", "tests/test_reports_api.py"),
    S + "untrusted.py": ("tests/test_hardening.py",),
    S + "ca/issuers/upstream.py": ("tests/test_upstream_rules.py", "tests/test_upstream_ca.py"),
    S + "ca/issuers/transport.py": ("tests/test_transport_rules.py", "tests/test_upstream_ca.py"),
    S + "ca/issuers/est.py": ("tests/test_upstream_rules.py", "tests/test_upstream_ca.py"),
    S + "ca/issuers/cfssl.py": ("tests/test_upstream_rules.py", "tests/test_upstream_ca.py"),
    S + "ca/issuers/custom.py": ("tests/test_upstream_rules.py", "tests/test_upstream_ca.py"),
    S + "http/edge.py": ("tests/test_edge_rules.py", "tests/test_hardening.py", "tests/test_enrollment.py"),
    S + "serve.py": (
        "tests/test_serve_rules.py",
        "tests/test_hardening.py",
        "tests/test_serve.py",
        "tests/test_front_door.py",
    ),
    "xboot/dps.py": ("tests/test_dps_rules.py", "tests/test_enrollment_authorization.py"),
}
_HOST_LINE = """host = environ.get("HTTP_HOST") or f"{environ.get('SERVER_NAME')}:{environ.get('SERVER_PORT')}\""""
_WIRE_LINE = 'code = _WIRE_ERROR_CODES.get(error.code, "bad_request" if error.code < 500 else "internal_error")'
_WIRE_CODES = "the parser errors this task answers are 400, 413, 431 and 501: none lies between 499 and 501"
# (module, mutation, the mutated line's text) -> why no input can tell the mutant from the original.
EQUIVALENT: dict[tuple[str, str, str], str] = {
    (S + "ca/issuers/upstream.py", "if condition -> False", "if entry is not None and time.monotonic() < entry[0]:"): (
        "the lock-free fast path of the CA-chain cache: without it every lookup takes the lock and finds the "
        "same entry there (the check under the lock is pinned by a concurrency test)"
    ),
    (S + "ca/issuers/custom.py", "call removed: future.cancel(...)", "future.cancel()"): (
        "a hook past its timeout is running, and a running future cannot be cancelled; cancel only helps a hook "
        "still queued behind 8 running ones, which then never runs (not observable in the answer)"
    ),
    (S + "ca/issuance.py", "bound 65537 -> 65536", "if key.public_numbers().e < 65537:"): (
        "the only exponent between is 65536, even, and cryptography refuses to load an RSA key with an even exponent"
    ),
    (S + "storage/paging.py", "if condition -> True", "if key is None:"): (
        "the per-store key cache: without it every seal re-reads the stored key, and create never overwrites it, "
        "so the same key comes back"
    ),
    (S + "lifecycle/revocation.py", "if condition -> False", "if not self.by_id:"): (
        "a shortcut: with no entries every index lookup finds nothing anyway"
    ),
    (
        S + "lifecycle/revocation.py",
        "if condition -> False",
        "if not fresh and not changed and time.monotonic() < self.expires:",
    ): ("the fast path before the lock: without it the same check under the lock returns the same snapshot"),
    (
        S + "lifecycle/revocation.py",
        "if condition -> True",
        "if fresh or version != self.version or time.monotonic() >= self.expires:",
    ): (
        "a request that waited for the lock while another refreshed lists once more: the same snapshot, one "
        "extra listing under contention"
    ),
    (S + "lifecycle/revocation.py", "if condition -> False", "if not revocations.has_ca_entries:"): (
        "loads the signer to compare issuers where no serial or registration entry could match anyway"
    ),
    (S + "lifecycle/revocation.py", "if condition -> True", "if revocations.by_key:"): (
        "a lookup in an empty index finds nothing"
    ),
    (S + "lifecycle/revocation.py", "if condition -> False", "if not revocations.by_id:"): (
        "a shortcut: with no entries the loop finds no revoked certificate"
    ),
    (S + "http/edge.py", "bound 500 -> 499", "if error.status >= 500:"): (
        "no refusal has status 499: logging from 499 up logs the same errors"
    ),
    (S + "serve.py", "and/or swapped", _HOST_LINE): "no handler reads the host of the request URL",
    (S + "serve.py", "bound 500 -> 501", _WIRE_LINE): _WIRE_CODES,
    (S + "serve.py", "bound 500 -> 499", _WIRE_LINE): _WIRE_CODES,
    (S + "untrusted.py", "raise -> pass", 'raise ValueError("JSON nested too deeply") from None'): (
        "the depth bound, checked first, keeps the decoder far from Python's recursion limit; the handler is a "
        "safety net that no input below the bound can reach"
    ),
    (S + "reports/verify.py", "if condition -> True", "if signer not in pool:"): (
        "inserting the signer when it is already in the pool only duplicates it; the search skips certificates "
        "already on the path"
    ),
}
FLIPS = {
    ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.Lt: ast.GtE, ast.GtE: ast.Lt, ast.Gt: ast.LtE, ast.LtE: ast.Gt,
    ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is,
}  # fmt: skip
_LOGGING = {"debug", "info", "warning", "error", "exception", "critical"}


def _declaration(call: ast.Call, keyword: ast.keyword) -> bool:
    """Flags that declare rather than check: a dataclass's `frozen`, `zip(strict=...)` over lengths equal by
    construction. Flipping them changes no decision the module makes."""
    return keyword.arg == "frozen" or (isinstance(call.func, ast.Name) and call.func.id == "zip")


@dataclass(frozen=True)
class Site:
    index: int
    line: int
    end_line: int
    what: str


class _Mutator(ast.NodeTransformer):
    """Counts mutation sites in source order; with `target` set, changes that one site only."""

    def __init__(self, target: int | None = None) -> None:
        self.target = target
        self.sites: list[Site] = []

    def _site(self, node: ast.AST, what: str) -> bool:
        line = getattr(node, "lineno", 0)
        self.sites.append(Site(len(self.sites), line, getattr(node, "end_lineno", line) or line, what))
        return self.target == len(self.sites) - 1

    def visit_If(self, node: ast.If) -> ast.AST:
        if self._site(node.test, "if condition -> False"):
            node.test = ast.Constant(False)
        elif self._site(node.test, "if condition -> True"):
            node.test = ast.Constant(True)
        return self.generic_visit(node)

    def visit_Compare(self, node: ast.Compare) -> ast.AST:
        flippable = len(node.ops) == 1 and type(node.ops[0]) in FLIPS
        if flippable and self._site(node, f"{type(node.ops[0]).__name__} flipped"):
            node.ops = [FLIPS[type(node.ops[0])]()]
        for position, bound in enumerate(node.comparators):
            if isinstance(bound, ast.Constant) and type(bound.value) is int:
                for step in (1, -1):
                    if self._site(bound, f"bound {bound.value} -> {bound.value + step}"):
                        node.comparators[position] = ast.Constant(bound.value + step)
        return self.generic_visit(node)

    def visit_BoolOp(self, node: ast.BoolOp) -> ast.AST:
        if self._site(node, "and/or swapped"):
            node.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        return self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> ast.AST:
        if isinstance(node.func, ast.Name) and node.func.id in ("max", "min"):
            swapped = "min" if node.func.id == "max" else "max"
            if self._site(node, f"{node.func.id} -> {swapped}"):
                node.func = ast.Name(swapped, ast.Load())
        for keyword in node.keywords:
            flag = isinstance(keyword.value, ast.Constant) and type(keyword.value.value) is bool
            if flag and not _declaration(node, keyword):
                value = keyword.value.value  # type: ignore[attr-defined]
                if self._site(keyword.value, f"{keyword.arg}={value} -> {not value}"):
                    keyword.value = ast.Constant(not value)
        return self.generic_visit(node)

    def visit_Return(self, node: ast.Return) -> ast.AST:
        flag = isinstance(node.value, ast.Constant) and type(node.value.value) is bool
        if flag and self._site(node, f"return {node.value.value} -> {not node.value.value}"):
            node.value = ast.Constant(not node.value.value)
        return self.generic_visit(node)

    def visit_Raise(self, node: ast.Raise) -> ast.AST:
        if self._site(node, "raise -> pass"):
            return ast.Pass()
        return self.generic_visit(node)

    def visit_Expr(self, node: ast.Expr) -> ast.AST:
        call = node.value
        effect = isinstance(call, ast.Call) and not (
            isinstance(call.func, ast.Attribute) and call.func.attr in _LOGGING
        )
        if effect and self._site(node, f"call removed: {ast.unparse(call.func)}(...)"):  # type: ignore[attr-defined]
            return ast.Pass()
        return self.generic_visit(node)


def sites(source: str) -> list[Site]:
    mutator = _Mutator()
    mutator.visit(ast.parse(source))
    return mutator.sites


def mutant(source: str, index: int) -> str:
    return ast.unparse(ast.fix_missing_locations(_Mutator(index).visit(ast.parse(source))))


def _copy(destination: Path) -> None:
    names = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for name in names:
        if (ROOT / name).is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, destination / name)
    for tools in (".azurite", ".venv-infra"):  # installed by scripts/setup, not tracked: the tests start Azurite
        if (ROOT / tools).exists():
            (destination / tools).symlink_to(ROOT / tools)


def _pytest(copy: Path, tests: list[str], timeout: float, env: dict[str, str] | None = None) -> bool:
    """Whether the tests pass; a run that outlasts `timeout` fails (a mutant that hangs is caught)."""
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    environment = {**os.environ, **(env or {})}
    try:
        return subprocess.run(command, cwd=copy, capture_output=True, timeout=timeout, env=environment).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def _tests_by_line(copy: Path, module: str, tests: tuple[str, ...]) -> tuple[dict[int, set[str]], float] | None:
    """Runs the module's tests once under coverage: line -> node IDs of the tests that execute it, and how
    long all of them took (a mutant's run may take a few times that before it counts as hung)."""
    import coverage

    data_file = copy / ".mutate-coverage"
    env = {"XBOOT_MUTATE_MODULE": str(copy / module), "XBOOT_MUTATE_DATA": str(data_file)}
    started = time.monotonic()
    if not _pytest(copy, ["-p", "bench.mutate_contexts", *tests], 1800, env):
        return None
    took = time.monotonic() - started
    data = coverage.CoverageData(basename=str(data_file))
    data.read()
    found: dict[int, set[str]] = defaultdict(set)
    for line, contexts in (data.contexts_by_lineno(str(copy / module)) or {}).items():
        found[line].update(context for context in contexts if context)
    return found, took


def _score(module: str, copies: Queue[Path], limit: int) -> tuple[int, int, list[tuple[Site, str]]]:
    tests = MODULES[module]
    first = copies.get()
    try:
        measured = _tests_by_line(first, module, tests)
    finally:
        copies.put(first)
    if measured is None:
        raise SystemExit(f"{module}: its tests fail unmutated; fix them first")
    by_line, took = measured
    patience = 3 * took + 30  # the whole module's tests three times over, with the machine shared by --jobs runs
    source = (ROOT / module).read_text()
    found = sites(source)[: limit or None]

    def run(site: Site) -> bool:
        chosen = sorted(set().union(*(by_line.get(line, set()) for line in range(site.line, site.end_line + 1))))
        copy = copies.get()
        try:
            (copy / module).write_text(mutant(source, site.index))
            return _pytest(copy, chosen or list(tests), patience)
        finally:
            (copy / module).write_text(source)
            copies.put(copy)

    with ThreadPoolExecutor(max_workers=copies.qsize()) as pool:
        survived = [site for site, passes in zip(found, pool.map(run, found), strict=True) if passes]
    lines = source.splitlines()
    return len(found) - len(survived), len(found), [(site, lines[site.line - 1].strip()) for site in survived]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.mutate", description=__doc__.splitlines()[0])
    parser.add_argument("--module", action="append", choices=sorted(MODULES), help="only these (repeatable)")
    parser.add_argument("--limit", type=int, default=0, help="at most N mutants per module (0: all)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="mutants tested at once")
    args = parser.parse_args(argv)
    below = 0
    with tempfile.TemporaryDirectory(prefix="xboot-mutate-") as scratch:
        copies: Queue[Path] = Queue()
        for number in range(max(1, args.jobs)):
            copy = Path(scratch) / str(number)
            _copy(copy)
            copies.put(copy)
        for module in args.module or list(MODULES):
            started = time.monotonic()
            killed, total, survivors = _score(module, copies, args.limit)
            equivalent = [(site, text) for site, text in survivors if (module, site.what, text) in EQUIVALENT]
            counted = total - len(equivalent)
            score = 100 * killed / counted if counted else 100.0
            below += score < 90
            print(
                f"{module}: {killed}/{counted} killed ({score:.0f}%), {len(equivalent)} equivalent, "
                f"{time.monotonic() - started:.0f} s",
                flush=True,
            )
            for site, text in survivors:
                why = EQUIVALENT.get((module, site.what, text))
                label = f"equivalent ({why})" if why else "survived"
                print(f"  {label}: line {site.line}: {site.what}: {text}", flush=True)
    return 1 if below else 0


if __name__ == "__main__":
    sys.exit(main())
