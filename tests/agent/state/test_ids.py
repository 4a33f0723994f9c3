"""The member id grammar (hafleet_agent.ids), the one rule every entry point uses."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hafleet_agent.ids import (
    MEMBER_ID_PATTERN,
    MEMBER_ID_RULE,
    check_member_id,
    member_id_error,
    shown,
    valid_member_id,
)

GOOD = ["a", "0", "web1", "hafleet-node3", "n.1_b-2", "A" * 63, "9lives"]
BAD = [
    "",
    "web 1",
    "-web",
    ".web",
    "_web",
    "A" * 64,
    "x" * 300,
    "web1\n",
    "a\nINFO forged line",
    "a\x00b",
    "a:b",
    "a/b",
    "é",
    "ｗｅｂ１",  # full-width letters are not ASCII
    None,
    7,
    b"web1",
    ["web1"],
]


@pytest.mark.parametrize("value", GOOD)
def test_valid_ids(value: str) -> None:
    assert valid_member_id(value)
    assert check_member_id(value) == value
    assert member_id_error(value) is None


@pytest.mark.parametrize("value", BAD, ids=repr)
def test_invalid_ids_are_refused_with_the_rule(value: object) -> None:
    assert not valid_member_id(value)
    with pytest.raises(ValueError) as err:
        check_member_id(value, "node id")
    text = str(err.value)
    assert text.startswith("node id ")
    assert MEMBER_ID_PATTERN in text and MEMBER_ID_RULE in text
    assert "\n" not in text and "\x00" not in text  # the value is shown escaped
    assert len(text) < len(MEMBER_ID_RULE) + 120  # and cut short


@given(st.text(max_size=80))
def test_the_grammar_is_the_documented_regex(value: str) -> None:
    assert valid_member_id(value) == (re.fullmatch(MEMBER_ID_PATTERN[1:-1], value) is not None)
    assert valid_member_id(value) == bool(re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z", value))


def test_shown_escapes_and_bounds() -> None:
    assert shown("a\nb") == "'a\\nb'"
    assert len(shown("x" * 1000)) == 80 and shown("x" * 1000).endswith("...")


def test_the_collection_repeats_the_same_grammar() -> None:
    """The collection cannot import the agent: its copy of the API client
    (plugins/module_utils/_api_client.py, ``make vendor``) repeats the pattern."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]
    text = (root / "plugins/module_utils/_api_client.py").read_text()
    found = re.search(r'MEMBER_ID_RE = re\.compile\(r"(.*)"\)', text)
    assert found, "plugins/module_utils/_api_client.py has no MEMBER_ID_RE"
    assert found.group(1) == MEMBER_ID_PATTERN[:-1] + r"\Z"
    assert MEMBER_ID_PATTERN in text  # the rule it states
