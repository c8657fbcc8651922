"""`python -m bench.mutate [--module M ...] [--limit N]`: mutation testing of the security modules.

Each mutant changes one place in one module: an `if` condition made False (the check dropped) or True, a
comparison flipped (== and !=, < and >=, in and not in, is and is not), `and` and `or` swapped, a `raise`
replaced by `pass`. The module's own tests (MODULES below) then run against it, stopping at the first
failure: a failure kills the mutant, a pass means it survived. Mutants are made in a copy of the tracked
files, never in the working tree. It prints the score per module and every survivor with its line.
"""

from __future__ import annotations

import argparse
import ast
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
S = "xboot/service/"
MODULES: dict[str, tuple[str, ...]] = {
    S + "ca/issuance.py": ("tests/test_enrollment.py", "tests/test_hardening.py"),
    S + "reports/verify.py": (
        "tests/test_reports_verify.py",
        "tests/test_path_validation.py",
        "tests/test_hardening.py",
    ),
    S + "reports/names.py": ("tests/test_path_validation.py",),
    S + "reports/smime.py": ("tests/test_reports_smime.py", "tests/test_reports_verify.py", "tests/test_hardening.py"),
    S + "reports/trust.py": ("tests/test_reports_api.py",),
    S + "lifecycle/revocation.py": ("tests/test_revocation.py", "tests/test_crl.py", "tests/test_hardening.py"),
    S + "enrollment/registration.py": ("tests/test_enrollment.py",),
    S + "enrollment/identity.py": ("tests/test_enrollment_authorization.py",),
    S + "enrollment/authorization/__init__.py": ("tests/test_enrollment_authorization.py",),
    S + "enrollment/authorization/device_key.py": ("tests/test_enrollment_authorization.py",),
    S + "enrollment/authorization/token.py": ("tests/test_enrollment_authorization.py",),
    S + "enrollment/authorization/certificate.py": ("tests/test_enrollment_authorization.py", "tests/test_est.py"),
    S + "storage/__init__.py": ("tests/test_hardening.py", "tests/test_reports_api.py"),
    S + "untrusted.py": ("tests/test_hardening.py",),
    S + "http/edge.py": ("tests/test_hardening.py", "tests/test_enrollment.py"),
    S + "serve.py": ("tests/test_hardening.py", "tests/test_serve.py", "tests/test_front_door.py"),
    "xboot/dps.py": ("tests/test_enrollment_authorization.py",),
}
FLIPS = {
    ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.Lt: ast.GtE, ast.GtE: ast.Lt, ast.Gt: ast.LtE, ast.LtE: ast.Gt,
    ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is,
}  # fmt: skip


@dataclass(frozen=True)
class Site:
    index: int
    line: int
    what: str


class _Mutator(ast.NodeTransformer):
    """Counts mutation sites in source order; with `target` set, changes that one site only."""

    def __init__(self, target: int | None = None) -> None:
        self.target = target
        self.sites: list[Site] = []

    def _site(self, node: ast.AST, what: str) -> bool:
        self.sites.append(Site(len(self.sites), getattr(node, "lineno", 0), what))
        return self.target == len(self.sites) - 1

    def visit_If(self, node: ast.If) -> ast.AST:
        if self._site(node, "if condition -> False"):
            node.test = ast.Constant(False)
        elif self._site(node, "if condition -> True"):
            node.test = ast.Constant(True)
        return self.generic_visit(node)

    def visit_Compare(self, node: ast.Compare) -> ast.AST:
        flippable = len(node.ops) == 1 and type(node.ops[0]) in FLIPS
        if flippable and self._site(node, f"{type(node.ops[0]).__name__} flipped"):
            node.ops = [FLIPS[type(node.ops[0])]()]
        return self.generic_visit(node)

    def visit_BoolOp(self, node: ast.BoolOp) -> ast.AST:
        if self._site(node, "and/or swapped"):
            node.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        return self.generic_visit(node)

    def visit_Raise(self, node: ast.Raise) -> ast.AST:
        if self._site(node, "raise -> pass"):
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
        (destination / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, destination / name)
    for tools in (".azurite", ".venv-infra"):  # installed by scripts/setup, not tracked: the tests start Azurite
        if (ROOT / tools).exists():
            (destination / tools).symlink_to(ROOT / tools)


def _passes(copy: Path, tests: tuple[str, ...]) -> bool:
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    return subprocess.run(command, cwd=copy, capture_output=True, timeout=900).returncode == 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.mutate", description=__doc__.splitlines()[0])
    parser.add_argument("--module", action="append", choices=sorted(MODULES), help="only these (repeatable)")
    parser.add_argument("--limit", type=int, default=0, help="at most N mutants per module (0: all)")
    args = parser.parse_args(argv)
    chosen = args.module or list(MODULES)
    with tempfile.TemporaryDirectory(prefix="xboot-mutate-") as scratch:
        copy = Path(scratch)
        _copy(copy)
        for module in chosen:
            tests = MODULES[module]
            if not _passes(copy, tests):
                print(f"{module}: its tests fail unmutated; fix them first")
                return 1
            source = (ROOT / module).read_text()
            found = sites(source)[: args.limit or None]
            survivors, started = [], time.monotonic()
            try:
                for site in found:
                    (copy / module).write_text(mutant(source, site.index))
                    if _passes(copy, tests):
                        survivors.append(site)
            finally:
                (copy / module).write_text(source)
            killed = len(found) - len(survivors)
            score = 100 * killed / len(found) if found else 100.0
            print(
                f"{module}: {killed}/{len(found)} killed ({score:.0f}%) in {time.monotonic() - started:.0f} s",
                flush=True,
            )
            for site in survivors:
                print(f"  survived: line {site.line}: {site.what}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
