"""Every changelog fragment is what ``antsibull-changelog`` reads (``make changelog``,
``make release``): a YAML mapping of known sections to lists of strings. A plain scalar with
``: `` in it is a YAML error that only shows at release time; this catches it at once."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
FRAGMENTS = sorted((REPO / "changelogs" / "fragments").glob("*.y*ml"))
SECTIONS = {
    s[0] for s in yaml.safe_load((REPO / "changelogs" / "config.yaml").read_text())["sections"]
} | {"trivial", "release_summary"}


@pytest.mark.parametrize("path", FRAGMENTS, ids=lambda p: p.name)
def test_fragment_parses_into_known_sections(path: Path) -> None:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict) and data, f"{path.name}: not a mapping"
    for section, items in data.items():
        assert section in SECTIONS, f"{path.name}: unknown section {section!r}"
        if section == "release_summary":
            assert isinstance(items, str)
            continue
        assert isinstance(items, list) and items, f"{path.name}: {section} is not a list"
        assert all(isinstance(i, str) and i.strip() for i in items), (
            f"{path.name}: {section} holds a non-string item (a ': ' in a plain scalar?)"
        )
