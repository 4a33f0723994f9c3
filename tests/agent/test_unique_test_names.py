"""Test modules are imported by their base name (no packages, pytest's default import mode):
two files named alike in different folders break the collection of the whole run ("import
file mismatch"). Catch it here, with the names, instead of at collection time in CI."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_every_test_module_name_is_unique() -> None:
    seen: dict[str, list[str]] = defaultdict(list)
    for path in sorted(TESTS.rglob("test_*.py")):
        rel = path.relative_to(TESTS)
        if rel.parts[0] in ("agent", "chaos"):  # what `make pytest` collects together
            seen[path.name].append(str(rel))
    twice = {name: where for name, where in seen.items() if len(where) > 1}
    assert not twice, f"test modules with the same name: {twice}"
