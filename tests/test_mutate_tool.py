"""`python -m bench.mutate` itself: each operator makes the mutant it names, and the listed equivalents exist."""

from __future__ import annotations

import ast

from bench.mutate import EQUIVALENT, MODULES, ROOT, mutant, sites

SAMPLE = """
@dataclass(frozen=True)
class C:
    pass

def check(key, size):
    if size < 2048 and key:
        raise ValueError("weak")
    key.verify(size)
    log.info("checked")
    return max(size, 1) == 3 or zip(key, size, strict=True) is None

def flag():
    return call(validate=True)
"""


def test_each_operator_makes_the_mutant_it_names():
    found: dict = {}
    for site in sites(SAMPLE):
        found.setdefault(site.what, site)  # the first site of each kind
    expected = {
        "if condition -> False": "if False:",
        "if condition -> True": "if True:",
        "Lt flipped": "if size >= 2048 and key:",
        "bound 2048 -> 2049": "if size < 2049 and key:",
        "bound 2048 -> 2047": "if size < 2047 and key:",
        "and/or swapped": "if size < 2048 or key:",
        "raise -> pass": "    pass",
        "call removed: key.verify(...)": "    pass",
        "max -> min": "min(size, 1)",
        "validate=True -> False": "call(validate=False)",
    }
    for what, text in expected.items():
        assert what in found, what
        changed = mutant(SAMPLE, found[what].index)
        assert text in changed, (what, changed)
        assert changed != ast.unparse(ast.parse(SAMPLE))
    assert "call removed: log.info(...)" not in found  # logging is not a check
    assert not any("frozen" in what or "strict" in what for what in found)  # declarations, not checks


def test_every_listed_equivalent_names_a_line_of_a_mutated_module():
    for module, what, text in EQUIVALENT:
        assert module in MODULES
        lines = [line.strip() for line in (ROOT / module).read_text().splitlines()]
        assert text in lines, (module, what, text)
        assert any(site.what == what and lines[site.line - 1] == text for site in sites((ROOT / module).read_text()))


def test_every_module_has_tests_that_exist():
    for module, tests in MODULES.items():
        assert (ROOT / module).is_file(), module
        assert all((ROOT / test).is_file() for test in tests), module
