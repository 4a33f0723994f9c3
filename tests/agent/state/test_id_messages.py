"""What a refused member id says (the API and the CLI show these words), and how a value is
shown in such a message."""

from __future__ import annotations

import pytest

from hafleet_agent.commands import conf_change_error
from hafleet_agent.ids import MEMBER_ID_RULE, check_member_id, member_id_error, shown
from hafleet_agent.raft.types import ConfChange, ConfChangeType


def test_the_default_wording_names_a_member_id() -> None:
    with pytest.raises(ValueError) as info:
        check_member_id("-x")
    assert str(info.value) == f"member id '-x' is not valid: {MEMBER_ID_RULE}"
    with pytest.raises(ValueError) as info:
        check_member_id(5)
    assert str(info.value) == f"member id must be a string, got int: {MEMBER_ID_RULE}"
    assert member_id_error("-x") == f"member id '-x' is not valid: {MEMBER_ID_RULE}"
    assert member_id_error("ok") is None


def test_shown_is_bounded_and_survives_a_hostile_repr() -> None:
    class Hostile:
        def __repr__(self) -> str:
            raise RuntimeError("no")

    assert shown(Hostile()) == "<Hostile>"
    exact = "x" * 78  # its repr is 80 characters: the limit, kept whole
    assert shown(exact) == repr(exact)
    assert shown("x" * 79) == "'" + "x" * 76 + "..."
    assert shown("abcdef", limit=5) == "'a..."


def test_a_conf_change_with_a_bad_id_says_so() -> None:
    error = conf_change_error(ConfChange(ConfChangeType.ADD_VOTER, "-x"))
    assert error == f"the configuration change's node id '-x' is not valid: {MEMBER_ID_RULE}"
